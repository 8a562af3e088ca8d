//! The SASL mechanisms that carry a bearer token: XOAUTH2 (Google's and Microsoft's) and
//! OAUTHBEARER (RFC 7628).

use serde::Deserialize;

/// `sasl = "xoauth2" | "oauthbearer"`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Sasl {
    /// `user=…^Aauth=Bearer …^A^A` (Exchange Online, Gmail).
    #[default]
    Xoauth2,
    /// RFC 7628 `n,a=…,^Ahost=…^Aport=…^Aauth=Bearer …^A^A` (Gmail, Dovecot).
    Oauthbearer,
}

impl Sasl {
    /// The IMAP/SMTP mechanism name.
    pub fn mechanism(self) -> &'static str {
        match self {
            Self::Xoauth2 => "XOAUTH2",
            Self::Oauthbearer => "OAUTHBEARER",
        }
    }

    /// The client's first message (before base64).
    pub fn initial_response(self, user: &str, token: &str, host: &str, port: u16) -> String {
        match self {
            Self::Xoauth2 => format!("user={user}\x01auth=Bearer {token}\x01\x01"),
            Self::Oauthbearer => {
                // RFC 5801 gs2 header; "," and "=" in the authzid are escaped.
                let authzid = user.replace('=', "=3D").replace(',', "=2C");
                format!(
                    "n,a={authzid},\x01host={host}\x01port={port}\x01auth=Bearer {token}\x01\x01"
                )
            }
        }
    }

    /// What the client answers to an error challenge, so that the server ends the exchange
    /// with its tagged `NO` (XOAUTH2: an empty line; RFC 7628 §3.2.3: `^A`).
    pub fn abort_response(self) -> &'static str {
        match self {
            Self::Xoauth2 => "",
            Self::Oauthbearer => "\x01",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn initial_responses_follow_the_specs() {
        assert_eq!(
            Sasl::Xoauth2.initial_response("pmo@example.go.jp", "tok", "h", 993),
            "user=pmo@example.go.jp\x01auth=Bearer tok\x01\x01"
        );
        // RFC 7628 §4.1's example, with our user.
        assert_eq!(
            Sasl::Oauthbearer.initial_response(
                "a,b=c@example.go.jp",
                "tok",
                "imap.example.go.jp",
                143
            ),
            "n,a=a=2Cb=3Dc@example.go.jp,\x01host=imap.example.go.jp\x01port=143\x01auth=Bearer tok\x01\x01"
        );
    }
}
