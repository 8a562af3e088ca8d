//! `pmoflow.toml`: read raw (typos are errors), then resolved into the types the code uses.
//! Environment variables are read here and nowhere else.

use std::path::{Path, PathBuf};
use std::time::Duration;

mod raw;
mod replies;
mod sections;
mod tokens;

use serde::Deserialize;

use crate::diag::Diagnostic;
use crate::engine::EngineConfig;
use crate::store::Durability;
use raw::{RawConfig, parse};

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
    /// `[oauth2.NAME]`: token sources for `[imap]`, `[smtp]` and chat posts.
    pub oauth2: Vec<crate::oauth::TokenSourceConfig>,
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
        Self::from_raw(raw, source, &text, env)
    }

    /// The configuration `text` (the contents of `path`) would give, without reading the file;
    /// errors point into `text`.
    pub fn from_text(path: &Path, text: &str, env: &EnvOverrides) -> Result<Config, ConfigError> {
        let raw = parse(path, text)?;
        Self::from_raw(raw, Some(path.to_path_buf()), text, env)
    }

    fn from_raw(
        raw: RawConfig,
        source: Option<PathBuf>,
        text: &str,
        env: &EnvOverrides,
    ) -> Result<Config, ConfigError> {
        let file = source
            .clone()
            .unwrap_or_else(|| PathBuf::from(DEFAULT_FILE));
        let mut r = sections::Reader {
            file: &file,
            text,
            env,
            secret_errors: Vec::new(),
        };
        let timezone = r.timezone(&raw)?;
        let mut engine = r.engine(&raw, timezone)?;
        // Secrets: read once, here; missing ones are errors now, not at 3 a.m.
        let secrets = r.secrets(&raw);
        let oauth2 = r.token_sources(&raw.oauth2)?;
        let mut from = raw
            .mail
            .from
            .as_ref()
            .map(|f| (f.get_ref().clone(), f.span()));
        let smtp = match &raw.smtp {
            None => None,
            Some(smtp) => {
                if let Some(f) = &smtp.get_ref().from {
                    from = Some((f.get_ref().clone(), f.span()));
                }
                Some(r.smtp(smtp, &oauth2)?)
            }
        };
        if let Some((f, span)) = &from
            && f.parse::<lettre::message::Mailbox>().is_err()
        {
            return Err(r.err(
                span.clone(),
                format!("`{f}` is not a mail address"),
                Some("e.g. \"PMO事務局 <pmo@example.go.jp>\"".into()),
            ));
        }
        let imap = raw.imap.as_ref().map(|i| r.imap(i, &oauth2)).transpose()?;
        let replies = r.replies(&raw)?;
        let http = r.http(&raw)?;
        let outbox = r.outbox(&raw)?;
        let plugin_grants = r.plugin_grants(&raw)?;
        let egress = std::sync::Arc::new(r.egress(&raw)?);
        let reload_interval = r.duration(&raw.engine.reload_interval, Duration::from_secs(2))?;
        let secret_errors = r.secret_errors;
        let workflows_dir = env
            .workflows_dir
            .clone()
            .or(raw.workflows_dir.clone())
            .unwrap_or_else(|| PathBuf::from("workflows"));
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
            egress,
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
            reload_interval,
            source,
            secret_errors,
            imap,
            oauth2,
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

    fn load_text(text: &str) -> Result<Config, ConfigError> {
        let dir = tempfile::tempdir().expect("tempdir");
        let p = dir.path().join("pmoflow.toml");
        std::fs::write(&p, text).expect("write");
        let env = EnvOverrides {
            vars: [("M365_SECRET".to_string(), "s".to_string())].into(),
            ..EnvOverrides::default()
        };
        Config::load(Some(&p), &env)
    }

    #[test]
    fn oauth2_sources_are_checked_where_they_are_written() {
        let err = load_text("[oauth2.m365]\nprovider = \"azure\"\n")
            .expect_err("bad")
            .to_string();
        assert!(
            err.contains(":2:12: error: unknown oauth2 provider `azure`")
                && err.contains("microsoft, google, generic, line-works"),
            "{err}"
        );
        let err = load_text(
            "[oauth2.m365]\nprovider = \"microsoft\"\ntenant = \"t\"\nclient_id = \"c\"\n",
        )
        .expect_err("no secret")
        .to_string();
        assert!(
            err.contains(":1:1: error: [oauth2.m365] has no client secret"),
            "{err}"
        );
        let err = load_text("[oauth2.g]\nprovider = \"google\"\n")
            .expect_err("no file")
            .to_string();
        assert!(err.contains("needs `service_account_file`"), "{err}");
        let ok = "[oauth2.m365]\nprovider = \"microsoft\"\ntenant = \"t\"\nclient_id = \"c\"\nclient_secret_env = \"M365_SECRET\"\n";
        let err = load_text(&format!(
            "{ok}[imap]\nhost = \"h\"\nusername = \"u\"\npassword_env = \"X\"\noauth2 = \"m365\"\n"
        ))
        .expect_err("both")
        .to_string();
        assert!(
            err.contains(":9:16: error: [imap] has both `oauth2` and a password"),
            "{err}"
        );
        let err = load_text(&format!(
            "{ok}[smtp]\nhost = \"h\"\nusername = \"u\"\noauth2 = \"m356\"\n"
        ))
        .expect_err("unknown source")
        .to_string();
        assert!(
            err.contains(":9:10: error: no [oauth2.m356] table")
                && err.contains("configured sources: m365"),
            "{err}"
        );
        let cfg = load_text(&format!(
            "{ok}[imap]\nhost = \"h\"\nusername = \"u\"\noauth2 = \"m365\"\nsasl = \"oauthbearer\"\n"
        ))
        .expect("valid");
        assert_eq!(
            cfg.oauth2[0].token_url,
            "https://login.microsoftonline.com/t/oauth2/v2.0/token"
        );
        assert_eq!(
            cfg.oauth2[0].scope,
            "https://outlook.office365.com/.default"
        );
        let imap = cfg.imap.expect("imap");
        assert_eq!(
            imap.oauth2.map(|o| o.sasl),
            Some(crate::oauth::Sasl::Oauthbearer)
        );
        // A missing environment variable: kept, located, and the daemon refuses to start.
        let cfg = load_text(&ok.replace("M365_SECRET", "NOT_SET_ANYWHERE")).expect("loads");
        assert!(
            cfg.secret_errors[0].contains(":5:21: error: [oauth2.m365] client secret: environment variable `NOT_SET_ANYWHERE` is not set"),
            "{:?}",
            cfg.secret_errors
        );
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
