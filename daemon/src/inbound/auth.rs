//! Is a reply from whom its `From` says? Sender authentication of inbound mail.
//!
//! Two sources, both optional and both documented in docs/replies.md:
//! - the `Authentication-Results` headers (RFC 8601) of the `authserv-id`s the administrator
//!   trusts: the ministry's own receiving gateway, which checked SPF, DKIM and DMARC with the
//!   connecting address in hand and strips such headers from incoming mail (RFC 8601 §5);
//! - DKIM verified here (mail-auth; keys from DNS). SPF is not evaluated here: it needs the
//!   address of the client that handed the message to the ministry, which only the receiving
//!   server knows, so an own DMARC evaluation could wrongly fail mail that passes by SPF.
//!   For the same reason only a trusted `dmarc=fail` is a *failure*; a signature that does not
//!   verify here leaves the message unauthenticated, not failed.
//!
//! Authenticated means aligned with the `From` domain: `dmarc=pass`, or `dkim=pass` whose
//! signing domain (`d=`) is the `From` domain or a parent of it (never a child, never a single
//! label), or `spf=pass` whose `smtp.mailfrom` domain is so.

use std::sync::OnceLock;

use serde::Serialize;

use crate::message::settings::SenderAuth;

/// What authentication says about a message's sender.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum AuthResult {
    /// Aligned with the `From` domain.
    Pass,
    /// A trusted gateway says DMARC failed: the `From` is forged (or the mail badly mangled).
    Fail,
    /// Nothing either way.
    None,
}

/// The verdict on one message, with the evidence in words (for logs, `inbound show`, explain).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Verdict {
    /// Pass, fail or none.
    pub result: AuthResult,
    /// Why, e.g. `dmarc=pass (mx.example.go.jp)` or `dkim=pass d=example.go.jp (verified)`.
    pub reason: String,
}

impl Verdict {
    fn none(reason: impl Into<String>) -> Self {
        Self {
            result: AuthResult::None,
            reason: reason.into(),
        }
    }

    /// One line: `pass: dmarc=pass (mx.example.go.jp)`.
    pub fn summary(&self) -> String {
        let r = match self.result {
            AuthResult::Pass => "pass",
            AuthResult::Fail => "fail",
            AuthResult::None => "none",
        };
        format!("{r}: {}", self.reason)
    }
}

/// Why DKIM keys cannot be looked up.
#[derive(Debug, Clone, thiserror::Error)]
pub enum ResolverError {
    /// No `dns_servers`, and the system's resolver configuration cannot be read.
    #[error("no system DNS resolver ({0})")]
    System(String),
    /// The resolver could not be made.
    #[error("DNS resolver: {0}")]
    Build(String),
}

/// Checks senders with one configuration; the DNS resolver is made on first use.
pub struct Authenticator {
    settings: SenderAuth,
    resolver: OnceLock<Result<mail_auth::MessageAuthenticator, ResolverError>>,
}

impl std::fmt::Debug for Authenticator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Authenticator")
            .field("settings", &self.settings)
            .finish_non_exhaustive()
    }
}

impl Authenticator {
    /// An authenticator for `[replies]`.
    pub fn new(settings: SenderAuth) -> Self {
        Self {
            settings,
            resolver: OnceLock::new(),
        }
    }

    /// What the trusted gateways say: cheap, no I/O. `None` when none of them spoke.
    pub fn from_headers(&self, raw: &[u8], from: Option<&str>) -> Option<Verdict> {
        let domain = from.and_then(domain_of)?;
        let head = mail_parser::MessageParser::default().parse_headers(raw)?;
        let mut verdict: Option<Verdict> = None;
        for value in head.header_values("Authentication-Results") {
            let Some(text) = value.as_text() else {
                continue;
            };
            let Some(found) = read_results(text, &domain, &self.settings.trusted_authserv_ids)
            else {
                continue;
            };
            // A failure anywhere outweighs a pass elsewhere.
            match (&verdict, found.result) {
                (Some(v), _) if v.result == AuthResult::Fail => {}
                (Some(v), AuthResult::None) if v.result == AuthResult::Pass => {}
                _ => verdict = Some(found),
            }
        }
        verdict
    }

    /// The full verdict: the trusted headers, then (if they are silent or say nothing aligned)
    /// DKIM verified here.
    pub async fn verdict(&self, raw: &[u8], from: Option<&str>) -> Verdict {
        let Some(domain) = from.and_then(domain_of) else {
            return Verdict::none("no From domain");
        };
        let headers = self.from_headers(raw, from);
        if let Some(v) = &headers
            && v.result != AuthResult::None
        {
            return v.clone();
        }
        let mut reasons: Vec<String> = headers.map(|v| v.reason).into_iter().collect();
        if self.settings.verify_dkim {
            let v = self.verify_dkim(raw, &domain).await;
            if v.result == AuthResult::Pass {
                return v;
            }
            reasons.push(v.reason);
        } else if self.settings.trusted_authserv_ids.is_empty() {
            reasons.push("no sender authentication is configured".into());
        }
        if reasons.is_empty() {
            reasons.push("no Authentication-Results from a trusted server".into());
        }
        Verdict::none(reasons.join("; "))
    }

