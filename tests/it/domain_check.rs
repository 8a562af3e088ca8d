//! The shipped `domain-check` plugin against real local servers: an RDAP server (HTTP, JSON), a
//! WHOIS server answering JPRS-format text in ISO-2022-JP, and a TLS server whose certificate
//! chain is generated here (rcgen) to expire in a known number of days. Also the network
//! capabilities' allowlist as the plugin meets it.

use pmoflow_tests::read_head;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use pmoflow::plugins::{Grant, Grants, HostRule, PluginCall, PluginHost};
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

use super::plugins::plugins_dir;

/// A tiny HTTP/1.1 server: `GET /domain/NAME` answers `routes[NAME]` as RDAP JSON, anything
/// else 404. Counts requests.
async fn rdap_server(routes: Vec<(&'static str, Value)>) -> (u16, Arc<AtomicUsize>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let hits = Arc::new(AtomicUsize::new(0));
    let counter = hits.clone();
    let routes = Arc::new(routes);
    tokio::spawn(async move {
        loop {
            let Ok((mut sock, _)) = listener.accept().await else {
                return;
            };
            counter.fetch_add(1, Ordering::SeqCst);
            let routes = routes.clone();
            tokio::spawn(async move {
                let Some(head) = read_head(&mut sock).await else {
                    return;
                };
                let path = head.split_whitespace().nth(1).unwrap_or("/").to_string();
                let found = routes
                    .iter()
                    .find(|(name, _)| path == format!("/domain/{name}"));
                let (status, body) = match found {
                    Some((_, doc)) => ("200 OK", doc.to_string()),
                    None => ("404 Not Found", "{\"errorCode\":404}".to_string()),
                };
                let resp = format!(
                    "HTTP/1.1 {status}\r\ncontent-type: application/rdap+json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                    body.len()
                );
                let _ = sock.write_all(resp.as_bytes()).await;
            });
        }
    });
    (port, hits)
}

/// A WHOIS server answering like JPRS (Japanese labels, ISO-2022-JP), by query.
async fn whois_server() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move {
        loop {
            let Ok((mut sock, _)) = listener.accept().await else {
                return;
            };
            tokio::spawn(async move {
                let mut buf = Vec::new();
                let mut chunk = [0u8; 256];
                while !buf.ends_with(b"\r\n") {
                    match sock.read(&mut chunk).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => buf.extend_from_slice(&chunk[..n]),
                    }
                }
                let query = String::from_utf8_lossy(&buf).trim().to_lowercase();
                let text = match query.as_str() {
                    "example.go.jp" => "[ JPRS データベース | JPRS DATABASE ]\r\n\r\nDomain Information: [ドメイン情報]\r\na. [ドメイン名]                 EXAMPLE.GO.JP\r\ng. [組織名]                     架空省\r\n[状態]                          Connected (2027/01/31)\r\n[登録年月日]                    2001/04/01\r\n[接続年月日]                    2001/04/10\r\n[最終更新]                      2026/02/01 01:05:03 (JST)\r\n".to_string(),
                    "example.jp" => "[ JPRS データベース | JPRS DATABASE ]\r\n[ドメイン名]                    EXAMPLE.JP\r\n[登録年月日]                    2010/03/01\r\n[有効期限]                      2027/03/31\r\n[状態]                          Active\r\n".to_string(),
                    _ => "No match!!\r\n".to_string(),
                };
                let (bytes, _, _) = encoding_rs::ISO_2022_JP.encode(&text);
                let _ = sock.write_all(&bytes).await;
            });
        }
    });
    port
}

/// A TLS server for `name` presenting leaf (expires in `leaf_days`) ← intermediate (in
/// `intermediate_days`) ← self-signed root (expired ten days ago: a cross-signed root sent along
/// must not raise an alarm).
async fn tls_server(name: &str, leaf_days: i64, intermediate_days: i64) -> u16 {
    use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair};
    let now = time::OffsetDateTime::now_utc();
    let ca = |cn: &str, days: i64| {
        let mut p = CertificateParams::new(Vec::<String>::new()).unwrap();
        p.distinguished_name.push(DnType::CommonName, cn);
        p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        p.not_before = now - time::Duration::days(800);
        p.not_after = jst_noon(days);
        p
    };
    let root_key = KeyPair::generate().unwrap();
    let root = ca("Test Root CA", -10);
    let root_cert = root.self_signed(&root_key).unwrap();
    let root_issuer = Issuer::new(root, root_key);
    let mid_key = KeyPair::generate().unwrap();
    let mid = ca("Test Government CA", intermediate_days);
    let mid_cert = mid.signed_by(&mid_key, &root_issuer).unwrap();
    let issuer = Issuer::new(mid, mid_key);
    let leaf_key = KeyPair::generate().unwrap();
    let mut leaf = CertificateParams::new(vec![name.to_string()]).unwrap();
    leaf.distinguished_name.push(DnType::CommonName, name);
    leaf.not_before = now - time::Duration::days(1);
    leaf.not_after = jst_noon(leaf_days);
    let leaf_cert = leaf.signed_by(&leaf_key, &issuer).unwrap();
    let key = rustls::pki_types::PrivateKeyDer::try_from(leaf_key.serialize_der()).unwrap();
    let config = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_no_client_auth()
    .with_single_cert(
        vec![
            leaf_cert.der().clone(),
            mid_cert.der().clone(),
            root_cert.der().clone(),
        ],
        key,
    )
    .unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move {
        loop {
            let Ok((sock, _)) = listener.accept().await else {
                return;
            };
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                if let Ok(mut tls) = acceptor.accept(sock).await {
                    let _ = tls.shutdown().await;
                }
            });
        }
    });
    port
}

