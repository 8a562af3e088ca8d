//! The only module that speaks SQL.
//!
//! One set of typed functions over two backends: SQLite (embedded default, WAL) and PostgreSQL
//! (larger installs, several daemons on one database). The SQL is shared where the dialects agree;
//! times are stored as milliseconds since the Unix epoch, JSON as text.
//!
//! Every write that executes a run is *fenced*: it first renews the run's lease and checks that
//! this daemon still holds it, in the same transaction. A daemon that lost its lease (paused,
//! partitioned) can therefore never overwrite the work of the daemon that took over.

use std::collections::HashSet;
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use serde_json::Value as Json;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous};
use sqlx::{PgPool, Row, SqlitePool};

/// Store errors.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The database said no.
    #[error("database error: {0}")]
    Db(#[from] sqlx::Error),
    /// Migrations failed.
    #[error("database migration failed: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    /// `database_url` is not usable.
    #[error("unsupported database_url `{0}`: use sqlite://PATH or postgres://…")]
    BadUrl(String),
    /// This daemon no longer holds the run's lease; another daemon owns it now.
    #[error("lease on run {0} lost")]
    LeaseLost(String),
    /// A group-commit batch failed; every write in it was rolled back.
    #[error("database error: {0}")]
    Batch(String),
    /// The store is closing.
    #[error("the database connection is closed")]
    Closed,
    /// A stored value could not be decoded.
    #[error("corrupt stored value in {0}: {1}")]
    Corrupt(&'static str, String),
}

/// Result alias for the store.
pub type Result<T, E = StoreError> = std::result::Result<T, E>;

/// What a commit must survive.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Deserialize, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Durability {
    /// Every commit reaches stable storage before it is acknowledged: survives power loss.
    /// SQLite `synchronous=FULL`; PostgreSQL `synchronous_commit=on`.
    Fsync,
    /// Commits survive the daemon being killed, but the last ones may be lost if the machine
    /// loses power. SQLite WAL with `synchronous=NORMAL`; PostgreSQL `synchronous_commit=off`.
    #[default]
    Process,
}

#[derive(Debug, Clone)]
enum Backend {
    Sqlite(SqlitePool),
    Postgres(PgPool),
}

/// The database.
#[derive(Debug, Clone)]
pub struct Store {
    backend: Backend,
    writer: tokio::sync::mpsc::Sender<writer::Job>,
    /// Versions known to be stored (they are never deleted), to skip the insert. A std Mutex:
    /// held for a set lookup or insert, never across an await.
    saved_versions: Arc<std::sync::Mutex<HashSet<(String, String)>>>,
}

/// Runs the same code against whichever pool the store holds.
macro_rules! with_pool {
    ($store:expr, |$pool:ident| $body:expr) => {
        match &$store.backend {
            Backend::Sqlite($pool) => $body,
            Backend::Postgres($pool) => $body,
        }
    };
}

/// Appends a run event inside a transaction.
macro_rules! insert_event {
    ($conn:expr, $run_id:expr, $now:expr, $ev:expr) => {{
        let ev: &NewEvent<'_> = $ev;
        sqlx::query(
            "INSERT INTO run_events (run_id, at, step_key, kind, message) VALUES ($1, $2, $3, $4, $5)",
        )
        .bind($run_id)
        .bind(ms($now))
        .bind(ev.step_key)
        .bind(ev.kind)
        .bind(ev.message)
        .execute($conn)
        .await?;
    }};
}

/// Milliseconds since the epoch.
pub fn ms(t: DateTime<Utc>) -> i64 {
    t.timestamp_millis()
}

/// From milliseconds since the epoch.
pub fn from_ms(v: i64) -> DateTime<Utc> {
    DateTime::from_timestamp_millis(v).unwrap_or_default()
}

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

const RUN_COLUMNS: &str = "id, workflow_id, version_hash, status, trigger_kind, inputs, scheduled_at, \
    created_at, started_at, finished_at, wake_at, lease_owner, cancel_requested, error";
const STEP_COLUMNS: &str = "step_key, step_id, item_index, status, attempt, started_at, finished_at, \
    wake_at, output, state, error";

