//! L0 vocabulary for messages in and out: formats and pure functions, no SQL, no loops, no
//! sockets.
//!
//! - [`settings`]: mail settings as data (sender, SMTP server, charset, reply addresses, secrets).
//! - [`email`]: RFC 5322 messages built with lettre (Japanese subjects, ISO-2022-JP, attachments).
//! - [`webhook`]: signing and verifying webhook bodies, the Slack/Teams presets.
//! - [`correlate`]: tokens, reply addresses, our Message-IDs and subject tags, and the keys found
//!   in an incoming message.
//! - [`inbound`]: raw RFC 5322 bytes → [`inbound::Inbound`] (decoded and classified).
//! - [`reply`]: the new text of a reply and the `項目: 値` fields in it.

mod bounce;
pub mod correlate;
pub mod email;
mod flowed;
pub mod inbound;
pub mod reply;
pub mod settings;
pub mod webhook;
