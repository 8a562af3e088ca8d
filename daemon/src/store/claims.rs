//! Claiming due runs and keeping their leases: what the engine's claim loop asks of the store.

use chrono::{DateTime, Utc};
use sqlx::Row;

use super::runs::{Claim, ClaimedRun, RUN_COLUMNS};
use super::{Backend, Result, RunRow, Store, StoreError, from_ms, ms};

impl Store {
    /// Leases up to `limit` due runs to `owner` and returns them.
    pub async fn claim_due(
        &self,
        owner: &str,
        now: DateTime<Utc>,
        lease: chrono::Duration,
        limit: i64,
    ) -> Result<Vec<RunRow>> {
        Ok(self
            .claim(owner, now, lease, limit)
            .await?
            .runs
            .into_iter()
            .map(|c| c.run)
            .collect())
    }

    /// Leases up to `limit` due runs to `owner`; also says whether each is fresh (never
    /// executed: its executor need not read step rows) and when the next
    /// unleased run not claimed here becomes due. On PostgreSQL this is one statement: the
    /// engine's claim loop costs one round trip per wake-up.
    pub async fn claim(
        &self,
        owner: &str,
        now: DateTime<Utc>,
        lease: chrono::Duration,
        limit: i64,
    ) -> Result<Claim> {
        let sql = match &self.backend {
            // One writer at a time: nothing can write step rows between the claim's update and
            // its `RETURNING`, so they are simply looked up (by primary key).
            Backend::Sqlite(_) => format!(
                "UPDATE runs SET lease_owner = $1, lease_until = $2, status = 'running', \
                 started_at = COALESCE(started_at, $3), nudged_at = NULL \
                 WHERE id IN (SELECT id FROM runs WHERE wake_at IS NOT NULL AND wake_at <= $3 \
                   AND (lease_owner IS NULL OR lease_until < $3) ORDER BY wake_at LIMIT $4) \
                 RETURNING {RUN_COLUMNS}, CAST(CASE WHEN NOT EXISTS (SELECT 1 FROM steps s \
                   WHERE s.run_id = runs.id) THEN 1 ELSE 0 END AS BIGINT) AS fresh"
            ),
            // SKIP LOCKED lets several daemons claim concurrently without waiting on each
            // other. A run is fresh when it had never been claimed (`started_at` was NULL in
            // the row as locked): steps are written only under a claim. The outer query reads
            // the snapshot from before the update, where the runs just claimed are still
            // unleased: `wake_at > $3` leaves them (and every other run due now, claimed here
            // or locked by another daemon) out of the next wake-up. One row even when nothing
            // is claimed (then `id` is NULL).
            Backend::Postgres(_) => {
                let returning = RUN_COLUMNS
                    .split(", ")
                    .map(|c| format!("runs.{c}"))
                    .collect::<Vec<_>>()
                    .join(", ");
                format!(
                    "WITH claimed AS (UPDATE runs SET lease_owner = $1, lease_until = $2, \
                     status = 'running', started_at = COALESCE(runs.started_at, $3), \
                     nudged_at = NULL \
                     FROM (SELECT id, CAST(CASE WHEN started_at IS NULL THEN 1 ELSE 0 END AS \
                       BIGINT) AS fresh FROM runs WHERE wake_at IS NOT NULL AND wake_at <= $3 \
                       AND (lease_owner IS NULL OR lease_until < $3) ORDER BY wake_at LIMIT $4 \
                       FOR UPDATE SKIP LOCKED) due \
                     WHERE runs.id = due.id RETURNING {returning}, due.fresh) \
                     SELECT c.*, n.next_wake FROM (SELECT MIN(wake_at) AS next_wake FROM runs \
                     WHERE wake_at IS NOT NULL AND wake_at > $3 AND lease_owner IS NULL) n \
                     LEFT JOIN claimed c ON true"
                )
            }
        };
        let (runs, next) = with_pool!(self, |pool| {
            let rows = sqlx::query(&sql)
                .bind(owner)
                .bind(ms(now + lease))
                .bind(ms(now))
                .bind(limit)
                .fetch_all(pool)
                .await?;
            let mut runs = Vec::with_capacity(rows.len());
            let mut next: Option<i64> = None;
            for row in &rows {
                if matches!(self.backend, Backend::Postgres(_)) {
                    next = row.try_get("next_wake")?;
                }
                if row.try_get::<Option<String>, _>("id")?.is_some() {
                    runs.push(ClaimedRun {
                        run: RunRow::from_row(row)?,
                        fresh: row.try_get::<i64, _>("fresh")? != 0,
                    });
                }
            }
            Ok::<_, StoreError>((runs, next))
        })?;
        let next_wake = match &self.backend {
            Backend::Sqlite(_) => self.next_wake().await?,
            Backend::Postgres(_) => next.map(from_ms),
        };
        Ok(Claim { runs, next_wake })
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
}
