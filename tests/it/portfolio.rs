//! The portfolio end to end on the real daemon, SQLite and PostgreSQL, over IMAP: three monthly
//! collections answered by mail, on the answer page and with the 様式; a choice outside its
//! options and a non-number get a 【要修正】 naming the field; a correction replaces the
//! month's value and keeps the earlier one as history; the API returns exactly the typed values
//! per project and month (未回答 where nobody answered); a kill -9 while answers are recorded
//! doubles nothing; the CSV equals the API and the workbook has a chart per numeric field whose
//! series point at the right cells.

use std::time::Duration;

use pmoflow::store::{Durability, PortfolioQuery, RunStatus, Store};
use pmoflow_tests::Call;
use pmoflow_tests::backend_tests;
use pmoflow_tests::mail::{answer_link, answer_on_page, reply, reply_with_file};
use pmoflow_tests::{
    Backend, Daemon, Dovecot, Project, STARTUP, SmtpSink, TestDb, cli_ok, decode_mail, free_port,
    new_api_token, save_attachment, wait, wait_runs, workbooks_py,
};
use serde_json::{Value as Json, json};

const WORKFLOW: &str = include_str!("../fixtures/flows/portfolio_workflow.toml");

const PROJECTS: &str = include_str!("../fixtures/flows/portfolio_projects.toml");

const PERIODS: [&str; 3] = ["2027-04", "2027-05", "2027-06"];

struct Setup {
    project: Project,
    db: TestDb,
    imap: Dovecot,
    http: u16,
    viewer: String,
    _smtp: SmtpSink,
}

