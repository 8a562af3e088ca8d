//! Notifications that are never lost: the durable outbox.
//!
//! An `email` or `webhook` step does not talk to any server. It renders its message and returns
//! it; the engine commits the message row in the same transaction that marks the step succeeded.
//! The delivery worker (`worker.rs`) then sends what is pending, retrying with backoff and jitter,
//! and moves a message to `dead` after too many attempts, too much time, or a permanent refusal.
//!
//! Guarantee: a message whose step succeeded is delivered at least once; it is marked `sent` only
//! after the server accepted it, so a crash between acceptance and the mark resends that one
//! message, with the same Message-ID (email) or `Idempotency-Key` (webhook), for receivers to
//! de-duplicate. Nothing else is ever sent twice.

use std::collections::BTreeMap;
use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

pub mod email;
pub mod transport;
pub mod webhook;
pub mod worker;

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
    /// Connection and command timeout.
    pub timeout: Duration,
}

/// `[outbox]`, resolved.
#[derive(Debug, Clone)]
pub struct OutboxConfig {
    /// Attempts before a message is dead.
    pub max_attempts: u32,
    /// Age after which a message still failing is dead.
    pub max_age: Duration,
    /// First retry delay; doubles each attempt.
    pub backoff: Duration,
    /// Longest retry delay.
    pub max_backoff: Duration,
    /// Messages delivered at once.
    pub concurrency: usize,
    /// How often the outbox is checked for messages queued by other processes.
    pub poll_interval: Duration,
}

impl Default for OutboxConfig {
    fn default() -> Self {
        Self {
            max_attempts: 12,
            max_age: Duration::from_secs(2 * 24 * 3600),
            backoff: Duration::from_secs(30),
            max_backoff: Duration::from_secs(3600),
            concurrency: 32,
            poll_interval: Duration::from_secs(1),
        }
    }
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

/// Everything actions and the delivery worker use besides the store and the clock.
#[derive(Debug, Clone, Default)]
pub struct Services {
    /// Mail settings.
    pub mail: MailSettings,
    /// Reply settings.
    pub replies: ReplySettings,
    /// This process's metrics.
    pub metrics: std::sync::Arc<crate::metrics::Metrics>,
    /// Delivery policy.
    pub outbox: OutboxConfig,
    /// Named secrets (`[secrets]`).
    pub secrets: BTreeMap<String, Secret>,
    /// The workflows directory (templates, attachments).
    pub workflows_dir: PathBuf,
    /// Installed WebAssembly plugins.
    pub plugins: Option<std::sync::Arc<crate::plugins::PluginHost>>,
    /// Set by `pmoflow simulate`: plugin results the scenario gives (no network in a simulation).
    pub simulation: Option<std::sync::Arc<crate::simulate::World>>,
}

/// Kinds of outgoing messages.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum MessageKind {
    /// An email (raw RFC 5322 bytes and an envelope).
    Email,
    /// An HTTP POST to a webhook.
    Webhook,
}

impl MessageKind {
    /// As stored.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Email => "email",
            Self::Webhook => "webhook",
        }
    }
}

/// A message an action produced, committed with its step.
#[derive(Debug, Clone, PartialEq)]
pub struct NewMessage {
    /// Email or webhook.
    pub kind: MessageKind,
    /// Unique per message: `run:step:n`. Re-inserting the same key is a no-op.
    pub key: String,
    /// Recipients or URL, for listings.
    pub target: String,
    /// The email Message-ID (also the webhook `Idempotency-Key`).
    pub message_id: String,
    /// What the transport needs (see `transport.rs`).
    pub payload: serde_json::Value,
}

/// How a delivery attempt ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Delivery {
    /// Accepted by the server.
    Sent,
    /// Try again later.
    Temporary(String),
    /// Retrying cannot help (5xx SMTP reply, 4xx HTTP status): dead at once.
    Permanent(String),
}
