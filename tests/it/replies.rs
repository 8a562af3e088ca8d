//! The reply corpus (`tests/fixtures/replies/*.eml`, made by `make_corpus.py`): messages shaped
//! like real clients' answers to a status request. Each is parsed, classified, correlated and
//! its answers read; the outcome is compared with `golden/NAME.json` (`BLESS=1` rewrites them),
//! and the cases that matter most are also asserted one by one below.

use std::path::Path;

use pmoflow::inbound::{self, Kind, correlate, reply};
use pmoflow_tests::golden::{GoldenSet, Mode, fixtures_root};
use serde_json::{Value, json};

const PATTERN: &str = "pmo+{token}@example.go.jp";
const TOKEN: &str = "k7x2m4p6q5r3s5t7v2w4y6z3ab";
const LEAD: &str = "yamada@pjmo-a.example.go.jp";

fn outcome(raw: &[u8]) -> Value {
    let msg = match inbound::parse(raw, inbound::DEFAULT_MAX_SIZE) {
        Ok(m) => m,
        Err(e) => return json!({ "error": e.to_string() }),
    };
    let fields: Vec<String> = ["総合評価", "進捗", "経費", "リスク", "課題"]
        .map(String::from)
        .to_vec();
    let reading = reply::read(&msg.text, &fields, msg.from_name.as_deref());
    let answers = reading.answers;
    let mut out = serde_json::to_value(&msg.kind).unwrap();
    if let Some(place) = reading.found_in {
        out["fields_found_in"] = json!(place);
    }
    let rest = json!({
        "from": msg.from,
        "sender_is_addressee": msg.from.as_deref() == Some(LEAD),
        "subject": msg.subject,
        "keys": correlate::keys(&msg, PATTERN),
        "fields": answers.fields,
        "free_text": answers.free_text,
        "attachments": msg.attachments.iter().map(|a| json!({
            "name": a.name, "content_type": a.content_type, "size": a.size,
        })).collect::<Vec<_>>(),
    });
    out.as_object_mut()
        .unwrap()
        .extend(rest.as_object().unwrap().clone());
    out
}

fn corpus() -> Vec<(String, Vec<u8>)> {
    let dir = fixtures_root().join("replies");
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "eml"))
        .collect();
    files.sort();
    files
        .into_iter()
        .map(|p| {
            (
                p.file_stem().unwrap().to_string_lossy().into_owned(),
                std::fs::read(&p).unwrap(),
            )
        })
        .collect()
}

#[test]
fn reply_corpus_matches_golden_files() {
    let dir = fixtures_root().join("replies/golden");
    let corpus = corpus();
    assert!(corpus.len() >= 30, "corpus missing: {}", corpus.len());
    let mut set = GoldenSet::new(&dir, &["json"], Mode::from_env());
    for (name, raw) in &corpus {
        let got = serde_json::to_string_pretty(&outcome(raw)).unwrap() + "\n";
        set.check(&dir.join(format!("{name}.json")), &got);
    }
    assert_eq!(set.finish(), corpus.len());
}

fn case(name: &str) -> Value {
    let (_, raw) = corpus()
        .into_iter()
        .find(|(n, _)| n.starts_with(name))
        .unwrap_or_else(|| panic!("no case {name}"));
    outcome(&raw)
}

fn address_key() -> Value {
    json!({ "by": "address", "value": TOKEN })
}

