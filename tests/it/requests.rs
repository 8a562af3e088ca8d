//! The `request` action end to end: requests go out through a real SMTP server (aiosmtpd),
//! replies come back through a real IMAP server (Dovecot, appended with Python's imaplib) or
//! through `pmoflow inbound` on standard input, and the waiting run continues with the parsed
//! answers. The real daemon, killed with SIGKILL or aborted at a failpoint.

use std::path::Path;
use std::time::Duration;

use pmoflow::store::{Durability, RunStatus, Store};
use pmoflow_tests::backend_tests;
use pmoflow_tests::mail::is_copy;
use pmoflow_tests::mail::{nonce_in, url_in};
use pmoflow_tests::{
    Backend, Daemon, Dovecot, PROJECTS, Project, STARTUP, SmtpSink, TestDb, cli, free_port, wait,
};
use pmoflow_tests::{Call, Succeeds};
use pmoflow_tests::{
    deliver, expect_done, mail_to, reply_address, step_output, to_addr, wait_done, wait_mail,
};
use serde_json::Value as Json;

const TEMPLATE: &str = "{{ item.lead }} 様\n\nお疲れ様です。PMO事務局です。\n{{ item.name }}の状況報告を{{ request.deadline_ja }}までにお願いいたします。\n\n以下の項目を返信メールの本文にご記入ください。\n\n{{ request.form }}\nよろしくお願いいたします。\nPMO事務局\n";

fn workflow(deadline: &str, extra: &str) -> String {
    format!(
        r#"
id = "status"
[[steps]]
id = "ask"
action = "request"
foreach = "data.projects.projects"
[steps.with]
to = "{{{{ item.lead }}}} <{{{{ item.lead_email }}}}>"
subject = "【要回答】{{{{ item.name }}}} 状況報告のお願い"
template = "status_request.txt"
fields = ["総合評価", "進捗", "経費", "リスク", "課題"]
required = ["総合評価"]
deadline = "{deadline}"
{extra}

[[steps]]
id = "done"
action = "log"
[steps.with]
message = "{{{{ steps.ask.output | map(attribute='status') | join(',') }}}}"
"#
    )
}

pub(crate) struct Setup {
    pub(crate) project: Project,
    pub(crate) db: TestDb,
    _smtp: SmtpSink,
}

pub(crate) async fn setup(deadline: &str, extra_step: &str, extra_config: &str) -> Setup {
    setup_on(Backend::Sqlite, deadline, extra_step, extra_config).await
}

pub(crate) async fn setup_on(
    backend: Backend,
    deadline: &str,
    extra_step: &str,
    extra_config: &str,
) -> Setup {
    let db = TestDb::new(backend).await;
    let port = free_port();
    let project = Project::new();
    std::fs::write(project.workflows().join("data/projects.toml"), PROJECTS).unwrap();
    std::fs::create_dir_all(project.workflows().join("templates")).unwrap();
    std::fs::write(
        project.workflows().join("templates/status_request.txt"),
        TEMPLATE,
    )
    .unwrap();
    project.workflow("status.toml", &workflow(deadline, extra_step));
    project.config(&format!(
        "database_url = \"{}\"\n[engine]\npoll_interval = \"100ms\"\n[mail]\nfrom = \"PMO事務局 <pmo@example.go.jp>\"\n[smtp]\nhost = \"127.0.0.1\"\nport = {port}\ntls = \"none\"\n[outbox]\npoll_interval = \"200ms\"\n[replies]\naddress = \"pmo+{{token}}@example.go.jp\"\nnotify = \"pmo-desk@example.go.jp\"\n{extra_config}\n",
        db.url
    ));
    let smtp = SmtpSink::start(port, &project.path().join("maildir"));
    Setup {
        project,
        db,
        _smtp: smtp,
    }
}

/// A reply as Gmail JP would send it: answer on top, the request quoted below.
pub(crate) fn gmail_reply(
    from: &str,
    to: &str,
    request: &Json,
    body: &str,
    extra: &str,
) -> Vec<u8> {
    let quoted: String = request["body"]
        .as_str()
        .unwrap()
        .lines()
        .map(|l| format!("> {l}\r\n"))
        .collect();
    let subject = format!("Re: {}", request["subject"].as_str().unwrap());
    let encoded = format!("=?UTF-8?B?{}?=", base64(subject.as_bytes()));
    format!(
        "From: {from}\r\nTo: {to}\r\nSubject: {encoded}\r\nDate: Mon, 30 Nov 2026 10:00:00 +0900\r\nMessage-ID: <reply-{n}@mail.example.go.jp>\r\nIn-Reply-To: {irt}\r\nReferences: {irt}\r\n{extra}MIME-Version: 1.0\r\nContent-Type: text/plain; charset=UTF-8\r\nContent-Transfer-Encoding: 8bit\r\n\r\n{body}\r\n\r\n2026年11月30日(月) 9:00 PMO事務局 <pmo@example.go.jp>:\r\n{quoted}",
        n = uuid(),
        irt = request["message_id"].as_str().unwrap(),
        body = body.replace('\n', "\r\n"),
    )
    .into_bytes()
}

fn uuid() -> String {
    format!(
        "{}.{}",
        std::process::id(),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos()
    )
}

