//! What the daemon knows beyond runs: stored workflow versions, the catalog of loaded
//! workflows, trigger cursors (the last fire each trigger handled) and plugin key-value data.

use chrono::{DateTime, Utc};
use sqlx::Row;

use super::{Result, Store, from_ms, ms};

impl Store {
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
}