impl Store {
    /// Opens (creating if needed) the database at `url` and applies migrations.
    pub async fn open(url: &str, durability: Durability) -> Result<Store> {
        let store = if url.starts_with("sqlite:") {
            let opts = SqliteConnectOptions::from_str(url)?
                .create_if_missing(true)
                .journal_mode(SqliteJournalMode::Wal)
                .synchronous(match durability {
                    Durability::Fsync => SqliteSynchronous::Full,
                    Durability::Process => SqliteSynchronous::Normal,
                })
                .busy_timeout(Duration::from_secs(30))
                .foreign_keys(true);
            if let Some(path) = sqlite_path(url)
                && let Some(parent) = std::path::Path::new(&path).parent()
                && !parent.as_os_str().is_empty()
            {
                std::fs::create_dir_all(parent).map_err(|e| StoreError::Db(sqlx::Error::Io(e)))?;
            }
            // One connection: SQLite has one writer anyway, and a single connection avoids
            // lock upgrades between our own connections. Other processes (the CLI) wait on
            // busy_timeout.
            // Two processes creating a new database at once (the daemon and a CLI command started
            // together) can meet while one switches it to WAL: "database is locked" from the
            // connect itself, which busy_timeout does not cover. Try again briefly.
            let mut attempt = 0u64;
            let pool = loop {
                match SqlitePoolOptions::new()
                    .max_connections(1)
                    .connect_with(opts.clone())
                    .await
                {
                    Ok(pool) => break pool,
                    Err(err) if attempt < 50 && is_locked(&err) => {
                        attempt += 1;
                        tokio::time::sleep(Duration::from_millis(20 * attempt.min(10))).await;
                    }
                    Err(err) => return Err(err.into()),
                }
            };
            let backend = Backend::Sqlite(pool);
            Store {
                writer: writer::spawn(backend.clone(), 1),
                backend,
                saved_versions: Arc::default(),
            }
        } else if url.starts_with("postgres:") || url.starts_with("postgresql:") {
            let opts = PgConnectOptions::from_str(url)?.options([(
                "synchronous_commit",
                match durability {
                    Durability::Fsync => "on",
                    Durability::Process => "off",
                },
            )]);
            let pool = PgPoolOptions::new()
                .max_connections(16)
                .connect_with(opts)
                .await?;
            let backend = Backend::Postgres(pool);
            Store {
                writer: writer::spawn(backend.clone(), 4),
                backend,
                saved_versions: Arc::default(),
            }
        } else {
            return Err(StoreError::BadUrl(url.to_string()));
        };
        store.migrate().await?;
        Ok(store)
    }

    async fn migrate(&self) -> Result<()> {
        match &self.backend {
            Backend::Sqlite(pool) => {
                // sqlx takes no lock for SQLite migrations: two processes opening a new database
                // at once (the daemon and a CLI command) can race. Each migration is one
                // transaction, so the loser rolls back; trying again finds it applied.
                let mut attempt = 0;
                loop {
                    match sqlx::migrate!("migrations/sqlite").run(pool).await {
                        Ok(()) => break,
                        Err(err) if attempt < 20 => {
                            attempt += 1;
                            tracing::debug!(error = %err, attempt, "migration raced another process; retrying");
                            tokio::time::sleep(Duration::from_millis(50 * attempt)).await;
                        }
                        Err(err) => return Err(err.into()),
                    }
                }
            }
            Backend::Postgres(pool) => sqlx::migrate!("migrations/postgres").run(pool).await?,
        }
        Ok(())
    }