fn base64(bytes: &[u8]) -> String {
    const T: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::new();
    for c in bytes.chunks(3) {
        let b = [c[0], *c.get(1).unwrap_or(&0), *c.get(2).unwrap_or(&0)];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= c.len() {
                out.push(T[((n >> (18 - 6 * i)) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread")]
async fn replies_by_imap_resume_the_waiting_run_with_parsed_answers() {
    let imap = Dovecot::start();
    let s = setup("10m", "", &imap.config("poll_interval = \"2s\"")).await;
    let maildir = s.project.path().join("maildir");
    // Mail already in the mailbox before pmoflow first sees it is never processed.
    let old_mail = b"From: someone@example.go.jp\r\nTo: pmo@example.go.jp\r\nSubject: old\r\nMessage-ID: <old-1@example.go.jp>\r\n\r\nold mail\r\n".to_vec();
    assert_eq!(imap.append_raw("INBOX", &[old_mail]), 1);
    let d = Daemon::start(
        s.project.path(),
        "d",
        &[("PMOFLOW_IMAP_PASSWORD", imap.password.as_str())],
    );
    d.wait_log("imap connected", STARTUP);
    d.wait_log("mailbox registered", STARTUP);
    let (code, out, err) = cli(s.project.path(), &["trigger", "status"]);
    assert_eq!(code, 0, "{err}");
    let run_id = out.trim().to_string();
    let mails = wait_mail(&maildir, 2);
    let yamada = mail_to(&mails, "yamada@");
    let suzuki = mail_to(&mails, "suzuki@");
    // Each request has its own reply address with a 26-character token, the token in the
    // Message-ID, a subject tag, the cut marker first and the form.
    let reply_y = reply_address(yamada);
    let reply_s = reply_address(suzuki);
    assert_ne!(reply_y, reply_s);
    let token = reply_y
        .strip_prefix("pmo+")
        .unwrap()
        .strip_suffix("@example.go.jp")
        .unwrap();
    assert_eq!(token.len(), 26, "{reply_y}");
    assert!(yamada["message_id"].as_str().unwrap().contains(token));
    assert!(yamada["subject"].as_str().unwrap().contains("[#"));
    let body = yamada["body"].as_str().unwrap().replace("\r\n", "\n");
    assert!(
        body.starts_with("――――― この線より上にご記入ください"),
        "{body}"
    );
    assert!(body.contains("山田 太郎 様"), "{body}");
    assert!(body.contains("総合評価: \n進捗: "), "{body}");

    // A third address using Yamada's reply address: quarantined, never an answer.
    let forged = gmail_reply(
        "attacker@evil.example.com",
        &reply_y,
        yamada,
        "総合評価: 要対応\n進捗: 0%",
        "",
    );
    // An out-of-office reply: recorded, never an answer.
    let ooo = gmail_reply(
        "yamada@pjmo-a.example.go.jp",
        &reply_y,
        yamada,
        "不在にしております。",
        "Auto-Submitted: auto-replied\r\n",
    );
    // Yamada answers on top (full-width digits and percent); Suzuki's client drops the
    // sub-address, so only In-Reply-To correlates it.
    let answer_y = gmail_reply(
        "山田 太郎 <Yamada@pjmo-a.example.go.jp>",
        &reply_y,
        yamada,
        "総合評価：良好\n進捗：９０％\nリスク: 特になし\n\n引き続きよろしくお願いします。",
        "",
    );
    let answer_s = gmail_reply(
        "suzuki@pjmo-b.example.go.jp",
        "pmo@example.go.jp",
        suzuki,
        "総合評価: 注意\n経費: 予算比 112%\n課題: ベンダー交代の調整中",
        "",
    );
    let n = imap.append_raw("INBOX", &[forged, ooo, answer_y, answer_s]);
    assert_eq!(n, 5);

    let store = Store::open(&s.db.url, Durability::Process).await.unwrap();
    d.expect_done(&store, &run_id, RunStatus::Succeeded).await;
    let out = step_output(&store, &run_id, "ask").await;
    let y = &out[0];
    let z = &out[1];
    assert_eq!(y["status"], "answered", "{out:#}");
    assert_eq!(y["from"], "yamada@pjmo-a.example.go.jp");
    assert_eq!(y["fields"]["総合評価"], "良好");
    assert_eq!(y["fields"]["進捗"], 90);
    assert_eq!(y["fields"]["リスク"], "特になし");
    assert_eq!(y["text"], "引き続きよろしくお願いします。");
    assert_eq!(y["via"], "email");
    assert_eq!(y["history"].as_array().unwrap().len(), 1, "{out:#}");
    assert_eq!(z["status"], "answered");
    assert_eq!(z["fields"]["総合評価"], "注意");
    assert_eq!(z["fields"]["課題"], "ベンダー交代の調整中");
    assert_eq!(
        step_output(&store, &run_id, "done").await["message"],
        "answered,answered"
    );

    // The forged reply is held and the PMO desk was told; the auto-reply is only recorded.
    let (code, list, err) = cli(s.project.path(), &["inbound", "list", "--format", "json"]);
    assert_eq!(code, 0, "{err}");
    let list: Json = serde_json::from_str(&list).unwrap();
    let outcome = |from: &str, outcome: &str| {
        list.as_array()
            .unwrap()
            .iter()
            .filter(|r| r["from"] == from && r["outcome"] == outcome)
            .count()
    };
    assert_eq!(
        outcome("attacker@evil.example.com", "wrong_sender"),
        1,
        "{list:#}"
    );
    assert_eq!(
        outcome("yamada@pjmo-a.example.go.jp", "auto_reply"),
        1,
        "{list:#}"
    );
    assert_eq!(
        outcome("yamada@pjmo-a.example.go.jp", "answer"),
        1,
        "{list:#}"
    );
    assert_eq!(
        outcome("suzuki@pjmo-b.example.go.jp", "answer"),
        1,
        "{list:#}"
    );
    assert_eq!(
        list.as_array().unwrap().len(),
        4,
        "the old message was never taken: {list:#}"
    );
    let mails = wait_mail(&maildir, 3);
    let notice = mails
        .iter()
        .find(|m| m["to"][0] == "pmo-desk@example.go.jp")
        .expect("the PMO desk is told about the held message");
    assert!(
        notice["body"]
            .as_str()
            .unwrap()
            .contains("attacker@evil.example.com")
    );
    assert!(
        d.log_text().contains("is not the addressee"),
        "the rejection is logged"
    );
    // Nothing was ever sent back to the attacker or the auto-responder.
    assert!(
        mails
            .iter()
            .all(|m| !to_addr(m).contains("evil.example.com"))
    );
}

backend_tests!(a_reply_stored_but_not_processed_when_the_daemon_dies_is_processed_exactly_once, a_reply_survives_a_crash_on_postgres_too => reply_survives_a_crash);

async fn reply_survives_a_crash(backend: Backend) {
    let imap = Dovecot::start();
    let s = setup_on(backend, "10m", "", &imap.config("poll_interval = \"1s\"")).await;
    let maildir = s.project.path().join("maildir");
    let env = [("PMOFLOW_IMAP_PASSWORD", imap.password.as_str())];
    let crash_env = [
        ("PMOFLOW_IMAP_PASSWORD", imap.password.as_str()),
        ("PMOFLOW_FAILPOINT", "after-intake"),
    ];
    let mut d = Daemon::start(s.project.path(), "d1", &crash_env);
    d.wait_log("mailbox registered", STARTUP);
    let (code, out, err) = cli(s.project.path(), &["trigger", "status"]);
    assert_eq!(code, 0, "{err}");
    let run_id = out.trim().to_string();
    let mails = wait_mail(&maildir, 2);
    let yamada = mail_to(&mails, "yamada@");
    let reply = reply_address(yamada);
    imap.append_raw(
        "INBOX",
        &[gmail_reply(
            "yamada@pjmo-a.example.go.jp",
            &reply,
            yamada,
            "総合評価: 良好",
            "",
        )],
    );
    // The daemon stores the reply, then dies before processing it.
    let code = d.wait_exit(Duration::from_secs(30));
    assert_ne!(
        code,
        Some(0),
        "the failpoint aborts the daemon:\n{}",
        d.log_text()
    );
    assert!(d.log_text().contains("failpoint after-intake"));
    let store = Store::open(&s.db.url, Durability::Process).await.unwrap();
    let pending = store.inbound_list(Some("pending"), 10).await.unwrap();
    assert_eq!(pending.len(), 1, "the reply is stored, unprocessed");

    // Restart: processed once; the IMAP UID is not fetched again.
    let _d2 = Daemon::start(s.project.path(), "d2", &env);
    wait::until(
        "the stored reply to be processed",
        Duration::from_secs(30),
        || async {
            let rows = store.requests_for_step(&run_id, "ask[0]").await.unwrap();
            if rows[0].status == "answered" {
                Ok(())
            } else {
                Err(rows)
            }
        },
    )
    .await;
    // pace: a check that nothing more happens: a few poller rounds to (wrongly) take the
    // message again.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let rows = store.requests_for_step(&run_id, "ask[0]").await.unwrap();
    let answers = store.answers_for(&[rows[0].token.clone()]).await.unwrap();
    assert_eq!(answers.len(), 1, "exactly one answer: {answers:?}");
    let all = store.inbound_list(None, 100).await.unwrap();
    let real: Vec<_> = all.iter().filter(|r| r.via == "imap").collect();
    assert_eq!(real.len(), 1, "stored once: {all:?}");
    assert_eq!(real[0].status, "done");
}

#[tokio::test(flavor = "multi_thread")]
async fn reminders_go_only_to_those_who_have_not_answered_and_the_deadline_records_unanswered() {
    // `complete_when = "deadline"`: answers may be corrected until the close, even the answer of
    // a foreach item (which otherwise ends at its answer).
    let s = setup(
        "45s",
        "remind = [\"-25s\"]\non_timeout = \"continue\"\ncomplete_when = \"deadline\"",
        "",
    )
    .await;
    let maildir = s.project.path().join("maildir");
    let _d = Daemon::start(s.project.path(), "d", &[]);
    let (code, out, err) = cli(s.project.path(), &["trigger", "status"]);
    assert_eq!(code, 0, "{err}");
    let run_id = out.trim().to_string();
    let mails = wait_mail(&maildir, 2);
    let yamada = mail_to(&mails, "yamada@");
    // Yamada answers through standard input, as an MTA pipe would deliver it.
    let reply = gmail_reply(
        "yamada@pjmo-a.example.go.jp",
        &reply_address(yamada),
        yamada,
        "総合評価: 良好",
        "",
    );
    let path = s.project.path().join("reply.eml");
    std::fs::write(&path, &reply).unwrap();
    let out = std::process::Command::new(pmoflow_tests::bin())
        .arg("inbound")
        .current_dir(s.project.path())
        .stdin(std::fs::File::open(&path).unwrap())
        .succeeds();
    assert!(String::from_utf8_lossy(&out.stdout).contains("answer (done)"));
    // The same message delivered again is taken once.
    let (code, again, _) = cli(s.project.path(), &["inbound", path.to_str().unwrap()]);
    assert_eq!(code, 0);
    assert!(again.contains("already received"), "{again}");
    // Yamada answers again before the deadline: the latest answer wins, both are kept.
    let again = gmail_reply(
        "yamada@pjmo-a.example.go.jp",
        &reply_address(yamada),
        yamada,
        "総合評価: 注意\n課題: 要員不足",
        "",
    );
    let out2 = deliver(s.project.path(), &again);
    assert!(out2.contains("answer (done)"), "{out2}");

    let store = Store::open(&s.db.url, Durability::Process).await.unwrap();
    expect_done(&store, &run_id, RunStatus::Succeeded).await;
    let out = step_output(&store, &run_id, "ask").await;
    assert_eq!(out[0]["status"], "answered");
    assert_eq!(
        out[0]["fields"]["総合評価"], "注意",
        "the latest answer wins: {out:#}"
    );
    assert_eq!(out[0]["fields"]["課題"], "要員不足");
    let history = out[0]["history"].as_array().unwrap();
    assert_eq!(history.len(), 2, "{out:#}");
    assert_eq!(history[0]["fields"]["総合評価"], "良好");
    assert_eq!(out[1]["status"], "unanswered");
    assert_eq!(out[1]["status_ja"], "未回答");
    let mails = wait_mail(&maildir, 3);
    let reminders: Vec<&Json> = mails
        .iter()
        .filter(|m| m["subject"].as_str().unwrap().starts_with("【リマインド】"))
        .collect();
    assert_eq!(reminders.len(), 1, "{mails:#?}");
    assert!(to_addr(reminders[0]).contains("suzuki@"));
    assert_eq!(
        reply_address(reminders[0]),
        reply_address(mail_to(&mails, "suzuki@")),
        "the reminder carries the same reply address"
    );
    // An answer after the close is kept as a message but changes nothing.
    let suzuki = mail_to(&mails, "suzuki@");
    let late = gmail_reply(
        "suzuki@pjmo-b.example.go.jp",
        &reply_address(suzuki),
        suzuki,
        "総合評価: 注意",
        "",
    );
    let out = deliver(s.project.path(), &late);
    assert!(out.contains("after_close (done)"), "{out}");
    assert_eq!(
        step_output(&store, &run_id, "ask").await[1]["status"],
        "unanswered"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn forged_and_unmatched_replies_never_reach_the_run() {
    let s = setup("10m", "", "").await;
    let maildir = s.project.path().join("maildir");
    let _d = Daemon::start(s.project.path(), "d", &[]);
    let (code, out, err) = cli(s.project.path(), &["trigger", "status"]);
    assert_eq!(code, 0, "{err}");
    let run_id = out.trim().to_string();
    let mails = wait_mail(&maildir, 2);
    let yamada = mail_to(&mails, "yamada@");
    let reply = reply_address(yamada);
    let token = reply
        .strip_prefix("pmo+")
        .unwrap()
        .strip_suffix("@example.go.jp")
        .unwrap()
        .to_string();
    // A guessed token (one character changed), an unknown Message-ID, a made-up tag.
    let mut forged_token = token.clone().into_bytes();
    forged_token[25] = if forged_token[25] == b'a' { b'b' } else { b'a' };
    let forged_token = String::from_utf8(forged_token).unwrap();
    let mut fake = yamada.clone();
    fake["message_id"] = Json::String("<pmoflow.aaaaaaaaaaaaaaaaaaaaaaaaaa@example.go.jp>".into());
    fake["subject"] = Json::String("【要回答】状況報告 [#1]".into());
    let cases = [
        (
            gmail_reply(
                "yamada@pjmo-a.example.go.jp",
                &format!("pmo+{forged_token}@example.go.jp"),
                &fake,
                "総合評価: 良好",
                "",
            ),
            "unmatched",
        ),
        (
            gmail_reply(
                "someone@pjmo-a.example.go.jp",
                &reply,
                yamada,
                "総合評価: 良好",
                "",
            ),
            "wrong_sender",
        ),
        (b"this is not an email".to_vec(), "unreadable"),
    ];
    for (raw, expected) in cases {
        let out = deliver(s.project.path(), &raw);
        assert!(out.contains(&format!("{expected} (quarantined)")), "{out}");
    }
    let store = Store::open(&s.db.url, Durability::Process).await.unwrap();
    let rows = store.requests_for_step(&run_id, "ask[0]").await.unwrap();
    assert_eq!(rows[0].status, "open");
    assert!(
        store
            .answers_for(&[rows[0].token.clone()])
            .await
            .unwrap()
            .is_empty()
    );
    let run = store.get_run(&run_id).await.unwrap().unwrap();
    assert!(!run.status.is_terminal());

    // A delivery failure report for Suzuki's request marks him bounced; once Yamada answers,
    // nobody is left to wait for.
    let suzuki = mail_to(&mails, "suzuki@");
    let bounce = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/replies/22-bounce-dsn-headers.eml"),
    )
    .unwrap()
    .replace("yamada@pjmo-a.example.go.jp", "suzuki@pjmo-b.example.go.jp")
    .replace(
        "<pmoflow.k7x2m4p6q5r3s5t7v2w4y6z3ab@example.go.jp>",
        suzuki["message_id"].as_str().unwrap(),
    )
    .replace("bounces+k7x2m4p6q5r3s5t7v2w4y6z3ab@", "pmo@");
    let out = deliver(s.project.path(), &bounce);
    assert!(out.contains("bounce (done)"), "{out}");
    let answer = gmail_reply(
        "yamada@pjmo-a.example.go.jp",
        &reply,
        yamada,
        "総合評価: 良好",
        "",
    );
    let out = deliver(s.project.path(), &answer);
    assert!(out.contains("answer (done)"), "{out}");
    expect_done(&store, &run_id, RunStatus::Succeeded).await;
    let out = step_output(&store, &run_id, "ask").await;
    assert_eq!(out[0]["status"], "answered", "{out:#}");
    assert_eq!(out[1]["status"], "bounced", "{out:#}");
    assert!(
        out[1]["bounce"].as_str().unwrap().contains("suzuki@"),
        "{out:#}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn copied_people_get_a_copy_without_the_answer_link_and_cannot_answer() {
    let port = free_port();
    let scratch = tempfile::tempdir().unwrap();
    let (http, _, _) = http_config(port, scratch.path());
    let s = setup("10m", "cc = \"PMO担当 <pmo-staff@example.go.jp>\"", &http).await;
    let maildir = s.project.path().join("maildir");
    let _d = Daemon::start(s.project.path(), "d", &[]);
    let (code, out, err) = cli(s.project.path(), &["trigger", "status"]);
    assert_eq!(code, 0, "{err}");
    let run_id = out.trim().to_string();
    let mails = wait_mail(&maildir, 4);
    let (copies, own): (Vec<&Json>, Vec<&Json>) = mails.iter().partition(|m| is_copy(m));
    assert_eq!((own.len(), copies.len()), (2, 2), "{mails:#?}");
    for m in &own {
        // The addressee's mail goes to the addressee alone; its Cc header shows who is copied.
        assert_eq!(m["cc"][0], "PMO担当 <pmo-staff@example.go.jp>");
        assert!(
            !m["rcpt_to"].as_str().unwrap().contains("pmo-staff"),
            "{m:#}"
        );
        assert!(m["body"].as_str().unwrap().contains("/answer/"));
    }
    let yamada = mail_to(&mails, "yamada@");
    let token = reply_address(yamada)
        .strip_prefix("pmo+")
        .unwrap()
        .strip_suffix("@example.go.jp")
        .unwrap()
        .to_string();
    let copy = copies
        .iter()
        .find(|m| to_addr(m).contains("yamada@"))
        .expect("the copy of yamada's request");
    assert_eq!(copy["rcpt_to"], "pmo-staff@example.go.jp");
    assert_eq!(copy["subject"], yamada["subject"]);
    assert!(copy["reply_to"].is_null(), "{copy:#}");
    let body = copy["body"].as_str().unwrap();
    assert!(
        body.starts_with("（本メールは山田 太郎 様へのご依頼の写しです）"),
        "{body}"
    );
    assert!(
        body.contains("本メールは写しのため、回答用のリンクは記載していません"),
        "{body}"
    );
    assert!(
        !body.contains("/answer/") && !body.contains(&token),
        "{body}"
    );
    let raw: String = std::fs::read_dir(maildir.join("new"))
        .unwrap()
        .map(|e| std::fs::read_to_string(e.unwrap().path()).unwrap())
        .filter(|t| t.contains("pmoflow.cc."))
        .collect();
    assert!(!raw.contains(&token), "the token is nowhere in the copies");

    // Replying to the copy answers nothing: no token, a Message-ID of no request, and the
    // subject tag matches only the addressee and delegates.
    let reply = gmail_reply(
        "pmo-staff@example.go.jp",
        "pmo@example.go.jp",
        copy,
        "総合評価: 良好",
        "",
    );
    let out = deliver(s.project.path(), &reply);
    assert!(out.contains("unmatched (quarantined)"), "{out}");
    let store = Store::open(&s.db.url, Durability::Process).await.unwrap();
    let rows = store.requests_for_step(&run_id, "ask[0]").await.unwrap();
    assert_eq!(rows[0].status, "open");
    assert!(
        store
            .answers_for(&[rows[0].token.clone()])
            .await
            .unwrap()
            .is_empty()
    );
}

pub(crate) fn http_config(port: u16, dir: &Path) -> (String, String, String) {
    let (operator, op_entry) = pmoflow_tests::new_api_token(dir, "mta", "operator");
    let (viewer, viewer_entry) = pmoflow_tests::new_api_token(dir, "monitor", "viewer");
    (
        format!(
            "[http]\nlisten = \"127.0.0.1:{port}\"\npublic_url = \"http://127.0.0.1:{port}\"\n\n{op_entry}\n{viewer_entry}\n"
        ),
        operator,
        viewer,
    )
}

#[tokio::test(flavor = "multi_thread")]
async fn answer_links_open_a_form_that_records_the_answer_once() {
    let port = free_port();
    let scratch = tempfile::tempdir().unwrap();
    let (http, operator, viewer) = http_config(port, scratch.path());
    let s = setup("10m", "", &http).await;
    let maildir = s.project.path().join("maildir");
    let d = Daemon::start(s.project.path(), "d", &[]);
    d.wait_log("http listening", STARTUP);
    let (code, out, err) = cli(s.project.path(), &["trigger", "status"]);
    assert_eq!(code, 0, "{err}");
    let run_id = out.trim().to_string();
    let mails = wait_mail(&maildir, 2);
    let yamada = mail_to(&mails, "yamada@");
    let url = url_in(yamada["body"].as_str().unwrap(), "/answer/");
    assert!(
        url.starts_with(&format!("http://127.0.0.1:{port}/answer/")),
        "{url}"
    );
    let web = reqwest::Client::new();

    // GET shows the form (and changes nothing), with the security headers.
    let res = web.get(&url).expect(200).await;
    let h = res.headers().clone();
    let csp = h["content-security-policy"].to_str().unwrap();
    assert!(
        csp.contains("frame-ancestors 'none'") && !csp.contains("script-src"),
        "{csp}"
    );
    assert_eq!(h["x-content-type-options"], "nosniff");
    assert_eq!(h["referrer-policy"], "no-referrer");
    let html = res.text().await.unwrap();
    assert!(html.contains("総合評価") && html.contains("必須"), "{html}");
    let first_nonce = nonce_in(&html);
    // A request without a 様式 has none to download.
    web.get(format!("{url}/form")).expect(404).await;
    // An upload over the message size limit (10 MiB by default): 413 and a page saying so.
    let mut body = format!(
        "--b\r\nContent-Disposition: form-data; name=\"nonce\"\r\n\r\n{first_nonce}\r\n\
         --b\r\nContent-Disposition: form-data; name=\"workbook\"; filename=\"big.xlsx\"\r\n\
         Content-Type: application/octet-stream\r\n\r\n"
    )
    .into_bytes();
    body.extend(std::iter::repeat_n(b'x', 11 << 20));
    body.extend(b"\r\n--b--\r\n");
    let res = web
        .post(&url)
        .header("content-type", "multipart/form-data; boundary=b")
        .body(body)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 413);
    let page = res.text().await.unwrap();
    assert!(
        page.contains("ファイルが大きすぎます") && page.contains("10 MiB"),
        "{page}"
    );
    // A required field left empty: 422 and the form again, with the reason.
    let res = web
        .post(&url)
        .form(&[("nonce", nonce_in(&html).as_str()), ("field:進捗", "80%")])
        .expect(422)
        .await;
    let html = res.text().await.unwrap();
    assert!(html.contains("「総合評価」は必須項目です"), "{html}");
    let nonce = nonce_in(&html);
    let answer = [
        ("nonce", nonce.as_str()),
        ("field:総合評価", "良好"),
        ("field:進捗", "８０％"),
        ("text", "順調です"),
    ];
    let res = web.post(&url).form(&answer).expect(200).await;
    assert!(res.text().await.unwrap().contains("回答を受け付けました"));
    // The same submission again (a replay): refused.
    web.post(&url).form(&answer).expect(409).await;
    // A tampered nonce, a forged token, garbage: refused and logged.
    let mut bad = nonce.clone();
    bad.pop();
    bad.push(if nonce.ends_with('0') { '1' } else { '0' });
    web.post(&url)
        .form(&[("nonce", bad.as_str()), ("field:総合評価", "要対応")])
        .expect(403)
        .await;
    let token = url.rsplit('/').next().unwrap();
    let mut forged = token.to_string().into_bytes();
    forged[25] = if forged[25] == b'a' { b'b' } else { b'a' };
    let forged = String::from_utf8(forged).unwrap();
    let base = format!("http://127.0.0.1:{port}");
    for path in [
        format!("/answer/{forged}"),
        "/answer/../../etc/passwd".into(),
        "/answer/x".into(),
    ] {
        let res = web.get(format!("{base}{path}")).send().await.unwrap();
        assert_eq!(res.status(), 404, "{path}");
    }
    assert!(d.log_text().contains("unknown or forged token refused"));
    assert!(d.log_text().contains("replayed answer form refused"));

    // Suzuki's reply delivered by an MTA over HTTP: bearer token with the operator role.
    let suzuki = mail_to(&mails, "suzuki@");
    let raw = gmail_reply(
        "suzuki@pjmo-b.example.go.jp",
        &reply_address(suzuki),
        suzuki,
        "総合評価: 注意",
        "",
    );
    let inbound = format!("{base}/inbound/email");
    let res = web.post(&inbound).body(raw.clone()).expect(401).await;
    assert!(res.headers().contains_key("www-authenticate"));
    web.post(&inbound)
        .bearer_auth("pmo_not_a_token")
        .body(raw.clone())
        .expect(401)
        .await;
    web.post(&inbound)
        .bearer_auth(&viewer)
        .body(raw.clone())
        .expect(403)
        .await;
    let res = web
        .post(&inbound)
        .bearer_auth(&operator)
        .body(raw.clone())
        .expect(202)
        .await;
    let body: Json = res.json().await.unwrap();
    assert_eq!(body["outcome"], "answer", "{body}");
    let res = web
        .post(&inbound)
        .bearer_auth(&operator)
        .body(raw)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200, "the same message again is a duplicate");

    let store = Store::open(&s.db.url, Durability::Process).await.unwrap();
    expect_done(&store, &run_id, RunStatus::Succeeded).await;
    let out = step_output(&store, &run_id, "ask").await;
    assert_eq!(out[0]["via"], "web", "{out:#}");
    assert_eq!(out[0]["fields"]["総合評価"], "良好");
    assert_eq!(out[0]["fields"]["進捗"], 80);
    assert_eq!(out[0]["text"], "順調です");
    assert_eq!(out[0]["history"].as_array().unwrap().len(), 1, "{out:#}");
    assert_eq!(out[1]["via"], "email");
    // The step has finished: the link says the request is closed, and a submission with a
    // valid, unused nonce is refused (it could no longer count); the replay is still a replay.
    let res = web.get(&url).expect(410).await;
    assert!(res.text().await.unwrap().contains("受付終了"));
    web.post(&url)
        .form(&[
            ("nonce", first_nonce.as_str()),
            ("field:総合評価", "要対応"),
        ])
        .expect(410)
        .await;
    web.post(&url).form(&answer).expect(409).await;
    let out = step_output(&store, &run_id, "ask").await;
    assert_eq!(out[0]["fields"]["総合評価"], "良好", "{out:#}");
    assert_eq!(out[0]["history"].as_array().unwrap().len(), 1, "{out:#}");
}

const INCIDENT: &str = include_str!("../fixtures/flows/requests_incident.toml");

#[tokio::test(flavor = "multi_thread")]
async fn acknowledgements_by_reply_link_and_api() {
    let port = free_port();
    let scratch = tempfile::tempdir().unwrap();
    let (http, operator, viewer) = http_config(port, scratch.path());
    let s = setup("10m", "", &http).await;
    s.project.workflow("incident.toml", INCIDENT);
    let maildir = s.project.path().join("maildir");
    let d = Daemon::start(s.project.path(), "d", &[]);
    d.wait_log("http listening", STARTUP);
    let store = Store::open(&s.db.url, Durability::Process).await.unwrap();
    let web = reqwest::Client::new();
    let base = format!("http://127.0.0.1:{port}");

    // 1. Acknowledged by a reply saying 了解.
    let (code, out, err) = cli(s.project.path(), &["trigger", "incident"]);
    assert_eq!(code, 0, "{err}");
    let run1 = out.trim().to_string();
    let mails = wait_mail(&maildir, 2);
    let page1 = mails
        .iter()
        .find(|m| to_addr(m).contains("oncall1@"))
        .unwrap();
    let body = page1["body"].as_str().unwrap();
    assert!(body.contains("「了解」"), "{body}");
    let not_ack = gmail_reply(
        "oncall1@example.go.jp",
        &reply_address(page1),
        page1,
        "詳細を教えてください。",
        "",
    );
    let out = deliver(s.project.path(), &not_ack);
    assert!(out.contains("not_an_ack"), "{out}");
    let ack = gmail_reply(
        "oncall1@example.go.jp",
        &reply_address(page1),
        page1,
        "了解しました。対応します。",
        "",
    );
    let out = deliver(s.project.path(), &ack);
    assert!(out.contains("answer (done)"), "{out}");
    expect_done(&store, &run1, RunStatus::Succeeded).await;
    let out = step_output(&store, &run1, "page").await;
    assert_eq!(out[0]["status"], "acknowledged", "{out:#}");
    assert_eq!(out[0]["status_ja"], "確認済");
    assert_eq!(out[1]["status"], "unacknowledged");

    // 2. The link: GET shows a button and acknowledges nothing; the API acknowledges.
    let (code, out, err) = cli(s.project.path(), &["trigger", "incident"]);
    assert_eq!(code, 0, "{err}");
    let run2 = out.trim().to_string();
    let mails = wait_mail(&maildir, 4);
    let rows = store.requests_for_step(&run2, "page").await.unwrap();
    let link = |who: &str| {
        let row = rows.iter().find(|r| r.recipient.starts_with(who)).unwrap();
        let url = format!("{base}/ack/{}", row.token);
        assert!(
            mails
                .iter()
                .any(|m| to_addr(m).contains(who) && m["body"].as_str().unwrap().contains(&url)),
            "the mail to {who} carries {url}"
        );
        url
    };
    let (link1, link2) = (link("oncall1@"), link("oncall2@"));
    let res = web.get(&link1).expect(200).await;
    let html = res.text().await.unwrap();
    assert!(html.contains("確認しました"), "{html}");
    let nonce1 = nonce_in(&html);
    assert_eq!(
        store
            .requests_for_step(&run2, "page")
            .await
            .unwrap()
            .iter()
            .filter(|r| r.status == "open")
            .count(),
        2,
        "opening the link acknowledged nothing"
    );
    let acks = format!("{base}/api/acks");
    let token2 = link2.rsplit('/').next().unwrap().to_string();
    let body = serde_json::json!({ "token": token2, "by": "佐藤（当番）" });
    web.post(&acks).json(&body).expect(401).await;
    web.post(&acks)
        .bearer_auth(&viewer)
        .json(&body)
        .expect(403)
        .await;
    web.post(&acks)
        .bearer_auth(&operator)
        .json(&serde_json::json!({ "token": "aaaaaaaaaaaaaaaaaaaaaaaaaa" }))
        .expect(404)
        .await;
    let res = web
        .post(&acks)
        .bearer_auth(&operator)
        .body("not json")
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 415, "a body without a JSON content type");
    web.post(&acks)
        .bearer_auth(&operator)
        .header("content-type", "application/json")
        .body("not json")
        .expect(400)
        .await;
    web.post(&acks)
        .bearer_auth(&operator)
        .json(&body)
        .expect(201)
        .await;
    let res = web
        .post(&acks)
        .bearer_auth(&operator)
        .json(&body)
        .expect(200)
        .await;
    let again: Json = res.json().await.unwrap();
    assert_eq!(again["status"], "already_acknowledged");
    expect_done(&store, &run2, RunStatus::Succeeded).await;
    let out = step_output(&store, &run2, "page").await;
    assert_eq!(out[1]["status"], "acknowledged", "{out:#}");
    assert_eq!(out[1]["via"], "api");
    assert_eq!(out[1]["from"], "佐藤（当番）");
    // The chain is over: oncall1's link no longer acknowledges.
    web.post(&link1)
        .form(&[("nonce", nonce1.as_str())])
        .expect(410)
        .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn delegates_may_answer_and_expired_tokens_are_refused_by_mail_and_by_link() {
    let port = free_port();
    let s = setup(
        "8s",
        "delegates = [\"deputy@pjmo-a.example.go.jp\"]",
        &format!(
            "token_ttl = \"1s\"\n[http]\nlisten = \"127.0.0.1:{port}\"\npublic_url = \"http://127.0.0.1:{port}\"\n"
        ),
    )
    .await;
    let maildir = s.project.path().join("maildir");
    let d = Daemon::start(s.project.path(), "d", &[]);
    d.wait_log("http listening", STARTUP);
    let (code, out, err) = cli(s.project.path(), &["trigger", "status"]);
    assert_eq!(code, 0, "{err}");
    let run_id = out.trim().to_string();
    let mails = wait_mail(&maildir, 2);
    let yamada = mail_to(&mails, "yamada@");
    // Yamada's deputy answers for him.
    let by_deputy = gmail_reply(
        "deputy@pjmo-a.example.go.jp",
        &reply_address(yamada),
        yamada,
        "総合評価: 良好",
        "",
    );
    let out = deliver(s.project.path(), &by_deputy);
    assert!(out.contains("answer (done)"), "{out}");
    let store = Store::open(&s.db.url, Durability::Process).await.unwrap();
    wait_done(&store, &run_id).await;
    let out = step_output(&store, &run_id, "ask").await;
    assert_eq!(out[0]["status"], "answered");
    assert_eq!(out[0]["from"], "deputy@pjmo-a.example.go.jp");
    assert_eq!(out[1]["status"], "unanswered");
    // A second past the close, Suzuki's token has expired: his reply and his link are refused.
    // pace: the token's expiry is a time, not an event.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let suzuki = mail_to(&mails, "suzuki@");
    let late = gmail_reply(
        "suzuki@pjmo-b.example.go.jp",
        &reply_address(suzuki),
        suzuki,
        "総合評価: 注意",
        "",
    );
    let out = deliver(s.project.path(), &late);
    assert!(out.contains("expired (quarantined)"), "{out}");
    let url = url_in(suzuki["body"].as_str().unwrap(), "/answer/");
    let res = reqwest::get(&url).await.unwrap();
    assert_eq!(res.status(), 410);
    assert!(res.text().await.unwrap().contains("有効期限"));
    assert!(d.log_text().contains("link with an expired token refused"));
    let rows = store.requests_for_step(&run_id, "ask[1]").await.unwrap();
    assert!(
        store
            .answers_for(&[rows[0].token.clone()])
            .await
            .unwrap()
            .is_empty()
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn imap_over_starttls_and_implicit_tls_with_a_ministry_ca() {
    let (ca, cert, key) = pmoflow_tests::test_ca_and_server_cert();
    let imap = Dovecot::start_tls(&cert, &key);
    let dir = tempfile::tempdir().unwrap();
    let ca_file = dir.path().join("ca.pem");
    std::fs::write(&ca_file, ca).unwrap();
    let db = TestDb::new(Backend::Sqlite).await;
    let store = Store::open(&db.url, Durability::Process).await.unwrap();
    let clock: pmoflow::clock::SharedClock = std::sync::Arc::new(pmoflow::clock::SystemClock);
    let max = pmoflow::inbound::DEFAULT_MAX_SIZE;
    let base = imap.imap_config();
    // (Dovecot allows plain logins from loopback even with `ssl = required`, so only the TLS
    // paths are asserted here.)
    for (tls, port) in [
        (pmoflow::inbound::imap::ImapTls::Starttls, imap.port),
        (pmoflow::inbound::imap::ImapTls::Tls, imap.imaps_port),
    ] {
        // Without the CA the server's certificate is refused.
        let cfg = pmoflow::inbound::imap::ImapConfig {
            tls,
            port,
            ..base.clone()
        };
        let err = pmoflow::inbound::imap::poll_once(&cfg, &store, &clock, &Default::default(), max)
            .await
            .unwrap_err();
        assert!(
            err.to_string().to_lowercase().contains("certificate"),
            "{err}"
        );
        // With it: logged in over TLS, mailbox registered.
        let cfg = pmoflow::inbound::imap::ImapConfig {
            ca_file: Some(ca_file.clone()),
            ..cfg
        };
        pmoflow::inbound::imap::poll_once(&cfg, &store, &clock, &Default::default(), max)
            .await
            .unwrap_or_else(|e| panic!("{tls:?}: {e}"));
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn late_answers_and_attachments_are_recorded() {
    let s = setup("2s", "wait_after_deadline = \"1m\"", "").await;
    let maildir = s.project.path().join("maildir");
    let _d = Daemon::start(s.project.path(), "d", &[]);
    let (code, out, err) = cli(s.project.path(), &["trigger", "status"]);
    assert_eq!(code, 0, "{err}");
    let run_id = out.trim().to_string();
    let mails = wait_mail(&maildir, 2);
    let yamada = mail_to(&mails, "yamada@");
    let suzuki = mail_to(&mails, "suzuki@");
    // Yamada answers on time, with a spreadsheet attached.
    let csv = "項目,値\r\n進捗,90\r\n".as_bytes();
    let raw = format!(
        "From: yamada@pjmo-a.example.go.jp\r\nTo: {}\r\nSubject: Re: x\r\nMessage-ID: <att-{run_id}@x>\r\nMIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary=\"b1\"\r\n\r\n--b1\r\nContent-Type: text/plain; charset=UTF-8\r\n\r\n総合評価: 良好\r\n--b1\r\nContent-Type: text/csv; name=\"report.csv\"\r\nContent-Disposition: attachment; filename=\"report.csv\"\r\nContent-Transfer-Encoding: base64\r\n\r\n{}\r\n--b1--\r\n",
        reply_address(yamada),
        base64(csv)
    );
    let out = deliver(s.project.path(), &raw);
    assert!(out.contains("answer (done)"), "{out}");
    // Suzuki answers after the deadline, while the step still waits.
    // pace: past the deadline (a time, not an event).
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let late = gmail_reply(
        "suzuki@pjmo-b.example.go.jp",
        &reply_address(suzuki),
        suzuki,
        "総合評価: 注意",
        "",
    );
    let out = deliver(s.project.path(), &late);
    assert!(out.contains("answer (done)"), "{out}");
    let store = Store::open(&s.db.url, Durability::Process).await.unwrap();
    expect_done(&store, &run_id, RunStatus::Succeeded).await;
    let out = step_output(&store, &run_id, "ask").await;
    assert_eq!(out[0]["status"], "answered", "{out:#}");
    let att = &out[0]["attachments"][0];
    assert_eq!(att["name"], "report.csv", "{out:#}");
    assert_eq!(att["size"], csv.len());
    assert_eq!(att["content_type"], "text/csv");
    assert_eq!(att["sha256"].as_str().unwrap().len(), 64);
    assert!(
        att.get("content_base64").is_none(),
        "the bytes stay out of the step output"
    );
    assert_eq!(out[1]["status"], "late", "{out:#}");
    assert_eq!(out[1]["status_ja"], "遅延回答");
    assert_eq!(out[1]["history"][0]["late"], true);
}

#[tokio::test(flavor = "multi_thread")]
async fn on_timeout_fail_fails_the_step_naming_who_did_not_answer() {
    let s = setup("1s", "on_timeout = \"fail\"", "").await;
    let _d = Daemon::start(s.project.path(), "d", &[]);
    let (code, out, err) = cli(s.project.path(), &["trigger", "status"]);
    assert_eq!(code, 0, "{err}");
    let run_id = out.trim().to_string();
    let store = Store::open(&s.db.url, Durability::Process).await.unwrap();
    let run = expect_done(&store, &run_id, RunStatus::Failed).await;
    let error = run.error.unwrap_or_default();
    assert!(
        error.contains("未回答")
            && (error.contains("yamada@pjmo-a.example.go.jp")
                || error.contains("suzuki@pjmo-b.example.go.jp")),
        "{error}"
    );
    // Nobody can answer a closed request any more.
    let rows = store.requests_for_step(&run_id, "ask[0]").await.unwrap();
    assert_eq!(rows[0].status, "closed");
}
