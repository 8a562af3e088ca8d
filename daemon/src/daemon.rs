//! The long-running daemon: one store, one engine, a workflows watcher and the scheduler, under
//! one shutdown token. The first fatal error cancels everything; shutdown joins everything.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::clock::SharedClock;
use crate::config::Config;
use crate::engine::{Engine, Registry};
use crate::store::{Store, StoreError};
use crate::workflow::Catalog;

pub mod scheduler;

/// Why the daemon stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    /// The database could not be opened or failed for good.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The configuration names secrets that cannot be read.
    #[error("{0}")]
    Config(String),
    /// A task panicked.
    #[error("internal task failed: {0}")]
    Task(String),
}

/// Loads the catalog and logs every problem with its location. Invalid files are skipped; the
/// rest keep running.
pub fn load_catalog(config: &Config) -> Catalog {
    let catalog = Catalog::load(&config.workflows_dir);
    for d in &catalog.diagnostics {
        tracing::error!(file = %d.path.display(), line = d.line, col = d.col, hint = d.hint.as_deref().unwrap_or(""), "invalid workflow file: {}", d.message);
    }
    catalog
}

/// Runs the daemon until `shutdown` is cancelled.
pub async fn run(
    config: Config,
    clock: SharedClock,
    shutdown: CancellationToken,
) -> Result<(), DaemonError> {
    tracing::info!(
        database = %config.redacted_database_url(),
        workflows = %config.workflows_dir.display(),
        durability = ?config.durability,
        node = %config.engine.node_id,
        instance = %config.engine.instance_id,
        "pmoflow starting"
    );
    if !config.secret_errors.is_empty() {
        return Err(DaemonError::Config(config.secret_errors.join("\n")));
    }
    // One daemon per SQLite file; held until this function returns (or the process dies).
    let daemon_lock = crate::store::DaemonLock::acquire(
        &config.database_url,
        &format!(
            "pid {} on {}, node {}, instance {}, since {}",
            std::process::id(),
            crate::engine::default_node_id(),
            config.engine.node_id,
            config.engine.instance_id,
            clock.now().to_rfc3339()
        ),
    )?;
    let store = Store::open(&config.database_url, config.durability).await?;
    register(&store, &config, &clock, daemon_lock.is_some()).await?;
    let mut config = config;
    load_plugins(&mut config, &store).await?;
    let registry = Arc::new(Registry::default());
    let catalog = load_catalog(&config);
    tracing::info!(
        workflows = catalog.workflows.len(),
        invalid_files = catalog.diagnostics.len(),
        "workflows loaded"
    );
    record_catalog(&store, &config.engine.node_id, &catalog, clock.now()).await;
    registry.set_catalog(Arc::new(catalog));

    let engine = Engine::new(
        store.clone(),
        clock.clone(),
        config.engine.clone(),
        registry.clone(),
        shutdown.clone(),
    );
    let mut tasks: JoinSet<Result<(), DaemonError>> = JoinSet::new();
    {
        let engine = engine.clone();
        tasks.spawn(async move { Ok(engine.run().await?) });
    }
    {
        let (config, registry, shutdown) = (config.clone(), registry.clone(), shutdown.clone());
        let (store, clock) = (store.clone(), clock.clone());
        tasks.spawn(async move {
            watch_workflows(&config, &registry, &store, &clock, &shutdown).await;
            Ok(())
        });
    }
    // One live token source per [oauth2.NAME], shared by the poller and the outbox.
    let tokens = crate::oauth::TokenSources::new(&config.oauth2, &config.engine.services.metrics);
    spawn_wake_listener(&mut tasks, &store, &engine, &shutdown);
    spawn_outbox(
        &mut tasks, &config, &store, &clock, &engine, &tokens, &shutdown,
    );
    spawn_inbound(
        &mut tasks, &config, &store, &clock, &engine, &tokens, &shutdown,
    );
    {
        let (engine, clock, shutdown) = (engine.clone(), clock.clone(), shutdown.clone());
        let tz = config.timezone;
        // One scheduler across the daemons (fires are keyed, so two could never double a run;
        // one saves the work and the contention).
        let role = crate::cluster::Role {
            name: "scheduler".into(),
            holder: config.engine.instance_id.clone(),
            ttl: config
                .engine
                .lease
                .to_std()
                .unwrap_or(Duration::from_secs(8)),
            store: store.clone(),
            clock: clock.clone(),
        };
        tasks.spawn(async move {
            role.run(shutdown.clone(), |held| {
                let (engine, clock) = (engine.clone(), clock.clone());
                async move { scheduler::run(&engine, &clock, tz, &held).await }
            })
            .await;
            shutdown.cancelled().await;
            Ok(())
        });
    }

    if config.http.enabled {
        let state = crate::http::AppState::new(
            store.clone(),
            clock.clone(),
            config.engine.services.clone(),
            Some(engine.clone()),
            config.http.tokens.clone(),
        )
        .await?
        .with_refusal_limit(config.http.refusals_per_minute);
        let (listen, limits) = (config.http.listen, config.http.connections);
        let shutdown = shutdown.clone();
        tasks.spawn(async move {
            crate::http::serve(listen, limits, state, shutdown.clone()).await;
            // A listener that could not start leaves the rest running.
            shutdown.cancelled().await;
            Ok(())
        });
    }

    let result = supervise(tasks, &shutdown).await;
    store.close().await;
    tracing::info!("pmoflow stopped");
    result
}

