//! Cell values as people type them into a 様式, turned into typed field values: numbers with
//! thousands separators, full-width digits and 千/万/億 units, dates as serials, ISO text or
//! 和暦, booleans from check boxes or ○/×, and choices from a validation list. Every refusal is a
//! sentence in Japanese for the 【要修正】 mail.

use chrono::{Datelike, NaiveDate};
use serde_json::{Value as Json, json};
use unicode_normalization::UnicodeNormalization;

/// A cell's value as the workbook holds it (a formula cell: its cached value).
#[derive(Debug, Clone, PartialEq)]
pub enum Raw {
    /// Nothing, or only spaces.
    Empty,
    /// A number (also a date or time in a cell without a date format).
    Number(f64),
    /// A number in a cell formatted as a date: the Excel serial.
    Date(f64),
    /// A date written as ISO text by the reader (OpenDocument).
    IsoDate(String),
    /// Text.
    Text(String),
    /// TRUE/FALSE (a check box's linked cell).
    Bool(bool),
    /// An error value such as `#REF!`.
    Error(String),
}

impl Raw {
    /// Whether the cell holds nothing.
    pub fn is_empty(&self) -> bool {
        match self {
            Raw::Empty => true,
            Raw::Text(t) => t.trim().is_empty(),
            _ => false,
        }
    }

    /// The value as it reads, for messages (「入力値: …」).
    pub fn shown(&self) -> String {
        match self {
            Raw::Empty => String::new(),
            Raw::Number(n) | Raw::Date(n) => number_text(*n),
            Raw::IsoDate(s) | Raw::Text(s) | Raw::Error(s) => s.trim().to_string(),
            Raw::Bool(b) => if *b { "TRUE" } else { "FALSE" }.into(),
        }
    }
}

/// What a field holds, from the step's `types` or the form's validation rule.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case", tag = "kind")]
pub enum Kind {
    /// The value as read: a number stays a number, text is trimmed, a date cell becomes a date.
    Auto,
    /// Text only: a number in the cell is refused.
    Text,
    /// A number; text such as "1,200", "１２００", "1.2億", "▲300" is read too. `unit` is what the
    /// form counts in (`千円`): an amount written with its own unit is converted to it.
    Number {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        unit: Option<String>,
        /// The smallest value allowed.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        min: Option<f64>,
        /// The largest value allowed.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        max: Option<f64>,
    },
    /// A calendar date, given as an ISO date.
    Date,
    /// Yes or no: TRUE/FALSE, ○/×, はい/いいえ, 有/無.
    Bool,
    /// One of a validation list's entries.
    Choice {
        /// The entries.
        choices: Vec<String>,
    },
}

impl Kind {
    /// The kind named in a workflow (`types = { 整備経費 = "number" }`); `unit` for numbers.
    pub fn named(name: &str, unit: Option<&str>) -> Option<Kind> {
        Some(match name {
            "auto" => Kind::Auto,
            "text" | "string" => Kind::Text,
            "number" => Kind::Number {
                unit: unit.map(str::to_string),
                min: None,
                max: None,
            },
            "date" => Kind::Date,
            "bool" | "boolean" => Kind::Bool,
            _ => return None,
        })
    }

    /// The names [`Kind::named`] accepts, for error hints.
    pub const NAMES: &'static str =
        "\"auto\", \"text\", \"number\", \"date\", \"bool\" or \"choice\"";
}

/// NFKC (full-width digits and letters to ASCII) and trimmed.
fn fold(s: &str) -> String {
    s.nfkc().collect::<String>().trim().to_string()
}

/// A choice as people write it: NFKC, without whitespace and the brackets around it
/// (「要対応」, 【注意】, (良好)).
pub fn choice_key(s: &str) -> String {
    fold(s)
        .chars()
        .filter(|c| {
            !c.is_whitespace()
                && !matches!(
                    c,
                    '「' | '」'
                        | '『'
                        | '』'
                        | '【'
                        | '】'
                        | '('
                        | ')'
                        | '['
                        | ']'
                        | '〔'
                        | '〕'
                        | '<'
                        | '>'
                        | '〈'
                        | '〉'
                        | '"'
                        | '\''
                )
        })
        .collect()
}

