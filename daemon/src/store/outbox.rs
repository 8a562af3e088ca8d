//! Outbox rows: claimed by delivery workers under a lease, like runs.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::Value as Json;
use sqlx::Row;

use super::{Backend, Result, Store, StoreError, from_ms, ms};

/// Kinds of outgoing messages.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum MessageKind {
    /// An email (raw RFC 5322 bytes and an envelope).
    Email,
    /// An HTTP POST to a webhook.
    Webhook,
}

impl MessageKind {
    /// As stored.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Email => "email",
            Self::Webhook => "webhook",
        }
    }
}

/// A message an action produced, committed with its step.
#[derive(Debug, Clone, PartialEq)]
pub struct NewMessage {
    /// Email or webhook.
    pub kind: MessageKind,
    /// Unique per message: `run:step:n`. Re-inserting the same key is a no-op.
    pub key: String,
    /// Recipients or URL, for listings.
    pub target: String,
    /// The email Message-ID (also the webhook `Idempotency-Key`).
    pub message_id: String,
    /// What the transport needs (see `transport.rs`).
    pub payload: serde_json::Value,
}

/// An outbox row.
#[derive(Debug, Clone, Serialize, schemars::JsonSchema)]
pub struct OutboxRow {
    /// Row id.
    pub id: String,
    /// Email or webhook.
    pub kind: MessageKind,
    /// Recipients or URL.
    pub target: String,
    /// Message-ID / Idempotency-Key.
    pub message_id: String,
    /// What the transport needs.
    #[serde(skip)]
    pub payload: Json,
    /// `pending`, `sent` or `dead`.
    pub status: String,
    /// Attempts made.
    pub attempts: i64,
    /// When the next attempt is due.
    pub next_attempt_at: Option<DateTime<Utc>>,
    /// Committed.
    pub created_at: DateTime<Utc>,
    /// Accepted by the server.
    pub sent_at: Option<DateTime<Utc>>,
    /// Why the last attempt failed.
    pub last_error: Option<String>,
    /// The run that produced it.
    pub run_id: Option<String>,
}

const COLUMNS: &str = "id, kind, target, message_id, payload, status, attempts, next_attempt_at, \
    created_at, sent_at, last_error, run_id";

fn row<R: Row>(r: &R) -> Result<OutboxRow>
where
    for<'a> &'a str: sqlx::ColumnIndex<R>,
    String: for<'q> sqlx::Decode<'q, R::Database> + sqlx::Type<R::Database>,
    i64: for<'q> sqlx::Decode<'q, R::Database> + sqlx::Type<R::Database>,
{
    let kind: String = r.try_get("kind")?;
    let payload: String = r.try_get("payload")?;
    Ok(OutboxRow {
        id: r.try_get("id")?,
        kind: if kind == "webhook" {
            MessageKind::Webhook
        } else {
            MessageKind::Email
        },
        target: r.try_get("target")?,
        message_id: r.try_get("message_id")?,
        payload: serde_json::from_str(&payload)
            .map_err(|e| StoreError::Corrupt("outbox", e.to_string()))?,
        status: r.try_get("status")?,
        attempts: r.try_get("attempts")?,
        next_attempt_at: r.try_get::<Option<i64>, _>("next_attempt_at")?.map(from_ms),
        created_at: from_ms(r.try_get("created_at")?),
        sent_at: r.try_get::<Option<i64>, _>("sent_at")?.map(from_ms),
        last_error: r.try_get("last_error")?,
        run_id: r.try_get("run_id")?,
    })
}

impl Store {
    /// Leases up to `limit` due pending messages: unleased ones, those whose lease expired, and
    /// those leased by a daemon that stopped or whose heartbeat is older than `dead_before`.
    pub async fn claim_outbox(
        &self,
        owner: &str,
        now: DateTime<Utc>,
        lease: chrono::Duration,
        dead_before: DateTime<Utc>,
        limit: i64,
    ) -> Result<Vec<OutboxRow>> {
        let lock = match &self.backend {
            Backend::Sqlite(_) => "",
            Backend::Postgres(_) => "FOR UPDATE SKIP LOCKED",
        };
        let sql = format!(
            "UPDATE outbox SET lease_owner = $1, lease_until = $2 WHERE id IN \
             (SELECT id FROM outbox WHERE status = 'pending' AND next_attempt_at <= $3 \
              AND (lease_owner IS NULL OR lease_until < $3 OR lease_owner IN (SELECT instance_id \
                FROM daemons WHERE stopped_at IS NOT NULL OR heartbeat_at < $5)) \
              ORDER BY next_attempt_at LIMIT $4 {lock}) \
             RETURNING {COLUMNS}"
        );
        with_pool!(self, |pool| {
            sqlx::query(&sql)
                .bind(owner)
                .bind(ms(now + lease))
                .bind(ms(now))
                .bind(limit)
                .bind(ms(dead_before))
                .fetch_all(pool)
                .await?
                .iter()
                .map(row)
                .collect()
        })
    }

