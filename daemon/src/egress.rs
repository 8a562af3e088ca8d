//! The egress policy: which hosts pmoflow's own HTTP requests may reach (the `http` action,
//! webhook deliveries), from `[egress] allow_hosts`. Also the host-rule syntax and the
//! public-address test plugins' grants share.
//!
//! A destination passes when its host matches an entry and, if it is (or resolves to) a
//! loopback, private, link-local or otherwise non-public address, an entry names it exactly.
//! The check runs on the URL before a request, on every redirect, and after DNS resolution on
//! every connection (the resolver of [`client`] refuses a name whose addresses are not
//! allowed), so a public name that resolves to `169.254.169.254` or a redirect to
//! `http://127.0.0.1/` is refused like the literal address.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

/// Why a destination is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EgressError {
    /// Not an absolute http(s) URL.
    #[error("`{url}` is not an http or https URL")]
    BadUrl {
        /// The URL as given (shortened).
        url: String,
    },
    /// No entry of `[egress] allow_hosts` matches.
    #[error("{host}:{port} is not in [egress] allow_hosts")]
    NotAllowed {
        /// Host.
        host: String,
        /// Port.
        port: u16,
    },
    /// A non-public address not named exactly.
    #[error(
        "{host} is a loopback, private or link-local address{}; list it exactly in [egress] allow_hosts to allow it",
        resolved(host, ip)
    )]
    Private {
        /// Host as asked for.
        host: String,
        /// The refused address.
        ip: IpAddr,
    },
}

/// Why a response body could not be read.
#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    /// Longer than the cap: reading stopped there.
    #[error("the response exceeds the {} KiB limit ([http_client] max_response_kib)", .max >> 10)]
    TooLarge {
        /// The cap in bytes.
        max: usize,
    },
    /// The connection failed while reading.
    #[error("reading the response failed: {0}")]
    Read(#[source] reqwest::Error),
}

/// Reads a response body as it streams in, up to `max` bytes: a longer body (announced by
/// `Content-Length` or found while reading) stops the reading with [`ReadError::TooLarge`],
/// so no more than `max` bytes are ever held.
pub async fn read_capped(mut resp: reqwest::Response, max: usize) -> Result<Vec<u8>, ReadError> {
    if resp.content_length().is_some_and(|n| n > max as u64) {
        return Err(ReadError::TooLarge { max });
    }
    let mut out = Vec::new();
    while let Some(chunk) = resp.chunk().await.map_err(ReadError::Read)? {
        if out.len() + chunk.len() > max {
            return Err(ReadError::TooLarge { max });
        }
        out.extend_from_slice(&chunk);
    }
    Ok(out)
}

/// ` (resolved to ADDRESS)` when the host is a name.
fn resolved(host: &str, ip: &IpAddr) -> String {
    if host.parse::<IpAddr>().is_ok() {
        String::new()
    } else {
        format!(" (resolved to {ip})")
    }
}

/// `[egress]`: the hosts built-in actions may reach. The default, `["*"]`, is every public
/// host and no loopback, private or link-local address.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EgressPolicy {
    rules: Vec<HostRule>,
    max_response: usize,
}

/// `[http_client] max_response_kib` by default: 4 MiB.
pub const DEFAULT_MAX_RESPONSE: usize = 4 << 20;

impl Default for EgressPolicy {
    fn default() -> Self {
        Self {
            rules: vec![HostRule {
                host: "*".into(),
                port: None,
            }],
            max_response: DEFAULT_MAX_RESPONSE,
        }
    }
}

impl EgressPolicy {
    /// A policy of these entries (an empty list allows nothing).
    pub fn new(rules: Vec<HostRule>) -> Self {
        Self {
            rules,
            max_response: DEFAULT_MAX_RESPONSE,
        }
    }

    /// The same policy with responses read up to `max` bytes.
    pub fn with_max_response(mut self, max: usize) -> Self {
        self.max_response = max;
        self
    }

    /// The most of a response body that is read (`[http_client] max_response_kib`).
    pub fn max_response(&self) -> usize {
        self.max_response
    }

