//! What an administrator grants a plugin (`[plugins.NAME]` in `pmoflow.toml`): capabilities,
//! the hosts it may reach, and its limits. Network capabilities (`http`, `tls`, `whois`) check
//! every destination here before any I/O.

use std::collections::BTreeSet;
use std::net::{IpAddr, SocketAddr};

use super::Limits;
use super::net::NetError;

/// An `allow_hosts` entry that cannot be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid allow_hosts entry `{entry}`: {why}")]
pub struct HostRuleError {
    /// The entry as written (trimmed).
    pub entry: String,
    /// What is wrong with it.
    pub why: &'static str,
}

/// Capabilities every plugin has without a grant: they reach nothing outside the step.
pub const ALWAYS_GRANTED: &[&str] = &["log", "clock"];

/// Every capability the host offers (one WIT interface each, in `pmoflow:plugin@0.1`).
pub const KNOWN: &[&str] = &["log", "clock", "kv", "http", "tls", "whois"];

/// A plugin's grant.
#[derive(Debug, Clone)]
pub struct Grant {
    /// Granted capabilities, `log` and `clock` included.
    pub capabilities: BTreeSet<String>,
    /// Hosts the network capabilities may reach.
    pub allow_hosts: Vec<HostRule>,
    /// Limits per invocation.
    pub limits: Limits,
}

impl Default for Grant {
    fn default() -> Self {
        Self {
            capabilities: ALWAYS_GRANTED.iter().map(|s| s.to_string()).collect(),
            allow_hosts: Vec::new(),
            limits: Limits::default(),
        }
    }
}

impl Grant {
    /// The default grant with `limits`.
    pub fn with_limits(limits: Limits) -> Self {
        Self {
            limits,
            ..Self::default()
        }
    }

    /// Whether `capability` is granted.
    pub fn allows(&self, capability: &str) -> bool {
        self.capabilities.contains(capability)
    }

    /// Checks that `host:port` is in `allow_hosts` (`default_ports` are the ports an entry
    /// without a port stands for). Returns whether the matching entry names the host exactly
    /// (only exact entries may reach loopback or private addresses).
    pub fn check_host(
        &self,
        host: &str,
        port: u16,
        default_ports: &[u16],
    ) -> Result<bool, NetError> {
        let host = normalise_host(host);
        let mut found = None;
        for rule in &self.allow_hosts {
            if rule.matches(&host, port, default_ports) {
                let exact = rule.is_exact();
                found = Some(found.unwrap_or(false) || exact);
            }
        }
        let Some(exact) = found else {
            return Err(NetError::NotAllowed { host, port });
        };
        if let Ok(ip) = host.parse::<IpAddr>()
            && !is_public(ip)
            && !exact
        {
            return Err(NetError::Private { host, ip });
        }
        Ok(exact)
    }

    /// Whether some entry names `host` exactly (any port): the condition for a name to
    /// resolve to a loopback or private address.
    pub fn lists_exactly(&self, host: &str) -> bool {
        let host = normalise_host(host);
        self.allow_hosts
            .iter()
            .any(|r| r.is_exact() && r.host == host)
    }

    /// Checks `host:port`, resolves it, and checks every address: the addresses to connect to
    /// (so that a second lookup cannot return something else).
    pub async fn resolve(
        &self,
        host: &str,
        port: u16,
        default_ports: &[u16],
    ) -> Result<Vec<SocketAddr>, NetError> {
        let exact = self.check_host(host, port, default_ports)?;
        let host = normalise_host(host);
        let addrs: Vec<SocketAddr> = match host.parse::<IpAddr>() {
            Ok(ip) => vec![SocketAddr::new(ip, port)],
            Err(_) => tokio::net::lookup_host((host.as_str(), port))
                .await
                .map_err(|source| NetError::Resolve {
                    host: host.clone(),
                    source,
                })?
                .collect(),
        };
        check_addrs(&host, exact, &addrs)?;
        Ok(addrs)
    }
}

/// Refuses loopback and private addresses unless the name was listed exactly.
pub fn check_addrs(host: &str, exact: bool, addrs: &[SocketAddr]) -> Result<(), NetError> {
    if addrs.is_empty() {
        return Err(NetError::NoAddress {
            host: host.to_string(),
        });
    }
    if !exact && let Some(a) = addrs.iter().find(|a| !is_public(a.ip())) {
        return Err(NetError::Private {
            host: host.to_string(),
            ip: a.ip(),
        });
    }
    Ok(())
}

/// Lower case, without a trailing dot or IPv6 brackets.
fn normalise_host(host: &str) -> String {
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

    fn matches(&self, host: &str, port: u16, default_ports: &[u16]) -> bool {
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

    fn grant(hosts: &[&str]) -> Grant {
        Grant {
            allow_hosts: hosts.iter().map(|h| HostRule::parse(h).unwrap()).collect(),
            ..Grant::default()
        }
    }

    #[test]
    fn allowlist_matching() {
        let g = grant(&["rdap.example.jp", "*.go.jp", "127.0.0.1:8080", "[::1]:9000"]);
        assert_eq!(
            g.check_host("RDAP.example.jp.", 443, &[80, 443]).ok(),
            Some(true)
        );
        assert!(g.check_host("rdap.example.jp", 8443, &[80, 443]).is_err());
        assert_eq!(g.check_host("www.mof.go.jp", 443, &[443]).ok(), Some(false));
        assert!(g.check_host("go.jp", 443, &[443]).is_err());
        assert!(g.check_host("evilgo.jp", 443, &[443]).is_err());
        assert_eq!(g.check_host("127.0.0.1", 8080, &[80]).ok(), Some(true));
        assert_eq!(g.check_host("[::1]", 9000, &[80]).ok(), Some(true));
        let err = g
            .check_host("127.0.0.1", 80, &[80])
            .unwrap_err()
            .to_string();
        assert!(err.contains("not in the plugin's allow_hosts"), "{err}");
        // A wildcard never reaches private addresses.
        let any = grant(&["*"]);
        let err = any
            .check_host("10.1.2.3", 443, &[443])
            .unwrap_err()
            .to_string();
        assert!(err.contains("loopback or private address"), "{err}");
        assert!(check_addrs("x.go.jp", false, &["192.168.1.1:443".parse().unwrap()]).is_err());
        assert!(check_addrs("x.go.jp", true, &["192.168.1.1:443".parse().unwrap()]).is_ok());
        assert!(check_addrs("x.go.jp", false, &["203.0.113.9:443".parse().unwrap()]).is_err());
        assert!(check_addrs("x.go.jp", false, &["8.8.8.8:443".parse().unwrap()]).is_ok());
        assert!(!is_public("::ffff:127.0.0.1".parse().unwrap()));
        assert!(!is_public("fd00::1".parse().unwrap()));
        assert!(!is_public("169.254.169.254".parse().unwrap()));
    }

    #[test]
    fn bad_entries_are_explained() {
        for (entry, why) in [
            ("https://x.jp", "not a URL"),
            ("x.jp:0", "port"),
            ("a*.jp", "letters"),
            ("", "empty"),
        ] {
            let err = HostRule::parse(entry).unwrap_err().to_string();
            assert!(err.contains(why), "{entry}: {err}");
        }
    }
}
