//! The five shipped workflows, simulated over their natural period with the shipped scenarios
//! (`workflows/scenarios/*.toml`): the real engine, templates, reply intake and plugins on a
//! simulated clock. Each timeline is compared with its golden file
//! (`fixtures/simulate/WORKFLOW.txt`, rewritten with `BLESS=1`), and the facts that matter are
//! asserted from the JSON timeline: business days, who gets reminded, when escalations happen,
//! the numbers in the reports.

use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::Value;

use pmoflow_tests::Succeeds;
use pmoflow_tests::bin;
use pmoflow_tests::golden::{GoldenSet, Mode, fixtures_root};

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn simulate(workflow: &str, from: &str, until: &str, format: &str) -> String {
    let scenario = format!("workflows/scenarios/{workflow}.toml");
    let out = Command::new(bin())
        .args([
            "simulate",
            workflow,
            "--from",
            from,
            "--until",
            until,
            "--answers",
            &scenario,
            "--format",
            format,
        ])
        .current_dir(root())
        .succeeds();
    String::from_utf8(out.stdout).unwrap()
}

/// The shipped workflows with a golden timeline, each compared by its own test below.
const SIMULATED: [&str; 5] = [
    "budget-request-cycle",
    "domain-renewal-check",
    "emergency-escalation",
    "pjmo-status-collection",
    "quarterly-audit-reminder",
];

fn golden(workflow: &str, from: &str, until: &str) -> Vec<Value> {
    assert!(
        SIMULATED.contains(&workflow),
        "{workflow} is not in SIMULATED"
    );
    let text = simulate(workflow, from, until, "text");
    let dir = fixtures_root().join("simulate");
    let mut set = GoldenSet::new(&dir, &["txt"], Mode::from_env());
    set.check(&dir.join(format!("{workflow}.txt")), &text);
    // Only this file is this test's business; the others belong to their own tests.
    let problems: Vec<String> = set
        .report()
        .into_iter()
        .filter(|p| !p.contains("a golden file with no fixture"))
        .collect();
    assert!(
        problems.is_empty(),
        "{workflow}: BLESS=1 rewrites it if the change is intended\n{}",
        problems.join("\n")
    );
    let json: Value = serde_json::from_str(&simulate(workflow, from, until, "json")).unwrap();
    json["events"].as_array().unwrap().clone()
}

/// Every timeline golden belongs to a shipped workflow that a test simulates, and every
/// shipped workflow has one.
#[test]
fn every_timeline_golden_has_its_workflow() {
    let dir = fixtures_root().join("simulate");
    let mut found: Vec<String> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    found.sort();
    let mut want: Vec<String> = SIMULATED.iter().map(|w| format!("{w}.txt")).collect();
    // The status collection also has a year: its portfolio.
    want.push("pjmo-status-collection-year.txt".into());
    want.sort();
    assert_eq!(found, want, "golden timelines in {}", dir.display());
    let mut shipped: Vec<String> = std::fs::read_dir(root().join("workflows"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "toml"))
        .map(|p| p.file_stem().unwrap().to_string_lossy().into_owned())
        .collect();
    shipped.retain(|w| w != "hello"); // the one-step example has no period to simulate
    shipped.sort();
    assert_eq!(
        shipped, SIMULATED,
        "every shipped workflow has a simulated year"
    );
}

fn mails<'a>(events: &'a [Value], subject_part: &str) -> Vec<&'a Value> {
    events
        .iter()
        .filter(|e| e["kind"] == "email" && e["summary"].as_str().unwrap().contains(subject_part))
        .collect()
}

fn to(e: &Value) -> Vec<String> {
    e["to"].as_array().map_or_else(Vec::new, |a| {
        a.iter().map(|x| x.as_str().unwrap().to_string()).collect()
    })
}

/// Local (JST) "YYYY-MM-DD HH:MM" of an event.
fn jst(e: &Value) -> String {
    let t = chrono::DateTime::parse_from_rfc3339(e["at"].as_str().unwrap()).unwrap();
    t.with_timezone(&chrono_tz::Asia::Tokyo)
        .format("%Y-%m-%d %H:%M")
        .to_string()
}

