//! Daemons sharing the database: their registrations and heartbeats, the singleton roles they
//! hold, and the schema version each was built for.

use chrono::{DateTime, Utc};
use sqlx::Row;

use super::{Backend, Result, Store, from_ms, ms};

/// One daemon process, as it registered itself.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, schemars::JsonSchema)]
pub struct DaemonRow {
    /// Unique per process (host name + a random part); the owner of its leases.
    pub instance_id: String,
    /// `node_id` from the config (the host name by default): a label, not an identity.
    pub label: String,
    /// Host name.
    pub host: String,
    /// Process id on that host.
    pub pid: i64,
    /// pmoflow version (`CARGO_PKG_VERSION`).
    pub version: String,
    /// The newest migration the daemon's binary knows.
    pub schema_version: i64,
    /// When it started.
    pub started_at: DateTime<Utc>,
    /// Its last heartbeat.
    pub heartbeat_at: DateTime<Utc>,
    /// When it stopped cleanly (None while running, or if it died).
    pub stopped_at: Option<DateTime<Utc>>,
}

/// A singleton role and its holder.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, schemars::JsonSchema)]
pub struct RoleRow {
    /// `scheduler`, `imap:user@host/INBOX`, …
    pub name: String,
    /// The holder's instance id.
    pub holder: String,
    /// Held since.
    pub since: DateTime<Utc>,
    /// Held until (renewed by the holder).
    pub until: DateTime<Utc>,
}

/// The newest migration this binary applies.
pub fn schema_version() -> i64 {
    sqlx::migrate!("migrations/postgres")
        .iter()
        .map(|m| m.version)
        .max()
        .unwrap_or_default()
}

fn daemon_row(r: &impl DaemonGet) -> Result<DaemonRow> {
    r.daemon()
}

trait DaemonGet {
    fn daemon(&self) -> Result<DaemonRow>;
}

macro_rules! impl_daemon_get {
    ($row:ty) => {
        impl DaemonGet for $row {
            fn daemon(&self) -> Result<DaemonRow> {
                Ok(DaemonRow {
                    instance_id: self.try_get("instance_id")?,
                    label: self.try_get("label")?,
                    host: self.try_get("host")?,
                    pid: self.try_get("pid")?,
                    version: self.try_get("version")?,
                    schema_version: self.try_get("schema_version")?,
                    started_at: from_ms(self.try_get("started_at")?),
                    heartbeat_at: from_ms(self.try_get("heartbeat_at")?),
                    stopped_at: self.try_get::<Option<i64>, _>("stopped_at")?.map(from_ms),
                })
            }
        }
    };
}
impl_daemon_get!(sqlx::sqlite::SqliteRow);
impl_daemon_get!(sqlx::postgres::PgRow);

impl Store {
    /// Registers a starting daemon. Rows of daemons gone for more than a week are pruned.
    pub async fn register_daemon(&self, d: &DaemonRow) -> Result<()> {
        let week_ago = ms(d.started_at - chrono::Duration::days(7));
        with_pool!(self, |pool| {
            sqlx::query("DELETE FROM daemons WHERE heartbeat_at < $1")
                .bind(week_ago)
                .execute(pool)
                .await?;
            sqlx::query(
                "INSERT INTO daemons (instance_id, label, host, pid, version, schema_version, \
                 started_at, heartbeat_at) VALUES ($1, $2, $3, $4, $5, $6, $7, $7)",
            )
            .bind(&d.instance_id)
            .bind(&d.label)
            .bind(&d.host)
            .bind(d.pid)
            .bind(&d.version)
            .bind(d.schema_version)
            .bind(ms(d.started_at))
            .execute(pool)
            .await
            .map(|_| ())
        })?;
        Ok(())
    }

