//! `[replies]`: the reply address, limits, and how the sender of a reply is authenticated.

use std::time::Duration;

use super::ConfigError;
use super::raw::RawConfig;
use super::sections::Reader;

impl Reader<'_> {
    /// `[replies]` and `[http] public_url`.
    pub(in crate::config) fn replies(
        &self,
        raw: &RawConfig,
    ) -> Result<crate::outbox::ReplySettings, ConfigError> {
        let r = &raw.replies;
        if let Some(a) = &r.address {
            let text = a.get_ref();
            let valid = text.matches("{token}").count() == 1
                && text
                    .replace("{token}", "t")
                    .parse::<lettre::Address>()
                    .is_ok();
            if !valid {
                return Err(self.err(
                    a.span(),
                    format!("`{text}` is not a reply-address pattern"),
                    Some(
                        "write an address with {token} once, e.g. \"pmo+{token}@example.go.jp\""
                            .into(),
                    ),
                ));
            }
        }
        if let Some(u) = &raw.http.public_url
            && !(u.get_ref().starts_with("http://") || u.get_ref().starts_with("https://"))
        {
            return Err(self.err(
                u.span(),
                format!("`{}` is not an http(s) URL", u.get_ref()),
                Some("e.g. public_url = \"https://pmoflow.example.go.jp\"".into()),
            ));
        }
        Ok(crate::outbox::ReplySettings {
            address: r.address.as_ref().map(|a| a.get_ref().clone()),
            notify: r.notify.as_ref().map(|a| a.get_ref().clone()),
            max_size: match &r.max_size_kib {
                None => crate::inbound::DEFAULT_MAX_SIZE,
                Some(n) if (1..=1 << 20).contains(n.get_ref()) => {
                    usize::try_from(*n.get_ref()).unwrap_or(1) << 10
                }
                Some(n) => {
                    return Err(self.err(
                        n.span(),
                        format!(
                            "max_size_kib must be between 1 and 1048576, got {}",
                            n.get_ref()
                        ),
                        None,
                    ));
                }
            },
            token_ttl: self.duration(&r.token_ttl, Duration::from_secs(60 * 24 * 3600))?,
            public_url: raw
                .http
                .public_url
                .as_ref()
                .map(|u| u.get_ref().trim_end_matches('/').to_string()),
            auth: self.sender_auth(r)?,
        })
    }

    /// The sender-authentication keys of `[replies]`.
    fn sender_auth(
        &self,
        r: &super::raw::RawReplies,
    ) -> Result<crate::message::settings::SenderAuth, ConfigError> {
        let mut auth = crate::message::settings::SenderAuth::default();
        for id in r.trusted_authserv_ids.iter().flatten() {
            let text = id.get_ref().trim();
            if text.is_empty() || text.contains(|c: char| c.is_whitespace() || c == ';') {
                return Err(self.err(
                    id.span(),
                    format!("`{text}` is not an authserv-id"),
                    Some(
                        "write the host name your gateway puts first in its \
                         Authentication-Results headers, e.g. \"mx.example.go.jp\""
                            .into(),
                    ),
                ));
            }
            auth.trusted_authserv_ids.push(text.to_lowercase());
        }
        if let Some(v) = r.verify_dkim {
            auth.verify_dkim = v;
        }
        for s in r.dns_servers.iter().flatten() {
            let text = s.get_ref();
            let addr = text
                .parse::<std::net::SocketAddr>()
                .or_else(|_| {
                    text.parse::<std::net::IpAddr>()
                        .map(|ip| std::net::SocketAddr::new(ip, 53))
                })
                .map_err(|_| {
                    self.err(
                        s.span(),
                        format!("`{text}` is not a DNS server address"),
                        Some("an IP address, optionally with a port: \"192.0.2.53\", \"127.0.0.1:5353\"".into()),
                    )
                })?;
            auth.dns_servers.push(addr);
        }
        auth.dns_timeout = self.duration(&r.dns_timeout, auth.dns_timeout)?;
        Ok(auth)
    }
}
