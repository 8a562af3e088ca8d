//! The `pmoflow` binary: validate, trigger/runs/show/cancel, and a daemon that survives bad input.

use std::path::Path;
use std::time::{Duration, Instant};

use pmoflow::store::{Durability, RunStatus, Store};
use pmoflow_tests::fresh;
use pmoflow_tests::{Backend, Daemon, Project, STARTUP, cli};
use pmoflow_tests::{expect_done, wait_status};

fn repo() -> &'static Path {
    Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/.."))
}

#[test]
fn validate_passes_on_the_shipped_workflows() {
    let (code, out, err) = cli(repo(), &["validate", "workflows/"]);
    assert_eq!(code, 0, "shipped workflows invalid:\n{out}{err}");
    assert!(out.starts_with("ok: "), "{out}");
}

#[test]
fn validate_reports_exact_locations_and_exits_1() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"));
    let (code, out, _) = cli(dir, &["validate", "fixtures/workflows/unknown_action.toml"]);
    assert_eq!(code, 1);
    assert!(
        out.contains("fixtures/workflows/unknown_action.toml:5:10: error: unknown action `lgo`\n  hint: built-in actions are log, wait, fail"),
        "{out}"
    );
    let (code, out, _) = cli(
        dir,
        &[
            "validate",
            "--format",
            "json",
            "fixtures/workflows/bad_duration.toml",
            "fixtures/workflows/valid_minimal.toml",
        ],
    );
    assert_eq!(code, 1);
    let doc: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(doc["valid"], false);
    assert_eq!(doc["workflows"][0]["id"], "minimal");
    assert_eq!(doc["diagnostics"][0]["line"], 6);
    assert_eq!(doc["diagnostics"][0]["col"], 21);
    let (code, out, _) = cli(dir, &["validate", "fixtures/workflows/valid_full.toml"]);
    assert_eq!(code, 0, "{out}");
}

#[test]
fn a_bad_config_file_is_located() {
    let project = Project::new();
    project.config("database_url = \"sqlite://var/x.db\"\n[engine]\nlease = \"1s\"\n");
    let (code, _, err) = cli(project.path(), &["runs"]);
    assert_eq!(code, 1);
    assert!(
        err.contains("pmoflow.toml:3:9: error: lease must be at least 3s"),
        "{err}"
    );
}

const HELLO: &str = include_str!("../fixtures/flows/cli_hello.toml");

