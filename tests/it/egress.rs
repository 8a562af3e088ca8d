//! The egress policy of the built-in actions against a real daemon: a URL filled from a webhook
//! trigger's inputs cannot make the daemon call loopback or link-local addresses (directly,
//! through a name that resolves there, or through a redirect), while hosts the administrator
//! listed exactly are reached; `validate` refuses a literal URL outside the policy.

use pmoflow::store::{Durability, RunStatus, Store};
use pmoflow_tests::Call;
use pmoflow_tests::fresh;
use pmoflow_tests::wait_done;
use pmoflow_tests::{Backend, Daemon, Project, STARTUP, SlowHttp, TestDb, cli, free_port};
use serde_json::{Value as Json, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const FETCH: &str = include_str!("../fixtures/flows/egress_fetch.toml");

const TAGGED: &str = include_str!("../fixtures/flows/egress_tagged.toml");

const NOTIFY: &str = include_str!("../fixtures/flows/egress_notify.toml");

/// A server whose every answer is a redirect to `location`.
async fn redirector(location: String) -> u16 {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move {
        while let Ok((mut sock, _)) = listener.accept().await {
            let location = location.clone();
            tokio::spawn(async move {
                let mut buf = [0u8; 4096];
                let _ = sock.read(&mut buf).await;
                let answer = format!(
                    "HTTP/1.1 302 Found\r\nLocation: {location}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
                );
                let _ = sock.write_all(answer.as_bytes()).await;
            });
        }
    });
    port
}

struct Site {
    _project: Project,
    _db: TestDb,
    daemon: Daemon,
    store: Store,
    base: String,
    token: String,
}

async fn start(egress: &str) -> Site {
    let (db, project) = fresh(Backend::Sqlite, "fetch.toml", FETCH).await;
    project.workflow("notify.toml", NOTIFY);
    project.workflow("tagged.toml", TAGGED);
    let (token, entry) = pmoflow_tests::new_api_token(project.path(), "monitoring", "operator");
    let port = free_port();
    project.config_as_is(&format!(
        "database_url = \"{}\"\n[engine]\npoll_interval = \"100ms\"\n[http]\nlisten = \"127.0.0.1:{port}\"\n\n{entry}\n{egress}\n",
        db.url
    ));
    let daemon = Daemon::start(project.path(), "d", &[]);
    daemon.wait_log("http listening", STARTUP);
    let store = Store::open(&db.url, Durability::Process).await.unwrap();
    Site {
        _project: project,
        _db: db,
        daemon,
        store,
        base: format!("http://127.0.0.1:{port}"),
        token,
    }
}

impl Site {
    /// Triggers `workflow` through its webhook with `url` and waits for the run to end.
    async fn run(&self, workflow: &str, url: &str) -> pmoflow::store::RunRow {
        self.run_with(workflow, json!({ "url": url })).await
    }

