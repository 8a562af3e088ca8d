//! The shipped workflows (`workflows/` of this repository, copied as they are) on the real
//! daemon, with a real SMTP server (aiosmtpd), a real IMAP server (Dovecot), the HTTP listener,
//! and a short time scale given through each workflow's inputs.

use std::path::{Path, PathBuf};
use std::time::Duration;

use pmoflow::store::{Durability, RunStatus, Store};
use pmoflow_tests::Call;
use pmoflow_tests::mail::{answer_link, answer_on_page, is_copy, reply, reply_with_file};
use pmoflow_tests::wait_done;
use pmoflow_tests::{
    Backend, Daemon, Dovecot, Project, STARTUP, SmtpSink, TestDb, WebhookServer, cli, decode_mail,
    free_port, new_api_token, save_attachment, wait, workbooks_py,
};
use serde_json::{Value as Json, json};

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        let target = to.join(e.file_name());
        if e.file_type().unwrap().is_dir() {
            copy_dir(&e.path(), &target);
        } else {
            std::fs::copy(e.path(), &target).unwrap();
        }
    }
}

struct Setup {
    project: Project,
    db: TestDb,
    imap: Dovecot,
    http_port: u16,
    operator: String,
    _smtp: SmtpSink,
}

async fn setup() -> Setup {
    setup_with("").await
}

async fn setup_with(extra_config: &str) -> Setup {
    let db = TestDb::new(Backend::Sqlite).await;
    let project = Project::new();
    copy_dir(&repo().join("workflows"), &project.workflows());
    let smtp_port = free_port();
    let http_port = free_port();
    let imap = Dovecot::start();
    let (operator, entry) = new_api_token(project.path(), "ops", "operator");
    project.config(&format!(
        "database_url = \"{}\"\nplugins_dir = \"{}\"\n[engine]\npoll_interval = \"100ms\"\n\
         [mail]\nfrom = \"PMO事務局 <pmo@example.go.jp>\"\n\
         [smtp]\nhost = \"127.0.0.1\"\nport = {smtp_port}\ntls = \"none\"\n\
         [outbox]\npoll_interval = \"200ms\"\n\
         [replies]\naddress = \"pmo+{{token}}@example.go.jp\"\nnotify = \"pmo-desk@example.go.jp\"\n\
         {}\n[http]\nlisten = \"127.0.0.1:{http_port}\"\npublic_url = \"http://127.0.0.1:{http_port}\"\n\n{entry}\n{extra_config}\n",
        db.url,
        repo().join("plugins").display(),
        imap.config("poll_interval = \"1s\""),
    ));
    let smtp = SmtpSink::start(smtp_port, &project.path().join("maildir"));
    Setup {
        project,
        db,
        imap,
        http_port,
        operator,
        _smtp: smtp,
    }
}

fn start(s: &Setup, name: &str) -> Daemon {
    let d = Daemon::start(
        s.project.path(),
        name,
        &[("PMOFLOW_IMAP_PASSWORD", s.imap.password.as_str())],
    );
    d.wait_log("http listening", STARTUP);
    d.wait_log("imap connected", STARTUP);
    d
}

fn mails(s: &Setup) -> Vec<Json> {
    let dir = s.project.path().join("maildir");
    if dir.exists() {
        decode_mail(&dir)
    } else {
        Vec::new()
    }
}

/// Waits until `pred` holds for the mails received so far.
fn wait_mails(
    s: &Setup,
    what: &str,
    timeout: Duration,
    pred: impl Fn(&[Json]) -> bool,
) -> Vec<Json> {
    wait::until_blocking(what, timeout, || {
        let m = mails(s);
        if pred(&m) {
            return Ok(m);
        }
        Err(m
            .iter()
            .map(|x| (x["to"].clone(), x["subject"].clone()))
            .collect::<Vec<_>>())
    })
}

/// The mails whose subject has `part`, copies for the people in cc left out (they have the
/// addressee's headers: `copies_of` finds them).
fn with_subject<'a>(mails: &'a [Json], part: &str) -> Vec<&'a Json> {
    mails
        .iter()
        .filter(|m| m["subject"].as_str().unwrap_or("").contains(part) && !is_copy(m))
        .collect()
}

/// The copies, for the people in cc, of the mails whose subject has `part`.
fn copies_of<'a>(mails: &'a [Json], part: &str) -> Vec<&'a Json> {
    mails
        .iter()
        .filter(|m| m["subject"].as_str().unwrap_or("").contains(part) && is_copy(m))
        .collect()
}

fn to(m: &Json) -> String {
    m["to"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a.as_str().unwrap())
        .collect::<Vec<_>>()
        .join(",")
}

fn addressed<'a>(list: &[&'a Json], who: &str) -> Vec<&'a Json> {
    list.iter()
        .copied()
        .filter(|m| to(m).contains(who))
        .collect()
}

fn rfc3339_in(secs: i64) -> String {
    (chrono::Utc::now() + chrono::Duration::seconds(secs))
        .with_timezone(&chrono_tz::Asia::Tokyo)
        .to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
}

