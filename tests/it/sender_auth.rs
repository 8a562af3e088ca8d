//! Sender authentication of mail answers, on the real daemon: a reply matched only by subject tag
//! and `From` counts when the sender is authenticated — DKIM verified against a key a real DNS
//! server (NSD) publishes, or a trusted gateway's `Authentication-Results` — and is otherwise
//! held until the address it claims confirms it on the page; a trusted `dmarc=fail`
//! quarantines whatever matched; a token match needs nothing more.

use std::time::Duration;

use pmoflow::store::{Durability, Store};
use pmoflow_tests::Call;
use pmoflow_tests::backend_tests;
use pmoflow_tests::dns::{Nsd, txt};
use pmoflow_tests::mail::tag_only_reply;
use pmoflow_tests::{Backend, Daemon, STARTUP, cli_ok, free_port};
use pmoflow_tests::{deliver, reply_address, wait_done};
use serde_json::Value as Json;

use pmoflow_tests::mail::{nonce_in, url_in};
use pmoflow_tests::{mail_to, to_addr, wait_mail};

use super::requests::{gmail_reply, http_config, setup, setup_on};

const YAMADA: &str = "山田 太郎 <yamada@pjmo-a.example.go.jp>";

async fn answers(store: &Store, run_id: &str, step: &str) -> (String, Vec<Json>) {
    let rows = store.requests_for_step(run_id, step).await.unwrap();
    let answers = store
        .answers_for(&[rows[0].token.clone()])
        .await
        .unwrap()
        .into_iter()
        .map(|a| a.fields)
        .collect();
    (rows[0].status.clone(), answers)
}

/// The inbound rows as `pmoflow inbound list --format json` gives them.
fn inbound_rows(project: &std::path::Path) -> Vec<Json> {
    let out = cli_ok(project, &["inbound", "list", "--format", "json"]);
    serde_json::from_str::<Json>(&out)
        .unwrap()
        .as_array()
        .unwrap()
        .clone()
}

backend_tests!(a_forged_from_with_only_the_subject_tag_is_held_until_the_addressee_confirms_it, a_held_answer_is_confirmed_on_postgres_too => held_until_confirmed);

async fn held_until_confirmed(backend: Backend) {
    let port = free_port();
    let scratch = tempfile::tempdir().unwrap();
    let (http, _, _) = http_config(port, scratch.path());
    let s = setup_on(backend, "10m", "", &format!("verify_dkim = false\n{http}")).await;
    let project = s.project.path();
    let maildir = project.join("maildir");
    let d = Daemon::start(project, "d", &[]);
    d.wait_log("http listening", STARTUP);
    let run_id = cli_ok(project, &["trigger", "status"]).trim().to_string();
    let mails = wait_mail(&maildir, 2);
    let yamada = mail_to(&mails, "yamada@");
    let token = reply_address(yamada);

    // Anyone can write Yamada's address and the tag: held, nothing counted.
    let out = deliver(
        project,
        tag_only_reply(YAMADA, yamada, "総合評価: 良好\n進捗: 予定どおり", ""),
    );
    assert!(out.contains("unauthenticated (held)"), "{out}");
    let store = Store::open(&s.db.url, Durability::Process).await.unwrap();
    assert_eq!(
        answers(&store, &run_id, "ask[0]").await,
        ("open".into(), vec![])
    );
    let held = inbound_rows(project)
        .into_iter()
        .find(|r| r["status"] == "held")
        .expect("a held row");
    assert!(
        held["auth"].as_str().unwrap().starts_with("none: "),
        "{held:#}"
    );

    // The address the message claims is asked, on a mail that answers nothing itself.
    let mails = wait_mail(&maildir, 3);
    let confirm = mails
        .iter()
        .find(|m| {
            m["subject"]
                .as_str()
                .unwrap()
                .starts_with("【確認のお願い】")
        })
        .expect("a confirmation mail");
    assert!(to_addr(confirm).contains("yamada@pjmo-a.example.go.jp"));
    // No tag in its subject and no reply address: a reply to it matches no request.
    assert!(
        !confirm["subject"].as_str().unwrap().contains("[#"),
        "{confirm:#}"
    );
    assert!(confirm["reply_to"].is_null(), "{confirm:#}");
    assert!(
        confirm["message_id"]
            .as_str()
            .unwrap()
            .starts_with("<pmoflow.confirm."),
        "{confirm:#}"
    );
    let body = confirm["body"].as_str().unwrap();
    assert!(body.contains("送信元を確認できなかったため"), "{body}");
    assert!(!body.contains(&token[4..30]), "no request token: {body}");
    let url = url_in(body, "/confirm/");

    // Opening the link shows what arrived and changes nothing.
    let res = reqwest::get(&url).await.unwrap();
    assert_eq!(res.status(), 200);
    let html = res.text().await.unwrap();
    assert!(html.contains("回答として受け付ける"), "{html}");
    assert!(html.contains("進捗: 予定どおり"), "{html}");
    assert_eq!(answers(&store, &run_id, "ask[0]").await.0, "open");
    // A POST without the page's nonce is refused; an unknown token is a 404.
    let client = reqwest::Client::new();
    client
        .post(&url)
        .form(&[("nonce", "1.2.3")])
        .expect(403)
        .await;
    let unknown = format!("http://127.0.0.1:{port}/confirm/{}", "a".repeat(26));
    assert_eq!(reqwest::get(&unknown).await.unwrap().status(), 404);
    assert_eq!(answers(&store, &run_id, "ask[0]").await.0, "open");

    // One click: the answer counts, as if it had come authenticated.
    let res = client
        .post(&url)
        .form(&[("nonce", nonce_in(&html))])
        .expect(200)
        .await;
    assert!(res.text().await.unwrap().contains("回答を受け付けました"));
    let (status, got) = answers(&store, &run_id, "ask[0]").await;
    assert_eq!(status, "answered");
    assert_eq!(got.len(), 1);
    assert_eq!(got[0]["総合評価"], "良好");
    let again = client
        .post(&url)
        .form(&[("nonce", nonce_in(&html))])
        .expect(200)
        .await;
    assert!(again.text().await.unwrap().contains("確認済み"));
    assert_eq!(answers(&store, &run_id, "ask[0]").await.1.len(), 1);
    let row = inbound_rows(project)
        .into_iter()
        .find(|r| r["id"] == held["id"])
        .unwrap();
    assert_eq!(row["outcome"], "answer", "{row:#}");
    assert!(
        row["auth"]
            .as_str()
            .unwrap()
            .ends_with("confirmed by the addressee"),
        "{row:#}"
    );

    // The token match needs no authentication: Suzuki's plain reply counts at once.
    let suzuki = mail_to(&mails, "suzuki@");
    let out = deliver(
        project,
        gmail_reply(
            "suzuki@pjmo-b.example.go.jp",
            &reply_address(suzuki),
            suzuki,
            "総合評価: 注意",
            "",
        ),
    );
    assert!(out.contains("answer (done)"), "{out}");
    wait_done(&store, &run_id).await;
}