/// A number without a pointless `.0`.
pub fn number_text(n: f64) -> String {
    if n.fract() == 0.0 && n.abs() < 9.0e15 {
        format!("{}", n as i64)
    } else {
        format!("{n}")
    }
}

/// A number as JSON: an integer when it is one.
pub fn number_json(n: f64) -> Json {
    // Rounded to 9 decimals: 1.2 × 10⁸ is 120000000, not 120000000.00000001.
    let r = (n * 1e9).round() / 1e9;
    if r.fract() == 0.0 && r.abs() < 9.0e15 {
        json!(r as i64)
    } else {
        serde_json::Number::from_f64(r).map_or(Json::Null, Json::Number)
    }
}

/// Why a written value does not fit its field: a Japanese phrase that follows the field's name
/// (「予算額」 + 「は数値で入力してください（入力値: 未定）」).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct Unfit(pub String);

impl From<String> for Unfit {
    fn from(s: String) -> Self {
        Self(s)
    }
}

impl From<&str> for Unfit {
    fn from(s: &str) -> Self {
        Self(s.to_string())
    }
}

impl PartialEq<&str> for Unfit {
    fn eq(&self, other: &&str) -> bool {
        self.0 == *other
    }
}

/// Converts `raw` to `kind`; `Ok(None)` for an empty cell, `Err` with what is wrong (Japanese,
/// without the cell's name: the caller prefixes it).
pub fn typed(raw: &Raw, kind: &Kind, date1904: bool) -> Result<Option<Json>, Unfit> {
    if raw.is_empty() {
        return Ok(None);
    }
    if let Raw::Error(e) = raw {
        return Err(Unfit(format!("の値がエラー（{}）になっています", e.trim())));
    }
    let shown = raw.shown();
    let value = match kind {
        Kind::Auto => match raw {
            Raw::Number(n) => number_json(*n),
            Raw::Date(n) => json!(serial_date(*n, date1904).ok_or("の日付が読み取れません")?),
            Raw::IsoDate(s) => json!(s.get(..10).unwrap_or(s)),
            Raw::Bool(b) => json!(b),
            _ => json!(shown),
        },
        Kind::Text => match raw {
            Raw::Text(t) => json!(t.trim()),
            _ => {
                return Err(Unfit(format!(
                    "は文字で入力してください（入力値: {shown}）"
                )));
            }
        },
        Kind::Number { unit, min, max } => {
            let n = match raw {
                Raw::Number(n) | Raw::Date(n) => *n,
                Raw::Text(t) => parse_number(t, unit.as_deref()).ok_or_else(|| {
                    format!("は数値で入力してください（入力値: 「{}」）", t.trim())
                })?,
                _ => {
                    return Err(Unfit(format!(
                        "は数値で入力してください（入力値: {shown}）"
                    )));
                }
            };
            let unit = unit.as_deref().unwrap_or("");
            let bound = |b: f64| format!("{}{unit}", number_text(b));
            let out_of_range = min.is_some_and(|m| n < m) || max.is_some_and(|m| n > m);
            if out_of_range {
                let range = match (min, max) {
                    (Some(a), Some(b)) => format!("{}から{}まで", bound(*a), bound(*b)),
                    (Some(a), None) => format!("{}以上", bound(*a)),
                    (None, Some(b)) => format!("{}以下", bound(*b)),
                    (None, None) => String::new(),
                };
                return Err(Unfit(format!(
                    "は{range}の数値で入力してください（入力値: 「{shown}」）"
                )));
            }
            number_json(n)
        }
        Kind::Date => match raw {
            Raw::Number(n) | Raw::Date(n) => {
                json!(
                    serial_date(*n, date1904)
                        .ok_or_else(|| format!("は日付で入力してください（入力値: {shown}）"))?
                )
            }
            Raw::IsoDate(s) => json!(s.get(..10).unwrap_or(s)),
            Raw::Text(t) => json!(parse_date(t)?.format("%Y-%m-%d").to_string()),
            _ => {
                return Err(Unfit(format!(
                    "は日付で入力してください（入力値: {shown}）"
                )));
            }
        },
        Kind::Bool => match raw {
            Raw::Bool(b) => json!(b),
            Raw::Number(n) if *n == 1.0 || *n == 0.0 => json!(*n == 1.0),
            _ => json!(parse_bool(&shown).ok_or_else(|| format!(
                "は「○」か「×」で入力してください（入力値: 「{shown}」）"
            ))?),
        },
        Kind::Choice { choices } => {
            let mine = choice_key(&shown);
            match choices.iter().find(|c| choice_key(c) == mine) {
                Some(c) => json!(c),
                None => {
                    let list: Vec<String> = choices.iter().map(|c| format!("「{c}」")).collect();
                    return Err(Unfit(format!(
                        "は{}のいずれかを選択してください（入力値: 「{shown}」）",
                        list.join("")
                    )));
                }
            }
        }
    };
    Ok(Some(value))
}

