//! Several daemons on one PostgreSQL, as processes: unique instances whatever their labels,
//! failover after `kill -9`, fencing of a daemon cut off from the database, and `pmoflow
//! cluster`.

use std::time::{Duration, Instant};

use pmoflow::store::{Durability, RunStatus, Store};
use pmoflow_tests::{
    Backend, Daemon, Project, STARTUP, SlowHttp, TcpProxy, TestDb, cli, wait, wait_run,
};
use pmoflow_tests::{expect_done, wait_done};

fn slow_workflow(port: u16, ms: u64) -> String {
    format!(
        "id = \"slow\"\n\n[[steps]]\nid = \"call\"\naction = \"http\"\nwith = {{ url = \"http://127.0.0.1:{port}/slow?ms={ms}&run={{{{ run.id }}}}\" }}\n\n[[steps]]\nid = \"after\"\naction = \"log\"\nwith = {{ message = \"AFTER {{{{ run.id }}}}\" }}\n"
    )
}

/// The instance id a daemon logged at start.
fn instance_of(d: &Daemon) -> String {
    d.wait_log("pmoflow starting", STARTUP);
    d.instance().expect("the instance id in the start line")
}

/// Two daemons with the same `node_id` (two instances on one host): the second one starting
/// while the first executes slow steps takes none of them, and every slow endpoint is called
/// exactly once. (Before instance ids, the second daemon "took back" the first's leases and
/// the endpoint was called twice.) `pmoflow cluster` shows both, live, under one label.
#[tokio::test(flavor = "multi_thread")]
async fn two_daemons_with_one_label_never_take_each_others_runs() {
    let db = TestDb::new(Backend::Postgres).await;
    let http = SlowHttp::start().await;
    let project = Project::with_workflow("slow.toml", &slow_workflow(http.port, 3000));
    project.config_on(
        &db,
        "node_id = \"same-host\"\n[engine]\npoll_interval = \"100ms\"\n",
    );
    let dir = project.path();
    let a = Daemon::start(dir, "a", &[]);
    a.wait_log("workflows loaded", STARTUP);
    let mut ids = Vec::new();
    for _ in 0..6 {
        let (code, out, err) = cli(dir, &["trigger", "slow"]);
        assert_eq!(code, 0, "{err}");
        ids.push(out.trim().to_string());
    }
    http.wait_count("/slow", 6, Duration::from_secs(30)).await;
    // The slow calls are in flight on `a`: a second daemon with the same label starts now.
    let b = Daemon::start(dir, "b", &[]);
    b.wait_log("workflows loaded", STARTUP);
    let store = Store::open(&db.url, Durability::Process).await.unwrap();
    for id in &ids {
        expect_done(&store, id, RunStatus::Succeeded).await;
        assert_eq!(
            http.count(&format!("run={id}")),
            1,
            "slow step of {id} called more than once:\n{}",
            b.log_text()
        );
    }
    assert_eq!(http.calls().len(), 6);
    assert!(!b.log_text().contains("took over"), "{}", b.log_text());

    let (code, out, err) = cli(dir, &["cluster"]);
    assert_eq!(code, 0, "{err}");
    let (ia, ib) = (instance_of(&a), instance_of(&b));
    assert_ne!(ia, ib);
    assert!(out.contains("2 daemon(s) live on postgres"), "{out}");
    for i in [&ia, &ib] {
        let line = out
            .lines()
            .find(|l| l.starts_with(i.as_str()))
            .unwrap_or_else(|| panic!("{i} missing:\n{out}"));
        assert!(
            line.contains("same-host") && line.contains(" live "),
            "{line}"
        );
    }
    // One of them holds the scheduler.
    assert_eq!(out.matches("scheduler").count(), 1, "{out}");
    let (code, json, err) = cli(dir, &["cluster", "--format", "json"]);
    assert_eq!(code, 0, "{err}");
    let v: serde_json::Value = serde_json::from_str(&json).unwrap();
    assert_eq!(v["daemons"].as_array().unwrap().len(), 2, "{v:#}");
    assert!(v["warnings"].as_array().unwrap().is_empty(), "{v:#}");
    store.close().await;
}

