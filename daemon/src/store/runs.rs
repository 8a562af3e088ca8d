//! Runs, their steps and events: creating, claiming, leasing, the fenced step writes, cancel
//! and retry, and the queue of runs waiting for a concurrency slot.

use chrono::{DateTime, Utc};
use serde_json::Value as Json;
use sqlx::Row;

use super::{
    Backend, EventRow, NewMessage, NewRequest, Result, RunRow, RunStatus, StepRow, StepStatus,
    Store, StoreError, ms, writer,
};

/// A run to create.
#[derive(Debug, Clone)]
pub struct NewRun<'a> {
    /// Workflow id.
    pub workflow_id: &'a str,
    /// Pinned version.
    pub version_hash: &'a str,
    /// `manual`, `schedule`, `api`, …
    pub trigger_kind: &'a str,
    /// At most one run per (workflow, key), e.g. the scheduled fire time.
    pub dedup_key: Option<&'a str>,
    /// Resolved inputs.
    pub inputs: &'a Json,
    /// The fire time a schedule meant.
    pub scheduled_at: Option<DateTime<Utc>>,
    /// Now.
    pub now: DateTime<Utc>,
    /// `Pending` (due at `wake_at`), `Queued` (due when promoted) or `Skipped` (recorded only).
    pub status: RunStatus,
    /// When a pending run becomes due (default: now).
    pub wake_at: Option<DateTime<Utc>>,
    /// Why a skipped run did not run.
    pub error: Option<&'a str>,
}

/// Whether a run was created or already existed for its dedup key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Created {
    /// A new run.
    New(String),
    /// The key was taken; this is the existing run.
    Existing(String),
}

impl Created {
    /// The run id either way.
    pub fn id(&self) -> &str {
        match self {
            Created::New(id) | Created::Existing(id) => id,
        }
    }
}

/// Proof of holding a run's lease, carried by every fenced write.
#[derive(Debug, Clone)]
pub struct Fence {
    /// Run id.
    pub run_id: String,
    /// This daemon's node id.
    pub owner: String,
    /// How long each renewal extends the lease.
    pub lease: chrono::Duration,
}

/// A step row to write.
#[derive(Debug, Clone)]
pub struct StepWrite<'a> {
    /// `id` or `id[i]`.
    pub step_key: &'a str,
    /// The step id.
    pub step_id: &'a str,
    /// Foreach item index.
    pub item_index: Option<i64>,
    /// New status.
    pub status: StepStatus,
    /// Attempt number.
    pub attempt: i64,
    /// When the first attempt started.
    pub started_at: Option<DateTime<Utc>>,
    /// When it finished.
    pub finished_at: Option<DateTime<Utc>>,
    /// When a parked step is due.
    pub wake_at: Option<DateTime<Utc>>,
    /// Output.
    pub output: Option<&'a Json>,
    /// Private state (foreach items).
    pub state: Option<&'a Json>,
    /// Last error.
    pub error: Option<&'a str>,
    /// Outbox messages committed with this transition.
    pub messages: &'a [NewMessage],
    /// Requests (reply tokens) committed with this transition.
    pub requests: &'a [NewRequest],
}

/// An event to append with a transition.
#[derive(Debug, Clone)]
pub struct NewEvent<'a> {
    /// Step key, if about a step.
    pub step_key: Option<&'a str>,
    /// `attempt_failed`, `retry_scheduled`, `cancelled`, …
    pub kind: &'a str,
    /// Readable text.
    pub message: &'a str,
}

/// Runs leased by [`Store::claim`].
#[derive(Debug)]
pub struct Claim {
    /// The runs now leased to the caller.
    pub runs: Vec<ClaimedRun>,
    /// When the next unleased run (other than these) becomes due, if any.
    pub next_wake: Option<DateTime<Utc>>,
}

/// One claimed run.
#[derive(Debug)]
pub struct ClaimedRun {
    /// The run as leased.
    pub run: RunRow,
    /// Never executed before: it has no step rows, and its executor need not read them.
    pub fresh: bool,
}

/// What a cancel request did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CancelOutcome {
    /// The run was idle and is now cancelled.
    Cancelled,
    /// The run is executing; its daemon will stop it at the next step boundary.
    Requested,
    /// The run had already finished.
    AlreadyFinished,
    /// No such run.
    NotFound,
}

