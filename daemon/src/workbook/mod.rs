//! Excel 様式: request forms sent as workbooks, answers read back from the returned workbook,
//! and reports written as `.xlsx`.
//!
//! Three libraries, each for what it does best: the returned workbook is read with `calamine`
//! (`.xlsx`, `.xlsm`, legacy `.xls`; formula cells give their cached value, nothing is ever
//! evaluated or run); a form is prefilled by rewriting only the cells it fills inside the
//! package ([`package`], `zip` + `quick-xml`), so everything else in the file — formatting,
//! validation lists, protection, print setup, drawings — stays byte for byte; and reports are
//! written with `rust_xlsxwriter` ([`report`]). Untrusted files are checked before any parser
//! inflates them ([`package::inspect`]).
//!
//! This module is pure: bytes in, bytes or values out. It knows nothing of requests or mail.

pub mod form;
pub mod inspect;
pub mod package;
pub mod read;
pub mod report;
pub mod types;
pub mod value;

pub use form::{FormField, FormRead, FormSpec, Problem};
pub use package::Fill;
pub use types::FieldTypes;
pub use value::Kind;

/// Why a workbook could not be used; the message is for the person who sent it.
#[derive(Debug, thiserror::Error)]
pub enum WorkbookError {
    /// Not a workbook at all.
    #[error("ファイルがExcelブック（.xlsx / .xlsm / .xls）として読み取れません")]
    NotAWorkbook,
    /// An OpenDocument spreadsheet (`.ods`, LibreOffice's own format): not read (the 様式's
    /// defined names, merged cells and types are Excel's), the sender is asked for `.xlsx`.
    #[error(
        "OpenDocument形式（.ods）のファイルは読み取れません。お手数ですが、Excel形式（.xlsx）で保存し直したブックを添付してください（LibreOffice Calcでは「名前を付けて保存」で「Excel 2007-365 (.xlsx)」を選べます）"
    )]
    OpenDocument,
    /// Damaged.
    #[error("ファイルが壊れているため読み取れません（{0}）")]
    Corrupt(String),
    /// Protected by a password (an encrypted package).
    #[error(
        "パスワードで保護されているため読み取れません。パスワードを解除して保存し直したブックをお送りください"
    )]
    Encrypted,
    /// A password-protected ZIP holding a workbook (the PPAP practice: the password follows in a
    /// second mail, which pmoflow never reads).
    #[error(
        "パスワード付きZIPファイルのため開けませんでした。様式はZIPにせず、Excelファイルのまま添付してください（パスワードの別送は不要です）"
    )]
    EncryptedArchive,
    /// Outlook's rich text wrapper, `winmail.dat`.
    #[error(
        "Outlookのリッチテキスト形式で送信されたため、添付ファイルが winmail.dat にまとめられ読み取れませんでした。メールの形式を「HTML」または「テキスト」に変更して、様式を添付し直してください"
    )]
    Tnef,
    /// Inflates past the limits.
    #[error("展開後のサイズが上限を超えるため読み取りを中止しました（{0}）")]
    Bomb(String),
    /// Too large to read (file size or used range).
    #[error("ブックが大きすぎるため読み取りを中止しました（{0}）")]
    TooLarge(String),
    /// The form itself (an administrator's template) is unusable.
    #[error("{0}")]
    Template(String),
    /// Writing a workbook failed.
    #[error("cannot write the workbook: {0}")]
    Write(String),
}

/// Bounds on reading an untrusted workbook.
#[derive(Debug, Clone)]
pub struct Limits {
    /// The file itself.
    pub max_file_bytes: usize,
    /// All zip entries together, inflated.
    pub max_inflated_bytes: u64,
    /// Zip entries.
    pub max_entries: usize,
    /// Cells read from one sheet (the used range as stored).
    pub max_cells: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_file_bytes: 25 << 20,
            max_inflated_bytes: 100 << 20,
            max_entries: 2_000,
            max_cells: 1_000_000,
        }
    }
}

/// One cell on a named sheet (0-based row and column).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, serde::Serialize, serde::Deserialize)]
pub struct CellAt {
    /// The sheet's name.
    pub sheet: String,
    /// Row, from 0.
    pub row: u32,
    /// Column, from 0.
    pub col: u32,
}

impl CellAt {
    /// `様式1!E10` or `'様式 1'!$E$10`; `None` for anything else.
    pub fn parse(text: &str) -> Option<CellAt> {
        let area = Area::parse(text)?;
        Some(CellAt {
            sheet: area.sheet?,
            row: area.start.0,
            col: area.start.1,
        })
    }

    /// `E10`.
    pub fn a1(&self) -> String {
        format!("{}{}", col_name(self.col), self.row + 1)
    }
}

impl std::fmt::Display for CellAt {
    /// `様式1 E10`, as the 【要修正】 mail names a cell.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} {}", self.sheet, self.a1())
    }
}

/// A rectangle of cells, maybe on a named sheet.
#[derive(Debug, Clone, PartialEq)]
pub struct Area {
    /// The sheet, when the reference names one.
    pub sheet: Option<String>,
    /// Top-left (row, column), 0-based.
    pub start: (u32, u32),
    /// Bottom-right (row, column), 0-based.
    pub end: (u32, u32),
}

