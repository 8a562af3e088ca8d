//! The parsers of registry answers: pure functions of the text, without host calls, so that
//! the fuzz targets (`fuzz/`) compile this very file natively.

use chrono::{DateTime, FixedOffset, NaiveDate};
use serde_json::Value;

/// Days are counted in Japan time: a `.jp` name "expires on 2027/01/31" through that day.
const JST: i32 = 9 * 3600;

/// RDAP (RFC 9083): the `expiration` event.
pub fn parse_rdap(doc: &Value) -> Result<(NaiveDate, String), String> {
    let events = doc["events"]
        .as_array()
        .ok_or("RDAP answer has no events")?;
    let date = events
        .iter()
        .find(|e| e["eventAction"] == "expiration")
        .and_then(|e| e["eventDate"].as_str())
        .ok_or("RDAP answer has no expiration event")?;
    let status = doc["status"]
        .as_array()
        .map(|s| {
            s.iter()
                .filter_map(Value::as_str)
                .collect::<Vec<_>>()
                .join(", ")
        })
        .unwrap_or_default();
    Ok((parse_date(date)?, status))
}

/// WHOIS text: JPRS (`[有効期限]`, `[Expires on]`, `[状態] Connected (2027/01/31)`,
/// `[Status]`) or the common `Registry Expiry Date:` / `Expiration Date:` forms.
pub fn parse_whois(text: &str) -> Result<(NaiveDate, String), String> {
    if text.contains("No match!!") || text.contains("No match for") {
        return Err("WHOIS: no such domain".into());
    }
    let mut expires = None;
    let mut connected = None;
    let mut status = String::new();
    for line in text.lines() {
        let line = line.trim();
        let (key, value) = if let Some(rest) = line.strip_prefix('[') {
            match rest.split_once(']') {
                Some((k, v)) => (k.trim().to_string(), v.trim()),
                None => continue,
            }
        } else if let Some((k, v)) = line.split_once(':') {
            (k.trim().to_string(), v.trim())
        } else {
            continue;
        };
        match key.to_lowercase().as_str() {
            "有効期限"
            | "expires on"
            | "registry expiry date"
            | "expiration date"
            | "registrar registration expiration date"
            | "expiry date"
            | "paid-till"
                if expires.is_none() =>
            {
                expires = parse_date(value).ok();
            }
            "状態" | "status" | "ステータス" => {
                status = value.to_string();
                // `Connected (2027/01/31)`: an organisational .jp name, connected until then.
                if let Some(inner) = value.split_once('(').and_then(|(_, r)| r.split_once(')')) {
                    connected = parse_date(inner.0).ok();
                }
            }
            _ => {}
        }
    }
    expires
        .or(connected)
        .map(|d| (d, status))
        .ok_or_else(|| "WHOIS answer has no expiry date".to_string())
}

/// `2027/01/31`, `2027-01-31`, or an RFC 3339 timestamp (then taken in Japan time).
pub fn parse_date(s: &str) -> Result<NaiveDate, String> {
    let s = s.trim();
    if let Ok(t) = DateTime::parse_from_rfc3339(s) {
        return Ok(to_jst_date(t.timestamp_millis()));
    }
    let head: String = s.chars().take(10).collect();
    NaiveDate::parse_from_str(&head, "%Y/%m/%d")
        .or_else(|_| NaiveDate::parse_from_str(&head, "%Y-%m-%d"))
        .map_err(|_| format!("unreadable date `{s}`"))
}

pub fn to_jst_date(ms: i64) -> NaiveDate {
    let offset = FixedOffset::east_opt(JST).expect("+09:00 is a valid offset");
    DateTime::from_timestamp_millis(ms)
        .unwrap_or_default()
        .with_timezone(&offset)
        .date_naive()
}
