//! Dates the Japanese way: `12月4日(金)`, `令和8年`, fiscal years and quarters.

use chrono::{Datelike, NaiveDate, Weekday};

/// `月`…`日` for a weekday.
pub fn weekday_ja(w: Weekday) -> &'static str {
    match w {
        Weekday::Mon => "月",
        Weekday::Tue => "火",
        Weekday::Wed => "水",
        Weekday::Thu => "木",
        Weekday::Fri => "金",
        Weekday::Sat => "土",
        Weekday::Sun => "日",
    }
}

/// `12月4日(金)`.
pub fn md_ja(d: NaiveDate) -> String {
    format!("{}月{}日({})", d.month(), d.day(), weekday_ja(d.weekday()))
}

/// `2026-12-04 (金)`: ISO date with the Japanese weekday, for listings.
pub fn md_ja_iso(d: NaiveDate) -> String {
    format!("{} ({})", d.format("%Y-%m-%d"), weekday_ja(d.weekday()))
}

/// The era name and year: `令和8年` (元年 for the first year). Reiwa from 2019-05-01, Heisei
/// from 1989-01-08.
pub fn era_year(d: NaiveDate) -> String {
    let (era, first) = if d >= NaiveDate::from_ymd_opt(2019, 5, 1).unwrap_or_default() {
        ("令和", 2019)
    } else if d >= NaiveDate::from_ymd_opt(1989, 1, 8).unwrap_or_default() {
        ("平成", 1989)
    } else {
        ("昭和", 1926)
    };
    let n = d.year() - first + 1;
    if n == 1 {
        format!("{era}元年")
    } else {
        format!("{era}{n}年")
    }
}

/// The fiscal year (April–March) a date belongs to: 2027-03-31 → 2026.
pub fn fiscal_year(d: NaiveDate) -> i32 {
    if d.month() >= 4 {
        d.year()
    } else {
        d.year() - 1
    }
}

/// The fiscal quarter (1: Apr–Jun … 4: Jan–Mar).
pub fn fiscal_quarter(d: NaiveDate) -> u32 {
    match d.month() {
        4..=6 => 1,
        7..=9 => 2,
        10..=12 => 3,
        _ => 4,
    }
}

/// The era name of a fiscal year, as in 令和9年度 (FY2027).
pub fn fiscal_year_ja(fy: i32) -> String {
    // A fiscal year is named after the era year in which it starts (April 1).
    let start = NaiveDate::from_ymd_opt(fy, 4, 1).unwrap_or_default();
    format!("{}度", era_year(start))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn japanese_dates() {
        let d = NaiveDate::from_ymd_opt(2026, 12, 4).expect("date");
        assert_eq!(md_ja(d), "12月4日(金)");
        assert_eq!(era_year(d), "令和8年");
        assert_eq!(
            era_year(NaiveDate::from_ymd_opt(2019, 5, 1).expect("d")),
            "令和元年"
        );
        assert_eq!(
            era_year(NaiveDate::from_ymd_opt(2019, 4, 30).expect("d")),
            "平成31年"
        );
        assert_eq!(
            fiscal_year(NaiveDate::from_ymd_opt(2027, 3, 31).expect("d")),
            2026
        );
        assert_eq!(
            fiscal_quarter(NaiveDate::from_ymd_opt(2027, 1, 4).expect("d")),
            4
        );
        assert_eq!(fiscal_year_ja(2027), "令和9年度");
    }
}
