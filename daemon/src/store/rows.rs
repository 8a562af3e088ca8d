//! Typed rows read from the database.

use chrono::{DateTime, Utc};
use serde::Serialize;
use serde_json::Value as Json;
use sqlx::{ColumnIndex, Decode, Row, Type};

use super::{Result, StoreError, from_ms};

/// The life of a run.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Serialize, schemars::JsonSchema, serde::Deserialize,
)]
#[serde(rename_all = "snake_case")]
pub enum RunStatus {
    /// Created, not started yet.
    Pending,
    /// Leased by a daemon that is executing it.
    Running,
    /// Parked until its wake time (a wait, a retry backoff, a daemon shutdown).
    Waiting,
    /// Finished, every step succeeded or was skipped.
    Succeeded,
    /// A step failed for good.
    Failed,
    /// Stopped on request.
    Cancelled,
    /// Waiting for an earlier run of the workflow to finish (`overlap = "queue"`).
    Queued,
    /// A scheduled fire that did not run (missed while down, overlap, …); `error` says why.
    Skipped,
}

impl RunStatus {
    /// As stored.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Pending => "pending",
            Self::Running => "running",
            Self::Waiting => "waiting",
            Self::Succeeded => "succeeded",
            Self::Failed => "failed",
            Self::Cancelled => "cancelled",
            Self::Queued => "queued",
            Self::Skipped => "skipped",
        }
    }

    /// Whether nothing more will happen to the run.
    pub fn is_terminal(self) -> bool {
        matches!(
            self,
            Self::Succeeded | Self::Failed | Self::Cancelled | Self::Skipped
        )
    }
}

/// A status name that is not one of the known ones.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct UnknownStatus(String);

impl std::str::FromStr for RunStatus {
    type Err = UnknownStatus;
    fn from_str(s: &str) -> Result<Self, UnknownStatus> {
        Ok(match s {
            "pending" => Self::Pending,
            "running" => Self::Running,
            "waiting" => Self::Waiting,
            "succeeded" => Self::Succeeded,
            "failed" => Self::Failed,
            "cancelled" => Self::Cancelled,
            "queued" => Self::Queued,
            "skipped" => Self::Skipped,
            other => {
                return Err(UnknownStatus(format!(
                    "unknown run status `{other}` (pending, queued, running, waiting, succeeded, failed, cancelled, skipped)"
                )));
            }
        })
    }
}

/// The life of a step (or foreach item).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, schemars::JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum StepStatus {
    /// An attempt is under way (or was, when a daemon died).
    Running,
    /// Parked until `wake_at` by the action (a `wait`).
    Waiting,
    /// Parked until `wake_at` before the next attempt.
    RetryWait,
    /// Done.
    Succeeded,
    /// Failed for good.
    Failed,
    /// Its `if` was false.
    Skipped,
}

impl StepStatus {
    /// As stored.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Running => "running",
            Self::Waiting => "waiting",
            Self::RetryWait => "retry_wait",
            Self::Succeeded => "succeeded",
            Self::Failed => "failed",
            Self::Skipped => "skipped",
        }
    }
}

impl std::str::FromStr for StepStatus {
    type Err = UnknownStatus;
    fn from_str(s: &str) -> Result<Self, UnknownStatus> {
        Ok(match s {
            "running" => Self::Running,
            "waiting" => Self::Waiting,
            "retry_wait" => Self::RetryWait,
            "succeeded" => Self::Succeeded,
            "failed" => Self::Failed,
            "skipped" => Self::Skipped,
            other => return Err(UnknownStatus(format!("unknown step status `{other}`"))),
        })
    }
}

/// A run as stored.
#[derive(Debug, Clone, Serialize, schemars::JsonSchema)]
pub struct RunRow {
    /// Run id (UUIDv7).
    pub id: String,
    /// Workflow id.
    pub workflow_id: String,
    /// Pinned workflow version.
    pub version_hash: String,
    /// Status.
    pub status: RunStatus,
    /// What started it.
    pub trigger_kind: String,
    /// Inputs.
    pub inputs: Json,
    /// Intended fire time (schedules).
    pub scheduled_at: Option<DateTime<Utc>>,
    /// Created.
    pub created_at: DateTime<Utc>,
    /// First claimed.
    pub started_at: Option<DateTime<Utc>>,
    /// Finished.
    pub finished_at: Option<DateTime<Utc>>,
    /// Due time while not finished.
    pub wake_at: Option<DateTime<Utc>>,
    /// Daemon executing it.
    pub lease_owner: Option<String>,
    /// Cancellation asked for.
    pub cancel_requested: bool,
    /// Why it failed or was cancelled.
    pub error: Option<String>,
}