/// Filters for listing runs.
#[derive(Debug, Clone, Default)]
pub struct RunFilter {
    /// Only this workflow.
    pub workflow_id: Option<String>,
    /// Only this status.
    pub status: Option<RunStatus>,
    /// At most this many (newest first).
    pub limit: i64,
}

pub(super) const RUN_COLUMNS: &str = "id, workflow_id, version_hash, status, trigger_kind, inputs, scheduled_at, \
    created_at, started_at, finished_at, wake_at, lease_owner, cancel_requested, error";
pub(super) const STEP_COLUMNS: &str = "step_key, step_id, item_index, status, attempt, started_at, finished_at, \
    wake_at, output, state, error";

impl Store {
    /// Creates a run, due at once. With a dedup key, a second call returns the first run.
    pub async fn create_run(&self, new: &NewRun<'_>) -> Result<Created> {
        let id = uuid::Uuid::now_v7().to_string();
        let inputs = new.inputs.to_string();
        let (wake_at, finished_at) = match new.status {
            RunStatus::Queued => (None, None),
            RunStatus::Skipped => (None, Some(ms(new.now))),
            _ => (Some(ms(new.wake_at.unwrap_or(new.now))), None),
        };
        // PostgreSQL: the wake-up notification is sent by the same statement (delivered at
        // commit, so a listener always finds the run), one round trip instead of two.
        const INSERT: &str = "INSERT INTO runs (id, workflow_id, version_hash, status, trigger_kind, \
             dedup_key, inputs, scheduled_at, created_at, wake_at, finished_at, error) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12) ON CONFLICT DO NOTHING";
        let sql = match &self.backend {
            Backend::Sqlite(_) => INSERT.to_string(),
            Backend::Postgres(_) => format!(
                "WITH ins AS ({INSERT} RETURNING wake_at), \
                 woken AS (SELECT pg_notify('{}', '') FROM ins WHERE wake_at IS NOT NULL) \
                 SELECT (SELECT count(*) FROM ins) AS n, (SELECT count(*) FROM woken) AS notified",
                super::WAKE_RUNS
            ),
        };
        let inserted: u64 = with_pool!(self, |pool| {
            let q = sqlx::query(&sql)
                .bind(&id)
                .bind(new.workflow_id)
                .bind(new.version_hash)
                .bind(new.status.as_str())
                .bind(new.trigger_kind)
                .bind(new.dedup_key)
                .bind(&inputs)
                .bind(new.scheduled_at.map(ms))
                .bind(ms(new.now))
                .bind(wake_at)
                .bind(finished_at)
                .bind(new.error);
            match &self.backend {
                Backend::Sqlite(_) => q.execute(pool).await.map(|r| r.rows_affected()),
                Backend::Postgres(_) => q
                    .fetch_one(pool)
                    .await
                    .and_then(|r| r.try_get::<i64, _>("n"))
                    .map(|n| u64::try_from(n).unwrap_or(0)),
            }
        })?;
        if inserted == 1 {
            return Ok(Created::New(id));
        }
        let existing: String = with_pool!(self, |pool| {
            sqlx::query("SELECT id FROM runs WHERE workflow_id = $1 AND dedup_key = $2")
                .bind(new.workflow_id)
                .bind(new.dedup_key)
                .fetch_one(pool)
                .await?
                .try_get("id")
        })?;
        Ok(Created::Existing(existing))
    }

    /// One run.
    pub async fn get_run(&self, id: &str) -> Result<Option<RunRow>> {
        let sql = format!("SELECT {RUN_COLUMNS} FROM runs WHERE id = $1");
        with_pool!(self, |pool| {
            sqlx::query(&sql)
                .bind(id)
                .fetch_optional(pool)
                .await?
                .map(|r| RunRow::from_row(&r))
                .transpose()
        })
    }
    /// The latest run of `workflow_id`, if any (what `pmoflow workflows` and the API show).
    pub async fn last_run(&self, workflow_id: &str) -> Result<Option<RunRow>> {
        Ok(self
            .list_runs(&RunFilter {
                workflow_id: Some(workflow_id.to_string()),
                status: None,
                limit: 1,
            })
            .await?
            .into_iter()
            .next())
    }

