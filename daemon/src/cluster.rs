//! Several daemons on one database: who this process is, and singleton roles.
//!
//! Every daemon process gets an instance id of its own (host name + a random part), which owns
//! its leases; `node_id` from the config is only a label. A daemon therefore never mistakes
//! another process's leases for its own, whatever the labels, and takes them over only once
//! they expire (the owner stopped renewing: it died, stalled or lost the database) or the owner
//! gave them up when it stopped.
//!
//! Work that must run in one daemon at a time (the poller of an IMAP mailbox, the scheduler)
//! runs under a [`Role`]: a row in `roles` held for a lease time and renewed by its holder.
//! When the holder dies, another daemon takes the role once it expires.

use std::future::Future;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use crate::clock::SharedClock;
use crate::store::{Store, StoreError};

/// Why a role could not be taken or renewed this time.
#[derive(Debug, thiserror::Error)]
enum RenewError {
    /// The database refused.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The database did not answer within a third of the time to live.
    #[error("the database did not answer in time")]
    Timeout,
}

/// This process's identity among the daemons of a database.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Instance {
    /// Unique per process: `host-1a2b3c4d`.
    pub id: String,
    /// `node_id` from the config (the host name by default), shown beside the id.
    pub label: String,
    /// Host name.
    pub host: String,
}

impl Instance {
    /// A fresh identity for this process; `label` defaults to the host name.
    pub fn new(label: Option<&str>) -> Self {
        let host = host_name();
        let label = label.map_or_else(|| host.clone(), str::to_string);
        let id = format!("{host}-{:08x}", fastrand::u32(..));
        Self { id, label, host }
    }
}

/// The host name.
pub fn host_name() -> String {
    gethostname::gethostname()
        .into_string()
        .unwrap_or_else(|_| "pmoflow".to_string())
}

/// A singleton role: `name` in the `roles` table, held by one instance at a time.
#[derive(Clone)]
pub struct Role {
    /// `scheduler`, `imap:user@host/INBOX`, …
    pub name: String,
    /// The instance that wants to hold it.
    pub holder: String,
    /// How long a hold lasts without renewal (the failover time).
    pub ttl: Duration,
    /// Where roles are kept.
    pub store: Store,
    /// The clock that dates holds.
    pub clock: SharedClock,
}

impl Role {
    /// Runs `work` whenever this instance holds the role, until `shutdown`. `work` gets a token
    /// that is cancelled when the role is lost (renewal failed for longer than is safe, or
    /// another daemon holds it) or at shutdown, and must stop acting then. Tries to take the
    /// role every third of its time to live (with jitter, so daemons do not try in step).
    pub async fn run<F, Fut>(&self, shutdown: CancellationToken, mut work: F)
    where
        F: FnMut(CancellationToken) -> Fut,
        Fut: Future<Output = ()>,
    {
        let every = self.ttl / 3;
        let mut waiting_logged = false;
        loop {
            if shutdown.is_cancelled() {
                return;
            }
            match self.try_take().await {
                Ok(true) => {
                    tracing::info!(role = %self.name, instance = %self.holder, "role taken");
                    waiting_logged = false;
                    let held = shutdown.child_token();
                    let renew = self.renew(held.clone());
                    tokio::pin!(renew);
                    let job = work(held.clone());
                    tokio::pin!(job);
                    tokio::select! {
                        () = &mut job => { held.cancel(); }
                        () = &mut renew => {
                            // Lost: the work must stop at once (its token is cancelled).
                            job.await;
                        }
                    }
                    if shutdown.is_cancelled() {
                        let _ = self.store.release_role(&self.name, &self.holder).await;
                        return;
                    }
                }
                Ok(false) => {
                    if !waiting_logged {
                        tracing::info!(role = %self.name, "role held by another daemon; standing by");
                        waiting_logged = true;
                    }
                }
                Err(e) => {
                    tracing::warn!(role = %self.name, error = %e, "cannot take role; retrying")
                }
            }
            let jitter = every.mul_f64(fastrand::f64() * 0.3);
            tokio::select! {
                () = tokio::time::sleep(every + jitter) => {}
                () = shutdown.cancelled() => return,
            }
        }
    }

    /// One attempt to take or renew the hold. It is bounded by a third of the time to live, so a
    /// database that stopped answering counts as a failed renewal, not as a wait.
    async fn try_take(&self) -> Result<bool, RenewError> {
        let now = self.clock.now();
        let until = now + chrono::Duration::from_std(self.ttl).unwrap_or_default();
        let take = self.store.take_role(&self.name, &self.holder, now, until);
        match tokio::time::timeout(self.ttl / 3, take).await {
            Ok(Ok(held)) => Ok(held),
            Ok(Err(e)) => Err(RenewError::Store(e)),
            Err(_) => Err(RenewError::Timeout),
        }
    }