fn grant(hosts: &[String]) -> Grant {
    let mut g = Grant::default();
    for c in ["http", "tls", "whois"] {
        g.capabilities.insert(c.into());
    }
    g.allow_hosts = hosts.iter().map(|h| HostRule::parse(h).unwrap()).collect();
    g
}

async fn host(grant: Grant) -> PluginHost {
    let mut grants = Grants::default();
    grants.plugins.insert("domain-check".into(), grant);
    let cache = tempfile::tempdir().unwrap();
    let (mut host, _) = PluginHost::load(&plugins_dir(), &grants, Some(cache.path())).unwrap();
    let problems = host.prepare().await;
    assert!(
        !problems.iter().any(|p| p.contains("domain-check")),
        "{problems:?}"
    );
    assert!(host.names().contains(&"domain-check".to_string()));
    host
}

fn call(now_ms: i64) -> PluginCall<'static> {
    PluginCall {
        run_id: "r",
        workflow_id: "domains",
        step_key: "check",
        attempt: 1,
        now_ms,
    }
}

/// Now, in milliseconds.
fn today_ms() -> i64 {
    chrono::Utc::now().timestamp_millis()
}

/// Noon in Tokyo, `days` calendar days from today in Tokyo: a certificate ending then has
/// exactly `days` days left whatever the time of day the test runs (days are counted in JST).
fn jst_noon(days: i64) -> time::OffsetDateTime {
    let today = (time::OffsetDateTime::now_utc() + time::Duration::hours(9)).date();
    let day = today + time::Duration::days(days);
    time::PrimitiveDateTime::new(day, time::Time::from_hms(3, 0, 0).unwrap()).assume_utc()
}

fn days_until(date: &str) -> i64 {
    let d = chrono::NaiveDate::parse_from_str(date, "%Y-%m-%d").unwrap();
    let today = (chrono::Utc::now() + chrono::Duration::hours(9)).date_naive();
    (d - today).num_days()
}