/// Records this daemon in `daemons`. On SQLite the file lock proves no other daemon runs, so
/// every lease left by an earlier process (killed, or stopped mid-step) is free at once; on
/// PostgreSQL other daemons may be running, and leases are only taken over once they expire.
async fn register(
    store: &Store,
    config: &Config,
    clock: &SharedClock,
    sole_daemon: bool,
) -> Result<(), DaemonError> {
    if sole_daemon {
        let released = store.release_all_leases().await?;
        if released > 0 {
            tracing::info!(
                runs = released,
                "took over the runs an earlier daemon on this database was executing"
            );
        }
    }
    let now = clock.now();
    store
        .register_daemon(&crate::store::DaemonRow {
            instance_id: config.engine.instance_id.clone(),
            label: config.engine.node_id.clone(),
            host: crate::cluster::host_name(),
            pid: i64::from(std::process::id()),
            version: crate::VERSION.to_string(),
            schema_version: crate::store::schema_version(),
            started_at: now,
            heartbeat_at: now,
            stopped_at: None,
        })
        .await?;
    if let Ok(Some(db_now)) = store.database_time().await {
        let skew = (clock.now() - db_now).num_milliseconds();
        if skew.abs() > 1000 {
            tracing::warn!(
                skew_ms = skew,
                "this host's clock differs from the database server's by more than a second; leases compare clocks across hosts: keep every host on NTP"
            );
        }
    }
    let daemons = store.daemons().await?;
    let live = live_daemons(&daemons, now, config.engine.lease);
    let versions: std::collections::BTreeSet<&str> =
        live.iter().map(|d| d.version.as_str()).collect();
    if versions.len() > 1 {
        tracing::warn!(
            versions = ?versions,
            "daemons of different versions share this database (an upgrade in progress?); see pmoflow cluster"
        );
    }
    Ok(())
}

/// The daemons whose heartbeat is younger than the lease and that have not stopped.
pub fn live_daemons(
    daemons: &[crate::store::DaemonRow],
    now: chrono::DateTime<chrono::Utc>,
    lease: chrono::Duration,
) -> Vec<&crate::store::DaemonRow> {
    daemons
        .iter()
        .filter(|d| d.stopped_at.is_none() && now - d.heartbeat_at <= lease)
        .collect()
}

