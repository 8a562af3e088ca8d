//! Notifications against real servers: aiosmtpd for SMTP, a Python HTTP server for webhooks,
//! Python's `email` package to decode what arrived; the real daemon, killed with SIGKILL.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use pmoflow::outbox::webhook;
use pmoflow::store::{Durability, RunStatus, Store};
use pmoflow_tests::{
    Backend, Daemon, Project, STARTUP, SmtpSink, TestDb, WebhookServer, cli, cli_ok, decode_mail,
    free_port, wait,
};
use pmoflow_tests::{expect_done, wait_status};

const PEOPLE: &str = include_str!("../fixtures/flows/notify_people.toml");

const TEMPLATE: &str = "{{ inputs.who }} 様\n\nお疲れ様です。PMO事務局です。\n令和8年度の状況報告を{{ \"2026-12-04\" | jp_date }}17時までにお願いいたします。\n\n記\n１．総合評価：良好／注意／要対応\n２．経費（予算・執行額）：１００％\n以上\n";

const MAIL_WORKFLOW: &str = include_str!("../fixtures/flows/notify_mail_workflow.toml");

fn mail_project(config: &str) -> Project {
    let project = Project::new();
    std::fs::write(project.workflows().join("data/people.toml"), PEOPLE).unwrap();
    std::fs::create_dir_all(project.workflows().join("templates")).unwrap();
    std::fs::write(project.workflows().join("templates/request.txt"), TEMPLATE).unwrap();
    project.workflow("notice.toml", MAIL_WORKFLOW);
    project.config(config);
    project
}

fn expected_body() -> String {
    TEMPLATE
        .replace("{{ inputs.who }}", "鈴木 一郎")
        .replace("{{ \"2026-12-04\" | jp_date }}", "12月4日(金)")
}

async fn wait_outbox(store: &Store, status: &str, n: i64, timeout: Duration) {
    wait::until(&format!("{n} messages {status}"), timeout, || async {
        let got = store.count_outbox(status).await.unwrap();
        if got >= n { Ok(()) } else { Err(got) }
    })
    .await
}

