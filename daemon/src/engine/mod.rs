//! The engine: claims due runs from the database and executes them.
//!
//! The database is the queue. A run is due when its `wake_at` has passed and nobody holds a
//! live lease on it; the engine leases due runs (`claim_due`), executes each in its own task
//! (bounded by a semaphore), and parks a run (gives up the lease with a new `wake_at`) when it
//! must wait. There is no in-memory state that another daemon would need: several daemons can
//! share one PostgreSQL database, each with its own `node_id`.

use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use serde_json::Value as Json;
use tokio::sync::{Notify, Semaphore};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::clock::SharedClock;
use crate::store::{ClaimedRun, Created, NewRun, RunStatus, Store, StoreError};
use crate::workflow::Workflow;

mod executor;
pub mod registry;

pub use registry::Registry;

/// Engine settings (resolved from the config file).
#[derive(Debug, Clone)]
pub struct EngineConfig {
    /// This daemon's label (`node_id` in the config; the host name by default). Not unique.
    pub node_id: String,
    /// This process's identity in leases: unique per process (see [`crate::cluster`]).
    pub instance_id: String,
    /// Runs executed at once.
    pub max_concurrent_runs: usize,
    /// How often the database is polled for due runs created by other processes.
    pub poll_interval: Duration,
    /// Lease length; a crashed daemon's runs are taken over after this. Renewed by the
    /// heartbeat every quarter of it.
    pub lease: chrono::Duration,
    /// How long in-flight steps may take to finish on shutdown.
    pub shutdown_grace: Duration,
    /// Time zone for `now` and times shown to templates.
    pub timezone: chrono_tz::Tz,
    /// Mail, outbox and secrets configuration.
    pub services: Arc<crate::actions::StepServices>,
    /// A step output larger than this (serialised JSON, bytes) fails the step.
    pub max_output: usize,
}

/// `[engine] max_output_kib` by default: 8 MiB.
pub const DEFAULT_MAX_OUTPUT: usize = 8 << 20;

impl Default for EngineConfig {
    fn default() -> Self {
        let instance = crate::cluster::Instance::new(None);
        Self {
            node_id: instance.label,
            instance_id: instance.id,
            max_concurrent_runs: 256,
            poll_interval: Duration::from_millis(250),
            lease: chrono::Duration::seconds(DEFAULT_LEASE_SECS),
            shutdown_grace: Duration::from_secs(10),
            timezone: chrono_tz::Asia::Tokyo,
            max_output: DEFAULT_MAX_OUTPUT,
            services: Arc::default(),
        }
    }
}

/// The default lease: a daemon that dies has its runs continued elsewhere within this (plus
/// one poll interval).
pub const DEFAULT_LEASE_SECS: i64 = 8;

/// The host name, this daemon's label unless configured otherwise.
pub fn default_node_id() -> String {
    crate::cluster::host_name()
}

/// What every task of the engine shares: the store, the clock, the configuration, the registry
/// of loaded workflows, the wakers and the set of runs this daemon is executing.
pub(crate) struct EngineCore {
    pub(crate) store: Store,
    pub(crate) clock: SharedClock,
    pub(crate) config: EngineConfig,
    pub(crate) registry: Arc<Registry>,
    pub(crate) shutdown: CancellationToken,
    wakers: crate::wake::Wakers,
    /// Runs this daemon is executing now, each with the token that stops it when its lease is
    /// lost; only their leases are renewed. A std Mutex: held for an insert/remove/copy, never
    /// across an await.
    active: std::sync::Mutex<ActiveRuns>,
    /// Shared HTTP client for the `http` action.
    pub(crate) http: reqwest::Client,
}

impl EngineCore {
    pub(crate) fn wake_poller(&self) {
        self.wakers.wake_runs();
    }

    /// Wakes the delivery worker (a commit queued messages).
    pub(crate) fn wake_outbox(&self) {
        self.wakers.wake_outbox();
    }

    fn active(&self) -> std::sync::MutexGuard<'_, ActiveRuns> {
        self.active.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// The runs this daemon executes, by id. A run that parks can be claimed here again before
/// the task that parked it has finished: each execution is numbered, so that the old task's
/// exit removes its own entry and never the new one's (whose lease must go on being renewed).
#[derive(Default)]
struct ActiveRuns {
    next: u64,
    runs: std::collections::HashMap<String, (u64, CancellationToken)>,
}

impl ActiveRuns {
    /// Registers an execution of `id`; returns its number for [`ActiveRuns::finished`].
    fn started(&mut self, id: &str, lost: CancellationToken) -> u64 {
        self.next += 1;
        self.runs.insert(id.to_string(), (self.next, lost));
        self.next
    }

