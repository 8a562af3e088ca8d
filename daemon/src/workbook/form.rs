//! A request's 様式: which cell holds which field and what kind of value it takes (made once from
//! the administrator's template when the request goes out, and stored with the request), the
//! prefill of a copy for one addressee, and the reading of a returned copy into field values
//! and 【要修正】 sentences.
//!
//! Precedence, as documented in docs/replies.md: for each field, a valid value from a workbook
//! wins over the mail body; among several returned workbooks the later attachment wins; an
//! empty or invalid cell does not erase a value given elsewhere, and its problem is reported
//! only when no source gives the field a valid value.

use std::collections::BTreeMap;

use serde_json::Value as Json;

use super::package::{Fill, Package};
use super::read::Workbook;
use super::value::{Kind, Raw, typed};
use super::{Area, CellAt, Limits, WorkbookError};

type Result<T> = std::result::Result<T, WorkbookError>;

/// One field of a form.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct FormField {
    /// The request's field name.
    pub field: String,
    /// Its cell in the template.
    pub at: CellAt,
    /// The defined name it was found by: a returned workbook's own definition wins (Excel
    /// moves names when rows are inserted).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// What it takes.
    pub kind: Kind,
    /// Must be filled in.
    #[serde(default)]
    pub required: bool,
}

/// A form: the template's file name and its fields.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct FormSpec {
    /// The file name the form is sent as.
    pub file: String,
    /// The mapped fields, in the request's order.
    pub fields: Vec<FormField>,
    /// The template's sheets (a returned workbook without any of them is not this form).
    pub sheets: Vec<String>,
}

/// How one field is declared in a step: `cells` (field → `様式1!E10` or a defined name) and
/// `types` (field → kind, with an optional unit for numbers).
#[derive(Debug, Clone, Default)]
pub struct Mapping {
    /// Field names, in order.
    pub fields: Vec<String>,
    /// Required fields.
    pub required: Vec<String>,
    /// Field → cell reference or defined name.
    pub cells: BTreeMap<String, String>,
    /// Field → kind.
    pub types: BTreeMap<String, Kind>,
}

impl FormSpec {
    /// The form of `template` (the bytes of an administrator's `.xlsx`) for `mapping`. A field
    /// without a cell and without a defined name of its own is asked in the mail body only.
    pub fn from_template(file: &str, template: &[u8], mapping: &Mapping) -> Result<FormSpec> {
        let bad = |m: String| WorkbookError::Template(format!("form {file}: {m}"));
        let pkg = Package::open(template).map_err(|e| bad(e.to_string()))?;
        let book = pkg.book().map_err(|e| bad(e.to_string()))?;
        let sheets: Vec<String> = book.sheets.iter().map(|(n, _)| n.clone()).collect();
        let mut fields = Vec::new();
        for field in &mapping.fields {
            let (at, name) = match mapping.cells.get(field) {
                Some(target) => match CellAt::parse(target) {
                    Some(at) => (at, None),
                    None => match book.name(target) {
                        Some(at) => (at, Some(target.clone())),
                        None => {
                            return Err(bad(format!(
                                "`cells.{field}` = \"{target}\" is neither a cell such as \
                                 \"様式1!E10\" nor a name defined in the workbook"
                            )));
                        }
                    },
                },
                None => match book.name(field) {
                    Some(at) => (at, Some(field.clone())),
                    None => continue,
                },
            };
            let Some(part) = book.part(&at.sheet) else {
                return Err(bad(format!(
                    "field {field}: the workbook has no sheet \"{}\" (its sheets: {})",
                    at.sheet,
                    sheets.join(", ")
                )));
            };
            let kind = match mapping.types.get(field) {
                Some(k) => k.clone(),
                None => kind_from_validation(&pkg, template, part, &at)?,
            };
            fields.push(FormField {
                field: field.clone(),
                at,
                name,
                kind,
                required: mapping.required.contains(field),
            });
        }
        if fields.is_empty() && !mapping.fields.is_empty() {
            return Err(bad(format!(
                "none of the fields ({}) has a cell: give `cells = {{ \"{}\" = \"Sheet!E10\" }}` \
                 or define names in the workbook",
                mapping.fields.join(", "),
                mapping.fields[0]
            )));
        }
        if let Some(unknown) = mapping.cells.keys().find(|k| !mapping.fields.contains(k)) {
            return Err(bad(format!("`cells.{unknown}` is not one of `fields`")));
        }
        Ok(FormSpec {
            file: file.to_string(),
            fields,
            sheets,
        })
    }

