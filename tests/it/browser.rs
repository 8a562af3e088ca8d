//! End to end in a real browser: headless Chromium driven over WebDriver (chromedriver, from
//! Debian's `chromium-driver`; tests/run installs it). Log in with a token, see a run started by a
//! webhook appear on the dashboard, answer a request through the form and watch the waiting run
//! continue. Screenshots of the main pages are kept in `$CARGO_TARGET_TMPDIR/screenshots/`.

use std::path::PathBuf;
use std::time::Duration;

use fantoccini::{Client, Locator};
use pmoflow::store::{Durability, RunStatus, Store};
use pmoflow_tests::Call;
use pmoflow_tests::browser::{browser, log_in, submit, type_into, until_page_has, wait_source};
use pmoflow_tests::{
    Backend, Daemon, PROJECTS, Project, STARTUP, SmtpSink, TestDb, cli, free_port,
};
use pmoflow_tests::{deliver, expect_done, reply_address, wait_mail};
use serde_json::{Value as Json, json};

const STATUS: &str = include_str!("../fixtures/flows/browser_status.toml");

const HOOK: &str = include_str!("../fixtures/flows/browser_hook.toml");

/// The daemon's configuration for these tests: SMTP to the sink on `smtp_port`, the HTTP face on
/// `http_port` (its public URL too), and `extra` (API token entries).
fn config(db_url: &str, smtp_port: u16, http_port: u16, extra: &str) -> String {
    format!(
        "database_url = \"{db_url}\"\n[engine]\npoll_interval = \"100ms\"\n\
         [mail]\nfrom = \"PMO事務局 <pmo@example.go.jp>\"\n\
         [smtp]\nhost = \"127.0.0.1\"\nport = {smtp_port}\ntls = \"none\"\n\
         [outbox]\npoll_interval = \"200ms\"\n[replies]\naddress = \"pmo+{{token}}@example.go.jp\"\n\
         [http]\nlisten = \"127.0.0.1:{http_port}\"\npublic_url = \"http://127.0.0.1:{http_port}\"\n\n{extra}\n"
    )
}

