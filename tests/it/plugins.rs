//! WebAssembly plugins, real components built from `plugins/` (tests/run builds them): the echo
//! plugin in a workflow, and a hostile plugin that tries everything a plugin must not do.

use std::sync::Arc;
use std::time::{Duration, Instant};

use pmoflow::clock::SystemClock;
use pmoflow::engine::{EngineConfig, RunRequest};
use pmoflow::outbox::Services;
use pmoflow::plugins::{Limits, PluginHost};
use pmoflow::store::{Durability, RunStatus};
use pmoflow_tests::{Backend, InProcess, Project, TestDb, wait_run};
use serde_json::json;

fn plugins_dir() -> std::path::PathBuf {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../plugins");
    assert!(
        dir.join("target/wasm32-wasip2/release/echo.wasm").exists(),
        "plugins are not built: run `cargo build --release` in plugins/ (tests/run does)"
    );
    dir
}

const WORKFLOW: &str = r#"
id = "p"
[inputs]
what = "spin"
[[steps]]
id = "echo"
action = "plugin:echo"
with = { greeting = "こんにちは {{ inputs.what }}", n = 3 }
[[steps]]
id = "bad"
action = "plugin:hostile"
with = { do = "{{ inputs.what }}" }
"#;

async fn engine(db: &TestDb, project: &Project) -> InProcess {
    let limits = Limits {
        timeout: Duration::from_secs(2),
        ..Limits::default()
    };
    let cache = tempfile::tempdir().unwrap();
    let (host, problems) = PluginHost::load(&plugins_dir(), limits, Some(cache.path())).unwrap();
    // A second host loads from the precompiled cache.
    let (again, _) = PluginHost::load(&plugins_dir(), limits, Some(cache.path())).unwrap();
    assert_eq!(again.names(), ["echo", "hostile"]);
    assert!(
        std::fs::read_dir(cache.path()).unwrap().count() >= 2,
        "compiled code cached"
    );
    // The fixture that imports an interface nobody granted is refused at load; the rest load.
    assert_eq!(problems.len(), 1, "{problems:?}");
    assert!(
        problems[0].contains(
            "greedy/plugin.toml: imports interfaces it was not granted: pmoflow:secret/keys@0.1.0"
        ),
        "{problems:?}"
    );
    assert_eq!(host.names(), ["echo", "hostile"]);
    let services = Services {
        plugins: Some(Arc::new(host)),
        ..Services::default()
    };
    let config = EngineConfig {
        node_id: "plugins".into(),
        poll_interval: Duration::from_millis(50),
        services: Arc::new(services),
        ..EngineConfig::default()
    };
    InProcess::start(
        &db.url,
        Durability::Process,
        &project.workflows(),
        Arc::new(SystemClock),
        config,
    )
    .await
}

