//! WebAssembly plugins, real components built from `plugins/` (tests/run builds them): the echo
//! plugin in a workflow, and a hostile plugin that tries everything a plugin must not do.

use std::sync::Arc;
use std::time::{Duration, Instant};

use pmoflow::actions::StepServices;
use pmoflow::clock::SystemClock;
use pmoflow::engine::{EngineConfig, RunRequest};
use pmoflow::plugins::{Grant, Grants, HostRule, Limits, PluginHost};
use pmoflow::store::{Durability, RunStatus};
use pmoflow_tests::fresh;
use pmoflow_tests::{Backend, InProcess, Project, TestDb, wait_run};
use pmoflow_tests::{expect_done, wait_done};
use serde_json::json;

/// The source tree's `plugins/` (SDK, WIT, lock file).
pub(crate) fn repo_plugins() -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../plugins")
}

/// Where the daemon's build compiled the guest workspace (the shipped plugins, embedded in the
/// binary, and the test fixtures).
pub(crate) fn guest_wasm() -> std::path::PathBuf {
    std::path::Path::new(pmoflow::plugins::shipped::GUEST_TARGET_DIR).join("wasm32-wasip2/release")
}

/// A plugins directory as the tests install it: the test fixtures (whose manifests are
/// `fixture.toml` in the source tree, so that a daemon started in the repository does not load
/// them), with absolute component paths. The shipped plugins are built into the host.
pub(crate) fn plugins_dir() -> std::path::PathBuf {
    static DIR: std::sync::OnceLock<std::path::PathBuf> = std::sync::OnceLock::new();
    DIR.get_or_init(|| {
        let dir = std::path::Path::new(env!("CARGO_TARGET_TMPDIR"))
            .join(format!("plugins-{}", std::process::id()));
        for (name, manifest) in [
            ("hostile", "fixtures/hostile/fixture.toml"),
            ("greedy", "fixtures/greedy/fixture.toml"),
        ] {
            let source = repo_plugins().join(manifest);
            let mut doc: toml::Table =
                toml::from_str(&std::fs::read_to_string(&source).unwrap()).unwrap();
            let component = guest_wasm().join(format!("{name}.wasm"));
            assert!(component.is_file(), "{} is not built", component.display());
            doc.insert(
                "component".into(),
                toml::Value::String(component.display().to_string()),
            );
            std::fs::create_dir_all(dir.join(name)).unwrap();
            std::fs::write(
                dir.join(name).join("plugin.toml"),
                toml::to_string(&doc).unwrap(),
            )
            .unwrap();
        }
        dir
    })
    .clone()
}

const WORKFLOW: &str = include_str!("../fixtures/flows/plugins_workflow.toml");

/// The hostile fixture's grant: `http` and `kv`, hosts under `*.go.jp`, any host on port
/// `wild` (a wildcard: never loopback), and `127.0.0.1:exact` listed exactly.
fn hostile_grants(wild: u16, exact: u16) -> Grants {
    let mut hostile = Grant::with_limits(Limits {
        timeout: Duration::from_secs(2),
        kv_max_keys: 50,
        kv_max_bytes: 256 << 10,
        ..Limits::default()
    });
    hostile.capabilities.insert("http".into());
    hostile.capabilities.insert("kv".into());
    hostile.allow_hosts = [
        "*.go.jp".to_string(),
        format!("*:{wild}"),
        format!("127.0.0.1:{exact}"),
    ]
    .iter()
    .map(|h| HostRule::parse(h).unwrap())
    .collect();
    let mut grants = Grants::all(Grant::with_limits(Limits {
        timeout: Duration::from_secs(2),
        ..Limits::default()
    }));
    grants.plugins.insert("hostile".into(), hostile);
    grants
}

