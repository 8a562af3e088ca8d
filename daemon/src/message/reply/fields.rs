//! The requested fields in a reply's new text: `項目: 値` lines and their relatives, tables
//! pasted from Excel, and pmoflow's own form filled in below an unquoted original.

use std::collections::BTreeMap;

use serde_json::Value as Json;

use super::Answers;
use super::correlate::fold_width;
use super::signature::{is_closing, signoff_start};

/// Reads the requested `fields` from the new text of a reply. `sender` is the sender's display
/// name, if known: a trailing line with that name (or a part of it, such as the family name) is a
/// sign-off, not part of the last value.
pub(super) fn parse(text: &str, wanted: &Wanted<'_>, sender: Option<&str>) -> Answers {
    let mut answers = Answers::default();
    let mut free: Vec<String> = Vec::new();
    let mut current: Option<(&String, Vec<String>)> = None;
    let mut blank_seen = false;
    let finish = |answers: &mut Answers, current: Option<(&String, Vec<String>)>| {
        if let Some((name, lines)) = current {
            let value = lines.join("\n").trim().to_string();
            if !value.is_empty() {
                answers.fields.insert(name.clone(), normalise_value(&value));
            }
        }
    };
    // Tables are rewritten as field lines; most replies have none.
    let lines: Vec<std::borrow::Cow<'_, str>> = if text.contains('\t') {
        tables_as_fields(text, wanted)
            .into_iter()
            .map(std::borrow::Cow::Owned)
            .collect()
    } else {
        text.lines().map(std::borrow::Cow::Borrowed).collect()
    };
    for line in lines.iter().map(|l| l.as_ref()) {
        if let Some((name, value)) = wanted.field_line(line) {
            finish(&mut answers, current.take());
            current = Some((name, vec![value]));
            blank_seen = false;
            continue;
        }
        if line.trim().is_empty() {
            blank_seen = true;
            if current.is_none() {
                free.push(String::new());
            }
            continue;
        }
        if current.is_some() && is_closing(line) {
            // よろしくお願いいたします。/ 以上 / Best regards end a value, blank line or not.
            finish(&mut answers, current.take());
            free.push(line.trim_end().to_string());
            blank_seen = false;
            continue;
        }
        match &mut current {
            // A value continues until a blank line; one whose first line was empty may start
            // after a blank line.
            Some((_, lines)) if !blank_seen || lines.iter().all(|l| l.trim().is_empty()) => {
                lines.push(fold_width(line.trim()));
            }
            _ => {
                finish(&mut answers, current.take());
                free.push(line.trim_end().to_string());
            }
        }
        blank_seen = false;
    }
    // The last value may run into a signature written without a delimiter.
    if let Some((_, lines)) = &mut current {
        let cut = signoff_start(lines, sender);
        let tail: Vec<String> = lines.drain(cut..).collect();
        finish(&mut answers, current.take());
        free.extend(tail);
    }
    answers.free_text = free.join("\n").trim().to_string();
    answers
}

/// A field name as compared: NFKC, no spaces or brackets, lower case.
pub(super) fn key_form(s: &str) -> String {
    fold_width(s)
        .chars()
        .filter(|c| {
            !c.is_whitespace()
                && !matches!(c, '【' | '】' | '[' | ']' | '■' | '・' | '●' | '◆' | '*')
        })
        .collect::<String>()
        .to_lowercase()
}

/// The requested fields, by the form their names are compared in ([`key_form`]).
pub(super) struct Wanted<'a>(Vec<(String, &'a String)>);

impl<'a> Wanted<'a> {
    pub(super) fn new(fields: &'a [String]) -> Self {
        Self(fields.iter().map(|f| (key_form(f), f)).collect())
    }

    /// The field a label names: exactly, or with the request's hint in brackets after it
    /// (`総合評価（良好／注意／要対応）`).
    fn name(&self, label: &str) -> Option<&'a String> {
        let key = key_form(label);
        let base = key
            .strip_suffix(')')
            .and_then(|k| k.rfind('(').map(|i| k[..i].to_string()));
        self.0
            .iter()
            .find(|(k, _)| *k == key)
            .or_else(|| self.0.iter().find(|(k, _)| Some(k) == base.as_ref()))
            .map(|(_, name)| *name)
    }

    /// `項目: 値`, `項目：値`, `【項目】値`, `■項目: 値`, `1. 項目: 値`, and `項目＝値`, `項目 → 値`,
    /// `項目　値` (a full-width space, a tab or two spaces after the name) for a wanted field.
    pub(super) fn field_line(&self, line: &str) -> Option<(&'a String, String)> {
        let n = fold_width(line.trim());
        let n = strip_bullet(&n);
        if let Some(rest) = n.strip_prefix('【') {
            let (k, v) = rest.split_once('】')?;
            return self
                .name(k)
                .map(|name| (name, v.trim_start_matches([':', ' ']).trim().to_string()));
        }
        if let Some((k, v)) = n.split_once(':')
            && let Some(name) = self.name(k)
        {
            return Some((name, v.trim().to_string()));
        }
        if let Some((k, v)) = n.split_once(['=', '→', '⇒'])
            && let Some(name) = self.name(k)
        {
            return Some((name, v.trim().to_string()));
        }
        // A name, then a wide gap, then the value (the original line: folding narrows the
        // full-width space).
        let raw = strip_bullet(line.trim());
        let gap = raw.find(['\u{3000}', '\t']).or_else(|| raw.find("  "))?;
        let (k, v) = raw.split_at(gap);
        let v = v.trim();
        (!v.is_empty())
            .then(|| self.name(k))
            .flatten()
            .map(|name| (name, fold_width(v)))
    }

    /// Whether a line is one of the request's field lines (with or without a value), a table
    /// row included.
    pub(super) fn is_field_line(&self, line: &str) -> bool {
        self.field_line(line).is_some()
            || self
                .name(strip_bullet(line.trim()).trim_end_matches([':', '：']))
                .is_some()
            || line
                .split('\t')
                .next()
                .is_some_and(|c| self.name(c).is_some())
    }
}

