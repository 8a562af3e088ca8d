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
use std::time::Duration;

pub mod transport;
pub mod worker;

// The formats and settings are L0 vocabulary (`crate::message`); re-exported for callers.
pub use crate::message::settings::{
    Charset, MailSettings, ReplySettings, Secret, SmtpConfig, SmtpTls,
};
pub use crate::message::{email, webhook};

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
    /// Longest a webhook receiver may take to answer one delivery.
    pub webhook_timeout: Duration,
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
            webhook_timeout: Duration::from_secs(30),
        }
    }
}

/// What the delivery worker needs: settings as data, no live handles.
#[derive(Debug, Clone, Default)]
pub struct DeliveryConfig {
    /// Where mail goes (`[smtp]`, or `.eml` files) and as whom.
    pub mail: MailSettings,
    /// Delivery policy (`[outbox]`).
    pub outbox: OutboxConfig,
    /// Named secrets (`[secrets]`): webhook signing keys.
    pub secrets: BTreeMap<String, Secret>,
    /// Where webhooks may be posted (`[egress]`).
    pub egress: std::sync::Arc<crate::egress::EgressPolicy>,
}

pub use crate::store::{MessageKind, NewMessage};

/// How a delivery attempt ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Delivery {
    /// Accepted by the server.
    Sent,
    /// Try again later.
    Temporary(String),
    /// Try again, not before this long: the server said so (`Retry-After` on a 429 or 503).
    Later(String, std::time::Duration),
    /// Retrying cannot help (5xx SMTP reply, 4xx HTTP status): dead at once.
    Permanent(String),
}
