//! The portfolio as an Excel workbook (`rust_xlsxwriter`): a 一覧 sheet with one row per
//! subject and period, then one sheet per field — subjects down, periods across — with a native
//! line chart for each numeric field whose series point at that sheet's cells, so a PMO head can
//! paste table and chart into a 資料.

use std::collections::{BTreeMap, BTreeSet};

use rust_xlsxwriter::{Chart, ChartMarker, ChartMarkerType, Format, FormatBorder, Workbook};
use serde_json::Value as Json;

use super::{Field, fields, header, rows};
use crate::store::PortfolioEntry;

/// The most subjects one chart draws (one series each); the sheet holds them all.
pub const MAX_SERIES: usize = 30;

/// Why the workbook could not be written.
#[derive(Debug, thiserror::Error)]
#[error("cannot write the portfolio workbook: {0}")]
pub struct XlsxError(#[from] rust_xlsxwriter::XlsxError);

/// A sheet name Excel accepts: no `[]:*?/\`, at most 31 characters, unique in the book.
fn sheet_name(field: &str, taken: &mut BTreeSet<String>) -> String {
    let clean: String = field
        .chars()
        .map(|c| if "[]:*?/\\'".contains(c) { '_' } else { c })
        .take(28)
        .collect();
    let clean = if clean.trim().is_empty() {
        "項目".to_string()
    } else {
        clean
    };
    let mut name = clean.clone();
    let mut n = 2;
    while taken.contains(&name) {
        name = format!("{clean}_{n}");
        n += 1;
    }
    taken.insert(name.clone());
    name
}

/// The workbook of `entries`.
pub fn workbook(entries: &[PortfolioEntry]) -> Result<Vec<u8>, XlsxError> {
    let fields = fields(entries);
    let mut book = Workbook::new();
    let head = Format::new()
        .set_bold()
        .set_background_color("#DDEBF7")
        .set_border(FormatBorder::Thin);
    let number = Format::new().set_num_format("#,##0.##");
    let mut taken: BTreeSet<String> = ["一覧".to_string()].into();

    let overview = book.add_worksheet();
    overview.set_name("一覧")?;
    for (c, h) in header(&fields).iter().enumerate() {
        overview.write_string_with_format(0, c as u16, h, &head)?;
        overview.set_column_width(c as u16, if c < 8 { 14 } else { 16 })?;
    }
    for (r, row) in rows(entries, &fields).iter().enumerate() {
        for (c, v) in row.iter().enumerate() {
            write(overview, r as u32 + 1, c as u16, v, &number)?;
        }
    }
    overview.set_freeze_panes(1, 0)?;

    // Subjects in order, each with its name; periods in order.
    let mut subjects: BTreeMap<(String, String), String> = BTreeMap::new();
    for e in entries {
        subjects
            .entry((e.workflow_id.clone(), e.subject.clone()))
            .or_insert_with(|| e.name.clone());
    }
    let periods = super::periods(entries, usize::MAX);
    let cell: BTreeMap<(&str, &str, &str), &PortfolioEntry> = entries
        .iter()
        .map(|e| {
            (
                (
                    e.workflow_id.as_str(),
                    e.subject.as_str(),
                    e.period.as_str(),
                ),
                e,
            )
        })
        .collect();
    for f in &fields {
        let name = sheet_name(&f.name, &mut taken);
        let sheet = book.add_worksheet();
        sheet.set_name(&name)?;
        sheet.write_string_with_format(0, 0, "対象ID", &head)?;
        sheet.write_string_with_format(0, 1, "名称", &head)?;
        sheet.set_column_width(1, 24)?;
        for (i, p) in periods.iter().enumerate() {
            sheet.write_string_with_format(0, i as u16 + 2, p, &head)?;
        }
        for (r, ((workflow, subject), label)) in subjects.iter().enumerate() {
            let row = r as u32 + 1;
            sheet.write_string(row, 0, subject)?;
            sheet.write_string(row, 1, if label.is_empty() { subject } else { label })?;
            for (i, p) in periods.iter().enumerate() {
                if let Some(v) = cell
                    .get(&(workflow.as_str(), subject.as_str(), p.as_str()))
                    .and_then(|e| e.values.get(&f.name))
                {
                    write(sheet, row, i as u16 + 2, &v.value, &number)?;
                }
            }
        }
        sheet.set_freeze_panes(1, 2)?;
        if f.numeric && !periods.is_empty() {
            let chart = chart(f, &name, subjects.len(), periods.len());
            sheet.insert_chart(subjects.len() as u32 + 3, 1, &chart)?;
        }
    }
    Ok(book.save_to_buffer()?)
}

/// A line chart of one field's sheet: a series per subject (row), periods as categories.
fn chart(f: &Field, sheet: &str, subjects: usize, periods: usize) -> Chart {
    let mut chart = Chart::new_line();
    let unit = f.unit.as_deref().unwrap_or("");
    chart.title().set_name(&if unit.is_empty() {
        format!("{}の推移", f.name)
    } else {
        format!("{}の推移（{unit}）", f.name)
    });
    chart.x_axis().set_name("期間");
    chart.y_axis().set_name(if unit.is_empty() {
        f.name.as_str()
    } else {
        unit
    });
    let last = periods as u16 + 1;
    for r in 0..subjects.min(MAX_SERIES) {
        let row = r as u32 + 1;
        chart
            .add_series()
            .set_name((sheet, row, 1))
            .set_categories((sheet, 0, 2, 0, last))
            .set_values((sheet, row, 2, row, last))
            .set_marker(ChartMarker::new().set_type(ChartMarkerType::Circle));
    }
    chart.set_width(720).set_height(360);
    chart
}

fn write(
    sheet: &mut rust_xlsxwriter::Worksheet,
    row: u32,
    col: u16,
    v: &Json,
    number: &Format,
) -> Result<(), XlsxError> {
    match v {
        Json::Null => {}
        Json::Number(n) => {
            sheet.write_number_with_format(row, col, n.as_f64().unwrap_or(0.0), number)?;
        }
        Json::Bool(b) => {
            sheet.write_string(row, col, if *b { "はい" } else { "いいえ" })?;
        }
        Json::String(s) => {
            sheet.write_string(row, col, s)?;
        }
        other => {
            sheet.write_string(row, col, other.to_string())?;
        }
    }
    Ok(())
}
