//! Faults made by the test on the daemon's dependencies, with real servers: a PostgreSQL server
//! of the test's own stopped like a crash and started again in the middle of the work.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use pmoflow::store::{Durability, RunStatus, Store};
use pmoflow_tests::{Daemon, PrivatePg, Project, STARTUP, SmtpSink, decode_mail, free_port};
use serde_json::json;

const WORKFLOW: &str = r#"
id = "report"
name = "状況報告"
[inputs]
n = 0
[[steps]]
id = "pause"
action = "wait"
with = { duration = "1s" }
[[steps]]
id = "send"
action = "email"
with = { to = "pjmo{{ inputs.n }}@example.go.jp", subject = "状況報告のお願い {{ inputs.n }}", body = "状況報告をお願いいたします。" }
"#;

/// PostgreSQL goes away (stopped `-m immediate`, like a crash) for three seconds while 100 runs,
/// each sending an email, are under way, then comes back: the daemon stays up, `/readyz`
/// reports the outage and the recovery, every run succeeds and every email arrives, none
/// doubled beyond the documented in-flight case (a resend with the same Message-ID).
#[tokio::test(flavor = "multi_thread")]
async fn a_postgres_outage_in_the_middle_of_100_runs_loses_and_doubles_nothing() {
    let pg = PrivatePg::start();
    let project = Project::new();
    project.workflow("report.toml", WORKFLOW);
    let (token, entry) = pmoflow_tests::new_api_token(project.path(), "ops", "operator");
    let (smtp_port, http_port) = (free_port(), free_port());
    let maildir = project.path().join("maildir");
    let _smtp = SmtpSink::start(smtp_port, &maildir);
    project.config(&format!(
        "database_url = \"{}\"\n[engine]\npoll_interval = \"100ms\"\n[smtp]\nhost = \"127.0.0.1\"\nport = {smtp_port}\ntls = \"none\"\n[outbox]\nbackoff = \"200ms\"\nmax_backoff = \"1s\"\n[http]\nlisten = \"127.0.0.1:{http_port}\"\n\n{entry}\n",
        pg.url
    ));
    let mut d = Daemon::start(project.path(), "d", &[]);
    d.wait_log("http listening", STARTUP);
    let base = format!("http://127.0.0.1:{http_port}");
    let web = reqwest::Client::builder()
        .timeout(Duration::from_secs(5))
        .build()
        .unwrap();
    let mut ids = Vec::new();
    for n in 0..100 {
        let res = web
            .post(format!("{base}/api/runs"))
            .bearer_auth(&token)
            .json(&json!({ "workflow": "report", "inputs": { "n": n } }))
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), 201);
        ids.push(
            res.json::<serde_json::Value>().await.unwrap()["run_id"]
                .as_str()
                .unwrap()
                .to_string(),
        );
    }
    // The outage, while the runs wait and the first emails go out.
    tokio::time::sleep(Duration::from_millis(700)).await;
    pg.pg_ctl("stop");
    let down = Instant::now();
    let mut statuses = BTreeMap::new();
    while down.elapsed() < Duration::from_secs(3) {
        let status = match web.get(format!("{base}/readyz")).send().await {
            Ok(r) => r.status().as_u16(),
            Err(_) => 0,
        };
        *statuses.entry(status).or_insert(0) += 1;
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    pg.pg_ctl("start");
    assert!(
        statuses.contains_key(&503),
        "/readyz reports the outage: {statuses:?}"
    );
    assert!(d.is_running(), "the daemon stays up without its database");
    // Recovery: ready again, every run done, every email sent.
    let up = Instant::now();
    loop {
        if let Ok(r) = web.get(format!("{base}/readyz")).send().await
            && r.status() == 200
        {
            break;
        }
        assert!(
            up.elapsed() < Duration::from_secs(60),
            "/readyz never recovered"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let ready_after = up.elapsed();
    let store = Store::open(&pg.url, Durability::Process).await.unwrap();
    let started = Instant::now();
    loop {
        let mut done = 0;
        for id in &ids {
            let run = store.get_run(id).await.unwrap().unwrap();
            assert_ne!(run.status, RunStatus::Failed, "{run:?}");
            done += usize::from(run.status == RunStatus::Succeeded);
        }
        let sent = store.count_outbox("sent").await.unwrap();
        if done == 100 && sent == 100 {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(120),
            "{done} of 100 runs succeeded, {sent} emails sent, two minutes after the outage"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(store.count_outbox("dead").await.unwrap(), 0);
    // What the SMTP server got: 100 distinct emails; a repeat only of one it had accepted
    // while the daemon could not record it, with the same Message-ID.
    let mut by_id: BTreeMap<String, usize> = BTreeMap::new();
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        by_id.clear();
        for m in decode_mail(&maildir) {
            *by_id
                .entry(m["message_id"].as_str().unwrap().to_string())
                .or_insert(0) += 1;
        }
        if by_id.len() >= 100 || Instant::now() > deadline {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(by_id.len(), 100, "every email arrived");
    let repeats: usize = by_id.values().map(|n| n - 1).sum();
    assert!(
        repeats <= 2,
        "{repeats} resends: only a message in flight at the outage may repeat"
    );
    println!(
        "postgres outage 3 s: /readyz {statuses:?}; ready {} ms after the restart; 100 runs and 100 emails, {repeats} resend(s)",
        ready_after.as_millis()
    );
    assert!(d.is_running());
    store.close().await;
}