#[tokio::test(flavor = "multi_thread")]
async fn pjmo_status_collection_end_to_end() {
    let s = setup().await;
    let d = start(&s, "d");
    d.wait_log("mailbox registered", STARTUP);
    // The real schedule asks on business day 1 and closes on business day 8; here the same
    // workflow runs on a 50-second scale through its inputs.
    let inputs = json!({
        "deadline": rfc3339_in(40),
        "remind": "-20s",
        "resend": "+2s",
        "close_after": "6s",
        "summary_at": rfc3339_in(50),
    });
    let (code, out, err) = cli(
        s.project.path(),
        &[
            "trigger",
            "pjmo-status-collection",
            "--input",
            &inputs.to_string(),
        ],
    );
    assert_eq!(code, 0, "{err}");
    let run_id = out.trim().to_string();
    let m = wait_mails(&s, "four requests", Duration::from_secs(30), |m| {
        with_subject(m, "【要回答】").len() == 4
    });
    let asks = with_subject(&m, "【要回答】");
    let ask = |who: &str| *addressed(&asks, who).first().unwrap();
    let body = ask("sato@")
        .get("body")
        .unwrap()
        .as_str()
        .unwrap()
        .to_string();
    assert!(body.contains("佐藤 花子 様"), "{body}");
    // Each line says what the field takes.
    for line in [
        "総合評価（良好／注意／要対応）: ",
        "見込額（万円・0以上）: ",
        "遅延日数（日・0以上）: ",
    ] {
        assert!(
            body.contains(&format!("{line}\n")) || body.contains(&format!("{line}\r\n")),
            "{line} in {body}"
        );
    }
    // Two answer by mail (through IMAP), one through the web form; 森 never answers.
    let n = s.imap.append_raw(
        "INBOX",
        &[
            reply(
                "佐藤 花子 <sato@pjmo-a.example.go.jp>",
                ask("sato@"),
                "総合評価（良好／注意／要対応）：良好\n予算額：12,000\n見込額：１億1,800万円\n遅延日数：０\n\nよろしくお願いします。",
            ),
            reply(
                "suzuki@pjmo-b.example.go.jp",
                ask("suzuki@"),
                "総合評価: 【要対応】\n予算額: 8,000\n見込額: 8,500万円\n遅延日数: 35\n支援要望: ベンダー調整への同席",
            ),
        ],
    );
    assert_eq!(n, 2);
    let (status, _) = answer_on_page(
        &answer_link(ask("watanabe@")),
        &[
            ("field:総合評価", "注意"),
            ("field:予算額", "4,500"),
            ("field:見込額", "5,400"),
            ("field:遅延日数", "5"),
        ],
    )
    .await;
    assert_eq!(status, 200);

    let store = Store::open(&s.db.url, Durability::Process).await.unwrap();
    d.expect_done(&store, &run_id, RunStatus::Succeeded).await;
    let m = wait_mails(&s, "the summary", Duration::from_secs(20), |m| {
        !with_subject(m, "ポートフォリオ概況").is_empty()
    });
    // The reminder and the 再送 reach only 森; the 再送 copies the project owner.
    let reminders = with_subject(&m, "【リマインド】");
    assert_eq!(reminders.len(), 1, "{reminders:#?}");
    assert!(to(reminders[0]).contains("mori@pjmo-d.example.go.jp"));
    let resends = with_subject(&m, "【再送・要回答】");
    assert_eq!(resends.len(), 1);
    assert!(to(resends[0]).contains("mori@"));
    assert!(
        resends[0]["cc"][0]
            .as_str()
            .unwrap()
            .contains("shimizu@example.go.jp")
    );
    // The owner's copy is a message of its own, without the answer link.
    let copies = copies_of(&m, "【再送・要回答】");
    assert_eq!(copies.len(), 1, "{copies:#?}");
    assert_eq!(copies[0]["rcpt_to"], "shimizu@example.go.jp");
    assert!(!copies[0]["body"].as_str().unwrap().contains("/answer/"));
    // He is escalated to the PMO head.
    let esc = with_subject(&m, "未回答のプロジェクト");
    assert_eq!(esc.len(), 1);
    assert!(to(esc[0]).contains("nakamura@pmo.example.go.jp"));
    assert!(
        esc[0]["body"]
            .as_str()
            .unwrap()
            .contains("P04 職員ポータル改修")
    );
    // Support cases: 要対応 and 35 days late (P02), the 20% overrun (P03).
    let cases = with_subject(&m, "PJMO支援案件の起票");
    let subjects: Vec<&str> = cases
        .iter()
        .map(|c| c["subject"].as_str().unwrap())
        .collect();
    assert_eq!(cases.len(), 2, "{subjects:?}");
    assert!(
        subjects.iter().any(|x| x.contains("P02")) && subjects.iter().any(|x| x.contains("P03"))
    );
    // The summary, with a correct CSV.
    let summary = with_subject(&m, "ポートフォリオ概況");
    assert_eq!(summary.len(), 1);
    assert!(to(summary[0]).contains("nakamura@"));
    assert!(
        summary[0]["subject"]
            .as_str()
            .unwrap()
            .contains("回答 3/4件、要対応 1件")
    );
    let names = summary[0]["attachments"].as_array().unwrap();
    let i = names
        .iter()
        .position(|n| n.as_str().is_some_and(|n| n.ends_with(".csv")))
        .unwrap_or_else(|| panic!("no CSV attached: {:#}", summary[0]));
    let csv = summary[0]["attachment_texts"][i]
        .as_str()
        .unwrap()
        .trim_start_matches('\u{feff}')
        .to_string();
    let rows: Vec<&str> = csv.lines().collect();
    assert_eq!(rows.len(), 5, "{csv}");
    assert_eq!(
        rows[1],
        "P01,電子申請システム刷新,佐藤 花子,回答済,良好,120000000,118000000,-1.7,0,"
    );
    assert_eq!(
        rows[2],
        "P02,統計データ基盤構築,鈴木 次郎,回答済,要対応,80000000,85000000,6.3,35,総合評価が要対応・35日遅延"
    );
    assert_eq!(
        rows[3],
        "P03,文書管理システム運用,渡辺 涼,回答済,注意,45000000,54000000,20,5,経費超過 20%"
    );
    assert_eq!(
        rows[4],
        "P04,職員ポータル改修,森 拓也,未回答,未回答,30000000,,,0,"
    );
    // The portfolio kept this month's typed answers, and 未回答 for 森.
    let month = chrono::Utc::now()
        .with_timezone(&chrono_tz::Asia::Tokyo)
        .format("%Y-%m")
        .to_string();
    let api: Json = reqwest::Client::new()
        .get(format!(
            "http://127.0.0.1:{}/api/portfolio?workflow=pjmo-status-collection",
            s.http_port
        ))
        .bearer_auth(&s.operator)
        .expect_json(200)
        .await;
    let got: Vec<(String, String, String, Json)> = api["entries"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            let values: serde_json::Map<String, Json> = e["values"]
                .as_object()
                .unwrap()
                .iter()
                .map(|(k, v)| (k.clone(), v["value"].clone()))
                .collect();
            (
                e["subject"].as_str().unwrap().to_string(),
                e["period"].as_str().unwrap().to_string(),
                e["status"].as_str().unwrap().to_string(),
                Json::Object(values),
            )
        })
        .collect();
    assert_eq!(
        got,
        vec![
            (
                "P01".into(),
                month.clone(),
                "answered".into(),
                json!({ "総合評価": "良好", "予算額": 12000, "見込額": 11800, "遅延日数": 0 })
            ),
            (
                "P02".into(),
                month.clone(),
                "answered".into(),
                json!({ "総合評価": "要対応", "予算額": 8000, "見込額": 8500, "遅延日数": 35, "支援要望": "ベンダー調整への同席" })
            ),
            (
                "P03".into(),
                month.clone(),
                "answered".into(),
                json!({ "総合評価": "注意", "予算額": 4500, "見込額": 5400, "遅延日数": 5 })
            ),
            ("P04".into(), month, "unanswered".into(), json!({})),
        ]
    );
    // The summary carries the portfolio workbook.
    assert!(
        names.iter().any(|n| n
            .as_str()
            .is_some_and(|n| n.starts_with("portfolio-history-"))),
        "{names:?}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn emergency_escalation_end_to_end_with_a_restart_mid_chain() {
    let s = setup().await;
    let hooks = WebhookServer::start(s.project.path(), 0, 200);
    let mut d = start(&s, "d");
    d.wait_log("mailbox registered", STARTUP);
    // A monitoring system opens the incident through the webhook trigger.
    let web = reqwest::Client::new();
    let base = format!("http://127.0.0.1:{}", s.http_port);
    let run_id = web
        .post(format!("{base}/hooks/emergency-escalation"))
        .bearer_auth(&s.operator)
        .json(&json!({
            "severity": "S2", "system": "電子申請システム", "summary": "応答なし",
            "first_wait": "6s", "second_wait": "6s", "third_wait": "6s", "repeat": 0,
            "webhook_url": format!("http://127.0.0.1:{}/teams", hooks.port),
        }))
        .run_id(202)
        .await;
    let m = wait_mails(&s, "the first level", Duration::from_secs(20), |m| {
        with_subject(m, "【緊急・第一報】").len() >= 3
    });
    let first = with_subject(&m, "【緊急・第一報】");
    assert_eq!(addressed(&first, "ito@").len(), 1);
    assert_eq!(addressed(&first, "yamamoto@").len(), 1);
    assert_eq!(
        addressed(&first, "contact@digital-agency").len(),
        1,
        "informed in parallel"
    );
    // The daemon dies in the middle of the first level's wait and comes back.
    d.kill9();
    let d = start(&s, "d2");
    // Nobody on the staff acknowledges: the PMO head is alerted once, and acknowledges by reply.
    let m = wait_mails(&s, "the second level", Duration::from_secs(30), |m| {
        !addressed(&with_subject(m, "【緊急・第一報】"), "nakamura@").is_empty()
    });
    let head = addressed(&with_subject(&m, "【緊急・第一報】"), "nakamura@")[0].clone();
    assert_eq!(
        s.imap.append_raw(
            "INBOX",
            &[reply(
                "nakamura@pmo.example.go.jp",
                &head,
                "了解しました。対応します。"
            )]
        ),
        1
    );
    // The acknowledgement stops the chain: CSIRT and the CISO are never alerted, even well after
    // the third level would have been due.
    let store = Store::open(&s.db.url, Durability::Process).await.unwrap();
    wait::until(
        "the acknowledgement to be recorded",
        Duration::from_secs(30),
        || async {
            let rows = store.list_requests(Some("answered"), 100).await.unwrap();
            if rows.iter().any(|r| r.run_id == run_id && r.kind == "ack") {
                Ok(())
            } else {
                Err(rows)
            }
        },
    )
    .await;
    // pace: a check that nothing more happens: well past when the third level would be due.
    tokio::time::sleep(Duration::from_secs(10)).await;
    let m = mails(&s);
    let alerts = with_subject(&m, "【緊急・第一報】");
    assert!(
        addressed(&alerts, "yoshida@").is_empty() && addressed(&alerts, "matsumoto@").is_empty(),
        "{alerts:#?}"
    );
    // Neither lost nor repeated across the restart: staff twice (ito, yamamoto), head once.
    assert_eq!(addressed(&alerts, "ito@").len(), 1);
    assert_eq!(addressed(&alerts, "nakamura@").len(), 1);
    // `pmoflow resolve` refuses a run without an open escalation, with the reason.
    let (code, _, err) = cli(s.project.path(), &["resolve", "no-such-run", "--note", "x"]);
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("has no open escalation"), "{err}");
    // Resolved through the API: the 最終報 to everyone alerted and informed.
    web.post(format!("{base}/api/runs/{run_id}/resolve"))
        .bearer_auth(&s.operator)
        .json(&json!({ "note": "再起動により復旧", "by": "伊藤" }))
        .expect(200)
        .await;
    let again = web
        .post(format!("{base}/api/runs/{run_id}/resolve"))
        .bearer_auth(&s.operator)
        .send()
        .await
        .unwrap();
    assert_eq!(again.status(), 409, "already resolved");
    d.expect_done(&store, &run_id, RunStatus::Succeeded).await;
    let m = wait_mails(&s, "the final report", Duration::from_secs(20), |m| {
        with_subject(m, "【最終報】").len() >= 4
    });
    let last = with_subject(&m, "【最終報】");
    let mut who: Vec<String> = last.iter().map(|x| to(x)).collect();
    who.sort();
    assert_eq!(who.len(), 4, "{who:?}");
    let body = last[0]["body"].as_str().unwrap();
    assert!(body.contains("nakamura@pmo.example.go.jp 様が"), "{body}");
    assert!(
        body.contains("（メール返信）") && body.contains("再起動により復旧"),
        "{body}"
    );
    let steps = store.get_steps(&run_id).await.unwrap();
    let out = steps
        .iter()
        .find(|x| x.step_key == "chain")
        .unwrap()
        .output
        .clone()
        .unwrap();
    assert_eq!(out["acknowledged"]["by"], "nakamura@pmo.example.go.jp");
    assert_eq!(out["acknowledged"]["via"], "email");
    assert_eq!(out["acknowledged"]["level"], 2);
    assert_eq!(out["resolved_by"], "伊藤");
    // The PMO channel got the first level and the final report.
    let posts = hooks.requests();
    // Each post is a Teams Workflows message with one Adaptive Card 1.4, titled in its first block.
    let titles: Vec<String> = posts
        .iter()
        .map(|p| {
            let post = serde_json::from_str::<Json>(p["body"].as_str().unwrap()).unwrap();
            assert_eq!(post["type"], "message", "{post:#}");
            let card = &post["attachments"][0];
            assert_eq!(
                card["contentType"],
                "application/vnd.microsoft.card.adaptive"
            );
            assert_eq!(card["content"]["version"], "1.4");
            card["content"]["body"][0]["text"]
                .as_str()
                .unwrap_or("")
                .to_string()
        })
        .collect();
    assert_eq!(
        titles
            .iter()
            .filter(|t| t.starts_with("【緊急・第一報】"))
            .count(),
        1,
        "{titles:?}"
    );
    assert_eq!(
        titles
            .iter()
            .filter(|t| t.starts_with("【最終報】"))
            .count(),
        1,
        "{titles:?}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn budget_request_cycle_end_to_end() {
    let s = setup().await;
    let d = start(&s, "d");
    d.wait_log("mailbox registered", STARTUP);
    // The April call with its end-of-May deadline, on a one-minute scale; the milestones of the
    // second half of the year are left out here (they are in the simulation test).
    let inputs = json!({
        "deadline": rfc3339_in(30),
        "remind": ["-20s", "-14s", "-8s"],
        "resend": "+2s",
        "close_after": "10s",
        "correction_deadline": rfc3339_in(90),
        "milestones": false,
    });
    let (code, out, err) = cli(
        s.project.path(),
        &[
            "trigger",
            "budget-request-cycle",
            "--input",
            &inputs.to_string(),
        ],
    );
    assert_eq!(code, 0, "{err}");
    let run_id = out.trim().to_string();
    let m = wait_mails(&s, "four calls", Duration::from_secs(30), |m| {
        with_subject(m, "【ご依頼】").len() == 4
    });
    let calls = with_subject(&m, "【ご依頼】");
    let call = |who: &str| (*addressed(&calls, who).first().unwrap()).clone();
    assert!(
        calls[0]["subject"]
            .as_str()
            .unwrap()
            .contains("概算要求に係る情報システム予算要求内容の提出について")
    );
    // 佐藤 submits everything; 鈴木 forgets 積算根拠 and KPI.
    s.imap.append_raw(
        "INBOX",
        &[
            reply(
                "sato@pjmo-a.example.go.jp",
                &call("sato@"),
                "システム名: 電子申請システム\n区分: 改修\n整備経費: 85,000千円\n運用等経費: 33,000千円\n積算根拠: 見積3社\nKPI: オンライン申請率 80%",
            ),
            reply(
                "suzuki@pjmo-b.example.go.jp",
                &call("suzuki@"),
                "区分：新規\n整備経費：60,000千円\n運用等経費：18,000千円",
            ),
        ],
    );
    // 渡辺 answers after the 再送 (late); 森 never does.
    let m = wait_mails(&s, "the 再送", Duration::from_secs(60), |m| {
        with_subject(m, "【再送・要回答】").len() == 2
    });
    let resends = with_subject(&m, "【再送・要回答】");
    assert!(addressed(&resends, "sato@").is_empty() && addressed(&resends, "suzuki@").is_empty());
    let watanabe = addressed(&resends, "watanabe@")[0];
    assert!(
        watanabe["cc"][0]
            .as_str()
            .unwrap()
            .contains("hayashi@example.go.jp")
    );
    s.imap.append_raw(
        "INBOX",
        &[reply(
            "watanabe@pjmo-c.example.go.jp",
            &call("watanabe@"),
            "区分: 運用\n整備経費: 0千円\n運用等経費: 45,000千円\n積算根拠: 現行契約\nKPI: 稼働率 99.9%",
        )],
    );
    // 鈴木 gets 【要修正】 and answers it.
    let m = wait_mails(&s, "the correction request", Duration::from_secs(60), |m| {
        !with_subject(m, "【要修正】").is_empty()
    });
    let fix = with_subject(&m, "【要修正】");
    assert_eq!(fix.len(), 1, "only the incomplete submission goes back");
    assert!(to(fix[0]).contains("suzuki@"));
    assert!(fix[0]["body"].as_str().unwrap().contains("積算根拠 KPI"));
    s.imap.append_raw(
        "INBOX",
        &[reply(
            "suzuki@pjmo-b.example.go.jp",
            fix[0],
            "区分: 新規\n整備経費: 60,000千円\n運用等経費: 18,000千円\n積算根拠: 見積2社\nKPI: 公開データセット数 300件",
        )],
    );
    let store = Store::open(&s.db.url, Durability::Process).await.unwrap();
    d.expect_done(&store, &run_id, RunStatus::Succeeded).await;
    let m = wait_mails(&s, "the gate report", Duration::from_secs(20), |m| {
        !with_subject(m, "一覧（PMOレビュー後）").is_empty()
    });
    // Reminders reached only those who had not submitted: three each for 渡辺 and 森.
    let reminders = with_subject(&m, "【リマインド】");
    assert_eq!(reminders.len(), 6, "{reminders:#?}");
    assert!(
        reminders
            .iter()
            .all(|r| to(r).contains("watanabe@") || to(r).contains("mori@"))
    );
    let late = with_subject(&m, "未提出");
    assert_eq!(late.len(), 1);
    assert!(to(late[0]).contains("nakamura@"));
    assert!(
        late[0]["body"]
            .as_str()
            .unwrap()
            .contains("P04 職員ポータル改修")
    );
    assert!(!late[0]["body"].as_str().unwrap().contains("P03"));
    let gate = with_subject(&m, "一覧（PMOレビュー後）")[0];
    assert!(to(gate).contains("kobayashi@example.go.jp"));
    let body = gate["body"].as_str().unwrap();
    assert!(
        body.contains(
            "P02 統計データ基盤構築: 回答済（修正依頼: 回答済） / 区分 新規 / 整備経費 60,000千円"
        ),
        "{body}"
    );
    assert!(
        body.contains("P03 文書管理システム運用: 遅延回答"),
        "{body}"
    );
    assert!(body.contains("P04 職員ポータル改修: 未回答"), "{body}");
}

