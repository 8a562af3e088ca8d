//! Faults made by the test on the daemon's dependencies, with real servers: a PostgreSQL server
//! of the test's own stopped like a crash and started again in the middle of the work.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use pmoflow::store::{Durability, RunStatus, Store};
use pmoflow_tests::Call;
use pmoflow_tests::Succeeds;
use pmoflow_tests::{Daemon, PrivatePg, Project, STARTUP, SmtpSink, decode_mail, free_port, wait};
use serde_json::json;

const WORKFLOW: &str = include_str!("../fixtures/flows/faults_workflow.toml");

/// PostgreSQL goes away (stopped `-m immediate`, like a crash) for three seconds while 100 runs,
/// each sending an email, are under way (after the first email went out), then comes back. The
/// daemon runs with `durability = "fsync"`: with `process`, PostgreSQL's `synchronous_commit=off`
/// may lose the commits of its last moments in a crash of the *database server* (found when
/// this outage was first timed to hit deliveries in flight: a run finished without its email
/// step, whose acknowledged commit the server had lost; see docs/config.md). Then: the daemon stays up, `/readyz`
/// reports the outage and the recovery, every run succeeds and every email arrives, none
/// doubled beyond the documented in-flight case (a resend with the same Message-ID).
#[tokio::test(flavor = "multi_thread")]
async fn a_postgres_outage_in_the_middle_of_100_runs_loses_and_doubles_nothing() {
    let pg = PrivatePg::start();
    let project = Project::with_workflow("report.toml", WORKFLOW);
    let (token, entry) = pmoflow_tests::new_api_token(project.path(), "ops", "operator");
    let (smtp_port, http_port) = (free_port(), free_port());
    let maildir = project.path().join("maildir");
    let _smtp = SmtpSink::start(smtp_port, &maildir);
    project.config(&format!(
        "database_url = \"{}\"\ndurability = \"fsync\"\n[engine]\npoll_interval = \"100ms\"\n[smtp]\nhost = \"127.0.0.1\"\nport = {smtp_port}\ntls = \"none\"\n[outbox]\nbackoff = \"200ms\"\nmax_backoff = \"1s\"\n[http]\nlisten = \"127.0.0.1:{http_port}\"\n\n{entry}\n",
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
            .expect(201)
            .await;
        ids.push(
            res.json::<serde_json::Value>().await.unwrap()["run_id"]
                .as_str()
                .unwrap()
                .to_string(),
        );
    }
    // The outage, once the first emails went out and while most runs still wait.
    let delivered = || std::fs::read_dir(maildir.join("new")).map_or(0, |d| d.count());
    wait::until(
        "the first email to arrive",
        Duration::from_secs(30),
        || async { if delivered() >= 1 { Ok(()) } else { Err(0) } },
    )
    .await;
    pg.pg_ctl("stop");
    let sent_before_outage = delivered();
    assert!(
        sent_before_outage < 100,
        "the outage must hit work in flight: all 100 emails were out before it"
    );
    let down = Instant::now();
    let mut statuses = BTreeMap::new();
    while down.elapsed() < Duration::from_secs(3) {
        let status = match web.get(format!("{base}/readyz")).send().await {
            Ok(r) => r.status().as_u16(),
            Err(_) => 0,
        };
        *statuses.entry(status).or_insert(0) += 1;
        // pace: sampling /readyz during the outage.
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
    wait::until(
        "/readyz to answer 200 again",
        Duration::from_secs(60),
        || async {
            match web.get(format!("{base}/readyz")).send().await {
                Ok(r) if r.status() == 200 => Ok(()),
                Ok(r) => Err(r.status().to_string()),
                Err(e) => Err(e.to_string()),
            }
        },
    )
    .await;
    let ready_after = up.elapsed();
    let store = Store::open(&pg.url, Durability::Process).await.unwrap();
    wait::until(
        "100 runs succeeded and 100 emails sent",
        Duration::from_secs(120),
        || async {
            let mut done = 0;
            for id in &ids {
                let run = store.get_run(id).await.unwrap().unwrap();
                assert_ne!(run.status, RunStatus::Failed, "{run:?}");
                done += usize::from(run.status == RunStatus::Succeeded);
            }
            let sent = store.count_outbox("sent").await.unwrap();
            if done == 100 && sent == 100 {
                return Ok(());
            }
            // What is not sent, and why (for the report when the time is up).
            let stuck: Vec<String> = store
                .list_outbox(None, 200)
                .await
                .unwrap()
                .into_iter()
                .filter(|r| r.status != "sent")
                .map(|r| {
                    format!(
                        "{} {} attempts={} next={:?} error={:?}",
                        r.message_id, r.status, r.attempts, r.next_attempt_at, r.last_error
                    )
                })
                .collect();
            // Runs whose email has no outbox row at all, with their steps and events.
            let rows = store.list_outbox(None, 200).await.unwrap();
            let mut missing = Vec::new();
            for id in &ids {
                if !rows.iter().any(|r| r.run_id.as_deref() == Some(id.as_str())) {
                    let steps = store.get_steps(id).await.unwrap();
                    let events = store.get_events(id).await.unwrap();
                    missing.push(format!("{id}: {steps:#?}\n{events:#?}"));
                }
            }
            let log = d.log_text();
            let about: Vec<&str> = log
                .lines()
                .filter(|l| {
                    (l.contains("outbox") || l.contains("ERROR"))
                        || stuck
                            .iter()
                            .any(|s| s.split_whitespace().next().is_some_and(|id| l.contains(id)))
                })
                .collect();
            Err(format!(
                "{done} runs succeeded, {sent} emails sent; not sent: {stuck:#?}\nno outbox row: {missing:#?}\n{}",
                about.join("\n")
            ))
        },
    )
    .await;
    assert_eq!(store.count_outbox("dead").await.unwrap(), 0);
    // What the SMTP server got: 100 distinct emails; a repeat only of one it had accepted
    // while the daemon could not record it, with the same Message-ID.
    let by_id = wait::until(
        "100 distinct emails in the sink",
        Duration::from_secs(30),
        || async {
            let mut by_id: BTreeMap<String, usize> = BTreeMap::new();
            for m in wait::outside_runtime(|| decode_mail(&maildir)) {
                *by_id
                    .entry(m["message_id"].as_str().unwrap().to_string())
                    .or_insert(0) += 1;
            }
            if by_id.len() >= 100 {
                Ok(by_id)
            } else {
                Err(by_id.len())
            }
        },
    )
    .await;
    assert_eq!(by_id.len(), 100, "every email arrived, none extra");
    let repeats: usize = by_id.values().map(|n| n - 1).sum();
    let log = d.log_text();
    let notable: Vec<&str> = log
        .lines()
        .filter(|l| l.contains(" WARN ") || l.contains(" ERROR "))
        .take(60)
        .collect();
    let doubled: Vec<&String> = by_id
        .iter()
        .filter(|(_, n)| **n > 1)
        .map(|(m, _)| m)
        .collect();
    assert!(
        repeats <= 2,
        "{repeats} resends: only a message in flight at the outage may repeat: {doubled:?}\n{}",
        notable.join("\n")
    );
    println!(
        "postgres outage 3 s (after {sent_before_outage} emails): /readyz {statuses:?}; ready {} ms after the restart; 100 runs and 100 emails, {repeats} resend(s)",
        ready_after.as_millis()
    );
    assert!(d.is_running());
    store.close().await;
}

/// A tmpfs of `size` mounted at `dir` for the test (needs root, as CI runs), unmounted on drop.
struct Tmpfs(std::path::PathBuf);

impl Tmpfs {
    fn mount(dir: &std::path::Path, size: &str) -> Tmpfs {
        std::fs::create_dir_all(dir).unwrap();
        std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(dir)
            .succeeds_with("mount: mounting a tmpfs needs root (CI runs as root)");
        Tmpfs(dir.to_path_buf())
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount")
            .arg("-l")
            .arg(&self.0)
            .status();
    }
}

/// Fills the file system under `path` with a file there; returns it.
fn fill(dir: &std::path::Path) -> std::path::PathBuf {
    use std::io::Write;
    let path = dir.join("filler");
    let mut f = std::fs::File::create(&path).unwrap();
    let chunk = vec![0u8; 16 << 10];
    while f.write_all(&chunk).is_ok() {}
    while f.write_all(&[0u8; 512]).is_ok() {}
    let _ = f.sync_all();
    path
}

const SLOW: &str = include_str!("../fixtures/flows/faults_slow.toml");

/// The SQLite database's disk fills up while 20 runs wait: a new run is refused with `503` and
/// the reason, the daemon stays up and says why, nothing committed is lost, and when space
/// returns the waiting runs finish and new runs are accepted again.
#[tokio::test(flavor = "multi_thread")]
async fn a_full_disk_under_sqlite_refuses_new_work_keeps_what_was_committed_and_recovers() {
    let project = Project::new();
    let mnt = project.path().join("db");
    let _fs = Tmpfs::mount(&mnt, "4m");
    project.workflow("slow.toml", SLOW);
    let (token, entry) = pmoflow_tests::new_api_token(project.path(), "ops", "operator");
    let http_port = free_port();
    let url = format!("sqlite://{}", mnt.join("pmoflow.db").display());
    project.config(&format!(
        "database_url = \"{url}\"\n[engine]\npoll_interval = \"100ms\"\n[http]\nlisten = \"127.0.0.1:{http_port}\"\n\n{entry}\n"
    ));
    let mut d = Daemon::start(project.path(), "d", &[]);
    d.wait_log("http listening", STARTUP);
    let base = format!("http://127.0.0.1:{http_port}");
    let web = reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap();
    let start = |n: i64| {
        let web = web.clone();
        let (base, token) = (base.clone(), token.clone());
        async move {
            web.post(format!("{base}/api/runs"))
                .bearer_auth(&token)
                .json(&json!({ "workflow": "slow", "inputs": { "n": n } }))
                .send()
                .await
                .unwrap()
        }
    };
    let mut ids = Vec::new();
    for n in 0..20 {
        let res = start(n).await;
        assert_eq!(res.status(), 201);
        ids.push(
            res.json::<serde_json::Value>().await.unwrap()["run_id"]
                .as_str()
                .unwrap()
                .to_string(),
        );
    }
    // The disk fills up while they wait.
    let filler = fill(&mnt);
    let res = start(99).await;
    let status = res.status().as_u16();
    let body: serde_json::Value = res.json().await.unwrap();
    assert_eq!(status, 503, "a new run on a full disk: {body}");
    let why = body["error"].as_str().unwrap_or_default().to_string();
    assert!(
        why.contains("database or disk is full"),
        "the refusal says why: {why}"
    );
    // The waits end while the disk is still full: their commits fail, the daemon keeps trying.
    // pace: past the waits' 2 s deadline.
    tokio::time::sleep(Duration::from_secs(3)).await;
    d.wait_log("database or disk is full", Duration::from_secs(30));
    assert!(d.is_running(), "the daemon stays up on a full disk");
    let still_waiting = store_runs_not_done(&web, &base, &token, &ids).await;
    assert!(
        still_waiting > 0,
        "the full disk must hold back runs whose waits ended: all 20 finished"
    );
    // Space returns.
    std::fs::remove_file(&filler).unwrap();
    let t = Instant::now();
    wait::until(
        "20 runs done after space returned",
        Duration::from_secs(60),
        || async {
            match store_runs_not_done(&web, &base, &token, &ids).await {
                0 => Ok(()),
                n => Err(n),
            }
        },
    )
    .await;
    let recovered = t.elapsed();
    let res = start(100).await;
    assert_eq!(res.status(), 201, "new work is accepted again");
    // What the daemon reported is on disk: after a kill -9, another process reads every run
    // as succeeded.
    let log = d.log_text();
    d.kill9();
    let problems: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("ERROR") || l.contains("WARN"))
        .take(15)
        .collect();
    println!("daemon problems:\n{}", problems.join("\n"));
    let store = Store::open(&url, Durability::Process).await.unwrap();
    for id in &ids {
        let run = store
            .get_run(id)
            .await
            .unwrap()
            .expect("a committed run is kept");
        assert_eq!(run.status, RunStatus::Succeeded, "{run:?}");
    }
    println!(
        "sqlite disk full: refused with `{why}`; 20 runs finished {} ms after space returned",
        recovered.as_millis()
    );
    store.close().await;
}

/// How many of `ids` have not succeeded, read through the API (a failed one fails the test).
async fn store_runs_not_done(
    web: &reqwest::Client,
    base: &str,
    token: &str,
    ids: &[String],
) -> usize {
    let mut left = 0;
    for id in ids {
        let v: serde_json::Value = web
            .get(format!("{base}/api/runs/{id}"))
            .bearer_auth(token)
            .expect_json(200)
            .await;
        let status = v["run"]["status"].as_str().unwrap_or_default().to_string();
        assert_ne!(status, "failed", "{v}");
        left += usize::from(status != "succeeded");
    }
    left
}

const TICK: &str = include_str!("../fixtures/flows/faults_tick.toml");

const PAUSE: &str = include_str!("../fixtures/flows/faults_pause.toml");

/// The daemon's wall clock stepped back an hour and forward again, then forward an hour (the
/// daemon runs under libfaketime, the monotonic clock untouched, as an NTP step would leave
/// it): a schedule firing every 5 s fires no instant twice and loses none — after the step back
/// nothing fires until the clock passes what was already handled; the hour jumped over is
/// accounted for as one run and `skipped` fires — and a 30 s wait ends at its deadline.
#[tokio::test(flavor = "multi_thread")]
async fn clock_steps_neither_double_nor_lose_a_fire_and_waits_keep_their_deadline() {
    let lib = [
        "/usr/lib/x86_64-linux-gnu/faketime/libfaketimeMT.so.1",
        "/usr/lib/faketime/libfaketimeMT.so.1",
    ]
    .into_iter()
    .find(|p| std::path::Path::new(p).exists())
    .expect("libfaketime (Debian: faketime; tests/run installs it)");
    let db = pmoflow_tests::TestDb::new(pmoflow_tests::Backend::Sqlite).await;
    let project = Project::with_workflow("tick.toml", TICK);
    project.workflow("pause.toml", PAUSE);
    project.config_on(
        &db,
        "[engine]\npoll_interval = \"100ms\"\n[http]\nenabled = false\n",
    );
    let offset = project.path().join("faketime");
    let set = |spec: &str| std::fs::write(&offset, format!("{spec}\n")).unwrap();
    set("+0");
    let offset_file = offset.display().to_string();
    let mut d = Daemon::start(
        project.path(),
        "d",
        &[
            ("LD_PRELOAD", lib),
            ("FAKETIME_TIMESTAMP_FILE", &offset_file),
            ("FAKETIME_NO_CACHE", "1"),
            ("FAKETIME_DONT_FAKE_MONOTONIC", "1"),
        ],
    );
    d.wait_log("workflows loaded", STARTUP);
    let (code, out, err) = pmoflow_tests::cli(project.path(), &["trigger", "pause"]);
    assert_eq!(code, 0, "{err}");
    let pause = out.trim().to_string();
    let store = Store::open(&db.url, Durability::Process).await.unwrap();
    let ticks = || async {
        store
            .list_runs(&pmoflow::store::RunFilter {
                workflow_id: Some("tick".into()),
                status: None,
                limit: 5000,
            })
            .await
            .unwrap()
    };
    // pace: the clock runs for 11 s (two or more fires) before each step.
    tokio::time::sleep(Duration::from_secs(11)).await;
    let before_back = ticks().await.len();
    assert!(before_back >= 1, "the schedule fires");
    // Back an hour: everything in the repeated hour was handled already.
    set("-1h");
    // pace: 11 s an hour back.
    tokio::time::sleep(Duration::from_secs(11)).await;
    let during_back = ticks().await.len();
    set("+0");
    assert!(
        during_back <= before_back + 1,
        "fires while the clock was an hour back: {before_back} -> {during_back}"
    );
    // pace: 11 s back on time.
    tokio::time::sleep(Duration::from_secs(11)).await;
    let after_back = ticks().await.len();
    assert!(after_back > during_back, "the schedule resumes");
    // The wait (30 s from its start) ended once its deadline passed.
    let run = store.get_run(&pause).await.unwrap().unwrap();
    assert_eq!(run.status, RunStatus::Succeeded, "{run:?}");
    let waited = run.finished_at.unwrap() - run.created_at;
    assert!(
        waited >= chrono::Duration::seconds(30),
        "the wait ended after {waited}, before its deadline"
    );
    // Forward an hour: the hour jumped over is one run and skipped fires.
    set("+1h");
    let runs = wait::until(
        "the hour jumped over to be accounted for",
        Duration::from_secs(30),
        || async {
            let runs = ticks().await;
            if runs.len() > after_back + 700 {
                Ok(runs)
            } else {
                Err(runs.len() - after_back)
            }
        },
    )
    .await;
    set("+0");
    let mut at: Vec<chrono::DateTime<chrono::Utc>> =
        runs.iter().filter_map(|r| r.scheduled_at).collect();
    at.sort();
    let n = at.len();
    at.dedup();
    assert_eq!(at.len(), n, "a fire ran twice");
    let gaps: Vec<_> = at
        .windows(2)
        .filter(|w| w[1] - w[0] != chrono::Duration::seconds(5))
        .map(|w| (w[0], w[1]))
        .collect();
    assert!(gaps.is_empty(), "fires lost between {gaps:?}");
    let skipped = runs
        .iter()
        .filter(|r| r.status == RunStatus::Skipped)
        .count();
    // An hour of 5 s fires is 720 instants: all but the latest are recorded as skipped.
    assert!(
        (700..=721).contains(&skipped),
        "{skipped} fires skipped over the hour jumped (720 expected, less the one caught up)"
    );
    assert!(
        during_back - before_back <= 1 && after_back > during_back,
        "{before_back} -> {during_back} -> {after_back}"
    );
    println!(
        "clock steps: {before_back} fires, +{} while an hour back, +{} after, then {} over the hour jumped ({skipped} skipped); wait ended after {waited}",
        during_back - before_back,
        after_back - during_back,
        n - after_back
    );
    store.close().await;
    d.kill9();
}

fn plain(n: usize, body_kib: usize) -> Vec<u8> {
    format!(
        "From: pjmo{n}@example.go.jp\r\nTo: pmo@example.go.jp\r\nSubject: report {n}\r\nMessage-ID: <fault-{n}@pjmo.example.go.jp>\r\nContent-Type: text/plain; charset=UTF-8\r\n\r\n{}\r\n",
        "状況報告です。".repeat(body_kib * 1024 / 21 + 1)
    )
    .into_bytes()
}

/// Each message (by subject) → how many times it was taken in, and how many rows the intake
/// recorded in all (markers of UIDs passed over included).
async fn processed(store: &Store) -> (BTreeMap<String, usize>, usize) {
    let rows = store.inbound_list(None, 10_000).await.unwrap();
    let mut by_id = BTreeMap::new();
    for r in &rows {
        // `imap-duplicate` and `imap-skipped` rows only mark a UID as passed over.
        // A row still `pending` is stored but not read yet (its subject comes with processing).
        if r.via == "imap" && r.status != "pending" {
            // The listing leaves the raw message out; each test message has its own subject.
            *by_id
                .entry(r.subject.clone().unwrap_or_default())
                .or_insert(0) += 1;
        }
    }
    (by_id, rows.len())
}

async fn wait_processed(store: &Store, n: usize, what: &str) -> BTreeMap<String, usize> {
    wait::until(
        &format!("{n} messages processed {what}"),
        Duration::from_secs(60),
        || async {
            let (by_id, _) = processed(store).await;
            if by_id.len() >= n {
                Ok(by_id)
            } else {
                Err(by_id.len())
            }
        },
    )
    .await
}

/// The IMAP server misbehaves while replies arrive: sessions cut in the middle of fetching 200
/// messages of 20 KiB, the server killed and restarted while the daemon idles, and the mailbox
/// coming back with a new UIDVALIDITY and renumbered messages. Every message is processed
/// exactly once.
#[tokio::test(flavor = "multi_thread")]
async fn imap_drops_restarts_and_a_uidvalidity_change_lose_and_double_nothing() {
    let db = pmoflow_tests::TestDb::new(pmoflow_tests::Backend::Sqlite).await;
    let mut imap = pmoflow_tests::Dovecot::start();
    let project = Project::new();
    project.config(&format!(
        "database_url = \"{}\"\n[http]\nenabled = false\n{}",
        db.url,
        imap.config("poll_interval = \"1s\"\ntimeout = \"5s\"")
    ));
    let password = imap.password.clone();
    let d = Daemon::start(
        project.path(),
        "d",
        &[("PMOFLOW_IMAP_PASSWORD", password.as_str())],
    );
    d.wait_log("mailbox registered", STARTUP);
    let store = Store::open(&db.url, Durability::Process).await.unwrap();
    imap.append_raw("INBOX", &(0..20).map(|n| plain(n, 1)).collect::<Vec<_>>());
    wait_processed(&store, 20, "before any fault").await;

    // Sessions cut while 200 larger messages are being fetched: they are delivered into the
    // Maildir directly (no IMAP session of the test's own for the kick to hit), then the
    // daemon's sessions are kicked until three kicks have ended one while messages were still
    // unprocessed. `doveadm kick` fails when no session is open at that moment.
    let connected_before = d.log_text().matches("imap connected").count();
    imap.deliver_maildir(&(20..220).map(|n| plain(n, 20)).collect::<Vec<_>>());
    let mut cut_mid_fetch = 0;
    for _ in 0..200 {
        let (by_id, _) = processed(&store).await;
        if by_id.len() >= 220 || cut_mid_fetch >= 3 {
            break;
        }
        if imap.try_kick() {
            cut_mid_fetch += 1;
        }
        // pace: spread the kicks over the fetch.
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(
        cut_mid_fetch >= 1,
        "no session was cut while the 200 messages were being taken in"
    );
    wait_processed(&store, 220, "after cut sessions").await;
    // Each cut session was followed by a new login.
    d.wait_log_count(
        "imap connected",
        connected_before + 1,
        Duration::from_secs(30),
    );

    // The server restarted while the daemon idles.
    // pace: let the daemon settle into IDLE.
    tokio::time::sleep(Duration::from_secs(2)).await;
    imap.restart(false);
    imap.append_raw(
        "INBOX",
        &(220..230).map(|n| plain(n, 1)).collect::<Vec<_>>(),
    );
    wait_processed(&store, 230, "after a restart").await;

    // A new UIDVALIDITY: every message renumbered, five new ones among them.
    imap.restart(true);
    imap.append_raw(
        "INBOX",
        &(230..235).map(|n| plain(n, 1)).collect::<Vec<_>>(),
    );
    let by_id = wait_processed(&store, 235, "after a UIDVALIDITY change").await;
    // pace: a check that nothing more happens: three poll intervals for a second, wrong
    // processing of the renumbered messages to show.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let (by_id_later, rows) = processed(&store).await;
    assert_eq!(by_id, by_id_later);
    let twice: Vec<_> = by_id.iter().filter(|(_, n)| **n > 1).collect();
    assert!(twice.is_empty(), "processed twice: {twice:?}");
    assert_eq!(by_id.len(), 235);
    assert!(
        d.log_text()
            .contains("UIDVALIDITY changed; rescanning the mailbox"),
        "the daemon noticed the new UIDVALIDITY"
    );
    assert!(
        rows > 235,
        "the renumbered messages were recognised again, not ignored: {rows} rows"
    );
    println!(
        "imap faults: 235 messages processed once each; {cut_mid_fetch} sessions cut mid-fetch; {rows} intake rows ({} recognised again after the UIDVALIDITY change)",
        rows - 235
    );
    store.close().await;
}
