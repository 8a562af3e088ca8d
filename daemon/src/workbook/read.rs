//! Reading the cells of an untrusted workbook with `calamine`: values only (a formula cell gives
//! the value Excel saved with it; nothing is evaluated, no macro runs, no link is followed),
//! after [`package::inspect`](super::package::inspect) has bounded what the file may inflate to,
//! and with the cells of a sheet streamed and counted, so an enormous used range is refused
//! rather than allocated.

use std::collections::{BTreeMap, BTreeSet};
use std::io::Cursor;

use calamine::{Data, DataRef, Reader};

use super::package::{Format, Inspection, inspect};
use super::value::Raw;
use super::{Area, CellAt, Limits, WorkbookError};

type Result<T> = std::result::Result<T, WorkbookError>;

/// A cell as read: its value and, for a formula cell, the formula.
#[derive(Debug, Clone, PartialEq)]
pub struct Cell {
    /// The value (cached for a formula).
    pub value: Raw,
    /// The formula, if the cell has one (`.xlsx` only).
    pub formula: Option<String>,
}

enum Book {
    Xlsx(Box<calamine::Xlsx<Cursor<Vec<u8>>>>),
    Xls(Box<calamine::Xls<Cursor<Vec<u8>>>>),
}

/// An opened workbook.
pub struct Workbook {
    book: Book,
    limits: Limits,
    /// What the package holds besides cells.
    pub inspection: Inspection,
}

/// Runs a call into `calamine`, turning a panic (calamine 0.38 slices past the end of some
/// malformed `.xls` records: the `workbook` fuzz target's first finding, kept in
/// `fuzz/regressions/workbook/`) into a refusal of the file.
fn shielded<T>(f: impl FnOnce() -> Result<T>) -> Result<T> {
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)).unwrap_or_else(|_| {
        Err(WorkbookError::Corrupt(
            "the file's structure is damaged and could not be read".into(),
        ))
    })
}

fn corrupt(e: impl std::fmt::Display) -> WorkbookError {
    let text = e.to_string();
    if text.to_lowercase().contains("password") {
        WorkbookError::Encrypted
    } else {
        WorkbookError::Corrupt(text)
    }
}

impl Workbook {
    /// Checks and opens `bytes`.
    pub fn open(bytes: &[u8], limits: &Limits) -> Result<Workbook> {
        let (format, mut inspection) = inspect(bytes, limits)?;
        let cursor = Cursor::new(inspection.rebuilt.take().unwrap_or_else(|| bytes.to_vec()));
        let book = shielded(|| {
            Ok(match format {
                Format::Zip => Book::Xlsx(Box::new(calamine::Xlsx::new(cursor).map_err(corrupt)?)),
                Format::Xls => Book::Xls(Box::new(calamine::Xls::new(cursor).map_err(corrupt)?)),
            })
        })?;
        Ok(Workbook {
            book,
            limits: limits.clone(),
            inspection,
        })
    }

    /// The sheet names, in tab order.
    pub fn sheet_names(&self) -> Vec<String> {
        match &self.book {
            Book::Xlsx(b) => b.sheet_names(),
            Book::Xls(b) => b.sheet_names(),
        }
    }

    /// Where a defined name points (its top-left cell).
    pub fn defined_name(&self, name: &str) -> Option<CellAt> {
        let names = match &self.book {
            Book::Xlsx(b) => b.defined_names(),
            Book::Xls(b) => b.defined_names(),
        };
        let (_, formula) = names.iter().find(|(n, _)| n == name)?;
        let area = Area::parse(formula)?;
        Some(CellAt {
            sheet: area.sheet?,
            row: area.start.0,
            col: area.start.1,
        })
    }

    /// Whether dates count from 1904.
    pub fn date1904(&self) -> bool {
        match &self.book {
            Book::Xlsx(b) => b.has_1904_epoch(),
            Book::Xls(_) => false,
        }
    }

    /// The merged areas of a sheet.
    fn merged(&mut self, sheet: &str) -> Result<Vec<calamine::Dimensions>> {
        Ok(match &mut self.book {
            Book::Xlsx(b) => b.merge_cells_by_sheet_name(sheet).map_err(corrupt)?,
            Book::Xls(b) => b.merge_cells_by_sheet_name(sheet).map_err(corrupt)?,
        })
    }

    /// The cells at `wanted` on `sheet`. A position inside a merged area reads the area's
    /// top-left cell, where Excel keeps the value. Cells that hold nothing are `Raw::Empty`.
    pub fn cells(
        &mut self,
        sheet: &str,
        wanted: &[(u32, u32)],
    ) -> Result<BTreeMap<(u32, u32), Cell>> {
        shielded(|| self.cells_unshielded(sheet, wanted))
    }

