//! Engine benchmark: prints a table, asserts nothing.
//!
//! Run: `cargo bench -p pmoflow --bench engine` (PostgreSQL from `PMOFLOW_BENCH_PG`, default
//! `postgres://postgres@127.0.0.1:5432/test`; a scratch database is created and dropped).
//!
//! - chain40: one run of 40 sequential no-op steps, end to end (created → finished, as recorded
//!   by the engine), repeated; median and p95. The task shape of Windmill's six-engine
//!   comparison, whose best per-task orchestration overhead was 31 ms.
//! - cluster: 1, 2 and 3 daemons (engines with their own pools and the LISTEN wake-up) on one
//!   PostgreSQL executing 1,000×10 runs created by a separate client, and the trigger→start
//!   latency of a run created elsewhere, with NOTIFY and with polling only.
//! - 1000×10: 1,000 runs of 10 no-op steps triggered in a burst by 8 concurrent callers; wall
//!   time from the first trigger until the last run finishes (run creation included). A step transition is one step
//!   committed as finished and the run moving on to the next step: transitions/s = steps/s.
#![allow(clippy::unwrap_used, missing_docs)]

use std::sync::Arc;
use std::time::{Duration, Instant};

use pmoflow::clock::SystemClock;
use pmoflow::engine::{Engine, EngineConfig, Registry, RunRequest};
use pmoflow::store::{Durability, RunStatus, Store};
use pmoflow::workflow::Catalog;
use sqlx::Connection;
use tokio_util::sync::CancellationToken;

fn workflow(id: &str, steps: usize) -> String {
    let mut wf = format!("id = \"{id}\"\n");
    for i in 0..steps {
        wf.push_str(&format!(
            "\n[[steps]]\nid = \"s{i}\"\naction = \"log\"\nwith = {{ message = \"step {i}\", level = \"trace\" }}\n"
        ));
    }
    wf
}

/// Callers triggering the 1,000 runs at once (a burst of webhook triggers arrives in parallel;
/// a single caller awaiting each trigger in turn measures its own round trips, not the engine).
const CREATORS: usize = 8;

struct Bench {
    engine: Engine,
    shutdown: CancellationToken,
    handle: tokio::task::JoinHandle<()>,
}

async fn start(url: &str, durability: Durability, dir: &std::path::Path) -> Bench {
    let store = Store::open(url, durability).await.unwrap();
    let registry = Arc::new(Registry::default());
    registry.set_catalog(Arc::new(Catalog::load(dir)));
    let shutdown = CancellationToken::new();
    let config = EngineConfig {
        node_id: "bench".into(),
        ..EngineConfig::default()
    };
    let engine = Engine::new(
        store,
        Arc::new(SystemClock),
        config,
        registry,
        shutdown.clone(),
    );
    let e = engine.clone();
    let handle = tokio::spawn(async move { e.run().await.unwrap() });
    Bench {
        engine,
        shutdown,
        handle,
    }
}

