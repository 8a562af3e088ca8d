//! The door under a flood (not a timed test): 500 unknown bearer tokens from 25 loopback
//! addresses (20 each, within the refusal limit) sent at once, while one client uses a valid
//! token — its first use (one argon2 verification) and then 200 calls one after another.
//! Prints how long the flood took and the valid token's latencies (first, p50, p99, max).
//!
//! Run on the release build:
//! `cargo build --release -p pmoflow && PMOFLOW_BIN=$CARGO_TARGET_DIR/release/pmoflow cargo bench -p pmoflow-tests --bench door`
#![allow(clippy::unwrap_used, missing_docs)]

use std::time::{Duration, Instant};

use pmoflow_tests::Call;
use pmoflow_tests::door::{client_from, unknown_token_flood};
use pmoflow_tests::{Daemon, Project, free_port};

#[tokio::main]
async fn main() {
    let project = Project::new();
    let (token, entry) = pmoflow_tests::new_api_token(project.path(), "monitoring", "viewer");
    let port = free_port();
    project.config_as_is(&format!(
        "database_url = \"sqlite://var/door.db\"\n[http]\nlisten = \"127.0.0.1:{port}\"\n\n{entry}\n"
    ));
    let _daemon = Daemon::start(project.path(), "d", &[("RUST_LOG", "warn")]);
    pmoflow_tests::wait_port(port, pmoflow_tests::STARTUP);
    let url = format!("http://127.0.0.1:{port}/api/workflows");
    let began = Instant::now();
    let flood = unknown_token_flood(&url);
    let valid = client_from([127, 0, 0, 1]);
    let mut times = Vec::new();
    let mut first = Duration::ZERO;
    for n in 0..=200 {
        let t = Instant::now();
        valid.get(&url).bearer_auth(&token).expect(200).await;
        if n == 0 {
            first = t.elapsed();
        } else {
            times.push(t.elapsed());
        }
    }
    let mut last = began;
    let mut refused = 0;
    for f in flood {
        let (status, at) = f.await.unwrap();
        refused += usize::from(status == 401);
        last = last.max(at);
    }
    times.sort();
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    println!("| what | figure |\n|---|---|");
    println!(
        "| 500 unknown tokens (25 addresses) | {refused} refused with 401, all answered within {:.0} ms |",
        ms(last - began)
    );
    println!("| valid token, first use (argon2) | {:.1} ms |", ms(first));
    println!(
        "| valid token, 200 calls during the flood | p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms |",
        ms(times[times.len() / 2]),
        ms(times[times.len() * 99 / 100]),
        ms(*times.last().unwrap())
    );
}