/// A number as written: "1,200", "１２００", "▲300", "12,000千円", "1.2億", "1億2,000万円", "5%".
/// With `unit` (what the form counts in: "千円", "円", "万円"…), an amount that names its own
/// scale is converted to it; a bare number is taken as already in the unit.
pub fn parse_number(text: &str, unit: Option<&str>) -> Option<f64> {
    let t: String = fold(text)
        .chars()
        .filter(|c| !matches!(c, ',' | ' ' | '\u{3000}' | '_' | '，' | '、'))
        .collect();
    let (negative, t) = match t.strip_prefix(['▲', '△', '-', '−', '－']) {
        Some(rest) => (true, rest.to_string()),
        None => (false, t),
    };
    let t = t.strip_prefix(['¥', '￥', '\\']).unwrap_or(&t);
    let t = t.trim_end_matches('円');
    if t.is_empty() {
        return None;
    }
    if let Some(p) = t.strip_suffix('%') {
        let n: f64 = p.parse().ok()?;
        let n = if negative { -n } else { n };
        // A field counted in percent takes "5%" as 5; any other as the fraction 0.05.
        return Some(if unit.is_some_and(|u| u.trim() == "%") {
            n
        } else {
            n / 100.0
        });
    }
    let mut total = 0.0;
    let mut scaled = false;
    let mut rest = t;
    while !rest.is_empty() {
        let end = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(rest.len());
        if end == 0 {
            return None;
        }
        let n: f64 = rest[..end].parse().ok()?;
        rest = &rest[end..];
        let (scale, len) = [
            ("兆", 1e12),
            ("億", 1e8),
            ("百万", 1e6),
            ("万", 1e4),
            ("千", 1e3),
        ]
        .iter()
        .find(|(s, _)| rest.starts_with(s))
        .map_or((1.0, 0), |(s, v)| (*v, s.len()));
        if len == 0 && !rest.is_empty() {
            return None;
        }
        scaled |= len > 0;
        total += n * scale;
        rest = &rest[len..];
    }
    if !total.is_finite() {
        return None;
    }
    let unit_scale = unit.map(unit_scale).unwrap_or(1.0);
    let value = if scaled { total / unit_scale } else { total };
    Some(if negative { -value } else { value })
}

/// How many yen one `unit` is ("千円" → 1000); 1 for anything else (件, 人, %).
fn unit_scale(unit: &str) -> f64 {
    match unit.trim().trim_end_matches('円') {
        "千" => 1e3,
        "万" => 1e4,
        "百万" => 1e6,
        "億" => 1e8,
        _ => 1.0,
    }
}

/// Yes/no as people mark it.
pub fn parse_bool(text: &str) -> Option<bool> {
    let t = fold(text).to_lowercase();
    match t.as_str() {
        "○" | "◯" | "〇" | "✓" | "✔" | "☑" | "☒" | "はい" | "有" | "あり" | "有り" | "true"
        | "yes" | "y" | "1" | "済" | "利用" | "利用する" => Some(true),
        "×" | "✕" | "✗" | "☐" | "いいえ" | "無" | "なし" | "無し" | "false" | "no" | "n" | "0"
        | "-" | "未" | "利用しない" => Some(false),
        _ => None,
    }
}

/// The date of an Excel serial (1900 system, with its phantom 29 February 1900; or 1904).
pub fn serial_date(serial: f64, date1904: bool) -> Option<String> {
    if !serial.is_finite() || !(1.0..=2_958_465.0).contains(&serial) {
        return None;
    }
    let days = serial.floor() as i64;
    let base = if date1904 {
        NaiveDate::from_ymd_opt(1904, 1, 1)?
    } else if days < 60 {
        NaiveDate::from_ymd_opt(1899, 12, 31)?
    } else {
        NaiveDate::from_ymd_opt(1899, 12, 30)?
    };
    let d = base.checked_add_signed(chrono::Duration::days(days))?;
    Some(d.format("%Y-%m-%d").to_string())
}