/// A line's label (before its colon) as compared, if it has one.
pub(super) fn field_label(line: &str) -> Option<String> {
    let n = fold_width(line.trim());
    strip_bullet(&n)
        .split_once(':')
        .map(|(k, _)| key_form(k))
        .filter(|k| !k.is_empty())
}

fn strip_bullet(s: &str) -> &str {
    s.trim_start_matches(|c: char| c.is_ascii_digit() || matches!(c, '.' | ')' | '(' | ' '))
        .trim_start_matches(['■', '・', '●', '◆', '*', '-', ' '])
}

/// Answers laid out as a table pasted from Excel (tab-separated cells; an HTML `<table>` arrives
/// so too, see `html_to_text`), rewritten as `項目: 値` lines: field names in the first column
/// (`総合評価⇥良好`), or in the first row with the values in the row below (`総合評価⇥進捗` /
/// `良好⇥80%`). Other lines are kept as they are.
fn tables_as_fields(text: &str, wanted: &Wanted<'_>) -> Vec<String> {
    let lines: Vec<&str> = text.lines().collect();
    let mut out = Vec::with_capacity(lines.len());
    let mut i = 0;
    while i < lines.len() {
        let line = lines[i];
        i += 1;
        if !line.contains('\t') {
            out.push(line.to_string());
            continue;
        }
        let cells: Vec<&str> = line.split('\t').map(str::trim).collect();
        let names: Vec<Option<&String>> = cells.iter().map(|c| wanted.name(c)).collect();
        let header = names.iter().filter(|n| n.is_some()).count() >= 2
            && cells
                .iter()
                .zip(&names)
                .all(|(c, n)| n.is_some() || c.is_empty());
        if header && let Some(row) = lines.get(i).filter(|r| r.contains('\t')) {
            i += 1;
            for (name, value) in names.iter().zip(row.split('\t').map(str::trim)) {
                if let Some(name) = name {
                    out.push(format!("{name}: {value}"));
                }
            }
            out.push(String::new());
        } else if let Some(name) = wanted.name(strip_bullet(cells[0]).trim_end_matches([':', '：']))
        {
            let value: Vec<&str> = cells[1..]
                .iter()
                .copied()
                .filter(|c| !c.is_empty())
                .collect();
            out.push(format!("{name}: {}", value.join(" ")));
        } else {
            out.push(line.to_string());
        }
    }
    out
}

/// pmoflow's own form filled in below an unquoted original (Outlook replying without `>`: the
/// lead types after each `項目:` of the request): the field lines with a value after our
/// unquoted cut marker, up to the next older message. Read only when the new text answers
/// nothing; a value must be on the field's own line.
pub(super) fn form_in_history(body: &str, wanted: &Wanted<'_>) -> BTreeMap<String, Json> {
    use super::history::{is_history_start, is_marker, is_quoted};
    let lines: Vec<&str> = body.lines().collect();
    let mut fields = BTreeMap::new();
    // Most messages hold no cut marker at all: skip the line-by-line look.
    if !body.contains("この線より上") && !body.to_lowercase().contains("reply above this line")
    {
        return fields;
    }
    let Some(marker) = lines.iter().position(|l| !is_quoted(l) && is_marker(l)) else {
        return fields;
    };
    for j in marker + 1..lines.len() {
        if is_history_start(&lines, j) {
            break;
        }
        if let Some((name, value)) = wanted.field_line(lines[j])
            && !is_quoted(lines[j])
            && !value.is_empty()
        {
            fields.insert(name.clone(), normalise_value(&value));
        }
    }
    fields
}

/// NFKC, without surrounding 「」; a bare number or percentage becomes a JSON number.
pub fn normalise_value(value: &str) -> Json {
    let v = fold_width(value.trim());
    let v = v
        .strip_prefix('「')
        .and_then(|s| s.strip_suffix('」'))
        .unwrap_or(&v)
        .trim()
        .to_string();
    let numeric = v.trim_end_matches('%').replace(',', "");
    if !numeric.is_empty()
        && numeric
            .chars()
            .all(|c| c.is_ascii_digit() || c == '.' || c == '-')
        && let Ok(n) = numeric.parse::<f64>()
        && n.is_finite()
    {
        return serde_json::Number::from_f64(n)
            .map(|num| {
                if n.fract() == 0.0 && n.abs() < 1e15 {
                    Json::from(n as i64)
                } else {
                    Json::Number(num)
                }
            })
            .unwrap_or(Json::String(v));
    }
    Json::String(v)
}