/// An RSA key made by OpenSSL: `(PKCS#8 DER, the public key as DKIM's p=)`.
fn dkim_key(dir: &std::path::Path) -> (Vec<u8>, String) {
    use base64::Engine;
    let pem = dir.join("k.pem");
    let run = |args: &[&str]| pmoflow_tests::run_ok("openssl", args);
    let pem_s = pem.to_str().unwrap();
    let der = dir.join("k.der");
    let public = dir.join("p.der");
    run(&["genrsa", "-out", pem_s, "2048"]);
    run(&[
        "pkcs8",
        "-topk8",
        "-nocrypt",
        "-in",
        pem_s,
        "-outform",
        "DER",
        "-out",
        der.to_str().unwrap(),
    ]);
    run(&[
        "rsa",
        "-in",
        pem_s,
        "-pubout",
        "-outform",
        "DER",
        "-out",
        public.to_str().unwrap(),
    ]);
    (
        std::fs::read(der).unwrap(),
        base64::engine::general_purpose::STANDARD.encode(std::fs::read(public).unwrap()),
    )
}

/// `raw` with a DKIM-Signature by `pjmo-a.example.go.jp`, selector `s1`.
fn dkim_sign(der: &[u8], raw: &[u8]) -> Vec<u8> {
    use mail_auth::common::crypto::{RsaKey, Sha256};
    use mail_auth::common::headers::HeaderWriter;
    use mail_auth::dkim::DkimSigner;
    let key = RsaKey::<Sha256>::from_key_der(rustls::pki_types::PrivateKeyDer::Pkcs8(
        der.to_vec().into(),
    ))
    .unwrap();
    let signature = DkimSigner::from_key(key)
        .domain("pjmo-a.example.go.jp")
        .selector("s1")
        .headers(["From", "To", "Subject", "Date", "Message-ID"])
        .sign(raw)
        .unwrap();
    let mut out = signature.to_header().into_bytes();
    out.extend_from_slice(raw);
    out
}

