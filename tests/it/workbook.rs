//! Excel 様式 against other programs: the shipped form prefilled by pmoflow and inspected with
//! openpyxl; answers filled in with openpyxl and saved again by LibreOffice (as .xlsx and legacy
//! .xls) read back typed; reports read by openpyxl; and hostile files refused with a message.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use pmoflow::workbook::form::{Mapping, merge, read_answer};
use pmoflow::workbook::{FormSpec, Kind, Limits, WorkbookError};
use pmoflow_tests::workbooks_py as py;
use serde_json::{Value as Json, json};

fn form_path() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../workflows/templates/様式1_予算要求.xlsx")
}

fn inspect(path: &Path) -> Json {
    serde_json::from_str(&py(&["inspect", path.to_str().unwrap()])).unwrap()
}

/// The shipped cycle's mapping, plus test fields on the 記入要領 sheet for dates, 和暦, booleans,
/// full-width and 億 amounts, a merged cell read off its anchor, and a formula's cached value.
fn mapping() -> Mapping {
    let fields = [
        "システム名",
        "区分",
        "整備経費",
        "運用等経費",
        "前年度比",
        "積算根拠",
        "KPI",
        "共通基盤の利用",
        "開始日",
        "和暦日",
        "稼働",
        "件数",
        "億",
        "整備経費の右",
        "合計",
    ];
    let cells = [
        ("開始日", "記入要領!B10"),
        ("和暦日", "記入要領!B11"),
        ("稼働", "記入要領!B12"),
        ("件数", "記入要領!B13"),
        ("億", "記入要領!B14"),
        ("整備経費の右", "様式1!E7"),
        ("合計", "様式1!C14"),
    ];
    let thousand = || Kind::Number {
        unit: Some("千円".into()),
        min: None,
        max: None,
    };
    Mapping {
        fields: fields.iter().map(|s| s.to_string()).collect(),
        required: vec!["区分".into(), "整備経費".into(), "運用等経費".into()],
        cells: cells
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
        types: [
            ("整備経費".to_string(), thousand()),
            ("運用等経費".to_string(), thousand()),
            ("億".to_string(), thousand()),
            (
                "件数".to_string(),
                Kind::Number {
                    unit: None,
                    min: None,
                    max: None,
                },
            ),
            ("開始日".to_string(), Kind::Date),
            ("和暦日".to_string(), Kind::Date),
            ("稼働".to_string(), Kind::Bool),
        ]
        .into(),
    }
}

fn spec() -> FormSpec {
    let bytes = std::fs::read(form_path()).unwrap();
    FormSpec::from_template("様式1_予算要求.xlsx", &bytes, &mapping()).unwrap()
}

fn read(spec: &FormSpec, path: &Path) -> (BTreeMap<String, Json>, Vec<String>) {
    let bytes = std::fs::read(path).unwrap();
    let r = read_answer(spec, "a.xlsx", &bytes, &Limits::default())
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let mut fields = BTreeMap::new();
    let problems = merge(spec, &[r], &mut fields);
    (fields, problems.into_iter().map(|p| p.message).collect())
}

#[test]
fn the_form_knows_its_cells_and_the_validation_lists_of_the_template() {
    let spec = spec();
    let kind = |f: &str| {
        spec.fields
            .iter()
            .find(|x| x.field == f)
            .map(|x| (x.at.to_string(), x.kind.clone()))
            .unwrap()
    };
    // Found by the workbook's defined names; 区分's list is on the hidden sheet リスト.
    assert_eq!(
        kind("区分"),
        (
            "様式1 C6".into(),
            Kind::Choice {
                choices: vec!["新規".into(), "改修".into(), "運用".into()]
            }
        )
    );
    assert_eq!(
        kind("共通基盤の利用").1,
        Kind::Choice {
            choices: vec!["○".into(), "×".into()]
        }
    );
    assert_eq!(kind("整備経費").0, "様式1 C7");
    assert_eq!(kind("合計").1, Kind::Auto);
    // A mapping to a sheet the form does not have is refused when the request goes out.
    let mut bad = mapping();
    bad.cells.insert("開始日".into(), "様式9!B1".into());
    let err = FormSpec::from_template("f.xlsx", &std::fs::read(form_path()).unwrap(), &bad)
        .unwrap_err()
        .to_string();
    assert!(err.contains("no sheet \"様式9\""), "{err}");
}

