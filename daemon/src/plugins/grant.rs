//! What an administrator grants a plugin (`[plugins.NAME]` in `pmoflow.toml`): capabilities,
//! the hosts it may reach, and its limits. Network capabilities (`http`, `tls`, `whois`) check
//! every destination here before any I/O.

use std::collections::BTreeSet;
use std::net::{IpAddr, SocketAddr};

use super::Limits;
use super::net::NetError;
use crate::egress::normalise_host;
pub use crate::egress::{HostRule, HostRuleError, is_public};

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
            .any(|r| r.is_exact() && r.host() == host)
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