    fn finished(&mut self, id: &str, execution: u64) {
        if self.runs.get(id).is_some_and(|(n, _)| *n == execution) {
            self.runs.remove(id);
        }
    }
}

/// The engine handle.
#[derive(Clone)]
pub struct Engine {
    core: Arc<EngineCore>,
}

/// Why a run could not be started.
#[derive(Debug, thiserror::Error)]
pub enum TriggerError {
    /// No such workflow in the catalog.
    #[error("unknown workflow `{0}`")]
    UnknownWorkflow(String),
    /// Inputs not declared by the workflow.
    #[error("workflow `{workflow}` has no input `{input}` (declared inputs: {declared})")]
    UnknownInput {
        /// Workflow id.
        workflow: String,
        /// The offending key.
        input: String,
        /// What it does declare.
        declared: String,
    },
    /// Inputs must be a JSON object.
    #[error("inputs must be a JSON object, got {0}")]
    NotAnObject(String),
    /// The database failed.
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// Merges `given` over the workflow's default inputs, rejecting undeclared keys.
pub fn resolve_inputs(wf: &Workflow, given: &Json) -> Result<Json, TriggerError> {
    let mut inputs = wf.inputs.clone();
    match given {
        Json::Null => {}
        Json::Object(map) => {
            for (k, v) in map {
                if !wf.inputs.contains_key(k) {
                    return Err(TriggerError::UnknownInput {
                        workflow: wf.id.clone(),
                        input: k.clone(),
                        declared: if wf.inputs.is_empty() {
                            "none".into()
                        } else {
                            wf.inputs.keys().cloned().collect::<Vec<_>>().join(", ")
                        },
                    });
                }
                inputs.insert(k.clone(), v.clone());
            }
        }
        other => return Err(TriggerError::NotAnObject(other.to_string())),
    }
    Ok(Json::Object(inputs))
}

/// What starts a run: its inputs and where it came from.
#[derive(Debug, Clone, Copy)]
pub struct RunRequest<'a> {
    /// Inputs overriding the workflow's defaults (an object, or null).
    pub inputs: &'a Json,
    /// `manual`, `schedule`, `api`, …
    pub trigger_kind: &'a str,
    /// At most one run per (workflow, key).
    pub dedup_key: Option<&'a str>,
    /// The fire time a schedule meant.
    pub scheduled_at: Option<DateTime<Utc>>,
    /// `Pending` (the normal case), `Queued` or `Skipped`.
    pub status: RunStatus,
    /// When a pending run becomes due (default: now).
    pub wake_at: Option<DateTime<Utc>>,
    /// Why a skipped run did not run.
    pub error: Option<&'a str>,
}

impl<'a> RunRequest<'a> {
    /// A manual run with these inputs.
    pub fn manual(inputs: &'a Json) -> Self {
        Self {
            inputs,
            trigger_kind: "manual",
            dedup_key: None,
            scheduled_at: None,
            status: RunStatus::Pending,
            wake_at: None,
            error: None,
        }
    }
}

/// Records the workflow's version and creates a run of it. Used by the engine, the CLI and
/// (later) the HTTP API; it only needs the store.
pub async fn create_run(
    store: &Store,
    wf: &Workflow,
    source: &str,
    req: &RunRequest<'_>,
    now: DateTime<Utc>,
) -> Result<Created, TriggerError> {
    let inputs = resolve_inputs(wf, req.inputs)?;
    store
        .save_version(
            &wf.id,
            &wf.hash,
            &wf.path.display().to_string(),
            source,
            now,
        )
        .await?;
    Ok(store
        .create_run(&NewRun {
            workflow_id: &wf.id,
            version_hash: &wf.hash,
            trigger_kind: req.trigger_kind,
            dedup_key: req.dedup_key,
            inputs: &inputs,
            scheduled_at: req.scheduled_at,
            now,
            status: req.status,
            wake_at: req.wake_at,
            error: req.error,
        })
        .await?)
}

impl Engine {
    /// A new engine over `store`, executing the workflows the registry knows.
    pub fn new(
        store: Store,
        clock: SharedClock,
        config: EngineConfig,
        registry: Arc<Registry>,
        shutdown: CancellationToken,
    ) -> Self {
        // Building a client fails only when the TLS backend cannot start, in which case the
        // default client cannot either.
        let http = crate::egress::client(
            config.services.egress.clone(),
            Duration::from_secs(30),
            concat!("pmoflow/", env!("CARGO_PKG_VERSION")),
        )
        .unwrap_or_default();
        Self {
            core: Arc::new(EngineCore {
                store,
                clock,
                config,
                registry,
                shutdown,
                wakers: crate::wake::Wakers::new(),
                active: std::sync::Mutex::default(),
                http,
            }),
        }
    }

    /// The store.
    pub fn store(&self) -> &Store {
        &self.core.store
    }