/// Loads the shipped plugins and those under `plugins_dir` (which need not exist) into the
/// step services. Compiling them (first start, or a new version) takes seconds: done before the
/// catalog is loaded, so that `workflows loaded` means the daemon is about to serve. A plugin
/// that cannot be loaded is logged; its steps fail with the reason.
async fn load_plugins(config: &mut Config, store: &Store) -> Result<(), DaemonError> {
    let dir = config.plugins_dir.clone();
    let cache = config.plugin_cache_dir.clone();
    let grants = config.plugin_grants.clone();
    let loaded = tokio::task::spawn_blocking(move || {
        crate::plugins::PluginHost::load(&dir, &grants, Some(&cache))
    })
    .await
    .map_err(|e| DaemonError::Task(e.to_string()))?;
    match loaded {
        Ok((mut host, mut problems)) => {
            problems.extend(host.prepare().await);
            let host = host.with_kv_store(store.clone());
            for p in problems {
                tracing::error!("plugin not loaded: {p}");
            }
            tracing::info!(plugins = ?host.names(), "plugins ready");
            let mut services = (*config.engine.services).clone();
            services.plugins = Some(Arc::new(host));
            config.engine.services = Arc::new(services);
        }
        Err(e) => tracing::error!(error = %e, "plugins unavailable"),
    }
    Ok(())
}

/// On PostgreSQL: `LISTEN` for runs created by another daemon or the CLI, so they start within
/// milliseconds rather than at the next poll. Reconnects after an error; polling covers the
/// gap. A little jitter keeps many daemons from claiming in the same instant.
fn spawn_wake_listener(
    tasks: &mut JoinSet<Result<(), DaemonError>>,
    store: &Store,
    engine: &Engine,
    shutdown: &CancellationToken,
) {
    let (store, engine, shutdown) = (store.clone(), engine.clone(), shutdown.clone());
    tasks.spawn(async move {
        let mut backoff = Duration::from_secs(1);
        loop {
            let mut listener = match store.wake_listener().await {
                Ok(Some(l)) => l,
                // SQLite: nothing to listen to. (A task that ends stops the daemon: wait.)
                Ok(None) => {
                    shutdown.cancelled().await;
                    return Ok(());
                }
                Err(e) => {
                    tracing::warn!(error = %e, "cannot LISTEN for wake-ups; polling only, retrying in {}s", backoff.as_secs());
                    tokio::select! {
                        () = tokio::time::sleep(backoff) => {}
                        () = shutdown.cancelled() => return Ok(()),
                    }
                    backoff = (backoff * 2).min(Duration::from_secs(60));
                    continue;
                }
            };
            tracing::info!(channel = crate::store::WAKE_RUNS, "listening for wake-ups");
            backoff = Duration::from_secs(1);
            loop {
                tokio::select! {
                    r = listener.recv() => match r {
                        Ok(_) => {
                            tokio::time::sleep(Duration::from_millis(fastrand::u64(0..20))).await;
                            engine.wake();
                        }
                        Err(e) => {
                            tracing::warn!(error = %e, "wake-up listener lost; reconnecting");
                            break;
                        }
                    },
                    () = shutdown.cancelled() => return Ok(()),
                }
            }
        }
    });
}

/// The delivery worker: emails to SMTP (or `.eml` files), webhooks over HTTP.
fn spawn_outbox(
    tasks: &mut JoinSet<Result<(), DaemonError>>,
    config: &Config,
    store: &Store,
    clock: &SharedClock,
    engine: &Engine,
    tokens: &crate::oauth::TokenSources,
    shutdown: &CancellationToken,
) {
    let services = config.engine.services.clone();
    match &services.mail.smtp {
        Some(smtp) => {
            tracing::info!(host = %smtp.host, port = smtp.port, tls = ?smtp.tls, from = %services.mail.from, "email goes to SMTP")
        }
        None => {
            tracing::info!(dir = %services.mail.outbox_dir.display(), from = %services.mail.from, "no [smtp] configured: emails are written as .eml files")
        }
    }
    let delivery = Arc::new(crate::outbox::DeliveryConfig {
        mail: services.mail.clone(),
        outbox: config.outbox.clone(),
        secrets: services.secrets.clone(),
        egress: services.egress.clone(),
    });
    let worker = crate::outbox::worker::run(
        store.clone(),
        clock.clone(),
        delivery,
        tokens.clone(),
        crate::outbox::worker::Owner {
            instance_id: config.engine.instance_id.clone(),
            lease: config.engine.lease,
        },
        engine.outbox_wake(),
        shutdown.clone(),
    );
    tasks.spawn(async move {
        worker.await;
        Ok(())
    });
}