/// The Japanese eras since 明治, with their first day.
const ERAS: &[(&str, &str, (i32, u32, u32))] = &[
    ("令和", "R", (2019, 5, 1)),
    ("平成", "H", (1989, 1, 8)),
    ("昭和", "S", (1926, 12, 25)),
    ("大正", "T", (1912, 7, 30)),
    ("明治", "M", (1868, 1, 25)),
];

/// A date written as text: "2027-04-01", "2027/4/1", "2027年4月1日", "令和9年4月1日", "令和元年
/// 5月1日", "R9.4.1", "R9/4/1".
pub fn parse_date(text: &str) -> Result<NaiveDate, Unfit> {
    let t = fold(text).replace(' ', "");
    let bad = || format!("は日付で入力してください（入力値: 「{}」）", text.trim());
    let (era, rest) = match ERAS.iter().find_map(|e| {
        t.strip_prefix(e.0)
            .or_else(|| t.strip_prefix(e.1))
            .or_else(|| t.strip_prefix(&e.1.to_lowercase()))
            .map(|r| (Some(e), r))
    }) {
        Some(found) => found,
        None => (None, t.as_str()),
    };
    let rest = rest.replacen("元", "1", 1);
    let parts: Vec<&str> = rest
        .split(['-', '/', '.', '年', '月', '日'])
        .filter(|p| !p.is_empty())
        .collect();
    let [y, m, d] = parts.as_slice() else {
        return Err(Unfit(bad()));
    };
    let (y, m, d): (i32, u32, u32) = match (y.parse(), m.parse(), d.parse()) {
        (Ok(y), Ok(m), Ok(d)) => (y, m, d),
        _ => return Err(Unfit(bad())),
    };
    let year = match era {
        Some((_, _, (start, _, _))) => start + y - 1,
        None if (1900..=9999).contains(&y) => y,
        None => return Err(Unfit(bad())),
    };
    let date = NaiveDate::from_ymd_opt(year, m, d)
        .ok_or_else(|| format!("の「{}」は存在しない日付です", text.trim()))?;
    if let Some((name, _, (sy, sm, sd))) = era {
        let first = NaiveDate::from_ymd_opt(*sy, *sm, *sd).ok_or_else(bad)?;
        let next_era = ERAS
            .iter()
            .take_while(|e| e.0 != *name)
            .last()
            .and_then(|e| NaiveDate::from_ymd_opt(e.2.0, e.2.1, e.2.2));
        if date < first || next_era.is_some_and(|n| date >= n) {
            return Err(Unfit(format!(
                "の「{}」は{name}の期間にない日付です（{}年{}月{}日）",
                text.trim(),
                date.year(),
                date.month(),
                date.day()
            )));
        }
    }
    Ok(date)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // in tests a failed unwrap is the failure
mod tests {
    use super::*;

    #[test]
    fn numbers_as_people_write_them() {
        let k = |s: &str| parse_number(s, None);
        assert_eq!(k("1,200"), Some(1200.0));
        assert_eq!(k("１２００"), Some(1200.0));
        assert_eq!(k("１，２００"), Some(1200.0));
        assert_eq!(k("▲300"), Some(-300.0));
        assert_eq!(k("¥12,000円"), Some(12000.0));
        assert_eq!(k("1.2億"), Some(120_000_000.0));
        assert_eq!(k("1億2,000万円"), Some(120_000_000.0));
        assert_eq!(k("5%"), Some(0.05));
        assert_eq!(k("約千二百"), None);
        assert_eq!(k("12,000千円 程度"), None);
        assert_eq!(k(""), None);
        let t = |s: &str| parse_number(s, Some("千円"));
        assert_eq!(t("12,000"), Some(12000.0));
        assert_eq!(t("12,000千円"), Some(12000.0));
        assert_eq!(t("1.2億"), Some(120_000.0));
        assert_eq!(t("1,200万円"), Some(12_000.0));
        assert_eq!(number_json(1.2 * 1e8), json!(120_000_000));
    }

    #[test]
    fn dates_from_serials_iso_and_wareki() {
        assert_eq!(serial_date(46478.0, false).as_deref(), Some("2027-04-01"));
        assert_eq!(serial_date(1.0, false).as_deref(), Some("1900-01-01"));
        assert_eq!(serial_date(61.0, false).as_deref(), Some("1900-03-01"));
        assert_eq!(serial_date(0.0, false), None);
        let d = |s: &str| parse_date(s).map(|d| d.to_string());
        assert_eq!(d("2027/4/1").as_deref(), Ok("2027-04-01"));
        assert_eq!(d("２０２７年４月１日").as_deref(), Ok("2027-04-01"));
        assert_eq!(d("令和9年4月1日").as_deref(), Ok("2027-04-01"));
        assert_eq!(d("令和元年5月1日").as_deref(), Ok("2019-05-01"));
        assert_eq!(d("R9.4.1").as_deref(), Ok("2027-04-01"));
        assert_eq!(d("H31.4.30").as_deref(), Ok("2019-04-30"));
        assert!(
            d("令和元年4月30日")
                .unwrap_err()
                .0
                .contains("令和の期間にない")
        );
        assert!(
            d("平成31年5月1日")
                .unwrap_err()
                .0
                .contains("平成の期間にない")
        );
        assert!(d("2027年2月30日").unwrap_err().0.contains("存在しない"));
        assert!(d("来年度").is_err());
    }

    #[test]
    fn typed_values_and_their_messages() {
        let n = Kind::Number {
            unit: Some("千円".into()),
            min: None,
            max: None,
        };
        assert_eq!(typed(&Raw::Empty, &n, false), Ok(None));
        assert_eq!(
            typed(&Raw::Text("１２，０００".into()), &n, false),
            Ok(Some(json!(12000)))
        );
        assert_eq!(
            typed(&Raw::Text("未定".into()), &n, false).unwrap_err(),
            "は数値で入力してください（入力値: 「未定」）"
        );
        assert_eq!(
            typed(&Raw::Number(42.0), &Kind::Text, false).unwrap_err(),
            "は文字で入力してください（入力値: 42）"
        );
        let c = Kind::Choice {
            choices: vec!["新規".into(), "改修".into(), "運用".into()],
        };
        assert_eq!(
            typed(&Raw::Text("改修".into()), &c, false),
            Ok(Some(json!("改修")))
        );
        assert_eq!(
            typed(&Raw::Text("その他".into()), &c, false).unwrap_err(),
            "は「新規」「改修」「運用」のいずれかを選択してください（入力値: 「その他」）"
        );
        assert_eq!(
            typed(&Raw::Text("○".into()), &Kind::Bool, false),
            Ok(Some(json!(true)))
        );
        assert_eq!(
            typed(&Raw::Bool(false), &Kind::Bool, false),
            Ok(Some(json!(false)))
        );
        assert_eq!(
            typed(&Raw::Date(46478.0), &Kind::Auto, false),
            Ok(Some(json!("2027-04-01")))
        );
        let days = Kind::Number {
            unit: Some("日".into()),
            min: Some(0.0),
            max: Some(3650.0),
        };
        assert_eq!(
            typed(&Raw::Text("-3".into()), &days, false).unwrap_err(),
            "は0日から3650日までの数値で入力してください（入力値: 「-3」）"
        );
        assert_eq!(
            typed(&Raw::Text("１２".into()), &days, false),
            Ok(Some(json!(12)))
        );
        let pct = Kind::Number {
            unit: Some("%".into()),
            min: None,
            max: None,
        };
        assert_eq!(
            typed(&Raw::Text("5%".into()), &pct, false),
            Ok(Some(json!(5)))
        );
        let rating = Kind::Choice {
            choices: vec!["良好".into(), "注意".into(), "要対応".into()],
        };
        for written in ["「要対応」", "【要対応】", " 要対応 ", "（要対応）"] {
            assert_eq!(
                typed(&Raw::Text(written.into()), &rating, false),
                Ok(Some(json!("要対応"))),
                "{written}"
            );
        }
        assert_eq!(
            typed(&Raw::Error("#REF!".into()), &Kind::Auto, false).unwrap_err(),
            "の値がエラー（#REF!）になっています"
        );
    }
}
