//! Webhook load check (not a timed test): 1,000 `POST /hooks/{workflow}` calls over loopback at
//! 200 requests/s against the real daemon (SQLite), each starting a run of a one-step workflow.
//! Prints accepted count, latency p50/p99 and how long until every run finished.
//!
//! Run: `cargo build -p pmoflow && cargo bench -p pmoflow-tests --bench hooks`
#![allow(clippy::unwrap_used, missing_docs)]

use std::time::{Duration, Instant};

use pmoflow::store::{Durability, RunStatus, Store};
use pmoflow_tests::Call;
use pmoflow_tests::fresh;
use pmoflow_tests::{Backend, Daemon, free_port};

const N: usize = 1000;
const RATE: u64 = 200;

const HOOK: &str = include_str!("../fixtures/flows/hooks_hook.toml");

#[tokio::main]
async fn main() {
    let (db, project) = fresh(Backend::Sqlite, "alert.toml", HOOK).await;
    let (token, entry) = pmoflow_tests::new_api_token(project.path(), "load", "operator");
    let port = free_port();
    project.config(&format!(
        "database_url = \"{}\"\n[engine]\npoll_interval = \"100ms\"\n[http]\nlisten = \"127.0.0.1:{port}\"\n\n{entry}\n",
        db.url
    ));
    let daemon = Daemon::start(project.path(), "d", &[("RUST_LOG", "warn")]);
    pmoflow_tests::wait_port(port, pmoflow_tests::STARTUP);
    let client = reqwest::Client::new();
    let url = format!("http://127.0.0.1:{port}/hooks/alert");
    // The token's first use costs one argon2 verification; measured once, apart.
    let t = Instant::now();
    client
        .post(&url)
        .bearer_auth(&token)
        .header("content-type", "application/json")
        .body("{\"n\": -1}")
        .expect(202)
        .await;
    let first = t.elapsed();
    let mut tick = tokio::time::interval(Duration::from_micros(1_000_000 / RATE));
    let mut tasks = Vec::with_capacity(N);
    let began = Instant::now();
    for i in 0..N {
        tick.tick().await;
        let (client, url, token) = (client.clone(), url.clone(), token.clone());
        tasks.push(tokio::spawn(async move {
            let t = Instant::now();
            let res = client
                .post(&url)
                .bearer_auth(&token)
                .header("content-type", "application/json")
                .body(format!("{{\"n\": {i}}}"))
                .send()
                .await
                .unwrap();
            (res.status().as_u16(), t.elapsed())
        }));
    }
    let mut latencies = Vec::with_capacity(N);
    let mut accepted = 0;
    for t in tasks {
        let (status, d) = t.await.unwrap();
        if status == 202 {
            accepted += 1;
        }
        latencies.push(d);
    }
    let sent_in = began.elapsed();
    latencies.sort();
    let pct = |p: f64| latencies[((latencies.len() as f64 * p) as usize).min(latencies.len() - 1)];
    let store = Store::open(&db.url, Durability::Process).await.unwrap();
    pmoflow_tests::wait::until("every run to finish", Duration::from_secs(120), || async {
        let done = store.count_runs(RunStatus::Succeeded).await.unwrap();
        if done as usize > N { Ok(()) } else { Err(done) }
    })
    .await;
    println!(
        "hooks: {accepted}/{N} accepted (202) at {RATE}/s, sent in {:.2} s; latency p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms; all {N} runs succeeded {:.2} s after the first call",
        sent_in.as_secs_f64(),
        pct(0.50).as_secs_f64() * 1e3,
        pct(0.99).as_secs_f64() * 1e3,
        latencies.last().unwrap().as_secs_f64() * 1e3,
        began.elapsed().as_secs_f64()
    );
    println!(
        "hooks: the token's first use (one argon2 verification, this build): {:.0} ms",
        first.as_secs_f64() * 1e3
    );
    drop(daemon);
}
