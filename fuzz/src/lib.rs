//! The bodies of pmoflow's fuzz targets: what a hostile or unlucky world hands the daemon.
//!
//! Each function takes the fuzzer's bytes and feeds them to the code that reads that input in
//! the daemon. A panic, a hang or an allocation blow-up is a finding; so is a broken promise
//! checked here (an error in a file that does not point into the file). The libFuzzer binaries
//! under `fuzz_targets/` call these (`fuzz/run`, with cargo-fuzz), and the smoke test in
//! `tests/smoke.rs` runs them on the seed corpus and random mutations in the ordinary test build.

use std::collections::BTreeSet;
use std::path::Path;

use serde_json::{Value as Json, json};

/// The plugin `domain-check`'s registry parsers, compiled natively from the plugin's own file.
#[path = "../../plugins/domain-check/src/parse.rs"]
#[allow(dead_code)]
mod domain_parse;

/// A target's body.
pub type Target = fn(&[u8]);

/// Every target, by name: the names of `fuzz_targets/*.rs` and of `corpus/*/`.
pub const TARGETS: &[(&str, Target)] = &[
    ("workflow", workflow),
    ("config", config),
    ("email", email),
    ("template", template),
    ("calendar_csv", calendar_csv),
    ("scenario", scenario),
    ("registry", registry),
    ("certificate", certificate),
    ("webhook_trigger", webhook_trigger),
    ("workbook", workbook),
];

/// Where a target's seed corpus lives, relative to the repository root (`fuzz/seeds.txt`, which
/// `fuzz/run` reads too).
pub fn seed_dirs(target: &str) -> Vec<&'static str> {
    include_str!("../seeds.txt")
        .lines()
        .filter(|l| !l.starts_with('#'))
        .find_map(|l| {
            let mut words = l.split_whitespace();
            (words.next() == Some(target)).then(|| words.collect())
        })
        .unwrap_or_default()
}

fn text(data: &[u8]) -> Option<&str> {
    std::str::from_utf8(data).ok()
}

/// A `line:col` must point into `text` (lines from 1; a column may be one past the end).
fn assert_points_into(text: &str, line: usize, col: usize, what: &str) {
    let lines: Vec<&str> = text.split('\n').collect();
    assert!(
        line >= 1 && line <= lines.len().max(1),
        "{what}: line {line} outside a text of {} lines",
        lines.len()
    );
    let width = lines.get(line - 1).map_or(0, |l| l.chars().count());
    assert!(
        col >= 1 && col <= width + 1,
        "{what}: column {col} outside line {line} of {width} characters"
    );
}

/// A workflow file → `compile` (what the catalog and `pmoflow validate` do); a compiled
/// workflow's literal URLs go through the egress policy check.
pub fn workflow(data: &[u8]) {
    let Some(source) = text(data) else { return };
    let names: BTreeSet<String> = ["people", "projects", "budget", "domains", "pmo", "audit"]
        .into_iter()
        .map(String::from)
        .collect();
    match pmoflow::workflow::compile(Path::new("fuzz.toml"), source, &names) {
        Ok(wf) => {
            let policy = pmoflow::egress::EgressPolicy::default();
            for step in &wf.steps {
                if let Some(url) = step.with.get("url").and_then(Json::as_str) {
                    let _ = policy.check_url(url);
                }
            }
            let _ = pmoflow::workflow::compile::content_hash(source);
        }
        Err(diags) => {
            assert!(!diags.is_empty(), "a refused workflow has a diagnostic");
            for d in diags {
                assert!(!d.message.is_empty(), "an empty diagnostic");
                assert_points_into(source, d.line, d.col, &d.message);
            }
        }
    }
}

/// `pmoflow.toml` → the configuration.
pub fn config(data: &[u8]) {
    let Some(source) = text(data) else { return };
    let env = pmoflow::config::EnvOverrides::default();
    if let Err(e) = pmoflow::config::Config::from_text(Path::new("pmoflow.toml"), source, &env) {
        assert!(!e.to_string().is_empty(), "an empty configuration error");
    }
}