    /// Whether `host:port` is covered by an entry; an entry without a port covers every port.
    /// Returns whether a covering entry names the host exactly.
    fn covers(&self, host: &str, port: u16) -> Option<bool> {
        let mut found = None;
        for rule in &self.rules {
            if rule.matches(host, port, &[port]) {
                found = Some(found.unwrap_or(false) || rule.is_exact());
            }
        }
        found
    }

    /// Whether an entry names `host` exactly: the condition for reaching a non-public address.
    pub fn lists_exactly(&self, host: &str) -> bool {
        let host = normalise_host(host);
        self.rules.iter().any(|r| {
            r.is_exact()
                && (r.host == host
                    || matches!((r.host.parse::<IpAddr>(), host.parse::<IpAddr>()), (Ok(a), Ok(b)) if a == b))
        })
    }

    /// Checks a URL (scheme, host, port, and the address if the host is one).
    pub fn check_url(&self, url: &str) -> Result<reqwest::Url, EgressError> {
        let bad = || EgressError::BadUrl {
            url: url.chars().take(200).collect(),
        };
        let parsed = reqwest::Url::parse(url).map_err(|_| bad())?;
        self.check_parsed(&parsed)?;
        Ok(parsed)
    }

    fn check_parsed(&self, url: &reqwest::Url) -> Result<(), EgressError> {
        if !matches!(url.scheme(), "http" | "https") {
            return Err(EgressError::BadUrl {
                url: url.as_str().chars().take(200).collect(),
            });
        }
        // The URL parser has already normalised numeric hosts (`2130706433`, `0x7f.1`) to
        // dotted quads.
        let Some(host) = url.host_str().map(normalise_host) else {
            return Err(EgressError::BadUrl {
                url: url.as_str().chars().take(200).collect(),
            });
        };
        let port = url.port_or_known_default().unwrap_or(443);
        let Some(exact) = self.covers(&host, port) else {
            return Err(EgressError::NotAllowed { host, port });
        };
        if let Ok(ip) = host.parse::<IpAddr>()
            && !is_public(ip)
            && !exact
        {
            return Err(EgressError::Private { host, ip });
        }
        Ok(())
    }

    /// Checks the addresses a name resolved to.
    pub fn check_addrs(&self, host: &str, addrs: &[SocketAddr]) -> Result<(), EgressError> {
        if self.lists_exactly(host) {
            return Ok(());
        }
        match addrs.iter().find(|a| !is_public(a.ip())) {
            Some(a) => Err(EgressError::Private {
                host: normalise_host(host),
                ip: a.ip(),
            }),
            None => Ok(()),
        }
    }
}

/// An HTTP client that applies `policy`: every redirect is checked (at most 10 followed), and
/// its resolver refuses names whose addresses the policy does not allow. It connects directly
/// (proxy environment variables are not used: a proxy would resolve the names itself).
pub fn client(
    policy: Arc<EgressPolicy>,
    timeout: Duration,
    user_agent: &str,
) -> reqwest::Result<reqwest::Client> {
    let redirects = policy.clone();
    reqwest::Client::builder()
        .no_proxy()
        .timeout(timeout)
        .user_agent(user_agent)
        .redirect(reqwest::redirect::Policy::custom(move |attempt| {
            if attempt.previous().len() >= 10 {
                return attempt.error("more than 10 redirects");
            }
            match redirects.check_parsed(attempt.url()) {
                Ok(()) => attempt.follow(),
                Err(e) => attempt.error(e),
            }
        }))
        .dns_resolver(Arc::new(CheckedResolver::new(Arc::new(
            move |host: &str, addrs: &[SocketAddr]| {
                policy
                    .check_addrs(host, addrs)
                    .map_err(|e| Box::new(e) as Box<dyn std::error::Error + Send + Sync>)
            },
        ))))
        .build()
}