#[test]
fn a_prefilled_copy_keeps_formatting_validation_protection_and_print_setup() {
    let dir = tempfile::tempdir().unwrap();
    let spec = spec();
    let template = std::fs::read(form_path()).unwrap();
    let values: BTreeMap<String, Json> = [
        ("プロジェクトID".to_string(), json!("P01")),
        ("システム名".to_string(), json!("電子申請システム & <試行>")),
        ("前年度予算額".to_string(), json!("118000")),
        ("整備経費".to_string(), json!(85000)),
    ]
    .into();
    let filled = spec.prefill(&template, &values).unwrap();
    let out = dir.path().join("filled.xlsx");
    std::fs::write(&out, &filled).unwrap();
    let before = inspect(&form_path());
    let after = inspect(&out);
    let mut expected = before.clone();
    let cells = &mut expected["sheets"]["様式1"]["cells"];
    cells["C4"] = json!("P01");
    cells["C5"] = json!("電子申請システム & <試行>");
    cells["C9"] = json!(118000);
    cells["C7"] = json!(85000);
    // Everything openpyxl can see is as the template had it, but the four cells.
    assert_eq!(after, expected);
    for key in ["merged", "validations", "unlocked", "formats"] {
        assert!(
            !after["sheets"]["様式1"][key]
                .as_array()
                .is_some_and(|a| a.is_empty())
                && !after["sheets"]["様式1"][key].is_null(),
            "{key} is empty: the comparison would prove nothing"
        );
    }
    assert_eq!(after["sheets"]["様式1"]["protected"], json!(true));
    assert_eq!(after["sheets"]["様式1"]["orientation"], json!("landscape"));
    assert_eq!(after["sheets"]["リスト"]["state"], json!("hidden"));
    // A formula cell is never overwritten.
    let err = spec
        .prefill(&template, &[("様式1!C14".to_string(), json!(1))].into())
        .unwrap_err()
        .to_string();
    assert!(err.contains("holds a formula"), "{err}");
    // LibreOffice opens the copy and computes its formula from the prefilled cell.
    py(&[
        "convert",
        out.to_str().unwrap(),
        dir.path().join("lo").to_str().unwrap(),
        "xlsx",
    ]);
    let (fields, _) = read(&spec, &dir.path().join("lo/filled.xlsx"));
    assert_eq!(fields["合計"], json!(85000));
    assert_eq!(fields["システム名"], json!("電子申請システム & <試行>"));
}

#[test]
fn answers_from_openpyxl_libreoffice_xlsx_and_xls_are_read_typed() {
    let dir = tempfile::tempdir().unwrap();
    let spec = spec();
    let filled = dir.path().join("answer.xlsx");
    let values = json!({
        "区分": "改修",
        "整備経費": 12000,
        "運用等経費": 3300,
        "前年度比": "+500千円（機能追加）",
        "積算根拠": "見積3社の平均",
        "KPI": "オンライン申請率 80%",
        "共通基盤の利用": "○",
        "記入要領!B10": { "date": "2027-04-01" },
        "記入要領!B11": "令和9年4月1日",
        "記入要領!B12": true,
        "記入要領!B13": "１，２００",
        "記入要領!B14": "1.2億",
    });
    py(&[
        "fill",
        form_path().to_str().unwrap(),
        filled.to_str().unwrap(),
        &values.to_string(),
    ]);
    let expect = |fields: &BTreeMap<String, Json>, who: &str| {
        let want = [
            ("区分", json!("改修")),
            ("整備経費", json!(12000)),
            ("運用等経費", json!(3300)),
            ("前年度比", json!("+500千円（機能追加）")),
            ("共通基盤の利用", json!("○")),
            ("開始日", json!("2027-04-01")),
            ("和暦日", json!("2027-04-01")),
            ("稼働", json!(true)),
            ("件数", json!(1200)),
            ("億", json!(120000)),
            ("整備経費の右", json!(12000)),
        ];
        for (k, v) in want {
            assert_eq!(fields.get(k), Some(&v), "{who}: {k} in {fields:?}");
        }
    };
    let (fields, problems) = read(&spec, &filled);
    expect(&fields, "openpyxl");
    assert!(problems.is_empty(), "{problems:?}");
    // openpyxl saves formulas without a cached value: nothing to read, and no guess.
    assert_eq!(fields.get("合計"), None);
    // LibreOffice saves the same answer again, computing the formula.
    py(&[
        "convert",
        filled.to_str().unwrap(),
        dir.path().join("lo").to_str().unwrap(),
        "xlsx",
    ]);
    let (fields, problems) = read(&spec, &dir.path().join("lo/answer.xlsx"));
    expect(&fields, "LibreOffice .xlsx");
    assert_eq!(fields["合計"], json!(15300), "the formula's cached value");
    assert!(problems.is_empty(), "{problems:?}");
    py(&[
        "convert",
        filled.to_str().unwrap(),
        dir.path().join("lo").to_str().unwrap(),
        "xls",
    ]);
    let (fields, problems) = read(&spec, &dir.path().join("lo/answer.xls"));
    expect(&fields, "LibreOffice .xls");
    assert_eq!(fields["合計"], json!(15300));
    assert!(problems.is_empty(), "{problems:?}");
}