/// A raw email → `Inbound` (parse and classification) → the reply's new text, the
/// acknowledgement test, the fields of a request, the correlation keys.
pub fn email(data: &[u8]) {
    use pmoflow::message::{correlate, inbound, reply};
    let Ok(msg) = inbound::parse(data, 4 << 20) else {
        return;
    };
    let text = reply::new_text(&msg.text);
    let _ = reply::is_ack(&text);
    let fields: Vec<String> = ["進捗", "課題", "整備経費", "運用等経費", "完了予定日"]
        .into_iter()
        .map(String::from)
        .collect();
    let answers = reply::parse_fields(&text, &fields, msg.from_name.as_deref());
    let _ = serde_json::to_string(&answers.fields);
    let _ = correlate::keys(&msg, "pmo+{token}@example.go.jp");
    let _ = correlate::find_tag(&msg.subject);
    let _ = inbound::html_to_text(&msg.text);
}

/// A template (or an expression) rendered with hostile inputs: the bytes before the first NUL
/// are the template, the rest is the value every input holds.
pub fn template(data: &[u8]) {
    let (tpl, value) = match data.iter().position(|&b| b == 0) {
        Some(i) => (&data[..i], &data[i + 1..]),
        None => (data, &b""[..]),
    };
    let (Some(tpl), value) = (text(tpl), String::from_utf8_lossy(value).into_owned()) else {
        return;
    };
    let number: Json = value
        .trim()
        .parse::<f64>()
        .ok()
        .and_then(serde_json::Number::from_f64)
        .map_or(Json::Null, Json::Number);
    let inputs = json!({
        "summary": value,
        "severity": value,
        "amount": number,
        "date": value,
        "items": [value, value],
        "nested": { "a": { "b": value } },
    });
    let ctx = pmoflow::template::value(&json!({
        "inputs": inputs,
        "run": { "id": "0190", "workflow": "fuzz" },
        "steps": { "ask": { "output": { "answers": [{ "from": value, "fields": { "進捗": value } }] } } },
    }));
    let _ = pmoflow::template::render(tpl, &ctx);
    let _ = pmoflow::template::eval(tpl, &ctx);
    let _ = pmoflow::template::template_names(tpl);
    // The shipped filters and tests over the hostile value.
    for t in [
        "{{ inputs.date | jp_date }}",
        "{{ inputs.date | jp_era_year }}",
        "{{ inputs.date | fiscal_year }}",
        "{{ inputs.date | fiscal_year_ja }}",
        "{{ inputs.date | fiscal_quarter }}",
        "{{ inputs.date | date }}",
        "{{ inputs.amount | yen }}",
        "{{ add_business_days(inputs.date, 3) }}",
        "{{ is_business_day(inputs.date) }}",
        "{{ days_between(inputs.date, '2027-03-31') }}",
        "{{ business_day_on_or_before(inputs.date) }}",
        "{{ inputs.summary | upper | truncate(10) }}",
    ] {
        let _ = pmoflow::template::render(t, &ctx);
    }
}

/// The Cabinet Office holiday CSV (`syukujitsu.csv`) → years of holidays → the calendar TOML.
pub fn calendar_csv(data: &[u8]) {
    if let Ok(years) = pmoflow::calendar::csv::parse(data) {
        let toml = pmoflow::calendar::csv::to_toml(&years, "fuzz.csv");
        assert!(
            toml::from_str::<toml::Table>(&toml).is_ok(),
            "the calendar written from a CSV must be TOML:\n{toml}"
        );
    }
}

/// A `simulate` scenario file.
pub fn scenario(data: &[u8]) {
    let Some(source) = text(data) else { return };
    let _ = pmoflow::simulate::parse_scenario(
        Path::new("fuzz.scenario.toml"),
        source,
        chrono_tz::Asia::Tokyo,
    );
}

/// The plugin domain-check's WHOIS text and RDAP JSON parsers.
pub fn registry(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    let _ = domain_parse::parse_whois(&text);
    let _ = domain_parse::parse_date(&text);
    if let Ok(doc) = serde_json::from_slice::<Json>(data) {
        let _ = domain_parse::parse_rdap(&doc);
    }
}

/// A DER certificate as a TLS server presents it → the facts the host hands to plugins.
pub fn certificate(data: &[u8]) {
    let _ = pmoflow::plugins::net::cert_facts(data);
}

