//! The Office Open XML package under a workbook, read and written directly (the size and entry
//! checks made before any parser inflates it are in [`super::inspect`]): the sheet and
//! defined-name tables, data-validation rules, and the prefill, which rewrites the few `<c>` elements it fills and copies every other
//! byte and zip entry unchanged, so formatting, validation lists, protection, print setup,
//! drawings and anything a library does not model survive.

use std::collections::BTreeMap;
use std::io::{Cursor, Read, Write};

use quick_xml::events::Event;

use super::{Area, CellAt, WorkbookError, col_name};

pub use super::inspect::{Format, Inspection, Member, inspect, unpack_archive};

type Result<T> = std::result::Result<T, WorkbookError>;

/// The parts of a package, by name (inflated).
pub struct Package {
    entries: Vec<(String, Vec<u8>)>,
}

impl Package {
    /// Opens a package (already [`inspect`]ed, or trusted: a shipped template).
    pub fn open(bytes: &[u8]) -> Result<Package> {
        let mut zip = zip::ZipArchive::new(Cursor::new(bytes))
            .map_err(|e| WorkbookError::Corrupt(format!("not a readable zip: {e}")))?;
        let mut entries = Vec::with_capacity(zip.len());
        for i in 0..zip.len() {
            let mut entry = zip
                .by_index(i)
                .map_err(|e| WorkbookError::Corrupt(format!("zip entry {i}: {e}")))?;
            let mut data = Vec::new();
            entry
                .read_to_end(&mut data)
                .map_err(|e| WorkbookError::Corrupt(format!("entry {i}: {e}")))?;
            let name = entry.name().map(|n| n.into_owned()).unwrap_or_default();
            entries.push((name, data));
        }
        Ok(Package { entries })
    }

