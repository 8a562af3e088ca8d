//! Runs as the tests drive them: start an engine in this process, trigger a workflow, wait for
//! a run to end and check how it ended — with the run and its steps in the message when it did
//! not end as expected.

use std::sync::Arc;
use std::time::Duration;

use pmoflow::clock::{SharedClock, SystemClock};
use pmoflow::engine::{EngineConfig, RunRequest};
use pmoflow::store::{Durability, RunRow, RunStatus, Store};

use crate::{InProcess, Project, wait_run};

/// How long a test waits for a run to end: generous, since a loaded two-core machine runs
/// several daemons at once; a run that ends returns at once.
pub const RUN_END: Duration = Duration::from_secs(120);

/// Waits until run `id` has ended (succeeded, failed or cancelled) and returns it.
pub async fn wait_done(store: &Store, id: &str) -> RunRow {
    wait_run(store, id, RUN_END, |r| r.status.is_terminal()).await
}

/// Waits until run `id` has `status` (e.g. `Waiting`) and returns it.
pub async fn wait_status(store: &Store, id: &str, status: RunStatus) -> RunRow {
    wait_run(store, id, RUN_END, |r| r.status == status).await
}

/// Waits until run `id` has ended and asserts that it ended with `status`; the message shows
/// the run and its steps otherwise.
pub async fn expect_done(store: &Store, id: &str, status: RunStatus) -> RunRow {
    let run = wait_done(store, id).await;
    if run.status != status {
        let steps = store.get_steps(id).await.unwrap();
        panic!(
            "run {id} ended {:?}, expected {status:?}:\n{run:?}\nsteps: {steps:#?}",
            run.status
        );
    }
    run
}

impl crate::Daemon {
    /// [`expect_done`] for a run this daemon executes: the message shows its log too.
    pub async fn expect_done(&self, store: &Store, id: &str, status: RunStatus) -> RunRow {
        let run = wait_done(store, id).await;
        assert_eq!(run.status, status, "{run:?}\n{}", self.log_text());
        run
    }
}

/// The engine configuration of in-process tests: node `node`, polling every 50 ms.
pub fn fast_config(node: &str) -> EngineConfig {
    EngineConfig {
        node_id: node.to_string(),
        poll_interval: Duration::from_millis(50),
        ..EngineConfig::default()
    }
}

impl InProcess {
    /// An engine running in this process over `project`'s workflows on `url`, with the
    /// system clock, `process` durability and [`fast_config`].
    pub async fn quick(url: &str, project: &Project, node: &str) -> InProcess {
        let clock: SharedClock = Arc::new(SystemClock);
        InProcess::start(
            url,
            Durability::Process,
            &project.workflows(),
            clock,
            fast_config(node),
        )
        .await
    }

    /// Starts workflow `id` by hand with `inputs`; the new run's id.
    pub async fn trigger(&self, id: &str, inputs: &serde_json::Value) -> String {
        self.engine
            .trigger(id, &RunRequest::manual(inputs))
            .await
            .unwrap()
            .id()
            .to_string()
    }

    /// The engine's store.
    pub fn store(&self) -> Store {
        self.engine.store().clone()
    }
}

/// The same test on SQLite and on PostgreSQL: `backend_tests!(sqlite_name, postgres_name =>
/// body)` defines two `#[tokio::test]`s calling `body(Backend::Sqlite)` and
/// `body(Backend::Postgres)`; further arguments follow the backend: `=> body, "fsync"`.
#[macro_export]
macro_rules! backend_tests {
    ($sqlite:ident, $postgres:ident => $body:ident $(, $arg:expr)*) => {
        #[tokio::test(flavor = "multi_thread")]
        async fn $sqlite() {
            $body($crate::Backend::Sqlite $(, $arg)*).await;
        }

        #[tokio::test(flavor = "multi_thread")]
        async fn $postgres() {
            $body($crate::Backend::Postgres $(, $arg)*).await;
        }
    };
}

/// The output of step `step` of run `run_id` (`null` if the step has none yet).
pub async fn step_output(store: &Store, run_id: &str, step: &str) -> serde_json::Value {
    store
        .get_steps(run_id)
        .await
        .unwrap()
        .into_iter()
        .find(|s| s.step_key == step)
        .and_then(|s| s.output)
        .unwrap_or(serde_json::Value::Null)
}
