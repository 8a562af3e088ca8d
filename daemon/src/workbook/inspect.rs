//! What a returned file is, and how far it may be trusted, before any parser inflates it: the
//! zip (xlsx, ods, archives) entry count and sizes, the compound-file (.xls) streams, BIFF
//! records and the dimensions a sheet claims, against [`Limits`].

use std::io::{Cursor, Read, Write};

use super::{Limits, WorkbookError};

type Result<T> = std::result::Result<T, WorkbookError>;

/// What a file is, from its first bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// A zip: `.xlsx` or `.xlsm`.
    Zip,
    /// An OLE compound file: legacy `.xls`.
    Xls,
}

/// What [`inspect`] found in a package.
#[derive(Debug, Clone, Default)]
pub struct Inspection {
    /// It holds a VBA project (`.xlsm`); it is never run.
    pub macros: bool,
    /// It links to other workbooks.
    pub external_links: bool,
    /// For a compound file: the same workbook stream in a compound file written afresh (see
    /// [`inspect`]), which is what the `.xls` reader is given.
    pub rebuilt: Option<Vec<u8>>,
}

/// A zip's directory, refused if unreadable or with more entries than the limit.
fn open_zip<'a>(bytes: &'a [u8], limits: &Limits) -> Result<zip::ZipArchive<Cursor<&'a [u8]>>> {
    let zip = zip::ZipArchive::new(Cursor::new(bytes))
        .map_err(|e| WorkbookError::Corrupt(format!("not a readable zip: {e}")))?;
    if zip.len() > limits.max_entries {
        return Err(WorkbookError::Bomb(format!(
            "{} entries; the limit is {}",
            zip.len(),
            limits.max_entries
        )));
    }
    Ok(zip)
}

/// Refuses what is not a workbook, an encrypted workbook, and a zip that would inflate past
/// the limits, before any parser sees it. The entries are inflated here (and thrown away) with
/// a cap, so a header that lies about sizes is caught too.
pub fn inspect(bytes: &[u8], limits: &Limits) -> Result<(Format, Inspection)> {
    if bytes.len() > limits.max_file_bytes {
        return Err(WorkbookError::TooLarge(format!(
            "{} bytes; the limit is {} MiB",
            bytes.len(),
            limits.max_file_bytes >> 20
        )));
    }
    if bytes.starts_with(&[0xD0, 0xCF, 0x11, 0xE0, 0xA1, 0xB1, 0x1A, 0xE1]) {
        return inspect_compound(bytes, limits).map(|i| (Format::Xls, i));
    }
    if !bytes.starts_with(b"PK\x03\x04") {
        return Err(WorkbookError::NotAWorkbook);
    }
    let mut zip = open_zip(bytes, limits)?;
    let mut found = Inspection::default();
    let mut total: u64 = 0;
    let mut has_workbook = false;
    let mut sink = vec![0u8; 64 * 1024];
    for i in 0..zip.len() {
        let mut entry = zip
            .by_index(i)
            .map_err(|e| WorkbookError::Corrupt(format!("zip entry {i}: {e}")))?;
        let name = entry.name().map(|n| n.into_owned()).unwrap_or_default();
        if entry.encrypted() {
            return Err(WorkbookError::Encrypted);
        }
        has_workbook |= name == "xl/workbook.xml";
        found.macros |= name.ends_with("vbaProject.bin");
        found.external_links |= name.starts_with("xl/externalLinks/");
        loop {
            let n = entry
                .read(&mut sink)
                .map_err(|e| WorkbookError::Corrupt(format!("{name}: {e}")))?;
            if n == 0 {
                break;
            }
            total += n as u64;
            if total > limits.max_inflated_bytes {
                return Err(WorkbookError::Bomb(format!(
                    "more than {} MiB when inflated",
                    limits.max_inflated_bytes >> 20
                )));
            }
        }
    }
    if !has_workbook {
        let opendocument = zip
            .by_name("mimetype")
            .ok()
            .and_then(|mut m| {
                let mut s = String::new();
                (&mut m).take(100).read_to_string(&mut s).ok().map(|_| s)
            })
            .is_some_and(|m| m.contains("opendocument.spreadsheet"));
        return Err(if opendocument {
            WorkbookError::OpenDocument
        } else {
            WorkbookError::NotAWorkbook
        });
    }
    Ok((Format::Zip, found))
}

