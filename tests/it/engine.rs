//! The engine in-process against real SQLite and PostgreSQL: concurrency, retries, foreach,
//! cancellation, run-time errors, version pinning and the simulated clock.

use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::{TimeZone, Utc};
use pmoflow::clock::{SharedClock, SimClock};
use pmoflow::engine::RunRequest;
use pmoflow::store::{CancelOutcome, Durability, RunFilter, RunStatus, StepStatus};
use pmoflow::workflow::Catalog;
use pmoflow_tests::backend_tests;
use pmoflow_tests::fast_config;
use pmoflow_tests::fresh;
use pmoflow_tests::{Backend, InProcess, Project, TestDb};
use pmoflow_tests::{expect_done, wait_done, wait_status};
use serde_json::json;

fn ten_steps() -> String {
    let mut wf = String::from("id = \"ten\"\n[inputs]\nn = 0\n");
    for i in 0..10 {
        wf.push_str(&format!(
            "\n[[steps]]\nid = \"s{i}\"\naction = \"log\"\nwith = {{ message = \"run {{{{ run.id }}}} input {{{{ inputs.n }}}} step {i}\", level = \"debug\" }}\n"
        ));
    }
    wf
}

async fn hundred_concurrent_runs(backend: Backend) {
    let db = TestDb::new(backend).await;
    let project = Project::with_workflow("ten.toml", &ten_steps());
    let engine = InProcess::quick(&db.url, &project, "t100").await;
    let mut ids = Vec::new();
    for n in 0..100 {
        let inputs = json!({ "n": n });
        ids.push(engine.trigger("ten", &inputs).await);
    }
    let store = engine.store();
    pmoflow_tests::wait_runs(&store, RunStatus::Succeeded, 100, Duration::from_secs(120)).await;
    for (n, id) in ids.iter().enumerate() {
        let run = store.get_run(id).await.unwrap().unwrap();
        assert_eq!(run.status, RunStatus::Succeeded);
        assert_eq!(run.inputs["n"], json!(n));
        let steps = store.get_steps(id).await.unwrap();
        assert_eq!(steps.len(), 10, "run {id} has {} step rows", steps.len());
        for (i, s) in steps.iter().enumerate() {
            assert_eq!(s.status, StepStatus::Succeeded);
            assert_eq!(s.attempt, 1, "step executed more than once: {s:?}");
            assert_eq!(
                s.output.as_ref().unwrap()["message"],
                json!(format!(
                    "run {id} input {n} step {}",
                    s.step_id.trim_start_matches('s')
                )),
            );
            let _ = i;
        }
        let events = store.get_events(id).await.unwrap();
        assert_eq!(events.len(), 1, "unexpected events: {events:?}");
    }
    engine.stop().await;
}

backend_tests!(sqlite_100_concurrent_runs_of_10_steps, postgres_100_concurrent_runs_of_10_steps => hundred_concurrent_runs);

const RETRY: &str = include_str!("../fixtures/flows/engine_retry.toml");

#[tokio::test(flavor = "multi_thread")]
async fn retryable_failures_are_retried_with_backoff_then_fail_the_run() {
    let (db, project) = fresh(Backend::Sqlite, "flaky.toml", RETRY).await;
    let engine = InProcess::quick(&db.url, &project, "retry").await;
    let id = engine.trigger("flaky", &json!(null)).await;
    let store = engine.store();
    let run = expect_done(&store, &id, RunStatus::Failed).await;
    assert!(
        run.error
            .as_deref()
            .unwrap()
            .contains("step `try` failed: gateway said 503 (after 3 attempts)"),
        "{run:?}"
    );
    let steps = store.get_steps(&id).await.unwrap();
    assert_eq!(steps.len(), 1, "the step after a failed step must not run");
    assert_eq!(steps[0].attempt, 3);
    let events = store.get_events(&id).await.unwrap();
    let kinds: Vec<_> = events.iter().map(|e| e.kind.as_str()).collect();
    assert_eq!(
        kinds,
        ["attempt_failed", "attempt_failed", "step_failed", "failed"],
        "{events:?}"
    );
    // Backoff was observed: at least 25 ms (half of 50 ms, jittered) between the two failures.
    assert!(
        (events[1].at - events[0].at).num_milliseconds() >= 25,
        "{events:?}"
    );
    engine.stop().await;
}

