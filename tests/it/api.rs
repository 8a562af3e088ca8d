//! The HTTP API against the real daemon: every endpoint, with its auth failures and exact status
//! codes; webhook triggers signed and by token, replays; `/metrics` read by Python's
//! prometheus_client parser.

use std::time::Duration;

use pmoflow::store::{Durability, RunStatus, Store};
use pmoflow_tests::Call;
use pmoflow_tests::fresh;
use pmoflow_tests::{Backend, Daemon, Project, STARTUP, TestDb, free_port, wait};
use pmoflow_tests::{expect_done, wait_status};
use serde_json::{Value as Json, json};

const INCIDENT: &str = include_str!("../fixtures/flows/api_incident.toml");

const SLOW: &str = include_str!("../fixtures/flows/api_slow.toml");

struct Api {
    _project: Project,
    _db: TestDb,
    daemon: Daemon,
    base: String,
    admin: String,
    operator: String,
    viewer: String,
    url: String,
}

async fn start() -> Api {
    start_with("").await
}

/// The API daemon with `http` appended to its `[http]` section.
async fn start_with(http: &str) -> Api {
    let (db, project) = fresh(Backend::Sqlite, "incident.toml", INCIDENT).await;
    project.workflow("slow.toml", SLOW);
    let (admin, a) = pmoflow_tests::new_api_token(project.path(), "root", "admin");
    let (operator, o) = pmoflow_tests::new_api_token(project.path(), "monitoring", "operator");
    let (viewer, v) = pmoflow_tests::new_api_token(project.path(), "dashboard", "viewer");
    let port = free_port();
    project.config(&format!(
        "database_url = \"{}\"\n[engine]\npoll_interval = \"100ms\"\n[secrets]\nhook_key = {{ env = \"PMOFLOW_HOOK_KEY\" }}\n[http]\nlisten = \"127.0.0.1:{port}\"\n{http}\n\n{a}\n{o}\n{v}\n",
        db.url
    ));
    let daemon = Daemon::start(
        project.path(),
        "d",
        &[("PMOFLOW_HOOK_KEY", "s3cret-hook-key")],
    );
    daemon.wait_log("http listening", STARTUP);
    let url = db.url.clone();
    Api {
        _project: project,
        _db: db,
        daemon,
        base: format!("http://127.0.0.1:{port}"),
        admin,
        operator,
        viewer,
        url,
    }
}

fn signed(body: &[u8], ts: i64) -> (String, String) {
    (
        ts.to_string(),
        pmoflow::outbox::webhook::sign(b"s3cret-hook-key", ts, body),
    )
}