fn times(list: &[&Value]) -> Vec<String> {
    let mut t: Vec<String> = list.iter().map(|e| jst(e)).collect();
    t.dedup();
    t
}

#[test]
fn pjmo_status_collection_over_three_months() {
    let events = golden("pjmo-status-collection", "2027-04-01", "2027-06-30");
    // Requests on the first business day (May 1–5 are a weekend and holidays: May 6).
    let asks = mails(&events, "【要回答】");
    assert_eq!(asks.len(), 12);
    assert_eq!(
        times(&asks),
        ["2027-04-01 09:00", "2027-05-06 09:00", "2027-06-01 09:00"]
    );
    // Deadline: business day 5 (4/7, 5/12, 6/7) 17:00, in the subject.
    assert!(
        asks[0]["summary"]
            .as_str()
            .unwrap()
            .contains("【4月7日(水)締切】")
    );
    // Reminders the business day before at 10:00, only to those who had not answered.
    let reminders = mails(&events, "【リマインド】");
    assert_eq!(
        times(&reminders),
        ["2027-04-06 10:00", "2027-05-11 10:00", "2027-06-04 10:00"]
    );
    for r in &reminders {
        let who = to(r);
        assert!(
            who == ["watanabe@pjmo-c.example.go.jp"] || who == ["mori@pjmo-d.example.go.jp"],
            "reminder to {who:?}"
        );
    }
    assert_eq!(reminders.len(), 6);
    // 再送 one business day late at 09:00 with the project owner in cc.
    let resends = mails(&events, "【再送・要回答】");
    assert_eq!(resends.len(), 6);
    assert_eq!(
        times(&resends),
        ["2027-04-08 09:00", "2027-05-13 09:00", "2027-06-08 09:00"]
    );
    let mori = resends
        .iter()
        .find(|e| to(e) == ["mori@pjmo-d.example.go.jp"])
        .unwrap();
    assert_eq!(mori["cc"][0], "shimizu@example.go.jp");
    // Three business days late: the PMO head is told, naming only the one who never answered.
    let escalations = mails(&events, "未回答のプロジェクト");
    assert_eq!(
        times(&escalations),
        ["2027-04-12 09:00", "2027-05-17 09:00", "2027-06-10 09:00"]
    );
    for e in &escalations {
        assert_eq!(to(e), ["nakamura@pmo.example.go.jp"]);
        let body = e["body"].as_str().unwrap();
        assert!(body.contains("P04 職員ポータル改修"), "{body}");
        assert!(!body.contains("P03"), "{body}");
    }
    // Support cases: the 20% overrun (P03) every month; 要対応 and 35 days late (P02) from May.
    let cases = mails(&events, "PJMO支援案件の起票");
    let subjects: Vec<&str> = cases
        .iter()
        .map(|e| e["summary"].as_str().unwrap())
        .collect();
    assert_eq!(subjects.iter().filter(|s| s.contains("P03")).count(), 3);
    assert_eq!(subjects.iter().filter(|s| s.contains("P02")).count(), 2);
    let p02 = cases
        .iter()
        .find(|e| e["summary"].as_str().unwrap().contains("P02"))
        .unwrap();
    assert!(
        p02["body"]
            .as_str()
            .unwrap()
            .contains("総合評価が要対応、35日遅延"),
        "{}",
        p02["body"]
    );
    // Portfolio summary on business day 8 at 10:00, with the CSV.
    let summaries = mails(&events, "ポートフォリオ概況");
    assert_eq!(
        times(&summaries),
        ["2027-04-12 10:00", "2027-05-17 10:00", "2027-06-10 10:00"]
    );
    assert!(
        summaries[0]["summary"]
            .as_str()
            .unwrap()
            .contains("回答 3/4件、要対応 0件")
    );
    assert!(
        summaries[1]["summary"]
            .as_str()
            .unwrap()
            .contains("回答 3/4件、要対応 1件")
    );
    assert_eq!(
        summaries[1]["attachments"][0]["name"],
        serde_json::json!("portfolio-2027-05.xlsx")
    );
    let csv = summaries[1]["attachments"][1]["text"].as_str().unwrap();
    let lines: Vec<&str> = csv.lines().collect();
    assert_eq!(lines.len(), 5, "{csv}");
    assert_eq!(
        lines[1],
        "P01,電子申請システム刷新,佐藤 花子,回答済,良好,120000000,118000000,-1.7,0,"
    );
    assert_eq!(
        lines[2],
        "P02,統計データ基盤構築,鈴木 次郎,回答済,要対応,80000000,85000000,6.3,35,総合評価が要対応・35日遅延"
    );
    assert_eq!(
        lines[3],
        "P03,文書管理システム運用,渡辺 涼,期限後回答,注意,45000000,54000000,20,5,経費超過 20%"
    );
    assert_eq!(
        lines[4],
        "P04,職員ポータル改修,森 拓也,未回答,未回答,30000000,,,0,"
    );
}