const FOREACH: &str = include_str!("../fixtures/flows/engine_foreach.toml");

#[tokio::test(flavor = "multi_thread")]
async fn foreach_fans_out_over_reference_data_in_order() {
    let (db, project) = fresh(Backend::Sqlite, "fanout.toml", FOREACH).await;
    let mut data = String::new();
    for i in 0..7 {
        data.push_str(&format!("[[projects]]\ncode = \"P{i:03}\"\n"));
    }
    std::fs::write(project.workflows().join("data/projects.toml"), data).unwrap();
    let engine = InProcess::quick(&db.url, &project, "fe").await;
    let id = engine.trigger("fanout", &json!(null)).await;
    let store = engine.store();
    expect_done(&store, &id, RunStatus::Succeeded).await;
    let steps = store.get_steps(&id).await.unwrap();
    let each = steps.iter().find(|s| s.step_key == "each").unwrap();
    let messages: Vec<_> = each
        .output
        .as_ref()
        .unwrap()
        .as_array()
        .unwrap()
        .iter()
        .map(|o| o["message"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(
        messages,
        (0..7).map(|i| format!("{i}:P{i:03}")).collect::<Vec<_>>()
    );
    assert_eq!(
        steps
            .iter()
            .filter(|s| s.step_id == "each" && s.item_index.is_some())
            .count(),
        7
    );
    let summary = steps.iter().find(|s| s.step_key == "summary").unwrap();
    assert_eq!(
        summary.output.as_ref().unwrap()["message"],
        json!("7 projects; first 0:P000")
    );
    engine.stop().await;
}

const LONG_WAIT: &str = include_str!("../fixtures/flows/engine_long_wait.toml");

#[tokio::test(flavor = "multi_thread")]
async fn a_simulated_clock_drives_the_same_engine() {
    let (db, project) = fresh(Backend::Sqlite, "long.toml", LONG_WAIT).await;
    let start = Utc.with_ymd_and_hms(2027, 4, 1, 0, 0, 0).unwrap();
    let sim = SimClock::new(start);
    let clock: SharedClock = Arc::new(sim.clone());
    let engine = InProcess::start(
        &db.url,
        Durability::Process,
        &project.workflows(),
        clock,
        fast_config("sim"),
    )
    .await;
    let id = engine.trigger("long", &json!(null)).await;
    let store = engine.store();
    let run = wait_status(&store, &id, RunStatus::Waiting).await;
    assert_eq!(run.wake_at, Some(start + chrono::Duration::hours(1)));
    // Time stands still: nothing happens however long we (really) wait a little.
    // pace: a check that nothing happens.
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(
        store.get_run(&id).await.unwrap().unwrap().status,
        RunStatus::Waiting
    );
    let real = Instant::now();
    sim.advance(chrono::Duration::minutes(61));
    let run = expect_done(&store, &id, RunStatus::Succeeded).await;
    assert!(real.elapsed() < Duration::from_secs(5));
    assert_eq!(run.finished_at, Some(start + chrono::Duration::minutes(61)));
    engine.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_run_keeps_the_workflow_version_it_started_with() {
    let (db, project) = fresh(
        Backend::Sqlite,
        "long.toml",
        &LONG_WAIT.replace("1h", "300ms"),
    )
    .await;
    let engine = InProcess::quick(&db.url, &project, "ver").await;
    let id = engine.trigger("long", &json!(null)).await;
    let store = engine.store();
    wait_status(&store, &id, RunStatus::Waiting).await;
    // The administrator edits the file while the run waits.
    project.workflow(
        "long.toml",
        &LONG_WAIT
            .replace("1h", "300ms")
            .replace("version 1", "version 2"),
    );
    engine
        .engine
        .registry()
        .set_catalog(Arc::new(Catalog::load(&project.workflows())));
    let run = expect_done(&store, &id, RunStatus::Succeeded).await;
    let steps = store.get_steps(&id).await.unwrap();
    let after = steps.iter().find(|s| s.step_id == "after").unwrap();
    assert_eq!(
        after.output.as_ref().unwrap()["message"],
        json!("version 1: x")
    );
    // A new run uses the new version.
    let id2 = engine.trigger("long", &json!(null)).await;
    let run2 = wait_done(&store, &id2).await;
    assert_ne!(run2.version_hash, run.version_hash);
    let steps = store.get_steps(&id2).await.unwrap();
    let after = steps.iter().find(|s| s.step_id == "after").unwrap();
    assert_eq!(
        after.output.as_ref().unwrap()["message"],
        json!("version 2: x")
    );
    engine.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn cancelling_a_waiting_run_stops_it() {
    let (db, project) = fresh(Backend::Postgres, "long.toml", LONG_WAIT).await;
    let engine = InProcess::quick(&db.url, &project, "cancel").await;
    let id = engine.trigger("long", &json!(null)).await;
    let store = engine.store();
    wait_status(&store, &id, RunStatus::Waiting).await;
    assert_eq!(
        store.cancel_run(&id, Utc::now(), "test").await.unwrap(),
        CancelOutcome::Cancelled
    );
    let run = store.get_run(&id).await.unwrap().unwrap();
    assert_eq!(run.status, RunStatus::Cancelled);
    assert_eq!(run.wake_at, None);
    assert_eq!(
        store.cancel_run(&id, Utc::now(), "test").await.unwrap(),
        CancelOutcome::AlreadyFinished
    );
    assert_eq!(
        store.cancel_run("nope", Utc::now(), "test").await.unwrap(),
        CancelOutcome::NotFound
    );
    let listed = store
        .list_runs(&RunFilter {
            status: Some(RunStatus::Cancelled),
            ..RunFilter::default()
        })
        .await
        .unwrap();
    assert_eq!(listed.len(), 1);
    engine.stop().await;
}

const RUNTIME_ERROR: &str = include_str!("../fixtures/flows/engine_runtime_error.toml");

#[tokio::test(flavor = "multi_thread")]
async fn a_template_error_at_run_time_fails_that_run_only() {
    let (db, project) = fresh(Backend::Sqlite, "oops.toml", RUNTIME_ERROR).await;
    project.workflow("ten.toml", &ten_steps());
    let engine = InProcess::quick(&db.url, &project, "err").await;
    let bad = engine.trigger("oops", &json!(null)).await;
    let good = engine.trigger("ten", &json!(null)).await;
    let store = engine.store();
    let run = expect_done(&store, &bad, RunStatus::Failed).await;
    let error = run.error.unwrap();
    assert!(
        error.contains("step `second` failed: template in `with` (step at line 9)"),
        "{error}"
    );
    assert!(error.contains("undefined"), "{error}");
    expect_done(&store, &good, RunStatus::Succeeded).await;
    engine.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_dedup_key_creates_at_most_one_run() {
    let (db, project) = fresh(Backend::Postgres, "ten.toml", &ten_steps()).await;
    let engine = InProcess::quick(&db.url, &project, "dedup").await;
    let fire = Utc.with_ymd_and_hms(2027, 4, 1, 0, 0, 0).unwrap();
    let inputs = json!(null);
    let req = RunRequest {
        trigger_kind: "schedule",
        dedup_key: Some("cron:0:2027-04-01T00:00:00+00:00"),
        scheduled_at: Some(fire),
        ..RunRequest::manual(&inputs)
    };
    let a = engine.engine.trigger("ten", &req).await.unwrap();
    let b = engine.engine.trigger("ten", &req).await.unwrap();
    assert!(matches!(a, pmoflow::store::Created::New(_)));
    assert_eq!(b, pmoflow::store::Created::Existing(a.id().to_string()));
    engine.stop().await;
}