    fn cells_unshielded(
        &mut self,
        sheet: &str,
        wanted: &[(u32, u32)],
    ) -> Result<BTreeMap<(u32, u32), Cell>> {
        let merged = self.merged(sheet)?;
        let anchor = |at: (u32, u32)| {
            merged
                .iter()
                .find(|d| {
                    (d.start.0..=d.end.0).contains(&at.0) && (d.start.1..=d.end.1).contains(&at.1)
                })
                .map_or(at, |d| d.start)
        };
        let anchors: BTreeSet<(u32, u32)> = wanted.iter().map(|w| anchor(*w)).collect();
        let mut found: BTreeMap<(u32, u32), Cell> = BTreeMap::new();
        let max = self.limits.max_cells;
        match &mut self.book {
            Book::Xlsx(b) => {
                let mut reader = b.worksheet_cells_reader(sheet).map_err(corrupt)?;
                let mut n = 0usize;
                while let Some(cell) = reader.next_cell_with_formula().map_err(corrupt)? {
                    n += 1;
                    if n > max {
                        return Err(WorkbookError::TooLarge(format!(
                            "シート「{sheet}」のセルが{max}個を超えています"
                        )));
                    }
                    if anchors.contains(&cell.pos) {
                        found.insert(
                            cell.pos,
                            Cell {
                                value: from_ref(&cell.value),
                                formula: cell.formula.filter(|f| !f.is_empty()),
                            },
                        );
                    }
                }
            }
            Book::Xls(b) => {
                let range = b.worksheet_range(sheet).map_err(corrupt)?;
                let (h, w) = range.get_size();
                if h.saturating_mul(w) > max.saturating_mul(16) {
                    return Err(WorkbookError::TooLarge(format!(
                        "シート「{sheet}」の使用範囲が{h}行×{w}列です"
                    )));
                }
                for at in &anchors {
                    if let Some(v) = range.get_value(*at) {
                        found.insert(
                            *at,
                            Cell {
                                value: from_data(v),
                                formula: None,
                            },
                        );
                    }
                }
            }
        }
        Ok(wanted
            .iter()
            .map(|w| {
                let cell = found.get(&anchor(*w)).cloned().unwrap_or(Cell {
                    value: Raw::Empty,
                    formula: None,
                });
                (*w, cell)
            })
            .collect())
    }
}

fn from_ref(v: &DataRef<'_>) -> Raw {
    match v {
        DataRef::Empty => Raw::Empty,
        DataRef::Int(i) => Raw::Number(*i as f64),
        DataRef::Float(f) => Raw::Number(*f),
        DataRef::String(s) => Raw::Text(s.clone()),
        DataRef::SharedString(s) => Raw::Text((*s).to_string()),
        DataRef::Bool(b) => Raw::Bool(*b),
        DataRef::DateTime(d) if d.is_datetime() => Raw::Date(d.as_f64()),
        DataRef::DateTime(d) => Raw::Number(d.as_f64()),
        DataRef::DateTimeIso(s) => Raw::IsoDate(s.clone()),
        DataRef::DurationIso(s) => Raw::Text(s.clone()),
        DataRef::Error(e) => Raw::Error(e.to_string()),
    }
}

fn from_data(v: &Data) -> Raw {
    match v {
        Data::Empty => Raw::Empty,
        Data::Int(i) => Raw::Number(*i as f64),
        Data::Float(f) => Raw::Number(*f),
        Data::String(s) => Raw::Text(s.clone()),
        Data::Bool(b) => Raw::Bool(*b),
        Data::DateTime(d) if d.is_datetime() => Raw::Date(d.as_f64()),
        Data::DateTime(d) => Raw::Number(d.as_f64()),
        Data::DateTimeIso(s) => Raw::IsoDate(s.clone()),
        Data::DurationIso(s) => Raw::Text(s.clone()),
        Data::Error(e) => Raw::Error(e.to_string()),
    }
}

/// The values of a range in a trusted workbook (a form's validation list kept on a sheet).
pub fn range_values(bytes: &[u8], sheet: &str, area: &Area) -> Result<Vec<String>> {
    shielded(|| range_values_unshielded(bytes, sheet, area))
}

fn range_values_unshielded(bytes: &[u8], sheet: &str, area: &Area) -> Result<Vec<String>> {
    let mut book = calamine::Xlsx::new(Cursor::new(bytes.to_vec())).map_err(corrupt)?;
    // Streamed, not `worksheet_range`: that allocates a grid spanning every cell of the sheet.
    let mut reader = book.worksheet_cells_reader(sheet).map_err(corrupt)?;
    let (rows, cols) = (
        area.start.0..=area.end.0.min(area.start.0 + 1000),
        area.start.1..=area.end.1.min(area.start.1 + 100),
    );
    let mut found = BTreeMap::new();
    let mut n = 0usize;
    while let Some(cell) = reader.next_cell().map_err(corrupt)? {
        n += 1;
        if n > Limits::default().max_cells {
            return Err(WorkbookError::TooLarge(format!(
                "シート「{sheet}」のセルが多すぎます"
            )));
        }
        let (r, c) = cell.get_position();
        if rows.contains(&r) && cols.contains(&c) {
            let raw = from_ref(cell.get_value());
            if !raw.is_empty() {
                found.insert((r, c), raw.shown());
            }
        }
    }
    Ok(found.into_values().collect())
}
