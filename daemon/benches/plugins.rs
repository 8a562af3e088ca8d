//! Plugin benchmark: per-invocation overhead of a no-op plugin step (fresh store, instantiate,
//! call, teardown) with the shipped `echo` component, and its cold load (compile) time. Prints
//! figures; asserts nothing.
//!
//! Run: `cargo bench -p pmoflow --bench plugins`
#![allow(clippy::unwrap_used, missing_docs)]

use std::time::{Duration, Instant};

use pmoflow::plugins::{Grants, PluginCall, PluginHost};

#[tokio::main(flavor = "current_thread")]
async fn main() {
    // Nothing installed: the shipped plugins (built into the binary) only.
    let dir = tempfile::tempdir().unwrap();
    let dir = dir.path();
    let cache = tempfile::tempdir().unwrap();
    let start = Instant::now();
    let grants = Grants::default();
    let (mut host, mut problems) = PluginHost::load(dir, &grants, Some(cache.path())).unwrap();
    let load = start.elapsed();
    problems.extend(host.prepare().await);
    // Cold start from the precompiled cache. A daemon creates its engine (and the pooling
    // allocator's reservations) once; each plugin then costs a deserialize, a link and its first
    // instantiation (`describe`). Both are measured, the second as the difference between a host
    // with the plugins and an empty one.
    let (mut engine_only, mut cold) = (Vec::new(), Vec::new());
    for _ in 0..15 {
        let t = Instant::now();
        let mut fresh = PluginHost::without_plugins(&grants).unwrap();
        engine_only.push(t.elapsed());
        let t = Instant::now();
        fresh.load_shipped(&grants, Some(cache.path()));
        fresh.prepare().await;
        let n = u32::try_from(fresh.names().len().max(1)).unwrap();
        cold.push(t.elapsed() / n);
    }
    engine_only.sort();
    cold.sort();
    for p in &problems {
        eprintln!("not loaded (expected: `domain-check` needs a grant): {p}");
    }
    let call = PluginCall {
        run_id: "bench",
        workflow_id: "bench",
        step_key: "echo",
        attempt: 1,
        now_ms: 0,
    };
    let input = r#"{"greeting":"こんにちは"}"#;
    for _ in 0..200 {
        host.invoke("echo", &call, input).await.unwrap();
    }
    let n = 5_000;
    let mut samples: Vec<Duration> = Vec::with_capacity(n);
    for _ in 0..n {
        let t = Instant::now();
        host.invoke("echo", &call, input).await.unwrap();
        samples.push(t.elapsed());
    }
    samples.sort();
    let pct = |p: usize| samples[(samples.len() * p / 100).min(samples.len() - 1)];
    // The same without the input-schema check (a host whose plugins were not prepared).
    let (bare, _) = PluginHost::load(dir, &grants, Some(cache.path())).unwrap();
    let mut bare_samples: Vec<Duration> = Vec::with_capacity(n);
    for i in 0..n + 200 {
        let t = Instant::now();
        bare.invoke("echo", &call, input).await.unwrap();
        if i >= 200 {
            bare_samples.push(t.elapsed());
        }
    }
    bare_samples.sort();
    println!(
        "pmoflow plugin benchmark (2 cores; echo component, {} KiB)",
        pmoflow::plugins::shipped::all()
            .iter()
            .find(|p| p.manifest.name == "echo")
            .map_or(0, |p| p.component.len() / 1024)
    );
    println!();
    println!("| measure | value |");
    println!("|---|---|");
    println!(
        "| first load: compile {} plugins, fill the cache | {:.1} ms |",
        host.names().len(),
        load.as_secs_f64() * 1000.0
    );
    println!(
        "| engine + pooling allocator + linker, once per daemon (median of 15) | {:.2} ms |",
        engine_only[7].as_secs_f64() * 1000.0
    );
    println!(
        "| cold start per plugin from the precompiled cache: deserialize, link, first instantiation (median of 15, engine excluded) | {:.2} ms |",
        cold[7].as_secs_f64() * 1000.0
    );
    println!(
        "| invocation p50 (schema check, fresh store, instantiate, call, drop) | {:.1} µs |",
        pct(50).as_secs_f64() * 1e6
    );
    println!("| invocation p99 | {:.1} µs |", pct(99).as_secs_f64() * 1e6);
    println!(
        "| invocation p50 / p99 without the schema check | {:.1} / {:.1} µs |",
        bare_samples[n / 2].as_secs_f64() * 1e6,
        bare_samples[n * 99 / 100].as_secs_f64() * 1e6
    );
}