#[tokio::test(flavor = "multi_thread")]
async fn dkim_or_a_trusted_gateway_lets_a_tag_match_count_and_dmarc_fail_quarantines() {
    let keys = tempfile::tempdir().unwrap();
    let (der, public) = dkim_key(keys.path());
    let nsd = Nsd::start(&[(
        "pjmo-a.example.go.jp",
        &format!(
            "s1._domainkey IN TXT {}",
            txt(&format!("v=DKIM1; k=rsa; p={public}"))
        ),
    )]);
    let s = setup(
        "10m",
        "",
        &format!(
            "trusted_authserv_ids = [\"mx.example.go.jp\"]\ndns_servers = [\"127.0.0.1:{}\"]\n",
            nsd.port
        ),
    )
    .await;
    let project = s.project.path();
    let maildir = project.join("maildir");
    let _d = Daemon::start(project, "d", &[]);
    let run_id = cli_ok(project, &["trigger", "status"]).trim().to_string();
    let mails = wait_mail(&maildir, 2);
    let yamada = mail_to(&mails, "yamada@");
    let suzuki = mail_to(&mails, "suzuki@");
    let store = Store::open(&s.db.url, Durability::Process).await.unwrap();

    // Signed, then changed on the way: the signature fails here, so the sender is not
    // authenticated and the answer is held.
    let signed = dkim_sign(&der, &tag_only_reply(YAMADA, yamada, "総合評価: 良好", ""));
    let tampered = String::from_utf8(signed).unwrap().replace("良好", "要対応");
    let out = deliver(project, tampered.as_bytes());
    assert!(out.contains("unauthenticated (held)"), "{out}");
    assert_eq!(answers(&store, &run_id, "ask[0]").await.0, "open");

    // Signed and intact, the key published by the DNS server: accepted at once.
    let signed = dkim_sign(&der, &tag_only_reply(YAMADA, yamada, "総合評価: 注意", ""));
    let out = deliver(project, &signed);
    assert!(out.contains("answer (done)"), "{out}");
    let (status, got) = answers(&store, &run_id, "ask[0]").await;
    assert_eq!(
        (status.as_str(), got[0]["総合評価"].as_str()),
        ("answered", Some("注意"))
    );
    let rows = inbound_rows(project);
    assert!(
        rows.iter()
            .any(|r| r["auth"] == "pass: dkim=pass d=pjmo-a.example.go.jp (verified)"),
        "{rows:#?}"
    );
    // `inbound explain` reaches the same verdict.
    let path = project.join("signed.eml");
    std::fs::write(&path, &signed).unwrap();
    let explained: Json = serde_json::from_str(&cli_ok(
        project,
        &[
            "inbound",
            "explain",
            path.to_str().unwrap(),
            "--verify-dkim",
        ],
    ))
    .unwrap();
    assert_eq!(
        explained["authentication"]["result"], "pass",
        "{explained:#}"
    );

    // Suzuki's token is right, but the ministry's gateway says DMARC failed: quarantined.
    let reply_to = reply_address(suzuki);
    let forged = gmail_reply(
        "suzuki@pjmo-b.example.go.jp",
        &reply_to,
        suzuki,
        "総合評価: 良好",
        "Authentication-Results: mx.example.go.jp; spf=fail smtp.mailfrom=pjmo-b.example.go.jp;\r\n dmarc=fail (p=reject) header.from=pjmo-b.example.go.jp\r\n",
    );
    let out = deliver(project, &forged);
    assert!(out.contains("auth_failed (quarantined)"), "{out}");
    assert_eq!(
        answers(&store, &run_id, "ask[1]").await,
        ("open".into(), vec![])
    );
    // A pass written by a server nobody trusts is not read: still held.
    let untrusted = tag_only_reply(
        "鈴木 花子 <suzuki@pjmo-b.example.go.jp>",
        suzuki,
        "総合評価: 良好",
        "Authentication-Results: attacker.example; dmarc=pass header.from=pjmo-b.example.go.jp\r\n",
    );
    let out = deliver(project, &untrusted);
    assert!(out.contains("unauthenticated (held)"), "{out}");
    // The trusted gateway's pass for Suzuki's domain: his tag-only reply counts.
    let passed = tag_only_reply(
        "鈴木 花子 <suzuki@pjmo-b.example.go.jp>",
        suzuki,
        "総合評価: 良好",
        "Authentication-Results: mx.example.go.jp; dkim=none; spf=pass smtp.mailfrom=pjmo-b.example.go.jp;\r\n dmarc=pass header.from=pjmo-b.example.go.jp\r\n",
    );
    let out = deliver(project, &passed);
    assert!(out.contains("answer (done)"), "{out}");
    assert_eq!(answers(&store, &run_id, "ask[1]").await.0, "answered");
    // The PMO is told about the DMARC failure (the notice goes out through the outbox: wait
    // for it, not for a number of mails).
    pmoflow_tests::wait::until_blocking(
        "the PMO's notice of the DMARC failure",
        Duration::from_secs(30),
        || {
            let mails = pmoflow_tests::decode_mail(&maildir);
            if mails.iter().any(|m| {
                to_addr(m).contains("pmo-desk@")
                    && m["body"].as_str().unwrap_or("").contains("dmarc=fail")
            }) {
                Ok(())
            } else {
                Err(mails.len())
            }
        },
    );
}