/// A webhook-trigger request: `timestamp NUL signature NUL body`. The signature check, then
/// the body as inputs merged over a workflow's declared inputs (what `POST /hooks/{id}` does).
pub fn webhook_trigger(data: &[u8]) {
    let mut parts = data.splitn(3, |&b| b == 0);
    let ts = String::from_utf8_lossy(parts.next().unwrap_or_default()).into_owned();
    let sig = String::from_utf8_lossy(parts.next().unwrap_or_default()).into_owned();
    let body = parts.next().unwrap_or_default();
    let _ = pmoflow::message::webhook::verify(b"fuzz-secret", &ts, body, &sig, 1_800_000_000, 300);
    let Ok(given) = serde_json::from_slice::<Json>(body) else {
        return;
    };
    let source = "id = \"incident\"\n[[triggers]]\nwebhook = true\n[inputs]\nseverity = \"S3\"\nsummary = \"\"\n[[steps]]\nid = \"note\"\naction = \"log\"\nwith = { message = \"{{ inputs.severity }}: {{ inputs.summary }}\" }\n";
    let Ok(wf) = pmoflow::workflow::compile(Path::new("incident.toml"), source, &BTreeSet::new())
    else {
        panic!("the fixed workflow compiles");
    };
    if let Ok(inputs) = pmoflow::engine::resolve_inputs(&wf, &given) {
        let ctx = pmoflow::template::value(&json!({ "inputs": inputs }));
        let _ = pmoflow::template::render("{{ inputs.severity }}: {{ inputs.summary }}", &ctx);
    }
}

/// The shipped example 様式's cell map, made once.
fn budget_form() -> &'static pmoflow::workbook::FormSpec {
    static FORM: std::sync::OnceLock<pmoflow::workbook::FormSpec> = std::sync::OnceLock::new();
    FORM.get_or_init(|| {
        let template = include_bytes!("../../workflows/templates/様式1_予算要求.xlsx");
        let mapping = pmoflow::workbook::form::Mapping {
            fields: [
                "システム名",
                "区分",
                "整備経費",
                "運用等経費",
                "積算根拠",
                "KPI",
                "共通基盤の利用",
            ]
            .iter()
            .map(|s| s.to_string())
            .collect(),
            required: vec!["区分".into(), "整備経費".into()],
            ..Default::default()
        };
        match pmoflow::workbook::FormSpec::from_template("様式1.xlsx", template, &mapping) {
            Ok(spec) => spec,
            Err(e) => panic!("the shipped form loads: {e}"),
        }
    })
}

/// A returned workbook (any bytes: .xlsx, .xlsm, .xls, or not a workbook) → the 様式 reader and
/// the merge with body fields, as the intake runs them; the same bytes as an administrator's
/// template → the form's cell map and a prefill. Every refusal must be a sentence.
pub fn workbook(data: &[u8]) {
    let spec = budget_form();
    match pmoflow::workbook::form::read_answer(
        spec,
        "fuzz.xlsx",
        data,
        &pmoflow::workbook::Limits::default(),
    ) {
        Ok(read) => {
            let mut body = std::collections::BTreeMap::new();
            for p in pmoflow::workbook::form::merge(spec, &[read], &mut body) {
                assert!(!p.message.is_empty(), "a problem without a message");
            }
        }
        Err(e) => assert!(!e.to_string().is_empty(), "an error without a message"),
    }
    // The same bytes as a ZIP attachment that may hold workbooks.
    if let Ok(members) =
        pmoflow::workbook::package::unpack_archive(data, &pmoflow::workbook::Limits::default())
    {
        for m in members {
            if let Err(e) = m.content {
                assert!(!e.to_string().is_empty(), "an error without a message");
            }
        }
    }
    let mapping = pmoflow::workbook::form::Mapping {
        fields: vec!["区分".into(), "整備経費".into()],
        ..Default::default()
    };
    if let Ok(form) = pmoflow::workbook::FormSpec::from_template("t.xlsx", data, &mapping) {
        let values = [("整備経費".to_string(), json!(1200))].into();
        let _ = form.prefill(data, &values);
    }
    if let Some(t) = text(data) {
        let _ = pmoflow::workbook::value::parse_number(t, Some("千円"));
        let _ = pmoflow::workbook::value::parse_date(t);
        let _ = pmoflow::workbook::value::parse_bool(t);
        let _ = pmoflow::workbook::CellAt::parse(t);
    }
}