#[test]
fn answers_are_read_from_every_client_shape() {
    // Gmail top-posting: the five fields, the closing line as free text, the quote gone.
    let c = case("01-");
    assert_eq!(c["kind"], "reply");
    assert_eq!(c["keys"][0], address_key());
    assert_eq!(c["keys"][1], json!({ "by": "message_id", "value": TOKEN }));
    assert_eq!(c["keys"][2], json!({ "by": "subject_tag", "value": 12 }));
    assert_eq!(c["fields"]["総合評価"], "注意");
    assert_eq!(c["fields"]["進捗"], 85);
    assert_eq!(
        c["fields"]["経費"],
        "予算 1,200万円 / 契約額 1,100万円 / 執行額 600万円 / 見込 1,250万円"
    );
    assert_eq!(c["free_text"], "よろしくお願いします。\n山田");
    // Inline answers between quoted lines.
    let c = case("02-");
    assert_eq!(c["fields"]["総合評価"], "良好");
    assert_eq!(c["fields"]["進捗"], 100);
    assert_eq!(c["fields"]["課題"], "なし");
    assert_eq!(
        c["free_text"],
        "お疲れ様です。山田です。下記のとおり回答します。"
    );
    // Outlook HTML only: converted, full-width colons and digits normalised.
    let c = case("03-");
    assert_eq!(c["fields"]["総合評価"], "要対応");
    assert_eq!(c["fields"]["進捗"], "60%(3週間遅延)");
    assert_eq!(c["fields"]["リスク"], "移行データの品質");
    assert!(!c["free_text"].as_str().unwrap().contains("差出人"));
    for (name, rating) in [
        ("04-", "良好"),
        ("05-", "注意"),
        ("06-", "良好"),
        ("07-", "注意"),
        ("08-", "注意"),
        ("09-", "良好"),
        ("10-", "良好"),
        ("11-", "注意"),
        ("12-", "要対応"),
        ("16-", "良好"),
        ("26-", "注意"),
        ("30-", "良好"),
    ] {
        let c = case(name);
        assert_eq!(c["kind"], "reply", "{name}");
        assert_eq!(c["fields"]["総合評価"], rating, "{name}: {c:#}");
        assert!(c["sender_is_addressee"].as_bool().unwrap(), "{name}");
        assert!(
            !c["free_text"].as_str().unwrap().contains("PMO事務局です"),
            "{name}: the quoted request leaked into the answer: {c:#}"
        );
    }
    // CP932 extension characters survive a Shift_JIS label.
    assert_eq!(
        case("08-")["fields"]["課題"],
        "①サーバ調達の遅延\n②髙橋課長へ要相談(12/10～)"
    );
    assert_eq!(case("07-")["fields"]["リスク"], "調達の遅れ");
    assert_eq!(case("10-")["fields"]["進捗"], 95);
    assert_eq!(case("10-")["fields"]["経費"], 102);
    assert_eq!(case("11-")["fields"]["進捗"], 80);
    assert_eq!(
        case("12-")["fields"]["課題"],
        "・仕様変更への対応\n・テスト環境の不足"
    );
    assert_eq!(case("12-")["free_text"], "引き続きご支援をお願いします。");
    assert_eq!(case("09-")["free_text"], "");
    assert_eq!(case("31-")["fields"]["総合評価"], "リョウコウ");
    assert_eq!(case("29-")["attachments"][0]["name"], "状況報告.pdf");
    assert_eq!(
        case("29-")["attachments"][0]["content_type"],
        "application/pdf"
    );
    assert_eq!(case("27-")["free_text"], "了解しました。対応します。");
}