/// Where screenshots go.
fn screenshots() -> PathBuf {
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("screenshots");
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// Saves a screenshot of the page as `NAME.png`.
async fn shot(c: &Client, name: &str) {
    let png = c.screenshot().await.unwrap();
    assert!(png.len() > 1000, "a real screenshot");
    std::fs::write(screenshots().join(format!("{name}.png")), png).unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn log_in_watch_a_webhook_run_and_answer_a_request_in_the_browser() {
    let db = TestDb::new(Backend::Sqlite).await;
    let project = Project::new();
    std::fs::write(project.workflows().join("data/projects.toml"), PROJECTS).unwrap();
    project.workflow("status.toml", STATUS);
    project.workflow("incident.toml", HOOK);
    let (token, entry) = pmoflow_tests::new_api_token(project.path(), "pmo-desk", "operator");
    let (smtp_port, http_port) = (free_port(), free_port());
    let base = format!("http://127.0.0.1:{http_port}");
    project.config(&config(&db.url, smtp_port, http_port, &entry));
    let maildir = project.path().join("maildir");
    let _smtp = SmtpSink::start(smtp_port, &maildir);
    let d = Daemon::start(project.path(), "d", &[]);
    d.wait_log("http listening", STARTUP);
    let (_driver, c) = browser().await;

    // Not logged in: the dashboard sends us to the login page. A wrong token is refused.
    c.goto(&format!("{base}/")).await.unwrap();
    assert!(c.current_url().await.unwrap().as_str().ends_with("/login"));
    type_into(&c, "token", "pmo_wrong").await;
    submit(&c).await;
    wait_source(&c, "トークンが正しくありません").await;
    shot(&c, "login").await;
    type_into(&c, "token", &token).await;
    submit(&c).await;
    wait_source(&c, "pmo-desk").await;

    // A monitoring system calls the webhook; the run shows up on the dashboard.
    let web = reqwest::Client::new();
    let hook_run = web
        .post(format!("{base}/hooks/incident"))
        .bearer_auth(&token)
        .json(&json!({ "summary": "電子申請が応答しない" }))
        .run_id(202)
        .await;
    until_page_has(&c, &hook_run, Duration::from_secs(15)).await;
    shot(&c, "dashboard").await;
    // Its page, and cancelling it from there (a form with the session's CSRF token).
    c.goto(&format!("{base}/runs/{hook_run}")).await.unwrap();
    assert_eq!(
        c.find(Locator::Id("run-status"))
            .await
            .unwrap()
            .text()
            .await
            .unwrap(),
        "待機中"
    );
    c.find(Locator::Css("form[action$='/cancel'] button"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    wait_source(&c, ">中止<").await;
    assert_eq!(
        c.find(Locator::Id("run-status"))
            .await
            .unwrap()
            .text()
            .await
            .unwrap(),
        "中止"
    );

    // A status collection: Yamada answers through the form behind the link in his mail.
    let (code, out, err) = cli(project.path(), &["trigger", "status"]);
    assert_eq!(code, 0, "{err}");
    let run_id = out.trim().to_string();
    let mails = wait_mail(&maildir, 2);
    let yamada = mails
        .iter()
        .find(|m| m["to"][0].as_str().unwrap().contains("yamada@"))
        .unwrap();
    let link = yamada["body"]
        .as_str()
        .unwrap()
        .lines()
        .find(|l| l.contains("/answer/"))
        .unwrap()
        .trim()
        .to_string();
    c.goto(&link).await.unwrap();
    shot(&c, "answer-form").await;
    c.find(Locator::Css("textarea[name='field:総合評価']"))
        .await
        .unwrap()
        .send_keys("良好")
        .await
        .unwrap();
    c.find(Locator::Css("textarea[name='field:進捗']"))
        .await
        .unwrap()
        .send_keys("80%")
        .await
        .unwrap();
    c.find(Locator::Css("textarea[name='text']"))
        .await
        .unwrap()
        .send_keys("順調です")
        .await
        .unwrap();
    submit(&c).await;
    wait_source(&c, "回答を受け付けました").await;

    // The run still waits for Suzuki; the board shows who answered what.
    c.goto(&format!("{base}/status")).await.unwrap();
    let board = c.source().await.unwrap();
    assert!(
        board.contains("良好") && board.contains("回答待ち"),
        "{board}"
    );
    shot(&c, "status-board").await;
    // Suzuki answers by mail (pipe delivery); the run continues.
    let suzuki = mails
        .iter()
        .find(|m| m["to"][0].as_str().unwrap().contains("suzuki@"))
        .unwrap();
    let reply_to = reply_address(suzuki);
    let raw = format!(
        "From: suzuki@pjmo-b.example.go.jp\r\nTo: {reply_to}\r\nSubject: Re: status\r\nMessage-ID: <b-{run_id}@x>\r\nContent-Type: text/plain; charset=UTF-8\r\n\r\n総合評価: 注意\r\n"
    );
    let out = deliver(project.path(), raw.as_bytes());
    assert!(out.contains("answer (done)"), "{out}");
    let store = Store::open(&db.url, Durability::Process).await.unwrap();
    expect_done(&store, &run_id, RunStatus::Succeeded).await;
    c.goto(&format!("{base}/runs/{run_id}")).await.unwrap();
    until_page_has(&c, "成功", Duration::from_secs(10)).await;
    assert_eq!(
        c.find(Locator::Id("run-status"))
            .await
            .unwrap()
            .text()
            .await
            .unwrap(),
        "成功"
    );
    shot(&c, "run").await;
    c.goto(&format!("{base}/requests")).await.unwrap();
    let reqs = c.source().await.unwrap();
    assert!(
        reqs.contains("yamada@pjmo-a.example.go.jp") && reqs.contains("回答済"),
        "{reqs}"
    );
    shot(&c, "requests").await;
    c.close().await.unwrap();
    for name in [
        "login",
        "dashboard",
        "answer-form",
        "status-board",
        "run",
        "requests",
    ] {
        assert!(screenshots().join(format!("{name}.png")).exists());
    }
}

const HOSTILE: &str = include_str!("../fixtures/flows/browser_hostile.toml");

/// A workflow name, an input, an answer's text and a field value that hold HTML and script are
/// shown as text on every page: no script runs, no element is injected, the markup is visible
/// as written.
#[tokio::test(flavor = "multi_thread")]
async fn html_and_script_in_names_inputs_and_answers_stay_inert_in_the_browser() {
    let db = TestDb::new(Backend::Sqlite).await;
    let project = Project::new();
    std::fs::write(project.workflows().join("data/projects.toml"), PROJECTS).unwrap();
    project.workflow("hostile.toml", HOSTILE);
    let (token, entry) = pmoflow_tests::new_api_token(project.path(), "pmo-desk", "operator");
    let (smtp_port, http_port) = (free_port(), free_port());
    let base = format!("http://127.0.0.1:{http_port}");
    project.config(&config(&db.url, smtp_port, http_port, &entry));
    let maildir = project.path().join("maildir");
    let _smtp = SmtpSink::start(smtp_port, &maildir);
    let d = Daemon::start(project.path(), "d", &[]);
    d.wait_log("http listening", STARTUP);

    let web = reqwest::Client::new();
    let run_id = web
        .post(format!("{base}/api/runs"))
        .bearer_auth(&token)
        .json(&json!({
            "workflow": "hostile",
            "inputs": { "summary": "<img src=x onerror=\"window.__pwned='input'\">至急" }
        }))
        .run_id(201)
        .await;
    let mails = wait_mail(&maildir, 2);
    let yamada = mails
        .iter()
        .find(|m| m["to"][0].as_str().unwrap().contains("yamada@"))
        .unwrap();
    let reply_to = reply_address(yamada);
    // Yamada's answer holds markup in a field and in its text.
    let raw = format!(
        "From: yamada@pjmo-a.example.go.jp\r\nTo: {reply_to}\r\nSubject: Re: x\r\nMessage-ID: <h-{run_id}@x>\r\nContent-Type: text/plain; charset=UTF-8\r\n\r\n総合評価: <img src=x onerror=\"window.__pwned='field'\">良好\r\n進捗: <script>window.__pwned='script'</script>80%\r\n\r\n<iframe src=\"javascript:window.top.__pwned='iframe'\"></iframe>順調です\r\n"
    );
    let out = deliver(project.path(), raw.as_bytes());
    assert!(out.trim_end().ends_with(": answer (done)"), "{out}");

    let (_driver, c) = browser().await;
    log_in(&c, &base, &token).await;
    wait_source(&c, "pmo-desk").await;
    for (page, shown) in [
        ("/".to_string(), "状況報告"),
        (format!("/runs/{run_id}"), "状況報告"),
        ("/status".to_string(), "良好"),
        ("/requests".to_string(), "yamada@pjmo-a.example.go.jp"),
    ] {
        c.goto(&format!("{base}{page}")).await.unwrap();
        let source = until_page_has(&c, shown, Duration::from_secs(15)).await;
        // Give an injected handler every chance to run (an image error fires at once).
        // pace: a check that nothing happens.
        tokio::time::sleep(Duration::from_millis(300)).await;
        let pwned = c
            .execute(
                "return window.__pwned === undefined ? null : String(window.__pwned);",
                vec![],
            )
            .await
            .unwrap();
        assert_eq!(pwned, Json::Null, "a script ran on {page}");
        for css in [
            "img[onerror]",
            "img[src='x']",
            "iframe",
            "script:not([src])",
        ] {
            let found = c.find_all(Locator::Css(css)).await.unwrap();
            assert!(found.is_empty(), "{page} has an injected {css}");
        }
        assert!(
            source.contains("&lt;img src=x onerror=") || source.contains("&lt;script&gt;"),
            "{page} shows the markup as text:\n{source}"
        );
    }
    shot(&c, "hostile-status-board").await;
    c.close().await.unwrap();
}

const BUDGET_FORM: &str = include_str!("../fixtures/flows/browser_budget_form.toml");

/// A PJMO lead answers with the 様式 through the answer page instead of a mail: the workbook
/// is chosen in Chromium's file input and uploaded; an empty required cell is named by sheet
/// and cell on the page at once and nothing is recorded; the corrected workbook is accepted
/// and its typed numbers (full-width digits included) are the run's output.
#[tokio::test(flavor = "multi_thread")]
async fn a_filled_form_is_uploaded_on_the_answer_page_and_corrected_there() {
    use pmoflow_tests::{save_attachment, workbooks_py};
    let db = TestDb::new(Backend::Sqlite).await;
    let project = Project::new();
    let templates = project.workflows().join("templates");
    std::fs::create_dir_all(&templates).unwrap();
    std::fs::copy(
        PathBuf::from(env!("CARGO_MANIFEST_DIR"))
            .join("../workflows/templates/様式1_予算要求.xlsx"),
        templates.join("様式1_予算要求.xlsx"),
    )
    .unwrap();
    project.workflow("budget.toml", BUDGET_FORM);
    let (smtp_port, http_port) = (free_port(), free_port());
    project.config(&config(&db.url, smtp_port, http_port, ""));
    let maildir = project.path().join("maildir");
    let _smtp = SmtpSink::start(smtp_port, &maildir);
    let d = Daemon::start(project.path(), "d", &[]);
    d.wait_log("http listening", STARTUP);
    let (code, out, err) = cli(project.path(), &["trigger", "budget"]);
    assert_eq!(code, 0, "{err}");
    let run_id = out.trim().to_string();
    let call = wait_mail(&maildir, 1).remove(0);
    let link = call["body"]
        .as_str()
        .unwrap()
        .lines()
        .find(|l| l.contains("/answer/"))
        .unwrap()
        .trim()
        .to_string();
    let work = tempfile::tempdir().unwrap();
    let form = save_attachment(&call, "様式1_予算要求_P01.xlsx", work.path());
    // Filled by openpyxl, 運用等経費 left empty.
    let first = work.path().join("first.xlsx");
    workbooks_py(&[
        "fill",
        form.to_str().unwrap(),
        first.to_str().unwrap(),
        &json!({ "区分": "改修", "整備経費": "１２，０００" }).to_string(),
    ]);
    let (_driver, c) = browser().await;
    let upload = |path: PathBuf| {
        let c = c.clone();
        let link = link.clone();
        async move {
            c.goto(&link).await.unwrap();
            wait_source(&c, "様式1_予算要求_P01.xlsx").await;
            c.find(Locator::Id("workbook"))
                .await
                .unwrap()
                .send_keys(path.to_str().unwrap())
                .await
                .unwrap();
            submit(&c).await;
        }
    };
    // The page also offers the 様式 exactly as mailed (for mail systems that hold attachments
    // back): the same bytes, with its Japanese file name.
    c.goto(&link).await.unwrap();
    let page = wait_source(&c, "ダウンロード").await;
    assert!(page.contains("/form\" download"), "{page}");
    let res = reqwest::get(format!("{link}/form")).await.unwrap();
    assert_eq!(res.status(), 200);
    let disposition = res.headers()["content-disposition"]
        .to_str()
        .unwrap()
        .to_string();
    assert!(
        disposition.contains("filename*=UTF-8''%E6%A7%98%E5%BC%8F1_"),
        "{disposition}"
    );
    assert_eq!(
        res.bytes().await.unwrap().as_ref(),
        std::fs::read(&form).unwrap().as_slice()
    );
    upload(first).await;
    let page = wait_source(&c, "様式1 C8（運用等経費）が空欄です").await;
    assert!(page.contains("もう一度添付して"), "{page}");
    shot(&c, "answer-form-correction").await;
    let store = Store::open(&db.url, Durability::Process).await.unwrap();
    let requests = store.requests_for_step(&run_id, "call").await.unwrap();
    assert_eq!(requests.len(), 1);
    assert_eq!(requests[0].status, "open", "nothing recorded: {requests:?}");

    let fixed = work.path().join("fixed.xlsx");
    workbooks_py(&[
        "fill",
        form.to_str().unwrap(),
        fixed.to_str().unwrap(),
        &json!({ "区分": "改修", "整備経費": "１２，０００", "運用等経費": 3400 }).to_string(),
    ]);
    upload(fixed).await;
    wait_source(&c, "回答を受け付けました").await;
    expect_done(&store, &run_id, RunStatus::Succeeded).await;
    let steps = store.get_steps(&run_id).await.unwrap();
    // One addressee: the step's output is that addressee's answer.
    let out = steps[0].output.clone().unwrap();
    let answer = &out;
    assert_eq!(answer["status"], "answered", "{out:#}");
    assert_eq!(answer["via"], "web", "{out:#}");
    assert_eq!(answer["fields"]["整備経費"], json!(12000), "{out:#}");
    assert_eq!(answer["fields"]["運用等経費"], json!(3400), "{out:#}");
    assert_eq!(answer["fields"]["区分"], json!("改修"), "{out:#}");
    assert_eq!(
        answer["fields"]["システム名"],
        json!("電子申請システム"),
        "{out:#}"
    );
    assert_eq!(answer["attachments"][0]["name"], "fixed.xlsx", "{out:#}");
    assert_eq!(
        answer["attachments"][0]["workbook"]["cells"][3]["at"], "様式1 C8",
        "{out:#}"
    );
    let _ = c.close().await;
}

const PORTFOLIO: &str = include_str!("../fixtures/flows/browser_portfolio.toml");

const PORTFOLIO_PROJECTS: &str = include_str!("../fixtures/flows/browser_portfolio_projects.toml");

/// The portfolio in the browser: the answer page's typed inputs and its 422 with the values
/// kept, the overview with 要対応 first, and a project's page whose SVG has a point per period
/// and whose table is the API's numbers.
#[tokio::test(flavor = "multi_thread")]
async fn the_portfolio_and_typed_answers_in_the_browser() {
    let db = TestDb::new(Backend::Sqlite).await;
    let project = Project::new();
    std::fs::write(
        project.workflows().join("data/projects.toml"),
        PORTFOLIO_PROJECTS,
    )
    .unwrap();
    project.workflow("status.toml", PORTFOLIO);
    let (token, entry) = pmoflow_tests::new_api_token(project.path(), "pmo-desk", "viewer");
    let (smtp_port, http_port) = (free_port(), free_port());
    let base = format!("http://127.0.0.1:{http_port}");
    project.config(&config(&db.url, smtp_port, http_port, &entry));
    let maildir = project.path().join("maildir");
    let _smtp = SmtpSink::start(smtp_port, &maildir);
    let d = Daemon::start(project.path(), "d", &[]);
    d.wait_log("http listening", STARTUP);
    let periods = ["2027-04", "2027-05", "2027-06"];
    for p in periods {
        let input = json!({ "period": p }).to_string();
        pmoflow_tests::cli_ok(project.path(), &["trigger", "status", "--input", &input]);
    }
    let mails = wait_mail(&maildir, 6);
    let link = |who: &str, period: &str| {
        pmoflow_tests::mail::answer_link(
            mails
                .iter()
                .find(|m| {
                    m["to"][0].as_str().unwrap().contains(who)
                        && m["subject"].as_str().unwrap().contains(period)
                })
                .unwrap(),
        )
    };
    // Yamada's April and May and Suzuki's three months over HTTP; Yamada's June in the browser.
    let answers = [
        ("yamada@", "2027-04", ["良好", "12,000", "11,800", "0"]),
        ("yamada@", "2027-05", ["注意", "12,000", "12,600", "8"]),
        ("suzuki@", "2027-04", ["注意", "8,000", "8,300", "10"]),
        ("suzuki@", "2027-05", ["要対応", "8,000", "8,500", "35"]),
        ("suzuki@", "2027-06", ["要対応", "8,000", "9,000", "40"]),
    ];
    for (who, period, [rating, budget, forecast, late]) in answers {
        let (status, html) = pmoflow_tests::mail::answer_on_page(
            &link(who, period),
            &[
                ("field:総合評価", rating),
                ("field:予算額", budget),
                ("field:見込額", forecast),
                ("field:遅延日数", late),
            ],
        )
        .await;
        assert_eq!(status, 200, "{html}");
    }
    let (_driver, c) = browser().await;

    // The answer page: a select of the three ratings, number inputs with their unit.
    c.goto(&link("yamada@", "2027-06")).await.unwrap();
    let options: Vec<String> = {
        let mut out = Vec::new();
        for o in c
            .find_all(Locator::Css("select[name='field:総合評価'] option"))
            .await
            .unwrap()
        {
            out.push(o.text().await.unwrap());
        }
        out
    };
    assert_eq!(options, ["（選択してください）", "良好", "注意", "要対応"]);
    let unit = c
        .find(Locator::Css(".with-unit .unit"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert_eq!(unit, "万円");
    c.find(Locator::Css(
        "select[name='field:総合評価'] option[value='注意']",
    ))
    .await
    .unwrap()
    .click()
    .await
    .unwrap();
    for (name, value) in [
        ("予算額", "12,000"),
        ("見込額", "たくさん"),
        ("遅延日数", "12"),
    ] {
        c.find(Locator::Css(&format!("input[name='field:{name}']")))
            .await
            .unwrap()
            .send_keys(value)
            .await
            .unwrap();
    }
    submit(&c).await;
    let src = wait_source(&c, "入力内容を確認してください").await;
    assert!(
        src.contains("見込額は数値で入力してください（入力値: 「たくさん」）"),
        "{src}"
    );
    // The values are kept: the choice still selected, the numbers still there.
    let kept = c
        .find(Locator::Css("input[name='field:予算額']"))
        .await
        .unwrap()
        .prop("value")
        .await
        .unwrap();
    assert_eq!(kept.as_deref(), Some("12,000"));
    let selected = c
        .find(Locator::Css("select[name='field:総合評価'] option:checked"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert_eq!(selected, "注意");
    shot(&c, "answer-422").await;
    let forecast = c
        .find(Locator::Css("input[name='field:見込額']"))
        .await
        .unwrap();
    forecast.clear().await.unwrap();
    forecast.send_keys("1億3,000万円").await.unwrap();
    submit(&c).await;
    wait_source(&c, "回答を受け付けました").await;

    // Log in and look at the portfolio.
    log_in(&c, &base, &token).await;
    wait_source(&c, "pmo-desk").await;
    c.goto(&format!("{base}/portfolio")).await.unwrap();
    let rows = c
        .find_all(Locator::Css("#portfolio tr[data-subject]"))
        .await
        .unwrap();
    let mut order = Vec::new();
    for r in &rows {
        order.push(r.attr("data-subject").await.unwrap().unwrap());
    }
    assert_eq!(order, ["P02", "P01"], "要対応 first");
    let june = c
        .find(Locator::Css(
            "tr[data-subject='P01'] td[data-period='2027-06']",
        ))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert_eq!(june, "注意");
    shot(&c, "portfolio").await;
    // Filtered by the latest rating.
    c.goto(&format!(
        "{base}/portfolio?value=%E8%A6%81%E5%AF%BE%E5%BF%9C"
    ))
    .await
    .unwrap();
    assert_eq!(
        c.find_all(Locator::Css("#portfolio tr[data-subject]"))
            .await
            .unwrap()
            .len(),
        1
    );

    // One project's page: a point per period on the chart, and the API's numbers in the table.
    c.goto(&format!("{base}/portfolio/P01?workflow=status"))
        .await
        .unwrap();
    let src = wait_source(&c, "予算額・見込額の推移（万円）").await;
    let points = c
        .find_all(Locator::Css("svg.chart circle.point[data-series='見込額']"))
        .await
        .unwrap();
    let mut seen = Vec::new();
    for p in &points {
        seen.push((
            p.attr("data-period").await.unwrap().unwrap(),
            p.attr("data-value").await.unwrap().unwrap(),
        ));
    }
    let api: Json = reqwest::Client::new()
        .get(format!("{base}/api/portfolio?subject=P01"))
        .bearer_auth(&token)
        .expect_json(200)
        .await;
    let expected: Vec<(String, String)> = api["entries"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            (
                e["period"].as_str().unwrap().to_string(),
                e["values"]["見込額"]["value"].to_string(),
            )
        })
        .collect();
    assert_eq!(
        seen,
        vec![
            ("2027-04".to_string(), "11800".to_string()),
            ("2027-05".into(), "12600".into()),
            ("2027-06".into(), "13000".into()),
        ]
    );
    assert_eq!(seen, expected);
    let table: Vec<String> = {
        let mut out = Vec::new();
        for td in c
            .find_all(Locator::Css("#history tr[data-period] td"))
            .await
            .unwrap()
        {
            out.push(td.text().await.unwrap());
        }
        out
    };
    assert_eq!(
        &table[..8],
        [
            "2027-04",
            "回答済",
            "Webフォーム",
            "良好",
            "12,000万円",
            "11,800万円",
            "0日",
            "回答内容"
        ]
    );
    assert!(table.contains(&"13,000万円".to_string()), "{table:?}");
    assert!(!src.contains("<script"), "no script on the page");
    shot(&c, "portfolio-subject").await;
}
