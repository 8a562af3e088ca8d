//! The commands behind the `pmoflow` binary other than `run`: they work on the files and the
//! database directly, so they also work while no daemon is running.

use std::io::Write;
use std::path::{Path, PathBuf};

use chrono::{DateTime, Utc};
use serde_json::{Value as Json, json};

use crate::clock::{Clock, SystemClock};
use crate::config::Config;
use crate::diag::Diagnostic;
use crate::engine::{RunRequest, create_run};
use crate::store::{RunFilter, RunRow, RunStatus, Store, StoreError};
use crate::workflow::Catalog;

mod mail;
mod plugin;
mod runs;
mod schedule;
mod validate;

pub use mail::{
    inbound_explain, inbound_list, inbound_poll, inbound_receive, inbound_show, outbox_list,
    outbox_retry, requests,
};
pub use plugin::{plugin_inspect, plugin_new, plugin_run};
pub use runs::{cancel, resolve, runs, show, trigger};
pub use schedule::{calendar_import, calendar_list, schedule, simulate, workflows};
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

/// A command failure: message for stderr and exit code.
#[derive(Debug, thiserror::Error)]
#[error("{message}")]
pub struct CliError {
    /// What to print.
    pub message: String,
    /// Exit code.
    pub code: i32,
}

impl CliError {
    pub(crate) fn new(message: impl Into<String>) -> Self {
        Self {
            message: message.into(),
            code: 1,
        }
    }
}

impl From<StoreError> for CliError {
    fn from(e: StoreError) -> Self {
        Self::new(e.to_string())
    }
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
    let crate::http::NewToken { token, hash } =
        crate::http::new_token().map_err(|e| CliError::new(e.to_string()))?;
    println!("token (shown once; give it to the client, keep it secret):\n  {token}\n");
    println!("add to pmoflow.toml:\n");
    println!("[[http.tokens]]\nname = \"{name}\"\nrole = \"{role}\"\nhash = \"{hash}\"");
    Ok(())
}