    /// Notified whenever a step commits outbox messages (the delivery worker waits on it).
    pub fn outbox_wake(&self) -> Arc<Notify> {
        self.core.wakers.outbox()
    }

    /// This engine's wakers, for the parts of the daemon that commit work it should see.
    pub fn wakers(&self) -> crate::wake::Wakers {
        self.core.wakers.clone()
    }

    /// The engine's configuration.
    pub fn config(&self) -> &EngineConfig {
        &self.core.config
    }

    /// Wakes the claim loop (a run became due).
    pub fn wake(&self) {
        self.core.wake_poller();
    }

    /// The registry.
    pub fn registry(&self) -> &Arc<Registry> {
        &self.core.registry
    }

    /// Starts a run of a workflow in the live catalog and wakes the engine.
    pub async fn trigger(
        &self,
        workflow_id: &str,
        req: &RunRequest<'_>,
    ) -> Result<Created, TriggerError> {
        let catalog = self.core.registry.catalog();
        let unknown = || TriggerError::UnknownWorkflow(workflow_id.to_string());
        let wf = catalog.workflows.get(workflow_id).ok_or_else(unknown)?;
        let source = catalog.sources.get(workflow_id).ok_or_else(unknown)?;
        let created = create_run(&self.core.store, wf, source, req, self.core.clock.now()).await?;
        self.core.wake_poller();
        Ok(created)
    }

    /// Executes the due runs one after another until none is due at the clock's time. For
    /// `pmoflow simulate`, which drives a simulated clock; the daemon uses [`Engine::run`].
    /// Returns how many executions it made.
    pub async fn run_due(&self) -> Result<usize, StoreError> {
        let core = &self.core;
        let mut n = 0;
        loop {
            let claim = core
                .store
                .claim(
                    &core.config.instance_id,
                    core.clock.now(),
                    core.config.lease,
                    64,
                )
                .await?;
            if claim.runs.is_empty() {
                return Ok(n);
            }
            for c in claim.runs {
                n += 1;
                executor::execute(core.clone(), c.run, c.fresh).await;
            }
        }
    }

