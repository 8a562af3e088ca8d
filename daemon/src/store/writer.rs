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

use std::sync::Arc;

use sqlx::Row;
use tokio::sync::{Mutex, mpsc, oneshot};

use super::{Backend, Result, StoreError};

/// Most writes applied in one transaction.
const MAX_BATCH: usize = 512;

/// One step write, owned so that it can cross to the writer task.
pub(super) struct Job {
    pub run_id: String,
    pub owner: String,
    pub lease_until: i64,
    pub step_key: String,
    pub step_id: String,
    pub item_index: Option<i64>,
    pub status: &'static str,
    pub attempt: i64,
    pub started_at: Option<i64>,
    pub finished_at: Option<i64>,
    pub wake_at: Option<i64>,
    pub output: Option<String>,
    pub state: Option<String>,
    pub error: Option<String>,
    pub now: i64,
    pub event: Option<(Option<String>, String, String)>,
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

macro_rules! apply_on {
    ($pool:expr, $batch:expr) => {{
        let mut tx = $pool.begin().await?;
        let mut results = Vec::with_capacity($batch.len());
        for job in $batch {
            let fenced = sqlx::query(
                "UPDATE runs SET lease_until = $1 WHERE id = $2 AND lease_owner = $3 \
                 RETURNING cancel_requested",
            )
            .bind(job.lease_until)
            .bind(&job.run_id)
            .bind(&job.owner)
            .fetch_optional(&mut *tx)
            .await?;
            let Some(row) = fenced else {
                results.push(Err(StoreError::LeaseLost(job.run_id.clone())));
                continue;
            };
            let cancel = row.try_get::<i64, _>(0usize)? != 0;
            sqlx::query(
                "INSERT INTO steps (run_id, step_key, step_id, item_index, status, attempt, \
                 started_at, finished_at, wake_at, output, state, error) \
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12) \
                 ON CONFLICT (run_id, step_key) DO UPDATE SET status = excluded.status, \
                 attempt = excluded.attempt, started_at = excluded.started_at, \
                 finished_at = excluded.finished_at, wake_at = excluded.wake_at, \
                 output = excluded.output, state = excluded.state, error = excluded.error",
            )
            .bind(&job.run_id)
            .bind(&job.step_key)
            .bind(&job.step_id)
            .bind(job.item_index)
            .bind(job.status)
            .bind(job.attempt)
            .bind(job.started_at)
            .bind(job.finished_at)
            .bind(job.wake_at)
            .bind(job.output.as_deref())
            .bind(job.state.as_deref())
            .bind(job.error.as_deref())
            .execute(&mut *tx)
            .await?;
            if let Some((step_key, kind, message)) = &job.event {
                sqlx::query(
                    "INSERT INTO run_events (run_id, at, step_key, kind, message) \
                     VALUES ($1, $2, $3, $4, $5)",
                )
                .bind(&job.run_id)
                .bind(job.now)
                .bind(step_key.as_deref())
                .bind(kind.as_str())
                .bind(message.as_str())
                .execute(&mut *tx)
                .await?;
            }
            results.push(Ok(cancel));
        }
        tx.commit().await?;
        Ok(results)
    }};
}

async fn apply(backend: &Backend, batch: &[Job]) -> Result<Vec<Result<bool>>> {
    match backend {
        Backend::Sqlite(pool) => apply_on!(pool, batch),
        Backend::Postgres(pool) => apply_on!(pool, batch),
    }
}