    /// A heartbeat: records that `instance` is alive at `now` and extends its leases on the
    /// runs it is executing (`run_ids`) to `lease_until`, in one transaction. Returns the runs
    /// of `run_ids` whose lease another daemon holds now (it took one over after a stall); a
    /// run with no lease at all was parked or finished by its own task meanwhile.
    pub async fn heartbeat(
        &self,
        instance: &str,
        now: DateTime<Utc>,
        run_ids: &[String],
        lease_until: DateTime<Utc>,
    ) -> Result<Vec<String>> {
        let ids = serde_json::to_string(run_ids).unwrap_or_else(|_| "[]".into());
        macro_rules! beat {
            ($pool:expr, $renew:expr, $taken:expr) => {{
                let mut tx = $pool.begin().await?;
                sqlx::query(
                    "UPDATE daemons SET heartbeat_at = $1, stopped_at = NULL WHERE instance_id = $2",
                )
                .bind(ms(now))
                .bind(instance)
                .execute(&mut *tx)
                .await?;
                let taken: Vec<String> = if run_ids.is_empty() {
                    Vec::new()
                } else {
                    sqlx::query($renew)
                        .bind(ms(lease_until))
                        .bind(instance)
                        .bind(&ids)
                        .execute(&mut *tx)
                        .await?;
                    sqlx::query($taken)
                        .bind(instance)
                        .bind(&ids)
                        .fetch_all(&mut *tx)
                        .await?
                        .iter()
                        .map(|r| r.try_get::<String, _>(0usize))
                        .collect::<std::result::Result<_, _>>()?
                };
                tx.commit().await?;
                taken
            }};
        }
        Ok(match &self.backend {
            Backend::Sqlite(pool) => beat!(
                pool,
                "UPDATE runs SET lease_until = $1 WHERE lease_owner = $2 \
                 AND id IN (SELECT value FROM json_each($3))",
                "SELECT id FROM runs WHERE lease_owner IS NOT NULL AND lease_owner <> $1 \
                 AND id IN (SELECT value FROM json_each($2))"
            ),
            // Rows locked in id order, the order group commits use: no deadlocks.
            Backend::Postgres(pool) => beat!(
                pool,
                "UPDATE runs SET lease_until = $1 WHERE id IN (SELECT id FROM runs \
                 WHERE lease_owner = $2 AND id IN (SELECT json_array_elements_text($3::json)) \
                 ORDER BY id FOR UPDATE)",
                "SELECT id FROM runs WHERE lease_owner IS NOT NULL AND lease_owner <> $1 \
                 AND id IN (SELECT json_array_elements_text($2::json))"
            ),
        })
    }

    /// A clean stop: gives up every run lease, outbox lease and role `instance` holds and
    /// says so, so that other daemons take its work over at once.
    pub async fn daemon_stopped(&self, instance: &str, now: DateTime<Utc>) -> Result<()> {
        with_pool!(self, |pool| {
            let mut tx = pool.begin().await?;
            sqlx::query(
                "UPDATE runs SET lease_owner = NULL, lease_until = NULL WHERE lease_owner = $1",
            )
            .bind(instance)
            .execute(&mut *tx)
            .await?;
            sqlx::query(
                "UPDATE outbox SET lease_owner = NULL, lease_until = NULL WHERE lease_owner = $1",
            )
            .bind(instance)
            .execute(&mut *tx)
            .await?;
            sqlx::query("DELETE FROM roles WHERE holder = $1")
                .bind(instance)
                .execute(&mut *tx)
                .await?;
            sqlx::query("UPDATE daemons SET stopped_at = $1 WHERE instance_id = $2")
                .bind(ms(now))
                .bind(instance)
                .execute(&mut *tx)
                .await?;
            tx.commit().await
        })?;
        Ok(())
    }

    /// Every lease of runs and outbox messages, whoever holds it. Only safe when no other
    /// daemon can be running: a daemon holding the SQLite file's lock calls it at start.
    pub async fn release_all_leases(&self) -> Result<u64> {
        with_pool!(self, |pool| {
            let runs = sqlx::query(
                "UPDATE runs SET lease_owner = NULL, lease_until = NULL WHERE lease_owner IS NOT NULL",
            )
            .execute(pool)
            .await?
            .rows_affected();
            sqlx::query(
                "UPDATE outbox SET lease_owner = NULL, lease_until = NULL WHERE lease_owner IS NOT NULL",
            )
            .execute(pool)
            .await?;
            sqlx::query("DELETE FROM roles").execute(pool).await?;
            Ok::<_, sqlx::Error>(runs)
        })
        .map_err(Into::into)
    }

