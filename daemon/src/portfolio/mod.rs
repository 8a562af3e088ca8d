//! The portfolio as people read it: the fields and periods of a set of entries, the CSV export,
//! the Excel workbook with a native chart per numeric field (`xlsx.rs`) and the inline SVG
//! charts of a project's page (`svg.rs`). Pure: the entries come from the store.

pub mod svg;
pub mod xlsx;

use std::collections::BTreeMap;

use serde_json::Value as Json;

use crate::store::PortfolioEntry;

/// One field as the portfolio shows it.
#[derive(Debug, Clone, PartialEq)]
pub struct Field {
    /// The field's name.
    pub name: String,
    /// What its numbers count in (`万円`), if declared.
    pub unit: Option<String>,
    /// Every value recorded is a number: it gets a chart.
    pub numeric: bool,
}

/// The fields of `entries`, in the order the requests asked for them.
pub fn fields(entries: &[PortfolioEntry]) -> Vec<Field> {
    let mut seen: BTreeMap<&str, (i64, Option<String>, bool)> = BTreeMap::new();
    for e in entries {
        for (name, v) in &e.values {
            let slot = seen
                .entry(name.as_str())
                .or_insert((v.position, v.unit.clone(), true));
            slot.0 = slot.0.min(v.position);
            if slot.1.is_none() {
                slot.1 = v.unit.clone();
            }
            slot.2 &= v.value.is_number();
        }
    }
    let mut out: Vec<(i64, Field)> = seen
        .into_iter()
        .map(|(name, (pos, unit, numeric))| {
            (
                pos,
                Field {
                    name: name.to_string(),
                    unit,
                    numeric,
                },
            )
        })
        .collect();
    out.sort_by(|a, b| a.0.cmp(&b.0).then_with(|| a.1.name.cmp(&b.1.name)));
    out.into_iter().map(|(_, f)| f).collect()
}

/// The periods of `entries`, oldest first, the latest `last` of them.
pub fn periods(entries: &[PortfolioEntry], last: usize) -> Vec<String> {
    let mut p: Vec<String> = entries.iter().map(|e| e.period.clone()).collect();
    p.sort();
    p.dedup();
    let skip = p.len().saturating_sub(last);
    p.split_off(skip)
}

/// An entry's status in Japanese.
pub fn status_ja(e: &PortfolioEntry) -> &'static str {
    match (e.status.as_str(), e.late) {
        ("answered", true) => "期限後回答",
        ("answered", false) => "回答済",
        _ => "未回答",
    }
}

/// Where a value came from, in Japanese.
pub fn source_ja(source: &str) -> &'static str {
    match source {
        "email" => "メール",
        "web" => "Webフォーム",
        "workbook" => "様式",
        "api" => "API",
        _ => "その他",
    }
}

/// A value as a person reads it: `12,000万円`, `はい`, `2027-04-01`, text as written.
pub fn value_text(v: &Json, unit: Option<&str>) -> String {
    match v {
        Json::Number(n) => {
            let text = grouped(n.as_f64().unwrap_or(0.0));
            format!("{text}{}", unit.unwrap_or(""))
        }
        Json::Bool(b) => if *b { "はい" } else { "いいえ" }.into(),
        Json::String(s) => s.clone(),
        Json::Null => String::new(),
        other => other.to_string(),
    }
}

/// A number with thousands separators (`12,000`, `-3.5`).
pub fn grouped(n: f64) -> String {
    let text = crate::workbook::value::number_text(n);
    let (sign, rest) = match text.strip_prefix('-') {
        Some(r) => ("-", r),
        None => ("", text.as_str()),
    };
    let (int, frac) = rest
        .split_once('.')
        .map_or((rest, None), |(i, f)| (i, Some(f)));
    let mut out = String::new();
    for (i, c) in int.chars().enumerate() {
        if i > 0 && (int.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(c);
    }
    match frac {
        Some(f) => format!("{sign}{out}.{f}"),
        None => format!("{sign}{out}"),
    }
}

/// The fixed columns of the CSV and of the workbook's 一覧 sheet, before one column per field.
pub const COLUMNS: [&str; 8] = [
    "ワークフロー",
    "対象ID",
    "名称",
    "責任者",
    "期間",
    "回答状況",
    "期限後",
    "回答経路",
];

/// One row per entry: the fixed columns, then each field's value (numbers as plain numbers).
pub fn rows(entries: &[PortfolioEntry], fields: &[Field]) -> Vec<Vec<Json>> {
    entries
        .iter()
        .map(|e| {
            let mut row: Vec<Json> = vec![
                e.workflow_id.clone().into(),
                e.subject.clone().into(),
                e.name.clone().into(),
                e.owner.clone().into(),
                e.period.clone().into(),
                status_ja(e).into(),
                if e.late { "○" } else { "" }.into(),
                e.via.as_deref().map(source_ja).unwrap_or("").into(),
            ];
            row.extend(fields.iter().map(|f| {
                e.values
                    .get(&f.name)
                    .map_or(Json::Null, |v| v.value.clone())
            }));
            row
        })
        .collect()
}

/// The header of [`rows`]: a field with a unit is `予算額（万円）`.
pub fn header(fields: &[Field]) -> Vec<String> {
    COLUMNS
        .iter()
        .map(|c| c.to_string())
        .chain(fields.iter().map(|f| match &f.unit {
            Some(u) => format!("{}（{u}）", f.name),
            None => f.name.clone(),
        }))
        .collect()
}

/// The CSV export: UTF-8 with a BOM (Excel opens it), CRLF, RFC 4180 quoting.
pub fn csv(entries: &[PortfolioEntry]) -> String {
    let fields = fields(entries);
    let mut out = String::from("\u{feff}");
    let line = |cells: Vec<String>| {
        cells
            .iter()
            .map(|c| {
                if c.contains([',', '"', '\n', '\r']) {
                    format!("\"{}\"", c.replace('"', "\"\""))
                } else {
                    c.clone()
                }
            })
            .collect::<Vec<_>>()
            .join(",")
            + "\r\n"
    };
    out.push_str(&line(header(&fields)));
    for row in rows(entries, &fields) {
        out.push_str(&line(
            row.iter()
                .map(|v| match v {
                    Json::String(s) => s.clone(),
                    Json::Null => String::new(),
                    Json::Bool(b) => if *b { "はい" } else { "いいえ" }.into(),
                    other => other.to_string(),
                })
                .collect(),
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_read_as_people_write_them() {
        assert_eq!(grouped(12000.0), "12,000");
        assert_eq!(grouped(-1234567.5), "-1,234,567.5");
        assert_eq!(grouped(0.0), "0");
        assert_eq!(
            value_text(&serde_json::json!(8500), Some("万円")),
            "8,500万円"
        );
        assert_eq!(value_text(&serde_json::json!(true), None), "はい");
    }
}
