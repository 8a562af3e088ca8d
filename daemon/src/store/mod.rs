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

use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous};
use sqlx::{PgPool, SqlitePool};

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
    /// The operating system gave no randomness for a new token.
    #[error(transparent)]
    NoRandomness(#[from] crate::message::correlate::NoRandomness),
    /// Another daemon holds the embedded database.
    #[error(
        "another pmoflow daemon is running on the SQLite database {path} ({holder}); SQLite serves \
         one daemon: stop that one first, or use PostgreSQL (database_url = \"postgres://…\") to run \
         several daemons on one database"
    )]
    InUse {
        /// The database file.
        path: String,
        /// What the running daemon wrote in the lock file (pid, host, start time).
        holder: String,
    },
    /// The lock file beside the database cannot be made.
    #[error("cannot lock {path}: {source}")]
    Lock {
        /// The lock file.
        path: String,
        /// Why.
        source: std::io::Error,
    },
}

/// Held by the one daemon of an embedded SQLite database for as long as it runs: an exclusive
/// lock (`flock`) on `PATH.daemon-lock` beside the database file. The operating system releases
/// it when the process ends, however it ends (also `kill -9`), so a crashed daemon never blocks
/// its successor. The CLI does not take it: commands may run beside the daemon.
#[derive(Debug)]
pub struct DaemonLock {
    _file: std::fs::File,
}

impl DaemonLock {
    /// Takes the lock for `url` (nothing to lock for PostgreSQL or an in-memory database);
    /// refuses with [`StoreError::InUse`] while another daemon holds it. `holder` is written
    /// into the file for the refusal message of the next one.
    pub fn acquire(url: &str, holder: &str) -> Result<Option<DaemonLock>> {
        use std::io::{Read, Seek, Write};
        let Some(db) = sqlite_path(url) else {
            return Ok(None);
        };
        let path = format!("{db}.daemon-lock");
        let lock_err = |source| StoreError::Lock {
            path: path.clone(),
            source,
        };
        if let Some(dir) = std::path::Path::new(&path).parent()
            && !dir.as_os_str().is_empty()
        {
            std::fs::create_dir_all(dir).map_err(lock_err)?;
        }
        let mut file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .map_err(lock_err)?;
        match file.try_lock() {
            Ok(()) => {}
            Err(std::fs::TryLockError::WouldBlock) => {
                let mut text = String::new();
                let _ = file.read_to_string(&mut text);
                return Err(StoreError::InUse {
                    path: db,
                    holder: text.trim().to_string(),
                });
            }
            Err(std::fs::TryLockError::Error(e)) => return Err(lock_err(e)),
        }
        file.set_len(0).map_err(lock_err)?;
        file.rewind().map_err(lock_err)?;
        file.write_all(holder.as_bytes()).map_err(lock_err)?;
        file.flush().map_err(lock_err)?;
        Ok(Some(DaemonLock { _file: file }))
    }
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
            $crate::store::Backend::Sqlite($pool) => $body,
            $crate::store::Backend::Postgres($pool) => $body,
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
                    // No reaper: with an idle timeout or a lifetime, sqlx 0.8 runs a maintenance
                    // task that can spin a core forever and hang shutdown (sqlx#3645, a
                    // `num_idle` underflow; seen in our tests). One local connection needs no
                    // recycling.
                    .idle_timeout(None)
                    .max_lifetime(None)
                    // A connection must not go back to the pool inside a transaction. After a
                    // COMMIT that failed (`database or disk is full`), sqlx still counts the
                    // transaction as open and the next one became a savepoint inside it: the
                    // daemon read its own writes, but nothing reached the file (found by the
                    // full-disk test). Such a connection is closed; SQLite rolls back what it
                    // held, which was never reported committed.
                    .after_release(|conn, _| {
                        Box::pin(async move { Ok(!sqlx::Connection::is_in_transaction(conn)) })
                    })
                    .before_acquire(|conn, _| {
                        Box::pin(async move { Ok(!sqlx::Connection::is_in_transaction(conn)) })
                    })
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
                // No reaper (sqlx#3645, as for SQLite above): a connection the server dropped is
                // found by the ping before each acquire and replaced.
                .idle_timeout(None)
                .max_lifetime(None)
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