    /// Renews the hold every third of its time to live; returns (cancelling `held`) when it is
    /// lost: another holder, or no successful renewal for two thirds of the time to live (the
    /// last third is the margin before another daemon may take it).
    async fn renew(&self, held: CancellationToken) {
        let every = self.ttl / 3;
        let mut last_ok = tokio::time::Instant::now();
        loop {
            tokio::select! {
                () = tokio::time::sleep(every) => {}
                () = held.cancelled() => return,
            }
            match self.try_take().await {
                Ok(true) => last_ok = tokio::time::Instant::now(),
                Ok(false) => {
                    tracing::warn!(role = %self.name, "role taken over by another daemon; stopping it here");
                    held.cancel();
                    return;
                }
                Err(e) => {
                    if last_ok.elapsed() >= every * 2 {
                        tracing::error!(role = %self.name, error = %e, "cannot renew role; stopping it here before another daemon takes it over");
                        held.cancel();
                        return;
                    }
                    tracing::warn!(role = %self.name, error = %e, "cannot renew role; retrying");
                }
            }
        }
    }
}

/// Whether a daemon is serving.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, schemars::JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum DaemonState {
    /// Its heartbeat is younger than the lease.
    Live,
    /// It stopped cleanly and gave its work up.
    Stopped,
    /// Its heartbeat expired without a clean stop (killed, crashed, partitioned): its leases
    /// are free for the others.
    Lost,
}

/// One daemon in [`ClusterView`].
#[derive(Debug, Clone, serde::Serialize, schemars::JsonSchema)]
pub struct DaemonView {
    /// What it registered.
    #[serde(flatten)]
    pub daemon: crate::store::DaemonRow,
    /// Live, stopped or lost.
    pub state: DaemonState,
    /// Milliseconds since its last heartbeat.
    pub heartbeat_age_ms: i64,
    /// Runs whose lease it holds.
    pub runs: i64,
    /// Singleton roles it holds.
    pub roles: Vec<String>,
}

/// The daemons of a database, as `pmoflow cluster`, `/api/cluster` and the dashboard show them.
#[derive(Debug, Clone, serde::Serialize, schemars::JsonSchema)]
pub struct ClusterView {
    /// `sqlite` or `postgres`.
    pub backend: &'static str,
    /// Every daemon seen in the last week, live ones first.
    pub daemons: Vec<DaemonView>,
    /// Held roles (a role held by a lost daemon is free once its time is up).
    pub roles: Vec<crate::store::RoleRow>,
    /// The versions of the live daemons.
    pub versions: Vec<String>,
    /// The newest migration applied to the database.
    pub schema_applied: i64,
    /// The newest migration the reading binary knows.
    pub schema_known: i64,
    /// Anything an operator should act on.
    pub warnings: Vec<String>,
}

/// Reads the cluster's state at `now`; `lease` is the heartbeat expiry.
pub async fn view(
    store: &Store,
    now: chrono::DateTime<chrono::Utc>,
    lease: chrono::Duration,
) -> Result<ClusterView, crate::store::StoreError> {
    let rows = store.daemons().await?;
    let roles = store.roles().await?;
    let held: std::collections::HashMap<String, i64> =
        store.leases_by_owner().await?.into_iter().collect();
    let mut daemons: Vec<DaemonView> = rows
        .into_iter()
        .map(|d| {
            let age = (now - d.heartbeat_at).num_milliseconds().max(0);
            let state = if d.stopped_at.is_some() {
                DaemonState::Stopped
            } else if now - d.heartbeat_at <= lease {
                DaemonState::Live
            } else {
                DaemonState::Lost
            };
            DaemonView {
                runs: held.get(&d.instance_id).copied().unwrap_or_default(),
                roles: roles
                    .iter()
                    .filter(|r| r.holder == d.instance_id && r.until >= now)
                    .map(|r| r.name.clone())
                    .collect(),
                heartbeat_age_ms: age,
                state,
                daemon: d,
            }
        })
        .collect();
    daemons.sort_by_key(|d| d.state != DaemonState::Live);
    let mut versions: Vec<String> = daemons
        .iter()
        .filter(|d| d.state == DaemonState::Live)
        .map(|d| d.daemon.version.clone())
        .collect();
    versions.sort();
    versions.dedup();
    let schema_applied = store.applied_schema_version().await?;
    let schema_known = crate::store::schema_version();
    let mut warnings = Vec::new();
    if versions.len() > 1 {
        warnings.push(format!(
            "mixed versions: live daemons run {} (an upgrade in progress; finish it)",
            versions.join(", ")
        ));
    }
    for d in daemons.iter().filter(|d| d.state == DaemonState::Live) {
        if d.daemon.schema_version < schema_applied {
            warnings.push(format!(
                "{} (version {}) predates the database schema ({} > {}); upgrade it",
                d.daemon.instance_id, d.daemon.version, schema_applied, d.daemon.schema_version
            ));
        }
    }
    if schema_applied > schema_known {
        warnings.push(format!(
            "this pmoflow ({}) is older than the database schema ({schema_applied} > {schema_known})",
            crate::VERSION
        ));
    }
    for d in daemons
        .iter()
        .filter(|d| d.state == DaemonState::Lost && d.runs > 0)
    {
        warnings.push(format!(
            "{} stopped heartbeating {}s ago holding {} runs; a live daemon takes them over",
            d.daemon.instance_id,
            d.heartbeat_age_ms / 1000,
            d.runs
        ));
    }
    Ok(ClusterView {
        backend: store.backend_name(),
        daemons,
        roles,
        versions,
        schema_applied,
        schema_known,
        warnings,
    })
}

impl ClusterView {
    /// The live daemons.
    pub fn live(&self) -> impl Iterator<Item = &DaemonView> {
        self.daemons.iter().filter(|d| d.state == DaemonState::Live)
    }
}
