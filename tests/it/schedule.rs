//! Cron triggers fire runs; two daemons on one PostgreSQL database never fire the same instant
//! twice.

use std::time::Duration;

use pmoflow::store::{Durability, RunFilter, RunStatus, Store};
use pmoflow_tests::fresh;
use pmoflow_tests::{Backend, Daemon, STARTUP, wait};

/// Two daemons on one database: one holds the scheduler role and fires; when it stops, the
/// other takes the role over and goes on. Every instant is fired once, none is missed (a fire
/// that fell in the handover is caught up or recorded `skipped`).
#[tokio::test(flavor = "multi_thread")]
async fn two_daemons_on_one_database_fire_each_instant_once() {
    let (db, project) = fresh(Backend::Postgres, "tick.toml",
        "id = \"tick\"\n[[triggers]]\ncron = \"* * * * * *\"\n[[steps]]\nid = \"a\"\naction = \"log\"\nwith = { message = \"TICK {{ run.scheduled_at }}\" }\n").await;
    project.config_on(&db, "[engine]\npoll_interval = \"100ms\"\n");
    let dir = project.path();
    let a = Daemon::start(dir, "a", &[("PMOFLOW_NODE_ID", "node-a")]);
    let b = Daemon::start(dir, "b", &[("PMOFLOW_NODE_ID", "node-b")]);
    a.wait_log("workflows loaded", STARTUP);
    b.wait_log("workflows loaded", STARTUP);
    let first = wait::until_blocking("a daemon to fire", STARTUP, || {
        if a.log_text().contains("scheduled fire") {
            Ok(0)
        } else if b.log_text().contains("scheduled fire") {
            Ok(1)
        } else {
            Err("no fire yet")
        }
    });
    let (mut holder, mut other) = if first == 0 { (a, b) } else { (b, a) };
    // pace: three fire intervals in which the other daemon must not fire.
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert!(
        !other.log_text().contains("scheduled fire"),
        "both daemons fire"
    );
    assert_eq!(holder.terminate(Duration::from_secs(15)), Some(0));
    other.wait_log("scheduled fire", Duration::from_secs(30));
    // pace: three more fire intervals on the new holder.
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(other.terminate(Duration::from_secs(15)), Some(0));

    let store = Store::open(&db.url, Durability::Process).await.unwrap();
    let runs = store
        .list_runs(&RunFilter {
            limit: 1000,
            ..RunFilter::default()
        })
        .await
        .unwrap();
    assert!(runs.len() >= 6, "only {} fires in ~8 s", runs.len());
    let mut fires: Vec<_> = runs.iter().map(|r| r.scheduled_at.unwrap()).collect();
    fires.sort();
    let before = fires.len();
    fires.dedup();
    assert_eq!(fires.len(), before, "an instant was fired twice");
    for pair in fires.windows(2) {
        assert_eq!(
            (pair[1] - pair[0]).num_milliseconds(),
            1000,
            "a fire is missing: {fires:?}"
        );
    }
    assert!(runs.iter().all(|r| r.trigger_kind == "schedule"));
    let finished = runs
        .iter()
        .filter(|r| matches!(r.status, RunStatus::Succeeded | RunStatus::Skipped))
        .count();
    assert!(finished + 2 >= runs.len(), "runs left behind: {runs:?}");
    store.close().await;
}