    fn part(&self, name: &str) -> Option<&[u8]> {
        self.entries
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, d)| d.as_slice())
    }

    fn text(&self, name: &str) -> Result<&str> {
        let data = self
            .part(name)
            .ok_or_else(|| WorkbookError::Corrupt(format!("{name} is missing")))?;
        std::str::from_utf8(data)
            .map_err(|_| WorkbookError::Corrupt(format!("{name} is not UTF-8")))
    }

    /// The sheets (name → part) and defined names of `xl/workbook.xml`.
    pub fn book(&self) -> Result<Book> {
        let rels = self.text("xl/_rels/workbook.xml.rels")?;
        let mut targets = BTreeMap::new();
        for el in elements(rels, &["Relationship"])? {
            if let (Some(id), Some(target)) = (el.attr("Id"), el.attr("Target")) {
                let path = match target.strip_prefix('/') {
                    Some(abs) => abs.to_string(),
                    None => format!("xl/{target}"),
                };
                targets.insert(id.to_string(), path);
            }
        }
        let xml = self.text("xl/workbook.xml")?;
        let mut book = Book::default();
        for el in elements(xml, &["sheet", "definedName", "workbookPr"])? {
            match el.name.as_str() {
                "sheet" => {
                    let rid = el
                        .attrs
                        .iter()
                        .find(|(k, _)| k.ends_with(":id") || k == "id")
                        .map(|(_, v)| v.clone());
                    if let (Some(name), Some(part)) =
                        (el.attr("name"), rid.and_then(|r| targets.get(&r)))
                    {
                        book.sheets.push((name.to_string(), part.clone()));
                    }
                }
                "definedName" => {
                    if let Some(name) = el.attr("name") {
                        book.names.push((name.to_string(), el.text.clone()));
                    }
                }
                _ => {
                    book.date1904 = matches!(el.attr("date1904"), Some("1" | "true"));
                }
            }
        }
        Ok(book)
    }

    /// The data-validation rules of a sheet part (classic and the `x14` extension form).
    pub fn validations(&self, part: &str) -> Result<Vec<Validation>> {
        let xml = self.text(part)?;
        let mut out = Vec::new();
        for el in elements(xml, &["dataValidation"])? {
            let kind = el.attr("type").unwrap_or("none").to_string();
            let sqref = el
                .attr("sqref")
                .map(str::to_string)
                .or_else(|| el.child("sqref"))
                .unwrap_or_default();
            let formula = el
                .child("formula1")
                .or_else(|| el.child("f"))
                .unwrap_or_default();
            let areas = sqref
                .split_whitespace()
                .filter_map(Area::parse_local)
                .collect();
            out.push(Validation {
                kind,
                areas,
                formula,
            });
        }
        Ok(out)
    }

    /// Whether the sheet part has a formula in `at` (prefill never overwrites one).
    pub fn has_formula(&self, part: &str, at: (u32, u32)) -> Result<bool> {
        let xml = self.text(part)?;
        let want = format!("{}{}", col_name(at.1), at.0 + 1);
        let mut reader = quick_xml::Reader::from_str(xml);
        let mut inside = false;
        loop {
            match reader.read_event() {
                Ok(Event::Start(e)) if e.local_name().as_ref() == "c" => {
                    inside = attr(&e, "r").as_deref() == Some(want.as_str());
                }
                Ok(Event::Start(e) | Event::Empty(e))
                    if inside && e.local_name().as_ref() == "f" =>
                {
                    return Ok(true);
                }
                Ok(Event::End(e)) if e.local_name().as_ref() == "c" => inside = false,
                Ok(Event::Eof) => return Ok(false),
                Err(e) => return Err(WorkbookError::Corrupt(format!("{part}: {e}"))),
                _ => {}
            }
        }
    }

    /// Writes `values` into the sheet parts and returns the new package: every other entry is
    /// copied as it was (compressed bytes included), and Excel is told to recalculate on open.
    pub fn fill(
        &self,
        original: &[u8],
        values: &BTreeMap<String, Vec<(CellAt, Fill)>>,
    ) -> Result<Vec<u8>> {
        let mut changed: BTreeMap<String, Vec<u8>> = BTreeMap::new();
        for (part, cells) in values {
            let xml = self.text(part)?;
            changed.insert(part.clone(), fill_sheet(xml, cells)?.into_bytes());
        }
        if !values.is_empty() {
            let wb = self.text("xl/workbook.xml")?;
            changed.insert("xl/workbook.xml".into(), recalc_on_load(wb)?.into_bytes());
        }
        let mut zip = zip::ZipArchive::new(Cursor::new(original))
            .map_err(|e| WorkbookError::Corrupt(e.to_string()))?;
        let mut out = zip::ZipWriter::new(Cursor::new(Vec::new()));
        let opts = zip::write::SimpleFileOptions::default()
            .compression_method(zip::CompressionMethod::Deflated);
        for i in 0..zip.len() {
            let entry = zip
                .by_index_raw(i)
                .map_err(|e| WorkbookError::Corrupt(e.to_string()))?;
            let name = entry.name().map(|n| n.into_owned()).unwrap_or_default();
            match changed.get(&name) {
                Some(data) => {
                    drop(entry);
                    out.start_file(name.as_str(), opts)
                        .map_err(|e| WorkbookError::Write(e.to_string()))?;
                    out.write_all(data)
                        .map_err(|e| WorkbookError::Write(e.to_string()))?;
                }
                None => out
                    .raw_copy_file(entry)
                    .map_err(|e| WorkbookError::Write(e.to_string()))?,
            }
        }
        let cursor = out
            .finish()
            .map_err(|e| WorkbookError::Write(e.to_string()))?;
        Ok(cursor.into_inner())
    }
}

/// `xl/workbook.xml`'s sheets and names.
#[derive(Debug, Clone, Default)]
pub struct Book {
    /// (sheet name, part path), in tab order.
    pub sheets: Vec<(String, String)>,
    /// (defined name, formula such as `様式1!$E$10`).
    pub names: Vec<(String, String)>,
    /// Dates count from 1904.
    pub date1904: bool,
}

impl Book {
    /// The part of a sheet.
    pub fn part(&self, sheet: &str) -> Option<&str> {
        self.sheets
            .iter()
            .find(|(n, _)| n == sheet)
            .map(|(_, p)| p.as_str())
    }

    /// The cell a defined name points to (the top-left of a range).
    pub fn name(&self, name: &str) -> Option<CellAt> {
        let (_, formula) = self.names.iter().find(|(n, _)| n == name)?;
        let area = Area::parse(formula)?;
        Some(CellAt {
            sheet: area.sheet?,
            row: area.start.0,
            col: area.start.1,
        })
    }
}

