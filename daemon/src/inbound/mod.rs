//! Mail that comes back: replies to status requests, acknowledgements, auto-replies and bounces.
//!
//! The formats live in [`crate::message`] (L0): this module turns raw RFC 5322 bytes into an [`Inbound`] message: decoded (UTF-8,
//! ISO-2022-JP, Shift_JIS/CP932, base64, quoted-printable; HTML-only bodies as text, all through
//! mail-parser with its full encoding support), classified ([`Kind`]: a reply, an auto-reply, a
//! bounce), with the keys that correlate it to a request ([`correlate`]) and the new text of the
//! reply with quoted history and signatures removed ([`reply`]). It never panics on bad input:
//! a message it cannot read is an error to quarantine, not a crash.

pub mod auth;
pub mod imap;
pub mod intake;

pub use crate::message::inbound::*;
pub use crate::message::{correlate, reply};
