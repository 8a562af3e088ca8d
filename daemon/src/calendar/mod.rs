//! The Japanese government business calendar (行政機関の休日): Saturdays, Sundays, national
//! holidays (computed offline, or imported from the Cabinet Office CSV), the year-end closure
//! 12/29–1/3, and ministry-specific closed days.
//!
//! Files, in `calendar_dir` (default `workflows/calendar/`):
//! - `holidays.toml` — written by `pmoflow calendar import syukujitsu.csv`; for the years it
//!   lists it replaces the computed holidays.
//! - `closed-days.toml` — written by administrators: `[[closed]] date = 2027-06-15, name = "…"`.

use std::borrow::Cow;
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use chrono::{Datelike, Duration, NaiveDate, Weekday};
use serde::Deserialize;

use crate::diag::Diagnostic;

pub mod csv;
pub mod format;
pub mod holidays;

/// File written by `calendar import`.
pub const IMPORTED_FILE: &str = "holidays.toml";
/// File of ministry-specific closed days.
pub const CLOSED_FILE: &str = "closed-days.toml";

/// Why a day is closed.
pub type Reason<'a> = Cow<'a, str>;

/// The business calendar.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Calendar {
    /// Imported national holidays by year (replacing computed ones for those years).
    imported: BTreeMap<i32, BTreeMap<NaiveDate, String>>,
    /// Ministry-specific closed days.
    extra: BTreeMap<NaiveDate, String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ImportedFile {
    #[serde(default)]
    source: Option<String>,
    years: Vec<i32>,
    #[serde(default)]
    holiday: Vec<DayEntry>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ClosedFile {
    #[serde(default)]
    closed: Vec<DayEntry>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct DayEntry {
    date: toml::value::Datetime,
    name: String,
}

fn entry_date(path: &Path, source: &str, e: &DayEntry) -> Result<NaiveDate, Diagnostic> {
    let text = e.date.to_string();
    NaiveDate::parse_from_str(&text, "%Y-%m-%d").map_err(|_| {
        let offset = source.find(&text).unwrap_or(0);
        Diagnostic::at(
            path,
            source,
            offset,
            format!("`{text}` is not a date"),
            Some("write a plain date such as 2027-06-15".into()),
        )
    })
}

impl Calendar {
    /// The calendar with computed holidays only.
    pub fn computed() -> Self {
        Self::default()
    }

    /// Loads `dir` (a missing directory or file is simply no data).
    pub fn load(dir: &Path) -> Result<Self, Vec<Diagnostic>> {
        let mut cal = Calendar::default();
        let mut diags = Vec::new();
        // Inside the workflows directory (the calendar directory's parent), links included; a
        // missing file is no data, any other failure is said.
        let root = dir.parent().unwrap_or(dir);
        let read = |name: &str, diags: &mut Vec<Diagnostic>| -> Option<(PathBuf, String)> {
            let p = dir.join(name);
            match crate::inside::read_to_string(root, &p) {
                Ok(s) => Some((p, s)),
                Err(e) if e.is_not_found() => None,
                Err(e) => {
                    diags.push(Diagnostic {
                        path: p,
                        line: 1,
                        col: 1,
                        message: e.to_string(),
                        hint: None,
                    });
                    None
                }
            }
        };
        if let Some((path, source)) = read(IMPORTED_FILE, &mut diags) {
            match toml::from_str::<ImportedFile>(&source) {
                Ok(file) => {
                    let _ = file.source;
                    for y in &file.years {
                        cal.imported.entry(*y).or_default();
                    }
                    for e in &file.holiday {
                        match entry_date(&path, &source, e) {
                            Ok(d) => {
                                cal.imported
                                    .entry(d.year())
                                    .or_default()
                                    .insert(d, e.name.clone());
                            }
                            Err(diag) => diags.push(diag),
                        }
                    }
                }
                Err(err) => diags.push(toml_diag(&path, &source, &err)),
            }
        }
        if let Some((path, source)) = read(CLOSED_FILE, &mut diags) {
            match toml::from_str::<ClosedFile>(&source) {
                Ok(file) => {
                    for e in &file.closed {
                        match entry_date(&path, &source, e) {
                            Ok(d) => {
                                cal.extra.insert(d, e.name.clone());
                            }
                            Err(diag) => diags.push(diag),
                        }
                    }
                }
                Err(err) => diags.push(toml_diag(&path, &source, &err)),
            }
        }
        if diags.is_empty() {
            Ok(cal)
        } else {
            Err(diags)
        }
    }

    /// Adds imported holidays (replacing the computed ones for every year present).
    pub fn with_imported(mut self, years: BTreeMap<i32, BTreeMap<NaiveDate, String>>) -> Self {
        self.imported.extend(years);
        self
    }

    /// Adds a ministry-specific closed day.
    pub fn with_closed_day(mut self, d: NaiveDate, name: &str) -> Self {
        self.extra.insert(d, name.to_string());
        self
    }

    /// Years whose holidays come from an imported file.
    pub fn imported_years(&self) -> BTreeSet<i32> {
        self.imported.keys().copied().collect()
    }

    /// National holidays of a year: imported if that year was imported, computed otherwise.
    pub fn holidays(&self, year: i32) -> Cow<'_, BTreeMap<NaiveDate, String>> {
        match self.imported.get(&year) {
            Some(h) => Cow::Borrowed(h),
            None => Cow::Owned(holidays::holidays(year)),
        }
    }

    /// The national holiday on `d`, if any.
    pub fn holiday(&self, d: NaiveDate) -> Option<String> {
        self.holidays(d.year()).get(&d).cloned()
    }

    /// Why `d` is a closed day, or `None` for a business day.
    pub fn closed_reason(&self, d: NaiveDate) -> Option<Reason<'_>> {
        if let Some(name) = self.extra.get(&d) {
            return Some(Cow::Borrowed(name));
        }
        if let Some(name) = self.holiday(d) {
            return Some(Cow::Owned(name));
        }
        let (m, day) = (d.month(), d.day());
        if (m == 12 && day >= 29) || (m == 1 && day <= 3) {
            return Some(Cow::Borrowed("年末年始の休日"));
        }
        match d.weekday() {
            Weekday::Sat => Some(Cow::Borrowed("土曜日")),
            Weekday::Sun => Some(Cow::Borrowed("日曜日")),
            _ => None,
        }
    }

    /// Whether government offices are open on `d`.
    pub fn is_business_day(&self, d: NaiveDate) -> bool {
        self.closed_reason(d).is_none()
    }

    /// The first business day on or after `d`.
    pub fn next_business_day(&self, d: NaiveDate) -> NaiveDate {
        let mut d = d;
        while !self.is_business_day(d) {
            d += Duration::days(1);
        }
        d
    }

    /// The last business day on or before `d`.
    pub fn previous_business_day(&self, d: NaiveDate) -> NaiveDate {
        let mut d = d;
        while !self.is_business_day(d) {
            d -= Duration::days(1);
        }
        d
    }

    /// `n` business days after `d` (before, if negative). With `n = 0`, `d` itself if it is a
    /// business day, else the next one.
    pub fn add_business_days(&self, d: NaiveDate, n: i64) -> NaiveDate {
        let step = if n < 0 { -1 } else { 1 };
        let mut left = n.abs();
        let mut d = d;
        if n == 0 {
            return self.next_business_day(d);
        }
        while left > 0 {
            d += Duration::days(step);
            if self.is_business_day(d) {
                left -= 1;
            }
        }
        d
    }

    /// The `n`th business day of a month (1 = first; -1 = last). `None` if the month has fewer.
    pub fn nth_business_day(&self, year: i32, month: u32, n: i32) -> Option<NaiveDate> {
        let first = NaiveDate::from_ymd_opt(year, month, 1)?;
        let next_month = if month == 12 {
            NaiveDate::from_ymd_opt(year + 1, 1, 1)?
        } else {
            NaiveDate::from_ymd_opt(year, month + 1, 1)?
        };
        let days: Vec<NaiveDate> = first
            .iter_days()
            .take_while(|d| *d < next_month)
            .filter(|d| self.is_business_day(*d))
            .collect();
        let index = if n > 0 {
            usize::try_from(n - 1).ok()?
        } else if n < 0 {
            days.len().checked_sub(usize::try_from(-n).ok()?)?
        } else {
            return None;
        };
        days.get(index).copied()
    }

    /// Every closed day of a year other than ordinary weekends: national holidays (also those
    /// on a weekend), the year-end closure and ministry-specific days, with their names.
    pub fn closed_days(&self, year: i32) -> Vec<(NaiveDate, String)> {
        let mut out: BTreeMap<NaiveDate, String> = BTreeMap::new();
        for (d, n) in self.holidays(year).iter() {
            out.insert(*d, n.clone());
        }
        for (m, days) in [(1u32, 1..=3u32), (12, 29..=31)] {
            for day in days {
                if let Some(d) = NaiveDate::from_ymd_opt(year, m, day) {
                    out.entry(d).or_insert_with(|| "年末年始の休日".to_string());
                }
            }
        }
        for (d, n) in self.extra.range(
            NaiveDate::from_ymd_opt(year, 1, 1).unwrap_or_default()
                ..=NaiveDate::from_ymd_opt(year, 12, 31).unwrap_or_default(),
        ) {
            out.insert(*d, n.clone());
        }
        out.into_iter().collect()
    }
}