#[test]
fn budget_request_cycle_over_a_fiscal_year() {
    let events = golden("budget-request-cycle", "2027-04-01", "2028-03-31");
    let calls = mails(&events, "【ご依頼】");
    assert_eq!(calls.len(), 4);
    assert_eq!(times(&calls), ["2027-04-01 09:00"]);
    assert!(
        calls[0]["summary"]
            .as_str()
            .unwrap()
            .contains("令和10年度概算要求")
    );
    assert!(
        calls[0]["summary"]
            .as_str()
            .unwrap()
            .contains("【5月31日(月)締切】")
    );
    // Reminders 7, 3 and 1 business days before the deadline, to those who had not submitted.
    let reminders = mails(&events, "【リマインド】");
    assert_eq!(
        times(&reminders),
        ["2027-05-20 10:00", "2027-05-26 10:00", "2027-05-28 10:00"]
    );
    assert!(reminders.iter().all(|r| {
        let who = to(r);
        who == ["watanabe@pjmo-c.example.go.jp"] || who == ["mori@pjmo-d.example.go.jp"]
    }));
    let resends = mails(&events, "【再送・要回答】");
    assert_eq!(times(&resends), ["2027-06-01 09:00"]);
    assert_eq!(resends.len(), 2);
    // Three business days late: the PMO head gets the one that never came.
    let late = mails(&events, "未提出");
    assert_eq!(times(&late), ["2027-06-03 09:00"]);
    assert!(
        late[0]["body"]
            .as_str()
            .unwrap()
            .contains("P04 職員ポータル改修")
    );
    // The incomplete submission goes back as 【要修正】 with 3 business days.
    let fix = mails(&events, "【要修正】");
    assert_eq!(fix.len(), 1);
    assert_eq!(to(fix[0]), ["suzuki@pjmo-b.example.go.jp"]);
    assert!(
        fix[0]["summary"]
            .as_str()
            .unwrap()
            .contains("【6月8日(火)締切】")
    );
    assert!(fix[0]["body"].as_str().unwrap().contains("積算根拠 KPI"));
    // Gates: the reviewed list to the DG-CIO with the corrected amounts.
    let gate = mails(&events, "一覧（PMOレビュー後）");
    assert_eq!(to(gate[0]), ["kobayashi@example.go.jp"]);
    let body = gate[0]["body"].as_str().unwrap();
    assert!(
        body.contains(
            "P02 統計データ基盤構築: 回答済（修正依頼: 回答済） / 区分 新規 / 整備経費 60,000千円"
        ),
        "{body}"
    );
    assert!(body.contains("P04 職員ポータル改修: 未回答"), "{body}");
    let handover = mails(&events, "引継ぎ");
    assert_eq!(times(&handover), ["2027-07-01 10:00"]);
    assert_eq!(to(handover[0]), ["kato@kaikei.example.go.jp"]);
    assert_eq!(
        handover[0]["attachments"][0]["name"],
        serde_json::json!("budget-requests-2027.xlsx")
    );
    let csv = handover[0]["attachments"][1]["text"].as_str().unwrap();
    assert_eq!(csv.lines().count(), 5, "{csv}");
    // 佐藤's amounts as read from the returned 様式 (in 千円), 渡辺's from the mail body.
    assert!(
        csv.contains("P01,電子申請システム刷新,回答済,\"改修\",\"85000\",\"33000\""),
        "{csv}"
    );
    assert!(
        csv.contains("P03,文書管理システム運用,遅延回答,\"運用\",\"0\",\"45000\""),
        "{csv}"
    );
    assert_eq!(times(&mails(&events, "事前レビュー")), ["2027-07-08 10:00"]);
    // Aug 31 2027 is a Tuesday: the milestone notice goes 5 business days before.
    assert_eq!(
        times(&mails(&events, "概算要求の提出")),
        ["2027-08-24 10:00"]
    );
    let draft = mails(&events, "政府予算案の額について");
    assert_eq!(draft.len(), 4);
    assert_eq!(times(&draft), ["2027-12-24 15:00"]);
    let sato = draft
        .iter()
        .find(|e| to(e) == ["sato@pjmo-a.example.go.jp"])
        .unwrap();
    assert!(sato["body"].as_str().unwrap().contains("118,000,000円"));
}