#[tokio::test(flavor = "multi_thread")]
async fn quarterly_audit_end_to_end() {
    let s = setup().await;
    // This quarter's audit plan (the shipped one lists the systems by quarter; the test makes
    // two of them due now, whatever today's quarter is).
    let month = chrono::Utc::now()
        .with_timezone(&chrono_tz::Asia::Tokyo)
        .format("%m")
        .to_string();
    let q = match month.parse::<u32>().unwrap() {
        4..=6 => 1,
        7..=9 => 2,
        10..=12 => 3,
        _ => 4,
    };
    let plan = std::fs::read_to_string(s.project.workflows().join("data/audit.toml")).unwrap();
    let mut plan = plan;
    for n in 1..=4 {
        plan = plan.replace(&format!("quarter = {n}\n"), "quarter = 9\n");
    }
    for system in ["統計データ基盤", "文書管理システム"] {
        plan = plan.replace(
            &format!("system = \"{system}\"\nquarter = 9\n"),
            &format!("system = \"{system}\"\nquarter = {q}\n"),
        );
    }
    std::fs::write(s.project.workflows().join("data/audit.toml"), plan).unwrap();
    let d = start(&s, "d");
    d.wait_log("mailbox registered", STARTUP);
    let inputs =
        json!({ "deadline": rfc3339_in(30), "remind": ["-15s"], "report_at": rfc3339_in(40) });
    let (code, out, err) = cli(
        s.project.path(),
        &[
            "trigger",
            "quarterly-audit-reminder",
            "--input",
            &inputs.to_string(),
        ],
    );
    assert_eq!(code, 0, "{err}");
    let run_id = out.trim().to_string();
    // Two audit notices and two finding follow-ups go out together.
    let m = wait_mails(&s, "notices and follow-ups", Duration::from_secs(30), |m| {
        with_subject(m, "四半期システム監査の実施について").len() == 2
            && with_subject(m, "監査指摘事項").len() == 2
    });
    let notices = with_subject(&m, "四半期システム監査の実施について");
    assert!(notices.iter().all(|n| {
        n["subject"]
            .as_str()
            .unwrap()
            .contains(&format!("第{q}四半期"))
    }));
    let watanabe = addressed(&notices, "watanabe@")[0].clone();
    let followups = with_subject(&m, "監査指摘事項");
    let sato = addressed(&followups, "sato@")[0].clone();
    assert!(sato["subject"].as_str().unwrap().contains("F-2026-05"));
    // 渡辺 sends his evidence; 佐藤 reports his finding fixed; 鈴木 and the other finding do not answer.
    s.imap.append_raw(
        "INBOX",
        &[
            reply(
                "watanabe@pjmo-c.example.go.jp",
                &watanabe,
                "監査対応者: 渡辺\n提出資料: 手順書一式",
            ),
            reply(
                "sato@pjmo-a.example.go.jp",
                &sato,
                "改善状況: 完了\n対応内容: 保存期間を1年に変更",
            ),
        ],
    );
    let store = Store::open(&s.db.url, Durability::Process).await.unwrap();
    d.expect_done(&store, &run_id, RunStatus::Succeeded).await;
    let m = wait_mails(&s, "the quarter report", Duration::from_secs(20), |m| {
        !with_subject(m, "システム監査の実施状況").is_empty()
    });
    // The reminder went only to those who had not answered.
    let reminders = with_subject(&m, "【リマインド】");
    let mut who: Vec<String> = reminders.iter().map(|r| to(r)).collect();
    who.sort();
    assert_eq!(who.len(), 2, "{who:?}");
    assert!(
        who[0].contains("suzuki@") && who[1].contains("watanabe@"),
        "{who:?}"
    );
    assert!(
        reminders
            .iter()
            .any(|r| r["subject"].as_str().unwrap().contains("F-2026-03"))
    );
    let report = with_subject(&m, "システム監査の実施状況")[0];
    assert!(to(report).contains("nakamura@"));
    assert!(report["cc"][0].as_str().unwrap().contains("kobayashi@"));
    let body = report["body"].as_str().unwrap();
    assert!(
        body.contains("文書管理システム（バックアップ・事業継続）: 資料 回答済（対応者: 渡辺）"),
        "{body}"
    );
    assert!(
        body.contains("統計データ基盤（クラウドサービス利用（ISMAP））: 資料 未回答"),
        "{body}"
    );
    assert!(
        body.contains(
            "F-2026-05 電子申請システム「操作ログの保存期間が規程（1年）に満たない」: 完了"
        ),
        "{body}"
    );
    assert!(
        body.contains("F-2026-03 文書管理システム「管理者アカウントの棚卸しが未実施」: 未回答"),
        "{body}"
    );
}