    /// Runs until the shutdown token is cancelled, then lets in-flight steps finish within the
    /// grace period.
    pub async fn run(&self) -> Result<(), StoreError> {
        let core = &self.core;
        let cfg = &core.config;
        let permits = Arc::new(Semaphore::new(cfg.max_concurrent_runs));
        let mut tasks = JoinSet::new();
        let mut renewer = tokio::spawn(heartbeat(core.clone()));
        let mut db_failures = 0u32;
        loop {
            if core.shutdown.is_cancelled() {
                break;
            }
            while tasks.try_join_next().is_some() {}
            let free = permits.available_permits();
            let mut claimed_all = false;
            // The next wake-up as the claim saw it; without a claim (all permits taken, or the
            // claim failed) it is asked for separately.
            let mut next_wake = None;
            let mut claimed = false;
            if free > 0 {
                let limit = i64::try_from(free.min(128)).unwrap_or(128);
                match core
                    .store
                    .claim(&cfg.instance_id, core.clock.now(), cfg.lease, limit)
                    .await
                {
                    Ok(claim) => {
                        db_failures = 0;
                        claimed = true;
                        next_wake = claim.next_wake;
                        claimed_all = i64::try_from(claim.runs.len()).unwrap_or(0) == limit;
                        for ClaimedRun { run, fresh } in claim.runs {
                            let id = run.id.clone();
                            let Ok(permit) = permits.clone().acquire_owned().await else {
                                break;
                            };
                            let core = core.clone();
                            let lost = CancellationToken::new();
                            let execution = core.active().started(&id, lost.clone());
                            tasks.spawn(async move {
                                tokio::select! {
                                    () = executor::execute(core.clone(), run, fresh) => {}
                                    // Fencing: the lease is gone (or may be): stop acting on it.
                                    () = lost.cancelled() => {
                                        tracing::warn!(run = %id, "lease lost: the run's step is abandoned here (another daemon continues the run)");
                                    }
                                }
                                core.active().finished(&id, execution);
                                drop(permit);
                            });
                        }
                    }
                    Err(err) => {
                        db_failures += 1;
                        tracing::error!(error = %err, failures = db_failures, "cannot claim due runs; retrying");
                    }
                }
            }
            if claimed_all {
                continue;
            }
            let now = core.clock.now();
            let mut deadline = now
                + chrono::Duration::from_std(cfg.poll_interval).unwrap_or(chrono::Duration::MAX);
            if claimed {
                if let Some(next) = next_wake {
                    deadline = deadline.min(next);
                }
            } else if db_failures == 0
                && let Ok(Some(next)) = core.store.next_wake().await
            {
                deadline = deadline.min(next);
            }
            if deadline <= now && free == 0 {
                // Everything is busy: wait for a task to finish rather than spin.
                tokio::select! {
                    _ = tasks.join_next() => {}
                    () = core.shutdown.cancelled() => {}
                }
                continue;
            }
            tokio::select! {
                () = core.clock.sleep_until(deadline) => {}
                () = core.wakers.runs().notified() => {}
                () = core.shutdown.cancelled() => {}
                Some(_) = tasks.join_next(), if free == 0 => {}
            }
        }
        tracing::info!(
            in_flight = tasks.len(),
            "engine stopping: no new runs are claimed"
        );
        let drained = tokio::time::timeout(cfg.shutdown_grace, async {
            while tasks.join_next().await.is_some() {}
        })
        .await;
        if drained.is_err() {
            tracing::warn!(
                in_flight = tasks.len(),
                "grace period over; remaining steps are abandoned and will be retried on restart"
            );
            tasks.shutdown().await;
        }
        renewer.abort();
        let _ = (&mut renewer).await;
        // Leases of abandoned runs (and outbox messages, roles) are given up, and the stop is
        // recorded, so that another daemon (or the next start) continues at once.
        if let Err(e) = core
            .store
            .daemon_stopped(&cfg.instance_id, core.clock.now())
            .await
        {
            tracing::warn!(error = %e, "cannot record the stop; other daemons take over when the leases expire");
        }
        Ok(())
    }
}

/// The heartbeat: every quarter of the lease, records that this daemon is alive and renews
/// the leases of the runs it executes, in one transaction. This is also where fencing starts:
/// a run whose lease another daemon now holds is stopped at once, and when no heartbeat has
/// succeeded for the lease minus one heartbeat (the database is unreachable: another daemon
/// may take the runs over soon) every run here is stopped.
async fn heartbeat(core: Arc<EngineCore>) {
    let lease = core.config.lease.to_std().unwrap_or(Duration::from_secs(8));
    let every = lease / 4;
    // The start of the last heartbeat that reached the database: leases run to it + lease.
    let mut last_ok = tokio::time::Instant::now();
    let mut fenced = false;
    loop {
        // Stop acting one heartbeat before the leases could expire, whatever the database does.
        let fence_at = last_ok + lease - every;
        tokio::select! {
            () = tokio::time::sleep(every) => {}
            () = tokio::time::sleep_until(fence_at), if !fenced => {
                fence(&core, last_ok.elapsed());
                fenced = true;
                continue;
            }
        }
        let started = tokio::time::Instant::now();
        let now = core.clock.now();
        let until = now + core.config.lease;
        let mut ids: Vec<String> = core.active().runs.keys().cloned().collect();
        ids.sort();
        let beat = tokio::select! {
            r = tokio::time::timeout(
                every,
                core.store.heartbeat(&core.config.instance_id, now, &ids, until),
            ) => r,
            () = tokio::time::sleep_until(fence_at), if !fenced => {
                fence(&core, last_ok.elapsed());
                fenced = true;
                continue;
            }
        };
        match beat {
            Ok(Ok(taken)) => {
                last_ok = started;
                if fenced {
                    tracing::info!("heartbeat reached the database again");
                    fenced = false;
                }
                // Only a lease another daemon holds is lost. A run with no lease at all has
                // given it up itself (its task parked or finished it while this heartbeat ran).
                let active = core.active();
                for id in &taken {
                    if let Some((_, lost)) = active.runs.get(id) {
                        tracing::warn!(run = %id, "another daemon holds this run's lease now");
                        lost.cancel();
                    }
                }
            }
            Ok(Err(err)) => {
                tracing::error!(error = %err, "heartbeat failed: cannot renew run leases")
            }
            Err(_) => tracing::error!("heartbeat timed out: cannot renew run leases"),
        }
    }
}

/// Stops every run this daemon executes: its leases may be taken over any moment now.
fn fence(core: &EngineCore, silent: Duration) {
    let active = core.active();
    tracing::error!(
        runs = active.runs.len(),
        silent_ms = silent.as_millis() as u64,
        "no heartbeat reached the database for most of the lease: stopping every run here, since another daemon may take them over"
    );
    for (_, lost) in active.runs.values() {
        lost.cancel();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_run_claimed_again_keeps_its_entry_when_the_old_execution_ends() {
        let mut active = ActiveRuns::default();
        let (old, new) = (CancellationToken::new(), CancellationToken::new());
        let first = active.started("r1", old);
        // Parked, claimed again here before the first task has exited.
        let second = active.started("r1", new.clone());
        active.finished("r1", first);
        let (n, token) = active
            .runs
            .get("r1")
            .expect("the new execution is still active");
        assert_eq!(*n, second);
        token.cancel();
        assert!(new.is_cancelled(), "its own token is the one kept");
        active.finished("r1", second);
        assert!(active.runs.is_empty());
    }
}