#[test]
fn answers_written_into_the_quote_in_tables_and_under_banners_are_read() {
    // A value on its own line under the quoted `> 項目:` it answers; a label left empty is
    // not answered.
    let c = case("51-");
    assert_eq!(c["fields"]["総合評価"], "良好", "{c:#}");
    assert_eq!(c["fields"]["進捗"], 90);
    assert_eq!(c["fields"]["経費"], "予算どおり");
    assert_eq!(c["fields"]["課題"], "ベンダーの要員交代");
    assert!(c["fields"].get("リスク").is_none(), "{c:#}");
    assert_eq!(c["free_text"], "お疲れ様です。");
    // The whole request quoted, cut marker included, answers typed between its lines.
    let c = case("52-");
    assert_eq!(c["fields"]["総合評価"], "注意", "{c:#}");
    assert_eq!(c["fields"]["課題"], "移行計画の見直し");
    assert_eq!(c["free_text"], "お疲れ様です。下記のとおりです。");
    // Outlook without `>`: the request's own form filled in below the original's header block,
    // read because nothing above answers.
    let c = case("53-");
    assert_eq!(c["fields_found_in"], "original_form", "{c:#}");
    assert_eq!(c["fields"]["総合評価"], "良好");
    assert_eq!(c["fields"]["進捗"], 95);
    assert_eq!(c["fields"]["課題"], "特になし");
    assert!(c["fields"].get("経費").is_none());
    assert_eq!(c["free_text"], "お疲れ様です。下記にご回答しました。");
    // A table pasted from Excel: names in the first column (tab-separated text), or in the
    // first row of an HTML table (Outlook's cells with paragraphs inside).
    let c = case("54-");
    assert_eq!(c["fields"]["総合評価"], "注意", "{c:#}");
    assert_eq!(c["fields"]["進捗"], 70);
    assert_eq!(c["fields"]["経費"], "1,200万円 (見込)");
    assert_eq!(c["fields"]["課題"], "要員の確保");
    assert!(c["fields"].get("リスク").is_none());
    let c = case("55-");
    assert_eq!(c["fields"]["総合評価"], "要対応", "{c:#}");
    assert_eq!(c["fields"]["進捗"], 55);
    assert_eq!(c["fields"]["経費"], "予算超過の見込み");
    assert_eq!(c["fields"]["課題"], "仕様の追加");
    assert_eq!(c["free_text"], "お疲れ様です。\nよろしくお願いいたします。");
    // A byte-order mark, and format=flowed with DelSp=yes undone.
    let c = case("56-");
    assert_eq!(c["fields"]["総合評価"], "良好", "{c:#}");
    assert_eq!(
        c["fields"]["課題"],
        "移行データの品質確認に時間を要しており、来週までに完了の見込みです。"
    );
    assert_eq!(c["free_text"], "よろしくお願いいたします。");
    // A gateway's banner is neither the answer nor a signature.
    let c = case("57-");
    assert_eq!(c["fields"]["総合評価"], "注意", "{c:#}");
    assert_eq!(c["fields"]["進捗"], 65);
    assert_eq!(c["fields"]["リスク"], "調達の遅れ");
    assert!(!c["free_text"].as_str().unwrap().contains("組織外"));
    // A signature straight under the last value, its address over several lines.
    let c = case("58-");
    assert_eq!(c["fields"]["課題"], "ベンダーとの定例を週次に変更", "{c:#}");
    assert!(
        c["free_text"]
            .as_str()
            .unwrap()
            .contains("中央合同庁舎第5号館 12階")
    );
    // A full-width space, `＝` and an arrow between name and value.
    let c = case("61-");
    assert_eq!(c["fields"]["総合評価"], "良好", "{c:#}");
    assert_eq!(c["fields"]["進捗"], 100);
    assert_eq!(c["fields"]["経費"], "予算内で執行");
    // An .ods 様式 is kept with the answer (intake tells the sender to send .xlsx: see
    // inbound_explain_shows_how_a_message_is_read).
    let c = case("63-");
    assert_eq!(c["fields"]["総合評価"], "良好", "{c:#}");
    assert_eq!(c["attachments"][0]["name"], "kaitou.ods");
    // The answer to a 【要再回答】: only the field that was missing (intake completes the earlier
    // answer with it: requests.rs).
    let c = case("62-");
    assert_eq!(
        c["fields"],
        json!({ "経費": "予算 900万円 / 見込 880万円" }),
        "{c:#}"
    );
}

#[test]
fn correlation_falls_back_from_address_to_references_to_subject_tag() {
    assert_eq!(
        case("13-")["keys"],
        json!([{ "by": "subject_tag", "value": 12 }])
    );
    assert_eq!(
        case("14-")["keys"],
        json!([{ "by": "message_id", "value": TOKEN }])
    );
    assert_eq!(case("15-")["keys"], json!([address_key()]));
    assert_eq!(case("25-")["keys"], json!([]));
    assert_eq!(
        case("31-")["keys"][2],
        json!({ "by": "subject_tag", "value": 12 })
    );
    // A third address is found and correlated, and flagged: the caller quarantines it.
    let c = case("24-");
    assert_eq!(c["keys"][0], address_key());
    assert_eq!(c["sender_is_addressee"], false);
}