    /// A copy of `template` with `values` written in. Keys are field names, defined names or
    /// cells (`様式1!C5`); a number, a boolean or text is written as such (a numeric string into
    /// a number field as a number). Null and empty values are skipped. A formula cell is never
    /// overwritten.
    pub fn prefill(&self, template: &[u8], values: &BTreeMap<String, Json>) -> Result<Vec<u8>> {
        let bad = |m: String| WorkbookError::Template(format!("form {}: {m}", self.file));
        let pkg = Package::open(template).map_err(|e| bad(e.to_string()))?;
        let book = pkg.book().map_err(|e| bad(e.to_string()))?;
        let mut by_part: BTreeMap<String, Vec<(CellAt, Fill)>> = BTreeMap::new();
        for (key, value) in values {
            let field = self.fields.iter().find(|f| &f.field == key);
            let at = match field {
                Some(f) => f.at.clone(),
                None => match CellAt::parse(key).or_else(|| book.name(key)) {
                    Some(at) => at,
                    None => {
                        return Err(bad(format!(
                            "prefill key \"{key}\" is not a field on the form, a defined name \
                             or a cell such as \"様式1!C5\""
                        )));
                    }
                },
            };
            let number_field = field.is_some_and(|f| matches!(f.kind, Kind::Number { .. }));
            let fill = match value {
                Json::Null => continue,
                Json::Bool(b) => Fill::Bool(*b),
                Json::Number(n) => Fill::Number(n.as_f64().unwrap_or_default()),
                Json::String(s) if s.trim().is_empty() => continue,
                // A numeric string is a number in a number field, and in any other cell unless
                // it looks like a code ("007").
                Json::String(s) => match s.trim().parse::<f64>() {
                    Ok(n) if n.is_finite() && (number_field || plain_number(s.trim())) => {
                        Fill::Number(n)
                    }
                    _ => Fill::Text(s.clone()),
                },
                other => Fill::Text(other.to_string()),
            };
            let part = book
                .part(&at.sheet)
                .ok_or_else(|| bad(format!("no sheet \"{}\" for {key}", at.sheet)))?
                .to_string();
            if pkg
                .has_formula(&part, (at.row, at.col))
                .map_err(|e| bad(e.to_string()))?
            {
                return Err(bad(format!(
                    "{at} ({key}) holds a formula; prefill writes values only"
                )));
            }
            by_part.entry(part).or_default().push((at, fill));
        }
        pkg.fill(template, &by_part)
    }
}