/// Inbound mail: the IMAP poller (if configured) stores and processes; a second loop processes
/// what other intakes stored (`pmoflow inbound --queue`, a crash before processing).
fn spawn_inbound(
    tasks: &mut JoinSet<Result<(), DaemonError>>,
    config: &Config,
    store: &Store,
    clock: &SharedClock,
    engine: &Engine,
    tokens: &crate::oauth::TokenSources,
    shutdown: &CancellationToken,
) {
    let intake = crate::inbound::intake::Intake::new(
        store.clone(),
        clock.clone(),
        config.engine.services.clone(),
    )
    .with_wakers(engine.wakers());
    let max_size = config.engine.services.replies.max_size;
    if let Some(imap) = config.imap.clone() {
        let (store, clock, intake, shutdown) = (
            store.clone(),
            clock.clone(),
            intake.clone(),
            shutdown.clone(),
        );
        let failpoint = config.failpoint.clone();
        let tokens = tokens.clone();
        // One poller per mailbox across the daemons sharing the database.
        let role = crate::cluster::Role {
            name: format!("imap:{}@{}/{}", imap.username, imap.host, imap.mailbox),
            holder: config.engine.instance_id.clone(),
            ttl: config
                .engine
                .lease
                .to_std()
                .unwrap_or(Duration::from_secs(8)),
            store: store.clone(),
            clock: clock.clone(),
        };
        tasks.spawn(async move {
            role.run(shutdown.clone(), |held| {
                let poller = crate::inbound::imap::Poller {
                    cfg: imap.clone(),
                    store: store.clone(),
                    clock: clock.clone(),
                    intake: intake.clone(),
                    tokens: tokens.clone(),
                    max_size,
                    failpoint: failpoint.clone(),
                };
                crate::inbound::imap::run(poller, held)
            })
            .await;
            shutdown.cancelled().await;
            Ok(())
        });
    }
    let shutdown = shutdown.clone();
    // (The crash-test failpoint needs the poller's store → abort window to itself.)
    let crash_test = config.failpoint.as_deref() == Some("after-intake");
    let every = config.engine.poll_interval.max(Duration::from_millis(500)) * 4;
    tasks.spawn(async move {
        loop {
            if crash_test {
                shutdown.cancelled().await;
                return Ok(());
            }
            if let Err(e) = intake.process_pending().await {
                tracing::warn!(error = %e, "processing inbound mail failed; it stays pending");
            }
            tokio::select! {
                () = tokio::time::sleep(every) => {}
                () = shutdown.cancelled() => return Ok(()),
            }
        }
    });
}

/// Waits for every task. The first to end (or fail) begins the shutdown of all; the first
/// error is the daemon's.
async fn supervise(
    mut tasks: JoinSet<Result<(), DaemonError>>,
    shutdown: &CancellationToken,
) -> Result<(), DaemonError> {
    let mut result = Ok(());
    while let Some(joined) = tasks.join_next().await {
        let outcome = joined
            .map_err(|e| DaemonError::Task(e.to_string()))
            .and_then(|r| r);
        if let Err(err) = outcome {
            tracing::error!(error = %err, "fatal error; shutting down");
            shutdown.cancel();
            if result.is_ok() {
                result = Err(err);
            }
        } else {
            // Any task ending means shutdown has begun; make sure the others follow.
            shutdown.cancel();
        }
    }
    result
}