    /// Runs matching a filter, newest first.
    pub async fn list_runs(&self, filter: &RunFilter) -> Result<Vec<RunRow>> {
        let sql = format!(
            "SELECT {RUN_COLUMNS} FROM runs WHERE ($1 IS NULL OR workflow_id = $1) \
             AND ($2 IS NULL OR status = $2) ORDER BY created_at DESC, id DESC LIMIT $3"
        );
        let status = filter.status.map(|s| s.as_str());
        with_pool!(self, |pool| {
            sqlx::query(&sql)
                .bind(filter.workflow_id.as_deref())
                .bind(status)
                .bind(if filter.limit > 0 { filter.limit } else { 50 })
                .fetch_all(pool)
                .await?
                .iter()
                .map(RunRow::from_row)
                .collect()
        })
    }

    /// All step rows of a run, in the order they were first started.
    pub async fn get_steps(&self, run_id: &str) -> Result<Vec<StepRow>> {
        let sql = format!(
            "SELECT {STEP_COLUMNS} FROM steps WHERE run_id = $1 ORDER BY started_at, step_key"
        );
        with_pool!(self, |pool| {
            sqlx::query(&sql)
                .bind(run_id)
                .fetch_all(pool)
                .await?
                .iter()
                .map(StepRow::from_row)
                .collect()
        })
    }

    /// Events of a run, oldest first.
    pub async fn get_events(&self, run_id: &str) -> Result<Vec<EventRow>> {
        with_pool!(self, |pool| {
            sqlx::query(
                "SELECT at, step_key, kind, message FROM run_events WHERE run_id = $1 ORDER BY at",
            )
            .bind(run_id)
            .fetch_all(pool)
            .await?
            .iter()
            .map(EventRow::from_row)
            .collect()
        })
    }

    /// Sends one fenced write to the group-commit writer and waits for its commit.
    async fn submit(
        &self,
        fence: &Fence,
        now: DateTime<Utc>,
        op: writer::Op,
        event: Option<&NewEvent<'_>>,
        messages: Vec<NewMessage>,
        requests: Vec<NewRequest>,
    ) -> Result<bool> {
        let (reply, answer) = tokio::sync::oneshot::channel();
        let job = writer::Job {
            run_id: fence.run_id.clone(),
            owner: fence.owner.clone(),
            lease_until: ms(now + fence.lease),
            now: ms(now),
            op,
            event: event.map(|e| {
                (
                    e.step_key.map(str::to_string),
                    e.kind.to_string(),
                    e.message.to_string(),
                )
            }),
            messages,
            requests,
            reply,
        };
        self.writer
            .send(job)
            .await
            .map_err(|_| StoreError::Closed)?;
        answer.await.map_err(|_| StoreError::Closed)?
    }

    /// Queues a step transition for the group commit without waiting for it: the returned
    /// [`PendingWrite`] says, once awaited, whether it committed (and whether cancellation was
    /// requested). Writes of one run are committed in the order they were queued (they share
    /// the queue, and each locks the run row). For steps with no effect outside the database,
    /// so that a chain of them costs one commit instead of one each; the caller must await
    /// every pending write before acting on them.
    pub async fn write_step_later(
        &self,
        fence: &Fence,
        now: DateTime<Utc>,
        step: &StepWrite<'_>,
    ) -> Result<PendingWrite> {
        let (reply, answer) = tokio::sync::oneshot::channel();
        let job = writer::Job {
            run_id: fence.run_id.clone(),
            owner: fence.owner.clone(),
            lease_until: ms(now + fence.lease),
            now: ms(now),
            op: step_op(step),
            event: None,
            messages: step.messages.to_vec(),
            requests: step.requests.to_vec(),
            reply,
        };
        self.writer
            .send(job)
            .await
            .map_err(|_| StoreError::Closed)?;
        Ok(PendingWrite(answer))
    }

    /// Writes a step transition (and optionally an event) under the run's lease.
    /// Returns whether cancellation of the run has been requested.
    pub async fn write_step(
        &self,
        fence: &Fence,
        now: DateTime<Utc>,
        step: &StepWrite<'_>,
        event: Option<&NewEvent<'_>>,
    ) -> Result<bool> {
        let op = step_op(step);
        self.submit(
            fence,
            now,
            op,
            event,
            step.messages.to_vec(),
            step.requests.to_vec(),
        )
        .await
    }

    /// Parks a run until `wake_at` and gives up its lease.
    pub async fn park_run(&self, fence: &Fence, wake_at: DateTime<Utc>) -> Result<()> {
        let op = writer::Op::Park {
            wake_at: ms(wake_at),
        };
        self.submit(fence, wake_at, op, None, Vec::new(), Vec::new())
            .await
            .map(|_| ())
    }