/// `kill -9` of the daemon executing a run: the other daemon continues it within the lease
/// (8 s by default) plus a poll. Measured three times; the figures are printed.
#[tokio::test(flavor = "multi_thread")]
async fn a_killed_daemons_runs_continue_elsewhere_within_the_lease() {
    let db = TestDb::new(Backend::Postgres).await;
    let http = SlowHttp::start().await;
    let project = Project::with_workflow("slow.toml", &slow_workflow(http.port, 30_000));
    project.workflow(
        "quick.toml",
        "id = \"quick\"\n[[steps]]\nid = \"w\"\naction = \"wait\"\nwith = { duration = \"1s\" }\n",
    );
    project.config_on(&db, "");
    let dir = project.path();
    let store = Store::open(&db.url, Durability::Process).await.unwrap();
    let mut daemons = vec![Daemon::start(dir, "d0", &[]), Daemon::start(dir, "d1", &[])];
    for d in &daemons {
        d.wait_log("workflows loaded", STARTUP);
    }
    let mut failovers = Vec::new();
    for round in 0..3 {
        let (code, out, err) = cli(dir, &["trigger", "slow"]);
        assert_eq!(code, 0, "{err}");
        let id = out.trim().to_string();
        let run = wait_run(&store, &id, Duration::from_secs(15), |r| {
            r.lease_owner.is_some()
        })
        .await;
        let owner = run.lease_owner.unwrap();
        http.wait_count(&format!("run={id}"), 1, Duration::from_secs(30))
            .await;
        let victim = daemons
            .iter()
            .position(|d| instance_of(d) == owner)
            .expect("owner is one of ours");
        daemons[victim].kill9();
        let killed = Instant::now();
        http.wait_count(&format!("run={id}"), 2, Duration::from_secs(20))
            .await;
        failovers.push(killed.elapsed());
        let run = store.get_run(&id).await.unwrap().unwrap();
        assert_ne!(run.lease_owner.as_deref(), Some(owner.as_str()));
        // A short run still completes on the survivor; then the victim comes back.
        let (code, out, err) = cli(dir, &["trigger", "quick"]);
        assert_eq!(code, 0, "{err}");
        expect_done(&store, out.trim(), RunStatus::Succeeded).await;
        daemons[victim] = Daemon::start(dir, &format!("r{round}"), &[]);
        daemons[victim].wait_log("workflows loaded", STARTUP);
        let (code, _, err) = cli(dir, &["cancel", &id]);
        assert_eq!(code, 0, "cancel {id}: {err}");
    }
    failovers.sort();
    eprintln!(
        "failover after kill -9 (3 rounds): median {:?}, max {:?}",
        failovers[1], failovers[2]
    );
    assert!(failovers[2] < Duration::from_secs(10), "{failovers:?}");
    store.close().await;
}

