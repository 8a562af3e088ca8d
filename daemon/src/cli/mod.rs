//! The `pmoflow` program: [`app`] (flags in `args`, logging, config, dispatch; the binary's
//! `main` calls [`app::main`]) and the commands other than `run`, which work on the files and the
//! database directly, so they also work while no daemon is running.

use std::io::Write;
use std::path::{Path, PathBuf};

use chrono::{DateTime, Utc};
use serde_json::{Value as Json, json};

use crate::clock::{Clock, SystemClock};
use crate::config::Config;
use crate::diag::Diagnostic;
use crate::engine::{RunRequest, create_run};
use crate::failure::Failure;
use crate::store::{RunFilter, RunRow, RunStatus, Store, StoreError};
use crate::workflow::Catalog;

pub mod app;
mod args;
mod cluster;
mod mail;
mod mailcheck;
mod plugin;
mod runs;
mod schedule;
mod validate;

pub use cluster::cluster;
pub use mail::{
    inbound_explain, inbound_list, inbound_poll, inbound_receive, inbound_release, inbound_show,
    outbox_list, outbox_retry, requests,
};
pub use mailcheck::mail_check;
pub use plugin::{plugin_inspect, plugin_new, plugin_run};
pub use runs::{cancel, resolve, runs, show, trigger};
pub use schedule::{SimOutput, calendar_import, calendar_list, schedule, simulate, workflows};
pub use validate::validate;

/// Output format of commands that print data.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum Format {
    /// For people.
    #[default]
    Text,
    /// For programs.
    Json,
}

/// A command failure: what went wrong and why (a [`Failure`], whose cause chain is printed line
/// by line like the daemon's own errors), and the exit code.
#[derive(Debug)]
pub struct CliError {
    failure: Failure,
    /// Exit code.
    pub code: i32,
}

impl CliError {
    /// A failure with no underlying error.
    pub(crate) fn new(message: impl Into<String>) -> Self {
        Failure::new(message).into()
    }

    /// `message`, caused by `source`.
    pub(crate) fn caused(
        message: impl Into<String>,
        source: impl Into<Box<dyn std::error::Error + Send + Sync>>,
    ) -> Self {
        Failure::caused(message, source).into()
    }

    /// The failure `source` describes itself.
    pub(crate) fn of(source: impl Into<Box<dyn std::error::Error + Send + Sync>>) -> Self {
        Failure::of(source).into()
    }

    /// The same failure with exit code `code` (e.g. 75, "try again later", for mail filters).
    pub(crate) fn with_code(mut self, code: i32) -> Self {
        self.code = code;
        self
    }
}

impl From<Failure> for CliError {
    fn from(failure: Failure) -> Self {
        Self { failure, code: 1 }
    }
}

impl From<StoreError> for CliError {
    fn from(e: StoreError) -> Self {
        Self::of(e)
    }
}

impl std::fmt::Display for CliError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.failure.fmt(f)
    }
}

impl std::error::Error for CliError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.failure.source()
    }
}

/// `error: …` and one `caused by: …` line per cause.
pub fn error_report(e: &dyn std::error::Error) -> String {
    crate::failure::report(e)
}

fn local(t: DateTime<Utc>, tz: chrono_tz::Tz) -> String {
    t.with_timezone(&tz).format("%Y-%m-%d %H:%M:%S").to_string()
}

fn local_ms(t: DateTime<Utc>, tz: chrono_tz::Tz) -> String {
    t.with_timezone(&tz)
        .format("%Y-%m-%d %H:%M:%S%.3f")
        .to_string()
}

fn run_duration(r: &RunRow) -> String {
    match (r.started_at, r.finished_at) {
        (Some(s), Some(f)) => {
            let ms = (f - s).num_milliseconds().max(0);
            humantime::format_duration(std::time::Duration::from_millis(
                u64::try_from(ms).unwrap_or(0),
            ))
            .to_string()
        }
        _ => String::new(),
    }
}

/// `pmoflow token new --name N --role R`.
pub fn token_new(name: &str, role: &str) -> Result<(), CliError> {
    if crate::http::Role::parse(role).is_none() {
        return Err(CliError::new(format!(
            "unknown role `{role}` (viewer, operator, admin)"
        )));
    }
    if name.is_empty() || name.contains('"') {
        return Err(CliError::new("--name must be a plain name"));
    }
    let crate::http::NewToken { token, id, hash } =
        crate::http::new_token().map_err(CliError::of)?;
    println!("token (shown once; give it to the client, keep it secret):\n  {token}\n");
    println!("add to pmoflow.toml:\n");
    println!(
        "[[http.tokens]]\nname = \"{name}\"\nrole = \"{role}\"\nid = \"{id}\"\nhash = \"{hash}\""
    );
    Ok(())
}
