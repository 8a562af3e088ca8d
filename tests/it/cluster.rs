//! Several daemons on one PostgreSQL, as processes: unique instances whatever their labels,
//! failover after `kill -9`, fencing of a daemon cut off from the database, and `pmoflow
//! cluster`.

use std::time::{Duration, Instant};

use pmoflow::store::{Durability, RunStatus, Store};
use pmoflow_tests::{Backend, Daemon, Project, STARTUP, SlowHttp, TcpProxy, TestDb, cli, wait_run};

fn slow_workflow(port: u16, ms: u64) -> String {
    format!(
        "id = \"slow\"\n\n[[steps]]\nid = \"call\"\naction = \"http\"\nwith = {{ url = \"http://127.0.0.1:{port}/slow?ms={ms}&run={{{{ run.id }}}}\" }}\n\n[[steps]]\nid = \"after\"\naction = \"log\"\nwith = {{ message = \"AFTER {{{{ run.id }}}}\" }}\n"
    )
}

/// The instance id a daemon logged at start.
fn instance_of(d: &Daemon) -> String {
    let log = d.wait_log("pmoflow starting", STARTUP);
    let line = log
        .lines()
        .find(|l| l.contains("pmoflow starting"))
        .unwrap();
    line.split("instance=")
        .nth(1)
        .unwrap()
        .split_whitespace()
        .next()
        .unwrap()
        .to_string()
}

/// Two daemons with the same `node_id` (two instances on one host): the second one starting
/// while the first executes slow steps takes none of them, and every slow endpoint is called
/// exactly once. (Before instance ids, the second daemon "took back" the first's leases and
/// the endpoint was called twice.) `pmoflow cluster` shows both, live, under one label.
#[tokio::test(flavor = "multi_thread")]
async fn two_daemons_with_one_label_never_take_each_others_runs() {
    let db = TestDb::new(Backend::Postgres).await;
    let http = SlowHttp::start().await;
    let project = Project::new();
    project.workflow("slow.toml", &slow_workflow(http.port, 3000));
    project.config(&format!(
        "database_url = \"{}\"\nnode_id = \"same-host\"\n[engine]\npoll_interval = \"100ms\"\n",
        db.url
    ));
    let dir = project.path();
    let a = Daemon::start(dir, "a", &[]);
    a.wait_log("workflows loaded", STARTUP);
    let mut ids = Vec::new();
    for _ in 0..6 {
        let (code, out, err) = cli(dir, &["trigger", "slow"]);
        assert_eq!(code, 0, "{err}");
        ids.push(out.trim().to_string());
    }
    let start = Instant::now();
    while http.calls().len() < 6 {
        assert!(
            start.elapsed() < Duration::from_secs(15),
            "{}",
            a.log_text()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // The slow calls are in flight on `a`: a second daemon with the same label starts now.
    let b = Daemon::start(dir, "b", &[]);
    b.wait_log("workflows loaded", STARTUP);
    let store = Store::open(&db.url, Durability::Process).await.unwrap();
    for id in &ids {
        let run = wait_run(&store, id, Duration::from_secs(30), |r| {
            r.status.is_terminal()
        })
        .await;
        assert_eq!(run.status, RunStatus::Succeeded, "{run:?}");
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
    let (code, json, _) = cli(dir, &["cluster", "--format", "json"]);
    assert_eq!(code, 0);
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
    let project = Project::new();
    project.workflow("slow.toml", &slow_workflow(http.port, 30_000));
    project.workflow(
        "quick.toml",
        "id = \"quick\"\n[[steps]]\nid = \"w\"\naction = \"wait\"\nwith = { duration = \"1s\" }\n",
    );
    project.config(&format!("database_url = \"{}\"\n", db.url));
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
        while http.count(&format!("run={id}")) == 0 {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let victim = daemons
            .iter()
            .position(|d| instance_of(d) == owner)
            .expect("owner is one of ours");
        daemons[victim].kill9();
        let killed = Instant::now();
        while http.count(&format!("run={id}")) < 2 {
            assert!(killed.elapsed() < Duration::from_secs(20), "not taken over");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        failovers.push(killed.elapsed());
        let run = store.get_run(&id).await.unwrap().unwrap();
        assert_ne!(run.lease_owner.as_deref(), Some(owner.as_str()));
        // A short run still completes on the survivor; then the victim comes back.
        let (code, out, _) = cli(dir, &["trigger", "quick"]);
        assert_eq!(code, 0);
        let q = wait_run(&store, out.trim(), Duration::from_secs(15), |r| {
            r.status.is_terminal()
        })
        .await;
        assert_eq!(q.status, RunStatus::Succeeded);
        daemons[victim] = Daemon::start(dir, &format!("r{round}"), &[]);
        daemons[victim].wait_log("workflows loaded", STARTUP);
        cli(dir, &["cancel", &id]);
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
    let project = Project::new();
    project.workflow("slow.toml", &slow_workflow(http.port, 25_000));
    project.config(&format!("database_url = \"{}\"\n", db.url));
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
    while http.count(&format!("run={id}")) == 0 {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let b = Daemon::start(dir, "b", &[]);
    b.wait_log("workflows loaded", STARTUP);
    proxy.partition();
    let cut = Instant::now();
    a.wait_log("no heartbeat reached the database", Duration::from_secs(10));
    let fenced = cut.elapsed();
    let start = Instant::now();
    while http.count(&format!("run={id}")) < 2 {
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "{}",
            b.log_text()
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
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
    project.config(&format!("database_url = \"{}\"\n", db.url));
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