/// A daemon cut off from PostgreSQL (its connections dropped, new ones unanswered) stops its
/// in-flight step before its lease can expire; the other daemon then takes the run over. The
/// cut-off daemon's call is abandoned before the second call starts.
#[tokio::test(flavor = "multi_thread")]
async fn a_partitioned_daemon_stops_acting_before_its_lease_expires() {
    let db = TestDb::new(Backend::Postgres).await;
    let http = SlowHttp::start().await;
    let project = Project::with_workflow("slow.toml", &slow_workflow(http.port, 25_000));
    project.config_on(&db, "");
    let dir = project.path();
    let proxy = TcpProxy::start("127.0.0.1:5432".parse().unwrap()).await;
    let via_proxy = db
        .url
        .replace("127.0.0.1:5432", &format!("127.0.0.1:{}", proxy.port));
    assert_ne!(via_proxy, db.url);
    let a = Daemon::start(dir, "a", &[("PMOFLOW_DATABASE_URL", via_proxy.as_str())]);
    a.wait_log("workflows loaded", STARTUP);
    let (code, out, err) = cli(dir, &["trigger", "slow"]);
    assert_eq!(code, 0, "{err}");
    let id = out.trim().to_string();
    http.wait_count(&format!("run={id}"), 1, Duration::from_secs(30))
        .await;
    let b = Daemon::start(dir, "b", &[]);
    b.wait_log("workflows loaded", STARTUP);
    proxy.partition();
    let cut = Instant::now();
    a.wait_log("no heartbeat reached the database", Duration::from_secs(10));
    let fenced = cut.elapsed();
    http.wait_count(&format!("run={id}"), 2, Duration::from_secs(30))
        .await;
    let calls = http.calls();
    let hung_up = calls[0]
        .hung_up
        .expect("the partitioned daemon kept its call going");
    eprintln!(
        "partitioned daemon stopped its step {:?} after the cut; taken over after {:?}",
        hung_up - cut,
        calls[1].at - cut
    );
    assert!(
        hung_up < calls[1].at,
        "taken over before the cut-off daemon stopped acting"
    );
    assert!(fenced < Duration::from_secs(8), "{fenced:?}");
    proxy.heal();
    a.wait_log(
        "heartbeat reached the database again",
        Duration::from_secs(20),
    );
}

/// Migrations are expand-only, so a newer daemon may migrate while older ones still run: no
/// migration drops, renames or retypes anything, or adds a NOT NULL column without a default.
#[test]
fn migrations_are_expand_only() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../daemon/migrations");
    let mut n = 0;
    for backend in ["sqlite", "postgres"] {
        for entry in std::fs::read_dir(root.join(backend)).unwrap() {
            let path = entry.unwrap().path();
            let sql = std::fs::read_to_string(&path).unwrap();
            n += 1;
            for (i, line) in sql.lines().enumerate() {
                let code = line.split("--").next().unwrap().to_uppercase();
                for bad in ["DROP ", "RENAME ", "ALTER COLUMN", " TYPE ", "TRUNCATE "] {
                    assert!(
                        !code.contains(bad),
                        "{}:{}: `{bad}` is not expand-only: {line}",
                        path.display(),
                        i + 1
                    );
                }
                if code.contains("ADD COLUMN") {
                    assert!(
                        !code.contains("NOT NULL") || code.contains("DEFAULT"),
                        "{}:{}: a NOT NULL column needs a default: {line}",
                        path.display(),
                        i + 1
                    );
                }
            }
        }
    }
    assert!(n >= 22, "{n} migration files");
}

/// An older daemon on a database a newer one migrated (a migration this binary does not know
/// is recorded) starts, says so, and `pmoflow cluster` reports the schema and mixed versions.
#[tokio::test(flavor = "multi_thread")]
async fn an_older_daemon_runs_on_a_newer_schema_and_mixed_versions_are_reported() {
    let db = TestDb::new(Backend::Postgres).await;
    let project = Project::new();
    project.config_on(&db, "");
    let dir = project.path();
    let store = Store::open(&db.url, Durability::Process).await.unwrap();
    store.close().await;
    {
        use sqlx::Connection;
        let mut conn = sqlx::postgres::PgConnection::connect(&db.url)
            .await
            .unwrap();
        sqlx::query("INSERT INTO _sqlx_migrations (version, description, success, checksum, execution_time) VALUES (99991231000001, 'from a newer pmoflow', true, '\\x00'::bytea, 1)")
            .execute(&mut conn).await.unwrap();
        // A newer daemon, alive.
        let now = chrono::Utc::now().timestamp_millis();
        sqlx::query("INSERT INTO daemons (instance_id, label, host, pid, version, schema_version, started_at, heartbeat_at) VALUES ('newer-1', 'newer', 'h', 1, '9.9.9', 99991231000001, $1, $1)")
            .bind(now).execute(&mut conn).await.unwrap();
    }
    let d = Daemon::start(dir, "old", &[]);
    d.wait_log(
        "the database has migrations newer than this pmoflow",
        STARTUP,
    );
    d.wait_log("workflows loaded", STARTUP);
    d.wait_log("daemons of different versions share this database", STARTUP);
    {
        use sqlx::Connection;
        let mut conn = sqlx::postgres::PgConnection::connect(&db.url)
            .await
            .unwrap();
        sqlx::query("UPDATE daemons SET heartbeat_at = $1 WHERE instance_id = 'newer-1'")
            .bind(chrono::Utc::now().timestamp_millis())
            .execute(&mut conn)
            .await
            .unwrap();
    }
    let (code, out, err) = cli(dir, &["cluster"]);
    assert_eq!(code, 0, "{err}");
    assert!(
        out.contains("warning: mixed versions: live daemons run "),
        "{out}"
    );
    assert!(out.contains("9.9.9"), "{out}");
    assert!(out.contains("predates the database schema"), "{out}");
    assert!(out.contains("is older than the database schema"), "{out}");
}

