//! The Cabinet Office's `syukujitsu.csv`: Shift_JIS (CP932), CRLF, header
//! `国民の祝日・休日月日,国民の祝日・休日名称`, rows like `2027/1/11,成人の日`.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use chrono::{Datelike, NaiveDate};

/// A CSV problem, with its 1-based line.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("line {line}: {message}")]
pub struct CsvError {
    /// 1-based line.
    pub line: usize,
    /// What is wrong.
    pub message: String,
}

/// Holidays by year, as parsed.
pub type Years = BTreeMap<i32, BTreeMap<NaiveDate, String>>;

/// Decodes (CP932, or UTF-8 with or without BOM) and parses the CSV.
pub fn parse(bytes: &[u8]) -> Result<Years, CsvError> {
    let text = match std::str::from_utf8(bytes) {
        Ok(t) => t.trim_start_matches('\u{feff}').to_string(),
        Err(_) => {
            let (text, _, had_errors) = encoding_rs::SHIFT_JIS.decode(bytes);
            if had_errors {
                return Err(CsvError {
                    line: 1,
                    message: "the file is neither UTF-8 nor Shift_JIS/CP932".into(),
                });
            }
            text.into_owned()
        }
    };
    let mut years: Years = BTreeMap::new();
    for (i, raw) in text.lines().enumerate() {
        let line = raw.trim_end_matches('\r').trim();
        if line.is_empty() || (i == 0 && line.starts_with("国民の祝日")) {
            continue;
        }
        let err = |message: String| CsvError {
            line: i + 1,
            message,
        };
        let (date, name) = line
            .split_once(',')
            .ok_or_else(|| err(format!("expected `YYYY/M/D,名称`, got `{line}`")))?;
        let d = NaiveDate::parse_from_str(date.trim(), "%Y/%m/%d")
            .or_else(|_| NaiveDate::parse_from_str(date.trim(), "%Y-%m-%d"))
            .map_err(|_| err(format!("`{date}` is not a date (YYYY/M/D)")))?;
        // The holiday law dates from 1948; a year outside four digits cannot be written as a
        // TOML date either (found by the `calendar_csv` fuzz target).
        if !(1948..=9999).contains(&d.year()) {
            return Err(err(format!(
                "`{date}` is outside the years a holiday calendar holds (1948–9999)"
            )));
        }
        let name = name.trim().trim_matches('"');
        if name.is_empty() {
            return Err(err("the holiday has no name".into()));
        }
        years
            .entry(d.year())
            .or_default()
            .insert(d, name.to_string());
    }
    if years.is_empty() {
        return Err(CsvError {
            line: 1,
            message: "no holidays found".into(),
        });
    }
    Ok(years)
}

/// Renders parsed holidays as the `holidays.toml` the calendar loads.
pub fn to_toml(years: &Years, source: &str) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "# National holidays imported by `pmoflow calendar import`. For the years listed they\n# replace the computed holidays. Re-import to update; do not edit by hand."
    );
    let _ = writeln!(out, "source = {}", toml::Value::String(source.to_string()));
    let list: Vec<String> = years.keys().map(|y| y.to_string()).collect();
    let _ = writeln!(out, "years = [{}]", list.join(", "));
    for days in years.values() {
        for (d, name) in days {
            let _ = writeln!(
                out,
                "\n[[holiday]]\ndate = {}\nname = {}",
                d.format("%Y-%m-%d"),
                toml::Value::String(name.clone())
            );
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn years_a_toml_date_cannot_hold_are_refused_with_the_line() {
        for (csv, line) in [
            ("2025/1/1,元日\n-12025/1/1,元日\n", 2),
            ("1900/1/1,元日\n", 1),
        ] {
            let e = parse(csv.as_bytes()).expect_err(csv);
            assert_eq!(e.line, line, "{e}");
            assert!(e.message.contains("1948"), "{e}");
        }
        let years = parse("2025/1/1,元日\n".as_bytes()).expect("a plain year");
        let toml = to_toml(&years, "x.csv");
        assert!(toml.contains("date = 2025-01-01"), "{toml}");
    }
}