    async fn verify_dkim(&self, raw: &[u8], domain: &str) -> Verdict {
        let Some(message) = mail_auth::AuthenticatedMessage::parse(raw) else {
            return Verdict::none("DKIM: the message could not be read");
        };
        if message.dkim_headers.is_empty() {
            return Verdict::none("no DKIM signature");
        }
        let resolver = match self.resolver.get_or_init(|| self.make_resolver()) {
            Ok(r) => r,
            Err(e) => return Verdict::none(format!("DKIM not verified: {e}")),
        };
        let outputs = resolver.verify_dkim(&message).await;
        let mut seen = Vec::new();
        for o in &outputs {
            let d = o
                .signature()
                .map(|s| s.d.to_lowercase())
                .unwrap_or_default();
            let result = match o.result() {
                mail_auth::DkimResult::Pass if aligned(&d, domain) => {
                    return Verdict {
                        result: AuthResult::Pass,
                        reason: format!("dkim=pass d={d} (verified)"),
                    };
                }
                mail_auth::DkimResult::Pass => "pass, not aligned with From".to_string(),
                mail_auth::DkimResult::Neutral(e) => format!("neutral ({e})"),
                mail_auth::DkimResult::Fail(e) => format!("fail ({e})"),
                mail_auth::DkimResult::PermError(e) => format!("permerror ({e})"),
                mail_auth::DkimResult::TempError(e) => format!("temperror ({e})"),
                mail_auth::DkimResult::None => "none".to_string(),
            };
            seen.push(format!("dkim d={d}: {result}"));
        }
        Verdict::none(seen.join("; "))
    }

    fn make_resolver(&self) -> Result<mail_auth::MessageAuthenticator, ResolverError> {
        use mail_auth::hickory_resolver::config::{
            ConnectionConfig, NameServerConfig, ResolverConfig, ResolverOpts,
        };
        let mut opts = ResolverOpts::default();
        opts.timeout = self.settings.dns_timeout;
        opts.attempts = 1;
        let made = if self.settings.dns_servers.is_empty() {
            match mail_auth::hickory_resolver::system_conf::read_system_conf() {
                Ok((config, mut system)) => {
                    system.timeout = opts.timeout;
                    system.attempts = 1;
                    mail_auth::MessageAuthenticator::new(config, system)
                }
                Err(e) => return Err(ResolverError::System(e.to_string())),
            }
        } else {
            let servers = self
                .settings
                .dns_servers
                .iter()
                .map(|a| {
                    let mut udp = ConnectionConfig::udp();
                    udp.port = a.port();
                    let mut tcp = ConnectionConfig::tcp();
                    tcp.port = a.port();
                    let mut ns = NameServerConfig::udp_and_tcp(a.ip());
                    ns.connections = vec![udp, tcp];
                    ns
                })
                .collect();
            mail_auth::MessageAuthenticator::new(
                ResolverConfig::from_parts(None, Vec::new(), servers),
                opts,
            )
        };
        made.map_err(|e| ResolverError::Build(e.to_string()))
    }
}

/// The domain of an address, lowercased.
fn domain_of(address: &str) -> Option<String> {
    let (_, d) = address.trim().rsplit_once('@')?;
    let d = d.trim().trim_end_matches('.').to_lowercase();
    (!d.is_empty()).then_some(d)
}

/// `d` may vouch for `from`: the same domain, or a parent of it with at least two labels.
fn aligned(d: &str, from: &str) -> bool {
    let d = d.trim_end_matches('.');
    !d.is_empty() && (d == from || (d.contains('.') && from.ends_with(&format!(".{d}"))))
}

