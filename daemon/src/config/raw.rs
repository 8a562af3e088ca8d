//! The file as written: every table and key `pmoflow.toml` accepts (unknown keys are errors),
//! with the spans that locate an error in a bad value.

use std::path::{Path, PathBuf};

use serde::Deserialize;
use toml::Spanned;

use super::{ConfigError, LogFormat};
use crate::diag::Diagnostic;
use crate::store::Durability;

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawConfig {
    pub(super) workflows_dir: Option<PathBuf>,
    pub(super) plugins_dir: Option<PathBuf>,
    pub(super) plugin_cache_dir: Option<PathBuf>,
    pub(super) database_url: Option<String>,
    pub(super) timezone: Option<Spanned<String>>,
    pub(super) log_format: Option<LogFormat>,
    pub(super) durability: Option<Durability>,
    pub(super) node_id: Option<String>,
    #[serde(default)]
    pub(super) engine: RawEngine,
    #[serde(default)]
    pub(super) mail: RawMail,
    pub(super) smtp: Option<Spanned<RawSmtp>>,
    #[serde(default)]
    pub(super) outbox: RawOutbox,
    #[serde(default)]
    pub(super) secrets: std::collections::BTreeMap<String, Spanned<RawSecret>>,
    #[serde(default)]
    pub(super) plugins: std::collections::BTreeMap<String, Spanned<RawGrant>>,
    #[serde(default)]
    pub(super) replies: RawReplies,
    pub(super) imap: Option<Spanned<RawImap>>,
    #[serde(default)]
    pub(super) http: RawHttp,
    #[serde(default)]
    pub(super) oauth2: std::collections::BTreeMap<String, Spanned<RawOAuth2>>,
    pub(super) egress: Option<Spanned<RawEgress>>,
    #[serde(default)]
    pub(super) http_client: RawHttpClient,
}

/// `[http_client]`: pmoflow's own outbound HTTP (the `http` action, webhooks, OAuth).
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawHttpClient {
    pub(super) max_response_kib: Option<Spanned<i64>>,
}

/// `[egress]`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawEgress {
    pub(super) allow_hosts: Vec<Spanned<String>>,
}

/// `[oauth2.NAME]`: a token source.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawOAuth2 {
    pub(super) provider: Spanned<String>,
    pub(super) tenant: Option<Spanned<String>>,
    pub(super) client_id: Option<Spanned<String>>,
    pub(super) client_secret_env: Option<Spanned<String>>,
    pub(super) client_secret_file: Option<Spanned<PathBuf>>,
    pub(super) certificate_file: Option<Spanned<PathBuf>>,
    pub(super) private_key_file: Option<Spanned<PathBuf>>,
    pub(super) service_account_file: Option<Spanned<PathBuf>>,
    pub(super) service_account: Option<Spanned<String>>,
    pub(super) subject: Option<Spanned<String>>,
    pub(super) token_url: Option<Spanned<String>>,
    pub(super) scope: Option<Spanned<String>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawHttp {
    pub(super) listen: Option<Spanned<String>>,
    pub(super) public_url: Option<Spanned<String>>,
    pub(super) enabled: Option<bool>,
    pub(super) refusals_per_minute: Option<Spanned<i64>>,
    pub(super) header_timeout: Option<Spanned<String>>,
    pub(super) max_connections: Option<Spanned<i64>>,
    pub(super) max_connections_per_address: Option<Spanned<i64>>,
    #[serde(default)]
    pub(super) tokens: Vec<Spanned<RawToken>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawToken {
    pub(super) name: String,
    pub(super) role: Spanned<String>,
    pub(super) id: Option<Spanned<String>>,
    pub(super) hash: Spanned<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawReplies {
    pub(super) address: Option<Spanned<String>>,
    pub(super) notify: Option<Spanned<String>>,
    pub(super) max_size_kib: Option<Spanned<i64>>,
    pub(super) token_ttl: Option<Spanned<String>>,
    pub(super) trusted_authserv_ids: Option<Vec<Spanned<String>>>,
    pub(super) verify_dkim: Option<bool>,
    pub(super) dns_servers: Option<Vec<Spanned<String>>>,
    pub(super) dns_timeout: Option<Spanned<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawImap {
    pub(super) host: String,
    pub(super) port: Option<u16>,
    pub(super) tls: Option<crate::inbound::imap::ImapTls>,
    pub(super) username: String,
    pub(super) password_env: Option<Spanned<String>>,
    pub(super) password_file: Option<Spanned<PathBuf>>,
    pub(super) oauth2: Option<Spanned<String>>,
    pub(super) sasl: Option<crate::oauth::Sasl>,
    pub(super) mailbox: Option<String>,
    pub(super) processed_mailbox: Option<String>,
    pub(super) poll_interval: Option<Spanned<String>>,
    pub(super) idle: Option<bool>,
    pub(super) timeout: Option<Spanned<String>>,
    pub(super) ca_file: Option<PathBuf>,
}

/// `[plugins.NAME]`: what an administrator grants one plugin.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawGrant {
    #[serde(default)]
    pub(super) capabilities: Vec<Spanned<String>>,
    #[serde(default)]
    pub(super) allow_hosts: Vec<Spanned<String>>,
    pub(super) timeout: Option<Spanned<String>>,
    pub(super) net_timeout: Option<Spanned<String>>,
    pub(super) memory_mib: Option<Spanned<i64>>,
    pub(super) max_input_kib: Option<Spanned<i64>>,
    pub(super) max_output_kib: Option<Spanned<i64>>,
    pub(super) max_response_kib: Option<Spanned<i64>>,
    pub(super) kv_max_keys: Option<Spanned<i64>>,
    pub(super) kv_max_kib: Option<Spanned<i64>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawMail {
    pub(super) from: Option<Spanned<String>>,
    pub(super) charset: Option<crate::outbox::Charset>,
    pub(super) outbox_dir: Option<PathBuf>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawSmtp {
    pub(super) host: String,
    pub(super) port: Option<u16>,
    pub(super) tls: Option<crate::outbox::SmtpTls>,
    pub(super) username: Option<String>,
    pub(super) password_env: Option<Spanned<String>>,
    pub(super) password_file: Option<Spanned<PathBuf>>,
    pub(super) oauth2: Option<Spanned<String>>,
    pub(super) sasl: Option<Spanned<crate::oauth::Sasl>>,
    pub(super) from: Option<Spanned<String>>,
    pub(super) timeout: Option<Spanned<String>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawOutbox {
    pub(super) max_attempts: Option<Spanned<i64>>,
    pub(super) max_age: Option<Spanned<String>>,
    pub(super) backoff: Option<Spanned<String>>,
    pub(super) max_backoff: Option<Spanned<String>>,
    pub(super) concurrency: Option<Spanned<i64>>,
    pub(super) poll_interval: Option<Spanned<String>>,
    pub(super) webhook_timeout: Option<Spanned<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawSecret {
    pub(super) env: Option<String>,
    pub(super) file: Option<PathBuf>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawEngine {
    pub(super) max_concurrent_runs: Option<Spanned<i64>>,
    pub(super) poll_interval: Option<Spanned<String>>,
    pub(super) lease: Option<Spanned<String>>,
    pub(super) shutdown_grace: Option<Spanned<String>>,
    pub(super) reload_interval: Option<Spanned<String>>,
    pub(super) max_output_kib: Option<Spanned<i64>>,
}

/// Reads the file: unknown keys and wrong types are errors, located.
pub(super) fn parse(path: &Path, text: &str) -> Result<RawConfig, ConfigError> {
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
