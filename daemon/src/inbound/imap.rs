//! IMAP polling.

use std::time::Duration;

use serde::Deserialize;

/// How to reach the IMAP server.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ImapTls {
    /// TLS from the first byte (port 993).
    Tls,
    /// Plain connection upgraded with STARTTLS (port 143).
    #[default]
    Starttls,
    /// No TLS (a local server, tests).
    None,
}

/// `[imap]`, resolved.
#[derive(Debug, Clone)]
pub struct ImapConfig {
    /// Host name.
    pub host: String,
    /// Port.
    pub port: u16,
    /// TLS mode.
    pub tls: ImapTls,
    /// Login name.
    pub username: String,
    /// Password.
    pub password: crate::outbox::Secret,
    /// The mailbox replies arrive in.
    pub mailbox: String,
    /// Where processed messages are moved, if anywhere.
    pub processed_mailbox: Option<String>,
    /// How often to poll when IDLE is not available (and at most between IDLE rounds).
    pub poll_interval: Duration,
    /// Use IDLE when the server offers it.
    pub idle: bool,
    /// Connect and command timeout.
    pub timeout: Duration,
}