    /// Takes or renews a singleton role for `holder` until `until`: succeeds when the role is
    /// free, expired (`until < now`) or already held by `holder`.
    pub async fn take_role(
        &self,
        name: &str,
        holder: &str,
        now: DateTime<Utc>,
        until: DateTime<Utc>,
    ) -> Result<bool> {
        let row = with_pool!(self, |pool| {
            sqlx::query(
                "INSERT INTO roles (name, holder, since, until) VALUES ($1, $2, $3, $4) \
                 ON CONFLICT (name) DO UPDATE SET holder = excluded.holder, \
                 since = CASE WHEN roles.holder = excluded.holder THEN roles.since ELSE excluded.since END, \
                 until = excluded.until \
                 WHERE roles.holder = excluded.holder OR roles.until < $3 RETURNING holder",
            )
            .bind(name)
            .bind(holder)
            .bind(ms(now))
            .bind(ms(until))
            .fetch_optional(pool)
            .await
            .map(|row| row.is_some())
        })?;
        Ok(row)
    }

    /// Gives a role up (if `holder` still holds it).
    pub async fn release_role(&self, name: &str, holder: &str) -> Result<()> {
        with_pool!(self, |pool| {
            sqlx::query("DELETE FROM roles WHERE name = $1 AND holder = $2")
                .bind(name)
                .bind(holder)
                .execute(pool)
                .await
                .map(|_| ())
        })?;
        Ok(())
    }

    /// Every registered daemon, newest first.
    pub async fn daemons(&self) -> Result<Vec<DaemonRow>> {
        let sql = "SELECT instance_id, label, host, pid, version, schema_version, started_at, \
                   heartbeat_at, stopped_at FROM daemons ORDER BY started_at DESC, instance_id";
        match &self.backend {
            Backend::Sqlite(pool) => sqlx::query(sql)
                .fetch_all(pool)
                .await?
                .iter()
                .map(daemon_row)
                .collect(),
            Backend::Postgres(pool) => sqlx::query(sql)
                .fetch_all(pool)
                .await?
                .iter()
                .map(daemon_row)
                .collect(),
        }
    }

    /// Every held role.
    pub async fn roles(&self) -> Result<Vec<RoleRow>> {
        let rows = with_pool!(self, |pool| {
            sqlx::query("SELECT name, holder, since, until FROM roles ORDER BY name")
                .fetch_all(pool)
                .await?
                .iter()
                .map(|r| {
                    Ok::<_, sqlx::Error>(RoleRow {
                        name: r.try_get("name")?,
                        holder: r.try_get("holder")?,
                        since: from_ms(r.try_get("since")?),
                        until: from_ms(r.try_get("until")?),
                    })
                })
                .collect::<std::result::Result<Vec<_>, _>>()
        })?;
        Ok(rows)
    }

    /// How many runs each lease owner holds now: `(owner, runs)`.
    pub async fn leases_by_owner(&self) -> Result<Vec<(String, i64)>> {
        let rows = with_pool!(self, |pool| {
            sqlx::query(
                "SELECT lease_owner, COUNT(*) AS n FROM runs WHERE lease_owner IS NOT NULL \
                 GROUP BY lease_owner ORDER BY lease_owner",
            )
            .fetch_all(pool)
            .await?
            .iter()
            .map(|r| Ok::<_, sqlx::Error>((r.try_get("lease_owner")?, r.try_get("n")?)))
            .collect::<std::result::Result<Vec<_>, _>>()
        })?;
        Ok(rows)
    }

    /// The newest migration applied to the database (by this or a newer daemon).
    pub async fn applied_schema_version(&self) -> Result<i64> {
        let v: Option<i64> = with_pool!(self, |pool| {
            sqlx::query("SELECT MAX(version) AS v FROM _sqlx_migrations WHERE success")
                .fetch_one(pool)
                .await?
                .try_get("v")
        })?;
        Ok(v.unwrap_or_default())
    }

    /// The database server's clock (PostgreSQL), to detect a skewed host clock; None on SQLite.
    pub async fn database_time(&self) -> Result<Option<DateTime<Utc>>> {
        match &self.backend {
            Backend::Sqlite(_) => Ok(None),
            Backend::Postgres(pool) => {
                let v: i64 = sqlx::query(
                    "SELECT (EXTRACT(EPOCH FROM clock_timestamp()) * 1000)::BIGINT AS t",
                )
                .fetch_one(pool)
                .await?
                .try_get("t")?;
                Ok(Some(from_ms(v)))
            }
        }
    }
}