#[tokio::test(flavor = "multi_thread")]
async fn the_daemon_survives_bad_files_and_run_time_errors() {
    let (db, project) = fresh(
        Backend::Sqlite,
        "hello.toml",
        &HELLO.replace("{{ inputs.wait }}", "1s"),
    )
    .await;
    project.workflow("broken.toml", "id = \"broken\"\n[[steps]\n");
    project.workflow(
        "unknown.toml",
        "id = \"unknown\"\n[[steps]]\nid = \"a\"\naction = \"sendmail\"\n",
    );
    std::fs::write(
        project.workflows().join("binary.toml"),
        [0xff, 0xfe, 0x00, 0x41],
    )
    .unwrap();
    project.workflow(
        "oops.toml",
        "id = \"oops\"\n[[steps]]\nid = \"a\"\naction = \"log\"\nwith = { message = \"x\" }\n[[steps]]\nid = \"b\"\naction = \"log\"\nwith = { message = \"{{ steps.a.output.nothing }}\" }\n",
    );
    project.config_on(
        &db,
        "[engine]\npoll_interval = \"100ms\"\nreload_interval = \"200ms\"\n",
    );
    let dir = project.path();
    let mut d = Daemon::start(dir, "d", &[]);
    let log = d.wait_log("workflows loaded", STARTUP);
    assert!(
        log.contains("broken.toml") && log.contains("line=2"),
        "{log}"
    );
    assert!(log.contains("unknown action `sendmail`"), "{log}");
    assert!(
        log.contains("binary.toml") && log.contains("cannot read"),
        "{log}"
    );
    assert!(log.contains("workflows=2"), "{log}");

    let store = Store::open(&db.url, Durability::Process).await.unwrap();
    let (code, out, err) = cli(dir, &["trigger", "oops"]);
    assert_eq!(code, 0, "{err}");
    expect_done(&store, out.trim(), RunStatus::Failed).await;

    // Hot reload: a new broken file is reported, a fixed one is picked up, nothing stops.
    project.workflow(
        "late.toml",
        "id = \"late\"\n[[steps]]\nid = \"x\"\naction = \"wait\"\nwith = { duration = \"soon\" }\n",
    );
    d.wait_log("late.toml", Duration::from_secs(5));
    project.workflow("late.toml", "id = \"late\"\n[[steps]]\nid = \"x\"\naction = \"log\"\nwith = { message = \"LATE-MARK\" }\n");
    d.wait_log("workflows=3", Duration::from_secs(5));
    let (code, out, err) = cli(dir, &["trigger", "late"]);
    assert_eq!(code, 0, "{err}");
    expect_done(&store, out.trim(), RunStatus::Succeeded).await;

    let (code, out, err) = cli(dir, &["trigger", "hello", "--input", "{\"who\": \"山田\"}"]);
    assert_eq!(code, 0, "{err}");
    let run = expect_done(&store, out.trim(), RunStatus::Succeeded).await;
    d.wait_log(
        &format!("HELLO-MARK 山田 {}", run.id),
        Duration::from_secs(5),
    );
    assert!(d.is_running(), "the daemon must still be running");
    assert_eq!(d.terminate(Duration::from_secs(15)), Some(0));
    store.close().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn trigger_runs_show_and_cancel_from_the_command_line() {
    let (db, project) = fresh(
        Backend::Sqlite,
        "hello.toml",
        &HELLO
            .replace("{{ inputs.wait }}", "1h")
            .replace("if = \"false\"", ""),
    )
    .await;
    project.config_on(&db, "");
    let dir = project.path();
    let (code, _, err) = cli(dir, &["trigger", "nope"]);
    assert_eq!(code, 1);
    assert!(
        err.contains("unknown workflow `nope`") && err.contains("known workflows: hello"),
        "{err}"
    );
    let (code, _, err) = cli(dir, &["trigger", "hello", "--input", "{\"whom\": 1}"]);
    assert_eq!(code, 1);
    assert!(
        err.contains("workflow `hello` has no input `whom` (declared inputs: who)"),
        "{err}"
    );
    let (code, _, err) = cli(dir, &["trigger", "hello", "--input", "{not json"]);
    assert_eq!(code, 1);
    assert!(err.contains("--input is not valid JSON"), "{err}");

    let mut d = Daemon::start(dir, "d", &[]);
    d.wait_log("workflows loaded", STARTUP);
    let store = Store::open(&db.url, Durability::Process).await.unwrap();
    let before = chrono::Utc::now();
    let (code, out, err) = cli(dir, &["trigger", "hello"]);
    assert_eq!(code, 0, "{err}");
    let id = out.trim().to_string();
    let run = wait_status(&store, &id, RunStatus::Waiting).await;
    // Picked up by the running daemon within 1 s of the trigger (default poll interval 250 ms).
    let picked = run.started_at.unwrap() - run.created_at;
    assert!(
        picked < chrono::Duration::seconds(1),
        "picked up after {picked}"
    );
    assert!(run.created_at >= before - chrono::Duration::seconds(1));

    let (code, out, _) = cli(dir, &["runs", "--status", "waiting"]);
    assert_eq!(code, 0);
    assert!(out.contains(&id) && out.contains("hello"), "{out}");
    let (code, _, err) = cli(dir, &["runs", "--status", "sleeping"]);
    assert_eq!(code, 1);
    assert!(err.contains("unknown run status `sleeping`"), "{err}");
    let (code, out, _) = cli(dir, &["show", &id]);
    assert_eq!(code, 0);
    assert!(
        out.contains("status    waiting") && out.contains("greet") && out.contains("pause"),
        "{out}"
    );
    let (code, out, _) = cli(dir, &["show", &id, "--format", "json"]);
    assert_eq!(code, 0);
    let doc: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(doc["steps"].as_array().unwrap().len(), 2);

    let (code, out, err) = cli(dir, &["cancel", &id]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("cancelled"), "{out}");
    let (code, _, err) = cli(dir, &["cancel", &id]);
    assert_eq!(code, 1);
    assert!(err.contains("already finished"), "{err}");
    let (code, out, _) = cli(dir, &["show", &id]);
    assert_eq!(code, 0);
    assert!(
        out.contains("status    cancelled: cancelled by cli"),
        "{out}"
    );
    let (code, _, err) = cli(dir, &["show", "no-such-run"]);
    assert_eq!(code, 1);
    assert!(err.contains("no run no-such-run"), "{err}");

    let start = Instant::now();
    assert_eq!(d.terminate(Duration::from_secs(15)), Some(0));
    assert!(
        start.elapsed() < Duration::from_secs(5),
        "shutdown took {:?}",
        start.elapsed()
    );
    store.close().await;
}

#[test]
fn workflows_lists_versions_next_fires_and_invalid_files() {
    let project = Project::with_workflow(
        "daily.toml",
        "id = \"daily\"\nname = \"毎朝の確認\"\n[[triggers]]\ncron = \"0 9 * * *\"\n[[steps]]\nid = \"a\"\naction = \"log\"\nwith = { message = \"x\" }\n",
    );
    project.workflow("broken.toml", "id = \"broken\"\n[[steps]\n");
    let (code, out, err) = cli(project.path(), &["workflows"]);
    assert_eq!(code, 0, "{err}");
    let line = out
        .lines()
        .find(|l| l.starts_with("daily"))
        .unwrap_or_else(|| panic!("{out}"));
    assert!(
        line.contains("T09:00:00+09:00") && line.contains("毎朝の確認"),
        "{line}"
    );
    assert!(
        out.contains("invalid file: workflows/broken.toml:2:9: error: unclosed array table"),
        "{out}"
    );
    let (code, out, _) = cli(project.path(), &["workflows", "--format", "json"]);
    assert_eq!(code, 0);
    let rows: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(rows.as_array().unwrap().len(), 2);
    assert_eq!(rows[0]["id"], "daily");
    assert_eq!(rows[0]["version"].as_str().unwrap().len(), 12);
}