/// One `<dataValidation>` rule.
#[derive(Debug, Clone)]
pub struct Validation {
    /// `list`, `decimal`, `whole`, `date`, `textLength`, …
    pub kind: String,
    /// Where it applies (on its own sheet).
    pub areas: Vec<Area>,
    /// `formula1`: a quoted list (`"新規,改修"`), a range or a name.
    pub formula: String,
}

/// A value to write into a cell.
#[derive(Debug, Clone, PartialEq)]
pub enum Fill {
    /// A number.
    Number(f64),
    /// Text (an inline string).
    Text(String),
    /// TRUE/FALSE.
    Bool(bool),
}

/// An element found by [`elements`]: its local name, attributes, own text and its children's
/// texts by local name.
struct El {
    name: String,
    attrs: Vec<(String, String)>,
    text: String,
    children: Vec<(String, String)>,
}

impl El {
    fn attr(&self, key: &str) -> Option<&str> {
        self.attrs
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }

    fn child(&self, name: &str) -> Option<String> {
        self.children
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, t)| t.clone())
    }
}

fn attr(e: &quick_xml::events::BytesStart<'_>, key: &str) -> Option<String> {
    e.attributes()
        .flatten()
        .find(|a| a.key.as_ref() == key)
        .and_then(|a| {
            a.normalized_value(quick_xml::XmlVersion::Implicit1_0)
                .ok()
                .map(|v| v.into_owned())
        })
}

fn attrs(e: &quick_xml::events::BytesStart<'_>) -> Vec<(String, String)> {
    e.attributes()
        .flatten()
        .filter_map(|a| {
            let k = a.key.as_ref().to_string();
            let v = a
                .normalized_value(quick_xml::XmlVersion::Implicit1_0)
                .ok()?
                .into_owned();
            Some((k, v))
        })
        .collect()
}

fn local(name: &str) -> String {
    name.to_string()
}

/// Every element named one of `names` (by local name), with its text and its descendants'
/// texts (`<formula1>`, `<xm:sqref>`).
fn elements(xml: &str, names: &[&str]) -> Result<Vec<El>> {
    let mut reader = quick_xml::Reader::from_str(xml);
    let mut out = Vec::new();
    let mut current: Option<El> = None;
    let mut depth = 0usize;
    let mut child: Option<String> = None;
    let mut text = String::new();
    loop {
        let ev = reader
            .read_event()
            .map_err(|e| WorkbookError::Corrupt(format!("XML: {e}")))?;
        match ev {
            Event::Empty(e) if current.is_none() => {
                let name = local(e.local_name().as_ref());
                if names.contains(&name.as_str()) {
                    out.push(El {
                        name,
                        attrs: attrs(&e),
                        text: String::new(),
                        children: Vec::new(),
                    });
                }
            }
            Event::Start(e) if current.is_none() => {
                let name = local(e.local_name().as_ref());
                if names.contains(&name.as_str()) {
                    current = Some(El {
                        name,
                        attrs: attrs(&e),
                        text: String::new(),
                        children: Vec::new(),
                    });
                    depth = 0;
                    text.clear();
                }
            }
            Event::Start(e) => {
                depth += 1;
                child = Some(local(e.local_name().as_ref()));
                text.clear();
            }
            Event::Text(t) => text.push_str(&t),
            Event::CData(t) => text.push_str(&t),
            Event::GeneralRef(r) => {
                text.push('&');
                text.push_str(&r);
                text.push(';');
            }
            Event::End(_) if current.is_some() => {
                let value = quick_xml::escape::unescape(&text)
                    .map(|v| v.into_owned())
                    .unwrap_or_else(|_| text.clone());
                if depth == 0 {
                    if let Some(mut el) = current.take() {
                        el.text = value;
                        out.push(el);
                    }
                } else {
                    if let (Some(el), Some(name)) = (current.as_mut(), child.take()) {
                        el.children.push((name, value));
                    }
                    depth -= 1;
                }
                text.clear();
            }
            Event::Eof => break,
            _ => {}
        }
    }
    Ok(out)
}