async fn setup(backend: Backend) -> Setup {
    let db = TestDb::new(backend).await;
    let project = Project::with_workflow("status.toml", WORKFLOW);
    let data = project.workflows().join("data");
    std::fs::create_dir_all(&data).unwrap();
    std::fs::write(data.join("projects.toml"), PROJECTS).unwrap();
    let templates = project.workflows().join("templates");
    std::fs::create_dir_all(&templates).unwrap();
    workbooks_py(&[
        "form",
        templates.join("status.xlsx").to_str().unwrap(),
        "報告",
        r#"["総合評価", "予算額（万円）", "見込額（万円）", "遅延日数"]"#,
    ]);
    let (smtp_port, http) = (free_port(), free_port());
    let imap = Dovecot::start();
    let (viewer, entry) = new_api_token(project.path(), "pmo", "viewer");
    project.config(&format!(
        "database_url = \"{}\"\n[engine]\npoll_interval = \"100ms\"\n\
         [mail]\nfrom = \"PMO事務局 <pmo@example.go.jp>\"\n\
         [smtp]\nhost = \"127.0.0.1\"\nport = {smtp_port}\ntls = \"none\"\n\
         [outbox]\npoll_interval = \"200ms\"\n\
         [replies]\naddress = \"pmo+{{token}}@example.go.jp\"\nnotify = \"pmo-desk@example.go.jp\"\n\
         {}\n[http]\nlisten = \"127.0.0.1:{http}\"\npublic_url = \"http://127.0.0.1:{http}\"\n\n{entry}\n",
        db.url,
        imap.config("poll_interval = \"1s\""),
    ));
    let smtp = SmtpSink::start(smtp_port, &project.path().join("maildir"));
    Setup {
        project,
        db,
        imap,
        http,
        viewer,
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

/// The mails whose subject has all of `parts`, once there are `n` of them.
fn wait_mails(s: &Setup, parts: &[&str], n: usize) -> Vec<Json> {
    wait::until_blocking(
        &format!("{n} mails with {parts:?}"),
        Duration::from_secs(30),
        || {
            let m: Vec<Json> = mails(s)
                .into_iter()
                .filter(|m| {
                    let subject = m["subject"].as_str().unwrap_or("");
                    parts.iter().all(|p| subject.contains(p))
                })
                .collect();
            if m.len() >= n { Ok(m) } else { Err(m.len()) }
        },
    )
}

/// The request mail of one project and period.
fn request(s: &Setup, who: &str, period: &str) -> Json {
    wait_mails(s, &["【要回答】", period], 4)
        .into_iter()
        .find(|m| m["to"].to_string().contains(who))
        .unwrap_or_else(|| panic!("no request to {who} for {period}"))
}

/// The portfolio as the API gives it: (subject, period, status, late, values).
async fn api(s: &Setup, query: &str) -> Vec<(String, String, String, bool, Json)> {
    let body: Json = reqwest::Client::new()
        .get(format!("http://127.0.0.1:{}/api/portfolio{query}", s.http))
        .bearer_auth(&s.viewer)
        .expect_json(200)
        .await;
    body["entries"]
        .as_array()
        .unwrap_or_else(|| panic!("{body}"))
        .iter()
        .map(|e| {
            let values: serde_json::Map<String, Json> = e["values"]
                .as_object()
                .unwrap()
                .iter()
                .map(|(k, v)| (k.clone(), v["value"].clone()))
                .collect();
            (
                e["subject"].as_str().unwrap().into(),
                e["period"].as_str().unwrap().into(),
                e["status"].as_str().unwrap().into(),
                e["late"].as_bool().unwrap(),
                Json::Object(values),
            )
        })
        .collect()
}

async fn portfolio_end_to_end(backend: Backend) {
    let s = setup(backend).await;
    let mut d = start(&s, "d");
    d.wait_log("mailbox registered", STARTUP);
    let deadline = (chrono::Utc::now() + chrono::Duration::seconds(75))
        .with_timezone(&chrono_tz::Asia::Tokyo)
        .to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
    let mut runs = Vec::new();
    for period in PERIODS {
        let inputs = json!({ "period": period, "deadline": deadline });
        runs.push(
            cli_ok(
                s.project.path(),
                &["trigger", "status", "--input", &inputs.to_string()],
            )
            .trim()
            .to_string(),
        );
    }
    for period in PERIODS {
        wait_mails(&s, &["【要回答】", period], 4);
    }
    let work = tempfile::tempdir().unwrap();

    // April, by mail: a rating outside its options and a non-number come back 【要修正】
    // naming the field, what was written and what is allowed; nothing is recorded.
    let ask = request(&s, "sato@", "2027-04");
    s.imap.append_raw(
        "INBOX",
        &[reply(
            "佐藤 花子 <sato@pjmo-a.example.go.jp>",
            &ask,
            "総合評価: まあまあ\n予算額: 未定\n見込額: 12,500\n",
        )],
    );
    let fix = wait_mails(&s, &["【要修正】", "2027-04"], 1);
    let text = fix[0]["body"].as_str().unwrap();
    assert!(
        text.contains("総合評価は「良好」「注意」「要対応」のいずれかを選択してください（入力値: 「まあまあ」）"),
        "{text}"
    );
    assert!(
        text.contains("予算額は数値で入力してください（入力値: 「未定」）"),
        "{text}"
    );
    assert!(text.contains("総合評価（良好／注意／要対応）: "), "{text}");
    assert!(
        api(&s, "").await.is_empty(),
        "an answer needing correction is not recorded"
    );
    s.imap.append_raw(
        "INBOX",
        &[reply(
            "佐藤 花子 <sato@pjmo-a.example.go.jp>",
            &ask,
            "総合評価: 「注意」\n予算額: 1億2,000万円\n見込額：１２，５００\n遅延日数: 3\n課題: 要件の追加\n",
        )],
    );

    // On the answer page: a wrong choice is refused with 422 beside its field, values kept.
    let link = answer_link(&request(&s, "suzuki@", "2027-04"));
    let (status, html) = answer_on_page(
        &link,
        &[
            ("field:総合評価", "まあまあ"),
            ("field:予算額", "8,000"),
            ("field:見込額", "たくさん"),
        ],
    )
    .await;
    assert_eq!(status, 422, "{html}");
    assert!(html.contains("class=\"field-error\""), "{html}");
    assert!(
        html.contains("見込額は数値で入力してください（入力値: 「たくさん」）"),
        "{html}"
    );
    assert!(html.contains("value=\"8,000\""), "values are kept: {html}");
    let (status, html) = answer_on_page(
        &link,
        &[
            ("field:総合評価", "良好"),
            ("field:予算額", "8,000"),
            ("field:見込額", "8,000"),
            ("field:遅延日数", "0"),
        ],
    )
    .await;
    assert_eq!(status, 200, "{html}");

    // With the 様式: the attached form filled in by openpyxl, returned by mail.
    let form_reply = |period: &str, values: Json| {
        let ask = request(&s, "watanabe@", period);
        let path = save_attachment(&ask, "status.xlsx", work.path());
        let filled = work.path().join(format!("filled-{period}.xlsx"));
        workbooks_py(&[
            "fill",
            path.to_str().unwrap(),
            filled.to_str().unwrap(),
            &values.to_string(),
        ]);
        reply_with_file(
            "watanabe@pjmo-c.example.go.jp",
            &ask,
            "様式を添付します。",
            "status.xlsx",
            &std::fs::read(&filled).unwrap(),
        )
    };
    s.imap.append_raw(
        "INBOX",
        &[form_reply(
            "2027-04",
            json!({ "報告!C2": "要対応", "報告!C3": 4500, "報告!C4": 5400, "報告!C5": 45 }),
        )],
    );
    wait::until("April recorded", Duration::from_secs(30), || async {
        let got = api(&s, "?from=2027-04&to=2027-04").await;
        if got.len() == 3 { Ok(()) } else { Err(got) }
    })
    .await;

    // May and June arrive together; the daemon is killed with -9 while it records them.
    let mut batch = Vec::new();
    for (period, rating, forecast) in [
        ("2027-05", "注意", "12,800"),
        ("2027-06", "要対応", "13,500"),
    ] {
        batch.push(reply(
            "佐藤 花子 <sato@pjmo-a.example.go.jp>",
            &request(&s, "sato@", period),
            &format!("総合評価: {rating}\n予算額: 12,000\n見込額: {forecast}\n遅延日数: 10\n"),
        ));
    }
    batch.push(form_reply(
        "2027-05",
        json!({ "報告!C2": "注意", "報告!C3": 4500, "報告!C4": 5000, "報告!C5": 20 }),
    ));
    batch.push(form_reply(
        "2027-06",
        json!({ "報告!C2": "良好", "報告!C3": 4500, "報告!C4": 4600, "報告!C5": 0 }),
    ));
    let before = d.log_text().matches("inbound message processed").count();
    s.imap.append_raw("INBOX", &batch);
    d.wait_log_count(
        "inbound message processed",
        before + 1,
        Duration::from_secs(30),
    );
    d.kill9();
    let d2 = start(&s, "d2");
    for period in ["2027-05", "2027-06"] {
        let link = answer_link(&request(&s, "suzuki@", period));
        let (status, html) = answer_on_page(
            &link,
            &[
                ("field:総合評価", "注意"),
                ("field:予算額", "8,000"),
                ("field:見込額", "8,400"),
                ("field:遅延日数", "12"),
            ],
        )
        .await;
        assert_eq!(status, 200, "{html}");
    }
    wait::until("May and June recorded", Duration::from_secs(40), || async {
        let got = api(&s, "?from=2027-05").await;
        if got.len() == 6 { Ok(()) } else { Err(got) }
    })
    .await;

    // A correction within June replaces the value; the earlier one stays as history.
    s.imap.append_raw(
        "INBOX",
        &[reply(
            "佐藤 花子 <sato@pjmo-a.example.go.jp>",
            &request(&s, "sato@", "2027-06"),
            "総合評価: 要対応\n見込額: 14,000\n",
        )],
    );
    wait::until("the correction", Duration::from_secs(30), || async {
        let got = api(&s, "?subject=P01&from=2027-06").await;
        match got.first() {
            Some((_, _, _, _, v)) if v["見込額"] == json!(14000) => Ok(()),
            other => Err(format!(
                "{other:?}\n{}",
                cli_ok(s.project.path(), &["inbound", "list", "--limit", "5"])
            )),
        }
    })
    .await;

    let store = Store::open(&s.db.url, Durability::Process).await.unwrap();
    wait_runs(&store, RunStatus::Succeeded, 3, Duration::from_secs(90)).await;
    let history = store.portfolio_history("status", "P01").await.unwrap();
    let june: Vec<(String, Json, bool)> = history
        .iter()
        .filter(|(p, f, _)| p == "2027-06" && f == "見込額")
        .map(|(_, _, v)| (v.source.clone(), v.value.clone(), v.superseded_at.is_some()))
        .collect();
    assert_eq!(
        june,
        vec![
            ("email".into(), json!(13500), true),
            ("email".into(), json!(14000), false),
        ]
    );
    // Nothing doubled by the kill: one value per answer and field.
    let mut keys: Vec<(String, String, String)> = history
        .iter()
        .map(|(p, f, v)| (p.clone(), f.clone(), v.answer_id.clone()))
        .collect();
    let n = keys.len();
    keys.dedup();
    assert_eq!(keys.len(), n);
    assert_eq!(
        n,
        5 + 4 + 4 + 2,
        "April, May, June and the correction: {history:#?}"
    );
    let sources: Vec<String> = store
        .portfolio(&PortfolioQuery {
            subject: Some("P03".into()),
            ..Default::default()
        })
        .await
        .unwrap()
        .iter()
        .flat_map(|e| e.values.values().map(|v| v.source.clone()))
        .collect();
    assert!(sources.iter().all(|s| s == "workbook"), "{sources:?}");

    let got = api(&s, "").await;
    let row = |subject: &str, period: &str, status: &str, late: bool, values: Json| {
        (
            subject.to_string(),
            period.to_string(),
            status.to_string(),
            late,
            values,
        )
    };
    assert_eq!(
        got,
        vec![
            row(
                "P01",
                "2027-04",
                "answered",
                false,
                json!({ "総合評価": "注意", "予算額": 12000, "見込額": 12500, "遅延日数": 3, "課題": "要件の追加" })
            ),
            row(
                "P01",
                "2027-05",
                "answered",
                false,
                json!({ "総合評価": "注意", "予算額": 12000, "見込額": 12800, "遅延日数": 10 })
            ),
            row(
                "P01",
                "2027-06",
                "answered",
                false,
                json!({ "総合評価": "要対応", "予算額": 12000, "見込額": 14000, "遅延日数": 10 })
            ),
            row(
                "P02",
                "2027-04",
                "answered",
                false,
                json!({ "総合評価": "良好", "予算額": 8000, "見込額": 8000, "遅延日数": 0 })
            ),
            row(
                "P02",
                "2027-05",
                "answered",
                false,
                json!({ "総合評価": "注意", "予算額": 8000, "見込額": 8400, "遅延日数": 12 })
            ),
            row(
                "P02",
                "2027-06",
                "answered",
                false,
                json!({ "総合評価": "注意", "予算額": 8000, "見込額": 8400, "遅延日数": 12 })
            ),
            row(
                "P03",
                "2027-04",
                "answered",
                false,
                json!({ "総合評価": "要対応", "予算額": 4500, "見込額": 5400, "遅延日数": 45 })
            ),
            row(
                "P03",
                "2027-05",
                "answered",
                false,
                json!({ "総合評価": "注意", "予算額": 4500, "見込額": 5000, "遅延日数": 20 })
            ),
            row(
                "P03",
                "2027-06",
                "answered",
                false,
                json!({ "総合評価": "良好", "予算額": 4500, "見込額": 4600, "遅延日数": 0 })
            ),
            row("P04", "2027-04", "unanswered", false, json!({})),
            row("P04", "2027-05", "unanswered", false, json!({})),
            row("P04", "2027-06", "unanswered", false, json!({})),
        ]
    );
    assert_eq!(
        api(&s, "?subject=P02&from=2027-05&to=2027-05").await.len(),
        1
    );

    // The CSV is the API, line for line.
    let web = reqwest::Client::new();
    let csv = web
        .get(format!("http://127.0.0.1:{}/api/portfolio.csv", s.http))
        .bearer_auth(&s.viewer)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let lines: Vec<&str> = csv.trim_start_matches('\u{feff}').lines().collect();
    assert_eq!(
        lines[0],
        "ワークフロー,対象ID,名称,責任者,期間,回答状況,期限後,回答経路,総合評価,予算額（万円）,見込額（万円）,遅延日数（日）,課題"
    );
    assert_eq!(lines.len(), got.len() + 1);
    for (line, (subject, period, status, _, values)) in lines[1..].iter().zip(&got) {
        let cells: Vec<&str> = line.split(',').collect();
        assert_eq!((cells[1], cells[4]), (subject.as_str(), period.as_str()));
        assert_eq!(
            cells[5],
            if status == "answered" {
                "回答済"
            } else {
                "未回答"
            }
        );
        for (i, field) in ["総合評価", "予算額", "見込額", "遅延日数", "課題"]
            .iter()
            .enumerate()
        {
            let expected = match &values[field] {
                Json::Null => String::new(),
                Json::String(t) => t.clone(),
                other => other.to_string(),
            };
            assert_eq!(cells[8 + i], expected, "{field} in {line}");
        }
    }

    // The workbook: a chart per numeric field whose series point at that field's cells.
    let xlsx = web
        .get(format!("http://127.0.0.1:{}/api/portfolio.xlsx", s.http))
        .bearer_auth(&s.viewer)
        .send()
        .await
        .unwrap()
        .bytes()
        .await
        .unwrap();
    let file = work.path().join("portfolio.xlsx");
    std::fs::write(&file, &xlsx).unwrap();
    let charts: Json =
        serde_json::from_str(&workbooks_py(&["charts", file.to_str().unwrap()])).unwrap();
    for sheet in ["総合評価", "課題"] {
        assert_eq!(charts[sheet], json!([]), "{sheet} is not a number");
    }
    for (field, unit) in [("予算額", "万円"), ("見込額", "万円"), ("遅延日数", "日")]
    {
        let list = charts[field]
            .as_array()
            .unwrap_or_else(|| panic!("{charts}"));
        assert_eq!(list.len(), 1, "{field}: {charts}");
        assert_eq!(list[0]["type"], "lineChart");
        assert_eq!(list[0]["title"], format!("{field}の推移（{unit}）"));
        let series = list[0]["series"].as_array().unwrap();
        assert_eq!(series.len(), 4, "one per project");
        for (k, (subject, name)) in [
            ("P01", "電子申請システム刷新"),
            ("P02", "統計データ基盤構築"),
        ]
        .iter()
        .enumerate()
        {
            let ser = &series[k];
            assert_eq!(ser["name_value"], *name);
            assert_eq!(ser["category_values"], json!(PERIODS));
            let expected: Vec<Json> = got
                .iter()
                .filter(|g| g.0 == *subject)
                .map(|g| g.4[field].clone())
                .collect();
            assert_eq!(ser["value_values"], json!(expected), "{field} {subject}");
        }
    }
    drop(d2);
}

backend_tests!(portfolio_end_to_end_on_sqlite, portfolio_end_to_end_on_postgres => portfolio_end_to_end);
