//! pmoflow: a durable workflow automation daemon for government PMOs.
//!
//! The binary (`main.rs`) is thin: it parses flags and calls into this library. See
//! `ARCHITECTURE.md` at the repository root for the codemap and the invariants.

pub mod actions;
pub mod calendar;
pub mod cli;
pub mod clock;
pub mod cluster;
pub mod config;
pub mod daemon;
pub mod diag;
pub mod duration;
pub mod egress;
pub mod engine;
pub mod failure;
pub mod http;
pub mod inbound;
pub mod inside;
pub mod message;
pub mod metrics;
pub mod oauth;
pub mod outbox;
pub mod plugins;
pub mod portfolio;
pub mod simulate;
pub mod store;
pub mod template;
pub mod wake;
pub mod workbook;
pub mod workflow;

/// This pmoflow's version, as daemons register it and `pmoflow cluster` compares it.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");