fn toml_diag(path: &Path, source: &str, err: &toml::de::Error) -> Diagnostic {
    Diagnostic::at(
        path,
        source,
        err.span().map(|s| s.start).unwrap_or(0),
        err.message().trim().replace('\n', "; "),
        None,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn d(y: i32, m: u32, day: u32) -> NaiveDate {
        NaiveDate::from_ymd_opt(y, m, day).expect("valid date")
    }

    #[test]
    fn business_day_arithmetic() {
        let cal = Calendar::computed();
        // 2027-04-29 (Thu) 昭和の日; 2027-05-03..05 holidays.
        assert_eq!(cal.add_business_days(d(2027, 4, 28), 1), d(2027, 4, 30));
        assert_eq!(cal.add_business_days(d(2027, 4, 30), 1), d(2027, 5, 6));
        assert_eq!(cal.add_business_days(d(2027, 5, 6), -1), d(2027, 4, 30));
        assert_eq!(cal.nth_business_day(2027, 1, 1), Some(d(2027, 1, 4)));
        assert_eq!(cal.nth_business_day(2027, 5, -1), Some(d(2027, 5, 31)));
        assert_eq!(cal.nth_business_day(2026, 12, -1), Some(d(2026, 12, 28)));
        assert_eq!(cal.nth_business_day(2027, 2, 30), None);
        assert_eq!(
            cal.closed_reason(d(2026, 12, 30)).as_deref(),
            Some("年末年始の休日")
        );
        assert_eq!(cal.closed_reason(d(2027, 1, 1)).as_deref(), Some("元日"));
        let extra = cal.with_closed_day(d(2027, 6, 15), "創立記念日");
        assert!(!extra.is_business_day(d(2027, 6, 15)));
    }
}
