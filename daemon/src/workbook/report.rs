//! Reports as `.xlsx`, written with `rust_xlsxwriter`: one sheet per section, a bold header row
//! that stays in view (frozen) with a filter, yen / 千円 / percent / date number formats, and
//! column widths from the content (full-width characters count double).

use rust_xlsxwriter::{ExcelDateTime, Format, FormatAlign, FormatBorder, Workbook};
use serde_json::Value as Json;

use super::WorkbookError;

/// One sheet of a report.
#[derive(Debug, Clone, Default, PartialEq, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Sheet {
    /// The tab's name (cut to Excel's 31 characters; `[]:*?/\` replaced).
    pub name: String,
    /// The columns.
    pub columns: Vec<Column>,
    /// The rows: one value per column (numbers, text, booleans, ISO dates, null).
    #[serde(default)]
    pub rows: Vec<Vec<Json>>,
}

/// One column.
#[derive(Debug, Clone, Default, PartialEq, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Column {
    /// The header (Japanese, as the reader expects it).
    pub header: String,
    /// `yen` (#,##0"円"), `thousand_yen` (#,##0"千円"), `number` (#,##0), `percent` (0.0%),
    /// `date` (yyyy"年"m"月"d"日"), `text`, or an Excel number format of your own.
    #[serde(default)]
    pub format: Option<String>,
    /// Width in characters; from the content when absent.
    #[serde(default)]
    pub width: Option<f64>,
}

/// The Excel number format of a column's `format`.
fn number_format(name: &str) -> Option<&str> {
    Some(match name {
        "yen" => "#,##0\"円\"",
        "thousand_yen" => "#,##0\"千円\"",
        "number" => "#,##0",
        "decimal" => "#,##0.0",
        "percent" => "0.0%",
        "date" => "yyyy\"年\"m\"月\"d\"日\"",
        "text" => "@",
        _ => return None,
    })
}

/// Display width: full-width characters count 2.
fn width_of(text: &str) -> f64 {
    text.chars()
        .map(|c| if (c as u32) < 0x1100 { 1.0 } else { 2.0 })
        .sum()
}

/// A valid, unique sheet name.
fn sheet_name(name: &str, taken: &mut Vec<String>) -> String {
    let clean: String = name
        .chars()
        .map(|c| if "[]:*?/\\".contains(c) { '_' } else { c })
        .take(31)
        .collect();
    let base = if clean.trim().is_empty() {
        "Sheet".to_string()
    } else {
        clean
    };
    let mut candidate = base.clone();
    let mut n = 2;
    while taken
        .iter()
        .any(|t| t.to_lowercase() == candidate.to_lowercase())
    {
        let suffix = format!("({n})");
        candidate = format!(
            "{}{suffix}",
            base.chars().take(31 - suffix.len()).collect::<String>()
        );
        n += 1;
    }
    taken.push(candidate.clone());
    candidate
}

fn write_error(e: rust_xlsxwriter::XlsxError) -> WorkbookError {
    WorkbookError::Write(e.to_string())
}