/// The egress refusal behind a request error, if that is why it failed (so that callers can
/// treat it as permanent rather than as a network failure worth retrying).
pub fn refusal<'a>(err: &'a (dyn std::error::Error + 'static)) -> Option<&'a EgressError> {
    let mut cur: Option<&(dyn std::error::Error + 'static)> = Some(err);
    while let Some(e) = cur {
        if let Some(found) = e.downcast_ref::<EgressError>() {
            return Some(found);
        }
        cur = e.source();
    }
    None
}

/// The address check a [`CheckedResolver`] applies to every name it resolves.
pub type AddrCheck = dyn Fn(&str, &[SocketAddr]) -> Result<(), Box<dyn std::error::Error + Send + Sync>>
    + Send
    + Sync;

/// A DNS resolver for reqwest that resolves with the system resolver and refuses a name whose
/// addresses `check` does not accept, so the connection is made only to checked addresses.
/// Used here for the egress policy and by plugins for their grants.
pub struct CheckedResolver {
    check: Arc<AddrCheck>,
}

impl CheckedResolver {
    /// A resolver applying `check`.
    pub fn new(check: Arc<AddrCheck>) -> Self {
        Self { check }
    }
}

impl reqwest::dns::Resolve for CheckedResolver {
    fn resolve(&self, name: reqwest::dns::Name) -> reqwest::dns::Resolving {
        let check = self.check.clone();
        let host = name.as_str().to_string();
        Box::pin(async move {
            let addrs: Vec<SocketAddr> =
                tokio::net::lookup_host((host.as_str(), 0)).await?.collect();
            check(&host, &addrs)?;
            Ok(Box::new(addrs.into_iter()) as reqwest::dns::Addrs)
        })
    }
}

/// An `allow_hosts` entry that cannot be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid allow_hosts entry `{entry}`: {why}")]
pub struct HostRuleError {
    /// The entry as written (trimmed).
    pub entry: String,
    /// What is wrong with it.
    pub why: &'static str,
}

/// Lower case, without a trailing dot or IPv6 brackets.
pub(crate) fn normalise_host(host: &str) -> String {
    host.trim_end_matches('.')
        .trim_start_matches('[')
        .trim_end_matches(']')
        .to_ascii_lowercase()
}

/// Whether an address is on the public internet (not loopback, private, link-local, shared,
/// unspecified, multicast, documentation or otherwise reserved).
pub fn is_public(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => {
            let o = v4.octets();
            !(v4.is_loopback()
                || v4.is_private()
                || v4.is_link_local()
                || v4.is_unspecified()
                || v4.is_broadcast()
                || v4.is_multicast()
                || v4.is_documentation()
                || o[0] == 0
                || (o[0] == 100 && (64..128).contains(&o[1]))
                || (o[0] == 192 && o[1] == 0 && o[2] == 0)
                || (o[0] == 198 && (18..20).contains(&o[1]))
                || o[0] >= 240)
        }
        IpAddr::V6(v6) => {
            if let Some(v4) = v6.to_ipv4_mapped() {
                return is_public(IpAddr::V4(v4));
            }
            let s = v6.segments();
            !(v6.is_loopback()
                || v6.is_unspecified()
                || v6.is_multicast()
                || (s[0] & 0xfe00) == 0xfc00
                || (s[0] & 0xffc0) == 0xfe80
                || (s[0] == 0x2001 && s[1] == 0x0db8)
                || (s[0] == 0x64 && s[1] == 0xff9b))
        }
    }
}

/// One `allow_hosts` entry: `host`, `host:port`, `*.suffix`, `*.suffix:port`, `*`, an IP
/// address, `[v6]:port`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostRule {
    host: String,
    port: Option<u16>,
}

