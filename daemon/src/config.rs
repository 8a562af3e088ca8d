//! `pmoflow.toml`: read raw (typos are errors), then resolved into the types the code uses.
//! Environment variables are read here and nowhere else.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;
use toml::Spanned;

use crate::diag::Diagnostic;
use crate::duration::{DURATION_HINT, HumanDuration};
use crate::engine::{EngineConfig, default_node_id};
use crate::store::Durability;

/// The default config file, looked for in the working directory.
pub const DEFAULT_FILE: &str = "pmoflow.toml";
/// The default database: embedded SQLite under `./var`.
pub const DEFAULT_DATABASE_URL: &str = "sqlite://var/pmoflow.db";

/// How logs are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LogFormat {
    /// Human-readable lines.
    #[default]
    Text,
    /// One JSON object per line.
    Json,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    workflows_dir: Option<PathBuf>,
    plugins_dir: Option<PathBuf>,
    plugin_cache_dir: Option<PathBuf>,
    database_url: Option<String>,
    timezone: Option<Spanned<String>>,
    log_format: Option<LogFormat>,
    durability: Option<Durability>,
    node_id: Option<String>,
    #[serde(default)]
    engine: RawEngine,
    #[serde(default)]
    mail: RawMail,
    smtp: Option<Spanned<RawSmtp>>,
    #[serde(default)]
    outbox: RawOutbox,
    #[serde(default)]
    secrets: std::collections::BTreeMap<String, Spanned<RawSecret>>,
    #[serde(default)]
    plugins: std::collections::BTreeMap<String, Spanned<RawGrant>>,
    #[serde(default)]
    replies: RawReplies,
    imap: Option<Spanned<RawImap>>,
    #[serde(default)]
    http: RawHttp,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawHttp {
    listen: Option<Spanned<String>>,
    public_url: Option<Spanned<String>>,
    enabled: Option<bool>,
    #[serde(default)]
    tokens: Vec<Spanned<RawToken>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawToken {
    name: String,
    role: Spanned<String>,
    hash: Spanned<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawReplies {
    address: Option<Spanned<String>>,
    notify: Option<Spanned<String>>,
    max_size_kib: Option<Spanned<i64>>,
    token_ttl: Option<Spanned<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawImap {
    host: String,
    port: Option<u16>,
    tls: Option<crate::inbound::imap::ImapTls>,
    username: String,
    password_env: Option<Spanned<String>>,
    password_file: Option<Spanned<PathBuf>>,
    mailbox: Option<String>,
    processed_mailbox: Option<String>,
    poll_interval: Option<Spanned<String>>,
    idle: Option<bool>,
    timeout: Option<Spanned<String>>,
    ca_file: Option<PathBuf>,
}

/// `[plugins.NAME]`: what an administrator grants one plugin.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawGrant {
    #[serde(default)]
    capabilities: Vec<Spanned<String>>,
    #[serde(default)]
    allow_hosts: Vec<Spanned<String>>,
    timeout: Option<Spanned<String>>,
    net_timeout: Option<Spanned<String>>,
    memory_mib: Option<Spanned<i64>>,
    max_input_kib: Option<Spanned<i64>>,
    max_output_kib: Option<Spanned<i64>>,
    max_response_kib: Option<Spanned<i64>>,
    kv_max_keys: Option<Spanned<i64>>,
    kv_max_kib: Option<Spanned<i64>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawMail {
    from: Option<Spanned<String>>,
    charset: Option<crate::outbox::Charset>,
    outbox_dir: Option<PathBuf>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSmtp {
    host: String,
    port: Option<u16>,
    tls: Option<crate::outbox::SmtpTls>,
    username: Option<String>,
    password_env: Option<Spanned<String>>,
    password_file: Option<Spanned<PathBuf>>,
    from: Option<Spanned<String>>,
    timeout: Option<Spanned<String>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawOutbox {
    max_attempts: Option<Spanned<i64>>,
    max_age: Option<Spanned<String>>,
    backoff: Option<Spanned<String>>,
    max_backoff: Option<Spanned<String>>,
    concurrency: Option<Spanned<i64>>,
    poll_interval: Option<Spanned<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSecret {
    env: Option<String>,
    file: Option<PathBuf>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawEngine {
    max_concurrent_runs: Option<Spanned<i64>>,
    poll_interval: Option<Spanned<String>>,
    lease: Option<Spanned<String>>,
    shutdown_grace: Option<Spanned<String>>,
    reload_interval: Option<Spanned<String>>,
}

/// The resolved configuration.
#[derive(Debug, Clone)]
pub struct Config {
    /// Where workflow files are.
    pub workflows_dir: PathBuf,
    /// Where plugins are installed (`<dir>/<name>/plugin.toml`).
    pub plugins_dir: PathBuf,
    /// Where compiled plugin code is cached.
    pub plugin_cache_dir: PathBuf,
    /// What each plugin is granted (`[plugins.NAME]`).
    pub plugin_grants: crate::plugins::Grants,
    /// `sqlite://…` or `postgres://…`.
    pub database_url: String,
    /// Default time zone.
    pub timezone: chrono_tz::Tz,
    /// Log output format.
    pub log_format: LogFormat,
    /// Commit durability.
    pub durability: Durability,
    /// Engine settings.
    pub engine: EngineConfig,
    /// How often the workflows directory is re-read.
    pub reload_interval: Duration,
    /// The file this was read from, if any.
    pub source: Option<PathBuf>,
    /// Secrets that could not be read (the daemon refuses to start with any).
    pub secret_errors: Vec<String>,
    /// `[imap]`: the mailbox replies arrive in, if any.
    pub imap: Option<crate::inbound::imap::ImapConfig>,
    /// `[http]`: the daemon's HTTP listener.
    pub http: crate::http::HttpConfig,
    /// `[outbox]`: the delivery policy.
    pub outbox: crate::outbox::OutboxConfig,
    /// `PMOFLOW_FAILPOINT`, for crash tests only: `after-intake` aborts the process right after
    /// an IMAP message is stored and before it is processed.
    pub failpoint: Option<String>,
}

/// A config problem.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file named with `--config` cannot be read.
    #[error("cannot read config file {0}: {1}")]
    Read(PathBuf, std::io::Error),
    /// The file is invalid.
    #[error("{0}")]
    Invalid(Diagnostic),
    /// An environment override is invalid.
    #[error("{name}: {message}")]
    Env {
        /// The variable.
        name: &'static str,
        /// What is wrong.
        message: String,
    },
}

/// Environment overrides (read once, here).
#[derive(Debug, Default, Clone)]
pub struct EnvOverrides {
    /// `PMOFLOW_DATABASE_URL`
    pub database_url: Option<String>,
    /// `PMOFLOW_WORKFLOWS_DIR`
    pub workflows_dir: Option<PathBuf>,
    /// `PMOFLOW_NODE_ID`
    pub node_id: Option<String>,
    /// `PMOFLOW_HTTP_LISTEN` (replaces `[http] listen`)
    pub http_listen: Option<String>,
    /// Every environment variable, for secrets named with `env = "…"` / `password_env`.
    pub vars: std::collections::BTreeMap<String, String>,
}

impl EnvOverrides {
    /// Reads the process environment.
    pub fn from_env() -> Self {
        let get = |k: &str| std::env::var(k).ok().filter(|v| !v.is_empty());
        Self {
            database_url: get("PMOFLOW_DATABASE_URL"),
            workflows_dir: get("PMOFLOW_WORKFLOWS_DIR").map(PathBuf::from),
            node_id: get("PMOFLOW_NODE_ID"),
            http_listen: get("PMOFLOW_HTTP_LISTEN"),
            vars: std::env::vars().collect(),
        }
    }
}

impl Config {
    /// Loads `path`, or `./pmoflow.toml` if it exists, or the embedded defaults; then applies
    /// environment overrides.
    pub fn load(path: Option<&Path>, env: &EnvOverrides) -> Result<Config, ConfigError> {
        let (raw, source, text) = match path {
            Some(p) => {
                let text = std::fs::read_to_string(p)
                    .map_err(|e| ConfigError::Read(p.to_path_buf(), e))?;
                (parse(p, &text)?, Some(p.to_path_buf()), text)
            }
            None if Path::new(DEFAULT_FILE).is_file() => {
                let p = Path::new(DEFAULT_FILE);
                let text = std::fs::read_to_string(p)
                    .map_err(|e| ConfigError::Read(p.to_path_buf(), e))?;
                (parse(p, &text)?, Some(p.to_path_buf()), text)
            }
            None => (RawConfig::default(), None, String::new()),
        };
        let file = source
            .clone()
            .unwrap_or_else(|| PathBuf::from(DEFAULT_FILE));
        let err = |span: std::ops::Range<usize>, msg: String, hint: Option<String>| {
            ConfigError::Invalid(Diagnostic::span(&file, &text, span, msg, hint))
        };
        let timezone = match &raw.timezone {
            None => chrono_tz::Asia::Tokyo,
            Some(tz) => tz.get_ref().parse().map_err(|_| {
                err(
                    tz.span(),
                    format!("unknown time zone `{}`", tz.get_ref()),
                    Some("use an IANA name such as \"Asia/Tokyo\"".into()),
                )
            })?,
        };
        let duration = |v: &Option<Spanned<String>>, default: Duration| match v {
            None => Ok(default),
            Some(s) => HumanDuration::parse(s.get_ref())
                .map(|d| d.0)
                .map_err(|m| err(s.span(), m.to_string(), Some(DURATION_HINT.into()))),
        };
        let defaults = EngineConfig::default();
        let max_concurrent_runs = match &raw.engine.max_concurrent_runs {
            None => defaults.max_concurrent_runs,
            Some(n) if (1..=100_000).contains(n.get_ref()) => {
                usize::try_from(*n.get_ref()).unwrap_or(1)
            }
            Some(n) => {
                return Err(err(
                    n.span(),
                    format!(
                        "max_concurrent_runs must be between 1 and 100000, got {}",
                        n.get_ref()
                    ),
                    None,
                ));
            }
        };
        let lease = duration(&raw.engine.lease, Duration::from_secs(30))?;
        if lease < Duration::from_secs(3)
            && let Some(l) = &raw.engine.lease
        {
            return Err(err(l.span(), "lease must be at least 3s".into(), None));
        }
        let engine = EngineConfig {
            node_id: env
                .node_id
                .clone()
                .or(raw.node_id)
                .unwrap_or_else(default_node_id),
            max_concurrent_runs,
            poll_interval: duration(&raw.engine.poll_interval, defaults.poll_interval)?,
            lease: chrono::Duration::from_std(lease).unwrap_or(defaults.lease),
            shutdown_grace: duration(&raw.engine.shutdown_grace, defaults.shutdown_grace)?,
            timezone,
            services: std::sync::Arc::default(),
        };
        // Secrets: read once, here; missing ones are errors now, not at 3 a.m.
        let read_secret = |span: std::ops::Range<usize>,
                           what: &str,
                           env_name: Option<&str>,
                           file: Option<&Path>|
         -> Result<crate::message::settings::Secret, ConfigError> {
            match (env_name, file) {
                (Some(var), None) => env
                    .vars
                    .get(var)
                    .cloned()
                    .map(crate::message::settings::Secret::new)
                    .ok_or_else(|| {
                        err(
                            span.clone(),
                            format!("{what}: environment variable `{var}` is not set"),
                            Some("export it before starting pmoflow".into()),
                        )
                    }),
                (None, Some(path)) => std::fs::read_to_string(path)
                    .map(|v| {
                        crate::message::settings::Secret::new(v.trim_end_matches(['\n', '\r']))
                    })
                    .map_err(|e| {
                        err(
                            span.clone(),
                            format!("{what}: cannot read {}: {e}", path.display()),
                            None,
                        )
                    }),
                _ => Err(err(
                    span.clone(),
                    format!("{what}: give exactly one of `env` or `file`"),
                    Some("e.g. hook_key = { env = \"PMOFLOW_HOOK_KEY\" }".into()),
                )),
            }
        };
        // A missing secret stops the daemon from starting, but not the CLI commands that do not
        // send anything.
        let mut secret_errors = Vec::new();
        let mut keep = |r: Result<crate::message::settings::Secret, ConfigError>| match r {
            Ok(v) => Some(v),
            Err(e) => {
                secret_errors.push(e.to_string());
                None
            }
        };
        let mut secrets = std::collections::BTreeMap::new();
        for (name, spec) in &raw.secrets {
            let value = keep(read_secret(
                spec.span(),
                &format!("secret `{name}`"),
                spec.get_ref().env.as_deref(),
                spec.get_ref().file.as_deref(),
            ));
            if let Some(value) = value {
                secrets.insert(name.clone(), value);
            }
        }
        let mut from = raw
            .mail
            .from
            .as_ref()
            .map(|f| (f.get_ref().clone(), f.span()));
        let smtp = match &raw.smtp {
            None => None,
            Some(smtp) => {
                let s = smtp.get_ref();
                if let Some(f) = &s.from {
                    from = Some((f.get_ref().clone(), f.span()));
                }
                let tls = s.tls.unwrap_or_default();
                let password = match (&s.password_env, &s.password_file) {
                    (None, None) => None,
                    (Some(e), None) => keep(read_secret(
                        e.span(),
                        "smtp password",
                        Some(e.get_ref()),
                        None,
                    )),
                    (None, Some(f)) => keep(read_secret(
                        f.span(),
                        "smtp password",
                        None,
                        Some(f.get_ref()),
                    )),
                    (Some(e), Some(_)) => {
                        return Err(err(
                            e.span(),
                            "give either `password_env` or `password_file`".into(),
                            None,
                        ));
                    }
                };
                Some(crate::outbox::SmtpConfig {
                    host: s.host.clone(),
                    port: s.port.unwrap_or(match tls {
                        crate::outbox::SmtpTls::Starttls => 587,
                        crate::outbox::SmtpTls::Tls => 465,
                        crate::outbox::SmtpTls::None => 25,
                    }),
                    tls,
                    username: s.username.clone(),
                    password,
                    timeout: duration(&s.timeout, Duration::from_secs(30))?,
                })
            }
        };
        if let Some((f, span)) = &from
            && f.parse::<lettre::message::Mailbox>().is_err()
        {
            return Err(err(
                span.clone(),
                format!("`{f}` is not a mail address"),
                Some("e.g. \"PMO事務局 <pmo@example.go.jp>\"".into()),
            ));
        }
        let count = |v: &Option<Spanned<i64>>,
                     default: usize,
                     max: i64,
                     what: &str|
         -> Result<usize, ConfigError> {
            match v {
                None => Ok(default),
                Some(n) if (1..=max).contains(n.get_ref()) => {
                    Ok(usize::try_from(*n.get_ref()).unwrap_or(default))
                }
                Some(n) => Err(err(
                    n.span(),
                    format!("{what} must be between 1 and {max}, got {}", n.get_ref()),
                    None,
                )),
            }
        };
        let imap = match &raw.imap {
            None => None,
            Some(imap) => {
                let s = imap.get_ref();
                let tls = s.tls.unwrap_or_default();
                let password = match (&s.password_env, &s.password_file) {
                    (Some(e), None) => keep(read_secret(
                        e.span(),
                        "imap password",
                        Some(e.get_ref()),
                        None,
                    )),
                    (None, Some(f)) => keep(read_secret(
                        f.span(),
                        "imap password",
                        None,
                        Some(f.get_ref()),
                    )),
                    _ => {
                        return Err(err(
                            imap.span(),
                            "[imap] needs exactly one of `password_env` or `password_file`".into(),
                            Some("e.g. password_env = \"PMOFLOW_IMAP_PASSWORD\"".into()),
                        ));
                    }
                };
                Some(crate::inbound::imap::ImapConfig {
                    host: s.host.clone(),
                    port: s.port.unwrap_or(match tls {
                        crate::inbound::imap::ImapTls::Tls => 993,
                        _ => 143,
                    }),
                    tls,
                    username: s.username.clone(),
                    password: password.unwrap_or_else(|| crate::message::settings::Secret::new("")),
                    mailbox: s.mailbox.clone().unwrap_or_else(|| "INBOX".into()),
                    processed_mailbox: s.processed_mailbox.clone(),
                    poll_interval: duration(&s.poll_interval, Duration::from_secs(60))?,
                    idle: s.idle.unwrap_or(true),
                    timeout: duration(&s.timeout, Duration::from_secs(30))?,
                    ca_file: s.ca_file.clone(),
                })
            }
        };
        let replies = {
            let r = &raw.replies;
            if let Some(a) = &r.address {
                let text = a.get_ref();
                let valid = text.matches("{token}").count() == 1
                    && text
                        .replace("{token}", "t")
                        .parse::<lettre::Address>()
                        .is_ok();
                if !valid {
                    return Err(err(
                        a.span(),
                        format!("`{text}` is not a reply-address pattern"),
                        Some("write an address with {token} once, e.g. \"pmo+{token}@example.go.jp\"".into()),
                    ));
                }
            }
            if let Some(u) = &raw.http.public_url
                && !(u.get_ref().starts_with("http://") || u.get_ref().starts_with("https://"))
            {
                return Err(err(
                    u.span(),
                    format!("`{}` is not an http(s) URL", u.get_ref()),
                    Some("e.g. public_url = \"https://pmoflow.example.go.jp\"".into()),
                ));
            }
            crate::outbox::ReplySettings {
                address: r.address.as_ref().map(|a| a.get_ref().clone()),
                notify: r.notify.as_ref().map(|a| a.get_ref().clone()),
                max_size: match &r.max_size_kib {
                    None => crate::inbound::DEFAULT_MAX_SIZE,
                    Some(n) if (1..=1 << 20).contains(n.get_ref()) => {
                        usize::try_from(*n.get_ref()).unwrap_or(1) << 10
                    }
                    Some(n) => {
                        return Err(err(
                            n.span(),
                            format!(
                                "max_size_kib must be between 1 and 1048576, got {}",
                                n.get_ref()
                            ),
                            None,
                        ));
                    }
                },
                token_ttl: duration(&r.token_ttl, Duration::from_secs(60 * 24 * 3600))?,
                public_url: raw
                    .http
                    .public_url
                    .as_ref()
                    .map(|u| u.get_ref().trim_end_matches('/').to_string()),
            }
        };
        let http = {
            let h = &raw.http;
            let listen = match &h.listen {
                _ if env.http_listen.is_some() => {
                    let l = env.http_listen.as_deref().unwrap_or_default();
                    l.parse().map_err(|_| ConfigError::Env {
                        name: "PMOFLOW_HTTP_LISTEN",
                        message: format!("`{l}` is not a listen address (e.g. 127.0.0.1:8080)"),
                    })?
                }
                None => std::net::SocketAddr::from(([127, 0, 0, 1], 8080)),
                Some(l) => l.get_ref().parse().map_err(|_| {
                    err(
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
                    err(
                        tr.role.span(),
                        format!("unknown role `{}`", tr.role.get_ref()),
                        Some("roles are viewer, operator, admin".into()),
                    )
                })?;
                if argon2::PasswordHash::new(tr.hash.get_ref()).is_err() {
                    return Err(err(
                        tr.hash.span(),
                        format!("the hash of token `{}` is not a PHC string", tr.name),
                        Some("make one with `pmoflow token new --name NAME --role ROLE`".into()),
                    ));
                }
                tokens.push(crate::http::ApiToken {
                    name: tr.name.clone(),
                    role,
                    hash: tr.hash.get_ref().clone(),
                });
            }
            crate::http::HttpConfig {
                enabled: h.enabled.unwrap_or(true),
                listen,
                tokens,
            }
        };
        let od = crate::outbox::OutboxConfig::default();
        let outbox = crate::outbox::OutboxConfig {
            max_attempts: u32::try_from(count(
                &raw.outbox.max_attempts,
                od.max_attempts as usize,
                1000,
                "max_attempts",
            )?)
            .unwrap_or(od.max_attempts),
            max_age: duration(&raw.outbox.max_age, od.max_age)?,
            backoff: duration(&raw.outbox.backoff, od.backoff)?,
            max_backoff: duration(&raw.outbox.max_backoff, od.max_backoff)?,
            concurrency: count(&raw.outbox.concurrency, od.concurrency, 256, "concurrency")?,
            poll_interval: duration(&raw.outbox.poll_interval, od.poll_interval)?,
        };
        let mut plugin_grants = crate::plugins::Grants::default();
        for (name, raw) in &raw.plugins {
            let g = raw.get_ref();
            let mut grant = crate::plugins::Grant::default();
            for cap in &g.capabilities {
                if !crate::plugins::grant::KNOWN.contains(&cap.get_ref().as_str()) {
                    return Err(err(
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
                    .map_err(|e| err(host.span(), e.to_string(), None))?;
                grant.allow_hosts.push(rule);
            }
            let network = ["http", "tls", "whois"]
                .iter()
                .any(|c| grant.capabilities.contains(*c));
            if network && grant.allow_hosts.is_empty() {
                return Err(err(
                    raw.span(),
                    format!("[plugins.{name}] grants a network capability but no allow_hosts"),
                    Some(
                        "list the hosts it may reach, e.g. allow_hosts = [\"rdap.example.jp\"]"
                            .into(),
                    ),
                ));
            }
            let d = crate::plugins::Limits::default();
            let kib = |v: &Option<Spanned<i64>>, default: usize, max: i64, what: &str| {
                count(v, default >> 10, max, what).map(|n| n << 10)
            };
            grant.limits = crate::plugins::Limits {
                timeout: duration(&g.timeout, d.timeout)?,
                net_timeout: duration(&g.net_timeout, d.net_timeout)?,
                memory: count(&g.memory_mib, d.memory >> 20, 4096, "memory_mib")? << 20,
                max_input: kib(&g.max_input_kib, d.max_input, 1 << 20, "max_input_kib")?,
                max_output: kib(&g.max_output_kib, d.max_output, 1 << 20, "max_output_kib")?,
                max_response: kib(
                    &g.max_response_kib,
                    d.max_response,
                    1 << 20,
                    "max_response_kib",
                )?,
                kv_max_keys: count(&g.kv_max_keys, d.kv_max_keys, 1_000_000, "kv_max_keys")?,
                kv_max_bytes: kib(&g.kv_max_kib, d.kv_max_bytes, 1 << 20, "kv_max_kib")?,
                max_log: d.max_log,
            };
            plugin_grants.plugins.insert(name.clone(), grant);
        }
        let workflows_dir = env
            .workflows_dir
            .clone()
            .or(raw.workflows_dir.clone())
            .unwrap_or_else(|| PathBuf::from("workflows"));
        let mut engine = engine;
        engine.services = std::sync::Arc::new(crate::actions::StepServices {
            mail: crate::outbox::MailSettings {
                from: from
                    .map(|(f, _)| f)
                    .unwrap_or_else(|| crate::outbox::MailSettings::default().from),
                outbox_dir: raw
                    .mail
                    .outbox_dir
                    .clone()
                    .unwrap_or_else(|| PathBuf::from("var/outbox")),
                smtp,
                timezone,
                charset: raw.mail.charset.unwrap_or_default(),
            },
            replies,
            metrics: std::sync::Arc::default(),
            secrets,
            workflows_dir: workflows_dir.clone(),
            plugins: None,
        });
        Ok(Config {
            workflows_dir,
            plugins_dir: raw
                .plugins_dir
                .clone()
                .unwrap_or_else(|| PathBuf::from("plugins")),
            plugin_cache_dir: raw
                .plugin_cache_dir
                .clone()
                .unwrap_or_else(|| PathBuf::from("var/plugin-cache")),
            plugin_grants,
            database_url: env
                .database_url
                .clone()
                .or(raw.database_url)
                .unwrap_or_else(|| DEFAULT_DATABASE_URL.to_string()),
            timezone,
            log_format: raw.log_format.unwrap_or_default(),
            durability: raw.durability.unwrap_or_default(),
            engine,
            reload_interval: duration(&raw.engine.reload_interval, Duration::from_secs(2))?,
            source,
            secret_errors,
            imap,
            failpoint: env.vars.get("PMOFLOW_FAILPOINT").cloned(),
            http,
            outbox,
        })
    }

    /// The database URL with any password replaced, for logs.
    pub fn redacted_database_url(&self) -> String {
        redact_url(&self.database_url)
    }
}

/// Replaces the password in `scheme://user:password@host` with `***`.
pub fn redact_url(url: &str) -> String {
    if let Some((scheme, rest)) = url.split_once("://")
        && let Some((creds, host)) = rest.split_once('@')
        && let Some((user, _)) = creds.split_once(':')
    {
        return format!("{scheme}://{user}:***@{host}");
    }
    url.to_string()
}

fn parse(path: &Path, text: &str) -> Result<RawConfig, ConfigError> {
    toml::from_str(text).map_err(|e| {
        ConfigError::Invalid(Diagnostic::at(
            path,
            text,
            e.span().map(|s| s.start).unwrap_or(0),
            e.message().trim().replace('\n', "; "),
            Some("see docs/config.md for every setting".into()),
        ))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unknown_key_is_located() {
        let dir = tempfile::tempdir().expect("tempdir");
        let p = dir.path().join("pmoflow.toml");
        std::fs::write(&p, "timezone = \"Asia/Tokyo\"\ndatabse_url = \"x\"\n").expect("write");
        let err = Config::load(Some(&p), &EnvOverrides::default()).expect_err("typo rejected");
        let text = err.to_string();
        assert!(
            text.contains(":2:1: error: unknown field `databse_url`"),
            "{text}"
        );
    }

    #[test]
    fn bad_timezone_and_duration_are_located() {
        let dir = tempfile::tempdir().expect("tempdir");
        let p = dir.path().join("pmoflow.toml");
        std::fs::write(&p, "timezone = \"Asia/Tokio\"\n").expect("write");
        let text = Config::load(Some(&p), &EnvOverrides::default())
            .expect_err("bad")
            .to_string();
        assert!(
            text.contains(":1:12: error: unknown time zone `Asia/Tokio`"),
            "{text}"
        );
        std::fs::write(&p, "[engine]\npoll_interval = \"fast\"\n").expect("write");
        let text = Config::load(Some(&p), &EnvOverrides::default())
            .expect_err("bad")
            .to_string();
        assert!(text.contains(":2:17: error: invalid duration"), "{text}");
    }

    #[test]
    fn env_overrides_file() {
        let env = EnvOverrides {
            database_url: Some("postgres://u:secret@h/db".into()),
            ..EnvOverrides::default()
        };
        let cfg = Config::load(None, &env).expect("defaults");
        assert_eq!(cfg.redacted_database_url(), "postgres://u:***@h/db");
    }
}