    /// The next time a pending message is due.
    pub async fn next_outbox_due(&self) -> Result<Option<DateTime<Utc>>> {
        let v: Option<i64> = with_pool!(self, |pool| {
            sqlx::query("SELECT MIN(next_attempt_at) AS n FROM outbox WHERE status = 'pending' AND lease_owner IS NULL")
                .fetch_one(pool)
                .await?
                .try_get("n")
        })?;
        Ok(v.map(from_ms))
    }

    /// Records an attempt's result: `sent`, `pending` again at `retry_at`, or `dead`.
    pub async fn outbox_attempted(
        &self,
        id: &str,
        owner: &str,
        now: DateTime<Utc>,
        status: &str,
        retry_at: Option<DateTime<Utc>>,
        error: Option<&str>,
    ) -> Result<()> {
        with_pool!(self, |pool| {
            sqlx::query(
                "UPDATE outbox SET status = $1, attempts = attempts + 1, next_attempt_at = $2, \
                 sent_at = CASE WHEN $1 = 'sent' THEN $3 ELSE sent_at END, \
                 last_error = COALESCE($4, last_error), lease_owner = NULL, lease_until = NULL \
                 WHERE id = $5 AND lease_owner = $6",
            )
            .bind(status)
            .bind(retry_at.map(ms))
            .bind(ms(now))
            .bind(error)
            .bind(id)
            .bind(owner)
            .execute(pool)
            .await
            .map(|_| ())
        })?;
        Ok(())
    }

    /// Lists messages, newest first.
    pub async fn list_outbox(&self, status: Option<&str>, limit: i64) -> Result<Vec<OutboxRow>> {
        let sql = format!(
            "SELECT {COLUMNS} FROM outbox WHERE ($1 IS NULL OR status = $1) ORDER BY created_at DESC, id DESC LIMIT $2"
        );
        with_pool!(self, |pool| {
            sqlx::query(&sql)
                .bind(status)
                .bind(limit)
                .fetch_all(pool)
                .await?
                .iter()
                .map(row)
                .collect()
        })
    }

    /// The email queued with `message_id` (as in its header, with angle brackets), as it was
    /// (or will be) sent; the first one if a key was queued twice.
    pub async fn outbox_email(&self, message_id: &str) -> Result<Option<OutboxRow>> {
        let sql = format!(
            "SELECT {COLUMNS} FROM outbox WHERE message_id = $1 AND kind = 'email' \
             ORDER BY created_at, id LIMIT 1"
        );
        with_pool!(self, |pool| {
            sqlx::query(&sql)
                .bind(message_id)
                .fetch_optional(pool)
                .await?
                .as_ref()
                .map(row)
                .transpose()
        })
    }

    /// Puts a dead message back in the queue, due now, with its attempts reset.
    pub async fn retry_outbox(&self, id: &str, now: DateTime<Utc>) -> Result<bool> {
        let n = with_pool!(self, |pool| {
            sqlx::query(
                "UPDATE outbox SET status = 'pending', attempts = 0, next_attempt_at = $1, \
                 lease_owner = NULL, lease_until = NULL WHERE id = $2 AND status = 'dead'",
            )
            .bind(ms(now))
            .bind(id)
            .execute(pool)
            .await
            .map(|r| r.rows_affected())
        })?;
        Ok(n == 1)
    }

    /// Counts messages by status.
    pub async fn count_outbox(&self, status: &str) -> Result<i64> {
        with_pool!(self, |pool| {
            Ok(
                sqlx::query("SELECT COUNT(*) AS n FROM outbox WHERE status = $1")
                    .bind(status)
                    .fetch_one(pool)
                    .await?
                    .try_get::<i64, _>("n")?,
            )
        })
    }
}
