//! Mail settings as data: the sender, the SMTP server, the charset, how replies come back, and
//! secrets that never print.

use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// A secret value (password, webhook key). Never printed.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    /// Wraps a value.
    pub fn new(value: impl Into<String>) -> Self {
        Self(value.into())
    }

    /// The value, for the one place that needs it.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(***)")
    }
}

/// How to reach the SMTP server.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum SmtpTls {
    /// Plain connection upgraded with STARTTLS (port 587).
    #[default]
    Starttls,
    /// TLS from the first byte (port 465).
    Tls,
    /// No TLS (a local relay on a trusted network, or a test server).
    None,
}

/// `[smtp]`, resolved.
#[derive(Debug, Clone)]
pub struct SmtpConfig {
    /// Host name.
    pub host: String,
    /// Port.
    pub port: u16,
    /// TLS mode.
    pub tls: SmtpTls,
    /// Login name.
    pub username: Option<String>,
    /// Password (from `password_env` or `password_file`).
    pub password: Option<Secret>,
    /// `oauth2 = "NAME"`: log in with XOAUTH2 and a token from `[oauth2.NAME]` instead.
    pub oauth2: Option<String>,
    /// Connection and command timeout.
    pub timeout: Duration,
}

/// The character set of outgoing mail.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, Serialize)]
pub enum Charset {
    /// UTF-8 with RFC 2047 headers and base64/quoted-printable bodies.
    #[default]
    #[serde(rename = "utf-8")]
    Utf8,
    /// ISO-2022-JP (JIS X 0208), 7bit, for gateways that require it. Plain-text messages only;
    /// characters outside the set (e.g. emoji) are an error, not mojibake.
    #[serde(rename = "iso-2022-jp")]
    Iso2022Jp,
}

/// What notification steps need from the configuration.
#[derive(Debug, Clone)]
pub struct MailSettings {
    /// `From:` of every message, e.g. `"PMO事務局 <pmo@example.go.jp>"`.
    pub from: String,
    /// With no `[smtp]`, messages are written here as `.eml` files.
    pub outbox_dir: PathBuf,
    /// The SMTP server, if any.
    pub smtp: Option<SmtpConfig>,
    /// Time zone of the `Date:` header.
    pub timezone: chrono_tz::Tz,
    /// Character set.
    pub charset: Charset,
}

impl Default for MailSettings {
    fn default() -> Self {
        Self {
            charset: Charset::Utf8,
            from: "pmoflow <pmoflow@localhost>".into(),
            outbox_dir: PathBuf::from("var/outbox"),
            smtp: None,
            timezone: chrono_tz::Asia::Tokyo,
        }
    }
}

/// `[replies]`, resolved: how requests are answered.
#[derive(Debug, Clone, Default)]
pub struct ReplySettings {
    /// Reply-address pattern with `{token}`, e.g. `pmo+{token}@example.go.jp`; `None` derives it
    /// from `[mail] from` (`local+{token}@domain`).
    pub address: Option<String>,
    /// Who is told about quarantined messages; `None` means the `[mail] from` address.
    pub notify: Option<String>,
    /// Largest inbound message accepted, in bytes.
    pub max_size: usize,
    /// How long a token stays valid after its request's deadline (or creation, without one).
    pub token_ttl: Duration,
    /// Base URL for links in emails (`[http] public_url`), if the HTTP listener is reachable.
    pub public_url: Option<String>,
    /// How the sender of a reply is authenticated.
    pub auth: SenderAuth,
}

/// `[replies]` sender authentication: whose word is taken that a reply comes from its `From`.
#[derive(Debug, Clone)]
pub struct SenderAuth {
    /// `authserv-id`s (RFC 8601) whose `Authentication-Results` headers are trusted: the
    /// ministry's own receiving gateway, which strips such headers from incoming mail.
    pub trusted_authserv_ids: Vec<String>,
    /// Verify DKIM signatures here (keys looked up in DNS).
    pub verify_dkim: bool,
    /// DNS servers for the key lookups (`ip:port`); empty means the system's resolver.
    pub dns_servers: Vec<std::net::SocketAddr>,
    /// How long one key lookup may take.
    pub dns_timeout: Duration,
}

impl Default for SenderAuth {
    fn default() -> Self {
        Self {
            trusted_authserv_ids: Vec::new(),
            verify_dkim: true,
            dns_servers: Vec::new(),
            dns_timeout: Duration::from_secs(3),
        }
    }
}

impl ReplySettings {
    /// The reply-address pattern in effect.
    pub fn pattern(&self, from: &str) -> String {
        if let Some(p) = &self.address {
            return p.clone();
        }
        let bare = from
            .rsplit('<')
            .next()
            .unwrap_or(from)
            .trim_end_matches('>')
            .trim();
        match bare.split_once('@') {
            Some((local, domain)) => format!("{local}+{{token}}@{domain}"),
            None => "pmoflow+{token}@localhost".into(),
        }
    }
}