#[tokio::test(flavor = "multi_thread")]
async fn webhook_triggers_are_authenticated_and_idempotent() {
    let api = start().await;
    let web = reqwest::Client::new();
    let hook = format!("{}/hooks/incident", api.base);
    let body = serde_json::to_vec(
        &json!({ "severity": "S1", "system": "電子申請", "summary": "応答なし" }),
    )
    .unwrap();
    let now = chrono::Utc::now().timestamp();

    // No credentials, a wrong signature, a stale (replayed) one: 401.
    // A body that does not say it is JSON: 415, before anything else.
    web.post(&hook)
        .header("content-type", "text/plain")
        .body(body.clone())
        .expect(415)
        .await;
    let res = web.post(&hook).body(body.clone()).send().await.unwrap();
    assert_eq!(res.status(), 415, "no content type");
    web.post(&hook)
        .header("content-type", "application/json")
        .body(body.clone())
        .expect(401)
        .await;
    let (ts, _) = signed(&body, now);
    web.post(&hook)
        .header("X-Pmoflow-Timestamp", &ts)
        .header("X-Pmoflow-Signature", "sha256=00")
        .header("content-type", "application/json")
        .body(body.clone())
        .expect(401)
        .await;
    let (old_ts, old_sig) = signed(&body, now - 600);
    let res = web
        .post(&hook)
        .header("X-Pmoflow-Timestamp", &old_ts)
        .header("X-Pmoflow-Signature", &old_sig)
        .header("content-type", "application/json")
        .body(body.clone())
        .expect(401)
        .await;
    let text = res.text().await.unwrap();
    assert!(
        text.contains("timestamp outside the 300 s window (replayed or stale request)"),
        "{text}"
    );

    // Signed: 202 with the run id; the same request again returns the same run.
    let (ts, sig) = signed(&body, now);
    let send = || {
        web.post(&hook)
            .header("X-Pmoflow-Timestamp", &ts)
            .header("X-Pmoflow-Signature", &sig)
            .header("content-type", "application/json")
            .body(body.clone())
            .send()
    };
    let res = send().await.unwrap();
    assert_eq!(res.status(), 202);
    let first: Json = res.json().await.unwrap();
    let run_id = first["run_id"].as_str().unwrap().to_string();
    let res = send().await.unwrap();
    assert_eq!(res.status(), 200);
    let again: Json = res.json().await.unwrap();
    assert_eq!(again["run_id"], run_id.as_str());

    // Bearer tokens: viewer 403, operator 202; Idempotency-Key de-duplicates.
    web.post(&hook)
        .bearer_auth(&api.viewer)
        .header("content-type", "application/json")
        .body(body.clone())
        .expect(403)
        .await;
    web.post(&hook)
        .bearer_auth(&api.operator)
        .header("Idempotency-Key", "alert-42")
        .header("content-type", "application/json")
        .body(body.clone())
        .expect(202)
        .await;
    web.post(&hook)
        .bearer_auth(&api.operator)
        .header("Idempotency-Key", "alert-42")
        .header("content-type", "application/json")
        .body(body.clone())
        .expect(200)
        .await;

    // Bad inputs, unknown workflows, workflows without a webhook trigger.
    for (path, body, status) in [
        ("/hooks/incident", json!({ "nope": 1 }).to_string(), 400),
        ("/hooks/incident", "[1, 2]".to_string(), 400),
        ("/hooks/incident", "{".to_string(), 400),
        ("/hooks/missing", "{}".to_string(), 404),
        ("/hooks/slow", "{}".to_string(), 404),
    ] {
        let res = web
            .post(format!("{}{path}", api.base))
            .bearer_auth(&api.operator)
            .header("content-type", "application/json")
            .body(body.clone())
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), status, "{path} {body}");
    }

    let store = Store::open(&api.url, Durability::Process).await.unwrap();
    let run = expect_done(&store, &run_id, RunStatus::Succeeded).await;
    assert_eq!(run.trigger_kind, "webhook");
    assert_eq!(run.inputs["system"], "電子申請");
    assert!(api.daemon.log_text().contains("webhook call refused"));
    assert!(
        !api.daemon.log_text().contains("s3cret-hook-key"),
        "the secret never appears in logs"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn the_rest_api_with_roles_and_an_audit_trail() {
    let api = start().await;
    let web = reqwest::Client::new();
    let get = |path: &str, token: Option<&str>| {
        let mut r = web.get(format!("{}{path}", api.base));
        if let Some(t) = token {
            r = r.bearer_auth(t);
        }
        r.send()
    };
    assert_eq!(get("/healthz", None).await.unwrap().status(), 200);
    let ready: Json = get("/readyz", None).await.unwrap().json().await.unwrap();
    assert_eq!(ready["workflows"], 2, "{ready}");

    // Reading needs a token; any role may read.
    assert_eq!(get("/api/workflows", None).await.unwrap().status(), 401);
    assert_eq!(
        get("/api/workflows", Some("pmo_wrong"))
            .await
            .unwrap()
            .status(),
        401
    );
    let wf: Json = get("/api/workflows", Some(&api.viewer))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let ids: Vec<&str> = wf["workflows"]
        .as_array()
        .unwrap()
        .iter()
        .map(|w| w["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, ["incident", "slow"]);
    assert_eq!(wf["workflows"][0]["webhook"], true);
    let one: Json = get("/api/workflows/incident", Some(&api.viewer))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(one["name"], "緊急連絡");
    assert_eq!(one["steps"][0]["action"], "log");
    assert_eq!(
        get("/api/workflows/nope", Some(&api.viewer))
            .await
            .unwrap()
            .status(),
        404
    );

    // Triggering needs operator.
    let post = |path: &str, token: &str, body: Json| {
        web.post(format!("{}{path}", api.base))
            .bearer_auth(token)
            .json(&body)
            .send()
    };
    let res = post("/api/runs", &api.viewer, json!({ "workflow": "slow" }))
        .await
        .unwrap();
    assert_eq!(res.status(), 403);
    let res = post("/api/runs", &api.operator, json!({ "workflow": "nope" }))
        .await
        .unwrap();
    assert_eq!(res.status(), 404);
    let res = post("/api/runs", &api.operator, json!({ "flow": "slow" }))
        .await
        .unwrap();
    assert_eq!(res.status(), 400);
    let res = post(
        "/api/runs",
        &api.operator,
        json!({ "workflow": "slow", "inputs": { "x": 1 } }),
    )
    .await
    .unwrap();
    assert_eq!(res.status(), 400);
    let res = post("/api/runs", &api.operator, json!({ "workflow": "slow" }))
        .await
        .unwrap();
    assert_eq!(res.status(), 201);
    let run_id = res.json::<Json>().await.unwrap()["run_id"]
        .as_str()
        .unwrap()
        .to_string();

    let store = Store::open(&api.url, Durability::Process).await.unwrap();
    wait_status(&store, &run_id, RunStatus::Waiting).await;
    let runs: Json = get("/api/runs?workflow=slow", Some(&api.viewer))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(runs["runs"].as_array().unwrap().len(), 1);
    assert_eq!(
        get("/api/runs?status=bogus", Some(&api.viewer))
            .await
            .unwrap()
            .status(),
        400
    );
    let one: Json = get(&format!("/api/runs/{run_id}"), Some(&api.viewer))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(one["run"]["status"], "waiting");
    assert_eq!(one["steps"][0]["step_id"], "pause");
    assert_eq!(
        get("/api/runs/nope", Some(&api.viewer))
            .await
            .unwrap()
            .status(),
        404
    );

    // Cancel: viewer 403, operator 200, again 409, unknown 404.
    let cancel = format!("/api/runs/{run_id}/cancel");
    assert_eq!(
        post(&cancel, &api.viewer, json!({}))
            .await
            .unwrap()
            .status(),
        403
    );
    assert_eq!(
        post(&cancel, &api.operator, json!({}))
            .await
            .unwrap()
            .status(),
        200
    );
    assert_eq!(
        post(&cancel, &api.operator, json!({}))
            .await
            .unwrap()
            .status(),
        409
    );
    assert_eq!(
        post("/api/runs/nope/cancel", &api.operator, json!({}))
            .await
            .unwrap()
            .status(),
        404
    );

    // Requests and the outbox.
    assert_eq!(
        get("/api/requests", Some(&api.viewer))
            .await
            .unwrap()
            .status(),
        200
    );
    assert_eq!(
        get("/api/requests?status=bogus", Some(&api.viewer))
            .await
            .unwrap()
            .status(),
        400
    );
    assert_eq!(
        get("/api/outbox?status=dead", Some(&api.viewer))
            .await
            .unwrap()
            .status(),
        200
    );
    assert_eq!(
        get("/api/outbox?status=bogus", Some(&api.viewer))
            .await
            .unwrap()
            .status(),
        400
    );
    assert_eq!(
        post("/api/outbox/nope/retry", &api.viewer, json!({}))
            .await
            .unwrap()
            .status(),
        403
    );
    assert_eq!(
        post("/api/outbox/nope/retry", &api.operator, json!({}))
            .await
            .unwrap()
            .status(),
        409
    );

    // The audit log: admin only; who did what.
    assert_eq!(
        get("/api/audit", Some(&api.operator))
            .await
            .unwrap()
            .status(),
        403
    );
    let audit: Json = get("/api/audit", Some(&api.admin))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let entries = audit["entries"].as_array().unwrap();
    let has = |action: &str| {
        entries.iter().any(|e| {
            e["action"] == action && e["actor"] == "monitoring" && e["target"] == run_id.as_str()
        })
    };
    assert!(has("trigger") && has("cancel"), "{audit:#}");

    // /metrics, fetched with curl, parses as Prometheus text and has the runs and step durations.
    let curl = std::process::Command::new("curl")
        .args(["-sf", &format!("{}/metrics", api.base)])
        .output()
        .expect("curl");
    assert!(curl.status.success());
    let text = String::from_utf8(curl.stdout).unwrap();
    let out = std::process::Command::new("python3")
        .args([
            "-c",
            "import sys\nfrom prometheus_client.parser import text_string_to_metric_families as p\nprint('\\n'.join(sorted({f.name for f in p(sys.stdin.read())})))",
        ])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .and_then(|mut c| {
            use std::io::Write;
            c.stdin.take().unwrap().write_all(text.as_bytes())?;
            c.wait_with_output()
        })
        .unwrap();
    assert!(
        out.status.success(),
        "{}\n{text}",
        String::from_utf8_lossy(&out.stderr)
    );
    let families = String::from_utf8_lossy(&out.stdout);
    for f in [
        "pmoflow_runs",
        "pmoflow_outbox_messages",
        "pmoflow_step_duration_seconds",
    ] {
        assert!(
            families.lines().any(|l| l == f),
            "{f} missing: {families}\n{text}"
        );
    }
    assert!(
        text.contains("pmoflow_runs{workflow=\"slow\",status=\"cancelled\"} 1"),
        "{text}"
    );
}

const FLAKY: &str = include_str!("../fixtures/flows/api_flaky.toml");

#[tokio::test(flavor = "multi_thread")]
async fn a_failed_run_can_be_retried_from_its_failed_step() {
    let api = start().await;
    let dir = api._project.path().to_path_buf();
    std::fs::write(dir.join("workflows/data/flag.toml"), "other = 1\n").unwrap();
    std::fs::write(dir.join("workflows/flaky.toml"), FLAKY).unwrap();
    let web = reqwest::Client::new();
    let post = |path: String, token: &str| {
        web.post(format!("{}{path}", api.base))
            .bearer_auth(token)
            .json(&json!({ "workflow": "flaky" }))
            .send()
    };
    // Wait for the reload to pick the new workflow up.
    wait::until(
        "the flaky workflow to be loaded",
        Duration::from_secs(30),
        || async {
            let res = web
                .get(format!("{}/api/workflows/flaky", api.base))
                .bearer_auth(&api.viewer)
                .send()
                .await
                .unwrap();
            if res.status() == 200 {
                Ok(())
            } else {
                Err(res.status())
            }
        },
    )
    .await;
    let res = post("/api/runs".into(), &api.operator).await.unwrap();
    assert_eq!(res.status(), 201);
    let run_id = res.json::<Json>().await.unwrap()["run_id"]
        .as_str()
        .unwrap()
        .to_string();
    let store = Store::open(&api.url, Durability::Process).await.unwrap();
    expect_done(&store, &run_id, RunStatus::Failed).await;
    // Not retryable yet by a viewer, nor a run that did not fail.
    assert_eq!(
        post(format!("/api/runs/{run_id}/retry"), &api.viewer)
            .await
            .unwrap()
            .status(),
        403
    );
    assert_eq!(
        post("/api/runs/nope/retry".into(), &api.operator)
            .await
            .unwrap()
            .status(),
        404
    );
    // Fix the data, retry: the failed step runs again, the first one does not.
    let reloads = api.daemon.log_text().matches("workflows reloaded").count();
    std::fs::write(dir.join("workflows/data/flag.toml"), "ok = \"yes\"\n").unwrap();
    api.daemon
        .wait_log_count("workflows reloaded", reloads + 1, Duration::from_secs(30));
    let res = post(format!("/api/runs/{run_id}/retry"), &api.operator)
        .await
        .unwrap();
    assert_eq!(res.status(), 202);
    expect_done(&store, &run_id, RunStatus::Succeeded).await;
    let steps = store.get_steps(&run_id).await.unwrap();
    assert_eq!(
        steps[0].attempt, 1,
        "the step that succeeded did not run again"
    );
    assert_eq!(steps[1].attempt, 2);
    assert_eq!(steps[1].output.as_ref().unwrap()["message"], "flag is yes");
    assert_eq!(
        post(format!("/api/runs/{run_id}/retry"), &api.operator)
            .await
            .unwrap()
            .status(),
        409
    );
    let log = api.daemon.log_text();
    assert_eq!(log.matches("first-step-ran").count(), 1, "{log}");
}

#[tokio::test(flavor = "multi_thread")]
async fn the_openapi_document_covers_every_route_and_each_refuses_a_missing_token() {
    let api = start().await;
    let web = reqwest::Client::new();
    let res = web
        .get(format!("{}/api/openapi.json", api.base))
        .expect(200)
        .await;
    let doc: Json = res.json().await.unwrap();
    assert_eq!(doc["openapi"], "3.1.0");
    let paths = doc["paths"].as_object().unwrap();
    for p in [
        "/hooks/incident",
        "/api/workflows",
        "/api/runs",
        "/api/runs/{id}",
        "/api/runs/{id}/cancel",
        "/api/runs/{id}/retry",
        "/api/requests",
        "/api/outbox",
        "/api/outbox/{id}/retry",
        "/api/audit",
        "/api/cluster",
        "/api/acks",
        "/inbound/email",
        "/readyz",
        "/metrics",
    ] {
        assert!(paths.contains_key(p), "{p} missing from the document");
    }
    assert!(doc["paths"]["/api/runs"]["post"]["responses"]["201"].is_object());
    // Typed: the start-a-run body lists the loaded workflows with their declared inputs, the
    // webhook of `incident` takes its inputs and nothing else, listings have typed query
    // parameters, responses and errors refer to schemas, and a started run links to its
    // follow-up operations.
    let start = &doc["paths"]["/api/runs"]["post"];
    let alternatives = start["requestBody"]["content"]["application/json"]["schema"]["oneOf"]
        .as_array()
        .unwrap();
    let names: Vec<&str> = alternatives
        .iter()
        .map(|a| a["properties"]["workflow"]["const"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["incident", "slow"]);
    assert_eq!(
        alternatives[0]["properties"]["inputs"]["properties"]["severity"]["default"],
        "S3"
    );
    let hook = &doc["paths"]["/hooks/incident"]["post"]["requestBody"]["content"]["application/json"]
        ["schema"];
    assert_eq!(hook["additionalProperties"], false);
    assert!(hook["properties"]["summary"].is_object());
    assert_eq!(
        start["responses"]["201"]["content"]["application/json"]["schema"]["$ref"],
        "#/components/schemas/RunStarted"
    );
    assert_eq!(
        start["responses"]["201"]["links"]["GetRun"]["parameters"]["id"],
        "$response.body#/run_id"
    );
    assert_eq!(
        start["responses"]["404"]["content"]["application/json"]["schema"]["$ref"],
        "#/components/schemas/ApiError"
    );
    let list = doc["paths"]["/api/runs"]["get"]["parameters"]
        .as_array()
        .unwrap();
    let status = list.iter().find(|p| p["name"] == "status").unwrap();
    assert_eq!(status["in"], "query");
    assert_eq!(
        status["schema"]["$ref"], "#/components/schemas/RunStatus",
        "{status}"
    );
    let limit = list.iter().find(|p| p["name"] == "limit").unwrap();
    assert_eq!(limit["schema"]["maximum"], 1000);
    let schemas = doc["components"]["schemas"].as_object().unwrap();
    for name in [
        "RunRow",
        "StepRow",
        "EventRow",
        "RunStatus",
        "ApiError",
        "ClusterView",
        "OutboxRow",
        "RequestRow",
    ] {
        assert!(schemas.contains_key(name), "{name} missing from components");
    }
    let statuses: Vec<&Json> = schemas["RunStatus"]["oneOf"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| &v["const"])
        .collect();
    assert!(statuses.contains(&&json!("cancelled")), "{statuses:?}");
    // What the daemon leaves out when empty is optional; what it always sends is required.
    assert_eq!(schemas["RunStarted"]["required"], json!(["run_id"]));
    // Errors made outside the handlers are JSON too: an unknown path, a wrong method.
    let res = web
        .get(format!("{}/api/nothing-here", api.base))
        .expect(404)
        .await;
    let e: Json = res.json().await.unwrap();
    assert!(e["error"].is_string(), "{e}");
    let res = web
        .delete(format!("{}/api/runs", api.base))
        .expect(405)
        .await;
    assert!(res.headers().contains_key("allow"));
    let e: Json = res.json().await.unwrap();
    assert!(e["error"].is_string(), "{e}");
    // Every operation that needs a token refuses a call without one: 401.
    let mut checked = 0;
    for (path, item) in paths {
        for (method, op) in item.as_object().unwrap() {
            if op.get("security").is_none() {
                continue;
            }
            let url = format!(
                "{}{}",
                api.base,
                path.replace("{workflow}", "incident").replace("{id}", "x")
            );
            let req = match method.as_str() {
                "get" => web.get(&url),
                "post" => web
                    .post(&url)
                    .header("content-type", "application/json")
                    .body("{}"),
                other => panic!("unexpected method {other}"),
            };
            let res = req.send().await.unwrap();
            assert_eq!(res.status(), 401, "{method} {path}");
            assert!(res.headers().contains_key("x-request-id"));
            checked += 1;
        }
    }
    assert_eq!(checked, 19, "every operation that needs a token");
}

/// `GET /api/cluster` (viewer): the one daemon on the SQLite file, live, holding the scheduler,
/// with the instance id it logged at start; no token is refused.
#[tokio::test(flavor = "multi_thread")]
async fn the_cluster_endpoint_shows_the_daemon_its_roles_and_no_warnings() {
    let api = start().await;
    let web = reqwest::Client::new();
    let url = format!("{}/api/cluster", api.base);
    assert_eq!(web.get(&url).send().await.unwrap().status(), 401);
    let log = api.daemon.wait_log("role taken", STARTUP);
    let instance = log
        .lines()
        .find(|l| l.contains("pmoflow starting"))
        .and_then(|l| l.split("instance=").nth(1))
        .and_then(|v| v.split_whitespace().next())
        .unwrap()
        .to_string();
    let res = web.get(&url).bearer_auth(&api.viewer).expect(200).await;
    let v: Json = res.json().await.unwrap();
    assert_eq!(v["backend"], "sqlite", "{v:#}");
    let daemons = v["daemons"].as_array().unwrap();
    assert_eq!(daemons.len(), 1, "{v:#}");
    assert_eq!(daemons[0]["instance_id"], instance.as_str(), "{v:#}");
    assert_eq!(daemons[0]["state"], "live", "{v:#}");
    assert_eq!(daemons[0]["version"], pmoflow::VERSION, "{v:#}");
    assert!(
        daemons[0]["heartbeat_age_ms"].as_i64().unwrap() < 8_000,
        "{v:#}"
    );
    assert_eq!(daemons[0]["roles"], json!(["scheduler"]), "{v:#}");
    assert_eq!(v["warnings"], json!([]), "{v:#}");
    assert_eq!(v["schema_applied"], v["schema_known"], "{v:#}");
}

/// Guessing tokens from one address: after 20 refusals (unknown bearer tokens, unknown answer
/// links) that address gets 429 with `Retry-After`, even with a valid token, while another
/// address is served normally; the block is in the audit log once.
#[tokio::test(flavor = "multi_thread")]
async fn guessed_tokens_are_rate_limited_per_client_address() {
    let api = start().await;
    let guesser = reqwest::Client::builder()
        .local_address("127.0.0.2".parse::<std::net::IpAddr>().unwrap())
        .build()
        .unwrap();
    let runs = format!("{}/api/runs", api.base);
    for i in 0..15 {
        let res = guesser
            .get(&runs)
            .bearer_auth(format!("guess-{i}"))
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), 401, "guess {i}");
    }
    for i in 0..5 {
        let res = guesser
            .get(format!("{}/answer/guessed-token-{i}", api.base))
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), 404, "answer guess {i}");
    }
    // The 21st attempt, and any request from that address for the rest of the minute.
    for token in ["guess-21", api.admin.as_str()] {
        let res = guesser.get(&runs).bearer_auth(token).expect(429).await;
        let wait: u64 = res.headers()["retry-after"]
            .to_str()
            .unwrap()
            .parse()
            .unwrap();
        assert!((1..=60).contains(&wait), "Retry-After {wait}");
        let body: Json = res.json().await.unwrap();
        assert!(body["error"].as_str().unwrap().contains("too many"));
    }
    // Legitimate traffic from another address is not slowed.
    reqwest::Client::new()
        .get(&runs)
        .bearer_auth(&api.admin)
        .expect(200)
        .await;
    let store = Store::open(&api.url, Durability::Process).await.unwrap();
    let audit = store.list_audit(100).await.unwrap();
    let blocks: Vec<_> = audit.iter().filter(|a| a.action == "refusals").collect();
    assert_eq!(blocks.len(), 1, "{audit:?}");
    assert_eq!(blocks[0].actor, "127.0.0.2");
    assert!(
        blocks[0]
            .detail
            .as_deref()
            .unwrap_or_default()
            .contains("20 refused")
    );
}

