//! `kill -9` during a durable wait, on every backend and durability: the run completes after a
//! restart, each step's effect happened exactly once, and the wait kept its original deadline.

use std::time::Duration;

use pmoflow::store::{Durability, RunStatus, StepStatus, Store};
use pmoflow_tests::backend_tests;
use pmoflow_tests::fresh;
use pmoflow_tests::{Backend, Daemon, Project, STARTUP, TestDb, cli, wait};
use pmoflow_tests::{wait_done, wait_status};

/// How many of the run's steps have succeeded.
async fn succeeded(store: &Store, id: &str) -> usize {
    let steps = store.get_steps(id).await.unwrap();
    steps
        .iter()
        .filter(|s| s.status == StepStatus::Succeeded)
        .count()
}

const CRASH_WORKFLOW: &str = include_str!("../fixtures/flows/crash_crash_workflow.toml");

async fn crash_during_wait(backend: Backend, durability: &str) {
    let db = TestDb::new(backend).await;
    let project = Project::with_workflow("crash.toml", CRASH_WORKFLOW);
    project.config(&format!(
        "database_url = \"{}\"\ndurability = \"{durability}\"\nnode_id = \"crash-node\"\n\n[engine]\npoll_interval = \"100ms\"\n",
        db.url
    ));
    let dir = project.path();
    let mut a = Daemon::start(dir, "a", &[]);
    a.wait_log("workflows loaded", STARTUP);

    let (code, out, err) = cli(dir, &["trigger", "crash"]);
    assert_eq!(code, 0, "trigger failed: {err}");
    let id = out.trim().to_string();
    a.wait_log(&format!("FIRST-MARK {id}"), Duration::from_secs(10));

    let store = Store::open(&db.url, Durability::Process).await.unwrap();
    let deadline = wait::until(
        "the pause step to wait",
        Duration::from_secs(10),
        || async {
            let steps = store.get_steps(&id).await.unwrap();
            match steps
                .iter()
                .find(|s| s.step_id == "pause" && s.status == StepStatus::Waiting)
            {
                Some(p) => Ok(p.wake_at.unwrap()),
                None => Err(steps),
            }
        },
    )
    .await;
    a.kill9();

    let run = store.get_run(&id).await.unwrap().unwrap();
    assert!(
        !run.status.is_terminal(),
        "run finished before the kill: {run:?}"
    );
    assert!(
        store
            .get_steps(&id)
            .await
            .unwrap()
            .iter()
            .all(|s| s.step_id != "second")
    );

    let mut b = Daemon::start(dir, "b", &[]);
    let run = b.expect_done(&store, &id, RunStatus::Succeeded).await;
    b.wait_log(&format!("SECOND-MARK {id}"), Duration::from_secs(5));

    let logs = a.log_text() + &b.log_text();
    assert_eq!(
        logs.matches(&format!("FIRST-MARK {id}")).count(),
        1,
        "first log not exactly once:\n{logs}"
    );
    assert_eq!(
        logs.matches(&format!("SECOND-MARK {id}")).count(),
        1,
        "second log not exactly once:\n{logs}"
    );

    let steps = store.get_steps(&id).await.unwrap();
    assert_eq!(steps.len(), 3);
    for s in &steps {
        assert_eq!(s.status, StepStatus::Succeeded, "{s:?}");
        assert_eq!(s.attempt, 1, "step re-attempted: {s:?}");
    }
    let pause = steps.iter().find(|s| s.step_id == "pause").unwrap();
    let until = pause.output.as_ref().unwrap()["until"].as_str().unwrap();
    assert_eq!(
        chrono::DateTime::parse_from_rfc3339(until).unwrap(),
        deadline,
        "the wait must resume with its original deadline"
    );
    assert!(run.finished_at.unwrap() >= deadline);

    assert_eq!(
        b.terminate(Duration::from_secs(15)),
        Some(0),
        "graceful shutdown must exit 0:\n{}",
        b.log_text()
    );
    store.close().await;
}

backend_tests!(sqlite_process_durability_survives_kill9, postgres_process_durability_survives_kill9 => crash_during_wait, "process");
backend_tests!(sqlite_fsync_durability_survives_kill9, postgres_fsync_durability_survives_kill9 => crash_during_wait, "fsync");

