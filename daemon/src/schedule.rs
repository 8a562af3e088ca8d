//! Cron triggers: parsing and next-fire computation in a time zone.

use std::str::FromStr;

use chrono::{DateTime, Utc};

/// Parses a 5-field (`min hour dom mon dow`), 6-field (seconds first) or `@daily`-style
/// expression.
pub fn parse_cron(expr: &str) -> Result<cron::Schedule, String> {
    let trimmed = expr.trim();
    let normalized = if trimmed.starts_with('@') {
        trimmed.to_string()
    } else {
        match trimmed.split_whitespace().count() {
            5 => format!("0 {trimmed}"),
            6 => trimmed.to_string(),
            n => {
                return Err(format!(
                    "cron expression `{expr}` has {n} fields, expected 5 or 6"
                ));
            }
        }
    };
    cron::Schedule::from_str(&normalized).map_err(|e| {
        // The crate's message repeats the expression with a caret on separate lines; the
        // last line is the reason.
        let text = e.to_string();
        let reason = text
            .lines()
            .rev()
            .find(|l| !l.trim().is_empty())
            .unwrap_or("");
        format!("invalid cron expression `{expr}`: {}", reason.trim())
    })
}

/// The first fire strictly after `after`, in zone `tz`.
pub fn next_fire(
    schedule: &cron::Schedule,
    tz: chrono_tz::Tz,
    after: DateTime<Utc>,
) -> Option<DateTime<Utc>> {
    schedule
        .after(&after.with_timezone(&tz))
        .next()
        .map(|t| t.with_timezone(&Utc))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn five_and_six_fields_and_aliases() {
        assert!(parse_cron("0 9 * * *").is_ok());
        assert!(parse_cron("30 0 9 * * Mon-Fri").is_ok());
        assert!(parse_cron("@daily").is_ok());
        assert!(parse_cron("0 9 * *").is_err());
        assert!(parse_cron("61 9 * * *").is_err());
    }

    #[test]
    fn next_fire_in_tokyo() {
        let s = parse_cron("0 9 * * *").expect("valid");
        let after = DateTime::parse_from_rfc3339("2027-04-01T01:00:00Z")
            .expect("t")
            .with_timezone(&Utc);
        let next = next_fire(&s, chrono_tz::Asia::Tokyo, after).expect("fires");
        assert_eq!(next.to_rfc3339(), "2027-04-02T00:00:00+00:00");
    }
}