/// A workbook as a PJMO might return the form, with `values` (keys: field names or cells such as
/// `様式1!C7`) on the form's sheets, each field's defined name kept: what `simulate` attaches
/// to a scripted answer. Written with `rust_xlsxwriter`, not from the template, so it is also a
/// workbook made by another program than the one that sent the form.
pub fn sample_answer(spec: &FormSpec, values: &BTreeMap<String, Json>) -> Result<Vec<u8>> {
    let mut book = rust_xlsxwriter::Workbook::new();
    let w = |e: rust_xlsxwriter::XlsxError| WorkbookError::Write(e.to_string());
    for sheet in &spec.sheets {
        let ws = book.add_worksheet();
        ws.set_name(sheet).map_err(w)?;
        for (key, value) in values {
            let at = match spec.fields.iter().find(|f| &f.field == key) {
                Some(f) => f.at.clone(),
                None => CellAt::parse(key).ok_or_else(|| {
                    WorkbookError::Template(format!(
                        "workbook key \"{key}\" is neither a field of the form nor a cell such as \"様式1!C7\""
                    ))
                })?,
            };
            if &at.sheet != sheet {
                continue;
            }
            let col = u16::try_from(at.col).map_err(|_| WorkbookError::Write(key.clone()))?;
            match value {
                Json::Number(n) => ws
                    .write_number(at.row, col, n.as_f64().unwrap_or_default())
                    .map(|_| ())
                    .map_err(w)?,
                Json::Bool(b) => ws.write_boolean(at.row, col, *b).map(|_| ()).map_err(w)?,
                Json::Null => {}
                Json::String(s) => ws.write_string(at.row, col, s).map(|_| ()).map_err(w)?,
                other => ws
                    .write_string(at.row, col, other.to_string())
                    .map(|_| ())
                    .map_err(w)?,
            }
        }
    }
    for f in &spec.fields {
        if let Some(name) = &f.name {
            let sheet = f.at.sheet.replace('\'', "''");
            let target = format!("='{sheet}'!${}${}", super::col_name(f.at.col), f.at.row + 1);
            book.define_name(name, &target).map_err(w)?;
        }
    }
    book.save_to_buffer().map_err(w)
}

/// "118000", "-5", "0.25"; not "007", "1e5" or "+3".
fn plain_number(s: &str) -> bool {
    let digits = s.strip_prefix('-').unwrap_or(s);
    !digits.is_empty()
        && digits.chars().all(|c| c.is_ascii_digit() || c == '.')
        && !(digits.len() > 1 && digits.starts_with('0') && !digits.starts_with("0."))
}

/// The kind a template's data validation gives a cell: a list → a choice, decimal or whole →
/// a number, date → a date; anything else → as read.
fn kind_from_validation(pkg: &Package, template: &[u8], part: &str, at: &CellAt) -> Result<Kind> {
    let rules = pkg.validations(part)?;
    let Some(rule) = rules
        .iter()
        .find(|v| v.areas.iter().any(|a| a.contains((at.row, at.col))))
    else {
        return Ok(Kind::Auto);
    };
    Ok(match rule.kind.as_str() {
        "list" => {
            let f = rule.formula.trim();
            let choices: Vec<String> =
                if let Some(inner) = f.strip_prefix('"').and_then(|s| s.strip_suffix('"')) {
                    inner.split(',').map(|c| c.trim().to_string()).collect()
                } else {
                    let book = pkg.book()?;
                    let area = match Area::parse(f) {
                        Some(a) => Some(a),
                        None => book
                            .names
                            .iter()
                            .find(|(n, _)| n == f)
                            .and_then(|(_, r)| Area::parse(r)),
                    };
                    match area {
                        Some(area) => {
                            let sheet = area.sheet.clone().unwrap_or_else(|| at.sheet.clone());
                            super::read::range_values(template, &sheet, &area)?
                        }
                        None => Vec::new(),
                    }
                };
            if choices.is_empty() {
                Kind::Auto
            } else {
                Kind::Choice { choices }
            }
        }
        "decimal" | "whole" => Kind::Number {
            unit: None,
            min: None,
            max: None,
        },
        "date" => Kind::Date,
        _ => Kind::Auto,
    })
}

/// One thing wrong with an answer, as the 【要修正】 mail says it.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Problem {
    /// The field, if the problem is about one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub field: Option<String>,
    /// The cell (`様式1 E10`), if there is one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub at: Option<String>,
    /// The sentence: 「様式1 E10（整備経費）が空欄です」.
    pub message: String,
}