/// The `.xlsx` bytes of `sheets`.
pub fn write(sheets: &[Sheet]) -> Result<Vec<u8>, WorkbookError> {
    if sheets.is_empty() {
        return Err(WorkbookError::Write(
            "a report needs at least one sheet".into(),
        ));
    }
    let mut book = Workbook::new();
    let header = Format::new()
        .set_bold()
        .set_background_color("#DDEBF7")
        .set_border(FormatBorder::Thin)
        .set_align(FormatAlign::Center)
        .set_align(FormatAlign::VerticalCenter)
        .set_text_wrap();
    let mut taken = Vec::new();
    for sheet in sheets {
        let ws = book.add_worksheet();
        ws.set_name(sheet_name(&sheet.name, &mut taken))
            .map_err(write_error)?;
        let formats: Vec<Format> = sheet
            .columns
            .iter()
            .map(|c| {
                let f = Format::new().set_border(FormatBorder::Thin);
                match c.format.as_deref() {
                    Some(name) => f.set_num_format(number_format(name).unwrap_or(name)),
                    None => f,
                }
            })
            .collect();
        let mut widths: Vec<f64> = sheet.columns.iter().map(|c| width_of(&c.header)).collect();
        for (col, c) in sheet.columns.iter().enumerate() {
            let col16 =
                u16::try_from(col).map_err(|_| WorkbookError::Write("too many columns".into()))?;
            ws.write_string_with_format(0, col16, &c.header, &header)
                .map_err(write_error)?;
        }
        for (i, row) in sheet.rows.iter().enumerate() {
            let r =
                u32::try_from(i + 1).map_err(|_| WorkbookError::Write("too many rows".into()))?;
            for (col, value) in row.iter().enumerate().take(sheet.columns.len()) {
                let col16 = col as u16;
                let fmt = &formats[col];
                let kind = sheet.columns[col].format.as_deref();
                let shown = match value {
                    Json::Null => {
                        ws.write_blank(r, col16, fmt).map_err(write_error)?;
                        String::new()
                    }
                    Json::Bool(b) => {
                        let t = if *b { "○" } else { "×" };
                        ws.write_string_with_format(r, col16, t, fmt)
                            .map_err(write_error)?;
                        t.to_string()
                    }
                    Json::Number(n) => {
                        let v = n.as_f64().unwrap_or_default();
                        ws.write_number_with_format(r, col16, v, fmt)
                            .map_err(write_error)?;
                        shown_number(v, kind)
                    }
                    Json::String(s) => {
                        let number = (kind != Some("text") && kind.is_some())
                            .then(|| s.replace(',', "").trim().parse::<f64>().ok())
                            .flatten();
                        let date = (kind == Some("date"))
                            .then(|| ExcelDateTime::parse_from_str(s.get(..10).unwrap_or(s)).ok())
                            .flatten();
                        if let Some(d) = date {
                            ws.write_datetime_with_format(r, col16, &d, fmt)
                                .map_err(write_error)?;
                            "2027年12月31日".to_string()
                        } else if let Some(v) = number {
                            ws.write_number_with_format(r, col16, v, fmt)
                                .map_err(write_error)?;
                            shown_number(v, kind)
                        } else {
                            ws.write_string_with_format(r, col16, s, fmt)
                                .map_err(write_error)?;
                            s.clone()
                        }
                    }
                    Json::Array(items) => {
                        // A list of reasons reads as one cell: 超過・遅延.
                        let t = items
                            .iter()
                            .map(|i| i.as_str().map_or_else(|| i.to_string(), str::to_string))
                            .collect::<Vec<_>>()
                            .join("・");
                        ws.write_string_with_format(r, col16, &t, fmt)
                            .map_err(write_error)?;
                        t
                    }
                    other => {
                        let t = other.to_string();
                        ws.write_string_with_format(r, col16, &t, fmt)
                            .map_err(write_error)?;
                        t
                    }
                };
                let longest = shown.lines().map(width_of).fold(0.0, f64::max);
                widths[col] = widths[col].max(longest);
            }
        }
        for (col, c) in sheet.columns.iter().enumerate() {
            let w = c
                .width
                .unwrap_or_else(|| (widths[col] + 2.0).clamp(8.0, 60.0));
            ws.set_column_width(col as u16, w).map_err(write_error)?;
        }
        ws.set_freeze_panes(1, 0).map_err(write_error)?;
        if !sheet.columns.is_empty() {
            let last_row = u32::try_from(sheet.rows.len()).unwrap_or(u32::MAX);
            ws.autofilter(0, 0, last_row, (sheet.columns.len() - 1) as u16)
                .map_err(write_error)?;
        }
    }
    book.save_to_buffer().map_err(write_error)
}

/// A number as its format will show it, for the width.
fn shown_number(v: f64, kind: Option<&str>) -> String {
    let digits = super::value::number_text(v.round());
    let grouped = digits.len() + digits.len() / 3;
    let suffix = match kind {
        Some("yen") => 2,
        Some("thousand_yen") => 4,
        Some("percent") => 2,
        _ => 0,
    };
    "0".repeat(grouped + suffix)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // in tests a failed unwrap is the failure
mod tests {
    use super::*;

    #[test]
    fn sheet_names_are_valid_and_unique() {
        let mut taken = Vec::new();
        assert_eq!(sheet_name("一覧", &mut taken), "一覧");
        assert_eq!(sheet_name("一覧", &mut taken), "一覧(2)");
        assert_eq!(sheet_name("a/b:c", &mut taken), "a_b_c");
        assert_eq!(sheet_name("", &mut taken), "Sheet");
        assert_eq!(sheet_name(&"長".repeat(40), &mut taken).chars().count(), 31);
    }
}