async fn chain40(b: &Bench, reps: usize) -> (f64, f64) {
    let store = b.engine.store();
    let mut samples = Vec::new();
    for _ in 0..reps {
        let id = b
            .engine
            .trigger("chain40", &RunRequest::manual(&serde_json::Value::Null))
            .await
            .unwrap()
            .id()
            .to_string();
        let run = loop {
            let run = store.get_run(&id).await.unwrap().unwrap();
            if run.status.is_terminal() {
                break run;
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
        };
        assert_eq!(run.status, RunStatus::Succeeded);
        let ms = (run.finished_at.unwrap() - run.created_at)
            .num_microseconds()
            .unwrap() as f64
            / 1000.0;
        samples.push(ms);
    }
    samples.sort_by(|a, b| a.partial_cmp(b).unwrap());
    let median = samples[samples.len() / 2];
    let p95 = samples[(samples.len() * 95 / 100).min(samples.len() - 1)];
    (median, p95)
}

async fn thousand(b: &Bench) -> Duration {
    let store = b.engine.store();
    let before = store.count_runs(RunStatus::Succeeded).await.unwrap();
    // Create all runs first (the engine claims them as they appear; creation is part of the
    // measured window, as it would be for a burst of triggers).
    let start = Instant::now();
    let mut creators = tokio::task::JoinSet::new();
    for _ in 0..CREATORS {
        let engine = b.engine.clone();
        creators.spawn(async move {
            for _ in 0..1000 / CREATORS {
                engine
                    .trigger("ten", &RunRequest::manual(&serde_json::Value::Null))
                    .await
                    .unwrap();
            }
        });
    }
    creators.join_all().await;
    if std::env::var_os("BENCH_VERBOSE").is_some() {
        eprintln!("  1000 runs created in {:?}", start.elapsed());
    }
    while store.count_runs(RunStatus::Succeeded).await.unwrap() < before + 1000 {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    start.elapsed()
}

async fn pg_scratch(admin: &str) -> Option<(String, String)> {
    let mut conn = sqlx::PgConnection::connect(admin).await.ok()?;
    let name = format!("pmoflow_bench_{}", std::process::id());
    sqlx::query(&format!("DROP DATABASE IF EXISTS {name}"))
        .execute(&mut conn)
        .await
        .ok()?;
    sqlx::query(&format!("CREATE DATABASE {name}"))
        .execute(&mut conn)
        .await
        .ok()?;
    let base = admin.rsplit_once('/')?.0.to_string();
    Some((format!("{base}/{name}"), name))
}

async fn pg_drop(admin: &str, name: &str) {
    if let Ok(mut conn) = sqlx::PgConnection::connect(admin).await {
        let _ = sqlx::query(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
            .execute(&mut conn)
            .await;
    }
}

#[tokio::main]
async fn main() {
    let dir = tempfile::tempdir().unwrap();
    let wf_dir = dir.path().join("workflows");
    std::fs::create_dir_all(&wf_dir).unwrap();
    std::fs::write(wf_dir.join("chain40.toml"), workflow("chain40", 40)).unwrap();
    std::fs::write(wf_dir.join("ten.toml"), workflow("ten", 10)).unwrap();
    std::fs::write(wf_dir.join("one.toml"), workflow("one", 1)).unwrap();
    let admin = std::env::var("PMOFLOW_BENCH_PG")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".into());
    let reps: usize = std::env::var("BENCH_REPS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(30);

    println!(
        "pmoflow engine benchmark ({} cores)",
        std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1)
    );
    println!();
    println!(
        "| backend  | durability | 40-step chain median | p95      | per step | 1000×10 wall | step transitions/s |"
    );
    println!(
        "|----------|------------|----------------------|----------|----------|--------------|--------------------|"
    );
    for (backend, durability) in [
        ("sqlite", Durability::Process),
        ("sqlite", Durability::Fsync),
        ("postgres", Durability::Process),
        ("postgres", Durability::Fsync),
    ] {
        let (url, scratch) = if backend == "sqlite" {
            let path = dir.path().join(format!("{durability:?}.db"));
            (format!("sqlite://{}", path.display()), None)
        } else {
            match pg_scratch(&admin).await {
                Some((url, name)) => (url, Some(name)),
                None => {
                    println!(
                        "| postgres | {durability:?} | PostgreSQL at {admin} unreachable: skipped |"
                    );
                    continue;
                }
            }
        };
        let b = start(&url, durability, &wf_dir).await;
        // Warm up: connections, caches, the workflow version row.
        chain40(&b, 3).await;
        let (median, p95) = chain40(&b, reps).await;
        let wall = thousand(&b).await;
        let steps_per_s = 10_000.0 / wall.as_secs_f64();
        println!(
            "| {backend:<8} | {:<10} | {median:>17.1} ms | {p95:>5.1} ms | {:>5.2} ms | {:>10.2} s | {steps_per_s:>18.0} |",
            format!("{durability:?}").to_lowercase(),
            median / 40.0,
            wall.as_secs_f64(),
        );
        b.shutdown.cancel();
        b.handle.await.unwrap();
        b.engine.store().close().await;
        if let Some(name) = scratch {
            pg_drop(&admin, &name).await;
        }
    }
    cluster(&admin, &wf_dir).await;
}

/// One daemon of the cluster table: an engine with its own pool and, when `listen`, the
/// PostgreSQL wake-up listener the daemon runs (`LISTEN pmoflow_runs` → wake the engine).
async fn member(url: &str, dir: &std::path::Path, listen: bool) -> Bench {
    let b = start(url, Durability::Process, dir).await;
    if listen {
        let mut listener = b.engine.store().wake_listener().await.unwrap().unwrap();
        let (engine, shutdown) = (b.engine.clone(), b.shutdown.clone());
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    r = listener.recv() => if r.is_err() { return } else { engine.wake() },
                    () = shutdown.cancelled() => return,
                }
            }
        });
    }
    b
}