/// The cell element for `fill` at `r`, keeping the old cell's style.
fn cell_xml(r: &str, style: Option<&str>, fill: &Fill) -> String {
    let s = style.map(|s| format!(" s=\"{s}\"")).unwrap_or_default();
    match fill {
        Fill::Number(n) => format!(
            "<c r=\"{r}\"{s}><v>{}</v></c>",
            super::value::number_text(*n)
        ),
        Fill::Bool(b) => format!("<c r=\"{r}\"{s} t=\"b\"><v>{}</v></c>", u8::from(*b)),
        Fill::Text(t) => format!(
            "<c r=\"{r}\"{s} t=\"inlineStr\"><is><t xml:space=\"preserve\">{}</t></is></c>",
            quick_xml::escape::escape(t.as_str())
        ),
    }
}

/// A cell reference's (row, column), 0-based.
fn position(r: &str) -> Option<(u32, u32)> {
    let area = Area::parse_local(r)?;
    Some(area.start)
}

/// Replaces or inserts the `<c>` elements of `cells` in a sheet's XML, in row and column order.
fn fill_sheet(xml: &str, cells: &[(CellAt, Fill)]) -> Result<String> {
    let mut wanted: BTreeMap<(u32, u32), &Fill> = BTreeMap::new();
    for (at, f) in cells {
        wanted.insert((at.row, at.col), f);
    }
    // Edits as (start, end, replacement) byte spans of the original text.
    let mut edits: Vec<(usize, usize, String)> = Vec::new();
    let mut reader = quick_xml::Reader::from_str(xml);
    let mut pending: BTreeMap<(u32, u32), &Fill> = wanted.clone();
    let mut row: Option<(u32, usize)> = None; // current row number and the start of its text
    let mut cell: Option<((u32, u32), usize, Option<String>)> = None;
    let mut in_sheet_data = false;
    let corrupt = |e: String| WorkbookError::Corrupt(format!("worksheet XML: {e}"));
    loop {
        let before = usize::try_from(reader.buffer_position()).unwrap_or(0);
        let ev = reader.read_event().map_err(|e| corrupt(e.to_string()))?;
        let after = usize::try_from(reader.buffer_position()).unwrap_or(0);
        let empty = matches!(ev, Event::Empty(_));
        match ev {
            Event::Start(e) | Event::Empty(e) => match e.local_name().as_ref() {
                "sheetData" => {
                    in_sheet_data = true;
                    if empty {
                        let rows = rows_xml(&mut pending, None);
                        edits.push((before, after, format!("<sheetData>{rows}</sheetData>")));
                        in_sheet_data = false;
                    }
                }
                "row" if in_sheet_data => {
                    let r: u32 = attr(&e, "r")
                        .and_then(|r| r.parse().ok())
                        .ok_or_else(|| corrupt("a row without its number".into()))?;
                    let r = r.saturating_sub(1);
                    // Whole rows that come before this one.
                    let rows = rows_xml(&mut pending, Some(r));
                    if !rows.is_empty() {
                        edits.push((before, before, rows));
                    }
                    if empty {
                        let mine = cells_of_row(&mut pending, r, None);
                        if !mine.is_empty() {
                            let open = &xml[before..after - 2];
                            edits.push((before, after, format!("{open}>{mine}</row>")));
                        }
                    } else {
                        row = Some((r, after));
                    }
                }
                "c" if row.is_some() => {
                    let at = attr(&e, "r")
                        .and_then(|r| position(&r))
                        .ok_or_else(|| corrupt("a cell without its reference".into()))?;
                    let r = row.map_or(0, |(r, _)| r);
                    let earlier = cells_of_row(&mut pending, r, Some(at.1));
                    if !earlier.is_empty() {
                        edits.push((before, before, earlier));
                    }
                    let style = attr(&e, "s");
                    if empty {
                        if let Some(f) = pending.remove(&at) {
                            let reference = format!("{}{}", col_name(at.1), at.0 + 1);
                            edits.push((before, after, cell_xml(&reference, style.as_deref(), f)));
                        }
                    } else {
                        cell = Some((at, before, style));
                    }
                }
                _ => {}
            },
            Event::End(e) => match e.local_name().as_ref() {
                "c" => {
                    if let Some((at, start, style)) = cell.take()
                        && let Some(f) = pending.remove(&at)
                    {
                        let reference = format!("{}{}", col_name(at.1), at.0 + 1);
                        edits.push((start, after, cell_xml(&reference, style.as_deref(), f)));
                    }
                }
                "row" => {
                    if let Some((r, _)) = row.take() {
                        let rest = cells_of_row(&mut pending, r, None);
                        if !rest.is_empty() {
                            edits.push((before, before, rest));
                        }
                    }
                }
                "sheetData" => {
                    let rows = rows_xml(&mut pending, None);
                    if !rows.is_empty() {
                        edits.push((before, before, rows));
                    }
                    in_sheet_data = false;
                }
                _ => {}
            },
            Event::Eof => break,
            _ => {}
        }
    }
    if let Some(((r, c), _)) = pending.iter().next() {
        return Err(corrupt(format!(
            "no place for {}{} (no <sheetData>)",
            col_name(*c),
            r + 1
        )));
    }
    edits.sort_by_key(|(s, e, _)| (*s, *e));
    let mut out = String::with_capacity(xml.len() + 256);
    let mut at = 0;
    for (start, end, text) in edits {
        out.push_str(&xml[at..start]);
        out.push_str(&text);
        at = end;
    }
    out.push_str(&xml[at..]);
    Ok(out)
}