/// A field as read from one workbook.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct ReadCell {
    /// The field.
    pub field: String,
    /// Where it was read (`様式1 E10`).
    pub at: String,
    /// The typed value; `null` when the cell is empty or invalid.
    pub value: Json,
    /// What is wrong with the cell, if anything (without the cell's name).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// What one returned workbook gave.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct FormRead {
    /// The attachment's name.
    pub file: String,
    /// It has at least one of the form's sheets.
    pub matched: bool,
    /// The mapped cells.
    pub cells: Vec<ReadCell>,
    /// Problems with the workbook as a whole (a missing sheet).
    pub problems: Vec<Problem>,
    /// What was noticed and how it was handled (macros not run, links not followed).
    pub notes: Vec<String>,
}

/// A file offered with an answer (a mail attachment, an upload on the answer page).
#[derive(Debug, Clone)]
pub struct Offered {
    /// Its file name.
    pub name: String,
    /// Its MIME type, as sent.
    pub content_type: String,
    /// Its bytes.
    pub content: Vec<u8>,
}

impl Offered {
    /// How the file is kept with the answer: its name, type, size, SHA-256 and bytes, and what
    /// was read of it as a form (or why it could not be); for a ZIP archive, the same for each
    /// workbook in it (`archive`).
    pub fn record(&self, reads: &[FormRead], broken: &[(String, String)]) -> Json {
        use base64::Engine as _;
        use sha2::Digest as _;
        let mut entry = serde_json::json!({
            "name": self.name,
            "content_type": self.content_type,
            "size": self.content.len(),
            "sha256": hex::encode(sha2::Sha256::digest(&self.content)),
            "content_base64": base64::engine::general_purpose::STANDARD.encode(&self.content),
        });
        let what = |file: &str| {
            if let Some(r) = reads.iter().find(|r| r.file == file) {
                serde_json::to_value(r).ok()
            } else {
                broken
                    .iter()
                    .find(|(n, _)| n == file)
                    .map(|(_, e)| serde_json::json!({ "error": e }))
            }
        };
        if let Some(w) = what(&self.name) {
            entry["workbook"] = w;
        }
        let prefix = format!("{}/", self.name);
        let members: Vec<Json> = reads
            .iter()
            .map(|r| r.file.as_str())
            .chain(broken.iter().map(|(n, _)| n.as_str()))
            .filter_map(|f| f.strip_prefix(&prefix).map(|m| (f, m)))
            .map(|(f, m)| serde_json::json!({ "name": m, "workbook": what(f) }))
            .collect();
        if !members.is_empty() {
            entry["archive"] = Json::Array(members);
        }
        entry
    }
}

/// What the workbooks among `files` say: the forms read, and the files that could not be read
/// (file name, reason in Japanese for the sender). A ZIP archive is opened for the workbooks in
/// it, which are named `archive.zip/book.xlsx`; files that are neither are passed over. Reading
/// is CPU work bounded by [`Limits`] (up to seconds for a large workbook), so it runs on the
/// blocking pool, off the workers that renew leases and answer requests.
pub async fn read_offered(
    spec: &FormSpec,
    files: Vec<Offered>,
    limits: Limits,
) -> (Vec<FormRead>, Vec<(String, String)>) {
    let files: Vec<Offered> = files
        .into_iter()
        .filter(|f| {
            super::is_workbook(&f.name, &f.content_type)
                || super::is_archive(&f.name, &f.content_type)
                || super::is_tnef(&f.name, &f.content_type)
        })
        .collect();
    if files.is_empty() {
        return (Vec::new(), Vec::new());
    }
    let spec = spec.clone();
    let names: Vec<String> = files.iter().map(|f| f.name.clone()).collect();
    match tokio::task::spawn_blocking(move || read_offered_blocking(&spec, files, &limits)).await {
        Ok(read) => read,
        Err(_) => (
            Vec::new(),
            names
                .into_iter()
                .map(|n| (n, UNREADABLE.to_string()))
                .collect(),
        ),
    }
}

const UNREADABLE: &str = "ファイルの読み取り中に問題が発生したため読み取れませんでした";