/// Kills the daemon over and over at arbitrary moments (20–300 ms after it is ready) while a
/// 30-step run executes: the kills land on steps under way and waits parked (counted and
/// asserted), every restart continues from the last commit, no step succeeds twice, and a last
/// daemon completes the run.
#[tokio::test(flavor = "multi_thread")]
async fn repeated_kill9_at_random_moments_loses_and_repeats_nothing() {
    let db = TestDb::new(Backend::Sqlite).await;
    let project = Project::new();
    let mut wf = String::from("id = \"chain\"\n");
    for i in 0..30 {
        wf.push_str(&format!(
            "\n[[steps]]\nid = \"s{i}\"\naction = \"log\"\nwith = {{ message = \"STEP-{i}-MARK {{{{ run.id }}}}\" }}\n\n[[steps]]\nid = \"w{i}\"\naction = \"wait\"\nwith = {{ duration = \"40ms\" }}\n"
        ));
    }
    project.workflow("chain.toml", &wf);
    project.config_on(
        &db,
        "node_id = \"chaos\"\n\n[engine]\npoll_interval = \"50ms\"\n",
    );
    let dir = project.path();
    let (code, out, err) = cli(dir, &["trigger", "chain"]);
    assert_eq!(code, 0, "{err}");
    let id = out.trim().to_string();
    let store = Store::open(&db.url, Durability::Process).await.unwrap();
    let mut logs = String::new();
    let mut kills = 0;
    // Kills that found a step under way or a wait parked (state committed, effect pending).
    let mut in_flight = 0;
    let mut progressed = 0;
    for round in 0..25 {
        let mut d = Daemon::start(dir, &format!("d{round}"), &[]);
        // The window is measured from readiness, not from process start: a kill during
        // startup (plugins still loading) would prove nothing about steps.
        d.wait_log("workflows loaded", STARTUP);
        let done_before = succeeded(&store, &id).await;
        // pace: kill somewhere 20–300 ms into the work: mid-step, mid-wait, between steps.
        tokio::time::sleep(Duration::from_millis(20 + (round * 97) % 280)).await;
        d.kill9();
        logs.push_str(&d.log_text());
        let run = store.get_run(&id).await.unwrap().unwrap();
        if run.status.is_terminal() {
            break;
        }
        kills += 1;
        let steps = store.get_steps(&id).await.unwrap();
        if steps
            .iter()
            .any(|s| matches!(s.status, StepStatus::Running | StepStatus::Waiting))
        {
            in_flight += 1;
        }
        if succeeded(&store, &id).await > done_before {
            progressed += 1;
        }
    }
    // A last daemon, left running, finishes what the kills left.
    let last = Daemon::start(dir, "last", &[]);
    let run = wait_done(&store, &id).await;
    logs.push_str(&last.log_text());
    assert_eq!(run.status, RunStatus::Succeeded);
    assert!(kills >= 3, "the daemon was killed only {kills} times");
    assert!(
        in_flight >= 3 && progressed >= 3,
        "the kills must land on work under way: {kills} kills, {in_flight} with a step running \
         or waiting, {progressed} after progress"
    );
    eprintln!(
        "repeated kill -9: {kills} kills, {in_flight} in flight, {progressed} after progress"
    );
    let steps = store.get_steps(&id).await.unwrap();
    assert_eq!(steps.len(), 60);
    assert!(steps.iter().all(|s| s.status == StepStatus::Succeeded));
    for i in 0..30 {
        let n = logs.matches(&format!("STEP-{i}-MARK {id}")).count();
        assert!(n <= 1, "step s{i} logged {n} times");
    }
    store.close().await;
}

/// SQLite serves one daemon: a second `pmoflow run` on the same file stops at once with a
/// message naming the first (pid, host, start) and PostgreSQL; the first keeps running; once it
/// is killed with SIGKILL the lock is gone and a new daemon starts.
#[tokio::test(flavor = "multi_thread")]
async fn a_second_daemon_on_one_sqlite_file_is_refused() {
    let project = Project::with_workflow("crash.toml", CRASH_WORKFLOW);
    let mut first = Daemon::start(project.path(), "first", &[]);
    first.wait_log("workflows loaded", STARTUP);
    let mut second = Daemon::start(project.path(), "second", &[]);
    let code = second.wait_exit(STARTUP);
    let log = second.log_text();
    assert_eq!(
        code,
        Some(1),
        "the second daemon must stop with exit code 1:\n{log}"
    );
    assert!(
        log.contains(
            "another pmoflow daemon is running on the SQLite database var/pmoflow.db (pid "
        ) && log.contains(&format!("pid {}", first.child.id()))
            && log.contains("use PostgreSQL"),
        "{log}"
    );
    assert!(first.is_running(), "{}", first.log_text());
    // The CLI still works beside the daemon.
    let (code, _, err) = cli(project.path(), &["trigger", "crash"]);
    assert_eq!(code, 0, "{err}");
    first.kill9();
    let third = Daemon::start(project.path(), "third", &[]);
    third.wait_log("workflows loaded", STARTUP);
}

/// On PostgreSQL a run created by another process (here the CLI) starts at once: the daemon
/// LISTENs for `pg_notify`, so its 20-second poll is only the fallback.
#[tokio::test(flavor = "multi_thread")]
async fn postgres_wakes_daemons_for_runs_created_elsewhere() {
    let (db, project) = fresh(Backend::Postgres, "quick.toml",
        "id = \"quick\"\n[[steps]]\nid = \"only\"\naction = \"log\"\nwith = { message = \"QUICK {{ run.id }}\" }\n").await;
    project.config_on(&db, "[engine]\npoll_interval = \"20s\"\n");
    let d = Daemon::start(project.path(), "d", &[]);
    d.wait_log("listening for wake-ups", STARTUP);
    // pace: let the first poll pass, so that only a notification can start the next run soon.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let store = Store::open(&db.url, Durability::Process).await.unwrap();
    let started = std::time::Instant::now();
    let (code, out, err) = cli(project.path(), &["trigger", "quick"]);
    assert_eq!(code, 0, "{err}");
    let run = wait_status(&store, out.trim(), RunStatus::Succeeded).await;
    let took = started.elapsed();
    assert!(
        took < Duration::from_secs(8),
        "the run waited {took:?} (the poll is 20 s): {run:?}\n{}",
        d.log_text()
    );
}