    /// Ends a run with a terminal status.
    pub async fn finish_run(
        &self,
        fence: &Fence,
        now: DateTime<Utc>,
        status: RunStatus,
        error: Option<&str>,
    ) -> Result<()> {
        let message = match error {
            Some(e) => format!("run {}: {e}", status.as_str()),
            None => format!("run {}", status.as_str()),
        };
        let op = writer::Op::Finish {
            status: status.as_str(),
            error: error.map(str::to_string),
        };
        let event = NewEvent {
            step_key: None,
            kind: status.as_str(),
            message: &message,
        };
        self.submit(fence, now, op, Some(&event), Vec::new(), Vec::new())
            .await
            .map(|_| ())
    }

    /// Asks for a run to be cancelled: at once if it is idle, at the next step boundary if a
    /// daemon is executing it.
    pub async fn cancel_run(
        &self,
        run_id: &str,
        now: DateTime<Utc>,
        by: &str,
    ) -> Result<CancelOutcome> {
        let message = format!("cancelled by {by}");
        with_pool!(self, |pool| {
            let mut tx = pool.begin().await?;
            let idle = sqlx::query(
                "UPDATE runs SET status = 'cancelled', finished_at = $1, wake_at = NULL, \
                 cancel_requested = 1, error = $2, lease_owner = NULL, lease_until = NULL \
                 WHERE id = $3 AND status IN ('pending', 'waiting', 'queued') \
                 AND (lease_owner IS NULL OR lease_until < $1)",
            )
            .bind(ms(now))
            .bind(&message)
            .bind(run_id)
            .execute(&mut *tx)
            .await?
            .rows_affected();
            let outcome = if idle == 1 {
                CancelOutcome::Cancelled
            } else {
                let busy = sqlx::query(
                    "UPDATE runs SET cancel_requested = 1 WHERE id = $1 \
                     AND status NOT IN ('succeeded', 'failed', 'cancelled', 'skipped')",
                )
                .bind(run_id)
                .execute(&mut *tx)
                .await?
                .rows_affected();
                if busy == 1 {
                    CancelOutcome::Requested
                } else {
                    let exists = sqlx::query("SELECT id FROM runs WHERE id = $1")
                        .bind(run_id)
                        .fetch_optional(&mut *tx)
                        .await?
                        .is_some();
                    if exists {
                        CancelOutcome::AlreadyFinished
                    } else {
                        CancelOutcome::NotFound
                    }
                }
            };
            if outcome != CancelOutcome::NotFound && outcome != CancelOutcome::AlreadyFinished {
                // Nobody is asked any more: links and replies to its requests are refused.
                sqlx::query(
                    "UPDATE requests SET status = 'closed' WHERE run_id = $1 AND status = 'open'",
                )
                .bind(run_id)
                .execute(&mut *tx)
                .await?;
                let kind = if outcome == CancelOutcome::Cancelled {
                    "cancelled"
                } else {
                    "cancel_requested"
                };
                insert_event!(
                    &mut *tx,
                    run_id,
                    now,
                    &NewEvent {
                        step_key: None,
                        kind,
                        message: &message
                    }
                );
            }
            tx.commit().await?;
            Ok(outcome)
        })
    }

    /// Gives a failed run another go: its failed steps (and foreach items) get one more attempt,
    /// due now. Returns the number of steps retried, or `None` if the run is not failed.
    pub async fn retry_run(
        &self,
        run_id: &str,
        now: DateTime<Utc>,
        by: &str,
    ) -> Result<Option<u64>> {
        let message = format!("failed steps retried by {by}");
        with_pool!(self, |pool| {
            let mut tx = pool.begin().await?;
            let n = sqlx::query(
                "UPDATE runs SET status = 'waiting', wake_at = $1, finished_at = NULL, error = NULL,                  cancel_requested = 0 WHERE id = $2 AND status = 'failed'",
            )
            .bind(ms(now))
            .bind(run_id)
            .execute(&mut *tx)
            .await?
            .rows_affected();
            if n == 0 {
                tx.rollback().await?;
                return Ok(None);
            }
            let steps = sqlx::query(
                "UPDATE steps SET status = 'retry_wait', wake_at = $1, finished_at = NULL                  WHERE run_id = $2 AND status = 'failed'",
            )
            .bind(ms(now))
            .bind(run_id)
            .execute(&mut *tx)
            .await?
            .rows_affected();
            insert_event!(
                &mut *tx,
                run_id,
                now,
                &NewEvent {
                    step_key: None,
                    kind: "retried",
                    message: &message
                }
            );
            tx.commit().await?;
            Ok(Some(steps))
        })
    }