    async fn run_with(&self, workflow: &str, inputs: Json) -> pmoflow::store::RunRow {
        let res = reqwest::Client::new()
            .post(format!("{}/hooks/{workflow}", self.base))
            .bearer_auth(&self.token)
            .json(&inputs)
            .expect(202)
            .await;
        let body: Json = res.json().await.unwrap();
        let id = body["run_id"].as_str().unwrap().to_string();
        wait_done(&self.store, &id).await
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn default_policy_keeps_trigger_inputs_off_internal_addresses() {
    let target = SlowHttp::start().await;
    let mut site = start("").await;
    let internal = format!("http://127.0.0.1:{}/internal", target.port);
    for url in [
        internal.clone(),
        // A name that resolves to loopback: refused after DNS.
        format!("http://localhost:{}/by-name", target.port),
        // Cloud metadata.
        "http://169.254.169.254/latest/meta-data/".to_string(),
    ] {
        let run = site.run("fetch", &url).await;
        assert_eq!(run.status, RunStatus::Failed, "{url}");
        let error = run.error.unwrap_or_default();
        assert!(
            error.contains(&format!("request to {url} refused: ")) && error.contains("allow_hosts"),
            "{url}: {error}"
        );
        // Refused, not retried as a network failure.
        let steps = site.store.get_steps(&run.id).await.unwrap();
        assert_eq!(steps[0].attempt, 1, "{url}: {steps:?}");
    }
    // The webhook action refuses the same way, before anything is queued.
    let run = site.run("notify", &internal).await;
    assert_eq!(run.status, RunStatus::Failed);
    let error = run.error.unwrap_or_default();
    assert!(
        error.contains(&format!("webhook to {internal} refused: ")),
        "{error}"
    );
    assert_eq!(target.calls().len(), 0, "an internal address was called");
    assert!(site.daemon.is_running());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn listed_hosts_are_reached_and_redirects_are_checked() {
    let target = SlowHttp::start().await;
    let site = start("[egress]\nallow_hosts = [\"127.0.0.1\"]").await;
    // Listed exactly: reached.
    let run = site
        .run("fetch", &format!("http://127.0.0.1:{}/ok", target.port))
        .await;
    assert_eq!(run.status, RunStatus::Succeeded, "{:?}", run.error);
    assert_eq!(target.count("/ok"), 1);
    // A listed host that redirects to one that is not: the redirect is not followed.
    let hop = redirector(format!("http://localhost:{}/after-redirect", target.port)).await;
    let run = site
        .run("fetch", &format!("http://127.0.0.1:{hop}/start"))
        .await;
    assert_eq!(run.status, RunStatus::Failed);
    let error = run.error.unwrap_or_default();
    assert!(
        error.contains("localhost") && error.contains("allow_hosts"),
        "{error}"
    );
    assert_eq!(target.count("after-redirect"), 0);
    // A header value from the trigger's input with a line break is not sent.
    let url = format!("http://127.0.0.1:{}/tagged", target.port);
    let run = site
        .run_with(
            "tagged",
            json!({ "url": url, "ticket": "INC-1\r\nX-Injected: yes" }),
        )
        .await;
    assert_eq!(run.status, RunStatus::Failed);
    assert!(
        run.error.unwrap_or_default().contains("control character"),
        "header injection not refused"
    );
    assert_eq!(target.count("/tagged"), 0);
    let run = site
        .run_with("tagged", json!({ "url": url, "ticket": "INC-1" }))
        .await;
    assert_eq!(run.status, RunStatus::Succeeded, "{:?}", run.error);
    // Not listed at all.
    let run = site.run("fetch", "http://example.com/").await;
    assert_eq!(run.status, RunStatus::Failed);
    assert!(
        run.error
            .unwrap_or_default()
            .contains("example.com:80 is not in [egress] allow_hosts")
    );
}

#[test]
fn validate_refuses_a_literal_url_outside_the_policy() {
    let project = Project::with_workflow(
        "meta.toml",
        "id = \"meta\"\n\n[[steps]]\nid = \"peek\"\naction = \"http\"\nwith = { url = \"http://169.254.169.254/latest/meta-data/\" }\n",
    );
    project.config_as_is("database_url = \"sqlite://var/p.db\"\n");
    let (code, out, _) = cli(project.path(), &["validate"]);
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("meta.toml:3:1"), "{out}");
    assert!(out.contains("refused by the egress policy"), "{out}");
    // Listed exactly, it passes; a bad entry is reported with its position.
    project.config_as_is(
        "database_url = \"sqlite://var/p.db\"\n[egress]\nallow_hosts = [\"*\", \"169.254.169.254\"]\n",
    );
    let (code, out, _) = cli(project.path(), &["validate"]);
    assert_eq!(code, 0, "{out}");
    project.config_as_is("[egress]\nallow_hosts = [\"https://x.example/\"]\n");
    let (code, out, err) = cli(project.path(), &["validate"]);
    assert_ne!(code, 0);
    assert!(
        format!("{out}{err}").contains("pmoflow.toml:2:16"),
        "{out}{err}"
    );
}

/// A server whose every answer is an endless chunked body (1 MiB chunks, up to `total` bytes or
/// until the client hangs up); counts the bytes it got out.
async fn endless(total: usize) -> (u16, std::sync::Arc<std::sync::atomic::AtomicUsize>) {
    use std::sync::atomic::Ordering;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let sent = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let counter = sent.clone();
    tokio::spawn(async move {
        while let Ok((mut sock, _)) = listener.accept().await {
            let counter = counter.clone();
            tokio::spawn(async move {
                let mut buf = [0u8; 4096];
                let _ = sock.read(&mut buf).await;
                let head = "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n";
                if sock.write_all(head.as_bytes()).await.is_err() {
                    return;
                }
                let chunk = vec![b'x'; 1 << 20];
                let mut framed = format!("{:x}\r\n", chunk.len()).into_bytes();
                framed.extend_from_slice(&chunk);
                framed.extend_from_slice(b"\r\n");
                let mut out = 0;
                while out < total {
                    if sock.write_all(&framed).await.is_err() {
                        return;
                    }
                    out += chunk.len();
                    counter.fetch_add(chunk.len(), Ordering::Relaxed);
                }
                let _ = sock.write_all(b"0\r\n\r\n").await;
            });
        }
    });
    (port, sent)
}

/// The peak resident memory of a process (`VmHWM`), in MiB.
fn peak_rss_mib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let kib: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap();
    kib >> 10
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_400_mb_response_fails_its_step_at_the_cap_and_the_daemon_stays_small() {
    let (port, sent) = endless(400 << 20).await;
    let mut site = start("[egress]\nallow_hosts = [\"127.0.0.1\"]").await;
    let url = format!("http://127.0.0.1:{port}/huge");
    let run = site.run("fetch", &url).await;
    assert_eq!(run.status, RunStatus::Failed);
    let error = run.error.unwrap_or_default();
    assert!(
        error.contains("the response exceeds the 4096 KiB limit ([http_client] max_response_kib)"),
        "{error}"
    );
    // Not retried: the same URL would answer the same again.
    let steps = site.store.get_steps(&run.id).await.unwrap();
    assert_eq!(steps[0].attempt, 1, "{steps:?}");
    assert!(steps[0].output.is_none(), "nothing of the body is stored");
    // The reading stopped near the cap: far from 400 MB left the server.
    let out = sent.load(std::sync::atomic::Ordering::Relaxed);
    assert!(
        out < 64 << 20,
        "{out} bytes were sent before the daemon hung up"
    );
    let peak = peak_rss_mib(site.daemon.child.id());
    assert!(peak < 150, "the daemon's peak RSS was {peak} MiB");
    // The daemon kept its roles and answers as before.
    let log = site.daemon.log_text();
    assert!(!log.contains("cannot renew role"), "{log}");
    assert!(site.daemon.is_running());
}