    /// Applies this binary's migrations. Migrations are expand-only (new tables, columns and
    /// indexes; never a drop, rename or type change), so a newer daemon may migrate while older
    /// ones run, and an older daemon starts on a database a newer one has migrated: the
    /// migrations it does not know are tolerated and reported.
    async fn migrate(&self) -> Result<()> {
        macro_rules! migrator {
            ($dir:literal) => {{
                let mut m = sqlx::migrate!($dir);
                m.set_ignore_missing(true);
                m
            }};
        }
        match &self.backend {
            Backend::Sqlite(pool) => {
                // sqlx takes no lock for SQLite migrations: two processes opening a new database
                // at once (the daemon and a CLI command) can race. Each migration is one
                // transaction, so the loser rolls back; trying again finds it applied.
                let mut attempt = 0;
                loop {
                    match migrator!("migrations/sqlite").run(pool).await {
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
            // PostgreSQL: sqlx holds an advisory lock while migrating, so daemons starting
            // together apply each migration once.
            Backend::Postgres(pool) => migrator!("migrations/postgres").run(pool).await?,
        }
        let applied = self.applied_schema_version().await?;
        if applied > schema_version() {
            tracing::warn!(
                database = applied,
                binary = schema_version(),
                "the database has migrations newer than this pmoflow (a newer daemon migrated it); running on the expand-only schema — upgrade this host"
            );
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

/// The PostgreSQL notification channel of "a run may have become due".
pub const WAKE_RUNS: &str = "pmoflow_runs";

/// Wake-ups from other processes on the same PostgreSQL database (`LISTEN pmoflow_runs`).
/// Polling stays the fallback: a notification can be lost (a transaction-mode pooler between
/// the daemon and the database drops `LISTEN`; a reconnect misses what was sent meanwhile).
pub struct WakeListener {
    listener: sqlx::postgres::PgListener,
}

impl WakeListener {
    /// Waits for the next notification; returns its channel.
    pub async fn recv(&mut self) -> Result<String> {
        Ok(self.listener.recv().await?.channel().to_string())
    }
}

impl Store {
    /// Tells every listening daemon that work may be due on `channel` (PostgreSQL; nothing on
    /// SQLite, which has one daemon). A failure is logged, not returned: polling finds the work.
    pub async fn notify_wake(&self, channel: &str) {
        if let Backend::Postgres(pool) = &self.backend
            && let Err(e) = sqlx::query("SELECT pg_notify($1, '')")
                .bind(channel)
                .execute(pool)
                .await
        {
            tracing::debug!(error = %e, channel, "pg_notify failed; daemons will poll");
        }
    }

    /// A listener on the wake channels (PostgreSQL only).
    pub async fn wake_listener(&self) -> Result<Option<WakeListener>> {
        let Backend::Postgres(pool) = &self.backend else {
            return Ok(None);
        };
        let mut listener = sqlx::postgres::PgListener::connect_with(pool).await?;
        listener.listen(WAKE_RUNS).await?;
        Ok(Some(WakeListener { listener }))
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
mod admin;
mod catalog;
mod claims;
mod cluster;
mod held;
mod inbound;
mod outbox;
pub mod portfolio;
pub mod requests;
mod rows;
mod runs;
mod writer;

pub use admin::{AuditRow, SessionRow};
pub use cluster::{DaemonRow, RoleRow, schema_version};
pub use inbound::{Applied, Disposition, InboundRow, MailboxState};
pub use outbox::{MessageKind, NewMessage, OutboxRow};
pub use portfolio::{PortfolioEntry, PortfolioQuery, PortfolioValue, RecordKey, Subject};
pub use requests::{AnswerRow, NewAnswer, NewRequest, Recorded, RequestRow};
pub use rows::{EventRow, RunRow, RunStatus, StepRow, StepStatus};
pub use runs::{
    CancelOutcome, Claim, ClaimedRun, Created, Fence, NewEvent, NewRun, PendingWrite, RunFilter,
    StepWrite,
};