fn check_japanese_message(m: &serde_json::Value) {
    assert_eq!(
        m["subject"],
        "【要回答】令和8年度 状況報告のお願い（鈴木 一郎 様）【12/4(金)締切】"
    );
    assert_eq!(
        m["body"].as_str().unwrap().replace("\r\n", "\n"),
        expected_body()
    );
    assert_eq!(m["from"], "PMO事務局 <pmo@example.go.jp>");
    assert_eq!(
        m["to"],
        serde_json::json!([
            "山田 太郎 <yamada@example.go.jp>",
            "鈴木 一郎 <suzuki@example.go.jp>"
        ])
    );
    assert_eq!(
        m["cc"],
        serde_json::json!(["佐藤 花子 <sato@example.go.jp>"])
    );
    assert_eq!(m["bcc_header"], false, "Bcc must not appear in the headers");
    assert_eq!(m["auto_submitted"], "auto-generated");
    assert_eq!(m["auto_response_suppress"], "OOF, AutoReply");
    assert!(
        m["date"].as_str().unwrap().ends_with("+0900"),
        "{}",
        m["date"]
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn japanese_email_arrives_intact_through_a_real_smtp_server() {
    let db = TestDb::new(Backend::Sqlite).await;
    let port = free_port();
    let project = mail_project(&format!(
        "database_url = \"{}\"\n[mail]\nfrom = \"PMO事務局 <pmo@example.go.jp>\"\n[smtp]\nhost = \"127.0.0.1\"\nport = {port}\ntls = \"none\"\n",
        db.url
    ));
    let maildir = project.path().join("maildir");
    let _smtp = SmtpSink::start(port, &maildir);
    let d = Daemon::start(project.path(), "d", &[]);
    d.wait_log("email goes to SMTP", STARTUP);
    let (code, out, err) = cli(project.path(), &["trigger", "notice"]);
    assert_eq!(code, 0, "{err}");
    let store = Store::open(&db.url, Durability::Process).await.unwrap();
    let run = expect_done(&store, out.trim(), RunStatus::Succeeded).await;
    wait_outbox(&store, "sent", 1, Duration::from_secs(20)).await;
    let rows = store.list_outbox(Some("sent"), 10).await.unwrap();
    let messages = decode_mail(&maildir);
    assert_eq!(messages.len(), 1);
    check_japanese_message(&messages[0]);
    assert_eq!(
        messages[0]["message_id"], rows[0].message_id,
        "the Message-ID recorded by pmoflow"
    );
    // The step output names the message.
    let steps = store.get_steps(&run.id).await.unwrap();
    assert_eq!(
        steps[0].output.as_ref().unwrap()["message_id"],
        rows[0].message_id.as_str()
    );
    store.close().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn without_smtp_messages_become_eml_files() {
    let db = TestDb::new(Backend::Sqlite).await;
    let project = mail_project(&format!(
        "database_url = \"{}\"\n[mail]\nfrom = \"PMO事務局 <pmo@example.go.jp>\"\n",
        db.url
    ));
    let d = Daemon::start(project.path(), "d", &[]);
    d.wait_log("emails are written as .eml files", STARTUP);
    let (code, _, err) = cli(project.path(), &["trigger", "notice"]);
    assert_eq!(code, 0, "{err}");
    let store = Store::open(&db.url, Durability::Process).await.unwrap();
    wait_outbox(&store, "sent", 1, Duration::from_secs(20)).await;
    let dir = project.path().join("var/outbox");
    let files: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    assert_eq!(files.len(), 1, "{files:?}");
    assert!(files[0].ends_with(".eml"));
    let messages = decode_mail(&dir);
    check_japanese_message(&messages[0]);
    let (code, out, _) = cli(project.path(), &["outbox", "--status", "sent"]);
    assert_eq!(code, 0);
    assert!(out.contains("山田 太郎 <yamada@example.go.jp>"), "{out}");
    store.close().await;
}

const FIFTY: &str = include_str!("../fixtures/flows/notify_fifty.toml");

#[tokio::test(flavor = "multi_thread")]
async fn fifty_messages_survive_a_down_server_and_a_kill9_and_arrive_once() {
    let db = TestDb::new(Backend::Sqlite).await;
    let port = free_port();
    let project = Project::with_workflow("fifty.toml", FIFTY);
    project.config(&format!(
        "database_url = \"{}\"\nnode_id = \"mailer\"\n[mail]\nfrom = \"pmo@example.go.jp\"\n[smtp]\nhost = \"127.0.0.1\"\nport = {port}\ntls = \"none\"\ntimeout = \"2s\"\n[outbox]\nbackoff = \"200ms\"\nmax_backoff = \"1s\"\nmax_attempts = 1000\n",
        db.url
    ));
    let dir = project.path();
    let mut a = Daemon::start(dir, "a", &[]);
    let (code, out, err) = cli(dir, &["trigger", "fifty"]);
    assert_eq!(code, 0, "{err}");
    let store = Store::open(&db.url, Durability::Process).await.unwrap();
    wait_status(&store, out.trim(), RunStatus::Succeeded).await;
    // The server is down: every message is pending and has failed at least once.
    let rows = wait::until(
        "50 messages pending after a failed attempt",
        Duration::from_secs(20),
        || async {
            let rows = store.list_outbox(Some("pending"), 100).await.unwrap();
            if rows.len() == 50 && rows.iter().all(|r| r.attempts >= 1) {
                Ok(rows)
            } else {
                Err(rows)
            }
        },
    )
    .await;
    assert!(
        rows.iter()
            .all(|r| r.last_error.as_deref().unwrap_or("").contains("SMTP")),
        "{:?}",
        rows[0].last_error
    );
    a.kill9();
    let _b = Daemon::start(dir, "b", &[]);
    let maildir = dir.join("maildir");
    let started = Instant::now();
    let _smtp = SmtpSink::start(port, &maildir);
    wait_outbox(&store, "sent", 50, Duration::from_secs(30)).await;
    println!(
        "50 messages delivered {} ms after the SMTP server came up",
        started.elapsed().as_millis()
    );
    // pace: a check that nothing more arrives: a late duplicate would land within this.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let messages = decode_mail(&maildir);
    let ids: BTreeSet<String> = messages
        .iter()
        .map(|m| m["message_id"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(messages.len(), 50, "duplicates or losses");
    assert_eq!(ids.len(), 50);
    let subjects: BTreeSet<String> = messages
        .iter()
        .map(|m| m["subject"].as_str().unwrap().to_string())
        .collect();
    assert!(subjects.contains("【ご連絡】テスト 49 件目"));
    store.close().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn webhook_retries_until_accepted_and_is_signed() {
    let db = TestDb::new(Backend::Postgres).await;
    let project = Project::new();
    let server = WebhookServer::start(project.path(), 3, 200);
    project.workflow(
        "hook.toml",
        &format!("id = \"hook\"\n[[steps]]\nid = \"notify\"\naction = \"webhook\"\nwith = {{ url = \"http://127.0.0.1:{}/incident\", json = {{ severity = \"S1\", summary = \"基幹システム停止\" }}, secret = \"hook_key\" }}\n", server.port),
    );
    project.config_on(&db, "[outbox]\nbackoff = \"100ms\"\nmax_backoff = \"300ms\"\n[secrets]\nhook_key = { env = \"TEST_HOOK_SECRET\" }\n");
    let d = Daemon::start(project.path(), "d", &[("TEST_HOOK_SECRET", "s3cret-値")]);
    let (code, _, err) = cli(project.path(), &["trigger", "hook"]);
    assert_eq!(code, 0, "{err}");
    let store = Store::open(&db.url, Durability::Process).await.unwrap();
    wait_outbox(&store, "sent", 1, Duration::from_secs(20)).await;
    let rows = store.list_outbox(Some("sent"), 10).await.unwrap();
    assert_eq!(rows.len(), 1, "one delivery recorded");
    assert_eq!(rows[0].attempts, 4);
    let requests = server.requests();
    assert_eq!(requests.len(), 4);
    let keys: BTreeSet<_> = requests
        .iter()
        .map(|r| {
            r["headers"]["idempotency-key"]
                .as_str()
                .unwrap()
                .to_string()
        })
        .collect();
    assert_eq!(keys.len(), 1, "retries carry the same Idempotency-Key");
    let last = &requests[3];
    assert_eq!(last["status"], 200);
    let body = last["body"].as_str().unwrap();
    assert_eq!(
        serde_json::from_str::<serde_json::Value>(body).unwrap()["summary"],
        "基幹システム停止"
    );
    let ts = last["headers"]["x-pmoflow-timestamp"].as_str().unwrap();
    let sig = last["headers"]["x-pmoflow-signature"].as_str().unwrap();
    let now = chrono::Utc::now().timestamp();
    webhook::verify("s3cret-値".as_bytes(), ts, body.as_bytes(), sig, now, 300)
        .expect("signature verifies");
    assert!(webhook::verify(b"wrong", ts, body.as_bytes(), sig, now, 300).is_err());
    // The same request replayed ten minutes later is recognisable as a replay.
    assert_eq!(
        webhook::verify(
            "s3cret-値".as_bytes(),
            ts,
            body.as_bytes(),
            sig,
            now + 600,
            300
        ),
        Err(webhook::VerifyError::Stale(300))
    );
    // The secret never appears in the logs.
    assert!(!d.log_text().contains("s3cret"), "{}", d.log_text());
    store.close().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn chat_presets_post_teams_workflows_cards_and_slack_blocks() {
    let db = TestDb::new(Backend::Sqlite).await;
    let project = Project::new();
    let server = WebhookServer::start(project.path(), 0, 202);
    let base = format!("http://127.0.0.1:{}", server.port);
    project.workflow(
        "chat.toml",
        &format!(
            r#"id = "chat"

[[steps]]
id = "teams"
action = "webhook"
[steps.with]
url = "{base}/teams"
format = "teams"
title = "【ご連絡】定例会議"
text = """次回の定例会議は12月4日(金)です。
資料は前日までにご提出ください。

以上"""
facts = {{ "場所" = "第3会議室", "時間" = "10:00" }}
links = [{{ title = "資料置き場", url = "https://pmo.example.go.jp/docs" }}]

[[steps]]
id = "slack"
action = "webhook"
[steps.with]
url = "{base}/slack"
format = "slack"
title = "【ご連絡】定例会議"
text = "予算 <1億円> & 調達"
facts = {{ "場所" = "第3会議室" }}
links = [{{ title = "資料置き場", url = "https://pmo.example.go.jp/docs" }}]

[[steps]]
id = "secret_url"
action = "webhook"
with = {{ url_secret = "teams_url", format = "teams", text = "秘密のURLへ" }}
"#
        ),
    );
    project.config_on(&db, "[secrets]\nteams_url = { env = \"TEST_TEAMS_URL\" }\n");
    let secret_url = format!("{base}/workflows/abc/triggers/manual/paths/invoke?sig=TOPSECRET");
    let d = Daemon::start(
        project.path(),
        "d",
        &[("TEST_TEAMS_URL", secret_url.as_str())],
    );
    d.wait_log("workflows loaded", STARTUP);
    let (code, _, err) = cli(project.path(), &["trigger", "chat"]);
    assert_eq!(code, 0, "{err}");
    let store = Store::open(&db.url, Durability::Process).await.unwrap();
    wait_outbox(&store, "sent", 3, Duration::from_secs(20)).await;
    // A URL kept as a secret is used, and shown nowhere: not in the outbox, the logs or the CLI.
    let requests = server.requests();
    let signed = requests
        .iter()
        .find(|r| r["path"].as_str().unwrap_or("").contains("sig=TOPSECRET"))
        .unwrap_or_else(|| panic!("nothing posted to the secret URL: {requests:?}"));
    assert!(signed["body"].as_str().unwrap().contains("秘密のURLへ"));
    let rows = store.list_outbox(Some("sent"), 10).await.unwrap();
    assert!(
        rows.iter().any(|r| r.target == "secret:teams_url"),
        "{rows:?}"
    );
    for r in &rows {
        assert!(!r.target.contains("TOPSECRET") && !r.payload.to_string().contains("TOPSECRET"));
    }
    let (code, out, _) = cli(project.path(), &["outbox"]);
    assert_eq!(code, 0);
    assert!(
        out.contains("secret:teams_url") && !out.contains("TOPSECRET"),
        "{out}"
    );
    assert!(!d.log_text().contains("TOPSECRET"), "{}", d.log_text());
    let requests = server.requests();
    let body = |path: &str| -> serde_json::Value {
        let r = requests
            .iter()
            .find(|r| r["path"] == path)
            .unwrap_or_else(|| panic!("nothing posted to {path}: {requests:?}"));
        serde_json::from_str(r["body"].as_str().unwrap()).unwrap()
    };
    // Teams Workflows: a message with one Adaptive Card 1.4.
    let teams = body("/teams");
    assert_eq!(teams["type"], "message");
    assert_eq!(teams["attachments"].as_array().unwrap().len(), 1);
    let att = &teams["attachments"][0];
    assert_eq!(
        att["contentType"],
        "application/vnd.microsoft.card.adaptive"
    );
    let card = &att["content"];
    assert_eq!(card["type"], "AdaptiveCard");
    assert_eq!(card["version"], "1.4");
    assert_eq!(
        card["$schema"],
        "http://adaptivecards.io/schemas/adaptive-card.json"
    );
    let blocks = card["body"].as_array().unwrap();
    let texts: Vec<&str> = blocks.iter().filter_map(|b| b["text"].as_str()).collect();
    assert_eq!(
        texts,
        [
            "【ご連絡】定例会議",
            "次回の定例会議は12月4日(金)です。",
            "資料は前日までにご提出ください。",
            "以上"
        ]
    );
    for b in blocks.iter().filter(|b| b["type"] == "TextBlock") {
        assert_eq!(b["wrap"], true, "{b}");
    }
    assert_eq!(blocks[0]["weight"], "Bolder");
    assert_eq!(blocks[3]["spacing"], "Medium", "a blank line adds space");
    let facts = blocks.iter().find(|b| b["type"] == "FactSet").unwrap();
    assert_eq!(
        facts["facts"],
        serde_json::json!([
            { "title": "場所", "value": "第3会議室" },
            { "title": "時間", "value": "10:00" }
        ])
    );
    assert_eq!(
        card["actions"],
        serde_json::json!([{ "type": "Action.OpenUrl", "title": "資料置き場", "url": "https://pmo.example.go.jp/docs" }])
    );
    // Slack: Block Kit with a plain-text fallback.
    let slack = body("/slack");
    assert_eq!(slack["text"], "【ご連絡】定例会議\n予算 <1億円> & 調達");
    let blocks = slack["blocks"].as_array().unwrap();
    assert_eq!(blocks[0]["type"], "header");
    assert_eq!(blocks[0]["text"]["text"], "【ご連絡】定例会議");
    assert_eq!(blocks[1]["text"]["type"], "mrkdwn");
    assert_eq!(blocks[1]["text"]["text"], "予算 &lt;1億円&gt; &amp; 調達");
    assert_eq!(blocks[2]["fields"][0]["text"], "*場所*\n第3会議室");
    assert_eq!(blocks[3]["type"], "actions");
    assert_eq!(
        blocks[3]["elements"][0]["url"],
        "https://pmo.example.go.jp/docs"
    );
    store.close().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_permanent_refusal_is_a_dead_letter_that_can_be_retried() {
    let db = TestDb::new(Backend::Sqlite).await;
    let project = Project::new();
    let server = WebhookServer::start(project.path(), 0, 404);
    project.workflow(
        "hook.toml",
        &format!("id = \"hook\"\n[[steps]]\nid = \"notify\"\naction = \"webhook\"\nwith = {{ url = \"http://127.0.0.1:{}/gone\", format = \"slack\", text = \"テスト\" }}\n", server.port),
    );
    project.config_on(&db, "[outbox]\nbackoff = \"100ms\"\n");
    let d = Daemon::start(project.path(), "d", &[]);
    d.wait_log("workflows loaded", STARTUP);
    let (code, _, err) = cli(project.path(), &["trigger", "hook"]);
    assert_eq!(code, 0, "{err}");
    let store = Store::open(&db.url, Durability::Process).await.unwrap();
    wait_outbox(&store, "dead", 1, Duration::from_secs(20)).await;
    assert_eq!(server.requests().len(), 1, "a 404 is not retried");
    assert_eq!(
        serde_json::from_str::<serde_json::Value>(server.requests()[0]["body"].as_str().unwrap())
            .unwrap(),
        serde_json::json!({
            "text": "テスト",
            "blocks": [{ "type": "section", "text": { "type": "mrkdwn", "text": "テスト" } }],
        })
    );
    let (code, out, _) = cli(project.path(), &["outbox", "--status", "dead"]);
    assert_eq!(code, 0);
    assert!(out.contains("HTTP 404"), "{out}");
    let id = store.list_outbox(Some("dead"), 1).await.unwrap()[0]
        .id
        .clone();
    let (code, out, _) = cli(project.path(), &["outbox", "retry", &id]);
    assert_eq!(code, 0, "{out}");
    wait::until(
        "the retried webhook to arrive",
        Duration::from_secs(20),
        || async {
            let n = server.requests().len();
            if n >= 2 { Ok(()) } else { Err(n) }
        },
    )
    .await;
    let (code, _, err) = cli(project.path(), &["outbox", "retry", "nope"]);
    assert_eq!(code, 1);
    assert!(err.contains("no dead message nope"), "{err}");
    store.close().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn iso_2022_jp_for_gateways_that_need_it() {
    let db = TestDb::new(Backend::Sqlite).await;
    let project = mail_project(&format!(
        "database_url = \"{}\"\n[mail]\nfrom = \"PMO事務局 <pmo@example.go.jp>\"\ncharset = \"iso-2022-jp\"\n",
        db.url
    ));
    project.workflow(
        "bad.toml",
        "id = \"bad\"\n[[steps]]\nid = \"send\"\naction = \"email\"\nwith = { to = \"a@example.go.jp\", subject = \"お詫び🙇\", body = \"本文\" }\n",
    );
    let d = Daemon::start(project.path(), "d", &[]);
    d.wait_log("workflows loaded", STARTUP);
    let store = Store::open(&db.url, Durability::Process).await.unwrap();
    let out = cli_ok(project.path(), &["trigger", "notice"]);
    let ok = out.trim().to_string();
    let out = cli_ok(project.path(), &["trigger", "bad"]);
    let bad = expect_done(&store, out.trim(), RunStatus::Failed).await;
    assert!(
        bad.error
            .as_deref()
            .unwrap()
            .contains("cannot be encoded in ISO-2022-JP: \"🙇\""),
        "{bad:?}"
    );
    wait_status(&store, &ok, RunStatus::Succeeded).await;
    wait_outbox(&store, "sent", 1, Duration::from_secs(20)).await;
    let dir = project.path().join("var/outbox");
    let raw = std::fs::read_to_string(
        std::fs::read_dir(&dir)
            .unwrap()
            .next()
            .unwrap()
            .unwrap()
            .path(),
    )
    .unwrap();
    assert!(
        raw.contains("Content-Type: text/plain; charset=ISO-2022-JP"),
        "{raw}"
    );
    assert!(raw.is_ascii());
    check_japanese_message(&decode_mail(&dir)[0]);
    store.close().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn http_step_output_is_the_response_and_5xx_is_retried() {
    let db = TestDb::new(Backend::Sqlite).await;
    let project = Project::new();
    let server = WebhookServer::start(project.path(), 1, 200);
    project.workflow(
        "call.toml",
        &format!(
            "id = \"call\"\n[[steps]]\nid = \"ask\"\naction = \"http\"\nwith = {{ url = \"http://127.0.0.1:{}/api\", method = \"POST\", json = {{ q = \"予算\" }} }}\nretry = {{ attempts = 3, backoff = \"100ms\" }}\n[[steps]]\nid = \"use\"\naction = \"log\"\nwith = {{ message = \"status {{{{ steps.ask.output.status }}}} ok {{{{ steps.ask.output.body.ok }}}}\" }}\n",
            server.port
        ),
    );
    project.config_on(&db, "[engine]\npoll_interval = \"50ms\"\n");
    let d = Daemon::start(project.path(), "d", &[]);
    d.wait_log("workflows loaded", STARTUP);
    let out = cli_ok(project.path(), &["trigger", "call"]);
    let store = Store::open(&db.url, Durability::Process).await.unwrap();
    let run = expect_done(&store, out.trim(), RunStatus::Succeeded).await;
    let steps = store.get_steps(&run.id).await.unwrap();
    let ask = steps.iter().find(|s| s.step_id == "ask").unwrap();
    assert_eq!(ask.attempt, 2, "the 500 was retried once");
    assert_eq!(ask.output.as_ref().unwrap()["status"], 200);
    let used = steps.iter().find(|s| s.step_id == "use").unwrap();
    assert_eq!(
        used.output.as_ref().unwrap()["message"],
        "status 200 ok True"
    ); // minijinja renders booleans the Python way
    let requests = server.requests();
    assert_eq!(requests.len(), 2);
    assert_eq!(
        serde_json::from_str::<serde_json::Value>(requests[1]["body"].as_str().unwrap()).unwrap()["q"],
        "予算"
    );
    let events = store.get_events(&run.id).await.unwrap();
    assert!(
        events
            .iter()
            .any(|e| e.kind == "attempt_failed" && e.message.contains("500")),
        "{events:?}"
    );
    store.close().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_5xx_smtp_reply_is_a_dead_letter_at_once_with_the_servers_reply() {
    let db = TestDb::new(Backend::Sqlite).await;
    let port = free_port();
    let _smtp = SmtpSink::rejecting(port);
    let project = Project::with_workflow(
        "m.toml",
        "id = \"m\"\n[[steps]]\nid = \"send\"\naction = \"email\"\nwith = { to = \"nobody@example.go.jp\", subject = \"件名\", body = \"本文\" }\n",
    );
    project.config(&format!(
        "database_url = \"{}\"\n[smtp]\nhost = \"127.0.0.1\"\nport = {port}\ntls = \"none\"\n[outbox]\nbackoff = \"100ms\"\n",
        db.url
    ));
    let d = Daemon::start(project.path(), "d", &[]);
    d.wait_log("workflows loaded", STARTUP);
    cli_ok(project.path(), &["trigger", "m"]);
    let store = Store::open(&db.url, Durability::Process).await.unwrap();
    wait_outbox(&store, "dead", 1, Duration::from_secs(20)).await;
    let dead = &store.list_outbox(Some("dead"), 1).await.unwrap()[0];
    assert_eq!(dead.attempts, 1, "a permanent refusal is not retried");
    assert!(
        dead.last_error
            .as_deref()
            .unwrap()
            .starts_with("SMTP server refused the message: ")
            && dead.last_error.as_deref().unwrap().contains("550"),
        "{:?}",
        dead.last_error
    );
    let out = cli_ok(project.path(), &["outbox", "--status", "dead"]);
    assert!(out.contains("User unknown"), "{out}");
    store.close().await;
}

/// LINE WORKS: the service-account JWT is exchanged for a bot token at a real token server
/// (signature verified), the post carries it as a bearer token, and its body is a text message
/// with the title, facts and links; an escalation level with `via = ["email", "line-works"]`
/// posts its 第一報 the same way. A refused token (401) is dropped and a fresh one fetched.
#[tokio::test(flavor = "multi_thread")]
async fn line_works_bot_posts_with_a_token_from_the_service_account_jwt() {
    let db = TestDb::new(Backend::Sqlite).await;
    let project = Project::new();
    let (key, _cert, public) = pmoflow_tests::rsa_key_and_cert(project.path(), "lineworks");
    let idp = pmoflow_tests::OAuthServer::start(&serde_json::json!({
        "lifetime": 86400,
        "clients": {"lw-client": {"public_key": public, "secret": "lw-secret", "user": "bot"}}
    }));
    let server = WebhookServer::start(project.path(), 0, 201);
    let base = format!("http://127.0.0.1:{}", server.port);
    project.workflow(
        "lw.toml",
        &format!(
            r#"id = "lw"

[[steps]]
id = "post"
action = "webhook"
[steps.with]
url = "{base}/v1.0/bots/2000001/channels/pmo-room/messages"
format = "line-works"
oauth2 = "lineworks"
title = "【ご連絡】定例会議"
text = "次回の定例会議は12月4日(金)です。"
facts = {{ "場所" = "第3会議室" }}
links = [{{ title = "資料置き場", url = "https://pmo.example.go.jp/docs" }}]

[[steps]]
id = "chain"
action = "escalate"
[steps.with]
subject = "システム障害"
body = "基幹システムが停止しています。"
levels = [{{ notify = ["oncall@example.go.jp"], via = ["email", "line-works"], wait = "15m" }}]
webhook = {{ url = "{base}/v1.0/bots/2000001/users/oncall/messages", oauth2 = "lineworks" }}
"#
        ),
    );
    project.config(&format!(
        r#"database_url = "{}"
[oauth2.lineworks]
provider = "line-works"
token_url = "{}"
client_id = "lw-client"
client_secret_env = "TEST_LW_SECRET"
service_account = "abc.serviceaccount@ministry"
private_key_file = "{}"
"#,
        db.url,
        idp.url("/oauth2/v2.0/token"),
        key.display()
    ));
    let d = Daemon::start(project.path(), "d", &[("TEST_LW_SECRET", "lw-secret")]);
    d.wait_log("workflows loaded", STARTUP);
    let (code, _, err) = cli(project.path(), &["trigger", "lw"]);
    assert_eq!(code, 0, "{err}");
    let store = Store::open(&db.url, Durability::Process).await.unwrap();
    // The post, the chain's line-works alert and its email.
    wait_outbox(&store, "sent", 3, Duration::from_secs(30)).await;
    let requests = server.requests();
    let post = requests
        .iter()
        .find(|r| r["path"] == "/v1.0/bots/2000001/channels/pmo-room/messages")
        .unwrap_or_else(|| panic!("{requests:?}"));
    let body: serde_json::Value = serde_json::from_str(post["body"].as_str().unwrap()).unwrap();
    assert_eq!(body["content"]["type"], "text");
    assert_eq!(
        body["content"]["text"],
        "【ご連絡】定例会議\n\n次回の定例会議は12月4日(金)です。\n\n場所：第3会議室\n\n資料置き場: https://pmo.example.go.jp/docs"
    );
    // The bearer token is one the token server issued for the service account.
    let auth = post["headers"]["authorization"].as_str().unwrap();
    let token = auth.strip_prefix("Bearer ").unwrap();
    let answer: serde_json::Value = serde_json::from_str(&pmoflow_tests::http_raw(
        idp.port,
        "POST",
        "/introspect",
        &format!("token={token}"),
    ))
    .unwrap();
    assert_eq!(answer["active"], true, "{answer}");
    assert_eq!(answer["username"], "abc.serviceaccount@ministry");
    let stats = idp.stats();
    assert_eq!(stats["issued"], 1, "one token for both posts: {stats}");
    assert_eq!(stats["claims"][0]["iss"], "lw-client");
    let alert = requests
        .iter()
        .find(|r| r["path"] == "/v1.0/bots/2000001/users/oncall/messages")
        .unwrap_or_else(|| panic!("{requests:?}"));
    let text: serde_json::Value = serde_json::from_str(alert["body"].as_str().unwrap()).unwrap();
    let text = text["content"]["text"].as_str().unwrap();
    assert!(text.starts_with("【緊急・第一報】"), "{text}");
    assert!(text.contains("通知先："), "{text}");
    assert!(!d.log_text().contains(token), "the token is never logged");
}

/// A receiver that answers the first call `429` with `Retry-After: 2` and the next ones 200;
/// it records when each call arrived.
async fn rate_limited_receiver() -> (u16, std::sync::Arc<std::sync::Mutex<Vec<Instant>>>) {
    scripted_receiver(Some(
        "HTTP/1.1 429 Too Many Requests\r\nRetry-After: 2\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
    ))
    .await
}

/// A receiver that answers its first call `first` (or, with `None`, never answers it) and
/// every later one 200; it keeps the time of each call.
async fn scripted_receiver(
    first: Option<&'static str>,
) -> (u16, std::sync::Arc<std::sync::Mutex<Vec<Instant>>>) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let calls = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let seen = calls.clone();
    tokio::spawn(async move {
        while let Ok((mut sock, _)) = listener.accept().await {
            let seen = seen.clone();
            tokio::spawn(async move {
                let mut buf = Vec::new();
                let mut chunk = [0u8; 4096];
                // Head, then the body (its length from Content-Length).
                loop {
                    match sock.read(&mut chunk).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => buf.extend_from_slice(&chunk[..n]),
                    }
                    let text = String::from_utf8_lossy(&buf).to_string();
                    if let Some((head, body)) = text.split_once("\r\n\r\n") {
                        let len = head
                            .lines()
                            .find_map(|l| {
                                l.to_ascii_lowercase()
                                    .strip_prefix("content-length:")
                                    .map(|v| v.trim().parse::<usize>().unwrap_or(0))
                            })
                            .unwrap_or(0);
                        if body.len() >= len {
                            break;
                        }
                    }
                }
                let n = {
                    let mut c = seen.lock().unwrap();
                    c.push(Instant::now());
                    c.len()
                };
                let answer = match (n, first) {
                    (1, Some(answer)) => answer,
                    (1, None) => {
                        // pace: a server that never answers (the client's timeout ends it).
                        tokio::time::sleep(Duration::from_secs(3600)).await;
                        return;
                    }
                    _ => "HTTP/1.1 200 OK\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
                };
                let _ = sock.write_all(answer.as_bytes()).await;
            });
        }
    });
    (port, calls)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_429_with_retry_after_is_retried_no_sooner_than_the_server_asked() {
    let db = TestDb::new(Backend::Sqlite).await;
    let project = Project::new();
    let (port, calls) = rate_limited_receiver().await;
    project.workflow(
        "hook.toml",
        &format!("id = \"hook\"\n[[steps]]\nid = \"notify\"\naction = \"webhook\"\nwith = {{ url = \"http://127.0.0.1:{port}/busy\", text = \"障害発生\" }}\n"),
    );
    // The outbox's own backoff (100 ms) is far shorter than what the server asks for.
    project.config_on(
        &db,
        "[outbox]\nbackoff = \"100ms\"\nmax_backoff = \"300ms\"\n",
    );
    let _d = Daemon::start(project.path(), "d", &[]);
    let (code, _, err) = cli(project.path(), &["trigger", "hook"]);
    assert_eq!(code, 0, "{err}");
    let store = Store::open(&db.url, Durability::Process).await.unwrap();
    wait_outbox(&store, "sent", 1, Duration::from_secs(30)).await;
    let calls = calls.lock().unwrap().clone();
    assert_eq!(calls.len(), 2, "one refusal, one delivery");
    let waited = calls[1] - calls[0];
    assert!(
        waited >= Duration::from_millis(1900),
        "retried after {waited:?}, before the 2 s the server asked for"
    );
}

/// One email through an SMTP server that misbehaves as `script` says
/// (`tests/support/faulty_smtp.py`), until it is sent or dead. Returns the outbox row and what
/// the server logged.
async fn through_faulty_smtp(script: &str) -> (pmoflow::store::OutboxRow, Vec<String>, usize) {
    let db = TestDb::new(Backend::Sqlite).await;
    let project = Project::new();
    let port = free_port();
    let maildir = project.path().join("maildir");
    let mut server = std::process::Command::new("python3")
        .arg(pmoflow_tests::support("faulty_smtp.py"))
        .arg(port.to_string())
        .arg(&maildir)
        .arg(script)
        .spawn()
        .expect("python3 faulty_smtp.py");
    // Not a probe connection: it would take the first behaviour.
    let ready = project.path().join("faulty_smtp.log.ready");
    wait::until_blocking(
        "the faulty SMTP server to be up",
        Duration::from_secs(20),
        || {
            if ready.exists() {
                Ok(())
            } else {
                Err("no ready file")
            }
        },
    );
    project.workflow("m.toml", "id = \"m\"\n[[steps]]\nid = \"send\"\naction = \"email\"\nwith = { to = \"yamada@example.go.jp\", subject = \"件名\", body = \"本文\" }\n");
    project.config(&format!(
        "database_url = \"{}\"\n[smtp]\nhost = \"127.0.0.1\"\nport = {port}\ntls = \"none\"\ntimeout = \"2s\"\n[outbox]\nbackoff = \"100ms\"\nmax_backoff = \"200ms\"\nmax_attempts = 3\n",
        db.url
    ));
    let d = Daemon::start(project.path(), "d", &[]);
    d.wait_log("workflows loaded", STARTUP);
    let (code, _, err) = cli(project.path(), &["trigger", "m"]);
    assert_eq!(code, 0, "{err}");
    let store = Store::open(&db.url, Durability::Process).await.unwrap();
    let row = wait::until(
        &format!("{script}: the message sent or dead"),
        Duration::from_secs(60),
        || async {
            let rows = store.list_outbox(None, 10).await.unwrap();
            rows.iter()
                .find(|r| r.status != "pending")
                .cloned()
                .ok_or(rows)
        },
    )
    .await;
    store.close().await;
    drop(d);
    let _ = server.kill();
    let _ = server.wait();
    let log = std::fs::read_to_string(project.path().join("faulty_smtp.log")).unwrap_or_default();
    let stored = std::fs::read_dir(&maildir).map(|d| d.count()).unwrap_or(0);
    (row, log.lines().map(str::to_string).collect(), stored)
}

/// Each SMTP fault ends as docs/notifications.md says: a 421 greeting, a 451 to RCPT, a 452
/// after DATA, a server that accepts the connection and never answers (the `[smtp] timeout`),
/// and a connection dropped after DATA are retried until the message is accepted; a 554 after
/// DATA is a dead letter at once; a temporary refusal that never ends is dead after
/// `max_attempts`. Only the drop after DATA — the server had the message but never said so —
/// delivers it twice, with the same Message-ID (the documented in-flight case).
#[tokio::test(flavor = "multi_thread")]
async fn smtp_faults_are_retried_or_dead_lettered_as_documented() {
    let cases = [
        ("421,ok", "sent", 2, 1),
        ("451,ok", "sent", 2, 1),
        ("452,ok", "sent", 2, 1),
        ("hang,ok", "sent", 2, 1),
        ("drop,ok", "sent", 2, 2),
        ("554", "dead", 1, 0),
        ("451", "dead", 3, 0),
    ];
    let handles: Vec<_> = cases
        .iter()
        .map(|(s, ..)| tokio::spawn(through_faulty_smtp(s)))
        .collect();
    let mut results = Vec::new();
    for h in handles {
        results.push(h.await.unwrap());
    }
    for ((script, status, attempts, stored), (row, log, got)) in cases.iter().zip(results) {
        assert_eq!(row.status, *status, "{script}: {row:?}\n{log:?}");
        // The fault was met, then (for a temporary one) the message went through.
        let first = script.split(',').next().unwrap();
        assert!(
            log.first()
                .is_some_and(|l| l.split_whitespace().nth(1) == Some(first)),
            "{script}: {log:?}"
        );
        if *status == "sent" {
            assert!(
                log.last().is_some_and(|l| l.contains(" ok ")),
                "{script}: {log:?}"
            );
        }
        assert_eq!(row.attempts, *attempts, "{script}: {row:?}\n{log:?}");
        assert_eq!(
            got, *stored,
            "{script}: messages stored by the server\n{log:?}"
        );
        if *status == "dead" {
            let error = row.last_error.clone().unwrap_or_default();
            let code = script.split(',').next_back().unwrap();
            assert!(error.contains(code), "{script}: {error}");
        }
        if *script == "drop,ok" {
            let ids: Vec<&str> = log
                .iter()
                .filter_map(|l| l.split_whitespace().nth(2))
                .collect();
            assert_eq!(ids.len(), 2, "{log:?}");
            assert_eq!(ids[0], ids[1], "the resend has the same Message-ID");
            assert!(
                ids[0].contains(row.message_id.trim_matches(['<', '>'])),
                "{ids:?} {}",
                row.message_id
            );
        }
        println!(
            "smtp {script}: {} after {} attempt(s); server: {log:?}",
            row.status, row.attempts
        );
    }
}

/// A webhook receiver that takes the request and never answers: the attempt ends after
/// `[outbox] webhook_timeout` and the retry is delivered (with the same Idempotency-Key).
#[tokio::test(flavor = "multi_thread")]
async fn a_webhook_receiver_that_never_answers_times_out_and_is_retried() {
    let db = TestDb::new(Backend::Sqlite).await;
    let project = Project::new();
    let (port, calls) = scripted_receiver(None).await;
    project.workflow(
        "hook.toml",
        &format!("id = \"hook\"\n[[steps]]\nid = \"notify\"\naction = \"webhook\"\nwith = {{ url = \"http://127.0.0.1:{port}/slow\", text = \"障害発生\" }}\n"),
    );
    project.config_on(
        &db,
        "[outbox]\nbackoff = \"100ms\"\nmax_backoff = \"300ms\"\nwebhook_timeout = \"1s\"\n",
    );
    let _d = Daemon::start(project.path(), "d", &[]);
    let (code, _, err) = cli(project.path(), &["trigger", "hook"]);
    assert_eq!(code, 0, "{err}");
    let store = Store::open(&db.url, Durability::Process).await.unwrap();
    wait_outbox(&store, "sent", 1, Duration::from_secs(30)).await;
    let row = &store.list_outbox(Some("sent"), 1).await.unwrap()[0];
    assert_eq!(row.attempts, 2, "{row:?}");
    let calls = calls.lock().unwrap().clone();
    assert_eq!(calls.len(), 2, "one unanswered call, one delivery");
    let waited = calls[1] - calls[0];
    assert!(
        waited >= Duration::from_millis(1000),
        "retried after {waited:?}, before the 1 s timeout ended the first attempt"
    );
    store.close().await;
}