#[test]
fn quarterly_audit_over_a_fiscal_year() {
    let events = golden("quarterly-audit-reminder", "2027-04-01", "2028-03-31");
    let notices = mails(&events, "【ご連絡】第");
    // First business day of each quarter; January's is the 4th (1/1–1/3 are closed).
    assert_eq!(
        times(&notices),
        [
            "2027-04-01 09:30",
            "2027-07-01 09:30",
            "2027-10-01 09:30",
            "2028-01-04 09:30"
        ]
    );
    assert_eq!(notices.len(), 5, "Q4 audits two systems");
    // Evidence due in 15 business days: 4/1 → 4/22.
    assert!(
        notices[0]["summary"]
            .as_str()
            .unwrap()
            .contains("【4月22日(木)締切】")
    );
    // Reminders 5 and 1 business days before go only to the PJMO that did not submit (森, Q4).
    let reminders = mails(&events, "【リマインド】");
    assert_eq!(reminders.len(), 2);
    assert!(
        reminders
            .iter()
            .all(|r| to(r) == ["mori@pjmo-d.example.go.jp"])
    );
    assert_eq!(times(&reminders), ["2028-01-19 10:00", "2028-01-25 10:00"]);
    // Open findings are followed up every quarter, at the same time as the notices.
    let followups = mails(&events, "監査指摘事項");
    assert_eq!(followups.len(), 8);
    assert_eq!(times(&followups), times(&notices));
    // Quarter-end reports on the last business day of the quarter.
    let reports = mails(&events, "システム監査の実施状況");
    assert_eq!(
        times(&reports),
        [
            "2027-06-30 10:00",
            "2027-09-30 10:00",
            "2027-12-28 10:00",
            "2028-03-31 10:00"
        ]
    );
    let q4 = reports[3]["body"].as_str().unwrap();
    assert!(
        q4.contains("職員ポータル（脆弱性対策）: 資料 未回答"),
        "{q4}"
    );
    assert!(
        q4.contains("電子申請システム（前回指摘事項の改善状況）: 資料 回答済"),
        "{q4}"
    );
    assert!(
        q4.contains(
            "F-2026-05 電子申請システム「操作ログの保存期間が規程（1年）に満たない」: 完了"
        ),
        "{q4}"
    );
}