/// The pending cells of row `r` before column `before` (all of them with `None`), removed.
fn cells_of_row(pending: &mut BTreeMap<(u32, u32), &Fill>, r: u32, before: Option<u32>) -> String {
    let keys: Vec<(u32, u32)> = pending
        .keys()
        .filter(|(row, col)| *row == r && before.is_none_or(|b| *col < b))
        .copied()
        .collect();
    keys.iter()
        .filter_map(|k| {
            let f = pending.remove(k)?;
            Some(cell_xml(&format!("{}{}", col_name(k.1), k.0 + 1), None, f))
        })
        .collect()
}

/// New `<row>` elements for pending cells in rows before `before` (all with `None`), removed.
fn rows_xml(pending: &mut BTreeMap<(u32, u32), &Fill>, before: Option<u32>) -> String {
    let mut rows: Vec<u32> = pending
        .keys()
        .map(|(r, _)| *r)
        .filter(|r| before.is_none_or(|b| *r < b))
        .collect();
    rows.dedup();
    rows.iter()
        .map(|r| {
            format!(
                "<row r=\"{}\">{}</row>",
                r + 1,
                cells_of_row(pending, *r, None)
            )
        })
        .collect()
}

/// `<calcPr fullCalcOnLoad="1">`: formulas that use a prefilled cell show the new result when
/// the form is opened.
fn recalc_on_load(xml: &str) -> Result<String> {
    let mut reader = quick_xml::Reader::from_str(xml);
    let mut after_names = None;
    let mut after_sheets = None;
    loop {
        let before = usize::try_from(reader.buffer_position()).unwrap_or(0);
        let ev = reader
            .read_event()
            .map_err(|e| WorkbookError::Corrupt(format!("workbook XML: {e}")))?;
        let after = usize::try_from(reader.buffer_position()).unwrap_or(0);
        match ev {
            Event::Start(e) | Event::Empty(e) if e.local_name().as_ref() == "calcPr" => {
                if attr(&e, "fullCalcOnLoad").is_some() {
                    return Ok(xml.to_string());
                }
                let name_end = before + 1 + e.name().as_ref().len();
                return Ok(format!(
                    "{} fullCalcOnLoad=\"1\"{}",
                    &xml[..name_end],
                    &xml[name_end..]
                ));
            }
            Event::End(e) if e.local_name().as_ref() == "definedNames" => after_names = Some(after),
            Event::End(e) if e.local_name().as_ref() == "sheets" => after_sheets = Some(after),
            Event::Eof => break,
            _ => {}
        }
    }
    let Some(at) = after_names.or(after_sheets) else {
        return Err(WorkbookError::Corrupt(
            "xl/workbook.xml has no <sheets>".into(),
        ));
    };
    Ok(format!(
        "{}<calcPr fullCalcOnLoad=\"1\"/>{}",
        &xml[..at],
        &xml[at..]
    ))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // in tests a failed unwrap is the failure
mod tests {
    use super::*;
    use crate::workbook::Limits;

    fn at(r: u32, c: u32) -> CellAt {
        CellAt {
            sheet: "S".into(),
            row: r,
            col: c,
        }
    }

    fn record(typ: u16, data: &[u8]) -> Vec<u8> {
        let mut r = typ.to_le_bytes().to_vec();
        r.extend((data.len() as u16).to_le_bytes());
        r.extend(data);
        r
    }

    /// A BIFF8 `.xls` with `sheets` BoundSheets that all name one sheet holding a number at
    /// each of `cells`, in a compound file.
    fn xls(sheets: usize, cells: &[(u16, u16)]) -> Vec<u8> {
        let bof = |dt: u8| {
            record(
                0x0809,
                &[0x00, 0x06, dt, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0],
            )
        };
        let bound = |pos: u32, name: &str| {
            let mut d = pos.to_le_bytes().to_vec();
            d.extend([0, 0, name.len() as u8, 0]);
            d.extend(name.as_bytes());
            record(0x0085, &d)
        };
        let eof = record(0x000A, &[]);
        let names: Vec<String> = (0..sheets).map(|i| format!("S{i}")).collect();
        let globals_len =
            bof(5).len() + names.iter().map(|n| bound(0, n).len()).sum::<usize>() + eof.len();
        let mut stream = bof(5);
        for n in &names {
            stream.extend(bound(globals_len as u32, n));
        }
        stream.extend(&eof);
        stream.extend(bof(0x10));
        for (i, (r, c)) in cells.iter().enumerate() {
            let mut d = r.to_le_bytes().to_vec();
            d.extend(c.to_le_bytes());
            d.extend([0, 0]);
            d.extend((i as f64 + 1.0).to_le_bytes());
            stream.extend(record(0x0203, &d));
        }
        stream.extend(&eof);
        compound(&stream)
    }

    /// A workbook stream in a compound file, as Excel writes `.xls`.
    fn compound(stream: &[u8]) -> Vec<u8> {
        use std::io::Write as _;
        let mut file =
            cfb::CompoundFile::create_with_version(cfb::Version::V3, Cursor::new(Vec::new()))
                .unwrap();
        file.create_stream("/Workbook")
            .unwrap()
            .write_all(stream)
            .unwrap();
        file.flush().unwrap();
        file.into_inner().into_inner()
    }

    #[test]
    fn an_xls_whose_cells_span_a_huge_grid_is_refused_before_calamine_builds_it() {
        // The file is one calamine reads: a small one opens and its cells are there.
        let small = xls(1, &[(0, 0), (3, 2)]);
        let mut book = super::super::read::Workbook::open(&small, &Limits::default()).unwrap();
        let cells = book.cells("S0", &[(3, 2)]).unwrap();
        assert_eq!(cells[&(3, 2)].value, super::super::value::Raw::Number(2.0));
        // Two numbers far apart: calamine would allocate 65,536 × 256 cells for the sheet.
        let far = xls(1, &[(0, 0), (65535, 255)]);
        match inspect(&far, &Limits::default()) {
            Err(WorkbookError::TooLarge(m)) => assert!(m.contains("16777216セル"), "{m}"),
            other => panic!("{:?}", other.map(|_| ())),
        }
        // A sheet under the limit, named by 40 BoundSheets: 40 grids of 640,000 cells.
        let many = xls(40, &[(0, 0), (9999, 63)]);
        match inspect(&many, &Limits::default()) {
            Err(WorkbookError::TooLarge(m)) => assert!(m.contains("ブック全体"), "{m}"),
            other => panic!("{:?}", other.map(|_| ())),
        }
        assert!(inspect(&xls(2, &[(0, 0), (9999, 63)]), &Limits::default()).is_ok());
    }

    #[test]
    fn an_xls_with_a_password_to_open_is_recognised_as_encrypted() {
        // Excel's RC4 CryptoAPI FILEPASS after the globals' BOF; from there on every record's
        // data is encrypted, so the sheet's DIMENSIONS read as nonsense (a huge grid).
        let mut stream = record(
            0x0809,
            &[0x00, 0x06, 5, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0],
        );
        let mut filepass = vec![0x01, 0x00, 0x04, 0x00, 0x02, 0x00];
        filepass.extend([0x5A; 48]);
        stream.extend(record(0x002F, &filepass));
        stream.extend(record(0x0200, &[0xFF; 14]));
        stream.extend(record(0x000A, &[]));
        let bytes = compound(&stream);
        let err = inspect(&bytes, &Limits::default()).map(|_| ()).unwrap_err();
        assert!(matches!(err, WorkbookError::Encrypted), "{err}");
        assert!(err.to_string().contains("パスワード"), "{err}");
    }

    #[test]
    fn fill_replaces_inserts_and_keeps_styles() {
        let xml = r#"<worksheet><sheetData><row r="2" spans="1:3"><c r="A2" s="3"/><c r="C2" s="4" t="s"><v>0</v></c></row><row r="5"/></sheetData><dataValidations count="0"/></worksheet>"#;
        let out = fill_sheet(
            xml,
            &[
                (at(1, 0), Fill::Text("a&b".into())),
                (at(1, 1), Fill::Number(12.5)),
                (at(1, 2), Fill::Bool(true)),
                (at(0, 0), Fill::Number(1.0)),
                (at(4, 3), Fill::Number(5.0)),
                (at(9, 0), Fill::Text("末尾".into())),
            ],
        )
        .unwrap();
        assert_eq!(
            out,
            "<worksheet><sheetData><row r=\"1\"><c r=\"A1\"><v>1</v></c></row>\
             <row r=\"2\" spans=\"1:3\"><c r=\"A2\" s=\"3\" t=\"inlineStr\"><is><t xml:space=\"preserve\">a&amp;b</t></is></c>\
             <c r=\"B2\"><v>12.5</v></c><c r=\"C2\" s=\"4\" t=\"b\"><v>1</v></c></row>\
             <row r=\"5\"><c r=\"D5\"><v>5</v></c></row><row r=\"10\"><c r=\"A10\" t=\"inlineStr\"><is><t xml:space=\"preserve\">末尾</t></is></c></row>\
             </sheetData><dataValidations count=\"0\"/></worksheet>"
        );
    }

    #[test]
    fn recalc_flag_is_added_once() {
        let wb =
            r#"<workbook><sheets><sheet name="a"/></sheets><calcPr calcId="191029"/></workbook>"#;
        let once = recalc_on_load(wb).unwrap();
        assert_eq!(
            once,
            r#"<workbook><sheets><sheet name="a"/></sheets><calcPr fullCalcOnLoad="1" calcId="191029"/></workbook>"#
        );
        assert_eq!(recalc_on_load(&once).unwrap(), once);
        let bare = r#"<workbook><sheets><sheet name="a"/></sheets><definedNames><definedName name="x">a!$A$1</definedName></definedNames></workbook>"#;
        assert!(
            recalc_on_load(bare)
                .unwrap()
                .contains("</definedNames><calcPr fullCalcOnLoad=\"1\"/></workbook>")
        );
    }

    #[test]
    fn validations_in_both_forms() {
        let xml = r#"<worksheet><dataValidations count="1"><dataValidation type="list" allowBlank="1" sqref="E6 E8:E9"><formula1>&quot;新規,改修,運用&quot;</formula1></dataValidation></dataValidations><extLst><ext><x14:dataValidations><x14:dataValidation type="list"><x14:formula1><xm:f>リスト!$A$1:$A$2</xm:f></x14:formula1><xm:sqref>E12</xm:sqref></x14:dataValidation></x14:dataValidations></ext></extLst></worksheet>"#;
        let pkg = Package {
            entries: vec![("s.xml".into(), xml.as_bytes().to_vec())],
        };
        let v = pkg.validations("s.xml").unwrap();
        assert_eq!(v.len(), 2);
        assert_eq!(v[0].kind, "list");
        assert_eq!(v[0].formula, "\"新規,改修,運用\"");
        assert_eq!(v[0].areas.len(), 2);
        assert_eq!(v[0].areas[1].end, (8, 4));
        assert_eq!(v[1].formula, "リスト!$A$1:$A$2");
        assert_eq!(v[1].areas[0].start, (11, 4));
    }
}