/// A step row as stored.
#[derive(Debug, Clone, Serialize, schemars::JsonSchema)]
pub struct StepRow {
    /// `id` or `id[i]`.
    pub step_key: String,
    /// Step id.
    pub step_id: String,
    /// Foreach item index.
    pub item_index: Option<i64>,
    /// Status.
    pub status: StepStatus,
    /// Attempt number (from 1).
    pub attempt: i64,
    /// First attempt started.
    pub started_at: Option<DateTime<Utc>>,
    /// Finished.
    pub finished_at: Option<DateTime<Utc>>,
    /// Due time while parked.
    pub wake_at: Option<DateTime<Utc>>,
    /// Output.
    pub output: Option<Json>,
    /// Private state.
    pub state: Option<Json>,
    /// Last error.
    pub error: Option<String>,
}

/// An event of a run.
#[derive(Debug, Clone, Serialize, schemars::JsonSchema)]
pub struct EventRow {
    /// When.
    pub at: DateTime<Utc>,
    /// About which step.
    pub step_key: Option<String>,
    /// Kind.
    pub kind: String,
    /// Text.
    pub message: String,
}

fn json(table: &'static str, text: Option<String>) -> Result<Option<Json>> {
    text.map(|t| serde_json::from_str(&t).map_err(|e| StoreError::Corrupt(table, e.to_string())))
        .transpose()
}

fn parse<T: std::str::FromStr<Err = UnknownStatus>>(table: &'static str, text: &str) -> Result<T> {
    text.parse::<T>()
        .map_err(|e: UnknownStatus| StoreError::Corrupt(table, e.to_string()))
}

impl RunRow {
    pub(super) fn from_row<R: Row>(r: &R) -> Result<Self>
    where
        for<'a> &'a str: ColumnIndex<R>,
        String: for<'r> Decode<'r, R::Database> + Type<R::Database>,
        i64: for<'r> Decode<'r, R::Database> + Type<R::Database>,
    {
        let status: String = r.try_get("status")?;
        Ok(Self {
            id: r.try_get("id")?,
            workflow_id: r.try_get("workflow_id")?,
            version_hash: r.try_get("version_hash")?,
            status: parse("runs", &status)?,
            trigger_kind: r.try_get("trigger_kind")?,
            inputs: json("runs", Some(r.try_get("inputs")?))?.unwrap_or(Json::Null),
            scheduled_at: r.try_get::<Option<i64>, _>("scheduled_at")?.map(from_ms),
            created_at: from_ms(r.try_get("created_at")?),
            started_at: r.try_get::<Option<i64>, _>("started_at")?.map(from_ms),
            finished_at: r.try_get::<Option<i64>, _>("finished_at")?.map(from_ms),
            wake_at: r.try_get::<Option<i64>, _>("wake_at")?.map(from_ms),
            lease_owner: r.try_get("lease_owner")?,
            cancel_requested: r.try_get::<i64, _>("cancel_requested")? != 0,
            error: r.try_get("error")?,
        })
    }
}

impl StepRow {
    pub(super) fn from_row<R: Row>(r: &R) -> Result<Self>
    where
        for<'a> &'a str: ColumnIndex<R>,
        String: for<'r> Decode<'r, R::Database> + Type<R::Database>,
        i64: for<'r> Decode<'r, R::Database> + Type<R::Database>,
    {
        let status: String = r.try_get("status")?;
        Ok(Self {
            step_key: r.try_get("step_key")?,
            step_id: r.try_get("step_id")?,
            item_index: r.try_get("item_index")?,
            status: parse("steps", &status)?,
            attempt: r.try_get("attempt")?,
            started_at: r.try_get::<Option<i64>, _>("started_at")?.map(from_ms),
            finished_at: r.try_get::<Option<i64>, _>("finished_at")?.map(from_ms),
            wake_at: r.try_get::<Option<i64>, _>("wake_at")?.map(from_ms),
            output: json("steps", r.try_get("output")?)?,
            state: json("steps", r.try_get("state")?)?,
            error: r.try_get("error")?,
        })
    }
}

impl EventRow {
    pub(super) fn from_row<R: Row>(r: &R) -> Result<Self>
    where
        for<'a> &'a str: ColumnIndex<R>,
        String: for<'r> Decode<'r, R::Database> + Type<R::Database>,
        i64: for<'r> Decode<'r, R::Database> + Type<R::Database>,
    {
        Ok(Self {
            at: from_ms(r.try_get("at")?),
            step_key: r.try_get("step_key")?,
            kind: r.try_get("kind")?,
            message: r.try_get("message")?,
        })
    }
}