#[test]
fn domain_renewal_over_a_year() {
    let events = golden("domain-renewal-check", "2027-04-01", "2028-03-31");
    // toukei-example.jp expires 2027-07-31: notices at 90, 60 and 30 days, then it is renewed.
    let toukei = mails(&events, "ドメイン toukei-example.jp の登録期限");
    assert_eq!(
        times(&toukei),
        ["2027-05-02 08:00", "2027-06-01 08:00", "2027-07-01 08:00"]
    );
    assert!(
        toukei
            .iter()
            .all(|e| to(e) == ["suzuki@pjmo-b.example.go.jp"])
    );
    // Escalation at 30 days for registrations not confirmed; portal-example.jp (手続中) is not.
    let escalations = mails(&events, "の更新が確認できません");
    let names: Vec<&str> = escalations
        .iter()
        .map(|e| e["summary"].as_str().unwrap())
        .collect();
    assert_eq!(escalations.len(), 3, "{names:?}");
    assert!(names.iter().all(|n| !n.contains("portal-example.jp")));
    assert_eq!(
        times(&escalations),
        ["2027-07-01 08:00", "2027-10-01 08:00", "2028-03-01 08:00"]
    );
    assert!(
        escalations
            .iter()
            .all(|e| to(e) == ["nakamura@pmo.example.go.jp"])
    );
    // A domain nobody renews gets all six notices.
    let event = mails(&events, "ドメイン event2025-example.jp の登録期限");
    let days: Vec<&str> = event
        .iter()
        .map(|e| {
            let s = e["summary"].as_str().unwrap();
            &s[s.find("残り").unwrap()..s.find("日（").unwrap()]
        })
        .collect();
    assert_eq!(
        days,
        ["残り90", "残り60", "残り30", "残り14", "残り7", "残り1"]
    );
    // The certificate renewed on 5/15 gets no 1-day notice.
    let cert = mails(&events, "shinsei.example.go.jp のサーバ証明書");
    assert_eq!(
        times(&cert)[..3],
        ["2027-04-20 08:00", "2027-05-06 08:00", "2027-05-13 08:00"]
    );
    // The yearly inventory on the first business day of April, with a CSV of the register.
    let inventory = mails(&events, "ドメイン台帳の棚卸し");
    assert_eq!(times(&inventory), ["2027-04-01 10:00"]);
    let csv = inventory[0]["attachments"][0]["text"].as_str().unwrap();
    assert_eq!(csv.lines().count(), 5, "{csv}");
    assert!(
        csv.contains("toukei-example.jp,統計データ公開サイト,使用中,指定事業者A,2027-07-31,121,"),
        "{csv}"
    );
}

#[test]
fn emergency_escalation_over_a_night() {
    let events = golden(
        "emergency-escalation",
        "2027-06-12 01:00",
        "2027-06-12 23:59",
    );
    let first = mails(&events, "【緊急・第一報】");
    // Staff at 02:14 (and the Digital Agency, informed), the head 15 minutes later; his
    // acknowledgement at 02:39 stops the chain: CSIRT and the CISO are not alerted.
    assert_eq!(times(&first), ["2027-06-12 02:14", "2027-06-12 02:29"]);
    let first_to: Vec<String> = first.iter().flat_map(|e| to(e)).collect();
    assert_eq!(
        first_to,
        [
            "contact@digital-agency.example.go.jp",
            "ito@pmo.example.go.jp",
            "yamamoto@pmo.example.go.jp",
            "nakamura@pmo.example.go.jp"
        ]
    );
    // Not resolved 2 hours after the acknowledgement: the chain starts again, and this time
    // reaches the third level before CSIRT acknowledges (05:14) through the link.
    let again = mails(&events, "【再通知】");
    assert_eq!(
        times(&again),
        ["2027-06-12 04:39", "2027-06-12 04:54", "2027-06-12 05:09"]
    );
    assert_eq!(mails(&events, "【緊急・再通知】").len(), 0);
    // 続報 every hour (S1) until the end, to everyone alerted so far.
    let updates = mails(&events, "【続報");
    assert_eq!(
        times(&updates),
        [
            "2027-06-12 03:14",
            "2027-06-12 04:14",
            "2027-06-12 05:14",
            "2027-06-12 06:14"
        ]
    );
    // The webhook (the PMO channel) gets the first and third levels (02:14; 04:39 and 05:09
    // in the second round) and every report (four 続報, the 最終報).
    let hooks: Vec<&Value> = events.iter().filter(|e| e["kind"] == "webhook").collect();
    assert_eq!(hooks.len(), 8, "{hooks:?}");
    // Resolved at 06:50: the 最終報 to everyone alerted and the Digital Agency, naming who
    // acknowledged and the pending personal-data deadlines.
    let last = mails(&events, "【最終報】");
    assert_eq!(times(&last), ["2027-06-12 06:50"]);
    assert_eq!(last.len(), 7);
    let body = last[0]["body"].as_str().unwrap();
    assert!(
        body.contains("個人情報保護委員会への速報: 6月15日(火)02:14まで"),
        "{body}"
    );
    assert!(
        body.contains("yoshida@csirt.example.go.jp 様が6月12日(土)05:14に確認（確認リンク）"),
        "{body}"
    );
    // Nothing after the resolution.
    assert!(events.iter().all(|e| jst(e).as_str() <= "2027-06-12 06:50"));
}