/// A workbook found in a ZIP archive: its name in the archive (decoded), and its bytes or why
/// they could not be taken out.
pub struct Member {
    /// The entry's file name, without its folders.
    pub name: String,
    /// The inflated bytes, or why not.
    pub content: Result<Vec<u8>>,
}

/// The workbooks in a ZIP archive attached to an answer (folders flattened; other files and
/// nested archives passed over), each inflated with the limits of a workbook file and all of
/// them together within the inflated limit. An encrypted entry is not decrypted: it is
/// [`WorkbookError::EncryptedArchive`]. Entry names written without the UTF-8 flag are decoded as
/// Shift_JIS (CP932), as Windows' built-in ZIP writes them on Japanese systems.
pub fn unpack_archive(bytes: &[u8], limits: &Limits) -> Result<Vec<Member>> {
    if bytes.len() > limits.max_file_bytes {
        return Err(WorkbookError::TooLarge(format!(
            "{} bytes; the limit is {} MiB",
            bytes.len(),
            limits.max_file_bytes >> 20
        )));
    }
    let mut zip = open_zip(bytes, limits)?;
    let mut out = Vec::new();
    let mut total: u64 = 0;
    for i in 0..zip.len() {
        let entry = zip
            .by_index_raw(i)
            .map_err(|e| WorkbookError::Corrupt(format!("zip entry {i}: {e}")))?;
        let raw = entry.name_raw().to_vec();
        let path = match std::str::from_utf8(&raw) {
            Ok(s) => s.to_string(),
            Err(_) => encoding_rs::SHIFT_JIS.decode(&raw).0.into_owned(),
        };
        let name = path
            .rsplit(['/', '\\'])
            .next()
            .unwrap_or_default()
            .to_string();
        if entry.is_dir() || name.is_empty() || !super::is_workbook(&name, "") {
            continue;
        }
        if entry.encrypted() {
            out.push(Member {
                name,
                content: Err(WorkbookError::EncryptedArchive),
            });
            continue;
        }
        drop(entry);
        let mut entry = zip
            .by_index(i)
            .map_err(|e| WorkbookError::Corrupt(format!("zip entry {i}: {e}")))?;
        let mut content = Vec::new();
        (&mut entry)
            .take(limits.max_file_bytes as u64 + 1)
            .read_to_end(&mut content)
            .map_err(|e| WorkbookError::Corrupt(format!("{name}: {e}")))?;
        total += content.len() as u64;
        if content.len() > limits.max_file_bytes || total > limits.max_inflated_bytes {
            return Err(WorkbookError::Bomb(format!(
                "more than {} MiB when inflated",
                limits.max_inflated_bytes >> 20
            )));
        }
        out.push(Member {
            name,
            content: Ok(content),
        });
    }
    Ok(out)
}

/// An OLE compound file (legacy `.xls`, or an encrypted `.xlsx`), opened with the `cfb` crate,
/// never with calamine's own container reader (calamine 0.38 follows a malformed sector chain
/// until memory runs out: the `workbook` fuzz target's second finding). The workbook stream is
/// read with a cap and written into a fresh compound file of its own; macros and every other
/// stream are left behind (only values are read).
fn inspect_compound(bytes: &[u8], limits: &Limits) -> Result<Inspection> {
    let mut file = cfb::CompoundFile::open(Cursor::new(bytes))
        .map_err(|e| WorkbookError::Corrupt(format!("not a readable compound file: {e}")))?;
    let entries: Vec<(String, bool)> = file
        .walk()
        .map(|e| (e.path().to_string_lossy().into_owned(), e.is_stream()))
        .collect();
    if entries.len() > limits.max_entries {
        return Err(WorkbookError::Bomb(format!(
            "{} entries; the limit is {}",
            entries.len(),
            limits.max_entries
        )));
    }
    // An encrypted .xlsx is a compound file with an `EncryptedPackage` stream (a .xls with a
    // password has a FILEPASS record, which the .xls reader reports).
    if entries.iter().any(|(p, _)| p.ends_with("EncryptedPackage")) {
        return Err(WorkbookError::Encrypted);
    }
    let mut found = Inspection {
        macros: entries.iter().any(|(p, _)| p.contains("_VBA_PROJECT")),
        ..Inspection::default()
    };
    let Some((path, _)) = entries
        .iter()
        .find(|(p, s)| *s && (p.ends_with("/Workbook") || p.ends_with("/Book")))
    else {
        return Err(WorkbookError::NotAWorkbook);
    };
    let mut stream = file
        .open_stream(path)
        .map_err(|e| WorkbookError::Corrupt(format!("{path}: {e}")))?;
    let mut data = Vec::new();
    (&mut stream)
        .take(limits.max_inflated_bytes + 1)
        .read_to_end(&mut data)
        .map_err(|e| WorkbookError::Corrupt(format!("{path}: {e}")))?;
    if data.len() as u64 > limits.max_inflated_bytes {
        return Err(WorkbookError::Bomb(format!(
            "a workbook stream of more than {} MiB",
            limits.max_inflated_bytes >> 20
        )));
    }
    // Version 3 (512-byte sectors), as Excel writes .xls: calamine refuses a version 4 file whose
    // root has no mini stream.
    check_biff(&data, limits)?;
    let mut fresh =
        cfb::CompoundFile::create_with_version(cfb::Version::V3, Cursor::new(Vec::new()))
            .map_err(|e| WorkbookError::Write(e.to_string()))?;
    {
        let mut out = fresh
            .create_stream("/Workbook")
            .map_err(|e| WorkbookError::Write(e.to_string()))?;
        out.write_all(&data)
            .map_err(|e| WorkbookError::Write(e.to_string()))?;
    }
    fresh
        .flush()
        .map_err(|e| WorkbookError::Write(e.to_string()))?;
    found.rebuilt = Some(fresh.into_inner().into_inner());
    Ok(found)
}