/// A WHOIS server answering like JPRS for the given (name, expiry) pairs.
async fn jprs_whois(domains: Vec<(String, chrono::NaiveDate)>) -> u16 {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move {
        loop {
            let Ok((mut sock, _)) = listener.accept().await else {
                return;
            };
            let domains = domains.clone();
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
                let text = match domains.iter().find(|(n, _)| *n == query) {
                    Some((name, d)) if name.ends_with(".go.jp") => format!(
                        "[ JPRS データベース | JPRS DATABASE ]\r\na. [ドメイン名]                 {}\r\n[状態]                          Connected ({})\r\n",
                        name.to_uppercase(),
                        d.format("%Y/%m/%d")
                    ),
                    Some((name, d)) => format!(
                        "[ JPRS データベース | JPRS DATABASE ]\r\n[ドメイン名]                    {}\r\n[有効期限]                      {}\r\n[状態]                          Active\r\n",
                        name.to_uppercase(),
                        d.format("%Y/%m/%d")
                    ),
                    None => "No match!!\r\n".to_string(),
                };
                let _ = sock.write_all(text.as_bytes()).await;
            });
        }
    });
    port
}

#[tokio::test(flavor = "multi_thread")]
async fn domain_renewal_end_to_end() {
    let today = chrono::Utc::now()
        .with_timezone(&chrono_tz::Asia::Tokyo)
        .date_naive();
    let in_days = |n: i64| today + chrono::Duration::days(n);
    let whois = jprs_whois(vec![
        ("shinsei.example.go.jp".into(), in_days(30)),
        ("toukei-example.jp".into(), in_days(14)),
        ("event2025-example.jp".into(), in_days(45)),
        ("portal-example.jp".into(), in_days(30)),
    ])
    .await;
    let s = setup_with(&format!(
        "[plugins.domain-check]\ncapabilities = [\"http\", \"tls\", \"whois\"]\nallow_hosts = [\"127.0.0.1:{whois}\"]\ntimeout = \"30s\"\n"
    ))
    .await;
    let d = start(&s, "d");
    let inputs = json!({ "jp_whois": format!("127.0.0.1:{whois}"), "check_tls": false });
    let (code, out, err) = cli(
        s.project.path(),
        &[
            "trigger",
            "domain-renewal-check",
            "--input",
            &inputs.to_string(),
        ],
    );
    assert_eq!(code, 0, "{err}");
    let store = Store::open(&s.db.url, Durability::Process).await.unwrap();
    let run = wait_done(&store, out.trim()).await;
    assert_eq!(
        run.status,
        RunStatus::Succeeded,
        "{run:?}\n{}",
        d.log_text()
    );
    let m = wait_mails(&s, "the notices", Duration::from_secs(20), |m| {
        with_subject(m, "登録期限まで").len() == 3
            && !with_subject(m, "更新が確認できません").is_empty()
    });
    // Notices at 30 and 14 days to the owning PJMO (PMO staff in cc); none at 45 days.
    let notices = with_subject(&m, "登録期限まで");
    assert_eq!(addressed(&notices, "sato@").len(), 1);
    assert_eq!(addressed(&notices, "suzuki@").len(), 1);
    assert_eq!(addressed(&notices, "mori@").len(), 1);
    assert!(addressed(&notices, "watanabe@").is_empty());
    let suzuki = addressed(&notices, "suzuki@")[0];
    assert!(suzuki["subject"].as_str().unwrap().contains("残り14日"));
    assert!(
        suzuki["cc"]
            .as_array()
            .unwrap()
            .iter()
            .any(|c| c.as_str().unwrap().contains("ito@"))
    );
    // The 30-day escalation for the registration nobody confirmed; portal-example.jp's renewal
    // is under way (手続中) and is not escalated.
    let esc = with_subject(&m, "更新が確認できません");
    assert_eq!(esc.len(), 1, "{esc:#?}");
    assert!(to(esc[0]).contains("nakamura@"));
    assert!(
        esc[0]["subject"]
            .as_str()
            .unwrap()
            .contains("shinsei.example.go.jp")
    );
    // The yearly inventory, with the register as CSV.
    let inputs = json!({ "jp_whois": format!("127.0.0.1:{whois}"), "check_tls": false, "mode": "inventory" });
    let (code, out, err) = cli(
        s.project.path(),
        &[
            "trigger",
            "domain-renewal-check",
            "--input",
            &inputs.to_string(),
        ],
    );
    assert_eq!(code, 0, "{err}");
    let run = wait_done(&store, out.trim()).await;
    assert_eq!(
        run.status,
        RunStatus::Succeeded,
        "{run:?}\n{}",
        d.log_text()
    );
    let m = wait_mails(&s, "the inventory", Duration::from_secs(20), |m| {
        !with_subject(m, "ドメイン台帳の棚卸し").is_empty()
    });
    let inv = with_subject(&m, "ドメイン台帳の棚卸し")[0];
    let names = inv["attachments"].as_array().unwrap();
    let i = names
        .iter()
        .position(|n| n.as_str().is_some_and(|n| n.ends_with(".csv")))
        .unwrap();
    let csv = inv["attachment_texts"][i].as_str().unwrap();
    assert_eq!(csv.lines().count(), 5, "{csv}");
    assert!(
        csv.contains(&format!(
            "toukei-example.jp,統計データ公開サイト,使用中,指定事業者A,{},14,",
            in_days(14)
        )),
        "{csv}"
    );
    // Exactly the notices above: the inventory run sends none.
    assert_eq!(with_subject(&mails(&s), "登録期限まで").len(), 3);
}

