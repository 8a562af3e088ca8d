//! Reply-ingestion benchmark: 1,000 replies in a real Dovecot mailbox (appended with Python's
//! imaplib), then timed: IMAP fetch, store raw, parse, correlate, sender check, commit the answer
//! and wake the run. Prints replies/s for SQLite and PostgreSQL; asserts only that every reply
//! became an answer.
//!
//! Run: `cargo bench -p pmoflow-tests --bench inbound` (needs dovecot-imapd and PostgreSQL, as
//! the tests do).
#![allow(clippy::unwrap_used, missing_docs)]

use std::sync::Arc;
use std::time::{Duration, Instant};

use pmoflow::actions::StepServices;
use pmoflow::clock::{SharedClock, SystemClock};
use pmoflow::engine::{EngineConfig, RunRequest};
use pmoflow::inbound::intake::Intake;
use pmoflow::outbox::ReplySettings;
use pmoflow::store::{Durability, Store};
use pmoflow_tests::{Backend, Dovecot, InProcess, TestDb};

const N: usize = 1000;

const WORKFLOW: &str = include_str!("../fixtures/flows/inbound_workflow.toml");

fn reply(i: usize, to: &str, subject: &str, irt: &str) -> Vec<u8> {
    let body = format!(
        "総合評価：良好\n進捗：{}％\n経費: 予算比 {}%\nリスク: 特になし\n課題: ベンダー調整\n\n以上、よろしくお願いいたします。\n\n2026年11月30日(月) 9:00 PMO事務局 <pmo@example.go.jp>:\n> 状況報告をお願いいたします。\n",
        50 + i % 50,
        90 + i % 20
    );
    format!(
        "From: PJMO担当 <pjmo{i}@example.go.jp>\r\nTo: {to}\r\nSubject: Re: {subject}\r\nDate: Mon, 30 Nov 2026 10:00:00 +0900\r\nMessage-ID: <bench-{i}-{}@example.go.jp>\r\nIn-Reply-To: <{irt}>\r\nMIME-Version: 1.0\r\nContent-Type: text/plain; charset=UTF-8\r\nContent-Transfer-Encoding: 8bit\r\n\r\n{}",
        std::process::id(),
        body.replace('\n', "\r\n")
    )
    .into_bytes()
}

async fn bench(backend: Backend) {
    let db = TestDb::new(backend).await;
    let dir = tempfile::tempdir().unwrap();
    let wf = dir.path().join("workflows");
    std::fs::create_dir_all(&wf).unwrap();
    std::fs::write(wf.join("ask.toml"), WORKFLOW).unwrap();
    let services = Arc::new(StepServices {
        replies: ReplySettings {
            address: Some("pmo+{token}@example.go.jp".into()),
            max_size: pmoflow::inbound::DEFAULT_MAX_SIZE,
            token_ttl: Duration::from_secs(86400),
            ..ReplySettings::default()
        },
        mail: pmoflow::outbox::MailSettings {
            from: "PMO事務局 <pmo@example.go.jp>".into(),
            ..Default::default()
        },
        ..StepServices::default()
    });
    let clock: SharedClock = Arc::new(SystemClock);
    let config = EngineConfig {
        services: services.clone(),
        poll_interval: Duration::from_millis(50),
        ..EngineConfig::default()
    };
    let engine = InProcess::start(&db.url, Durability::Process, &wf, clock.clone(), config).await;
    let inputs = serde_json::json!({});
    let run = engine
        .engine
        .trigger("ask", &RunRequest::manual(&inputs))
        .await
        .unwrap();
    let store = Store::open(&db.url, Durability::Process).await.unwrap();
    let requests = pmoflow_tests::wait::until(
        "the requests to be open",
        Duration::from_secs(120),
        || async {
            let r = store.list_requests(Some("open"), 5000).await.unwrap();
            if r.len() == N { Ok(r) } else { Err(r.len()) }
        },
    )
    .await;
    // The mailbox: registered first (as a running daemon would be), then the replies arrive.
    let imap = Dovecot::start();
    let cfg = imap.imap_config();
    let max = pmoflow::inbound::DEFAULT_MAX_SIZE;
    pmoflow::inbound::imap::poll_once(&cfg, &store, &clock, &Default::default(), max)
        .await
        .unwrap();
    let messages: Vec<Vec<u8>> = requests
        .iter()
        .enumerate()
        .map(|(i, r)| {
            let n: usize = r.recipient["pjmo".len()..r.recipient.find('@').unwrap()]
                .parse()
                .unwrap_or(i);
            reply(
                n,
                &format!("pmo+{}@example.go.jp", r.token),
                &r.subject,
                &r.message_id,
            )
        })
        .collect();
    assert_eq!(imap.append_raw("INBOX", &messages), N);

    let intake = Intake::new(store.clone(), clock.clone(), services.clone())
        .with_wakers(engine.engine.wakers());
    let start = Instant::now();
    let stats = pmoflow::inbound::imap::poll_once(&cfg, &store, &clock, &Default::default(), max)
        .await
        .unwrap();
    let fetched = start.elapsed();
    let processed = intake.process_pending().await.unwrap();
    let total = start.elapsed();
    assert_eq!(stats.stored, N);
    assert_eq!(
        processed.iter().filter(|p| p.outcome == "answer").count(),
        N
    );
    println!(
        "inbound {:<8} {N} replies: fetch+store {:>6.0} ms, parse+correlate+commit {:>6.0} ms, total {:>6.0} ms = {:>5.0} replies/s",
        db.url.split(':').next().unwrap_or(""),
        fetched.as_secs_f64() * 1e3,
        (total - fetched).as_secs_f64() * 1e3,
        total.as_secs_f64() * 1e3,
        N as f64 / total.as_secs_f64()
    );
    // The run continues once every answer is in.
    let start = Instant::now();
    let r = pmoflow_tests::wait_run(&store, run.id(), Duration::from_secs(60), |r| {
        r.status.is_terminal()
    })
    .await;
    println!(
        "inbound {:<8} run finished {:.0} ms after the last answer ({:?})",
        db.url.split(':').next().unwrap_or(""),
        start.elapsed().as_secs_f64() * 1e3,
        r.status
    );
    engine.stop().await;
}

#[tokio::main]
async fn main() {
    bench(Backend::Sqlite).await;
    bench(Backend::Postgres).await;
}