    /// `sqlite` or `postgres`.
    pub fn backend_name(&self) -> &'static str {
        match &self.backend {
            Backend::Sqlite(_) => "sqlite",
            Backend::Postgres(_) => "postgres",
        }
    }

    /// Closes the pool, waiting for connections to be returned.
    pub async fn close(&self) {
        with_pool!(self, |pool| pool.close().await)
    }

    /// Whether the database answers.
    pub async fn ping(&self) -> Result<()> {
        with_pool!(self, |pool| sqlx::query("SELECT 1")
            .execute(pool)
            .await
            .map(|_| ()))?;
        Ok(())
    }

    /// Records a workflow version (idempotent).
    pub async fn save_version(
        &self,
        workflow_id: &str,
        hash: &str,
        path: &str,
        source: &str,
        now: DateTime<Utc>,
    ) -> Result<()> {
        let key = (workflow_id.to_string(), hash.to_string());
        if self
            .saved_versions
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .contains(&key)
        {
            return Ok(());
        }
        with_pool!(self, |pool| {
            sqlx::query(
                "INSERT INTO workflow_versions (workflow_id, hash, path, source, created_at) \
                 VALUES ($1, $2, $3, $4, $5) ON CONFLICT DO NOTHING",
            )
            .bind(workflow_id)
            .bind(hash)
            .bind(path)
            .bind(source)
            .bind(ms(now))
            .execute(pool)
            .await
            .map(|r| r.rows_affected())
        })?;
        self.saved_versions
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(key);
        Ok(())
    }

    /// The stored source of a workflow version: `(path, source)`.
    pub async fn load_version(
        &self,
        workflow_id: &str,
        hash: &str,
    ) -> Result<Option<(String, String)>> {
        let row = with_pool!(self, |pool| {
            sqlx::query(
                "SELECT path, source FROM workflow_versions WHERE workflow_id = $1 AND hash = $2",
            )
            .bind(workflow_id)
            .bind(hash)
            .fetch_optional(pool)
            .await?
            .map(|r| Ok::<_, sqlx::Error>((r.try_get("path")?, r.try_get("source")?)))
            .transpose()
        })?;
        Ok(row)
    }

    /// Creates a run, due at once. With a dedup key, a second call returns the first run.
    pub async fn create_run(&self, new: &NewRun<'_>) -> Result<Created> {
        let id = uuid::Uuid::now_v7().to_string();
        let inputs = new.inputs.to_string();
        let (wake_at, finished_at) = match new.status {
            RunStatus::Queued => (None, None),
            RunStatus::Skipped => (None, Some(ms(new.now))),
            _ => (Some(ms(new.wake_at.unwrap_or(new.now))), None),
        };
        let inserted = with_pool!(self, |pool| {
            sqlx::query(
                "INSERT INTO runs (id, workflow_id, version_hash, status, trigger_kind, dedup_key, \
                 inputs, scheduled_at, created_at, wake_at, finished_at, error) \
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12) ON CONFLICT DO NOTHING",
            )
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
            .bind(new.error)
            .execute(pool)
            .await
            .map(|r| r.rows_affected())
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

    /// Leases up to `limit` due runs to `owner` and returns them.
    pub async fn claim_due(
        &self,
        owner: &str,
        now: DateTime<Utc>,
        lease: chrono::Duration,
        limit: i64,
    ) -> Result<Vec<RunRow>> {
        // PostgreSQL: SKIP LOCKED lets several daemons claim concurrently without waiting on
        // each other. SQLite has a single writer, so the plain subquery is already atomic.
        let lock = match &self.backend {
            Backend::Sqlite(_) => "",
            Backend::Postgres(_) => "FOR UPDATE SKIP LOCKED",
        };
        let sql = format!(
            "UPDATE runs SET lease_owner = $1, lease_until = $2, status = 'running', \
             started_at = COALESCE(started_at, $3), nudged_at = NULL \
             WHERE id IN (SELECT id FROM runs WHERE wake_at IS NOT NULL AND wake_at <= $3 \
               AND (lease_owner IS NULL OR lease_until < $3) ORDER BY wake_at LIMIT $4 {lock}) \
             RETURNING {RUN_COLUMNS}"
        );
        with_pool!(self, |pool| {
            sqlx::query(&sql)
                .bind(owner)
                .bind(ms(now + lease))
                .bind(ms(now))
                .bind(limit)
                .fetch_all(pool)
                .await?
                .iter()
                .map(RunRow::from_row)
                .collect()
        })
    }

    /// The earliest time an unleased run becomes due.
    pub async fn next_wake(&self) -> Result<Option<DateTime<Utc>>> {
        let v: Option<i64> = with_pool!(self, |pool| {
            sqlx::query("SELECT MIN(wake_at) AS w FROM runs WHERE wake_at IS NOT NULL AND lease_owner IS NULL")
                .fetch_one(pool)
                .await?
                .try_get("w")
        })?;
        Ok(v.map(from_ms))
    }

    /// Drops every lease held by `owner` (a daemon starting up cannot be executing anything).
    pub async fn release_leases(&self, owner: &str) -> Result<u64> {
        let n = with_pool!(self, |pool| {
            sqlx::query(
                "UPDATE runs SET lease_owner = NULL, lease_until = NULL WHERE lease_owner = $1",
            )
            .bind(owner)
            .execute(pool)
            .await
            .map(|r| r.rows_affected())
        })?;
        Ok(n)
    }

    /// Extends the leases `owner` holds on `run_ids` (the runs it is executing right now).
    /// Rows are locked in id order, the order group commits use, so the two never deadlock.
    pub async fn renew_leases(
        &self,
        owner: &str,
        run_ids: &[String],
        until: DateTime<Utc>,
    ) -> Result<u64> {
        if run_ids.is_empty() {
            return Ok(0);
        }
        let ids = serde_json::to_string(run_ids).unwrap_or_else(|_| "[]".into());
        let n = match &self.backend {
            Backend::Sqlite(pool) => sqlx::query(
                "UPDATE runs SET lease_until = $1 WHERE lease_owner = $2 \
                 AND id IN (SELECT value FROM json_each($3))",
            )
            .bind(ms(until))
            .bind(owner)
            .bind(&ids)
            .execute(pool)
            .await?
            .rows_affected(),
            Backend::Postgres(pool) => sqlx::query(
                "UPDATE runs SET lease_until = $1 WHERE id IN (SELECT id FROM runs \
                 WHERE lease_owner = $2 AND id IN (SELECT json_array_elements_text($3::json)) \
                 ORDER BY id FOR UPDATE)",
            )
            .bind(ms(until))
            .bind(owner)
            .bind(&ids)
            .execute(pool)
            .await?
            .rows_affected(),
        };
        Ok(n)
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

    /// Writes a step transition (and optionally an event) under the run's lease.
    /// Returns whether cancellation of the run has been requested.
    pub async fn write_step(
        &self,
        fence: &Fence,
        now: DateTime<Utc>,
        step: &StepWrite<'_>,
        event: Option<&NewEvent<'_>>,
    ) -> Result<bool> {
        let op = writer::Op::Step {
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
        };
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

    /// A trigger's cursor: registers the trigger at `now` the first time it is seen.
    pub async fn trigger_cursor(
        &self,
        workflow_id: &str,
        trigger_key: &str,
        now: DateTime<Utc>,
    ) -> Result<DateTime<Utc>> {
        let v: i64 = with_pool!(self, |pool| {
            sqlx::query(
                "INSERT INTO trigger_cursors (workflow_id, trigger_key, registered_at, cursor_at) \
                 VALUES ($1, $2, $3, $3) ON CONFLICT DO NOTHING",
            )
            .bind(workflow_id)
            .bind(trigger_key)
            .bind(ms(now))
            .execute(pool)
            .await?;
            sqlx::query(
                "SELECT cursor_at FROM trigger_cursors WHERE workflow_id = $1 AND trigger_key = $2",
            )
            .bind(workflow_id)
            .bind(trigger_key)
            .fetch_one(pool)
            .await?
            .try_get("cursor_at")
        })?;
        Ok(from_ms(v))
    }

    /// Moves a trigger's cursor forward (never back).
    pub async fn advance_trigger_cursor(
        &self,
        workflow_id: &str,
        trigger_key: &str,
        to: DateTime<Utc>,
    ) -> Result<()> {
        with_pool!(self, |pool| {
            sqlx::query(
                "UPDATE trigger_cursors SET cursor_at = $3 \
                 WHERE workflow_id = $1 AND trigger_key = $2 AND cursor_at < $3",
            )
            .bind(workflow_id)
            .bind(trigger_key)
            .bind(ms(to))
            .execute(pool)
            .await
            .map(|_| ())
        })?;
        Ok(())
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

    /// Replaces what `node_id` reports as loaded: `(workflow id, hash, path)` and `(path, error)`.
    pub async fn record_catalog(
        &self,
        node_id: &str,
        workflows: &[(String, String, String)],
        errors: &[(String, String)],
        now: DateTime<Utc>,
    ) -> Result<()> {
        with_pool!(self, |pool| {
            let mut tx = pool.begin().await?;
            sqlx::query("DELETE FROM daemon_catalog WHERE node_id = $1")
                .bind(node_id)
                .execute(&mut *tx)
                .await?;
            for (id, hash, path) in workflows {
                sqlx::query(
                    "INSERT INTO daemon_catalog (node_id, kind, item, hash, detail, updated_at) \
                     VALUES ($1, 'workflow', $2, $3, $4, $5)",
                )
                .bind(node_id)
                .bind(id)
                .bind(hash)
                .bind(path)
                .bind(ms(now))
                .execute(&mut *tx)
                .await?;
            }
            for (path, error) in errors {
                sqlx::query(
                    "INSERT INTO daemon_catalog (node_id, kind, item, hash, detail, updated_at) \
                     VALUES ($1, 'error', $2, NULL, $3, $4) ON CONFLICT DO NOTHING",
                )
                .bind(node_id)
                .bind(path)
                .bind(error)
                .bind(ms(now))
                .execute(&mut *tx)
                .await?;
            }
            tx.commit().await?;
            Ok(())
        })
    }

    /// What daemons report as loaded: `(node, workflow id, hash, path)`.
    pub async fn loaded_workflows(&self) -> Result<Vec<(String, String, String, String)>> {
        with_pool!(self, |pool| {
            sqlx::query(
                "SELECT node_id, item, hash, detail FROM daemon_catalog WHERE kind = 'workflow' \
                 ORDER BY item, node_id",
            )
            .fetch_all(pool)
            .await?
            .iter()
            .map(|r| {
                Ok((
                    r.try_get("node_id")?,
                    r.try_get("item")?,
                    r.try_get::<Option<String>, _>("hash")?.unwrap_or_default(),
                    r.try_get("detail")?,
                ))
            })
            .collect()
        })
    }

    /// A plugin's key-value namespace.
    pub async fn plugin_kv_load(&self, plugin: &str) -> Result<Vec<(String, String)>> {
        with_pool!(self, |pool| {
            sqlx::query("SELECT key, value FROM plugin_kv WHERE plugin = $1 ORDER BY key")
                .bind(plugin)
                .fetch_all(pool)
                .await?
                .iter()
                .map(|r| Ok((r.try_get("key")?, r.try_get("value")?)))
                .collect()
        })
    }

    /// Applies a plugin's key-value changes (`None` deletes) in one transaction.
    pub async fn plugin_kv_save(
        &self,
        plugin: &str,
        changes: &[(String, Option<String>)],
        now: DateTime<Utc>,
    ) -> Result<()> {
        if changes.is_empty() {
            return Ok(());
        }
        with_pool!(self, |pool| {
            let mut tx = pool.begin().await?;
            for (key, value) in changes {
                match value {
                    Some(v) => {
                        sqlx::query(
                            "INSERT INTO plugin_kv (plugin, key, value, updated_at) \
                             VALUES ($1, $2, $3, $4) ON CONFLICT (plugin, key) \
                             DO UPDATE SET value = excluded.value, updated_at = excluded.updated_at",
                        )
                        .bind(plugin)
                        .bind(key)
                        .bind(v)
                        .bind(ms(now))
                        .execute(&mut *tx)
                        .await?;
                    }
                    None => {
                        sqlx::query("DELETE FROM plugin_kv WHERE plugin = $1 AND key = $2")
                            .bind(plugin)
                            .bind(key)
                            .execute(&mut *tx)
                            .await?;
                    }
                }
            }
            tx.commit().await?;
            Ok(())
        })
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
}

/// Whether an error is SQLite's "database is locked" / "busy".
fn is_locked(err: &sqlx::Error) -> bool {
    match err {
        sqlx::Error::Database(db) => {
            matches!(
                db.code().as_deref(),
                Some("5") | Some("6") | Some("261") | Some("517")
            ) || db.message().contains("locked")
        }
        _ => false,
    }
}

/// The file path inside a `sqlite:` URL, if it names a file.
fn sqlite_path(url: &str) -> Option<String> {
    let rest = url
        .strip_prefix("sqlite://")
        .or_else(|| url.strip_prefix("sqlite:"))?;
    let path = rest.split('?').next()?;
    (!path.is_empty() && path != ":memory:").then(|| path.to_string())
}

// Declared after the macros above so that they can use them.
mod outbox;
pub mod requests;
mod rows;
mod writer;

pub use outbox::{MessageKind, NewMessage, OutboxRow};
pub use requests::{
    AnswerRow, Applied, AuditRow, Disposition, InboundRow, NewAnswer, NewRequest, Recorded,
    RequestRow,
};
pub use rows::{EventRow, RunRow, RunStatus, StepRow, StepStatus};
