//! Time in a step's parameters: deadlines (`2027-05-31`, an instant, `5d`), reminder offsets
//! from the deadline (`-1d@10:00`, `+2bd`) and `wait_after_deadline`, all in the daemon's zone
//! and its business-day calendar; and the Japanese form of an instant for mail text.

use chrono::{DateTime, NaiveTime, TimeZone, Utc};

use crate::calendar::Calendar;
use crate::duration::DurationError;

/// A deadline, offset or wait that cannot be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum TimingError {
    /// An offset without `-` or `+`.
    #[error("reminder offset `{0}` needs a sign: `-` before the deadline, `+` after")]
    NoSign(String),
    /// The part after `@` is not `HH:MM`.
    #[error("`{time}` in `{text}` is not a time like 10:00")]
    BadTime {
        /// What followed `@`.
        time: String,
        /// The whole offset.
        text: String,
    },
    /// `Nbd` where N is not a whole number.
    #[error("`{amount}` in `{text}` is not a number of business days")]
    BadBusinessDays {
        /// The amount as written.
        amount: String,
        /// The whole offset.
        text: String,
    },
    /// The amount of an offset is not a duration.
    #[error("reminder offset `{text}`: {error}")]
    Offset {
        /// The whole offset.
        text: String,
        /// Why the amount is not a duration.
        error: DurationError,
    },
    /// `wait_after_deadline` in business days on a request without a deadline.
    #[error("`wait_after_deadline` in business days needs a `deadline`")]
    BusinessDaysNeedDeadline,
    /// Not a duration.
    #[error(transparent)]
    Duration(#[from] DurationError),
    /// A date whose end falls in a gap of the zone.
    #[error("deadline `{deadline}` does not exist in {tz}")]
    NoSuchTime {
        /// The deadline as written.
        deadline: String,
        /// The daemon's zone.
        tz: chrono_tz::Tz,
    },
    /// Neither an instant, a date nor a duration.
    #[error("deadline `{0}` is neither an RFC 3339 instant, a date (YYYY-MM-DD) nor a duration")]
    BadDeadline(String),
}

/// An offset from the deadline: `-1d@10:00`, `+2bd`, `-30s`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Offset {
    /// Whole business days (`bd`), if that unit was used.
    business_days: Option<i64>,
    /// Otherwise a signed duration.
    duration: chrono::Duration,
    /// The local time of day to move to, if given.
    at: Option<NaiveTime>,
}

pub(crate) fn parse_offset(text: &str) -> Result<Offset, TimingError> {
    let t = text.trim();
    let (sign, rest) = match t.chars().next() {
        Some('-') => (-1, &t[1..]),
        Some('+') => (1, &t[1..]),
        _ => {
            return Err(TimingError::NoSign(text.to_string()));
        }
    };
    let (amount, at) = match rest.split_once('@') {
        Some((a, time)) => {
            let time = NaiveTime::parse_from_str(time.trim(), "%H:%M").map_err(|_| {
                TimingError::BadTime {
                    time: time.to_string(),
                    text: text.to_string(),
                }
            })?;
            (a.trim(), Some(time))
        }
        None => (rest.trim(), None),
    };
    if let Some(n) = amount.strip_suffix("bd") {
        let n: i64 = n.trim().parse().map_err(|_| TimingError::BadBusinessDays {
            amount: amount.to_string(),
            text: text.to_string(),
        })?;
        return Ok(Offset {
            business_days: Some(sign * n),
            duration: chrono::Duration::zero(),
            at,
        });
    }
    let d = crate::duration::HumanDuration::parse(amount).map_err(|error| TimingError::Offset {
        text: text.to_string(),
        error,
    })?;
    Ok(Offset {
        business_days: None,
        duration: d.to_chrono() * i32::try_from(sign).unwrap_or(1),
        at,
    })
}

