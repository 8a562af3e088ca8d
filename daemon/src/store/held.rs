//! Answers held for the addressee's confirmation: matched by subject tag and sender only, from
//! a sender nobody authenticated (issue: a forged `From` must not count). The confirmation
//! link carries a random token whose SHA-256 is on the row; confirming puts the row back to
//! `pending`, marked confirmed, and intake processes it again.

use chrono::{DateTime, Utc};
use sqlx::Row;

use super::inbound::{INBOUND_COLUMNS, inbound_row};
use super::{InboundRow, Result, Store, ms};

impl Store {
    /// The held (or once held) message whose confirmation token hashes to `hash`.
    pub async fn inbound_by_confirm(&self, hash: &str) -> Result<Option<InboundRow>> {
        let sql = format!("SELECT {INBOUND_COLUMNS} FROM inbound WHERE confirm_hash = $1");
        with_pool!(self, |pool| {
            match sqlx::query(&sql).bind(hash).fetch_optional(pool).await? {
                Some(r) => Ok(Some(inbound_row!(&r))),
                None => Ok(None),
            }
        })
    }

    /// Confirms a held message: back to `pending`, marked confirmed. `None` if it is not held
    /// (confirmed before, or never held). `by_hash` selects it by confirmation hash, otherwise
    /// by id (the PMO's `pmoflow inbound release`).
    pub async fn inbound_confirm(
        &self,
        key: &str,
        by_hash: bool,
        now: DateTime<Utc>,
    ) -> Result<Option<InboundRow>> {
        let column = if by_hash { "confirm_hash" } else { "id" };
        let sql = format!(
            "UPDATE inbound SET status = 'pending', confirmed_at = $1 \
             WHERE {column} = $2 AND status = 'held' RETURNING {INBOUND_COLUMNS}"
        );
        with_pool!(self, |pool| {
            match sqlx::query(&sql)
                .bind(ms(now))
                .bind(key)
                .fetch_optional(pool)
                .await?
            {
                Some(r) => Ok(Some(inbound_row!(&r))),
                None => Ok(None),
            }
        })
    }

    /// How many messages are held unconfirmed for request `token` from `from`: the number of
    /// confirmation mails that address has pending (bounded, so a flood of forgeries cannot
    /// turn pmoflow into a mail bomb).
    pub async fn inbound_held_count(&self, token: &str, from: &str) -> Result<i64> {
        with_pool!(self, |pool| {
            let n: i64 = sqlx::query(
                "SELECT COUNT(*) FROM inbound WHERE status = 'held' AND token = $1 \
                 AND from_addr = $2",
            )
            .bind(token)
            .bind(from)
            .fetch_one(pool)
            .await?
            .try_get(0usize)?;
            Ok(n)
        })
    }
}
