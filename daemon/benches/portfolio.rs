//! Portfolio benchmark, per backend: recording answers into the portfolio (each one the real
//! accepting transaction: the inbound row, the request, the answer and its typed values), then
//! a portfolio of 300 subjects × 36 periods × 10 fields read back through the real daemon's HTTP
//! face — `GET /api/portfolio` (JSON), `.csv`, `.xlsx`, and the `/portfolio` page logged in.
//! Prints answers/s and the request times (median of 5); asserts nothing.
//!
//! Run: `cargo bench -p pmoflow --bench portfolio` (PostgreSQL from `PMOFLOW_BENCH_PG`, default
//! `postgres://postgres@127.0.0.1:5432/test`; a scratch database is created and dropped).
#![allow(clippy::unwrap_used, missing_docs)]

use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::{TimeZone, Utc};
use pmoflow::store::{
    Durability, Fence, NewAnswer, NewRequest, NewRun, RecordKey, RunStatus, StepStatus, StepWrite,
    Store,
};
use pmoflow::workbook::FieldTypes;
use serde_json::{Value as Json, json};
use sqlx::Connection;

const SUBJECTS: usize = 300;
const PERIODS: usize = 36;
const FIELDS: [&str; 10] = [
    "総合評価",
    "予算額",
    "契約額",
    "執行額",
    "見込額",
    "遅延日数",
    "進捗",
    "品質",
    "リスク",
    "課題",
];

fn types() -> FieldTypes {
    FieldTypes::parse(&json!({
        "総合評価": { "type": "choice", "options": ["良好", "注意", "要対応"] },
        "予算額": { "type": "number", "unit": "万円" },
        "契約額": { "type": "number", "unit": "万円" },
        "執行額": { "type": "number", "unit": "万円" },
        "見込額": { "type": "number", "unit": "万円" },
        "遅延日数": { "type": "number", "unit": "日" },
    }))
    .unwrap()
}

fn period(p: usize) -> String {
    format!("{}-{:02}", 2025 + p / 12, p % 12 + 1)
}

/// One period's collection: a run with a request per subject (as a request step parks).
async fn requests(store: &Store, p: usize) -> Vec<String> {
    let t0 = Utc.with_ymd_and_hms(2027, 1, 1, 0, 0, 0).unwrap();
    let inputs = json!({});
    let run = store
        .create_run(&NewRun {
            workflow_id: "status",
            version_hash: "h",
            trigger_kind: "manual",
            dedup_key: None,
            inputs: &inputs,
            scheduled_at: None,
            now: t0,
            status: RunStatus::Pending,
            wake_at: None,
            error: None,
        })
        .await
        .unwrap()
        .id()
        .to_string();
    let lease = chrono::Duration::seconds(600);
    store.claim_due("bench", t0, lease, 1).await.unwrap();
    let fence = Fence {
        run_id: run.clone(),
        owner: "bench".into(),
        lease,
    };
    let tokens: Vec<String> = (0..SUBJECTS)
        .map(|s| format!("{p:04}{s:04}tokentokentokentoken"))
        .collect();
    let rows: Vec<NewRequest> = tokens
        .iter()
        .enumerate()
        .map(|(s, t)| NewRequest {
            token: t.clone(),
            workflow_id: "status".into(),
            kind: "request".into(),
            recipient: format!("pjmo{s}@example.go.jp"),
            allowed: vec![format!("pjmo{s}@example.go.jp")],
            tag: (p * SUBJECTS + s) as i64,
            message_id: format!("m{p}.{s}@example.go.jp"),
            subject: "【要回答】状況報告".into(),
            fields: FIELDS.iter().map(|f| f.to_string()).collect(),
            required: vec!["総合評価".into()],
            deadline: None,
            expires_at: t0 + chrono::Duration::days(3650),
            form: None,
            types: types(),
            record: Some(RecordKey {
                subject: format!("P{s:03}"),
                period: period(p),
                name: format!("プロジェクト{s}"),
                owner: format!("責任者{}", s % 12),
            }),
        })
        .collect();
    store
        .write_step(
            &fence,
            t0,
            &StepWrite {
                step_key: "ask",
                step_id: "ask",
                item_index: None,
                status: StepStatus::Waiting,
                attempt: 1,
                started_at: None,
                finished_at: None,
                wake_at: None,
                output: None,
                state: None,
                error: None,
                messages: &[],
                requests: &rows,
            },
            None,
        )
        .await
        .unwrap();
    tokens
}