    /// Runs of a workflow that are not finished and not queued.
    pub async fn active_runs(&self, workflow_id: &str) -> Result<i64> {
        with_pool!(self, |pool| {
            Ok(sqlx::query(
                "SELECT COUNT(*) AS n FROM runs WHERE workflow_id = $1 \
                 AND status IN ('pending', 'running', 'waiting')",
            )
            .bind(workflow_id)
            .fetch_one(pool)
            .await?
            .try_get::<i64, _>("n")?)
        })
    }

    /// Starts the oldest queued run of a workflow if none of its runs is active. Atomic across
    /// daemons (PostgreSQL: a transaction-scoped advisory lock per workflow).
    pub async fn promote_queued(
        &self,
        workflow_id: &str,
        now: DateTime<Utc>,
    ) -> Result<Option<String>> {
        const PROMOTE: &str = "UPDATE runs SET status = 'pending', wake_at = $2 WHERE id = \
             (SELECT id FROM runs WHERE workflow_id = $1 AND status = 'queued' \
              ORDER BY created_at, id LIMIT 1) \
             AND NOT EXISTS (SELECT 1 FROM runs WHERE workflow_id = $1 \
              AND status IN ('pending', 'running', 'waiting')) RETURNING id";
        match &self.backend {
            Backend::Sqlite(pool) => Ok(sqlx::query(PROMOTE)
                .bind(workflow_id)
                .bind(ms(now))
                .fetch_optional(pool)
                .await?
                .map(|r| r.try_get("id"))
                .transpose()?),
            Backend::Postgres(pool) => {
                let mut tx = pool.begin().await?;
                sqlx::query("SELECT pg_advisory_xact_lock(hashtext($1))")
                    .bind(workflow_id)
                    .execute(&mut *tx)
                    .await?;
                let id = sqlx::query(PROMOTE)
                    .bind(workflow_id)
                    .bind(ms(now))
                    .fetch_optional(&mut *tx)
                    .await?
                    .map(|r| r.try_get("id"))
                    .transpose()?;
                tx.commit().await?;
                Ok(id)
            }
        }
    }

    /// Counts runs by status (for tests, `readyz` and metrics).
    pub async fn count_runs(&self, status: RunStatus) -> Result<i64> {
        with_pool!(self, |pool| {
            Ok(
                sqlx::query("SELECT COUNT(*) AS n FROM runs WHERE status = $1")
                    .bind(status.as_str())
                    .fetch_one(pool)
                    .await?
                    .try_get::<i64, _>("n")?,
            )
        })
    }

    /// Runs counted by workflow and status.
    pub async fn run_counts(&self) -> Result<Vec<(String, String, i64)>> {
        with_pool!(self, |pool| {
            let mut out = Vec::new();
            for r in sqlx::query(
                "SELECT workflow_id, status, COUNT(*) FROM runs GROUP BY workflow_id, status ORDER BY workflow_id, status",
            )
            .fetch_all(pool)
            .await?
            {
                out.push((r.try_get(0usize)?, r.try_get(1usize)?, r.try_get(2usize)?));
            }
            Ok(out)
        })
    }
}

/// A step write queued with [`Store::write_step_later`].
#[must_use = "a pending write must be awaited before anything depends on it"]
pub struct PendingWrite(tokio::sync::oneshot::Receiver<Result<bool>>);

impl PendingWrite {
    /// Waits for the commit; `Ok(true)` when cancellation of the run was requested.
    pub async fn wait(self) -> Result<bool> {
        self.0.await.map_err(|_| StoreError::Closed)?
    }
}

fn step_op(step: &StepWrite<'_>) -> writer::Op {
    writer::Op::Step {
        step_key: step.step_key.to_string(),
        step_id: step.step_id.to_string(),
        item_index: step.item_index,
        status: step.status.as_str(),
        attempt: step.attempt,
        started_at: step.started_at.map(ms),
        finished_at: step.finished_at.map(ms),
        wake_at: step.wake_at.map(ms),
        output: step.output.map(|o| o.to_string()),
        state: step.state.map(|o| o.to_string()),
        error: step.error.map(str::to_string),
    }
}