#[test]
fn the_readme_sample_is_what_simulate_prints() {
    let readme = std::fs::read_to_string(root().join("README.md")).unwrap();
    let start = readme
        .find("```text\n")
        .expect("a text block in the README")
        + 8;
    let end = start + readme[start..].find("```").unwrap();
    let actual = simulate("pjmo-status-collection", "2027-04-01", "2027-04-30", "text");
    assert_eq!(
        &readme[start..end],
        actual,
        "README.md's sample differs from `pmoflow simulate`: update it"
    );
}

#[test]
fn simulate_takes_a_workflow_file_like_schedule() {
    // The file's directory supplies data, templates and calendar: the same timeline as by id.
    let by_id = simulate("pjmo-status-collection", "2027-04-01", "2027-04-30", "text");
    let out = Command::new(bin())
        .args([
            "simulate",
            "workflows/pjmo-status-collection.toml",
            "--from",
            "2027-04-01",
            "--until",
            "2027-04-30",
            "--answers",
            "workflows/scenarios/pjmo-status-collection.toml",
        ])
        .current_dir(root())
        .succeeds();
    assert_eq!(String::from_utf8_lossy(&out.stdout), by_id);
    // A copy elsewhere, broken: the error names the file, line and column.
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("x.toml"),
        "id = \"x\"\n[[steps]]\nid = \"a\"\naction = \"nope\"\n",
    )
    .unwrap();
    let out = Command::new(bin())
        .args([
            "simulate",
            "x.toml",
            "--from",
            "2027-04-01",
            "--until",
            "2027-04-02",
        ])
        .current_dir(dir.path())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("x.toml:4:10:"), "{err}");
    // An unknown id says what it accepts.
    let out = Command::new(bin())
        .args([
            "simulate",
            "nope",
            "--from",
            "2027-04-01",
            "--until",
            "2027-04-02",
        ])
        .current_dir(root())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("no workflow `nope` in workflows") && err.contains("path of a workflow file"),
        "{err}"
    );
}

#[test]
fn the_shipped_workflows_validate_clean() {
    let out = Command::new(bin())
        .args(["validate", "workflows/"])
        .current_dir(root())
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(stdout.trim(), "ok: 6 workflow(s) valid");
}

#[test]
fn emergency_deadline_timers_fire_while_the_incident_is_open() {
    // Personal data involved, nobody resolves for four days: the 速報 timer (3 days) reminds a
    // day before and at the deadline, to the CISO and the PMO head; the 確報 (30 days) not yet.
    let dir = tempfile::tempdir().unwrap();
    let scenario = dir.path().join("timers.toml");
    std::fs::write(
        &scenario,
        "[[trigger]]\nat = \"2027-06-12 02:14\"\ninputs = { severity = \"S3\", system = \"職員ポータル\", summary = \"委託先からの情報漏えいの疑い\", personal_data = true }\n\n[[answer]]\nwho = \"ito@pmo.example.go.jp\"\nafter = \"5m\"\n",
    )
    .unwrap();
    let out = Command::new(bin())
        .args([
            "simulate",
            "emergency-escalation",
            "--from",
            "2027-06-12 00:00",
            "--until",
            "2027-06-16 00:00",
            "--answers",
            scenario.to_str().unwrap(),
            "--format",
            "json",
        ])
        .current_dir(root())
        .succeeds();
    let json: Value = serde_json::from_slice(&out.stdout).unwrap();
    let events = json["events"].as_array().unwrap();
    let notice = mails(events, "【期限通知】個人情報保護委員会への速報");
    let due = mails(events, "【期限到来】個人情報保護委員会への速報");
    assert_eq!(times(&notice), ["2027-06-14 02:14"]);
    assert_eq!(times(&due), ["2027-06-15 02:14"]);
    let mut who: Vec<String> = due.iter().flat_map(|e| to(e)).collect();
    who.sort();
    assert_eq!(
        who,
        ["matsumoto@example.go.jp", "nakamura@pmo.example.go.jp"]
    );
    assert!(mails(events, "確報").is_empty());
    // The staff member acknowledged at 02:19: nobody else was alerted.
    assert_eq!(mails(events, "【緊急・第一報】").len(), 3);
    // S3: 続報 every 4 hours while the incident stays open.
    let updates = mails(events, "【続報");
    assert_eq!(jst(updates[0]), "2027-06-12 06:14");
}