#[test]
fn wrong_and_missing_cells_are_named_by_sheet_and_cell() {
    let dir = tempfile::tempdir().unwrap();
    let spec = spec();
    let filled = dir.path().join("bad.xlsx");
    let values = json!({
        "区分": "その他",
        "運用等経費": "未定",
        "記入要領!B10": "来年度",
        "記入要領!B11": "令和元年4月1日",
    });
    py(&[
        "fill",
        form_path().to_str().unwrap(),
        filled.to_str().unwrap(),
        &values.to_string(),
    ]);
    let (_, problems) = read(&spec, &filled);
    assert_eq!(
        problems,
        [
            "様式1 C6（区分）は「新規」「改修」「運用」のいずれかを選択してください（入力値: 「その他」）",
            "様式1 C7（整備経費）が空欄です",
            "様式1 C8（運用等経費）は数値で入力してください（入力値: 「未定」）",
            "記入要領 B10（開始日）は日付で入力してください（入力値: 「来年度」）",
            "記入要領 B11（和暦日）の「令和元年4月1日」は令和の期間にない日付です（2019年4月1日）",
        ]
    );
    // A body line gives what the workbook left empty.
    let bytes = std::fs::read(&filled).unwrap();
    let r = read_answer(&spec, "bad.xlsx", &bytes, &Limits::default()).unwrap();
    let mut body: BTreeMap<String, Json> = [("整備経費".to_string(), json!("12,000千円"))].into();
    let problems = merge(&spec, &[r], &mut body);
    assert_eq!(body["整備経費"], json!(12000));
    assert!(!problems.iter().any(|p| p.message.contains("C7")));
}

