//! The shipped workflows (`workflows/` of this repository, copied as they are) on the real
//! daemon, with a real SMTP server (aiosmtpd), a real IMAP server (Dovecot), the HTTP listener,
//! and a short time scale given through each workflow's inputs.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use pmoflow::store::{Durability, RunStatus, Store};
use pmoflow_tests::{
    Backend, Daemon, Dovecot, Project, SmtpSink, TestDb, WebhookServer, cli, decode_mail,
    free_port, new_api_token, wait_run,
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
         {}\n[http]\nlisten = \"127.0.0.1:{http_port}\"\npublic_url = \"http://127.0.0.1:{http_port}\"\n\n{entry}\n",
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
    d.wait_log("http listening", Duration::from_secs(30));
    d.wait_log("imap connected", Duration::from_secs(30));
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
    let start = Instant::now();
    loop {
        let m = mails(s);
        if pred(&m) {
            return m;
        }
        assert!(
            start.elapsed() < timeout,
            "timed out waiting for {what}; mails so far: {:#?}",
            m.iter()
                .map(|x| (x["to"].clone(), x["subject"].clone()))
                .collect::<Vec<_>>()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

fn with_subject<'a>(mails: &'a [Json], part: &str) -> Vec<&'a Json> {
    mails
        .iter()
        .filter(|m| m["subject"].as_str().unwrap_or("").contains(part))
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

/// A plain reply to `request` (In-Reply-To and the reply address), as a mail client sends it.
fn reply(from: &str, request: &Json, body: &str) -> Vec<u8> {
    let reply_to = request["reply_to"].as_str().unwrap();
    let reply_to = reply_to.rsplit('<').next().unwrap().trim_end_matches('>');
    format!(
        "From: {from}\r\nTo: {reply_to}\r\nSubject: Re: reply\r\nMessage-ID: <{}.{}@pjmo.example.go.jp>\r\nIn-Reply-To: {irt}\r\nReferences: {irt}\r\nMIME-Version: 1.0\r\nContent-Type: text/plain; charset=UTF-8\r\nContent-Transfer-Encoding: 8bit\r\n\r\n{}\r\n",
        std::process::id(),
        Instant::now().elapsed().as_nanos() + u128::from(fastrand_u32()),
        body.replace('\n', "\r\n"),
        irt = request["message_id"].as_str().unwrap(),
    )
    .into_bytes()
}

fn fastrand_u32() -> u32 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .subsec_nanos()
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
    d.wait_log("mailbox registered", Duration::from_secs(30));
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
    assert!(
        body.contains("総合評価: \n") || body.contains("総合評価: \r\n"),
        "{body}"
    );
    // Two answer by mail (through IMAP), one through the web form; 森 never answers.
    let n = s.imap.append_raw(
        "INBOX",
        &[
            reply(
                "佐藤 花子 <sato@pjmo-a.example.go.jp>",
                ask("sato@"),
                "総合評価：良好\n経費：予算 12,000万円 / 見込 11,800万円\n遅延日数：０\n\nよろしくお願いします。",
            ),
            reply(
                "suzuki@pjmo-b.example.go.jp",
                ask("suzuki@"),
                "総合評価: 要対応\n経費: 予算 8,000万円 / 見込 8,500万円\n遅延日数: 35\n支援要望: ベンダー調整への同席",
            ),
        ],
    );
    assert_eq!(n, 2);
    let link = ask("watanabe@")["body"]
        .as_str()
        .unwrap()
        .lines()
        .find_map(|l| l.find("http://").map(|i| l[i..].trim().to_string()))
        .expect("an answer link");
    let web = reqwest::Client::new();
    let html = web.get(&link).send().await.unwrap().text().await.unwrap();
    let start = html.find("name=\"nonce\" value=\"").expect("a nonce") + 20;
    let nonce = html[start..start + html[start..].find('"').unwrap()].to_string();
    let res = web
        .post(&link)
        .form(&[
            ("nonce", nonce.as_str()),
            ("field:総合評価", "注意"),
            ("field:経費", "予算 4,500万円 / 見込 5,400万円"),
            ("field:遅延日数", "5"),
        ])
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);

    let store = Store::open(&s.db.url, Durability::Process).await.unwrap();
    let run = wait_run(&store, &run_id, Duration::from_secs(90), |r| {
        r.status.is_terminal()
    })
    .await;
    assert_eq!(
        run.status,
        RunStatus::Succeeded,
        "{run:?}\n{}",
        d.log_text()
    );
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
}

#[tokio::test(flavor = "multi_thread")]
async fn emergency_escalation_end_to_end_with_a_restart_mid_chain() {
    let s = setup().await;
    let hooks = WebhookServer::start(s.project.path(), 0, 200);
    let mut d = start(&s, "d");
    d.wait_log("mailbox registered", Duration::from_secs(30));
    // A monitoring system opens the incident through the webhook trigger.
    let web = reqwest::Client::new();
    let base = format!("http://127.0.0.1:{}", s.http_port);
    let res = web
        .post(format!("{base}/hooks/emergency-escalation"))
        .bearer_auth(&s.operator)
        .json(&json!({
            "severity": "S2", "system": "電子申請システム", "summary": "応答なし",
            "first_wait": "6s", "second_wait": "6s", "third_wait": "6s", "repeat": 0,
            "webhook_url": format!("http://127.0.0.1:{}/teams", hooks.port),
        }))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 202);
    let run_id = res.json::<Json>().await.unwrap()["run_id"]
        .as_str()
        .unwrap()
        .to_string();
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
    let start_wait = Instant::now();
    loop {
        let rows = store.list_requests(Some("answered"), 100).await.unwrap();
        if rows.iter().any(|r| r.run_id == run_id && r.kind == "ack") {
            break;
        }
        assert!(
            start_wait.elapsed() < Duration::from_secs(20),
            "no acknowledgement recorded\n{}",
            d.log_text()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    std::thread::sleep(Duration::from_secs(10));
    let m = mails(&s);
    let alerts = with_subject(&m, "【緊急・第一報】");
    assert!(
        addressed(&alerts, "yoshida@").is_empty() && addressed(&alerts, "matsumoto@").is_empty(),
        "{alerts:#?}"
    );
    // Neither lost nor repeated across the restart: staff twice (ito, yamamoto), head once.
    assert_eq!(addressed(&alerts, "ito@").len(), 1);
    assert_eq!(addressed(&alerts, "nakamura@").len(), 1);
    // Resolved through the API: the 最終報 to everyone alerted and informed.
    let res = web
        .post(format!("{base}/api/runs/{run_id}/resolve"))
        .bearer_auth(&s.operator)
        .json(&json!({ "note": "再起動により復旧", "by": "伊藤" }))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    let again = web
        .post(format!("{base}/api/runs/{run_id}/resolve"))
        .bearer_auth(&s.operator)
        .send()
        .await
        .unwrap();
    assert_eq!(again.status(), 404, "already resolved");
    let run = wait_run(&store, &run_id, Duration::from_secs(20), |r| {
        r.status.is_terminal()
    })
    .await;
    assert_eq!(
        run.status,
        RunStatus::Succeeded,
        "{run:?}\n{}",
        d.log_text()
    );
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
    let titles: Vec<String> = posts
        .iter()
        .map(|p| {
            serde_json::from_str::<Json>(p["body"].as_str().unwrap()).unwrap()["title"]
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