/// [`read_offered`] on the calling thread (for the CLI, or code already off the async workers).
pub fn read_offered_blocking(
    spec: &FormSpec,
    files: Vec<Offered>,
    limits: &Limits,
) -> (Vec<FormRead>, Vec<(String, String)>) {
    let mut reads = Vec::new();
    let mut broken = Vec::new();
    let mut books = Vec::new();
    let mut tnef = Vec::new();
    for f in files {
        if super::is_tnef(&f.name, &f.content_type) {
            tnef.push(f.name);
            continue;
        }
        // The file name's extension decides before the MIME type (mail programs label files
        // loosely: a ZIP as application/octet-stream, or as the type of what it holds).
        let archive = super::is_archive(&f.name, "")
            || (!super::is_workbook(&f.name, "") && super::is_archive("", &f.content_type));
        if !archive {
            books.push(f);
            continue;
        }
        match super::package::unpack_archive(&f.content, limits) {
            Ok(members) => {
                for m in members {
                    let name = format!("{}/{}", f.name, m.name);
                    match m.content {
                        Ok(content) => books.push(Offered {
                            name,
                            content_type: String::new(),
                            content,
                        }),
                        Err(e) => broken.push((name, e.to_string())),
                    }
                }
            }
            Err(e) => broken.push((f.name.clone(), e.to_string())),
        }
    }
    for f in &books {
        // The reader already stops calamine's panics; this keeps one bad file from taking
        // the others with it whatever happens.
        let read = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            read_answer(spec, &f.name, &f.content, limits)
        }));
        match read {
            Ok(Ok(r)) => reads.push(r),
            Ok(Err(e)) => broken.push((f.name.clone(), e.to_string())),
            Err(_) => broken.push((f.name.clone(), UNREADABLE.to_string())),
        }
    }
    // A winmail.dat beside a readable workbook is only Outlook's wrapping of the rest.
    if reads.is_empty() {
        broken.extend(
            tnef.into_iter()
                .map(|n| (n, WorkbookError::Tnef.to_string())),
        );
    }
    (reads, broken)
}

/// Reads the form's cells from a returned workbook.
pub fn read_answer(spec: &FormSpec, file: &str, bytes: &[u8], limits: &Limits) -> Result<FormRead> {
    let mut book = Workbook::open(bytes, limits)?;
    let mut out = FormRead {
        file: file.to_string(),
        ..FormRead::default()
    };
    if book.inspection.macros {
        out.notes
            .push("マクロ（VBA）が含まれていますが、実行せずセルの値のみを読み取りました".into());
    }
    if book.inspection.external_links {
        out.notes.push(
            "外部ブックへのリンクが含まれていますが、リンクは更新せず保存されている値を読み取りました"
                .into(),
        );
    }
    let sheets = book.sheet_names();
    out.matched = spec.sheets.iter().any(|s| sheets.contains(s));
    if !out.matched {
        return Ok(out);
    }
    let date1904 = book.date1904();
    // Each field's cell: the returned workbook's own defined name first.
    let places: Vec<(usize, CellAt)> = spec
        .fields
        .iter()
        .enumerate()
        .map(|(i, f)| {
            let at = f
                .name
                .as_deref()
                .and_then(|n| book.defined_name(n))
                .unwrap_or_else(|| f.at.clone());
            (i, at)
        })
        .collect();
    let mut by_sheet: BTreeMap<String, Vec<(u32, u32)>> = BTreeMap::new();
    for (_, at) in &places {
        by_sheet
            .entry(at.sheet.clone())
            .or_default()
            .push((at.row, at.col));
    }
    let mut values: BTreeMap<CellAt, super::read::Cell> = BTreeMap::new();
    for (sheet, wanted) in &by_sheet {
        if !sheets.contains(sheet) {
            out.problems.push(Problem {
                field: None,
                at: None,
                message: format!(
                    "添付ファイル「{file}」にシート「{sheet}」がありません。お送りした様式のシートに記入してください"
                ),
            });
            continue;
        }
        for ((row, col), cell) in book.cells(sheet, wanted)? {
            values.insert(
                CellAt {
                    sheet: sheet.clone(),
                    row,
                    col,
                },
                cell,
            );
        }
    }
    for (i, at) in places {
        let f = &spec.fields[i];
        let Some(cell) = values.get(&at) else {
            continue;
        };
        let external = cell
            .formula
            .as_deref()
            .is_some_and(|f| f.contains('[') && f.contains(']'));
        let (value, error) = if external {
            (
                Json::Null,
                Some("は外部ブックを参照する数式です。値を直接入力してください".to_string()),
            )
        } else {
            match typed(&cell.value, &f.kind, date1904) {
                Ok(v) => (v.unwrap_or(Json::Null), None),
                Err(e) => (Json::Null, Some(e.0)),
            }
        };
        out.cells.push(ReadCell {
            field: f.field.clone(),
            at: at.to_string(),
            value,
            error,
        });
    }
    Ok(out)
}

