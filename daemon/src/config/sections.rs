//! From the raw file to the types the code uses, one table at a time. Every value is checked
//! here, with its location in the file; secrets are read once, here.

use std::collections::BTreeMap;
use std::ops::Range;
use std::path::Path;
use std::time::Duration;

use toml::Spanned;

use super::raw::{RawConfig, RawGrant, RawImap, RawSmtp};
use super::{ConfigError, EnvOverrides};
use crate::diag::Diagnostic;
use crate::duration::{DURATION_HINT, HumanDuration};
use crate::engine::{EngineConfig, default_node_id};
use crate::message::settings::Secret;

/// Reads values of one file: locates errors in it and collects the secrets that could not be
/// read (a missing secret stops the daemon from starting, but not the CLI commands that send
/// nothing).
pub(super) struct Reader<'a> {
    pub(super) file: &'a Path,
    pub(super) text: &'a str,
    pub(super) env: &'a EnvOverrides,
    pub(super) secret_errors: Vec<String>,
}

impl Reader<'_> {
    /// An error at `span` of the file.
    pub(super) fn err(&self, span: Range<usize>, msg: String, hint: Option<String>) -> ConfigError {
        ConfigError::Invalid(Diagnostic::span(self.file, self.text, span, msg, hint))
    }

    /// A duration value, or `default`.
    pub(super) fn duration(
        &self,
        v: &Option<Spanned<String>>,
        default: Duration,
    ) -> Result<Duration, ConfigError> {
        match v {
            None => Ok(default),
            Some(s) => HumanDuration::parse(s.get_ref())
                .map(|d| d.0)
                .map_err(|m| self.err(s.span(), m.to_string(), Some(DURATION_HINT.into()))),
        }
    }

    /// A count from 1 to `max`, or `default`.
    pub(super) fn count(
        &self,
        v: &Option<Spanned<i64>>,
        default: usize,
        max: i64,
        what: &str,
    ) -> Result<usize, ConfigError> {
        match v {
            None => Ok(default),
            Some(n) if (1..=max).contains(n.get_ref()) => {
                Ok(usize::try_from(*n.get_ref()).unwrap_or(default))
            }
            Some(n) => Err(self.err(
                n.span(),
                format!("{what} must be between 1 and {max}, got {}", n.get_ref()),
                None,
            )),
        }
    }

    /// A secret from an environment variable or a file (exactly one of them).
    fn read_secret(
        &self,
        span: Range<usize>,
        what: &str,
        env_name: Option<&str>,
        file: Option<&Path>,
    ) -> Result<Secret, ConfigError> {
        match (env_name, file) {
            (Some(var), None) => {
                self.env
                    .vars
                    .get(var)
                    .cloned()
                    .map(Secret::new)
                    .ok_or_else(|| {
                        self.err(
                            span.clone(),
                            format!("{what}: environment variable `{var}` is not set"),
                            Some("export it before starting pmoflow".into()),
                        )
                    })
            }
            (None, Some(path)) => std::fs::read_to_string(path)
                .map(|v| Secret::new(v.trim_end_matches(['\n', '\r'])))
                .map_err(|e| {
                    self.err(
                        span.clone(),
                        format!("{what}: cannot read {}: {e}", path.display()),
                        None,
                    )
                }),
            _ => Err(self.err(
                span.clone(),
                format!("{what}: give exactly one of `env` or `file`"),
                Some("e.g. hook_key = { env = \"PMOFLOW_HOOK_KEY\" }".into()),
            )),
        }
    }

    /// A secret, or `None` with the problem kept in `secret_errors`.
    pub(super) fn secret(
        &mut self,
        span: Range<usize>,
        what: &str,
        env_name: Option<&str>,
        file: Option<&Path>,
    ) -> Option<Secret> {
        match self.read_secret(span, what, env_name, file) {
            Ok(v) => Some(v),
            Err(e) => {
                self.secret_errors.push(e.to_string());
                None
            }
        }
    }

    /// `[secrets]`: every named secret that could be read.
    pub(super) fn secrets(&mut self, raw: &RawConfig) -> BTreeMap<String, Secret> {
        let mut secrets = BTreeMap::new();
        for (name, spec) in &raw.secrets {
            let value = self.secret(
                spec.span(),
                &format!("secret `{name}`"),
                spec.get_ref().env.as_deref(),
                spec.get_ref().file.as_deref(),
            );
            if let Some(value) = value {
                secrets.insert(name.clone(), value);
            }
        }
        secrets
    }

    /// `timezone`: the daemon's zone (Asia/Tokyo by default).
    pub(super) fn timezone(&self, raw: &RawConfig) -> Result<chrono_tz::Tz, ConfigError> {
        match &raw.timezone {
            None => Ok(chrono_tz::Asia::Tokyo),
            Some(tz) => tz.get_ref().parse().map_err(|_| {
                self.err(
                    tz.span(),
                    format!("unknown time zone `{}`", tz.get_ref()),
                    Some("use an IANA name such as \"Asia/Tokyo\"".into()),
                )
            }),
        }
    }

    /// `[engine]` and `node_id` (the step services are filled in later).
    pub(super) fn engine(
        &self,
        raw: &RawConfig,
        timezone: chrono_tz::Tz,
    ) -> Result<EngineConfig, ConfigError> {
        let defaults = EngineConfig::default();
        let max_concurrent_runs = match &raw.engine.max_concurrent_runs {
            None => defaults.max_concurrent_runs,
            Some(n) if (1..=100_000).contains(n.get_ref()) => {
                usize::try_from(*n.get_ref()).unwrap_or(1)
            }
            Some(n) => {
                return Err(self.err(
                    n.span(),
                    format!(
                        "max_concurrent_runs must be between 1 and 100000, got {}",
                        n.get_ref()
                    ),
                    None,
                ));
            }
        };
        let lease = self.duration(
            &raw.engine.lease,
            Duration::from_secs(crate::engine::DEFAULT_LEASE_SECS.unsigned_abs()),
        )?;
        if lease < Duration::from_secs(3)
            && let Some(l) = &raw.engine.lease
        {
            return Err(self.err(l.span(), "lease must be at least 3s".into(), None));
        }
        let label = self
            .env
            .node_id
            .clone()
            .or(raw.node_id.clone())
            .unwrap_or_else(default_node_id);
        let instance = crate::cluster::Instance::new(Some(&label));
        Ok(EngineConfig {
            node_id: instance.label,
            instance_id: instance.id,
            max_concurrent_runs,
            poll_interval: self.duration(&raw.engine.poll_interval, defaults.poll_interval)?,
            lease: chrono::Duration::from_std(lease).unwrap_or(defaults.lease),
            shutdown_grace: self.duration(&raw.engine.shutdown_grace, defaults.shutdown_grace)?,
            timezone,
            services: std::sync::Arc::default(),
            max_output: self.count(
                &raw.engine.max_output_kib,
                crate::engine::DEFAULT_MAX_OUTPUT >> 10,
                1 << 20,
                "max_output_kib",
            )? << 10,
        })
    }

    /// `[smtp]`.
    pub(super) fn smtp(
        &mut self,
        smtp: &Spanned<RawSmtp>,
        sources: &[crate::oauth::TokenSourceConfig],
    ) -> Result<crate::outbox::SmtpConfig, ConfigError> {
        let s = smtp.get_ref();
        let tls = s.tls.unwrap_or_default();
        let password_span = s
            .password_env
            .as_ref()
            .map(Spanned::span)
            .or(s.password_file.as_ref().map(Spanned::span));
        let oauth2 = self.login_source("smtp", &s.oauth2, password_span, sources)?;
        if let Some(sasl) = &s.sasl
            && *sasl.get_ref() != crate::oauth::Sasl::Xoauth2
        {
            return Err(self.err(
                sasl.span(),
                "[smtp] logs in with XOAUTH2 only (what Exchange Online and Gmail offer)".into(),
                Some("remove `sasl`, or write sasl = \"xoauth2\"".into()),
            ));
        }
        if oauth2.is_some() && s.username.is_none() {
            return Err(self.err(
                smtp.span(),
                "[smtp] with `oauth2` needs `username`: the mailbox the token acts for".into(),
                Some("e.g. username = \"pmo@ministry.go.jp\"".into()),
            ));
        }
        let password = match (&s.password_env, &s.password_file) {
            (None, None) => None,
            (Some(e), None) => self.secret(e.span(), "smtp password", Some(e.get_ref()), None),
            (None, Some(f)) => self.secret(f.span(), "smtp password", None, Some(f.get_ref())),
            (Some(e), Some(_)) => {
                return Err(self.err(
                    e.span(),
                    "give either `password_env` or `password_file`".into(),
                    None,
                ));
            }
        };
        Ok(crate::outbox::SmtpConfig {
            host: s.host.clone(),
            port: s.port.unwrap_or(match tls {
                crate::outbox::SmtpTls::Starttls => 587,
                crate::outbox::SmtpTls::Tls => 465,
                crate::outbox::SmtpTls::None => 25,
            }),
            tls,
            username: s.username.clone(),
            password,
            oauth2,
            timeout: self.duration(&s.timeout, Duration::from_secs(30))?,
        })
    }

    /// `[imap]`.
    pub(super) fn imap(
        &mut self,
        imap: &Spanned<RawImap>,
        sources: &[crate::oauth::TokenSourceConfig],
    ) -> Result<crate::inbound::imap::ImapConfig, ConfigError> {
        let s = imap.get_ref();
        let tls = s.tls.unwrap_or_default();
        let password_span = s
            .password_env
            .as_ref()
            .map(Spanned::span)
            .or(s.password_file.as_ref().map(Spanned::span));
        let oauth2 = self.login_source("imap", &s.oauth2, password_span, sources)?;
        let password = match (&s.password_env, &s.password_file) {
            _ if oauth2.is_some() => None,
            (Some(e), None) => self.secret(e.span(), "imap password", Some(e.get_ref()), None),
            (None, Some(f)) => self.secret(f.span(), "imap password", None, Some(f.get_ref())),
            _ => {
                return Err(self.err(
                    imap.span(),
                    "[imap] needs exactly one of `password_env`, `password_file` or `oauth2`".into(),
                    Some("e.g. password_env = \"PMOFLOW_IMAP_PASSWORD\", or oauth2 = \"m365\" with an [oauth2.m365] table".into()),
                ));
            }
        };
        Ok(crate::inbound::imap::ImapConfig {
            host: s.host.clone(),
            port: s.port.unwrap_or(match tls {
                crate::inbound::imap::ImapTls::Tls => 993,
                _ => 143,
            }),
            tls,
            username: s.username.clone(),
            password: password.unwrap_or_else(|| Secret::new("")),
            oauth2: oauth2.map(|source| crate::inbound::imap::ImapOAuth2 {
                source,
                sasl: s.sasl.unwrap_or_default(),
            }),
            mailbox: s.mailbox.clone().unwrap_or_else(|| "INBOX".into()),
            processed_mailbox: s.processed_mailbox.clone(),
            poll_interval: self.duration(&s.poll_interval, Duration::from_secs(60))?,
            idle: s.idle.unwrap_or(true),
            timeout: self.duration(&s.timeout, Duration::from_secs(30))?,
            ca_file: s.ca_file.clone(),
        })
    }

    /// `[http]` (and `PMOFLOW_HTTP_LISTEN`).
    pub(super) fn http(&self, raw: &RawConfig) -> Result<crate::http::HttpConfig, ConfigError> {
        let h = &raw.http;
        let listen = match &h.listen {
            _ if self.env.http_listen.is_some() => {
                let l = self.env.http_listen.as_deref().unwrap_or_default();
                l.parse().map_err(|_| ConfigError::Env {
                    name: "PMOFLOW_HTTP_LISTEN",
                    message: format!("`{l}` is not a listen address (e.g. 127.0.0.1:8080)"),
                })?
            }
            None => std::net::SocketAddr::from(([127, 0, 0, 1], 8080)),
            Some(l) => l.get_ref().parse().map_err(|_| {
                self.err(
                    l.span(),
                    format!("`{}` is not a listen address", l.get_ref()),
                    Some("e.g. listen = \"127.0.0.1:8080\"".into()),
                )
            })?,
        };
        let mut tokens = Vec::new();
        for t in &h.tokens {
            let tr = t.get_ref();
            let role = crate::http::Role::parse(tr.role.get_ref()).ok_or_else(|| {
                self.err(
                    tr.role.span(),
                    format!("unknown role `{}`", tr.role.get_ref()),
                    Some("roles are viewer, operator, admin".into()),
                )
            })?;
            if argon2::PasswordHash::new(tr.hash.get_ref()).is_err() {
                return Err(self.err(
                    tr.hash.span(),
                    format!("the hash of token `{}` is not a PHC string", tr.name),
                    Some("make one with `pmoflow token new --name NAME --role ROLE`".into()),
                ));
            }
            if let Some(id) = &tr.id {
                if !crate::http::is_token_id(id.get_ref()) {
                    return Err(self.err(
                        id.span(),
                        format!(
                            "the id of token `{}` is not 8 lowercase hex digits",
                            tr.name
                        ),
                        Some("copy it from `pmoflow token new`".into()),
                    ));
                }
                if tokens
                    .iter()
                    .any(|t: &crate::http::ApiToken| t.id.as_deref() == Some(id.get_ref()))
                {
                    return Err(self.err(
                        id.span(),
                        format!("two tokens have the id `{}`", id.get_ref()),
                        Some(
                            "each token has its own id: make another with `pmoflow token new`"
                                .into(),
                        ),
                    ));
                }
            }
            tokens.push(crate::http::ApiToken {
                name: tr.name.clone(),
                role,
                id: tr.id.as_ref().map(|i| i.get_ref().clone()),
                hash: tr.hash.get_ref().clone(),
            });
        }
        let refusals_per_minute = self.count(
            &h.refusals_per_minute,
            crate::http::limit::MAX_REFUSALS as usize,
            1_000_000,
            "refusals_per_minute",
        )?;
        let dc = crate::http::ConnectionLimits::default();
        let connections = crate::http::ConnectionLimits {
            header_timeout: self.duration(&h.header_timeout, dc.header_timeout)?,
            max: self.count(&h.max_connections, dc.max, 1_000_000, "max_connections")?,
            per_address: self.count(
                &h.max_connections_per_address,
                dc.per_address,
                1_000_000,
                "max_connections_per_address",
            )?,
        };
        Ok(crate::http::HttpConfig {
            enabled: h.enabled.unwrap_or(true),
            listen,
            tokens,
            connections,
            refusals_per_minute: u32::try_from(refusals_per_minute)
                .unwrap_or(crate::http::limit::MAX_REFUSALS),
        })
    }

    /// `[outbox]`: the delivery policy.
    pub(super) fn outbox(
        &self,
        raw: &RawConfig,
    ) -> Result<crate::outbox::OutboxConfig, ConfigError> {
        let od = crate::outbox::OutboxConfig::default();
        let o = &raw.outbox;
        Ok(crate::outbox::OutboxConfig {
            max_attempts: u32::try_from(self.count(
                &o.max_attempts,
                od.max_attempts as usize,
                1000,
                "max_attempts",
            )?)
            .unwrap_or(od.max_attempts),
            max_age: self.duration(&o.max_age, od.max_age)?,
            backoff: self.duration(&o.backoff, od.backoff)?,
            max_backoff: self.duration(&o.max_backoff, od.max_backoff)?,
            concurrency: self.count(&o.concurrency, od.concurrency, 256, "concurrency")?,
            poll_interval: self.duration(&o.poll_interval, od.poll_interval)?,
            webhook_timeout: self.duration(&o.webhook_timeout, od.webhook_timeout)?,
        })
    }

    /// `[plugins.NAME]`: what each plugin is granted.
    /// `[egress] allow_hosts`; without the table, every public host. With the response cap of
    /// `[http_client] max_response_kib`.
    pub(super) fn egress(
        &self,
        raw: &RawConfig,
    ) -> Result<crate::egress::EgressPolicy, ConfigError> {
        let max_response = self.count(
            &raw.http_client.max_response_kib,
            crate::egress::DEFAULT_MAX_RESPONSE >> 10,
            1 << 20,
            "max_response_kib",
        )? << 10;
        let Some(egress) = &raw.egress else {
            return Ok(crate::egress::EgressPolicy::default().with_max_response(max_response));
        };
        let mut rules = Vec::new();
        for host in &egress.get_ref().allow_hosts {
            rules.push(
                crate::egress::HostRule::parse(host.get_ref())
                    .map_err(|e| self.err(host.span(), e.to_string(), None))?,
            );
        }
        if rules.is_empty() {
            return Err(self.err(
                egress.span(),
                "[egress] allow_hosts is empty: the http and webhook actions could reach nothing".into(),
                Some("list the hosts they may reach, e.g. allow_hosts = [\"*\", \"intranet.example.go.jp\"] (\"*\" is every public host)".into()),
            ));
        }
        Ok(crate::egress::EgressPolicy::new(rules).with_max_response(max_response))
    }

    pub(super) fn plugin_grants(
        &self,
        raw: &RawConfig,
    ) -> Result<crate::plugins::Grants, ConfigError> {
        let mut grants = crate::plugins::Grants::default();
        for (name, g) in &raw.plugins {
            grants.plugins.insert(name.clone(), self.grant(name, g)?);
        }
        Ok(grants)
    }

    fn grant(
        &self,
        name: &str,
        raw: &Spanned<RawGrant>,
    ) -> Result<crate::plugins::Grant, ConfigError> {
        let g = raw.get_ref();
        let mut grant = crate::plugins::Grant::default();
        for cap in &g.capabilities {
            if !crate::plugins::grant::KNOWN.contains(&cap.get_ref().as_str()) {
                return Err(self.err(
                    cap.span(),
                    format!("unknown capability `{}`", cap.get_ref()),
                    Some(format!(
                        "capabilities are {}",
                        crate::plugins::grant::KNOWN.join(", ")
                    )),
                ));
            }
            grant.capabilities.insert(cap.get_ref().clone());
        }
        for host in &g.allow_hosts {
            let rule = crate::plugins::HostRule::parse(host.get_ref())
                .map_err(|e| self.err(host.span(), e.to_string(), None))?;
            grant.allow_hosts.push(rule);
        }
        let network = ["http", "tls", "whois"]
            .iter()
            .any(|c| grant.capabilities.contains(*c));
        if network && grant.allow_hosts.is_empty() {
            return Err(self.err(
                raw.span(),
                format!("[plugins.{name}] grants a network capability but no allow_hosts"),
                Some(
                    "list the hosts it may reach, e.g. allow_hosts = [\"rdap.example.jp\"]".into(),
                ),
            ));
        }
        let d = crate::plugins::Limits::default();
        let kib = |v: &Option<Spanned<i64>>, default: usize, max: i64, what: &str| {
            self.count(v, default >> 10, max, what).map(|n| n << 10)
        };
        grant.limits = crate::plugins::Limits {
            timeout: self.duration(&g.timeout, d.timeout)?,
            net_timeout: self.duration(&g.net_timeout, d.net_timeout)?,
            memory: self.count(&g.memory_mib, d.memory >> 20, 4096, "memory_mib")? << 20,
            max_input: kib(&g.max_input_kib, d.max_input, 1 << 20, "max_input_kib")?,
            max_output: kib(&g.max_output_kib, d.max_output, 1 << 20, "max_output_kib")?,
            max_response: kib(
                &g.max_response_kib,
                d.max_response,
                1 << 20,
                "max_response_kib",
            )?,
            kv_max_keys: self.count(&g.kv_max_keys, d.kv_max_keys, 1_000_000, "kv_max_keys")?,
            kv_max_bytes: kib(&g.kv_max_kib, d.kv_max_bytes, 1 << 20, "kv_max_kib")?,
            max_log: d.max_log,
        };
        Ok(grant)
    }
}