#[test]
fn hostile_and_broken_workbooks_are_refused_with_a_reason() {
    let dir = tempfile::tempdir().unwrap();
    let spec = spec();
    let form = form_path();
    let path = |n: &str| dir.path().join(n);
    let p = |n: &str| path(n).to_str().unwrap().to_string();
    py(&["corrupt", form.to_str().unwrap(), &p("cut.xlsx")]);
    py(&["bomb", &p("bomb.xlsx")]);
    py(&[
        "encrypt",
        form.to_str().unwrap(),
        &p("locked.xlsx"),
        "himitsu",
    ]);
    py(&["huge", &p("huge.xlsx")]);
    let filled = path("filled.xlsx");
    py(&[
        "fill",
        form.to_str().unwrap(),
        filled.to_str().unwrap(),
        &json!({ "区分": "新規", "整備経費": 100, "運用等経費": 200 }).to_string(),
    ]);
    py(&["macro", filled.to_str().unwrap(), &p("macro.xlsm")]);
    py(&["external", filled.to_str().unwrap(), &p("linked.xlsx")]);
    let open = |n: &str| {
        read_answer(
            &spec,
            n,
            &std::fs::read(path(n)).unwrap(),
            &Limits::default(),
        )
    };
    assert!(
        matches!(open("cut.xlsx"), Err(WorkbookError::Corrupt(_))),
        "{:?}",
        open("cut.xlsx").err()
    );
    let bomb = open("bomb.xlsx").unwrap_err();
    assert!(matches!(bomb, WorkbookError::Bomb(_)), "{bomb}");
    assert!(
        bomb.to_string().contains("展開後のサイズが上限を超える"),
        "{bomb}"
    );
    let locked = open("locked.xlsx").unwrap_err();
    assert!(matches!(locked, WorkbookError::Encrypted), "{locked}");
    assert!(locked.to_string().contains("パスワード"));
    let huge = open("huge.xlsx").unwrap_err();
    assert!(
        huge.to_string().contains("1000000個を超えています"),
        "{huge}"
    );
    // LibreOffice's own format: not read, and the sender is told which format to send.
    py(&[
        "convert",
        filled.to_str().unwrap(),
        dir.path().to_str().unwrap(),
        "ods",
    ]);
    let ods = open("filled.ods").unwrap_err();
    assert!(matches!(ods, WorkbookError::OpenDocument), "{ods}");
    assert!(ods.to_string().contains("Excel形式（.xlsx）"), "{ods}");
    assert!(pmoflow::workbook::is_workbook(
        "回答.ods",
        "application/vnd.oasis.opendocument.spreadsheet"
    ));
    let not_a_book = read_answer(&spec, "x.xlsx", b"hello", &Limits::default()).unwrap_err();
    assert!(matches!(not_a_book, WorkbookError::NotAWorkbook));
    // Macros: values only, never run; said so.
    let m = open("macro.xlsm").unwrap();
    assert!(
        m.notes.iter().any(|n| n.contains("実行せず")),
        "{:?}",
        m.notes
    );
    let mut f = BTreeMap::new();
    assert!(merge(&spec, &[m], &mut f).is_empty());
    assert_eq!(f["整備経費"], json!(100));
    // An external link: its cell is refused (the cached value is not the PJMO's figure).
    let l = open("linked.xlsx").unwrap();
    assert!(l.notes.iter().any(|n| n.contains("外部ブック")));
    let problems = merge(&spec, &[l], &mut BTreeMap::new());
    assert_eq!(
        problems
            .iter()
            .map(|p| p.message.as_str())
            .collect::<Vec<_>>(),
        ["様式1 C8（運用等経費）は外部ブックを参照する数式です。値を直接入力してください"]
    );
}

#[test]
fn a_report_is_read_back_by_openpyxl_with_its_formats() {
    use pmoflow::workbook::report::{Column, Sheet, write};
    let dir = tempfile::tempdir().unwrap();
    let col = |h: &str, f: Option<&str>| Column {
        header: h.into(),
        format: f.map(str::to_string),
        width: None,
    };
    let bytes = write(&[
        Sheet {
            name: "予算要求一覧".into(),
            columns: vec![
                col("プロジェクトID", None),
                col("整備経費（千円）", Some("thousand_yen")),
                col("予算(円)", Some("yen")),
                col("執行率", Some("percent")),
                col("提出日", Some("date")),
            ],
            rows: vec![
                vec![
                    json!("P01"),
                    json!(85000),
                    json!(118000000),
                    json!(0.825),
                    json!("2027-05-20"),
                ],
                vec![
                    json!("P02"),
                    json!("60,000"),
                    Json::Null,
                    json!(1.1),
                    Json::Null,
                ],
            ],
        },
        Sheet {
            name: "未提出".into(),
            columns: vec![col("プロジェクトID", None)],
            rows: vec![vec![json!("P04")]],
        },
    ])
    .unwrap();
    let path = dir.path().join("r.xlsx");
    std::fs::write(&path, bytes).unwrap();
    let r: Json = serde_json::from_str(&py(&["report", path.to_str().unwrap()])).unwrap();
    let s = &r["予算要求一覧"];
    assert_eq!(
        s["rows"][0],
        json!([
            "プロジェクトID",
            "整備経費（千円）",
            "予算(円)",
            "執行率",
            "提出日"
        ])
    );
    assert_eq!(s["rows"][1][1], json!(85000));
    assert_eq!(
        s["rows"][2][1],
        json!(60000),
        "numeric text in a number column"
    );
    assert_eq!(s["rows"][1][4], json!("2027-05-20 00:00:00"));
    assert_eq!(
        s["formats"][0],
        json!([
            "General",
            "#,##0\"千円\"",
            "#,##0\"円\"",
            "0.0%",
            "yyyy\"年\"m\"月\"d\"日\""
        ])
    );
    assert_eq!(s["freeze"], json!("A2"));
    assert_eq!(s["bold_header"], json!(true));
    assert!(s["widths"]["A"].as_f64().unwrap() >= 16.0, "{s}");
    assert_eq!(r["未提出"]["rows"][1], json!(["P04"]));
}

