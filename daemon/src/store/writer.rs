//! Group commit for step transitions.
//!
//! Executing runs send their step writes here; a writer task takes everything queued (up to
//! `MAX_BATCH`), applies it in one transaction and answers each sender. Under load this turns
//! thousands of small transactions (each with its own commit, and with `durability = "fsync"` its
//! own fsync) into a few large ones; with a single run in flight a batch is one write and latency
//! is unchanged. Each write is still fenced individually: a write whose lease is gone is skipped
//! and answered `LeaseLost` without affecting the others.
//!
//! Jobs are applied in run-id order (stable, so one run's writes keep their order), which gives
//! every transaction that locks several runs the same lock order: no deadlocks on PostgreSQL.

use std::collections::HashMap;
use std::sync::Arc;

use sqlx::Row;
use tokio::sync::{Mutex, mpsc, oneshot};

use super::{Backend, Result, StoreError};

/// Most writes applied in one transaction.
const MAX_BATCH: usize = 512;

/// What a job does to its run, under the run's lease.
pub(super) enum Op {
    /// Upsert a step row.
    Step {
        step_key: String,
        step_id: String,
        item_index: Option<i64>,
        status: &'static str,
        attempt: i64,
        started_at: Option<i64>,
        finished_at: Option<i64>,
        wake_at: Option<i64>,
        output: Option<String>,
        state: Option<String>,
        error: Option<String>,
    },
    /// Give up the lease until `wake_at`.
    Park { wake_at: i64 },
    /// End the run.
    Finish {
        status: &'static str,
        error: Option<String>,
    },
}

/// One fenced write, owned so that it can cross to the writer task.
pub(super) struct Job {
    pub run_id: String,
    pub owner: String,
    pub lease_until: i64,
    pub now: i64,
    pub op: Op,
    pub event: Option<(Option<String>, String, String)>,
    /// Outbox messages committed with this write (step writes only).
    pub messages: Vec<super::NewMessage>,
    /// Request rows committed with this write (step writes only).
    pub requests: Vec<super::NewRequest>,
    pub reply: oneshot::Sender<Result<bool>>,
}

/// Starts `writers` writer tasks over `backend` and returns the queue they serve.
pub(super) fn spawn(backend: Backend, writers: usize) -> mpsc::Sender<Job> {
    let (tx, rx) = mpsc::channel::<Job>(4096);
    let rx = Arc::new(Mutex::new(rx));
    for _ in 0..writers.max(1) {
        let (backend, rx) = (backend.clone(), rx.clone());
        tokio::spawn(async move { writer_loop(backend, rx).await });
    }
    tx
}

async fn writer_loop(backend: Backend, rx: Arc<Mutex<mpsc::Receiver<Job>>>) {
    loop {
        let mut batch = Vec::new();
        {
            let mut rx = rx.lock().await;
            match rx.recv().await {
                Some(job) => batch.push(job),
                None => return,
            }
            while batch.len() < MAX_BATCH {
                match rx.try_recv() {
                    Ok(job) => batch.push(job),
                    Err(_) => break,
                }
            }
        }
        batch.sort_by(|a, b| a.run_id.cmp(&b.run_id));
        match apply(&backend, &batch).await {
            Ok(results) => {
                for (job, result) in batch.into_iter().zip(results) {
                    let _ = job.reply.send(result);
                }
            }
            Err(err) => {
                let message = err.to_string();
                for job in batch {
                    let _ = job.reply.send(Err(StoreError::Batch(message.clone())));
                }
            }
        }
    }
}