/// Runs created by a client that executes nothing (as `pmoflow trigger` or another daemon's
/// webhook does), executed by 1, 2 and 3 daemons on one PostgreSQL.
async fn cluster(admin: &str, dir: &std::path::Path) {
    let catalog = Catalog::load(dir);
    let ten = catalog.workflows.get("ten").unwrap().clone();
    let ten_src = catalog.sources.get("ten").unwrap().to_string();
    let one = catalog.workflows.get("one").unwrap().clone();
    let one_src = catalog.sources.get("one").unwrap().to_string();
    println!();
    println!(
        "cluster: daemons (engines with their own pools) on one PostgreSQL, runs created by a separate client"
    );
    println!();
    println!(
        "| daemons | 1000×10 wall | step transitions/s | trigger→start median (NOTIFY) | p95      | trigger→start median (polling 250 ms) |"
    );
    println!(
        "|---------|--------------|--------------------|-------------------------------|----------|---------------------------------------|"
    );
    for n in 1..=3 {
        let Some((url, name)) = pg_scratch(admin).await else {
            println!("| {n} | PostgreSQL at {admin} unreachable: skipped |");
            return;
        };
        let client = Store::open(&url, Durability::Process).await.unwrap();
        let latency = |listen: bool| {
            let (url, client, one, one_src) =
                (url.clone(), client.clone(), one.clone(), one_src.clone());
            async move {
                let members: Vec<Bench> = {
                    let mut v = Vec::new();
                    for _ in 0..n {
                        v.push(member(&url, dir, listen).await);
                    }
                    v
                };
                let mut samples = Vec::new();
                for _ in 0..20 {
                    let now = chrono::Utc::now();
                    let req = RunRequest::manual(&serde_json::Value::Null);
                    let id = pmoflow::engine::create_run(&client, &one, &one_src, &req, now)
                        .await
                        .unwrap()
                        .id()
                        .to_string();
                    let run = loop {
                        let run = client.get_run(&id).await.unwrap().unwrap();
                        if run.status.is_terminal() {
                            break run;
                        }
                        tokio::time::sleep(Duration::from_millis(1)).await;
                    };
                    samples.push(
                        (run.started_at.unwrap() - run.created_at)
                            .num_microseconds()
                            .unwrap() as f64
                            / 1000.0,
                    );
                    tokio::time::sleep(Duration::from_millis(fastrand::u64(20..120))).await;
                }
                samples.sort_by(|a, b| a.partial_cmp(b).unwrap());
                (
                    members,
                    samples[samples.len() / 2],
                    samples[samples.len() * 95 / 100],
                )
            }
        };
        let (polling, poll_median, _) = latency(false).await;
        for b in polling {
            b.shutdown.cancel();
            b.handle.await.unwrap();
            b.engine.store().close().await;
        }
        let (members, median, p95) = latency(true).await;
        let before = client.count_runs(RunStatus::Succeeded).await.unwrap();
        let start = Instant::now();
        let mut creators = tokio::task::JoinSet::new();
        for _ in 0..CREATORS {
            let (client, ten, ten_src) = (client.clone(), ten.clone(), ten_src.clone());
            creators.spawn(async move {
                for _ in 0..1000 / CREATORS {
                    let req = RunRequest::manual(&serde_json::Value::Null);
                    pmoflow::engine::create_run(&client, &ten, &ten_src, &req, chrono::Utc::now())
                        .await
                        .unwrap();
                }
            });
        }
        creators.join_all().await;
        while client.count_runs(RunStatus::Succeeded).await.unwrap() < before + 1000 {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        let wall = start.elapsed();
        println!(
            "| {n:>7} | {:>10.2} s | {:>18.0} | {median:>26.1} ms | {p95:>5.1} ms | {poll_median:>34.1} ms |",
            wall.as_secs_f64(),
            10_000.0 / wall.as_secs_f64(),
        );
        for b in members {
            b.shutdown.cancel();
            b.handle.await.unwrap();
            b.engine.store().close().await;
        }
        client.close().await;
        pg_drop(admin, &name).await;
    }
}