async fn engine(db: &TestDb, project: &Project, grants: &Grants) -> InProcess {
    let cache = tempfile::tempdir().unwrap();
    let (mut host, mut problems) =
        PluginHost::load(&plugins_dir(), grants, Some(cache.path())).unwrap();
    problems.extend(host.prepare().await);
    // A second host loads from the precompiled cache.
    let (again, _) = PluginHost::load(&plugins_dir(), grants, Some(cache.path())).unwrap();
    assert_eq!(again.names(), ["echo", "hostile", "status-digest"]);
    assert!(
        std::fs::read_dir(cache.path()).unwrap().count() >= 3,
        "compiled code cached"
    );
    // Refused at load: the shipped domain-check, which imports network capabilities this
    // configuration does not grant, and the fixture that imports an interface the host does not
    // offer.
    assert_eq!(problems.len(), 2, "{problems:?}");
    assert!(
        problems[0].contains("shipped plugin `domain-check`: imports capabilities it was not granted: http, tls, whois (an administrator grants them with `capabilities = [\"http\", \"tls\", \"whois\"]` under [plugins.domain-check] in pmoflow.toml)"),
        "{problems:?}"
    );
    assert!(
        problems[1].contains(
            "greedy/plugin.toml: imports interfaces it was not granted: pmoflow:secret/keys@0.1.0"
        ),
        "{problems:?}"
    );
    assert_eq!(host.names(), ["echo", "hostile", "status-digest"]);
    let host = host.with_kv_store(
        pmoflow::store::Store::open(&db.url, Durability::Process)
            .await
            .unwrap(),
    );
    let services = StepServices {
        plugins: Some(Arc::new(host)),
        ..StepServices::default()
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
    let (db, project) = fresh(Backend::Sqlite, "p.toml", WORKFLOW).await;
    // Two real HTTP servers on loopback: one reachable only through a wildcard entry (so never),
    // one listed exactly.
    let (wild_dir, exact_dir) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let wild = pmoflow_tests::WebhookServer::start(wild_dir.path(), 0, 200);
    let exact = pmoflow_tests::WebhookServer::start(exact_dir.path(), 0, 200);
    let engine = engine(&db, &project, &hostile_grants(wild.port, exact.port)).await;
    let store = engine.store();
    let wild_url = format!("http://127.0.0.1:{}/hook", wild.port);
    let wild_name = format!("http://localhost:{}/hook", wild.port);
    let cases = [
        ("spin", "", "ran past 2 s"),
        ("sleep", "", "ran past 2 s"),
        ("alloc", "", "exceeded 64 MiB memory limit"),
        (
            "big-output",
            "",
            "output of 4194306 bytes exceeds the 1024 KiB limit",
        ),
        ("passwd", "", "cannot read /etc/passwd"),
        ("socket", "", "cannot connect"),
        ("panic", "", "the plugin panicked on purpose"),
        (
            "fetch",
            "https://www.example.com/",
            "fetch refused: denied: www.example.com:443 is not in the plugin's allow_hosts",
        ),
        (
            "fetch",
            "https://www.digital.go.jp:8443/",
            "fetch refused: denied: www.digital.go.jp:8443 is not in the plugin's allow_hosts",
        ),
        (
            "fetch",
            &wild_url,
            "fetch refused: denied: 127.0.0.1 is a loopback or private address (127.0.0.1)",
        ),
        (
            "fetch",
            &wild_name,
            "loopback or private address (127.0.0.1); list it exactly",
        ),
        ("kv-flood", "", "kv quota: at most 256 KiB per plugin"),
        (
            "deep-json",
            "",
            "returned output that is not JSON: recursion limit exceeded",
        ),
        ("log-spin", "", "ran past 2 s"),
    ];
    let started = Instant::now();
    let mut ids = Vec::new();
    for (what, url, _) in &cases {
        let inputs = json!({ "what": what, "url": url });
        ids.push(engine.trigger("p", &inputs).await);
    }
    let mut timed_out = Vec::new();
    for ((what, _, reason), id) in cases.iter().zip(&ids) {
        let run = wait_done(&store, id).await;
        if reason.contains("ran past 2 s") {
            timed_out.push((*what, run.started_at.unwrap(), run.finished_at.unwrap()));
        }
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
    // Timeouts stop the guest promptly and concurrently: the three timed-out runs overlapped
    // in time (the latest start came before the earliest end), and none ran much past 2 s.
    println!(
        "{} hostile runs contained in {} ms",
        cases.len(),
        started.elapsed().as_millis()
    );
    assert_eq!(timed_out.len(), 3);
    let latest_start = timed_out.iter().map(|t| t.1).max().unwrap();
    let earliest_end = timed_out.iter().map(|t| t.2).min().unwrap();
    assert!(
        latest_start < earliest_end,
        "the timed-out runs ran one after another, not concurrently: {timed_out:?}"
    );
    for (what, start, end) in &timed_out {
        let took = *end - *start;
        assert!(
            took >= chrono::Duration::seconds(2) && took < chrono::Duration::seconds(8),
            "{what}: stopped after {took}"
        );
    }
    // Nothing reached the server behind the wildcard entry.
    assert_eq!(wild.requests().len(), 0);
    // The exactly listed host is reachable: the allowlist is a list, not a wall.
    let inputs = json!({ "what": "fetch", "url": format!("http://127.0.0.1:{}/hook", exact.port) });
    let id = engine.trigger("p", &inputs).await;
    expect_done(&store, &id, RunStatus::Succeeded).await;
    assert_eq!(exact.requests().len(), 1);
    // No environment, and the engine is unaffected: a plugin still runs fine afterwards.
    let inputs = json!({ "what": "env" });
    let id = engine.trigger("p", &inputs).await;
    expect_done(&store, &id, RunStatus::Succeeded).await;
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
    let (db, project) = fresh(
        Backend::Sqlite,
        "q.toml",
        "id = \"q\"\n[[steps]]\nid = \"a\"\naction = \"plugin:nope\"\n",
    )
    .await;
    let engine = engine(&db, &project, &hostile_grants(1, 2)).await;
    let id = engine.trigger("q", &json!(null)).await;
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
    let wasm = guest_wasm();
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
fn validate_checks_plugins_and_their_input_schemas() {
    let project = Project::with_workflow("p.toml", WORKFLOW);
    project.workflow(
        "q.toml",
        "id = \"q\"\n[[steps]]\nid = \"a\"\naction = \"plugin:domain-check\"\n",
    );
    project.workflow(
        "r.toml",
        r#"id = "r"
[[steps]]
id = "digest"
action = "plugin:status-digest"
with = { project = [], overrun_percent = "ten" }
"#,
    );
    // Templates are checked once rendered, at run time.
    project.workflow(
        "s.toml",
        r#"id = "s"
[[steps]]
id = "digest"
action = "plugin:status-digest"
with = { projects = "{{ data.projects.items }}", overrun_percent = 15 }
"#,
    );
    std::fs::create_dir_all(project.path().join("workflows/data")).unwrap();
    std::fs::write(
        project.path().join("workflows/data/projects.toml"),
        "[[items]]\nid = \"P-001\"\n",
    )
    .unwrap();
    project.config(&format!(
        "plugins_dir = \"{}\"\nplugin_cache_dir = \"var/cache\"\n[plugins.hostile]\ncapabilities = [\"http\", \"kv\"]\nallow_hosts = [\"*.go.jp\"]\n",
        plugins_dir().display()
    ));
    let (code, out, _) = pmoflow_tests::cli(project.path(), &["validate"]);
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("workflows/q.toml:2:1: error: step `a` uses plugin `domain-check`, which cannot be loaded:"), "{out}");
    assert!(
        out.contains("imports capabilities it was not granted: http, tls, whois"),
        "{out}"
    );
    assert!(out.contains("workflows/r.toml:2:1: error: step `digest`: `with` does not fit the input of plugin `status-digest`:"), "{out}");
    assert!(out.contains("\"projects\" is a required property"), "{out}");
    assert!(
        out.contains("/overrun_percent: \"ten\" is not of type \"number\""),
        "{out}"
    );
    assert!(out.contains("2 error(s); 2 workflow(s) valid"), "{out}");
    // Unknown plugins are still reported as not installed.
    project.workflow(
        "q.toml",
        "id = \"q\"\n[[steps]]\nid = \"a\"\naction = \"plugin:nope\"\n",
    );
    let (code, out, _) = pmoflow_tests::cli(project.path(), &["validate"]);
    assert_eq!(code, 1, "{out}");
    assert!(
        out.contains(
            "workflows/q.toml:2:1: error: step `a` uses plugin `nope`, which is not installed"
        ),
        "{out}"
    );
}

#[test]
fn pmoflow_toml_grants_are_checked_with_positions() {
    let project = Project::new();
    project.config("[plugins.domain-check]\ncapabilities = [\"http\", \"smtp\"]\nallow_hosts = [\"rdap.example.jp\"]\n");
    let (code, _, err) = pmoflow_tests::cli(project.path(), &["validate"]);
    assert_eq!(code, 1);
    assert!(
        err.contains("pmoflow.toml:2:25: error: unknown capability `smtp`"),
        "{err}"
    );
    project.config("[plugins.domain-check]\ncapabilities = [\"http\"]\nallow_hosts = [\"https://rdap.example.jp/\"]\n");
    let (code, _, err) = pmoflow_tests::cli(project.path(), &["validate"]);
    assert_eq!(code, 1);
    assert!(err.contains("pmoflow.toml:3:16: error: invalid allow_hosts entry `https://rdap.example.jp/`: write a host name, not a URL"), "{err}");
    project.config("[plugins.domain-check]\ncapabilities = [\"whois\"]\n");
    let (code, _, err) = pmoflow_tests::cli(project.path(), &["validate"]);
    assert_eq!(code, 1);
    assert!(
        err.contains("grants a network capability but no allow_hosts"),
        "{err}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn kv_is_persistent_per_plugin_and_committed_only_when_run_returns() {
    let (db, project) = fresh(Backend::Postgres, "p.toml", WORKFLOW).await;
    let grants = hostile_grants(1, 2);
    let go = |engine: &InProcess, what: &'static str| {
        let engine = engine.engine.clone();
        async move {
            let inputs = json!({ "what": what });
            let id = engine
                .trigger("p", &RunRequest::manual(&inputs))
                .await
                .unwrap()
                .id()
                .to_string();
            let run = wait_run(engine.store(), &id, Duration::from_secs(10), |r| {
                r.status.is_terminal()
            })
            .await;
            let steps = engine.store().get_steps(&id).await.unwrap();
            let bad = steps.iter().find(|s| s.step_id == "bad").cloned();
            (run, bad)
        }
    };
    let engine1 = engine(&db, &project, &grants).await;
    for n in 1..=2 {
        let (run, bad) = go(&engine1, "kv-count").await;
        assert_eq!(run.status, RunStatus::Succeeded, "{run:?}");
        assert_eq!(bad.unwrap().output.unwrap()["count"], n);
    }
    // A trap after a write: the write is thrown away with the Store.
    let (run, _) = go(&engine1, "kv-then-panic").await;
    assert_eq!(run.status, RunStatus::Failed);
    engine1.stop().await;
    // A new engine (a restart) sees what was committed.
    let engine2 = engine(&db, &project, &grants).await;
    let (_, bad) = go(&engine2, "kv-count").await;
    let out = bad.unwrap().output.unwrap();
    assert_eq!(out["count"], 3, "{out}");
    assert_eq!(out["keys"], json!(["count"]));
    engine2.stop().await;
}

#[test]
fn plugin_new_scaffolds_a_crate_that_builds_and_runs_anywhere() {
    // An empty directory outside the repository: the binary carries the SDK and the WIT.
    let dir = tempfile::tempdir().unwrap();
    assert!(
        !dir.path()
            .starts_with(repo_plugins().join("..").canonicalize().unwrap())
    );
    let (code, out, err) = pmoflow_tests::cli(dir.path(), &["plugin", "new", "hello-world"]);
    assert_eq!(code, 0, "{err}");
    assert!(
        out.contains("cargo build --release --target wasm32-wasip2"),
        "{out}"
    );
    let root = dir.path().join("hello-world");
    for f in [
        "Cargo.toml",
        "Cargo.lock",
        "plugin.toml",
        "src/lib.rs",
        "README.md",
        "sdk/Cargo.toml",
        "sdk/src/lib.rs",
        "wit/plugin.wit",
    ] {
        assert!(root.join(f).is_file(), "{f}");
    }
    // What it writes is what this binary serves.
    assert_eq!(
        std::fs::read_to_string(root.join("wit/plugin.wit")).unwrap(),
        std::fs::read_to_string(repo_plugins().join("wit/plugin.wit")).unwrap()
    );
    let (code, _, err) = pmoflow_tests::cli(dir.path(), &["plugin", "new", "Hello"]);
    assert_eq!(code, 1);
    assert!(err.contains("`Hello` is not a plugin name"), "{err}");
    let (code, _, err) = pmoflow_tests::cli(dir.path(), &["plugin", "new", "hello-world"]);
    assert_eq!(code, 1);
    assert!(err.contains("already exists"), "{err}");
    // Build it as an integrator would. The target directory of the daemon's guest build is
    // shared only to reuse the compiled dependencies (wit-bindgen, serde).
    let target = std::path::Path::new(pmoflow::plugins::shipped::GUEST_TARGET_DIR);
    let status = std::process::Command::new("cargo")
        .args(["build", "--release", "--target", "wasm32-wasip2"])
        .current_dir(&root)
        .env("CARGO_TARGET_DIR", target)
        .status()
        .unwrap();
    assert!(status.success());
    let wasm = target.join("wasm32-wasip2/release/hello_world.wasm");
    let (code, out, err) =
        pmoflow_tests::cli(dir.path(), &["plugin", "inspect", wasm.to_str().unwrap()]);
    assert_eq!(code, 0, "{err}");
    let doc: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(doc["descriptor"]["name"], "hello-world");
    let (code, out, err) = pmoflow_tests::cli(
        dir.path(),
        &[
            "plugin",
            "run",
            wasm.to_str().unwrap(),
            "--input",
            "{\"name\": \"山田\"}",
        ],
    );
    assert_eq!(code, 0, "{err}");
    assert_eq!(
        serde_json::from_str::<serde_json::Value>(&out).unwrap(),
        json!({ "greeting": "こんにちは、山田さん" })
    );
    let (code, _, err) = pmoflow_tests::cli(
        dir.path(),
        &[
            "plugin",
            "run",
            wasm.to_str().unwrap(),
            "--input",
            "{\"nom\": 1}",
        ],
    );
    assert_eq!(code, 1);
    assert!(err.contains("invalid input"), "{err}");
    // Installed as its README says (plugin.toml and the component in a plugins_dir), a daemon
    // loads it next to the shipped plugins.
    let installed = dir.path().join("plugins/hello-world");
    std::fs::create_dir_all(installed.join("target/wasm32-wasip2/release")).unwrap();
    std::fs::copy(root.join("plugin.toml"), installed.join("plugin.toml")).unwrap();
    std::fs::copy(
        &wasm,
        installed.join("target/wasm32-wasip2/release/hello_world.wasm"),
    )
    .unwrap();
    let (host, problems) =
        PluginHost::load(&dir.path().join("plugins"), &Grants::default(), None).unwrap();
    assert!(
        problems.iter().all(|p| p.contains("domain-check")),
        "{problems:?}"
    );
    assert_eq!(host.names(), ["echo", "hello-world", "status-digest"]);
}

#[test]
fn shipped_plugins_are_built_in_and_an_installed_one_replaces_them() {
    // No plugins directory at all: the shipped plugins are there (domain-check needs a grant).
    let none = tempfile::tempdir().unwrap();
    let (host, problems) =
        PluginHost::load(&none.path().join("absent"), &Grants::default(), None).unwrap();
    assert_eq!(host.names(), ["echo", "status-digest"]);
    assert_eq!(problems.len(), 1, "{problems:?}");
    assert!(
        problems[0]
            .starts_with("shipped plugin `domain-check`: imports capabilities it was not granted"),
        "{problems:?}"
    );
    let mut grant = Grant::default();
    for cap in ["http", "tls", "whois"] {
        grant.capabilities.insert(cap.into());
    }
    grant.allow_hosts = vec![HostRule::parse("whois.jprs.jp").unwrap()];
    let mut grants = Grants::default();
    grants.plugins.insert("domain-check".into(), grant);
    let (host, problems) = PluginHost::load(&none.path().join("absent"), &grants, None).unwrap();
    assert!(problems.is_empty(), "{problems:?}");
    assert_eq!(host.names(), ["domain-check", "echo", "status-digest"]);
    assert!(host.manifest("echo").unwrap().shipped);
    // An installed `echo` (here: the hostile fixture's component under that name) replaces the
    // shipped one; a broken one leaves the shipped one in use, saying so.
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(dir.path().join("echo")).unwrap();
    std::fs::write(
        dir.path().join("echo/plugin.toml"),
        format!(
            "name = \"echo\"\nversion = \"9.0.0\"\ncomponent = \"{}\"\ncapabilities = [\"http\", \"kv\", \"log\"]\n",
            guest_wasm().join("hostile.wasm").display()
        ),
    )
    .unwrap();
    let (host, problems) = PluginHost::load(
        dir.path(),
        &Grants::all(hostile_grants(1, 2).get("hostile").clone()),
        None,
    )
    .unwrap();
    assert!(problems.iter().all(|p| !p.contains("echo")), "{problems:?}");
    let echo = host.manifest("echo").unwrap();
    assert!(!echo.shipped);
    assert_eq!(echo.version, "9.0.0");
    std::fs::write(
        dir.path().join("echo/plugin.toml"),
        "name = \"echo\"\nversion = \"9.0.0\"\ncomponent = \"missing.wasm\"\n",
    )
    .unwrap();
    let (host, problems) = PluginHost::load(dir.path(), &Grants::default(), None).unwrap();
    assert!(host.manifest("echo").unwrap().shipped);
    assert!(
        problems.iter().any(|p| p.contains("cannot load component")
            && p.ends_with("(the shipped `echo` stays in use)")),
        "{problems:?}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn status_digest_summarises_a_collection_with_a_csv() {
    let cache = tempfile::tempdir().unwrap();
    let (mut host, _) =
        PluginHost::load(&plugins_dir(), &Grants::default(), Some(cache.path())).unwrap();
    host.prepare().await;
    let input = json!({
        "projects": [
            { "id": "P-001", "name": "電子申請基盤", "lead": "yamada@example.go.jp" },
            { "id": "P-002", "name": "文書管理, 更改", "lead": "sato@example.go.jp", "budget": 50_000_000.0 },
            { "id": "P-003", "name": "統計システム", "lead": "suzuki@example.go.jp" },
            { "id": "P-004", "name": "人事給与", "lead": "tanaka@example.go.jp" },
        ],
        "responses": [
            // Typed by the request (amounts in 万円), as the shipped collection sends them.
            { "project": "P-001", "status": "answered", "fields": {
                "総合評価": "良好", "予算額": 1200, "契約額": 1100, "執行額": 600, "見込額": 1250 } },
            { "project": "P-002", "status": "late", "days_late": 2, "fields": {
                "総合評価": "「注意」", "見込額": 5600 } },
            { "project": "P-003", "status": "answered", "fields": { "総合評価": "要対応（ベンダー遅延）" } },
            { "project": "P-004", "status": "unanswered", "days_late": 35 },
        ],
    });
    let call = pmoflow::plugins::PluginCall {
        run_id: "r",
        workflow_id: "pjmo",
        step_key: "digest",
        attempt: 1,
        now_ms: 0,
    };
    let (out, _) = host
        .invoke("status-digest", &call, &input.to_string())
        .await
        .unwrap();
    let out: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(out["total"], 4);
    assert_eq!(out["answered"], 3);
    assert_eq!(
        out["by_rating"],
        json!({ "良好": 1, "注意": 1, "要対応": 1, "未回答": 1 })
    );
    assert_eq!(out["late"][0]["project"], "P-002");
    assert_eq!(out["unanswered"][0]["project"], "P-004");
    // P-001 is 4.2% over (under the 10% threshold); P-002 is 12% over its register budget.
    assert_eq!(out["cost_overruns"].as_array().unwrap().len(), 1);
    assert_eq!(out["cost_overruns"][0]["project"], "P-002");
    assert_eq!(out["cost_overruns"][0]["over_percent"], 12.0);
    assert_eq!(out["rows"][0]["over_percent"], 4.2);
    let cases: Vec<&str> = out["support_cases"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["project"].as_str().unwrap())
        .collect();
    assert_eq!(cases, ["P-002", "P-003", "P-004"]);
    let csv = out["csv"].as_str().unwrap();
    let lines: Vec<&str> = csv.trim_start_matches('\u{feff}').split("\r\n").collect();
    assert_eq!(
        lines[0],
        "プロジェクトID,プロジェクト名,PJMO,回答状況,総合評価,予算(円),見込(円),超過率(%),遅延日数,支援"
    );
    assert_eq!(
        lines[2],
        "P-002,\"文書管理, 更改\",sato@example.go.jp,期限後回答,注意,50000000,56000000,12,2,経費超過 12%"
    );
    assert_eq!(
        lines[4],
        "P-004,人事給与,tanaka@example.go.jp,未回答,未回答,,,,35,35日遅延"
    );
    assert_eq!(lines.len(), 6, "header, four rows, final CRLF");
}

/// A plugin stuck inside a host call (an HTTP fetch from a server that accepts and never
/// answers) is stopped by its deadline like one spinning in its own code; one that floods its
/// log keeps at most `max_log` bytes of it and still succeeds.
#[tokio::test(flavor = "multi_thread")]
async fn a_plugin_stuck_in_a_host_call_is_stopped_and_a_log_flood_is_capped() {
    let (db, project) = fresh(Backend::Sqlite, "p.toml", WORKFLOW).await;
    let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = silent.local_addr().unwrap().port();
    let held = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let keep = held.clone();
    std::thread::spawn(move || {
        for sock in silent.incoming().flatten() {
            keep.lock().unwrap().push(sock);
        }
    });
    let engine = engine(&db, &project, &hostile_grants(1, port)).await;
    let store = engine.store();
    let started = Instant::now();
    let inputs = json!({ "what": "fetch", "url": format!("http://127.0.0.1:{port}/never") });
    let stuck = engine.trigger("p", &inputs).await;
    let inputs = json!({ "what": "log-flood", "url": "" });
    let flood = engine.trigger("p", &inputs).await;
    let run = expect_done(&store, &stuck, RunStatus::Failed).await;
    let error = run.error.unwrap_or_default();
    assert!(error.contains("ran past 2 s"), "{error}");
    assert!(
        !held.lock().unwrap().is_empty(),
        "the fetch reached the silent server"
    );
    println!(
        "a plugin stuck in a host call stopped after {} ms",
        started.elapsed().as_millis()
    );
    assert!(started.elapsed() < Duration::from_secs(20));
    expect_done(&store, &flood, RunStatus::Succeeded).await;
    let steps = store.get_steps(&flood).await.unwrap();
    let bad = steps.iter().find(|s| s.step_id == "bad").unwrap();
    assert_eq!(bad.output.as_ref().unwrap(), &json!({ "logged": 20000 }));
    engine.stop().await;
}

/// The daemon compiles a plugin missing from its cache in a child process (`pmoflow plugin
/// compile`) and maps the code the child wrote, so the compiler never enters the daemon's
/// memory; a plugin step runs on that code; the next start finds everything in the cache and
/// compiles nothing. The child refuses what is not a component, saying why.
#[tokio::test(flavor = "multi_thread")]
async fn missing_plugins_are_compiled_in_a_child_process_and_cached() {
    let (db, project) = fresh(
        Backend::Sqlite,
        "e.toml",
        "id = \"e\"\n[[steps]]\nid = \"echo\"\naction = \"plugin:echo\"\nwith = { greeting = \"こんにちは\" }\n",
    )
    .await;
    project.config_on(
        &db,
        "plugin_cache_dir = \"var/cache\"\n[engine]\npoll_interval = \"100ms\"\n",
    );
    let dir = project.path();
    let mut d = pmoflow_tests::Daemon::start(dir, "first", &[]);
    let log = d.wait_log("plugins ready", pmoflow_tests::STARTUP);
    assert!(
        log.matches("plugin compiled by a child process").count() >= 2,
        "{log}"
    );
    assert!(!log.contains("compiling here"), "{log}");
    let cached = std::fs::read_dir(dir.join("var/cache"))
        .unwrap()
        .filter(|e| {
            e.as_ref()
                .unwrap()
                .path()
                .extension()
                .is_some_and(|x| x == "cwasm")
        })
        .count();
    assert!(cached >= 2, "{cached} compiled files in the cache");
    let store = pmoflow::store::Store::open(&db.url, Durability::Process)
        .await
        .unwrap();
    let id = pmoflow_tests::cli_ok(dir, &["trigger", "e"])
        .trim()
        .to_string();
    d.expect_done(&store, &id, RunStatus::Succeeded).await;
    let out = pmoflow_tests::step_output(&store, &id, "echo").await;
    assert_eq!(out["echo"]["greeting"], "こんにちは", "{out}");
    assert_eq!(d.terminate(Duration::from_secs(15)), Some(0));

    let again = pmoflow_tests::Daemon::start(dir, "second", &[]);
    let log = again.wait_log("plugins ready", pmoflow_tests::STARTUP);
    assert!(!log.contains("plugin compiled by a child process"), "{log}");

    let mut child = std::process::Command::new(pmoflow_tests::bin())
        .args(["plugin", "compile", "--out"])
        .arg(dir.join("junk.cwasm"))
        .stdin(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    std::io::Write::write_all(&mut child.stdin.take().unwrap(), b"not wasm").unwrap();
    let out = child.wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.starts_with("error: "), "{err}");
    assert!(!dir.join("junk.cwasm").exists());
    store.close().await;
}