impl Area {
    /// `Sheet!$A$1:$B$3`, `'A sheet'!A1`, or the same without a sheet.
    pub fn parse(text: &str) -> Option<Area> {
        let text = text.trim().trim_start_matches('=');
        let (sheet, local) = match text.rfind('!') {
            Some(i) => {
                let s = &text[..i];
                let s = match s.strip_prefix('\'').and_then(|s| s.strip_suffix('\'')) {
                    Some(quoted) => quoted.replace("''", "'"),
                    None => s.to_string(),
                };
                if s.is_empty() || s.contains('[') {
                    return None;
                }
                (Some(s), &text[i + 1..])
            }
            None => (None, text),
        };
        let mut area = Area::parse_local(local)?;
        area.sheet = sheet;
        Some(area)
    }

    /// `$A$1:$B$3` or `E10` (no sheet).
    pub fn parse_local(text: &str) -> Option<Area> {
        let (a, b) = match text.split_once(':') {
            Some((a, b)) => (a, b),
            None => (text, text),
        };
        let start = a1(a)?;
        let end = a1(b)?;
        Some(Area {
            sheet: None,
            start: (start.0.min(end.0), start.1.min(end.1)),
            end: (start.0.max(end.0), start.1.max(end.1)),
        })
    }

    /// Whether (row, column) is inside.
    pub fn contains(&self, at: (u32, u32)) -> bool {
        (self.start.0..=self.end.0).contains(&at.0) && (self.start.1..=self.end.1).contains(&at.1)
    }
}

/// `$E$10` → (9, 4).
fn a1(text: &str) -> Option<(u32, u32)> {
    let t = text.trim().replace('$', "");
    let split = t.find(|c: char| c.is_ascii_digit())?;
    let (letters, digits) = t.split_at(split);
    if letters.is_empty() || letters.len() > 3 || !letters.chars().all(|c| c.is_ascii_alphabetic())
    {
        return None;
    }
    let mut col: u32 = 0;
    for c in letters.chars() {
        col = col * 26 + (c.to_ascii_uppercase() as u32 - 'A' as u32 + 1);
    }
    let row: u32 = digits.parse().ok()?;
    if row == 0 || row > 1_048_576 || col == 0 || col > 16_384 {
        return None;
    }
    Some((row - 1, col - 1))
}

/// Column letters for a 0-based column (0 → A, 26 → AA).
pub fn col_name(col: u32) -> String {
    let mut n = col + 1;
    let mut out = Vec::new();
    while n > 0 {
        let r = (n - 1) % 26;
        out.push(char::from(b'A' + r as u8));
        n = (n - 1) / 26;
    }
    out.iter().rev().collect()
}

/// Whether an attachment is a workbook, by name or type.
pub fn is_workbook(name: &str, content_type: &str) -> bool {
    let n = name.to_lowercase();
    [".xlsx", ".xlsm", ".xls", ".ods"]
        .iter()
        .any(|e| n.ends_with(e))
        || content_type.contains("spreadsheetml")
        || content_type.contains("ms-excel")
        || content_type.contains("opendocument.spreadsheet")
}

/// Whether an attachment is Outlook's `winmail.dat` (TNEF), in which Outlook wraps every
/// attachment when it sends in its rich text format: the workbook is inside, out of reach.
pub fn is_tnef(name: &str, content_type: &str) -> bool {
    name.eq_ignore_ascii_case("winmail.dat") || content_type.contains("ms-tnef")
}

/// Whether an attachment is a ZIP archive (which may hold a workbook), by name or MIME type.
pub fn is_archive(name: &str, content_type: &str) -> bool {
    name.to_lowercase().ends_with(".zip")
        || content_type.contains("application/zip")
        || content_type.contains("x-zip")
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // in tests a failed unwrap is the failure
mod tests {
    use super::*;

    #[test]
    fn references() {
        assert_eq!(
            CellAt::parse("様式1!E10"),
            Some(CellAt {
                sheet: "様式1".into(),
                row: 9,
                col: 4
            })
        );
        let q = CellAt::parse("'O''Brien 1'!$AB$3").unwrap();
        assert_eq!((q.sheet.as_str(), q.row, q.col), ("O'Brien 1", 2, 27));
        assert_eq!(q.to_string(), "O'Brien 1 AB3");
        assert_eq!(CellAt::parse("E10"), None);
        assert_eq!(CellAt::parse("[1]Sheet1!A1"), None);
        assert_eq!(CellAt::parse("S!A0"), None);
        let a = Area::parse("リスト!$A$1:$A$3").unwrap();
        assert_eq!((a.start, a.end), ((0, 0), (2, 0)));
        assert!(a.contains((1, 0)) && !a.contains((3, 0)));
        assert_eq!(col_name(0), "A");
        assert_eq!(col_name(25), "Z");
        assert_eq!(col_name(26), "AA");
        assert_eq!(col_name(16_383), "XFD");
    }
}