/// The BIFF records of a stream from `pos`, as calamine walks them: type and data, until the
/// stream ends or a record runs past it.
fn records(stream: &[u8]) -> impl Iterator<Item = (u16, &[u8])> {
    let mut pos = 0usize;
    std::iter::from_fn(move || {
        let head = stream.get(pos..pos + 4)?;
        let typ = u16::from_le_bytes([head[0], head[1]]);
        let len = usize::from(u16::from_le_bytes([head[2], head[3]]));
        let data = stream.get(pos + 4..pos + 4 + len)?;
        pos += 4 + len;
        Some((typ, data))
    })
}

fn u16_at(b: &[u8], i: usize) -> u32 {
    b.get(i..i + 2)
        .map_or(0, |x| u32::from(u16::from_le_bytes([x[0], x[1]])))
}

fn u32_at(b: &[u8], i: usize) -> u32 {
    b.get(i..i + 4)
        .map_or(0, |x| u32::from_le_bytes([x[0], x[1], x[2], x[3]]))
}

/// A DIMENSIONS record as calamine reads it (MS-XLS 2.4.90): first row, last row + 1, first
/// column, last column + 1; 16-bit rows before BIFF8. Checked before calamine reserves room for
/// every cell it claims (a 2-cell file can claim 4 × 10⁹ rows) and subtracts bounds it does not
/// order.
fn check_dimensions(data: &[u8], limits: &Limits) -> Result<()> {
    let (rf, rl, mut cf, cl) = match data.len() {
        10 => (
            u16_at(data, 0),
            u16_at(data, 2),
            u16_at(data, 4),
            u16_at(data, 6),
        ),
        14 | 16 => (
            u32_at(data, 0),
            u32_at(data, 4),
            u16_at(data, 8),
            u16_at(data, 10),
        ),
        _ => return Ok(()),
    };
    if 0xFF < cf || cl < cf {
        cf = 0;
    }
    if rl == 0 || cl == 0 {
        return Ok(());
    }
    let (Some(rows), Some(cols)) = ((rl - 1).checked_sub(rf), (cl - 1).checked_sub(cf)) else {
        return Err(WorkbookError::Corrupt(
            "a sheet's dimensions end before they start".into(),
        ));
    };
    let cells = (u64::from(rows) + 1) * (u64::from(cols) + 1);
    if cells > limits.max_cells as u64 {
        return Err(WorkbookError::TooLarge(format!(
            "シートの使用範囲が{}行×{}列です",
            u64::from(rows) + 1,
            u64::from(cols) + 1
        )));
    }
    Ok(())
}

/// The bounding box of cell positions, in cells.
#[derive(Default)]
struct Grid(Option<((u32, u32), (u32, u32))>);