pub(crate) fn apply_offset(
    deadline: DateTime<Utc>,
    off: Offset,
    tz: chrono_tz::Tz,
    calendar: &Calendar,
) -> DateTime<Utc> {
    let local = deadline.with_timezone(&tz);
    let (date, time) = match off.business_days {
        Some(n) => (
            calendar.add_business_days(local.date_naive(), n),
            local.time(),
        ),
        None => {
            let moved = local + off.duration;
            (moved.date_naive(), moved.time())
        }
    };
    let time = off.at.unwrap_or(time);
    tz.from_local_datetime(&date.and_time(time))
        .earliest()
        .map_or(deadline + off.duration, |t| t.with_timezone(&Utc))
}

/// `wait_after_deadline`: a duration (`3d`), or business days with an optional time of day
/// (`3bd`, `3bd@09:00`), counted from the deadline.
pub(crate) fn wait_after_deadline(
    text: &str,
    deadline: Option<DateTime<Utc>>,
    tz: chrono_tz::Tz,
    calendar: &Calendar,
) -> Result<chrono::Duration, TimingError> {
    let t = text.trim();
    if t.contains("bd") || t.contains('@') {
        let Some(deadline) = deadline else {
            return Err(TimingError::BusinessDaysNeedDeadline);
        };
        let off = parse_offset(&format!("+{}", t.trim_start_matches('+')))?;
        return Ok(apply_offset(deadline, off, tz, calendar) - deadline);
    }
    Ok(crate::duration::HumanDuration::parse(t)?.to_chrono())
}

/// A deadline: an RFC 3339 instant, a date (`2027-05-31`, meaning the end of that day in the
/// daemon's zone), or a duration from now (`5d`).
pub(crate) fn parse_deadline(
    text: &str,
    now: DateTime<Utc>,
    tz: chrono_tz::Tz,
) -> Result<DateTime<Utc>, TimingError> {
    let t = text.trim();
    if let Ok(i) = DateTime::parse_from_rfc3339(t) {
        return Ok(i.with_timezone(&Utc));
    }
    if let Ok(d) = chrono::NaiveDate::parse_from_str(t, "%Y-%m-%d") {
        let end = d.and_hms_opt(23, 59, 59).unwrap_or_default();
        return tz
            .from_local_datetime(&end)
            .earliest()
            .map(|x| x.with_timezone(&Utc))
            .ok_or_else(|| TimingError::NoSuchTime {
                deadline: t.to_string(),
                tz,
            });
    }
    crate::duration::HumanDuration::parse(t)
        .map(|d| now + d.to_chrono())
        .map_err(|_| TimingError::BadDeadline(t.to_string()))
}

/// `12月4日(金)17:00` in the daemon's zone.
pub(crate) fn format_ja(t: DateTime<Utc>, tz: chrono_tz::Tz) -> String {
    let local = t.with_timezone(&tz);
    format!(
        "{}{}",
        crate::calendar::format::md_ja(local.date_naive()),
        local.format("%H:%M")
    )
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn offsets_from_the_deadline() {
        let tz = chrono_tz::Asia::Tokyo;
        // Friday 2026-12-04 17:00 JST.
        let deadline = tz
            .with_ymd_and_hms(2026, 12, 4, 17, 0, 0)
            .unwrap()
            .with_timezone(&Utc);
        let at = |s: &str| {
            apply_offset(deadline, parse_offset(s).unwrap(), tz, &Calendar::default())
                .with_timezone(&tz)
                .format("%Y-%m-%d %H:%M")
                .to_string()
        };
        assert_eq!(at("-1d@10:00"), "2026-12-03 10:00");
        assert_eq!(at("+1d@09:00"), "2026-12-05 09:00");
        // Business days skip the weekend: 1 business day after Friday is Monday.
        assert_eq!(at("+1bd@09:00"), "2026-12-07 09:00");
        assert_eq!(at("-3bd"), "2026-12-01 17:00");
        assert_eq!(at("-30m"), "2026-12-04 16:30");
        assert!(
            parse_offset("1d")
                .unwrap_err()
                .to_string()
                .contains("needs a sign")
        );
        assert!(parse_offset("-1d@25:00").is_err());
    }
}