/// The attachment `name` of `mail`, written to `dir`.

#[tokio::test(flavor = "multi_thread")]
async fn budget_request_cycle_with_excel_forms_end_to_end() {
    let s = setup().await;
    let d = start(&s, "d");
    d.wait_log("mailbox registered", STARTUP);
    let work = tempfile::tempdir().unwrap();
    let inputs = json!({
        "deadline": rfc3339_in(40),
        "remind": ["-30s", "-29s", "-28s"],
        "resend": "+1s",
        "close_after": "5s",
        "correction_deadline": rfc3339_in(100),
        "milestones": false,
    });
    let (code, out, err) = cli(
        s.project.path(),
        &[
            "trigger",
            "budget-request-cycle",
            "--input",
            &inputs.to_string(),
        ],
    );
    assert_eq!(code, 0, "{err}");
    let run_id = out.trim().to_string();
    let m = wait_mails(&s, "four calls", Duration::from_secs(30), |m| {
        with_subject(m, "【ご依頼】").len() == 4
    });
    let calls = with_subject(&m, "【ご依頼】");
    let call = |who: &str| (*addressed(&calls, who).first().unwrap()).clone();
    // Each PJMO gets its own copy of the 様式, its project filled in.
    let sato_form = save_attachment(&call("sato@"), "様式1_予算要求_P01.xlsx", work.path());
    let seen: Json =
        serde_json::from_str(&workbooks_py(&["inspect", sato_form.to_str().unwrap()])).unwrap();
    let cells = &seen["sheets"]["様式1"]["cells"];
    assert_eq!(cells["C4"], json!("P01"));
    assert_eq!(cells["C5"], json!("電子申請システム"));
    assert_eq!(
        cells["C9"],
        json!(118000),
        "当年度予算額 from data/budget.toml, in 千円"
    );
    assert_eq!(seen["sheets"]["様式1"]["protected"], json!(true));
    assert!(
        call("sato@")["body"]
            .as_str()
            .unwrap()
            .contains("様式1_予算要求_P01.xlsx")
    );
    let suzuki_form = save_attachment(&call("suzuki@"), "様式1_予算要求_P02.xlsx", work.path());
    // 佐藤 fills everything in; 鈴木 leaves 運用等経費 empty; 渡辺 writes in the body.
    let sato = work.path().join("sato.xlsx");
    workbooks_py(&[
        "fill",
        sato_form.to_str().unwrap(),
        sato.to_str().unwrap(),
        &json!({ "区分": "改修", "整備経費": 85000, "運用等経費": "３３，０００",
                 "前年度比": "+5,000千円（機能追加）", "積算根拠": "見積3社", "KPI": "オンライン申請率 80%",
                 "共通基盤の利用": "○" })
        .to_string(),
    ]);
    let suzuki = work.path().join("suzuki.xlsx");
    workbooks_py(&[
        "fill",
        suzuki_form.to_str().unwrap(),
        suzuki.to_str().unwrap(),
        &json!({ "区分": "新規", "整備経費": 60000, "積算根拠": "見積2社", "KPI": "公開データセット数 300件" })
            .to_string(),
    ]);
    s.imap.append_raw(
        "INBOX",
        &[
            reply_with_file(
                "sato@pjmo-a.example.go.jp",
                &call("sato@"),
                "お世話になっております。様式を添付します。",
                "様式1_予算要求_P01.xlsx",
                &std::fs::read(&sato).unwrap(),
            ),
            reply_with_file(
                "suzuki@pjmo-b.example.go.jp",
                &call("suzuki@"),
                "添付のとおり提出します。",
                "様式1_予算要求_P02.xlsx",
                &std::fs::read(&suzuki).unwrap(),
            ),
            reply(
                "watanabe@pjmo-c.example.go.jp",
                &call("watanabe@"),
                "区分: 運用\n整備経費: 0千円\n運用等経費: 45,000千円\n積算根拠: 現行契約\nKPI: 稼働率 99.9%",
            ),
        ],
    );
    // 鈴木 gets one 【要修正】 naming the sheet and the cell, and sends the workbook again,
    // completed and saved by LibreOffice this time.
    let m = wait_mails(&s, "the correction request", Duration::from_secs(60), |m| {
        !with_subject(m, "【要修正】").is_empty()
    });
    let fix = with_subject(&m, "【要修正】");
    assert_eq!(fix.len(), 1, "{fix:#?}");
    assert!(to(fix[0]).contains("suzuki@"));
    let text = fix[0]["body"].as_str().unwrap();
    assert!(text.contains("様式1 C8（運用等経費）が空欄です"), "{text}");
    let fixed = work.path().join("fixed.xlsx");
    workbooks_py(&[
        "fill",
        suzuki.to_str().unwrap(),
        fixed.to_str().unwrap(),
        &json!({ "運用等経費": 18000 }).to_string(),
    ]);
    workbooks_py(&[
        "convert",
        fixed.to_str().unwrap(),
        work.path().join("lo").to_str().unwrap(),
        "xlsx",
    ]);
    s.imap.append_raw(
        "INBOX",
        &[reply_with_file(
            "suzuki@pjmo-b.example.go.jp",
            fix[0],
            "修正しました。",
            "様式1_予算要求_P02.xlsx",
            &std::fs::read(work.path().join("lo/fixed.xlsx")).unwrap(),
        )],
    );
    let store = Store::open(&s.db.url, Durability::Process).await.unwrap();
    d.expect_done(&store, &run_id, RunStatus::Succeeded).await;
    let m = wait_mails(&s, "the gate report", Duration::from_secs(20), |m| {
        !with_subject(m, "一覧（PMOレビュー後）").is_empty()
    });
    // Reminders carry the addressee's form again.
    let reminders = with_subject(&m, "【リマインド】");
    let mori = addressed(&reminders, "mori@");
    assert_eq!(mori.len(), 3, "{reminders:#?}");
    assert!(
        mori.iter().all(|r| r["attachments"]
            .as_array()
            .unwrap()
            .iter()
            // The text is the first part of multipart/mixed, not a nameless nested part.
            .eq([&json!("様式1_予算要求_P04.xlsx")])),
        "{mori:#?}"
    );
    let gate = with_subject(&m, "一覧（PMOレビュー後）")[0];
    let body = gate["body"].as_str().unwrap();
    assert!(
        body.contains("P02 統計データ基盤構築: 回答済 / 区分 新規 / 整備経費 60,000千円 / 運用等経費 18,000千円"),
        "{body}"
    );
    let year = &rfc3339_in(0)[..4];
    let list = save_attachment(
        gate,
        &format!("budget-requests-review-{year}.xlsx"),
        work.path(),
    );
    let report: Json =
        serde_json::from_str(&workbooks_py(&["report", list.to_str().unwrap()])).unwrap();
    let rows = report["予算要求一覧"]["rows"].as_array().unwrap();
    assert_eq!(rows[0][0], json!("プロジェクトID"));
    let row = |id: &str| rows.iter().find(|r| r[0] == json!(id)).unwrap().clone();
    assert_eq!(row("P01")[2], json!("回答済"));
    assert_eq!(
        (row("P01")[5].clone(), row("P01")[6].clone()),
        (json!(85000), json!(33000))
    );
    assert_eq!(
        (row("P02")[5].clone(), row("P02")[6].clone()),
        (json!(60000), json!(18000))
    );
    assert_eq!(
        (row("P03")[5].clone(), row("P03")[6].clone()),
        (json!(0), json!(45000))
    );
    assert_eq!(row("P04")[2], json!("未回答"));
    assert_eq!(row("P04")[5], Json::Null);
    assert_eq!(
        report["予算要求一覧"]["formats"][0][5],
        json!("#,##0\"千円\"")
    );
    assert_eq!(report["予算要求一覧"]["freeze"], json!("A2"));
    assert_eq!(report["未提出"]["rows"][1][0], json!("P04"));
}