/// Applies a batch in one transaction, with a handful of statements whatever its size: one
/// fencing update for all runs, one multi-row update for the runs that park and one for those
/// that finish, one multi-row upsert for all step rows, one multi-row insert for all events. (Each statement costs a round trip
/// to the database, or a hand-off to SQLite's worker thread; the per-row work is cheap.)
macro_rules! apply_on {
    ($pool:expr, $batch:expr, $fence_sql:expr) => {{
        let batch: &[Job] = $batch;
        let mut tx = $pool.begin().await?;
        // 1. Fence: lock (in id order) and renew every run of the batch whose lease the
        //    writer holds, one statement per owner (a store has one owner in practice).
        //    A job whose run is not returned has lost its lease.
        let mut held: HashMap<String, (&str, bool)> = HashMap::new();
        let mut owners: Vec<&str> = batch.iter().map(|j| j.owner.as_str()).collect();
        owners.sort_unstable();
        owners.dedup();
        for owner in owners {
            let mut ids: Vec<&str> = batch
                .iter()
                .filter(|j| j.owner == owner)
                .map(|j| j.run_id.as_str())
                .collect();
            ids.dedup();
            let lease_until = batch.iter().map(|j| j.lease_until).max().unwrap_or_default();
            let ids = serde_json::to_string(&ids).unwrap_or_default();
            for row in sqlx::query($fence_sql)
                .bind(lease_until)
                .bind(owner)
                .bind(&ids)
                .fetch_all(&mut *tx)
                .await?
            {
                let id: String = row.try_get(0usize)?;
                let cancel: i64 = row.try_get(1usize)?;
                held.insert(id, (owner, cancel != 0));
            }
        }
        let mut results: Vec<Result<bool>> = Vec::with_capacity(batch.len());
        let mut upserts: Vec<&Job> = Vec::new();
        let mut parks: Vec<&Job> = Vec::new();
        let mut finishes: Vec<&Job> = Vec::new();
        let mut events: Vec<&Job> = Vec::new();
        let mut messages: Vec<(&Job, &super::NewMessage)> = Vec::new();
        for job in batch {
            let outcome = match held.get(job.run_id.as_str()) {
                Some((owner, cancel)) if *owner == job.owner => {
                    match &job.op {
                        Op::Step { .. } => upserts.push(job),
                        Op::Park { .. } => parks.push(job),
                        Op::Finish { .. } => finishes.push(job),
                    }
                    Ok(matches!(job.op, Op::Step { .. }) && *cancel)
                }
                _ => Err(StoreError::LeaseLost(job.run_id.clone())),
            };
            if outcome.is_ok() && job.event.is_some() {
                events.push(job);
            }
            if outcome.is_ok() {
                messages.extend(job.messages.iter().map(|m| (job, m)));
            }
            results.push(outcome);
        }
        // Parks and finishes, each kind in one statement; the rows are locked by the fence,
        // so every one of them applies. A run nudged while it executed (an answer arrived)
        // wakes at once.
        for chunk in parks.chunks(UPSERT_CHUNK) {
            let mut qb = sqlx::QueryBuilder::new("WITH v (id, owner, wake_at) AS (");
            qb.push_values(chunk.iter(), |mut b, job| {
                if let Op::Park { wake_at } = &job.op {
                    b.push_bind(job.run_id.as_str()).push_bind(job.owner.as_str()).push_bind(*wake_at);
                }
            });
            qb.push(
                ") UPDATE runs SET status = 'waiting', wake_at = CASE WHEN runs.nudged_at IS NOT \
                 NULL AND runs.nudged_at < v.wake_at THEN runs.nudged_at ELSE v.wake_at END, \
                 nudged_at = NULL, lease_owner = NULL, lease_until = NULL FROM v \
                 WHERE runs.id = v.id AND runs.lease_owner = v.owner",
            );
            qb.build().execute(&mut *tx).await?;
        }
        for chunk in finishes.chunks(UPSERT_CHUNK) {
            let mut qb = sqlx::QueryBuilder::new("WITH v (id, owner, status, finished_at, error) AS (");
            qb.push_values(chunk.iter(), |mut b, job| {
                if let Op::Finish { status, error } = &job.op {
                    b.push_bind(job.run_id.as_str())
                        .push_bind(job.owner.as_str())
                        .push_bind(*status)
                        .push_bind(job.now)
                        .push_bind(error.as_deref());
                }
            });
            qb.push(
                ") UPDATE runs SET status = v.status, finished_at = v.finished_at, error = v.error, \
                 wake_at = NULL, lease_owner = NULL, lease_until = NULL FROM v \
                 WHERE runs.id = v.id AND runs.lease_owner = v.owner",
            );
            qb.build().execute(&mut *tx).await?;
        }
        // 2. All step rows in one statement. A (run, step) appears at most once per batch: a
        //    unit's writes are sequential, each awaited before the next.
        for chunk in upserts.chunks(UPSERT_CHUNK) {
            let mut qb = sqlx::QueryBuilder::new(
                "INSERT INTO steps (run_id, step_key, step_id, item_index, status, attempt, \
                 started_at, finished_at, wake_at, output, state, error) ",
            );
            qb.push_values(chunk.iter(), |mut b, job| {
                if let Op::Step { step_key, step_id, item_index, status, attempt, started_at, finished_at, wake_at, output, state, error } = &job.op {
                    b.push_bind(job.run_id.as_str())
                        .push_bind(step_key.as_str())
                        .push_bind(step_id.as_str())
                        .push_bind(*item_index)
                        .push_bind(*status)
                        .push_bind(*attempt)
                        .push_bind(*started_at)
                        .push_bind(*finished_at)
                        .push_bind(*wake_at)
                        .push_bind(output.as_deref())
                        .push_bind(state.as_deref())
                        .push_bind(error.as_deref());
                }
            });
            qb.push(
                " ON CONFLICT (run_id, step_key) DO UPDATE SET status = excluded.status, \
                 attempt = excluded.attempt, started_at = excluded.started_at, \
                 finished_at = excluded.finished_at, wake_at = excluded.wake_at, \
                 output = excluded.output, state = excluded.state, error = excluded.error",
            );
            qb.build().execute(&mut *tx).await?;
        }
        // 3. All events in one statement.
        for chunk in events.chunks(UPSERT_CHUNK) {
            let mut qb = sqlx::QueryBuilder::new(
                "INSERT INTO run_events (run_id, at, step_key, kind, message) ",
            );
            qb.push_values(chunk.iter(), |mut b, job| {
                if let Some((step_key, kind, message)) = &job.event {
                    b.push_bind(job.run_id.as_str())
                        .push_bind(job.now)
                        .push_bind(step_key.as_deref())
                        .push_bind(kind.as_str())
                        .push_bind(message.as_str());
                }
            });
            qb.build().execute(&mut *tx).await?;
        }
        // 4. Outbox messages, in the same transaction as the step that produced them. The
        //    idempotency key makes a repeated insert a no-op.
        for chunk in messages.chunks(UPSERT_CHUNK) {
            let ids: Vec<String> = chunk.iter().map(|_| uuid::Uuid::now_v7().to_string()).collect();
            let payloads: Vec<String> = chunk.iter().map(|(_, m)| m.payload.to_string()).collect();
            let mut qb = sqlx::QueryBuilder::new(
                "INSERT INTO outbox (id, idempotency_key, run_id, step_key, kind, target, message_id, \
                 payload, status, attempts, next_attempt_at, created_at) ",
            );
            qb.push_values(chunk.iter().enumerate(), |mut b, (i, (job, m))| {
                let step_key = match &job.op {
                    Op::Step { step_key, .. } => Some(step_key.as_str()),
                    _ => None,
                };
                b.push_bind(ids[i].as_str())
                    .push_bind(m.key.as_str())
                    .push_bind(job.run_id.as_str())
                    .push_bind(step_key)
                    .push_bind(m.kind.as_str())
                    .push_bind(m.target.as_str())
                    .push_bind(m.message_id.as_str())
                    .push_bind(payloads[i].as_str())
                    .push_bind("pending")
                    .push_bind(0i64)
                    .push_bind(job.now)
                    .push_bind(job.now);
            });
            qb.push(" ON CONFLICT DO NOTHING");
            qb.build().execute(&mut *tx).await?;
        }
        // 5. Request rows (reply tokens) of the steps that sent them.
        for (job, result) in batch.iter().zip(&results) {
            if result.is_ok() && !job.requests.is_empty()
                && let Op::Step { step_key, .. } = &job.op
            {
                super::requests::insert_requests!(tx, job.run_id.as_str(), step_key.as_str(), job.now, &job.requests);
            }
        }
        tx.commit().await?;
        Ok(results)
    }};
}

/// Rows per multi-row statement (12 parameters each; well under both backends' limits).
const UPSERT_CHUNK: usize = 256;

const FENCE_SQLITE: &str = "UPDATE runs SET lease_until = $1 WHERE lease_owner = $2 \
     AND id IN (SELECT value FROM json_each($3)) RETURNING id, cancel_requested";

const FENCE_POSTGRES: &str = "UPDATE runs SET lease_until = $1 WHERE id IN (SELECT id FROM runs \
     WHERE lease_owner = $2 AND id IN (SELECT json_array_elements_text($3::json)) \
     ORDER BY id FOR UPDATE) RETURNING id, cancel_requested";

async fn apply(backend: &Backend, batch: &[Job]) -> Result<Vec<Result<bool>>> {
    match backend {
        Backend::Sqlite(pool) => apply_on!(pool, batch, FENCE_SQLITE),
        Backend::Postgres(pool) => apply_on!(pool, batch, FENCE_POSTGRES),
    }
}