/// Logging in again rotates the session: a new id each time, and the one the browser sent is
/// ended (a session id planted before login is never adopted).
#[tokio::test(flavor = "multi_thread")]
async fn the_session_cookie_rotates_at_login() {
    let api = start().await;
    let web = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    let login = |cookie: Option<String>| {
        let mut req = web
            .post(format!("{}/login", api.base))
            .form(&[("token", api.viewer.as_str())]);
        if let Some(c) = cookie {
            req = req.header("Cookie", c);
        }
        req.send()
    };
    let session = |res: &reqwest::Response| {
        res.headers()["set-cookie"]
            .to_str()
            .unwrap()
            .split(';')
            .next()
            .unwrap()
            .to_string()
    };
    let first = login(None).await.unwrap();
    assert_eq!(first.status(), 303);
    let a = session(&first);
    let dashboard = |cookie: String| {
        web.get(format!("{}/", api.base))
            .header("Cookie", cookie)
            .send()
    };
    assert_eq!(dashboard(a.clone()).await.unwrap().status(), 200);
    let second = login(Some(a.clone())).await.unwrap();
    let b = session(&second);
    assert_ne!(a, b, "a new session id at login");
    assert_eq!(dashboard(b).await.unwrap().status(), 200);
    let old = dashboard(a).await.unwrap();
    assert_eq!(
        old.status(),
        303,
        "the session from before the login is ended"
    );
    // A planted id is not adopted either: logging in with it yields a fresh one.
    let planted = "pmoflow_session=0123456789abcdef0123456789abcdef".to_string();
    let third = login(Some(planted.clone())).await.unwrap();
    assert_ne!(session(&third), planted);
}