#[tokio::test(flavor = "multi_thread")]
async fn a_locked_or_broken_workbook_is_kept_and_its_sender_and_the_pmo_are_told_why() {
    let s = setup().await;
    let d = start(&s, "d");
    d.wait_log("mailbox registered", STARTUP);
    let work = tempfile::tempdir().unwrap();
    let inputs = json!({
        "deadline": rfc3339_in(600),
        "remind": ["-500s", "-499s", "-498s"],
        "milestones": false,
    });
    let (code, out, err) = cli(
        s.project.path(),
        &[
            "trigger",
            "budget-request-cycle",
            "--input",
            &inputs.to_string(),
        ],
    );
    assert_eq!(code, 0, "{err}");
    let run_id = out.trim().to_string();
    let m = wait_mails(&s, "four calls", Duration::from_secs(30), |m| {
        with_subject(m, "【ご依頼】").len() == 4
    });
    let calls = with_subject(&m, "【ご依頼】");
    let call = (*addressed(&calls, "sato@").first().unwrap()).clone();
    let form = save_attachment(&call, "様式1_予算要求_P01.xlsx", work.path());
    let filled = work.path().join("filled.xlsx");
    workbooks_py(&[
        "fill",
        form.to_str().unwrap(),
        filled.to_str().unwrap(),
        &json!({ "区分": "改修", "整備経費": 85000, "運用等経費": 33000, "積算根拠": "見積3社", "KPI": "申請率" })
            .to_string(),
    ]);
    let locked = work.path().join("locked.xlsx");
    workbooks_py(&[
        "encrypt",
        filled.to_str().unwrap(),
        locked.to_str().unwrap(),
        "pass",
    ]);
    s.imap.append_raw(
        "INBOX",
        &[reply_with_file(
            "sato@pjmo-a.example.go.jp",
            &call,
            "パスワード付きで失礼します。",
            "様式1_予算要求_P01.xlsx",
            &std::fs::read(&locked).unwrap(),
        )],
    );
    let m = wait_mails(
        &s,
        "the correction and the PMO notice",
        Duration::from_secs(60),
        |m| !with_subject(m, "【要修正】").is_empty() && !with_subject(m, "保留").is_empty(),
    );
    let fix = with_subject(&m, "【要修正】")[0];
    assert!(to(fix).contains("sato@"));
    let text = fix["body"].as_str().unwrap();
    assert!(
        text.contains(
            "添付ファイル「様式1_予算要求_P01.xlsx」: パスワードで保護されているため読み取れません"
        ),
        "{text}"
    );
    let pmo = with_subject(&m, "保留")[0];
    assert!(to(pmo).contains("pmo-desk@"));
    assert!(pmo["body"].as_str().unwrap().contains("パスワード"));
    // The message is kept with its attachment, as an incomplete answer.
    let store = Store::open(&s.db.url, Durability::Process).await.unwrap();
    let sato_request = || async {
        for i in 0..4 {
            let reqs = store
                .requests_for_step(&run_id, &format!("call[{i}]"))
                .await
                .unwrap();
            if let Some(r) = reqs.into_iter().find(|r| r.recipient.starts_with("sato@")) {
                return r;
            }
        }
        panic!("no request to sato")
    };
    let sato = sato_request().await;
    assert_eq!(sato.status, "open");
    let answers = store
        .answers_for(std::slice::from_ref(&sato.token))
        .await
        .unwrap();
    assert_eq!(answers.len(), 1);
    assert_eq!(
        answers[0].attachments[0]["name"],
        json!("様式1_予算要求_P01.xlsx")
    );
    assert!(
        answers[0].attachments[0]["workbook"]["error"]
            .as_str()
            .unwrap()
            .contains("パスワード")
    );
    // Then as a password-protected ZIP (PPAP): refused with its own sentence.
    let ppap = work.path().join("ppap.zip");
    workbooks_py(&[
        "ppap",
        ppap.to_str().unwrap(),
        filled.to_str().unwrap(),
        "himitsu",
    ]);
    s.imap.append_raw(
        "INBOX",
        &[reply_with_file(
            "sato@pjmo-a.example.go.jp",
            fix,
            "ZIPで再送します。パスワードは別途お送りします。",
            "提出書類.zip",
            &std::fs::read(&ppap).unwrap(),
        )],
    );
    let m = wait_mails(&s, "the second correction", Duration::from_secs(60), |m| {
        with_subject(m, "【要修正】").len() >= 2
    });
    let second = with_subject(&m, "【要修正】")
        .into_iter()
        .find(|x| x["body"].as_str().unwrap().contains("ZIP"))
        .unwrap_or_else(|| panic!("{:#?}", with_subject(&m, "【要修正】")));
    assert!(
        second["body"].as_str().unwrap().contains(
            "添付ファイル「提出書類.zip/様式.xlsx」: パスワード付きZIPファイルのため開けませんでした"
        ),
        "{second:#}"
    );
    // The same workbook in a plain ZIP completes the request.
    let zipped = work.path().join("zipped.zip");
    workbooks_py(&[
        "archive",
        zipped.to_str().unwrap(),
        "様式1_予算要求_P01.xlsx",
        filled.to_str().unwrap(),
    ]);
    s.imap.append_raw(
        "INBOX",
        &[reply_with_file(
            "sato@pjmo-a.example.go.jp",
            second,
            "パスワードなしのZIPで再送します。",
            "様式提出.zip",
            &std::fs::read(&zipped).unwrap(),
        )],
    );
    let sato = wait::until(
        "佐藤's ZIP answer to be taken",
        Duration::from_secs(60),
        || async {
            let sato = sato_request().await;
            if sato.status == "answered" {
                Ok(sato)
            } else {
                Err(sato.status)
            }
        },
    )
    .await;
    let a = store
        .answers_for(std::slice::from_ref(&sato.token))
        .await
        .unwrap();
    let last = a
        .iter()
        .find(|x| Some(&x.id) == sato.answer_id.as_ref())
        .unwrap();
    assert_eq!(last.fields["整備経費"], json!(85000));
    drop(d);
}