/// A rolling restart: three daemons on one PostgreSQL, each with its HTTP face, are stopped
/// with SIGTERM and replaced one by one while a status collection waits for three answers (given
/// by IMAP replies during the restarts), an escalation waits between its levels and a burst of
/// webhook triggers (with `Idempotency-Key`, retried on another daemon when one is going away,
/// as a load balancer does) arrives. A clean stop repeats nothing: every mail is delivered exactly
/// once, every webhook key made one run whose endpoint was called once, every answer counted.
#[tokio::test(flavor = "multi_thread")]
async fn a_rolling_restart_loses_and_doubles_nothing() {
    use pmoflow_tests::{Dovecot, SmtpSink, decode_mail, free_port, new_api_token};
    let db = TestDb::new(Backend::Postgres).await;
    let http = SlowHttp::start().await;
    let imap = Dovecot::start();
    let smtp_port = free_port();
    let project = Project::with_workflow(
        "collect.toml",
        "id = \"collect\"\n[[steps]]\nid = \"ask\"\naction = \"request\"\n[steps.with]\n\
         to = [\"a@pjmo.example.go.jp\", \"b@pjmo.example.go.jp\", \"c@pjmo.example.go.jp\"]\n\
         subject = \"【要回答】状況報告\"\nbody = \"状況をご回答ください。\"\nfields = [\"状況\"]\ndeadline = \"10m\"\n\
         [[steps]]\nid = \"done\"\naction = \"log\"\nwith = { message = \"collected\" }\n",
    );
    project.workflow(
        "incident.toml",
        "id = \"incident\"\n[[steps]]\nid = \"chain\"\naction = \"escalate\"\n[steps.with]\n\
         subject = \"基幹システム停止\"\n\
         levels = [{ notify = [\"oncall1@example.go.jp\"], wait = \"8s\" }, { notify = [\"oncall2@example.go.jp\"], wait = \"10m\" }]\n",
    );
    project.workflow(
        "hook.toml",
        &format!(
            "id = \"hook\"\n[[triggers]]\nwebhook = true\n[[steps]]\nid = \"call\"\naction = \"http\"\n\
             with = {{ url = \"http://127.0.0.1:{}/hook?ms=300&run={{{{ run.id }}}}\" }}\n",
            http.port
        ),
    );
    let (operator, entry) = new_api_token(project.path(), "lb", "operator");
    project.config(&format!(
        "database_url = \"{}\"\n[engine]\npoll_interval = \"200ms\"\n\
         [mail]\nfrom = \"PMO事務局 <pmo@example.go.jp>\"\n\
         [smtp]\nhost = \"127.0.0.1\"\nport = {smtp_port}\ntls = \"none\"\n\
         [outbox]\npoll_interval = \"200ms\"\n\
         [replies]\naddress = \"pmo+{{token}}@example.go.jp\"\n{}\n\
         [http]\nlisten = \"127.0.0.1:1\"\n\n{entry}\n",
        db.url,
        imap.config("poll_interval = \"1s\""),
    ));
    let maildir = project.path().join("maildir");
    let _smtp = SmtpSink::start(smtp_port, &maildir);
    let dir = project.path();
    let ports: Vec<u16> = (0..3).map(|_| free_port()).collect();
    let start = |i: usize, name: &str| {
        let listen = format!("127.0.0.1:{}", ports[i]);
        let d = Daemon::start(
            dir,
            name,
            &[
                ("PMOFLOW_IMAP_PASSWORD", imap.password.as_str()),
                ("PMOFLOW_HTTP_LISTEN", listen.as_str()),
            ],
        );
        d.wait_log("http listening", STARTUP);
        d
    };
    let mut daemons: Vec<Daemon> = (0..3).map(|i| start(i, &format!("d{i}"))).collect();
    let store = Store::open(&db.url, Durability::Process).await.unwrap();
    let (code, out, err) = cli(dir, &["trigger", "collect"]);
    assert_eq!(code, 0, "{err}");
    let collect = out.trim().to_string();
    let (code, out, err) = cli(dir, &["trigger", "incident"]);
    assert_eq!(code, 0, "{err}");
    let incident = out.trim().to_string();

    // The webhook burst, through whichever daemon answers.
    let burst = {
        let ports = ports.clone();
        let operator = operator.clone();
        tokio::spawn(async move {
            let web = reqwest::Client::builder()
                .timeout(Duration::from_secs(5))
                .build()
                .unwrap();
            let mut runs = Vec::new();
            for n in 0..60 {
                let key = format!("burst-{n}");
                let mut tries = 0;
                let run_id = loop {
                    let port = ports[(n + tries) % ports.len()];
                    tries += 1;
                    assert!(tries < 50, "{key}: no daemon accepted it");
                    let res = web
                        .post(format!("http://127.0.0.1:{port}/hooks/hook"))
                        .bearer_auth(&operator)
                        .header("Idempotency-Key", &key)
                        .json(&serde_json::json!({}))
                        .send()
                        .await;
                    match res {
                        Ok(r) if r.status().as_u16() == 202 || r.status().as_u16() == 200 => {
                            let v: serde_json::Value = r.json().await.unwrap();
                            break v["run_id"].as_str().unwrap().to_string();
                        }
                        Ok(r) if r.status().as_u16() == 503 => {}
                        Ok(r) => panic!(
                            "{key}: {} {}",
                            r.status(),
                            r.text().await.unwrap_or_default()
                        ),
                        Err(_) => {}
                    }
                    // pace: a load balancer's retry interval.
                    tokio::time::sleep(Duration::from_millis(50)).await;
                };
                runs.push((key, run_id));
                // pace: the burst is spread over the restarts.
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            runs
        })
    };

    // The restart, one daemon at a time; the three answers arrive during it.
    let mut answered = std::collections::BTreeSet::new();
    for (i, daemon) in daemons.iter_mut().enumerate() {
        // pace: let work start on the daemon before it is restarted.
        tokio::time::sleep(Duration::from_secs(2)).await;
        let code = daemon.terminate(Duration::from_secs(20));
        assert_eq!(code, Some(0), "{}", daemon.log_text());
        *daemon = start(i, &format!("r{i}"));
        let mails = if maildir.exists() {
            decode_mail(&maildir)
        } else {
            Vec::new()
        };
        let mut batch = Vec::new();
        for m in &mails {
            let to = m["to"][0].as_str().unwrap_or_default().to_string();
            if m["subject"]
                .as_str()
                .unwrap_or("")
                .starts_with("【要回答】")
                && answered.len() <= i
                && answered.insert(to.clone())
            {
                let reply_to = m["reply_to"].as_str().unwrap();
                let reply_to = reply_to.rsplit('<').next().unwrap().trim_end_matches('>');
                let irt = m["message_id"].as_str().unwrap();
                batch.push(format!("From: {to}\r\nTo: {reply_to}\r\nSubject: Re: 状況報告\r\nMessage-ID: <rolling-{i}@pjmo.example.go.jp>\r\nIn-Reply-To: {irt}\r\nReferences: {irt}\r\nMIME-Version: 1.0\r\nContent-Type: text/plain; charset=UTF-8\r\nContent-Transfer-Encoding: 8bit\r\n\r\n状況: 順調\r\n").into_bytes());
            }
        }
        if !batch.is_empty() {
            imap.append_raw("INBOX", &batch);
        }
    }
    let hooks = burst.await.unwrap();
    assert_eq!(
        answered.len(),
        3,
        "three requests were mailed before the last restart"
    );

    expect_done(&store, &collect, RunStatus::Succeeded).await;
    let steps = store.get_steps(&collect).await.unwrap();
    let out = steps
        .iter()
        .find(|s| s.step_key == "ask")
        .unwrap()
        .output
        .clone()
        .unwrap();
    let statuses: Vec<&str> = out
        .as_array()
        .unwrap()
        .iter()
        .map(|o| o["status"].as_str().unwrap())
        .collect();
    assert_eq!(statuses, ["answered", "answered", "answered"], "{out:#}");
    // The escalation reached its second level during the restarts; resolving ends it.
    wait::until(
        "level 2 of the escalation to be mailed",
        Duration::from_secs(30),
        || async {
            let mails = wait::outside_runtime(|| decode_mail(&maildir));
            if mails.iter().any(|m| m["to"][0] == "oncall2@example.go.jp") {
                return Ok(());
            }
            let mails: Vec<_> = mails
                .iter()
                .map(|m| (m["to"].clone(), m["subject"].clone()))
                .collect();
            let steps = store.get_steps(&incident).await.unwrap();
            Err(format!("{mails:#?}\n{steps:#?}"))
        },
    )
    .await;
    let (code, _, err) = cli(dir, &["resolve", &incident, "--note", "復旧"]);
    assert_eq!(code, 0, "{err}");
    expect_done(&store, &incident, RunStatus::Succeeded).await;
    let mut ids = std::collections::BTreeSet::new();
    for (key, id) in &hooks {
        assert!(ids.insert(id.clone()), "{key}: a second run for one key");
        let run = wait_done(&store, id).await;
        assert_eq!(run.status, RunStatus::Succeeded, "{key}: {run:?}");
        assert_eq!(http.count(&format!("run={id}")), 1, "{key}: endpoint calls");
    }
    assert_eq!(ids.len(), 60);
    let hook_runs = store
        .list_runs(&pmoflow::store::RunFilter {
            workflow_id: Some("hook".into()),
            status: None,
            limit: 1000,
        })
        .await
        .unwrap();
    assert_eq!(hook_runs.len(), 60, "one run per key");

    // Every mail exactly once: three requests, 第一報 and level 2, the 最終報 to both.
    wait::until("the outbox to drain", Duration::from_secs(30), || async {
        let pending = store.list_outbox(Some("pending"), 10).await.unwrap();
        if pending.is_empty() {
            Ok(())
        } else {
            Err(pending)
        }
    })
    .await;
    let mails = decode_mail(&maildir);
    let mut seen = std::collections::BTreeMap::new();
    for m in &mails {
        *seen
            .entry(m["message_id"].as_str().unwrap().to_string())
            .or_insert(0) += 1;
    }
    let doubled: Vec<_> = seen.iter().filter(|(_, n)| **n > 1).collect();
    assert!(doubled.is_empty(), "delivered twice: {doubled:?}");
    let final_reports = mails
        .iter()
        .filter(|m| m["subject"].as_str().unwrap_or("").contains("【最終報】"))
        .count();
    assert_eq!(
        final_reports,
        2,
        "{:#?}",
        mails
            .iter()
            .map(|m| (&m["to"], &m["subject"]))
            .collect::<Vec<_>>()
    );
    for d in &daemons {
        let log = d.log_text();
        // Only the warnings and errors: a whole log is cut short in CI's report.
        let notable: Vec<&str> = log
            .lines()
            .filter(|l| l.contains(" WARN ") || (l.contains(" ERROR ") && !l.contains("plugin")))
            .collect();
        assert!(!log.contains("lease lost"), "{}", notable.join("\n"));
    }
    eprintln!(
        "rolling restart of 3 daemons: 60 webhook runs, {} mails, none doubled, 3 answers",
        mails.len()
    );
    store.close().await;
}
