//! Outbox benchmark: 1,000 templated Japanese emails through the real engine and delivery worker
//! to a local SMTP sink (aiosmtpd's discarding `Sink` handler, `pip install aiosmtpd`; the
//! Maildir handler's disk writes would measure the sink, not pmoflow), three times: without a
//! login, logging in with a password (AUTH PLAIN), and with OAuth2 (AUTH XOAUTH2, a token from
//! the test token server `tests/support/oauth_server.py`, checked by the sink through RFC 7662
//! introspection). Prints messages/s and token fetches; asserts nothing.
//!
//! Run: `cargo bench -p pmoflow --bench outbox`
#![allow(clippy::unwrap_used, missing_docs)]

use std::sync::Arc;
use std::time::{Duration, Instant};

use pmoflow::actions::StepServices;
use pmoflow::clock::SystemClock;
use pmoflow::engine::{Engine, EngineConfig, Registry, RunRequest};
use pmoflow::outbox::{DeliveryConfig, MailSettings, OutboxConfig, SmtpConfig, SmtpTls};
use pmoflow::store::{Durability, Store};
use pmoflow::workflow::Catalog;
use tokio_util::sync::CancellationToken;

const WORKFLOW: &str = r#"
id = "bulk"
[[steps]]
id = "mail"
action = "email"
foreach = "range(1000)"
parallelism = 64
[steps.with]
to = "PJMO担当 {{ item }} <pjmo{{ item }}@example.go.jp>"
subject = "【要回答】令和8年度 第3四半期 状況報告のお願い（No.{{ item }}）【{{ '2026-12-04' | jp_date }}締切】"
body = "PJMO担当者 様\n\nお疲れ様です。PMO事務局です。\n第3四半期の状況報告を{{ '2026-12-04' | jp_date }}17時までにご提出ください。\n\n記\n１．総合評価\n２．経費\n３．進捗\n以上\n\nよろしくお願いいたします。\n"
"#;

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Login {
    None,
    Password,
    OAuth2,
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn wait_port(port: u16) {
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn support(name: &str) -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../tests/support")
        .join(name)
}

#[tokio::main]
async fn main() {
    let concurrency = std::env::var("BENCH_CONCURRENCY")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(OutboxConfig::default().concurrency);
    println!(
        "pmoflow outbox benchmark (2 cores; aiosmtpd sink on loopback; [outbox] concurrency = {concurrency})"
    );
    println!();
    println!(
        "| login    | messages | rendered + committed | all accepted by SMTP | messages/s (end to end) | token fetches |"
    );
    println!(
        "|----------|----------|----------------------|---------------------|-------------------------|---------------|"
    );
    for login in [Login::None, Login::Password, Login::OAuth2] {
        let (committed, total, fetches) = run(login, concurrency).await;
        println!(
            "| {:<8} | 1000     | {:>18.2} s | {:>17.2} s | {:>23.0} | {:>13} |",
            format!("{login:?}").to_lowercase(),
            committed.as_secs_f64(),
            total.as_secs_f64(),
            1000.0 / total.as_secs_f64(),
            fetches.map_or("-".to_string(), |f| f.to_string()),
        );
    }
}

async fn run(login: Login, concurrency: usize) -> (Duration, Duration, Option<u64>) {
    let dir = tempfile::tempdir().unwrap();
    let wf_dir = dir.path().join("workflows");
    std::fs::create_dir_all(&wf_dir).unwrap();
    std::fs::write(wf_dir.join("bulk.toml"), WORKFLOW).unwrap();
    let port = free_port();
    let mut children = Vec::new();
    let mut oauth = Vec::new();
    if login == Login::None {
        children.push(
            std::process::Command::new("python3")
                .args(["-m", "aiosmtpd", "-n", "-l", &format!("127.0.0.1:{port}")])
                .args(["-c", "aiosmtpd.handlers.Sink"])
                .spawn()
                .expect("python3 -m aiosmtpd (pip install aiosmtpd)"),
        );
    } else {
        let token_port = free_port();
        let cfg = dir.path().join("oauth.json");
        std::fs::write(
            &cfg,
            r#"{"lifetime": 3600, "clients": {"pmoflow": {"secret": "s", "user": "pmo"}}}"#,
        )
        .unwrap();
        children.push(
            std::process::Command::new("python3")
                .arg(support("oauth_server.py"))
                .arg(token_port.to_string())
                .arg(&cfg)
                .stderr(std::process::Stdio::null())
                .spawn()
                .expect("python3 with cryptography"),
        );
        wait_port(token_port);
        let introspect = format!("http://127.0.0.1:{token_port}/introspect");
        children.push(
            std::process::Command::new("python3")
                .arg(support("oauth_smtp.py"))
                .args([&port.to_string(), "-", &introspect, "pmo", "pw"])
                .stderr(std::process::Stdio::null())
                .spawn()
                .expect("python3 with aiosmtpd"),
        );
        if login == Login::OAuth2 {
            oauth.push(pmoflow::oauth::TokenSourceConfig {
                name: "idp".into(),
                provider: pmoflow::oauth::Provider::Generic,
                token_url: format!("http://127.0.0.1:{token_port}/token"),
                client_id: "pmoflow".into(),
                scope: String::new(),
                credential: pmoflow::oauth::Credential::ClientSecret(
                    pmoflow::oauth::SecretSource::Value(pmoflow::outbox::Secret::new("s")),
                ),
            });
        }
    }
    wait_port(port);
    let tokens = pmoflow::oauth::TokenSources::new(&oauth, &Arc::default());
    let url = format!("sqlite://{}", dir.path().join("bench.db").display());
    let store = Store::open(&url, Durability::Process).await.unwrap();
    let registry = Arc::new(Registry::default());
    registry.set_catalog(Arc::new(Catalog::load(&wf_dir)));
    let services = Arc::new(StepServices {
        mail: MailSettings {
            from: "PMO事務局 <pmo@example.go.jp>".into(),
            smtp: Some(SmtpConfig {
                host: "127.0.0.1".into(),
                port,
                tls: SmtpTls::None,
                username: (login != Login::None).then(|| "pmo".into()),
                password: (login == Login::Password).then(|| pmoflow::outbox::Secret::new("pw")),
                oauth2: (login == Login::OAuth2).then(|| "idp".into()),
                timeout: Duration::from_secs(10),
            }),
            ..MailSettings::default()
        },
        workflows_dir: wf_dir.clone(),
        ..StepServices::default()
    });
    let delivery = Arc::new(DeliveryConfig {
        mail: services.mail.clone(),
        outbox: OutboxConfig {
            concurrency,
            ..OutboxConfig::default()
        },
        secrets: services.secrets.clone(),
        egress: services.egress.clone(),
    });
    let shutdown = CancellationToken::new();
    let config = EngineConfig {
        node_id: "bench".into(),
        services: services.clone(),
        ..EngineConfig::default()
    };
    let engine = Engine::new(
        store.clone(),
        Arc::new(SystemClock),
        config,
        registry,
        shutdown.clone(),
    );
    let e = engine.clone();
    let engine_task = tokio::spawn(async move { e.run().await.unwrap() });
    let worker = tokio::spawn(pmoflow::outbox::worker::run(
        store.clone(),
        Arc::new(SystemClock),
        delivery,
        tokens.clone(),
        pmoflow::outbox::worker::Owner {
            instance_id: "bench".into(),
            lease: chrono::Duration::seconds(8),
        },
        engine.outbox_wake(),
        shutdown.clone(),
    ));

    let start = Instant::now();
    engine
        .trigger("bulk", &RunRequest::manual(&serde_json::Value::Null))
        .await
        .unwrap();
    let mut committed_at = None;
    loop {
        if committed_at.is_none()
            && store.count_outbox("pending").await.unwrap()
                + store.count_outbox("sent").await.unwrap()
                >= 1000
        {
            committed_at = Some(start.elapsed());
        }
        if store.count_outbox("sent").await.unwrap() >= 1000 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let total = start.elapsed();
    shutdown.cancel();
    let _ = engine_task.await;
    let _ = worker.await;
    for mut c in children {
        let _ = c.kill();
        let _ = c.wait();
    }
    let fetches = tokens.get("idp").ok().map(|s| s.fetches());
    (committed_at.unwrap_or(total), total, fetches)
}