#[tokio::test(flavor = "multi_thread")]
async fn hostile_plugins_fail_with_the_right_reason_and_the_engine_keeps_serving() {
    let db = TestDb::new(Backend::Sqlite).await;
    let project = Project::new();
    project.workflow("p.toml", WORKFLOW);
    let engine = engine(&db, &project).await;
    let store = engine.engine.store().clone();
    let cases = [
        ("spin", "ran past 2 s"),
        ("sleep", "ran past 2 s"),
        ("alloc", "exceeded 64 MiB memory limit"),
        ("big-output", "exceeded 64 MiB memory limit"),
        ("passwd", "cannot read /etc/passwd"),
        ("socket", "cannot connect"),
        ("panic", "the plugin panicked on purpose"),
    ];
    let started = Instant::now();
    let mut ids = Vec::new();
    for (what, _) in &cases {
        let inputs = json!({ "what": what });
        ids.push(
            engine
                .engine
                .trigger("p", &RunRequest::manual(&inputs))
                .await
                .unwrap()
                .id()
                .to_string(),
        );
    }
    for ((what, reason), id) in cases.iter().zip(&ids) {
        let run = wait_run(&store, id, Duration::from_secs(30), |r| {
            r.status.is_terminal()
        })
        .await;
        assert_eq!(run.status, RunStatus::Failed, "{what}: {run:?}");
        let error = run.error.unwrap_or_default();
        assert!(
            error.contains(reason),
            "{what}: `{error}` should say `{reason}`"
        );
        // The step before the hostile one ran normally in the same run.
        let steps = store.get_steps(id).await.unwrap();
        let echo = steps.iter().find(|s| s.step_id == "echo").unwrap();
        assert_eq!(
            echo.output.as_ref().unwrap()["echo"]["greeting"],
            json!(format!("こんにちは {what}"))
        );
    }
    // Timeouts stop the guest promptly, concurrently: all seven runs took far less than 7 × 2 s.
    println!(
        "seven hostile runs contained in {} ms",
        started.elapsed().as_millis()
    );
    assert!(started.elapsed() < Duration::from_secs(12));
    // No environment, and the engine is unaffected: a plugin still runs fine afterwards.
    let inputs = json!({ "what": "env" });
    let id = engine
        .engine
        .trigger("p", &RunRequest::manual(&inputs))
        .await
        .unwrap()
        .id()
        .to_string();
    let run = wait_run(&store, &id, Duration::from_secs(10), |r| {
        r.status.is_terminal()
    })
    .await;
    assert_eq!(run.status, RunStatus::Succeeded, "{run:?}");
    let steps = store.get_steps(&id).await.unwrap();
    let bad = steps.iter().find(|s| s.step_id == "bad").unwrap();
    assert_eq!(
        bad.output.as_ref().unwrap(),
        &json!({ "env": 0, "path": null })
    );
    engine.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_plugin_that_is_not_installed_fails_the_step_clearly() {
    let db = TestDb::new(Backend::Sqlite).await;
    let project = Project::new();
    project.workflow(
        "q.toml",
        "id = \"q\"\n[[steps]]\nid = \"a\"\naction = \"plugin:nope\"\n",
    );
    let engine = engine(&db, &project).await;
    let id = engine
        .engine
        .trigger("q", &RunRequest::manual(&json!(null)))
        .await
        .unwrap()
        .id()
        .to_string();
    let run = wait_run(engine.engine.store(), &id, Duration::from_secs(10), |r| {
        r.status.is_terminal()
    })
    .await;
    assert!(
        run.error
            .unwrap()
            .contains("plugin `nope` is not installed")
    );
    engine.stop().await;
}

#[test]
fn plugin_inspect_and_run_from_the_command_line() {
    let wasm = plugins_dir().join("target/wasm32-wasip2/release");
    let dir = tempfile::tempdir().unwrap();
    let (code, out, err) = pmoflow_tests::cli(
        dir.path(),
        &[
            "plugin",
            "inspect",
            wasm.join("echo.wasm").to_str().unwrap(),
        ],
    );
    assert_eq!(code, 0, "{err}");
    let doc: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(doc["descriptor"]["name"], "echo");
    assert_eq!(doc["descriptor"]["capabilities"], json!(["log"]));
    assert!(
        doc["imports"]
            .as_array()
            .unwrap()
            .iter()
            .any(|i| i == "pmoflow:plugin/log@0.1.0")
    );
    let (code, out, err) = pmoflow_tests::cli(
        dir.path(),
        &[
            "plugin",
            "run",
            wasm.join("echo.wasm").to_str().unwrap(),
            "--input",
            "{\"件名\": \"テスト\"}",
        ],
    );
    assert_eq!(code, 0, "{err}");
    assert_eq!(
        serde_json::from_str::<serde_json::Value>(&out).unwrap(),
        json!({ "echo": { "件名": "テスト" }, "attempt": 1 })
    );
    assert!(err.contains("[info] echo for run cli"), "{err}");
    let (code, _, err) = pmoflow_tests::cli(
        dir.path(),
        &[
            "plugin",
            "inspect",
            wasm.join("greedy.wasm").to_str().unwrap(),
        ],
    );
    assert_eq!(code, 1);
    assert!(
        err.contains("imports interfaces it was not granted: pmoflow:secret/keys@0.1.0"),
        "{err}"
    );
}

#[test]
fn validate_checks_that_plugins_are_installed() {
    let project = Project::new();
    project.workflow("p.toml", WORKFLOW);
    project.workflow(
        "q.toml",
        "id = \"q\"\n[[steps]]\nid = \"a\"\naction = \"plugin:domain-check\"\n",
    );
    project.config(&format!("plugins_dir = \"{}\"\n", plugins_dir().display()));
    let (code, out, _) = pmoflow_tests::cli(project.path(), &["validate"]);
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("workflows/q.toml:2:1: error: step `a` uses plugin `domain-check`, which is not installed"), "{out}");
    assert!(out.contains("1 error(s); 1 workflow(s) valid"), "{out}");
}