impl Grid {
    fn add(&mut self, row: u32, col: u32) {
        self.0 = Some(match self.0 {
            None => ((row, row), (col, col)),
            Some(((r0, r1), (c0, c1))) => ((r0.min(row), r1.max(row)), (c0.min(col), c1.max(col))),
        });
    }

    fn cells(&self) -> u64 {
        self.0.map_or(0, |((r0, r1), (c0, c1))| {
            (u64::from(r1 - r0) + 1) * (u64::from(c1 - c0) + 1)
        })
    }
}

/// The cells calamine allocates for one sheet: it builds the sheet's values and formulas as two
/// dense grids spanning the positions of their cells, so two cells far apart make a grid of
/// millions. The records are walked from the sheet's BOF as calamine walks them (nested
/// substreams such as embedded charts skipped, up to the sheet's EOF).
fn sheet_cells(sheet: &[u8], limits: &Limits) -> Result<u64> {
    let (mut values, mut formulas) = (Grid::default(), Grid::default());
    let mut formula_at = (0, 0);
    let (mut seen_bof, mut depth) = (false, 0usize);
    for (typ, data) in records(sheet) {
        if depth > 0 {
            match typ {
                0x0809 => depth += 1,
                0x000A => depth -= 1,
                _ => {}
            }
            continue;
        }
        match typ {
            0x0809 if seen_bof => depth += 1,
            0x0809 => seen_bof = true,
            0x000A => break,
            0x0200 => check_dimensions(data, limits)?,
            // Number, Label, RString, BoolErr, Rk, LabelSst: row and column first.
            0x0203 | 0x0204 | 0x00D6 | 0x0205 | 0x027E | 0x00FD if data.len() >= 4 => {
                values.add(u16_at(data, 0), u16_at(data, 2));
            }
            // MulRk: a row, its first column, then 6 bytes a cell.
            0x00BD if data.len() >= 12 => {
                let first = u16_at(data, 2);
                let n = u32::try_from((data.len() - 6) / 6).unwrap_or(u32::MAX);
                values.add(u16_at(data, 0), first);
                values.add(u16_at(data, 0), first.saturating_add(n - 1));
            }
            0x0006 if data.len() >= 20 => {
                formula_at = (u16_at(data, 0), u16_at(data, 2));
                values.add(formula_at.0, formula_at.1);
                formulas.add(formula_at.0, formula_at.1);
            }
            // String: the value of the last formula.
            0x0207 => values.add(formula_at.0, formula_at.1),
            _ => {}
        }
    }
    let cells = values.cells() + formulas.cells();
    if cells > limits.max_cells as u64 {
        return Err(WorkbookError::TooLarge(format!(
            "シートの使用範囲が{cells}セルに及びます（上限{}セル）",
            limits.max_cells
        )));
    }
    Ok(cells)
}

/// The BIFF records of a `.xls` workbook stream, checked for what calamine 0.38 would trust when
/// it opens the file, which reads every sheet at once: each DIMENSIONS record (found in the
/// stream's order and in each sheet's), and the grid each sheet becomes, each sheet and all
/// together (a BoundSheet may name the same sheet's records again and again). The sheets are
/// found as calamine finds them, by the offsets of the BoundSheet records of the workbook's
/// globals. All of it found by the `workbook` fuzz target.
fn check_biff(stream: &[u8], limits: &Limits) -> Result<()> {
    // A password to open: a FILEPASS record in the globals, after which every record's data is
    // encrypted (the dimensions read as nonsense, so this comes first).
    if records(stream)
        .take_while(|(typ, _)| *typ != 0x000A)
        .any(|(typ, _)| typ == 0x002F)
    {
        return Err(WorkbookError::Encrypted);
    }
    for (typ, data) in records(stream) {
        if typ == 0x0200 {
            check_dimensions(data, limits)?;
        }
    }
    let mut sheets = Vec::new();
    for (typ, data) in records(stream) {
        match typ {
            0x0085 if data.len() >= 4 => sheets.push(u32_at(data, 0) as usize),
            0x000A => break,
            _ => {}
        }
    }
    let mut total = 0u64;
    for pos in sheets {
        let Some(sheet) = stream.get(pos..) else {
            continue;
        };
        total += sheet_cells(sheet, limits)?;
        if total > 2 * limits.max_cells as u64 {
            return Err(WorkbookError::TooLarge(format!(
                "ブック全体の使用範囲が{}セルを超えています",
                2 * limits.max_cells
            )));
        }
    }
    Ok(())
}