#[test]
fn auto_replies_and_bounces_are_recognised() {
    for (name, reason) in [
        ("17-", "Auto-Submitted: auto-replied"),
        ("18-", "subject contains `自動返信`"),
        ("19-", "subject contains `out of office`"),
        ("20-", "X-Autoreply header"),
        ("21-", "Precedence: bulk"),
        ("32-", "sender no-reply@cloud.example.com"),
    ] {
        let c = case(name);
        assert_eq!(c["kind"], "auto_reply", "{name}: {c:#}");
        assert_eq!(c["reason"], reason, "{name}");
    }
    // A text-only report (qmail), sent to the plain envelope sender with the original inline:
    // the recipient from the report, the request from the original's Message-ID.
    for name in ["22-", "23-", "59-"] {
        let c = case(name);
        assert_eq!(c["kind"], "bounce", "{name}: {c:#}");
        assert_eq!(c["recipients"], json!([LEAD]), "{name}");
        assert_eq!(
            c["original_message_id"],
            format!("pmoflow.{TOKEN}@example.go.jp"),
            "{name}"
        );
    }
    // A full mailbox (452 4.2.2) in a text-only report is temporary: never a bounce.
    let c = case("60-");
    assert_eq!(c["kind"], "delivery_report", "{c:#}");
    assert_eq!(c["action"], "delayed");
    assert_eq!(c["recipients"], json!([LEAD]));
    assert_eq!(
        c["original_message_id"],
        format!("pmoflow.{TOKEN}@example.go.jp")
    );
    assert_eq!(
        case("33-")["error"],
        "not a readable email message",
        "malformed input is an error, not a crash"
    );
    // The kinds serialise as the tags used above.
    assert_eq!(
        serde_json::to_value(Kind::Reply).unwrap(),
        json!({ "kind": "reply" })
    );
}