/// Reads one `Authentication-Results` value if a trusted server wrote it.
fn read_results(text: &str, from_domain: &str, trusted: &[String]) -> Option<Verdict> {
    let text = strip_comments(text);
    let mut parts = text.split(';');
    let id = parts
        .next()?
        .split_whitespace()
        .next()?
        .trim()
        .to_lowercase();
    if !trusted.contains(&id) {
        return None;
    }
    let mut pass = None;
    let mut seen = Vec::new();
    for part in parts {
        let mut tokens = part.split_whitespace();
        let Some((method, result)) = tokens.next().and_then(|t| t.split_once('=')) else {
            continue;
        };
        let method = method.split('/').next().unwrap_or(method).to_lowercase();
        let result = result.to_lowercase();
        let props: Vec<(String, String)> = tokens
            .filter_map(|t| t.split_once('='))
            .map(|(k, v)| (k.to_lowercase(), v.trim_matches('"').to_lowercase()))
            .collect();
        let prop = |name: &str| {
            props
                .iter()
                .find(|(k, _)| k == name)
                .map(|(_, v)| v.as_str())
        };
        seen.push(format!("{method}={result}"));
        match (method.as_str(), result.as_str()) {
            ("dmarc", "fail") => {
                return Some(Verdict {
                    result: AuthResult::Fail,
                    reason: format!("dmarc=fail ({id})"),
                });
            }
            ("dmarc", "pass")
                if prop("header.from").is_none_or(|f| f.trim_end_matches('.') == from_domain) =>
            {
                // DMARC's own word is the strongest reason to give.
                pass = Some(format!("dmarc=pass ({id})"));
            }
            ("dkim", "pass") => {
                let d = prop("header.d")
                    .map(str::to_string)
                    .or_else(|| prop("header.i").and_then(domain_of));
                if let Some(d) = d
                    && aligned(&d, from_domain)
                {
                    pass.get_or_insert(format!("dkim=pass header.d={d} ({id})"));
                }
            }
            ("spf", "pass") => {
                let d = prop("smtp.mailfrom").and_then(|m| {
                    if m.contains('@') {
                        domain_of(m)
                    } else {
                        Some(m.to_string())
                    }
                });
                if let Some(d) = d
                    && aligned(&d, from_domain)
                {
                    pass.get_or_insert(format!("spf=pass smtp.mailfrom={d} ({id})"));
                }
            }
            _ => {}
        }
    }
    Some(match pass {
        Some(reason) => Verdict {
            result: AuthResult::Pass,
            reason,
        },
        None if seen.is_empty() => Verdict::none(format!("{id}: no results")),
        None => Verdict::none(format!(
            "{id}: {} (nothing aligned with From)",
            seen.join(" ")
        )),
    })
}

/// The value without RFC 5322 comments (parenthesised, nested, with `\` escapes).
fn strip_comments(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut depth = 0usize;
    let mut escaped = false;
    let mut quoted = false;
    for c in text.chars() {
        if escaped {
            escaped = false;
            if depth == 0 {
                out.push(c);
            }
            continue;
        }
        match c {
            '\\' => {
                escaped = true;
                if depth == 0 {
                    out.push(c);
                }
            }
            '"' if depth == 0 => {
                quoted = !quoted;
                out.push(c);
            }
            '(' if !quoted => depth += 1,
            ')' if !quoted && depth > 0 => depth -= 1,
            _ if depth == 0 => out.push(c),
            _ => {}
        }
    }
    out
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn check(headers: &str, from: &str) -> Option<Verdict> {
        let a = Authenticator::new(SenderAuth {
            trusted_authserv_ids: vec!["mx.example.go.jp".into()],
            ..SenderAuth::default()
        });
        let raw = format!("{headers}From: {from}\r\nSubject: x\r\n\r\nbody\r\n");
        a.from_headers(raw.as_bytes(), Some(from))
    }

    #[test]
    fn trusted_results_pass_fail_or_say_nothing() {
        let v = check(
            "Authentication-Results: mx.example.go.jp; spf=pass smtp.mailfrom=pjmo.example.jp; dkim=none; dmarc=pass (p=none) header.from=pjmo.example.jp\r\n",
            "yamada@pjmo.example.jp",
        )
        .unwrap();
        assert_eq!(v.result, AuthResult::Pass);
        assert_eq!(v.reason, "dmarc=pass (mx.example.go.jp)");
        let v = check(
            "Authentication-Results: mx.example.go.jp;\r\n dkim=pass (2048-bit key; unprotected) header.d=pjmo.example.jp header.s=s1;\r\n dmarc=fail header.from=pjmo.example.jp\r\n",
            "yamada@pjmo.example.jp",
        )
        .unwrap();
        assert_eq!(v.result, AuthResult::Fail, "{v:?}");
        // An untrusted server's word is not read at all.
        assert!(
            check(
                "Authentication-Results: attacker.example; dmarc=pass header.from=pjmo.example.jp\r\n",
                "yamada@pjmo.example.jp"
            )
            .is_none()
        );
        // Passing for another domain proves nothing about this From.
        let v = check(
            "Authentication-Results: mx.example.go.jp; dkim=pass header.d=attacker.example; spf=pass smtp.mailfrom=bounce@attacker.example\r\n",
            "yamada@pjmo.example.jp",
        )
        .unwrap();
        assert_eq!(v.result, AuthResult::None, "{v:?}");
        // A trusted fail outweighs a pass in another header.
        let v = check(
            "Authentication-Results: mx.example.go.jp; dmarc=fail\r\nAuthentication-Results: mx.example.go.jp; dkim=pass header.d=pjmo.example.jp\r\n",
            "yamada@pjmo.example.jp",
        )
        .unwrap();
        assert_eq!(v.result, AuthResult::Fail);
    }

    #[test]
    fn alignment_is_the_domain_or_a_parent_never_a_child() {
        assert!(aligned("example.jp", "example.jp"));
        assert!(aligned("example.jp", "pjmo.example.jp"));
        assert!(!aligned("pjmo.example.jp", "example.jp"));
        assert!(!aligned("jp", "example.jp"));
        assert!(!aligned("ample.jp", "example.jp"));
    }

    #[test]
    fn comments_may_hold_separators() {
        assert_eq!(
            strip_comments("mx; dkim=pass (a; b (nested)) header.d=x"),
            "mx; dkim=pass  header.d=x"
        );
    }
}