/// Schemathesis (a generic API fuzzer, PyPI) run against the live daemon with every check:
/// schema-valid requests are accepted, invalid ones refused with a 4xx, every status and body
/// is the documented one, no server error, protected operations refuse missing credentials,
/// and the stateful phase follows the document's links (start → read → cancel/retry/resolve).
#[tokio::test(flavor = "multi_thread")]
async fn a_generic_api_fuzzer_finds_no_failure_with_all_checks() {
    // The fuzzer's deliberate refusals (missing or wrong tokens) must not block it.
    let mut api = start_with("refusals_per_minute = 1000000").await;
    let examples = std::env::var("PMOFLOW_SCHEMATHESIS_EXAMPLES").unwrap_or_else(|_| "25".into());
    let out = tokio::process::Command::new("python3")
        .args([
            "-m",
            "schemathesis.cli",
            "run",
            &format!("{}/api/openapi.json", api.base),
            "-H",
            &format!("Authorization: Bearer {}", api.admin),
            "--checks",
            "all",
            "--max-examples",
            &examples,
            "--seed",
            "1",
            "--no-color",
        ])
        // Its cache directory goes into the test's project, not the source tree.
        .current_dir(api._project.path())
        .env("SCHEMATHESIS_TELEMETRY", "false")
        .env("NO_COLOR", "1")
        .output()
        .await
        .expect("run schemathesis (PyPI: schemathesis)");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "schemathesis reported failures:\n{stdout}\n{stderr}"
    );
    // The figures: every generated case passed, and there were enough of them to reach past
    // the first refusals of every operation (about 1,000 at 25 examples per operation).
    let cases = stdout
        .lines()
        .skip_while(|l| !l.contains("Test cases:"))
        .nth(1)
        .unwrap_or_else(|| panic!("no `Test cases:` summary:\n{stdout}"))
        .trim()
        .to_string();
    println!("schemathesis: {cases}");
    let count = |word: &str| -> u64 {
        cases
            .split(',')
            .find_map(|part| part.trim().strip_suffix(word)?.trim().parse().ok())
            .unwrap_or(0)
    };
    let (generated, passed) = (count("generated"), count("passed"));
    let per_operation: u64 = examples.parse().unwrap_or(25);
    assert!(
        generated >= 20 * per_operation && passed == generated,
        "schemathesis: {cases} (expected at least {} cases, all passed)",
        20 * per_operation
    );
    assert!(
        !api.daemon.log_text().contains("panicked"),
        "the daemon panicked under the fuzzer"
    );
    assert!(api.daemon.is_running(), "the daemon survived the fuzzer");
}