fn excel_sample(name: &str) -> Vec<u8> {
    std::fs::read(
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("fixtures/excel")
            .join(name),
    )
    .unwrap()
}

/// Workbooks saved by Microsoft Excel 16 (public samples, `tests/fixtures/excel/README.md`):
/// cached formula values (text and boolean), an integer and a decimal, a date cell, text, a
/// broken defined name, and merged areas read off their anchors.
#[test]
fn a_workbook_saved_by_excel_is_read_with_cached_formulas_dates_and_merged_cells() {
    let book = excel_sample("issues.xlsx");
    let mapping = Mapping {
        fields: [
            "整数",
            "小数",
            "連結",
            "比較",
            "文字",
            "日付",
            "MyBrokenRange",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect(),
        required: vec!["整数".into(), "日付".into()],
        cells: [
            ("整数", "datatypes!A1"),
            ("小数", "datatypes!A2"),
            ("連結", "datatypes!A3"),
            ("比較", "datatypes!A4"),
            ("文字", "datatypes!A5"),
            ("日付", "datatypes!A6"),
        ]
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect(),
        types: [
            (
                "整数".to_string(),
                Kind::Number {
                    unit: None,
                    min: None,
                    max: None,
                },
            ),
            ("比較".to_string(), Kind::Bool),
            ("日付".to_string(), Kind::Date),
            ("連結".to_string(), Kind::Text),
        ]
        .into(),
    };
    let spec = FormSpec::from_template("issues.xlsx", &book, &mapping).unwrap();
    // A field whose defined name is broken (`Sheet1!#REF!`) has no cell: it is asked in the body.
    assert!(
        !spec.fields.iter().any(|f| f.field == "MyBrokenRange"),
        "{:?}",
        spec.fields
    );
    let read = read_answer(&spec, "issues.xlsx", &book, &Limits::default()).unwrap();
    let mut fields = BTreeMap::new();
    let problems = merge(&spec, std::slice::from_ref(&read), &mut fields);
    assert!(problems.is_empty(), "{problems:?}");
    assert_eq!(fields["整数"], json!(1), "{read:?}");
    assert_eq!(fields["小数"], json!(1.5));
    assert_eq!(fields["連結"], json!("ab"), "the formula's cached value");
    assert_eq!(
        fields["比較"],
        json!(false),
        "a boolean formula's cached value"
    );
    assert_eq!(fields["文字"], json!("test"));
    assert_eq!(fields["日付"], json!("2016-10-20"));
    let formula = read.cells.iter().find(|c| c.field == "連結").unwrap();
    assert_eq!(formula.at, "datatypes A3");

    // Merged areas: any cell of an area reads the value Excel keeps in its top-left cell.
    let merged = excel_sample("merged_range.xlsx");
    let mapping = Mapping {
        fields: vec!["縦".into(), "横".into(), "四角".into()],
        cells: [
            ("縦", "Sheet2!A4"),
            ("横", "Sheet1!D2"),
            ("四角", "Sheet2!H4"),
        ]
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect(),
        ..Mapping::default()
    };
    let spec = FormSpec::from_template("merged_range.xlsx", &merged, &mapping).unwrap();
    let read = read_answer(&spec, "merged_range.xlsx", &merged, &Limits::default()).unwrap();
    let mut fields = BTreeMap::new();
    assert!(merge(&spec, &[read], &mut fields).is_empty());
    assert_eq!(fields["縦"], json!("A1"));
    assert_eq!(fields["横"], json!("C1"));
    assert_eq!(fields["四角"], json!("F1"));
}

/// A 様式 sent inside a ZIP (folders and a CP932 file name, as Windows' built-in ZIP writes them)
/// is read like an attachment; a password-protected ZIP (PPAP: the password in a second mail)
/// is refused with a sentence telling the sender to attach the workbook itself.
#[tokio::test]
async fn a_form_inside_a_zip_is_read_and_a_password_zip_is_refused_with_a_reason() {
    use pmoflow::workbook::form::{Offered, read_offered};
    let dir = tempfile::tempdir().unwrap();
    let p = |n: &str| dir.path().join(n).to_str().unwrap().to_string();
    py(&[
        "fill",
        form_path().to_str().unwrap(),
        &p("filled.xlsx"),
        &json!({ "区分": "新規", "整備経費": "１，２００", "運用等経費": 300 }).to_string(),
    ]);
    py(&[
        "archive",
        &p("様式提出.zip"),
        "様式1_予算要求_P03.xlsx",
        &p("filled.xlsx"),
    ]);
    py(&["ppap", &p("ppap.zip"), &p("filled.xlsx"), "himitsu"]);
    let offered = |file: &str, name: &str| Offered {
        name: name.into(),
        content_type: "application/x-zip-compressed".into(),
        content: std::fs::read(p(file)).unwrap(),
    };
    let spec = spec();

    let zipped = offered("様式提出.zip", "様式提出.zip");
    let (reads, broken) = read_offered(&spec, vec![zipped.clone()], Limits::default()).await;
    assert!(broken.is_empty(), "{broken:?}");
    assert_eq!(reads.len(), 1);
    assert_eq!(reads[0].file, "様式提出.zip/様式1_予算要求_P03.xlsx");
    let mut fields = BTreeMap::new();
    let problems = merge(&spec, &reads, &mut fields);
    assert!(problems.is_empty(), "{problems:?}");
    assert_eq!(fields["整備経費"], json!(1200));
    assert_eq!(fields["区分"], json!("新規"));
    // Kept with the answer: the archive, and what was read of the workbook in it.
    let record = zipped.record(&reads, &broken);
    assert_eq!(record["archive"][0]["name"], "様式1_予算要求_P03.xlsx");
    assert_eq!(
        record["archive"][0]["workbook"]["cells"][2]["value"],
        json!(1200)
    );

    let (reads, broken) = read_offered(
        &spec,
        vec![offered("ppap.zip", "提出書類.zip")],
        Limits::default(),
    )
    .await;
    assert!(reads.is_empty());
    assert_eq!(broken.len(), 1, "{broken:?}");
    assert_eq!(broken[0].0, "提出書類.zip/様式.xlsx");
    assert!(
        broken[0].1.contains("パスワード付きZIP")
            && broken[0].1.contains("Excelファイルのまま添付"),
        "{}",
        broken[0].1
    );
    // Not a ZIP after all.
    let (_, broken) = read_offered(
        &spec,
        vec![Offered {
            name: "壊れた.zip".into(),
            content_type: "application/zip".into(),
            content: b"PK\x03\x04 cut short".to_vec(),
        }],
        Limits::default(),
    )
    .await;
    assert!(broken[0].1.contains("壊れている"), "{broken:?}");
}

/// Outlook in rich text format wraps every attachment in `winmail.dat` (TNEF): the sender is
/// told how to send the 様式 so it can be read, unless a readable workbook came as well.
#[tokio::test]
async fn a_winmail_dat_instead_of_the_form_is_explained_to_the_sender() {
    use pmoflow::workbook::form::{Offered, read_offered};
    let spec = spec();
    // The TNEF signature, then Outlook's attributes; its content is never parsed.
    let tnef = Offered {
        name: "winmail.dat".into(),
        content_type: "application/ms-tnef".into(),
        content: b"\x78\x9f\x3e\x22\x01\x00\x01\x06\x90\x08\x00".to_vec(),
    };
    let (reads, broken) = read_offered(&spec, vec![tnef.clone()], Limits::default()).await;
    assert!(reads.is_empty());
    assert_eq!(broken.len(), 1);
    assert!(broken[0].1.contains("winmail.dat"), "{}", broken[0].1);
    assert!(
        broken[0].1.contains("「HTML」または「テキスト」"),
        "{}",
        broken[0].1
    );
    let book = Offered {
        name: "様式1_予算要求.xlsx".into(),
        content_type: "application/octet-stream".into(),
        content: std::fs::read(form_path()).unwrap(),
    };
    let (reads, broken) = read_offered(&spec, vec![tnef, book], Limits::default()).await;
    assert_eq!(reads.len(), 1);
    assert!(broken.is_empty(), "{broken:?}");
}