#[test]
fn inbound_explain_shows_how_a_message_is_read() {
    let dir = tempfile::tempdir().unwrap();
    let file =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/replies/08-shift-jis-cp932.eml");
    let (code, out, err) =
        pmoflow_tests::cli(dir.path(), &["inbound", "explain", file.to_str().unwrap()]);
    assert_eq!(code, 0, "{err}");
    let doc: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(doc["kind"], "reply");
    assert_eq!(doc["from"], LEAD);
    assert_eq!(doc["keys"][0], address_key());
    assert_eq!(doc["fields"]["総合評価"], "注意");
    // Standard input, other fields, another reply-address pattern.
    let mut child = std::process::Command::new(pmoflow_tests::bin())
        .args([
            "inbound",
            "explain",
            "--fields",
            "リスク",
            "--reply-address",
            "kanri+{token}@example.go.jp",
        ])
        .current_dir(dir.path())
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let raw = std::fs::read(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/replies/07-iso-2022-jp.eml"),
    )
    .unwrap();
    {
        use std::io::Write;
        child.stdin.take().unwrap().write_all(&raw).unwrap();
    }
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success());
    let doc: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(doc["fields"], json!({ "リスク": "調達の遅れ" }));
    assert_eq!(doc["keys"][0]["by"], "message_id", "{doc:#}");
    // With the request's 様式: the attached workbook is read by the template's defined names and
    // merged with the body, as a reply to that request would be.
    let template =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../workflows/templates/様式1_予算要求.xlsx");
    let filled = dir.path().join("filled.xlsx");
    pmoflow_tests::workbooks_py(&[
        "fill",
        template.to_str().unwrap(),
        filled.to_str().unwrap(),
        &json!({ "区分": "新規", "整備経費": "１，２００" }).to_string(),
    ]);
    let b64 = {
        use base64::Engine;
        base64::engine::general_purpose::STANDARD.encode(std::fs::read(&filled).unwrap())
    };
    let eml = dir.path().join("with-form.eml");
    std::fs::write(
        &eml,
        format!(
            "From: {LEAD}\r\nTo: pmo@example.go.jp\r\nSubject: Re: 様式\r\nMIME-Version: 1.0\r\n\
             Content-Type: multipart/mixed; boundary=\"b\"\r\n\r\n--b\r\n\
             Content-Type: text/plain; charset=UTF-8\r\n\r\n運用等経費: 300\r\n--b\r\n\
             Content-Type: application/octet-stream\r\n\
             Content-Disposition: attachment; filename=\"youshiki.xlsx\"\r\n\
             Content-Transfer-Encoding: base64\r\n\r\n{b64}\r\n--b--\r\n"
        ),
    )
    .unwrap();
    let (code, out, err) = pmoflow_tests::cli(
        dir.path(),
        &[
            "inbound",
            "explain",
            "--fields",
            "区分,整備経費,運用等経費,KPI",
            "--form",
            template.to_str().unwrap(),
            eml.to_str().unwrap(),
        ],
    );
    assert_eq!(code, 0, "{err}");
    let doc: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(doc["fields"]["区分"], "新規", "{doc:#}");
    assert_eq!(doc["fields"]["整備経費"], 1200, "{doc:#}");
    assert_eq!(
        doc["fields"]["運用等経費"], 300,
        "the body fills what the workbook left empty"
    );
    assert_eq!(doc["workbooks"]["read"][0]["file"], "youshiki.xlsx");
    assert_eq!(doc["workbooks"]["problems"], json!([]), "{doc:#}");
    // The same 様式 saved by LibreOffice in its own format: not read, and the sentence for the
    // 【要修正】 says which format to send (corpus 63 is such a reply).
    pmoflow_tests::workbooks_py(&[
        "convert",
        filled.to_str().unwrap(),
        dir.path().to_str().unwrap(),
        "ods",
    ]);
    let b64 = {
        use base64::Engine;
        base64::engine::general_purpose::STANDARD
            .encode(std::fs::read(dir.path().join("filled.ods")).unwrap())
    };
    std::fs::write(
        &eml,
        format!(
            "From: {LEAD}\r\nTo: pmo@example.go.jp\r\nSubject: Re: 様式\r\nMIME-Version: 1.0\r\n\
             Content-Type: multipart/mixed; boundary=\"b\"\r\n\r\n--b\r\n\
             Content-Type: text/plain; charset=UTF-8\r\n\r\n運用等経費: 300\r\n--b\r\n\
             Content-Type: application/vnd.oasis.opendocument.spreadsheet\r\n\
             Content-Disposition: attachment; filename=\"kaitou.ods\"\r\n\
             Content-Transfer-Encoding: base64\r\n\r\n{b64}\r\n--b--\r\n"
        ),
    )
    .unwrap();
    let (code, out, err) = pmoflow_tests::cli(
        dir.path(),
        &[
            "inbound",
            "explain",
            "--fields",
            "区分,整備経費,運用等経費,KPI",
            "--form",
            template.to_str().unwrap(),
            eml.to_str().unwrap(),
        ],
    );
    assert_eq!(code, 0, "{err}");
    let doc: Value = serde_json::from_str(&out).unwrap();
    let problems = doc["workbooks"]["problems"].to_string();
    assert!(
        problems.contains(
            "添付ファイル「kaitou.ods」: OpenDocument形式（.ods）のファイルは読み取れません"
        ) && problems.contains("Excel形式（.xlsx）で保存し直した"),
        "{doc:#}"
    );
    // Unreadable input is a clear error, exit 1.
    let bad = Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/replies/33-malformed.eml");
    let (code, _, err) =
        pmoflow_tests::cli(dir.path(), &["inbound", "explain", bad.to_str().unwrap()]);
    assert_eq!(code, 1);
    assert!(
        err.contains("the message cannot be read: not a readable email message"),
        "{err}"
    );
}