fn answer(token: &str, s: usize, p: usize) -> NewAnswer {
    let rating = ["良好", "注意", "要対応"][(s + p) % 3];
    NewAnswer {
        token: token.to_string(),
        via: "email".into(),
        from: None,
        message_id: None,
        fields: json!({
            "総合評価": rating, "予算額": 12000, "契約額": 11000, "執行額": 300 * (p % 12),
            "見込額": 11800 + (s as i64 % 50) * 10, "遅延日数": (s + p) % 40,
            "進捗": "設計工程 計画どおり", "品質": "特になし", "リスク": "要員の確保", "課題": "なし",
        }),
        text: String::new(),
        attachments: json!([]),
        complete: true,
        form_fields: Vec::new(),
    }
}

/// Records every answer of `tokens` with `callers` concurrent callers; the elapsed time.
async fn record(store: &Store, p: usize, tokens: &[String], callers: usize) -> Duration {
    let now = Utc::now();
    let start = Instant::now();
    let work = Arc::new(tokio::sync::Mutex::new(
        tokens.iter().cloned().enumerate().collect::<Vec<_>>(),
    ));
    let mut tasks = Vec::new();
    for _ in 0..callers {
        let (store, work) = (store.clone(), work.clone());
        tasks.push(tokio::spawn(async move {
            loop {
                let Some((s, token)) = work.lock().await.pop() else {
                    break;
                };
                store
                    .record_answer(now, &answer(&token, s, p), &format!("bench:{p}:{s}"))
                    .await
                    .unwrap();
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    start.elapsed()
}

struct Daemon(Child);

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// The median of five requests' times, and the body's size.
async fn timed(web: &reqwest::Client, url: &str, auth: (&str, &str)) -> (Duration, usize) {
    let mut times = Vec::new();
    let mut size = 0;
    for _ in 0..5 {
        let start = Instant::now();
        let res = web.get(url).header(auth.0, auth.1).send().await.unwrap();
        assert!(res.status().is_success(), "{url}: {}", res.status());
        size = res.bytes().await.unwrap().len();
        times.push(start.elapsed());
    }
    times.sort();
    (times[2], size)
}

async fn bench(backend: &str, url: &str) {
    let store = Store::open(url, Durability::Process).await.unwrap();
    // Recording: the first period's 300 answers one caller at a time, then the next with 8.
    let mut all = Vec::new();
    for p in 0..PERIODS {
        all.push(requests(&store, p).await);
    }
    let one = record(&store, 0, &all[0], 1).await;
    let eight = record(&store, 1, &all[1], 8).await;
    let start = Instant::now();
    let mut n = 0;
    for (p, tokens) in all.iter().enumerate().skip(2) {
        record(&store, p, tokens, 8).await;
        n += tokens.len();
        if (1000..1000 + SUBJECTS).contains(&n) {
            println!(
                "| {backend} | record 1,000 answers (10 fields each, 8 callers) | {:.2} s | {:.0} answers/s |",
                start.elapsed().as_secs_f64(),
                n as f64 / start.elapsed().as_secs_f64()
            );
        }
    }
    println!(
        "| {backend} | record answers, 1 caller | {:.1} ms each | {:.0} answers/s |",
        one.as_secs_f64() * 1000.0 / SUBJECTS as f64,
        SUBJECTS as f64 / one.as_secs_f64()
    );
    println!(
        "| {backend} | record answers, 8 callers | {:.1} ms each | {:.0} answers/s |",
        eight.as_secs_f64() * 1000.0 / SUBJECTS as f64,
        SUBJECTS as f64 / eight.as_secs_f64()
    );
    store.close().await;

    // The real daemon on that database.
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(dir.path().join("workflows")).unwrap();
    let bin = env!("CARGO_BIN_EXE_pmoflow");
    let out = Command::new(bin)
        .args(["token", "new", "--name", "bench", "--role", "viewer"])
        .current_dir(dir.path())
        .output()
        .unwrap();
    let out = String::from_utf8(out.stdout).unwrap();
    let token = out
        .lines()
        .map(str::trim)
        .find(|l| l.starts_with("pmo_"))
        .unwrap()
        .to_string();
    let entry = &out[out.find("[[http.tokens]]").unwrap()..];
    let port = free_port();
    std::fs::write(
        dir.path().join("pmoflow.toml"),
        format!("database_url = \"{url}\"\n[http]\nlisten = \"127.0.0.1:{port}\"\n\n{entry}\n"),
    )
    .unwrap();
    let _daemon = Daemon(
        Command::new(bin)
            .arg("run")
            .current_dir(dir.path())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let base = format!("http://127.0.0.1:{port}");
    let web = reqwest::Client::new();
    while web.get(format!("{base}/readyz")).send().await.is_err() {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let bearer = format!("Bearer {token}");
    let api: Json = web
        .get(format!("{base}/api/portfolio"))
        .header("authorization", &bearer)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let entries = api["entries"].as_array().unwrap().len();
    println!(
        "| {backend} | portfolio | {entries} entries ({SUBJECTS} subjects × {PERIODS} periods × {} fields) | |",
        FIELDS.len()
    );
    for path in [
        "/api/portfolio",
        "/api/portfolio.csv",
        "/api/portfolio.xlsx",
        "/api/portfolio?subject=P007",
    ] {
        let (t, size) = timed(&web, &format!("{base}{path}"), ("authorization", &bearer)).await;
        println!(
            "| {backend} | GET {path} | {:.0} ms | {} KiB |",
            t.as_secs_f64() * 1000.0,
            size / 1024
        );
    }
    // The login answers a redirect whose Set-Cookie is the session: read it, don't follow it.
    let no_follow = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    let res = no_follow
        .post(format!("{base}/login"))
        .form(&[("token", token.as_str())])
        .send()
        .await
        .unwrap();
    let cookie = res
        .headers()
        .get_all("set-cookie")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .find(|v| v.starts_with("pmoflow_session="))
        .unwrap()
        .split(';')
        .next()
        .unwrap()
        .to_string();
    for path in ["/portfolio", "/portfolio/P007?workflow=status"] {
        let (t, size) = timed(&web, &format!("{base}{path}"), ("cookie", &cookie)).await;
        println!(
            "| {backend} | GET {path} (page) | {:.0} ms | {} KiB |",
            t.as_secs_f64() * 1000.0,
            size / 1024
        );
    }
}

#[tokio::main]
async fn main() {
    println!("| backend | what | time | figure |\n|---|---|---|---|");
    let dir = tempfile::tempdir().unwrap();
    let sqlite = format!("sqlite://{}", dir.path().join("bench.db").display());
    bench("sqlite", &sqlite).await;
    let admin = std::env::var("PMOFLOW_BENCH_PG")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".into());
    let Ok(mut conn) = sqlx::PgConnection::connect(&admin).await else {
        println!("| postgres | PostgreSQL at {admin} unreachable: skipped | | |");
        return;
    };
    let name = format!("pmoflow_bench_portfolio_{}", std::process::id());
    sqlx::query(&format!("CREATE DATABASE {name}"))
        .execute(&mut conn)
        .await
        .unwrap();
    let base = admin.rsplit_once('/').unwrap().0.to_string();
    bench("postgres", &format!("{base}/{name}")).await;
    let _ = sqlx::query(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
        .execute(&mut conn)
        .await;
}