#[tokio::test(flavor = "multi_thread")]
async fn domain_check_reads_rdap_jprs_whois_and_tls_chains() {
    let (rdap, rdap_hits) = rdap_server(vec![(
        "example.com",
        json!({
            "objectClassName": "domain",
            "ldhName": "EXAMPLE.COM",
            "status": ["client transfer prohibited"],
            "events": [
                { "eventAction": "registration", "eventDate": "1995-08-14T04:00:00Z" },
                { "eventAction": "expiration", "eventDate": "2027-08-13T04:00:00Z" }
            ]
        }),
    )])
    .await;
    let whois = whois_server().await;
    let tls = tls_server("example.go.jp", 20, 400).await;
    let hosts = vec![
        format!("127.0.0.1:{rdap}"),
        format!("127.0.0.1:{whois}"),
        format!("127.0.0.1:{tls}"),
    ];
    let host = host(grant(&hosts)).await;
    let input = json!({
        "rdap_url": format!("http://127.0.0.1:{rdap}/domain/{{domain}}"),
        "jp_whois": format!("127.0.0.1:{whois}"),
        "check_tls": false,
        "domains": [
            { "name": "example.go.jp", "tls": format!("127.0.0.1:{tls}"), "info": { "owner": "PJMO-A" } },
            "EXAMPLE.JP",
            "example.com",
            "unknown.org",
            "nothing.jp",
        ],
    });
    let (out, logs) = host
        .invoke("domain-check", &call(today_ms()), &input.to_string())
        .await
        .unwrap();
    let out: Value = serde_json::from_str(&out).unwrap();
    let d = &out["domains"];
    // WHOIS, an organisational .jp name: `[状態] Connected (2027/01/31)`, decoded from ISO-2022-JP.
    assert_eq!(d[0]["name"], "example.go.jp");
    assert_eq!(d[0]["registration"]["source"], "whois");
    assert_eq!(d[0]["registration"]["expires"], "2027-01-31");
    assert_eq!(
        d[0]["registration"]["days_left"],
        json!(days_until("2027-01-31"))
    );
    assert_eq!(d[0]["registration"]["status"], "Connected (2027/01/31)");
    assert_eq!(d[0]["info"]["owner"], "PJMO-A");
    // TLS: the leaf expires in 20 days, the intermediate in 400, the root sent along expired
    // ten days ago and is ignored; the chain is reported leaf first.
    let t = &d[0]["tls"];
    assert_eq!(t["leaf_days_left"], 20, "{t:#}");
    assert_eq!(t["chain_days_left"], 400);
    assert_eq!(t["days_left"], 20);
    assert_eq!(t["chain"].as_array().unwrap().len(), 3);
    assert_eq!(t["chain"][1]["days_left"], 400);
    assert_eq!(t["chain"][2]["days_left"], -10);
    assert_eq!(t["chain"][2]["self_signed"], true);
    assert!(t["subject"].as_str().unwrap().contains("example.go.jp"));
    assert!(t["issuer"].as_str().unwrap().contains("Test Government CA"));
    assert_eq!(t["chain"][0]["dns_names"], json!(["example.go.jp"]));
    // The domain's figure is the nearer of registration and certificates.
    assert_eq!(d[0]["days_left"], 20);
    // WHOIS `[有効期限]`.
    assert_eq!(d[1]["name"], "example.jp");
    assert_eq!(d[1]["registration"]["expires"], "2027-03-31");
    assert_eq!(d[1]["tls"], Value::Null);
    // RDAP `events` → `expiration` (04:00Z is 13:00 JST on the same day).
    assert_eq!(d[2]["registration"]["source"], "rdap");
    assert_eq!(d[2]["registration"]["expires"], "2027-08-13");
    assert_eq!(d[2]["registration"]["status"], "client transfer prohibited");
    // Unknown names are reported per domain; the step still succeeds.
    let unknown = d[3]["errors"][0].as_str().unwrap();
    assert!(
        unknown.starts_with("registration: RDAP ")
            && unknown.ends_with(&format!(
                ": the registry does not know {} (404)",
                d[3]["name"].as_str().unwrap()
            )),
        "{:#}",
        d[3]
    );
    assert!(
        d[4]["errors"][0]
            .as_str()
            .unwrap()
            .contains("no such domain")
    );
    assert_eq!(out["failed_checks"], 2);
    assert_eq!(out["soonest"]["name"], "example.go.jp");
    assert!(rdap_hits.load(Ordering::SeqCst) >= 2);
    assert!(
        logs.iter()
            .any(|(level, m)| level == "warn" && m.contains("unknown.org"))
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn domain_check_cannot_reach_what_it_was_not_granted() {
    let (rdap, hits) = rdap_server(vec![]).await;
    let whois = whois_server().await;
    let tls = tls_server("example.go.jp", 5, 3).await;
    // Only the WHOIS server is granted, and only by a wildcard entry: loopback stays closed.
    let host = host(grant(&[format!("*:{whois}"), "rdap.example.jp".into()])).await;
    let input = json!({
        "rdap_url": format!("http://127.0.0.1:{rdap}/domain/{{domain}}"),
        "jp_whois": format!("127.0.0.1:{whois}"),
        "domains": [
            { "name": "example.go.jp", "tls": format!("127.0.0.1:{tls}") },
            { "name": "example.com", "tls": false },
            { "name": "localhost.example", "rdap": format!("http://localhost:{whois}/"), "tls": false },
        ],
    });
    let err = host
        .invoke("domain-check", &call(today_ms()), &input.to_string())
        .await
        .unwrap_err();
    // Every check failed, so the step fails (retryably) with the first reason.
    let text = err.to_string();
    assert!(text.contains("loopback or private address"), "{text}");
    assert_eq!(
        hits.load(Ordering::SeqCst),
        0,
        "no request reached the RDAP server"
    );
    // The same input with the hosts listed exactly works.
    let host = host_exact(rdap, whois, tls).await;
    let (out, _) = host
        .invoke("domain-check", &call(today_ms()), &input.to_string())
        .await
        .unwrap();
    let out: Value = serde_json::from_str(&out).unwrap();
    // An intermediate that expires before the leaf is what counts.
    assert_eq!(out["domains"][0]["tls"]["leaf_days_left"], 5);
    assert_eq!(out["domains"][0]["tls"]["days_left"], 3);
    assert_eq!(out["domains"][0]["registration"]["expires"], "2027-01-31");
    // `localhost` is not listed exactly (only 127.0.0.1 is): refused after resolution.
    let e = out["domains"][2]["errors"][0].as_str().unwrap();
    assert!(e.contains("not in the plugin's allow_hosts"), "{e}");
}

async fn host_exact(rdap: u16, whois: u16, tls: u16) -> PluginHost {
    host(grant(&[
        format!("127.0.0.1:{rdap}"),
        format!("127.0.0.1:{whois}"),
        format!("127.0.0.1:{tls}"),
    ]))
    .await
}

#[tokio::test(flavor = "multi_thread")]
async fn domain_check_input_is_checked_against_its_schema() {
    let host = host(grant(&["rdap.example.jp".into()])).await;
    let err = host
        .invoke(
            "domain-check",
            &call(today_ms()),
            &json!({ "domain": "example.go.jp" }).to_string(),
        )
        .await
        .unwrap_err();
    let text = err.to_string();
    assert!(text.starts_with("invalid input:"), "{text}");
    assert!(
        text.contains("\"domains\" is a required property"),
        "{text}"
    );
}