/// The fields whose merged value is the one a returned workbook gave (their portfolio source).
pub fn given_by_workbook(reads: &[FormRead], fields: &BTreeMap<String, Json>) -> Vec<String> {
    let mut out: Vec<String> = reads
        .iter()
        .filter(|r| r.matched)
        .flat_map(|r| r.cells.iter())
        .filter(|c| !c.value.is_null() && fields.get(&c.field) == Some(&c.value))
        .map(|c| c.field.clone())
        .collect();
    out.sort();
    out.dedup();
    out
}

/// Merges what workbooks gave into the body's fields (see the module's precedence rule) and
/// returns the problems left: invalid cells and empty required cells of fields no source gave.
/// Body values of typed fields are converted where they can be ("12,000千円" → 12000).
pub fn merge(
    spec: &FormSpec,
    reads: &[FormRead],
    body: &mut BTreeMap<String, Json>,
) -> Vec<Problem> {
    for f in &spec.fields {
        if let Some(Json::String(s)) = body.get(&f.field)
            && !matches!(f.kind, Kind::Auto | Kind::Text)
            && let Ok(Some(v)) = typed(&Raw::Text(s.clone()), &f.kind, false)
        {
            body.insert(f.field.clone(), v);
        }
    }
    let given = |body: &BTreeMap<String, Json>, field: &str| {
        body.get(field)
            .is_some_and(|v| !v.is_null() && v.as_str().is_none_or(|s| !s.trim().is_empty()))
    };
    let mut problems: Vec<Problem> = Vec::new();
    let matched: Vec<&FormRead> = reads.iter().filter(|r| r.matched).collect();
    for r in &matched {
        problems.extend(r.problems.iter().cloned());
    }
    for f in &spec.fields {
        let mut latest: Option<&ReadCell> = None;
        let mut error: Option<&ReadCell> = None;
        let mut empty: Option<&ReadCell> = None;
        for r in &matched {
            for c in r.cells.iter().filter(|c| c.field == f.field) {
                if !c.value.is_null() {
                    latest = Some(c);
                } else if c.error.is_some() {
                    error = Some(c);
                } else {
                    empty = Some(c);
                }
            }
        }
        if let Some(c) = latest {
            body.insert(f.field.clone(), c.value.clone());
            continue;
        }
        if given(body, &f.field) {
            continue;
        }
        if let Some(c) = error {
            problems.push(Problem {
                field: Some(f.field.clone()),
                at: Some(c.at.clone()),
                message: format!(
                    "{}（{}）{}",
                    c.at,
                    f.field,
                    c.error.as_deref().unwrap_or_default()
                ),
            });
        } else if f.required
            && let Some(c) = empty
        {
            problems.push(Problem {
                field: Some(f.field.clone()),
                at: Some(c.at.clone()),
                message: format!("{}（{}）が空欄です", c.at, f.field),
            });
        }
    }
    if matched.is_empty()
        && let Some(r) = reads.first()
    {
        problems.push(Problem {
            field: None,
            at: None,
            message: format!(
                "添付ファイル「{}」はお送りした様式（{}）ではないため読み取れませんでした。お送りした様式に記入してご返信ください",
                r.file, spec.file
            ),
        });
    }
    problems
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // in tests a failed unwrap is the failure
mod tests {
    use super::*;
    use serde_json::json;

    fn spec() -> FormSpec {
        FormSpec {
            file: "様式1.xlsx".into(),
            sheets: vec!["様式1".into()],
            fields: vec![
                FormField {
                    field: "整備経費".into(),
                    at: CellAt::parse("様式1!E10").unwrap(),
                    name: None,
                    kind: Kind::Number {
                        unit: Some("千円".into()),
                        min: None,
                        max: None,
                    },
                    required: true,
                },
                FormField {
                    field: "区分".into(),
                    at: CellAt::parse("様式1!E6").unwrap(),
                    name: None,
                    kind: Kind::Choice {
                        choices: vec!["新規".into(), "改修".into()],
                    },
                    required: true,
                },
                FormField {
                    field: "KPI".into(),
                    at: CellAt::parse("様式1!E14").unwrap(),
                    name: None,
                    kind: Kind::Auto,
                    required: false,
                },
            ],
        }
    }

    fn read(cells: &[(&str, &str, Json, Option<&str>)]) -> FormRead {
        FormRead {
            file: "a.xlsx".into(),
            matched: true,
            cells: cells
                .iter()
                .map(|(f, at, v, e)| ReadCell {
                    field: f.to_string(),
                    at: at.to_string(),
                    value: v.clone(),
                    error: e.map(str::to_string),
                })
                .collect(),
            ..FormRead::default()
        }
    }

    #[test]
    fn workbook_wins_body_fills_gaps_and_problems_name_cells() {
        let mut body: BTreeMap<String, Json> = [
            ("整備経費".to_string(), json!("1.2億")),
            ("KPI".into(), json!("95%")),
        ]
        .into();
        let r = read(&[
            ("整備経費", "様式1 E10", Json::Null, None),
            (
                "区分",
                "様式1 E6",
                Json::Null,
                Some("は「新規」「改修」のいずれかを選択してください（入力値: 「その他」）"),
            ),
            ("KPI", "様式1 E14", json!("利用率90%"), None),
        ]);
        let problems = merge(&spec(), &[r], &mut body);
        assert_eq!(
            body["整備経費"],
            json!(120000),
            "the body's amount, in 千円"
        );
        assert_eq!(body["KPI"], json!("利用率90%"), "the workbook wins");
        assert_eq!(
            problems
                .iter()
                .map(|p| p.message.as_str())
                .collect::<Vec<_>>(),
            [
                "様式1 E6（区分）は「新規」「改修」のいずれかを選択してください（入力値: 「その他」）"
            ]
        );
        let mut body = BTreeMap::new();
        let r = read(&[("整備経費", "様式1 E10", Json::Null, None)]);
        let p = merge(&spec(), &[r], &mut body);
        assert_eq!(p[0].message, "様式1 E10（整備経費）が空欄です");
        // A later workbook wins over an earlier one.
        let mut body = BTreeMap::new();
        let a = read(&[("整備経費", "様式1 E10", json!(1), None)]);
        let b = read(&[("整備経費", "様式1 E10", json!(2), None)]);
        merge(&spec(), &[a, b], &mut body);
        assert_eq!(body["整備経費"], json!(2));
        // A workbook that is not the form.
        let other = FormRead {
            file: "memo.xlsx".into(),
            ..FormRead::default()
        };
        let p = merge(&spec(), &[other], &mut BTreeMap::new());
        assert!(
            p[0].message
                .contains("「memo.xlsx」はお送りした様式（様式1.xlsx）ではない")
        );
    }
}