impl HostRule {
    /// Parses an entry.
    pub fn parse(entry: &str) -> Result<Self, HostRuleError> {
        let entry = entry.trim();
        let bad = |why: &'static str| {
            Err(HostRuleError {
                entry: entry.to_string(),
                why,
            })
        };
        if entry.is_empty() {
            return bad("empty");
        }
        if entry.contains("://") || entry.contains('/') {
            return bad("write a host name, not a URL (e.g. \"rdap.example.jp\")");
        }
        let (host, port) = if let Some(rest) = entry.strip_prefix('[') {
            let Some((h, after)) = rest.split_once(']') else {
                return bad("unclosed `[`");
            };
            match after.strip_prefix(':') {
                Some(p) => (h.to_string(), Some(p)),
                None if after.is_empty() => (h.to_string(), None),
                None => return bad("unexpected text after `]`"),
            }
        } else if entry.matches(':').count() > 1 {
            (entry.to_string(), None)
        } else if let Some((h, p)) = entry.split_once(':') {
            (h.to_string(), Some(p))
        } else {
            (entry.to_string(), None)
        };
        let port = match port {
            None => None,
            Some(p) => match p.parse::<u16>() {
                Ok(n) if n > 0 => Some(n),
                _ => return bad("the port must be a number from 1 to 65535"),
            },
        };
        let host = normalise_host(&host);
        let name = host.strip_prefix("*.").unwrap_or(&host);
        if host != "*"
            && (name.is_empty()
                || name.contains('*')
                || !name
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | ':')))
        {
            return bad("a host is letters, digits, `.` and `-`, optionally after `*.`");
        }
        Ok(Self { host, port })
    }

    /// Whether the entry names one host (not a wildcard).
    pub fn is_exact(&self) -> bool {
        !self.host.starts_with('*')
    }

    /// The host part as written (lower case; `*` or `*.suffix` for wildcards).
    pub fn host(&self) -> &str {
        &self.host
    }

    /// Whether the entry covers `host` (normalised) on `port`; an entry without a port covers
    /// `default_ports`.
    pub fn matches(&self, host: &str, port: u16, default_ports: &[u16]) -> bool {
        let port_ok = match self.port {
            Some(p) => p == port,
            None => default_ports.contains(&port),
        };
        let host_ok = if self.host == "*" {
            true
        } else if let Some(suffix) = self.host.strip_prefix("*.") {
            host.len() > suffix.len() + 1
                && host.ends_with(suffix)
                && host.as_bytes()[host.len() - suffix.len() - 1] == b'.'
        } else {
            self.host == host
                || matches!(
                    (self.host.parse::<IpAddr>(), host.parse::<IpAddr>()),
                    (Ok(a), Ok(b)) if a == b
                )
        };
        port_ok && host_ok
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn policy(hosts: &[&str]) -> EgressPolicy {
        EgressPolicy::new(hosts.iter().map(|h| HostRule::parse(h).unwrap()).collect())
    }

    #[test]
    fn default_allows_public_hosts_only() {
        let p = EgressPolicy::default();
        assert!(p.check_url("https://teams.example.go.jp/webhook/x").is_ok());
        assert!(p.check_url("https://example.com:8443/x").is_ok());
        for url in [
            "http://169.254.169.254/latest/meta-data/",
            "http://127.0.0.1:5432/",
            "http://[::1]/",
            "http://10.0.0.5/admin",
            "http://[::ffff:192.168.0.1]/",
        ] {
            let err = p.check_url(url).unwrap_err();
            assert!(matches!(err, EgressError::Private { .. }), "{url}: {err}");
        }
        assert!(matches!(
            p.check_url("file:///etc/passwd"),
            Err(EgressError::BadUrl { .. })
        ));
        assert!(
            p.check_addrs("evil.example", &["127.0.0.1:80".parse().unwrap()])
                .is_err()
        );
        assert!(
            p.check_addrs("ok.example", &["8.8.8.8:80".parse().unwrap()])
                .is_ok()
        );
    }

    #[test]
    fn exact_entries_open_private_addresses() {
        let p = policy(&["*.go.jp", "127.0.0.1", "intranet.local:8080"]);
        assert!(p.check_url("http://127.0.0.1:9999/x").is_ok());
        assert!(p.check_url("https://www.digital.go.jp/").is_ok());
        assert!(matches!(
            p.check_url("https://example.com/"),
            Err(EgressError::NotAllowed { .. })
        ));
        assert!(p.check_url("http://intranet.local:8080/").is_ok());
        assert!(p.check_url("http://intranet.local:8081/").is_err());
        // A wildcard entry never reaches a private address, even when the name matches.
        assert!(
            p.check_addrs("x.go.jp", &["10.1.1.1:443".parse().unwrap()])
                .is_err()
        );
        assert!(
            p.check_addrs("intranet.local", &["10.1.1.1:8080".parse().unwrap()])
                .is_ok()
        );
    }
}
