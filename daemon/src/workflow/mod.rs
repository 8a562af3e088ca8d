//! Workflows: the file format, its validation, and the directory they are loaded from.
//!
//! `raw` is the file as written (with spans); `compile` turns it into the checked [`Workflow`]
//! the engine runs, or into [`Diagnostic`](crate::diag::Diagnostic)s; `catalog` loads a directory.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use serde::Serialize;
use serde_json::Value as Json;

use crate::actions::ActionKind;

pub mod catalog;
pub mod compile;
pub mod raw;
pub mod schedule;
mod triggers;

pub use catalog::Catalog;
pub use compile::compile;

/// A checked workflow, ready to run.
#[derive(Debug, Clone, Serialize)]
pub struct Workflow {
    /// Unique id across the directory.
    pub id: String,
    /// Display name.
    pub name: String,
    /// Free text.
    pub description: String,
    /// When it starts by itself.
    pub triggers: Vec<Trigger>,
    /// Whether (and how) `POST /hooks/{id}` may start it.
    pub webhook: Option<WebhookTrigger>,
    /// Default inputs.
    pub inputs: serde_json::Map<String, Json>,
    /// Steps, in order.
    pub steps: Vec<Step>,
    /// SHA-256 of the file's bytes: the version a run is pinned to.
    pub hash: String,
    /// Where it was read from.
    pub path: PathBuf,
}

/// A `[[triggers]]` entry with `webhook = true`.
#[derive(Debug, Clone, Serialize)]
pub struct WebhookTrigger {
    /// The `[secrets]` entry that signs calls; without it only bearer tokens are accepted.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub secret: Option<String>,
    /// Inputs this trigger sets (the request body overrides them).
    pub inputs: serde_json::Map<String, Json>,
}

/// A `[[triggers]]` entry.
#[derive(Debug, Clone, Serialize)]
pub struct Trigger {
    /// Stable identity of this trigger (position and content hash): the key of its schedule
    /// cursor and of the runs it fires.
    pub key: String,
    /// A cron expression, as written.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cron: Option<String>,
    /// The Nth business day of the month (negative: from the end).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub business_day: Option<i32>,
    /// Wall-clock time of a business-day trigger.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub at: Option<chrono::NaiveTime>,
    /// Months a business-day trigger fires in (empty: every month).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub months: Vec<u32>,
    /// IANA time zone (default: the config's).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub timezone: Option<String>,
    /// DST policy.
    pub dst: raw::DstPolicy,
    /// Business calendar.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub calendar: Option<raw::CalendarKind>,
    /// Closed-day policy (with a calendar).
    pub on_closed_day: raw::OnClosedDay,
    /// Missed-fire policy.
    pub catch_up: raw::CatchUp,
    /// Missed fires older than this are skipped whatever the policy.
    #[serde(with = "opt_duration_ms", rename = "catch_up_window_ms")]
    pub catch_up_window: Option<Duration>,
    /// Overlap policy.
    pub overlap: raw::Overlap,
    /// Random delay added to each fire (the same for every daemon).
    #[serde(with = "opt_duration_ms", rename = "jitter_ms")]
    pub jitter: Option<Duration>,
    /// Inputs overriding the workflow's defaults for runs this trigger starts.
    pub inputs: serde_json::Map<String, Json>,
}

/// A checked step.
#[derive(Debug, Clone, Serialize)]
pub struct Step {
    /// Unique within the workflow.
    pub id: String,
    /// Display name (defaults to the id).
    pub name: String,
    /// What it does.
    pub action: ActionKind,
    /// The plugin of a `plugin:NAME` step.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub plugin: Option<String>,
    /// Parameters, with templates still unrendered.
    pub with: Json,
    /// Run only when this expression is true.
    #[serde(rename = "if", skip_serializing_if = "Option::is_none")]
    pub condition: Option<String>,
    /// Fan out over the list this expression gives.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub foreach: Option<String>,
    /// How many foreach items run at once.
    pub parallelism: usize,
    /// Retry policy.
    pub retry: RetryPolicy,
    /// Time limit for one attempt.
    #[serde(with = "opt_duration_ms", rename = "timeout_ms")]
    pub timeout: Option<Duration>,
    /// 1-based line of the step in its file, for messages.
    pub line: usize,
}

/// How often and how patiently a failing step is retried.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct RetryPolicy {
    /// Total attempts, including the first (1 = no retry).
    pub attempts: u32,
    /// Delay before the second attempt; doubles each time.
    #[serde(with = "duration_ms", rename = "backoff_ms")]
    pub backoff: Duration,
    /// Upper bound of the delay.
    #[serde(with = "duration_ms", rename = "max_backoff_ms")]
    pub max_backoff: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        Self {
            attempts: 1,
            backoff: Duration::from_secs(10),
            max_backoff: Duration::from_secs(600),
        }
    }
}

impl RetryPolicy {
    /// The delay before attempt `next_attempt` (2, 3, …): exponential, capped, with "equal
    /// jitter" (half fixed, half random) so that many failing runs do not retry in lockstep.
    pub fn delay_before(&self, next_attempt: u32, random_unit: f64) -> Duration {
        let exp = next_attempt.saturating_sub(2).min(30);
        let base = self
            .backoff
            .saturating_mul(1u32 << exp)
            .min(self.max_backoff);
        let half = base / 2;
        half + half.mul_f64(random_unit.clamp(0.0, 1.0))
    }
}

/// Default foreach parallelism.
pub const DEFAULT_PARALLELISM: usize = 4;

/// A shared workflow.
pub type SharedWorkflow = Arc<Workflow>;

mod duration_ms {
    pub fn serialize<S: serde::Serializer>(
        d: &std::time::Duration,
        s: S,
    ) -> Result<S::Ok, S::Error> {
        s.serialize_u64(u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
    }
}

mod opt_duration_ms {
    pub fn serialize<S: serde::Serializer>(
        d: &Option<std::time::Duration>,
        s: S,
    ) -> Result<S::Ok, S::Error> {
        match d {
            Some(d) => super::duration_ms::serialize(d, s),
            None => s.serialize_none(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_and_caps() {
        let p = RetryPolicy {
            attempts: 10,
            backoff: Duration::from_secs(10),
            max_backoff: Duration::from_secs(60),
        };
        assert_eq!(p.delay_before(2, 1.0), Duration::from_secs(10));
        assert_eq!(p.delay_before(3, 1.0), Duration::from_secs(20));
        assert_eq!(p.delay_before(4, 1.0), Duration::from_secs(40));
        assert_eq!(p.delay_before(5, 1.0), Duration::from_secs(60));
        assert_eq!(p.delay_before(5, 0.0), Duration::from_secs(30));
    }
}
