//! The daemon's own records: shared settings (created once, by whichever daemon asks first), the
//! audit log of what people did through the API, pages and CLI, and browser sessions.

use chrono::{DateTime, Utc};
use serde::Serialize;
use sqlx::Row;

use super::{Result, Store, from_ms, ms};

impl Store {
    /// The shared setting `name`, created with `make()` by whichever daemon asks first.
    pub async fn setting_or_insert(
        &self,
        name: &str,
        now: DateTime<Utc>,
        make: impl FnOnce() -> String,
    ) -> Result<String> {
        let value = make();
        with_pool!(self, |pool| {
            sqlx::query(
                "INSERT INTO settings (name, value, created_at) VALUES ($1, $2, $3) \
                 ON CONFLICT (name) DO NOTHING",
            )
            .bind(name)
            .bind(&value)
            .bind(ms(now))
            .execute(pool)
            .await?;
            let r = sqlx::query("SELECT value FROM settings WHERE name = $1")
                .bind(name)
                .fetch_one(pool)
                .await?;
            Ok(r.try_get(0usize)?)
        })
    }
}

/// An audit-log entry.
#[derive(Debug, Clone, Serialize, schemars::JsonSchema)]
pub struct AuditRow {
    /// When.
    pub at: DateTime<Utc>,
    /// Who (token name).
    pub actor: String,
    /// What (`trigger`, `cancel`, `retry_outbox`, `ack`, `inbound`, `hook`).
    pub action: String,
    /// On what (run id, message id, workflow).
    pub target: Option<String>,
    /// Details.
    pub detail: Option<String>,
}

impl Store {
    /// Appends to the audit log.
    pub async fn audit(
        &self,
        now: DateTime<Utc>,
        actor: &str,
        action: &str,
        target: Option<&str>,
        detail: Option<&str>,
    ) -> Result<()> {
        with_pool!(self, |pool| {
            sqlx::query(
                "INSERT INTO audit_log (id, at, actor, action, target, detail) VALUES ($1, $2, $3, $4, $5, $6)",
            )
            .bind(uuid::Uuid::now_v7().to_string())
            .bind(ms(now))
            .bind(actor)
            .bind(action)
            .bind(target)
            .bind(detail)
            .execute(pool)
            .await?;
            Ok(())
        })
    }

    /// The newest audit entries.
    pub async fn list_audit(&self, limit: i64) -> Result<Vec<AuditRow>> {
        with_pool!(self, |pool| {
            let mut out = Vec::new();
            for r in sqlx::query(
                "SELECT at, actor, action, target, detail FROM audit_log ORDER BY at DESC, id DESC LIMIT $1",
            )
            .bind(limit)
            .fetch_all(pool)
            .await?
            {
                out.push(AuditRow {
                    at: from_ms(r.try_get(0usize)?),
                    actor: r.try_get(1usize)?,
                    action: r.try_get(2usize)?,
                    target: r.try_get(3usize)?,
                    detail: r.try_get(4usize)?,
                });
            }
            Ok(out)
        })
    }
}

/// A browser session.
#[derive(Debug, Clone)]
pub struct SessionRow {
    /// The API token it was opened with (its name).
    pub token_name: String,
    /// `viewer`, `operator` or `admin`.
    pub role: String,
    /// The CSRF token of its forms.
    pub csrf: String,
    /// When it ends.
    pub expires_at: DateTime<Utc>,
}

impl Store {
    /// Opens a session under the SHA-256 of its cookie value.
    pub async fn session_create(
        &self,
        id_hash: &str,
        session: &SessionRow,
        now: DateTime<Utc>,
    ) -> Result<()> {
        with_pool!(self, |pool| {
            sqlx::query("DELETE FROM sessions WHERE expires_at < $1")
                .bind(ms(now))
                .execute(pool)
                .await?;
            sqlx::query(
                "INSERT INTO sessions (id_hash, token_name, role, csrf, created_at, expires_at) \
                 VALUES ($1, $2, $3, $4, $5, $6)",
            )
            .bind(id_hash)
            .bind(&session.token_name)
            .bind(&session.role)
            .bind(&session.csrf)
            .bind(ms(now))
            .bind(ms(session.expires_at))
            .execute(pool)
            .await?;
            Ok(())
        })
    }

    /// The live session with this id hash.
    pub async fn session_get(
        &self,
        id_hash: &str,
        now: DateTime<Utc>,
    ) -> Result<Option<SessionRow>> {
        with_pool!(self, |pool| {
            let r = sqlx::query(
                "SELECT token_name, role, csrf, expires_at FROM sessions WHERE id_hash = $1 AND expires_at > $2",
            )
            .bind(id_hash)
            .bind(ms(now))
            .fetch_optional(pool)
            .await?;
            match r {
                Some(r) => Ok(Some(SessionRow {
                    token_name: r.try_get(0usize)?,
                    role: r.try_get(1usize)?,
                    csrf: r.try_get(2usize)?,
                    expires_at: from_ms(r.try_get(3usize)?),
                })),
                None => Ok(None),
            }
        })
    }

    /// Ends a session.
    pub async fn session_delete(&self, id_hash: &str) -> Result<()> {
        with_pool!(self, |pool| {
            sqlx::query("DELETE FROM sessions WHERE id_hash = $1")
                .bind(id_hash)
                .execute(pool)
                .await?;
            Ok(())
        })
    }
}