/// Watches the workflows directory (with `data/` and `calendar/`) and swaps the catalog when
/// anything changed: file-system events reload within ~100 ms (events are coalesced, and editors'
/// temp and hidden files are ignored by the loader); a periodic re-read every `reload_interval`
/// catches anything the watcher misses (network file systems).
async fn watch_workflows(
    config: &Config,
    registry: &Registry,
    store: &Store,
    clock: &SharedClock,
    shutdown: &CancellationToken,
) {
    use notify::Watcher;
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<()>();
    let rescan = tx.clone();
    let mut watcher = notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
        if event.is_ok_and(|e| !e.kind.is_access()) {
            let _ = tx.send(());
        }
    });
    match &mut watcher {
        Ok(w) => {
            if let Err(err) = w.watch(&config.workflows_dir, notify::RecursiveMode::Recursive) {
                tracing::warn!(dir = %config.workflows_dir.display(), error = %err, "cannot watch the workflows directory; re-reading it every reload_interval");
            }
        }
        Err(err) => {
            tracing::warn!(error = %err, "file watching unavailable; re-reading the workflows directory every reload_interval")
        }
    }
    let mut last = fingerprint(&registry.catalog());
    // A file dropped between the first load and the watch being in place raised no event:
    // look once more now that the watch is there.
    let _ = rescan.send(());
    loop {
        tokio::select! {
            () = tokio::time::sleep(config.reload_interval) => {}
            Some(()) = rx.recv() => {
                // Coalesce a burst of events (write, rename, chmod) into one reload.
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                while rx.try_recv().is_ok() {}
            }
            () = shutdown.cancelled() => return,
        }
        let dir = config.workflows_dir.clone();
        let previous = registry.catalog();
        let Ok(catalog) =
            tokio::task::spawn_blocking(move || Catalog::reload(&dir, &previous)).await
        else {
            continue;
        };
        let print = fingerprint(&catalog);
        if print != last {
            for d in &catalog.diagnostics {
                tracing::error!(file = %d.path.display(), line = d.line, col = d.col, hint = d.hint.as_deref().unwrap_or(""), "invalid workflow file: {}", d.message);
            }
            tracing::info!(
                workflows = catalog.workflows.len(),
                invalid_files = catalog.diagnostics.len(),
                "workflows reloaded"
            );
            record_catalog(store, &config.engine.node_id, &catalog, clock.now()).await;
            registry.set_catalog(Arc::new(catalog));
            last = print;
        }
    }
}

/// Tells the database what this daemon runs, for `pmoflow workflows` (best effort: a failure is
/// logged, nothing else depends on it).
async fn record_catalog(
    store: &Store,
    node_id: &str,
    catalog: &Catalog,
    now: chrono::DateTime<chrono::Utc>,
) {
    let workflows: Vec<(String, String, String)> = catalog
        .workflows
        .values()
        .map(|w| (w.id.clone(), w.hash.clone(), w.path.display().to_string()))
        .collect();
    let errors: Vec<(String, String)> = catalog
        .diagnostics
        .iter()
        .map(|d| (d.path.display().to_string(), d.to_string()))
        .collect();
    if let Err(err) = store
        .record_catalog(node_id, &workflows, &errors, now)
        .await
    {
        tracing::warn!(error = %err, "cannot record the loaded workflows in the database");
    }
}

type Fingerprint = (BTreeMap<String, String>, Vec<String>, String, String);

fn fingerprint(catalog: &Catalog) -> Fingerprint {
    (
        catalog
            .workflows
            .iter()
            .map(|(k, w)| (k.clone(), w.hash.clone()))
            .collect(),
        catalog
            .diagnostics
            .iter()
            .map(ToString::to_string)
            .collect(),
        catalog.data.to_string(),
        format!("{:?}", catalog.calendar),
    )
}