#[test]
fn a_bad_scenario_is_refused_with_its_line_and_column() {
    let dir = tempfile::tempdir().unwrap();
    for (text, expected) in [
        (
            "[[answer]]\nwho = \"*\"\nafter = \"soon\"\n",
            "timers.toml:3:9: invalid duration `soon`",
        ),
        (
            "[[trigger]]\nat = \"tomorrow\"\n",
            "timers.toml:2:6: `tomorrow` is not a date",
        ),
        (
            "[[answer]]\nwho = \"*\"\nvia = \"fax\"\n",
            "timers.toml:3:7: `via` is \"email\" or \"web\"",
        ),
        (
            "[[answer]]\nwho = \"*\"\nafer = \"1d\"\n",
            "timers.toml:3:1: unknown field `afer`",
        ),
    ] {
        let scenario = dir.path().join("timers.toml");
        std::fs::write(&scenario, text).unwrap();
        let out = Command::new(bin())
            .args([
                "simulate",
                "emergency-escalation",
                "--from",
                "2027-06-12",
                "--until",
                "2027-06-13",
                "--answers",
                scenario.to_str().unwrap(),
            ])
            .current_dir(root())
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{err}");
        assert!(err.contains(expected), "{err}");
        assert!(out.stdout.is_empty(), "nothing is simulated");
    }
}

/// A simulated year of the status collection fills the portfolio: 12 months × 4 projects, typed,
/// 未回答 for the one who never answers; `--portfolio` writes the workbook of that year.
#[test]
fn pjmo_status_collection_over_a_year_fills_the_portfolio() {
    let work = tempfile::tempdir().unwrap();
    let xlsx = work.path().join("year.xlsx");
    let out = Command::new(bin())
        .args([
            "simulate",
            "pjmo-status-collection",
            "--from",
            "2027-04-01",
            "--until",
            "2028-03-31",
            "--answers",
            "workflows/scenarios/pjmo-status-collection.toml",
            "--portfolio",
            xlsx.to_str().unwrap(),
        ])
        .current_dir(root())
        .succeeds();
    let text = String::from_utf8(out.stdout).unwrap();
    let dir = fixtures_root().join("simulate");
    let mut set = GoldenSet::new(&dir, &["txt"], Mode::from_env());
    set.check(&dir.join("pjmo-status-collection-year.txt"), &text);
    let problems: Vec<String> = set
        .report()
        .into_iter()
        .filter(|p| !p.contains("a golden file with no fixture"))
        .collect();
    assert!(problems.is_empty(), "{}", problems.join("\n"));
    let portfolio: Vec<&str> = text
        .lines()
        .skip_while(|l| !l.starts_with("portfolio "))
        .skip(1)
        .take_while(|l| l.starts_with("  "))
        .collect();
    assert_eq!(portfolio.len(), 48, "{portfolio:#?}");
    assert_eq!(
        portfolio
            .iter()
            .filter(|l| l.starts_with("  P04 ") && l.ends_with(": 未回答"))
            .count(),
        12
    );
    assert!(portfolio.contains(
        &"  P02 2027-05: 回答済 総合評価=要対応, 予算額=8,000万円, 見込額=8,500万円, 遅延日数=35日, 支援要望=ベンダー調整への同席を希望"
    ));
    assert!(portfolio.contains(
        &"  P03 2028-03: 期限後回答 総合評価=注意, 予算額=4,500万円, 見込額=5,400万円, 遅延日数=5日"
    ));
    let charts: Value = serde_json::from_str(&pmoflow_tests::workbooks_py(&[
        "charts",
        xlsx.to_str().unwrap(),
    ]))
    .unwrap();
    let forecast = &charts["見込額"][0]["series"][1];
    assert_eq!(forecast["name_value"], "統計データ基盤構築");
    assert_eq!(forecast["category_values"].as_array().unwrap().len(), 12);
    assert_eq!(forecast["value_values"][0], 8300);
    assert_eq!(forecast["value_values"][11], 8500);
}
