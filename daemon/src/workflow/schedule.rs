//! When triggers fire: cron expressions and business-day rules in a time zone, with the DST
//! policy and the business calendar applied. Pure functions of (trigger, calendar, instant):
//! the scheduler, `pmoflow schedule` and the tests all use these.

use std::collections::BTreeMap;
use std::str::FromStr;
use std::sync::Arc;

use chrono::{DateTime, Datelike, Duration, LocalResult, NaiveDate, NaiveDateTime, TimeZone, Utc};
use chrono_tz::Tz;

use super::Trigger;
use super::raw::{DstPolicy, OnClosedDay};
use crate::calendar::Calendar;

/// Why a trigger's schedule cannot be computed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ScheduleError {
    /// Not 5 or 6 fields.
    #[error("cron expression `{expr}` has {fields} fields, expected 5 or 6")]
    FieldCount {
        /// The expression.
        expr: String,
        /// How many fields it has.
        fields: usize,
    },
    /// A field the `cron` crate refuses.
    #[error("invalid cron expression `{expr}`: {reason}")]
    Cron {
        /// The expression.
        expr: String,
        /// What is wrong, in the `cron` crate's words.
        reason: String,
    },
    /// A number outside its field's range (checked here: the `cron` crate's own message is
    /// off by one, "Hours must be less than 23").
    #[error("invalid cron expression `{expr}`: {field} must be {min}–{max}, got `{value}`")]
    OutOfRange {
        /// The expression.
        expr: String,
        /// Which field: `second`, `minute`, `hour`, `day of month` or `month`.
        field: &'static str,
        /// The smallest value allowed.
        min: u32,
        /// The largest value allowed.
        max: u32,
        /// The value given.
        value: String,
    },
    /// A day-of-week field that is not crontab's 0–7.
    #[error("invalid cron expression `{expr}`: {reason}")]
    DayOfWeek {
        /// The expression.
        expr: String,
        /// What is wrong.
        #[source]
        reason: DayOfWeekError,
    },
    /// Neither `cron` nor `business_day` with `at`.
    #[error("a trigger needs `cron`, or `business_day` with `at`")]
    NoRule,
    /// `timezone` is not an IANA name.
    #[error("unknown time zone `{0}`")]
    UnknownTimeZone(String),
}

/// Why a crontab day-of-week field cannot be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DayOfWeekError {
    /// `a/b` where b is not a number.
    #[error("bad step in `{0}`")]
    BadStep(String),
    /// `a/0`.
    #[error("step 0 in `{0}`")]
    ZeroStep(String),
    /// Not a number.
    #[error("bad day of week `{0}`")]
    NotADay(String),
    /// Outside 0–7, or a range that runs backwards.
    #[error("day of week must be 0–7 (0 and 7 are Sunday), got `{0}`")]
    OutOfRange(String),
}

/// Parses a 5-field (`min hour dom mon dow`), 6-field (seconds first) or `@daily`-style
/// expression.
pub fn parse_cron(expr: &str) -> Result<cron::Schedule, ScheduleError> {
    parse_cron_set(expr).map(|mut v| v.remove(0))
}

/// Parses an expression into the schedules whose union it means. As in crontab, when both
/// day-of-month and day-of-week are restricted a day matches if *either* does (the `cron`
/// crate alone would require both), so such an expression becomes two schedules.
pub fn parse_cron_set(expr: &str) -> Result<Vec<cron::Schedule>, ScheduleError> {
    let normalized = normalize_cron(expr)?;
    let fields: Vec<&str> = normalized.split_whitespace().collect();
    let restricted = |f: &str| f != "*" && f != "?";
    let variants: Vec<String> =
        if fields.len() == 6 && restricted(fields[3]) && restricted(fields[5]) {
            let mut by_dom = fields.clone();
            by_dom[5] = "*";
            let mut by_dow = fields.clone();
            by_dow[3] = "*";
            vec![by_dom.join(" "), by_dow.join(" ")]
        } else {
            vec![normalized.clone()]
        };
    variants
        .iter()
        .map(|v| {
            cron::Schedule::from_str(v).map_err(|e| {
                // The crate's message repeats the expression with a caret on separate lines;
                // the last line is the reason.
                let text = e.to_string();
                let reason = text
                    .lines()
                    .rev()
                    .find(|l| !l.trim().is_empty())
                    .unwrap_or("");
                ScheduleError::Cron {
                    expr: expr.to_string(),
                    reason: reason.trim().to_string(),
                }
            })
        })
        .collect()
}

/// The expression in the `cron` crate's 6-field form (or an `@` alias).
fn normalize_cron(expr: &str) -> Result<String, ScheduleError> {
    let trimmed = expr.trim();
    let normalized = if trimmed.starts_with('@') {
        trimmed.to_string()
    } else {
        let mut fields: Vec<String> = trimmed.split_whitespace().map(str::to_string).collect();
        match fields.len() {
            5 => fields.insert(0, "0".into()),
            6 => {}
            n => {
                return Err(ScheduleError::FieldCount {
                    expr: expr.to_string(),
                    fields: n,
                });
            }
        }
        check_ranges(expr, &fields)?;
        fields[5] = unix_day_of_week(&fields[5]).map_err(|reason| ScheduleError::DayOfWeek {
            expr: expr.to_string(),
            reason,
        })?;
        fields.join(" ")
    };
    Ok(normalized)
}

/// Checks the numbers of the second, minute, hour, day-of-month and month fields (6-field form)
/// against their ranges; names (`JAN`) and anything else unusual are left to the `cron` crate.
fn check_ranges(expr: &str, fields: &[String]) -> Result<(), ScheduleError> {
    const RANGES: [(&str, u32, u32); 5] = [
        ("second", 0, 59),
        ("minute", 0, 59),
        ("hour", 0, 23),
        ("day of month", 1, 31),
        ("month", 1, 12),
    ];
    for (field, &(name, min, max)) in fields.iter().zip(RANGES.iter()) {
        for part in field.split(',') {
            let range = part.split_once('/').map_or(part, |(r, _)| r);
            for value in range.split('-') {
                if let Ok(v) = value.parse::<u32>()
                    && !(min..=max).contains(&v)
                {
                    return Err(ScheduleError::OutOfRange {
                        expr: expr.to_string(),
                        field: name,
                        min,
                        max,
                        value: value.to_string(),
                    });
                }
            }
        }
    }
    Ok(())
}

/// Translates a day-of-week field from crontab's numbering (0–7, Sunday = 0 or 7, Monday = 1)
/// to the `cron` crate's (Sunday = 1 … Saturday = 7). Numeric ranges and steps are expanded to
/// lists so that ranges ending on Sunday (`5-7`) keep their meaning; names pass through.
fn unix_day_of_week(field: &str) -> Result<String, DayOfWeekError> {
    if field.chars().any(|c| c.is_ascii_alphabetic()) || field == "*" || field == "?" {
        return Ok(field.to_string());
    }
    let mut days = std::collections::BTreeSet::new();
    for part in field.split(',') {
        let (range, step) = match part.split_once('/') {
            Some((r, s)) => (
                r,
                s.parse::<u32>()
                    .map_err(|_| DayOfWeekError::BadStep(part.to_string()))?,
            ),
            None => (part, 1),
        };
        if step == 0 {
            return Err(DayOfWeekError::ZeroStep(part.to_string()));
        }
        let (lo, hi) = match range {
            "*" => (0, 6),
            r => match r.split_once('-') {
                Some((a, b)) => (
                    a.parse::<u32>()
                        .map_err(|_| DayOfWeekError::NotADay(a.to_string()))?,
                    b.parse::<u32>()
                        .map_err(|_| DayOfWeekError::NotADay(b.to_string()))?,
                ),
                None => {
                    let v = r
                        .parse::<u32>()
                        .map_err(|_| DayOfWeekError::NotADay(r.to_string()))?;
                    (v, if part.contains('/') { 6 } else { v })
                }
            },
        };
        if lo > 7 || hi > 7 || lo > hi {
            return Err(DayOfWeekError::OutOfRange(range.to_string()));
        }
        for v in (lo..=hi).step_by(step as usize) {
            days.insert(v % 7 + 1);
        }
    }
    Ok(days
        .iter()
        .map(u32::to_string)
        .collect::<Vec<_>>()
        .join(","))
}

/// The next `count` fires of all of `triggers` after `now`, earliest first, each in its trigger's
/// time zone: what the API, the pages and `pmoflow workflows` show. Triggers that cannot be
/// computed are skipped (validation reports them).
pub fn next_fires(
    triggers: &[Trigger],
    default_tz: Tz,
    calendar: &Arc<Calendar>,
    now: DateTime<Utc>,
    count: usize,
) -> Vec<DateTime<Tz>> {
    let mut fires: Vec<DateTime<Tz>> = triggers
        .iter()
        .filter_map(|t| TriggerSchedule::new(t, default_tz, calendar.clone()).ok())
        .flat_map(|s| {
            let tz = s.timezone();
            s.next(now, count)
                .into_iter()
                .map(move |f| f.at.with_timezone(&tz))
        })
        .collect();
    fires.sort_by_key(|f| f.with_timezone(&Utc));
    fires.truncate(count);
    fires
}

/// One fire.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fire {
    /// When it happens.
    pub at: DateTime<Utc>,
    /// Why it is not at the time the rule alone gives (DST, closed day), for `--explain`.
    pub note: Option<String>,
}

/// How a trigger's rule produces wall-clock times.
#[derive(Debug, Clone)]
enum Rule {
    Cron(Vec<cron::Schedule>),
    BusinessDay {
        n: i32,
        at: chrono::NaiveTime,
        months: Vec<u32>,
    },
}

/// A trigger made ready to compute fires.
#[derive(Debug, Clone)]
pub struct TriggerSchedule {
    rule: Rule,
    tz: Tz,
    dst: DstPolicy,
    calendar: Option<Arc<Calendar>>,
    on_closed_day: OnClosedDay,
}

/// The furthest a closed-day move can shift a fire (the longest run of closed days is well
/// under this: the year-end closure plus a weekend, or Golden Week).
const MAX_SHIFT_DAYS: i64 = 16;

impl TriggerSchedule {
    /// Prepares a checked trigger; `default_tz` applies when it names none.
    pub fn new(
        trigger: &Trigger,
        default_tz: Tz,
        calendar: Arc<Calendar>,
    ) -> Result<Self, ScheduleError> {
        let rule = match (&trigger.cron, trigger.business_day, trigger.at) {
            (Some(expr), _, _) => Rule::Cron(parse_cron_set(expr)?),
            (None, Some(n), Some(at)) => Rule::BusinessDay {
                n,
                at,
                months: trigger.months.clone(),
            },
            _ => return Err(ScheduleError::NoRule),
        };
        let tz = match &trigger.timezone {
            Some(name) => name
                .parse()
                .map_err(|_| ScheduleError::UnknownTimeZone(name.clone()))?,
            None => default_tz,
        };
        Ok(Self {
            rule,
            tz,
            dst: trigger.dst,
            calendar: trigger.calendar.and_then(|c| match c {
                crate::workflow::raw::CalendarKind::JpGov => Some(calendar),
                crate::workflow::raw::CalendarKind::None => None,
            }),
            on_closed_day: trigger.on_closed_day,
        })
    }

    /// The trigger's time zone.
    pub fn timezone(&self) -> Tz {
        self.tz
    }

    /// How far a fire can land from its rule's time, which bounds how far around an interval
    /// the rule must be walked. Zero for the common case, so a per-second cron stays cheap.
    fn margin(&self) -> Duration {
        if self.calendar.is_some()
            && self.on_closed_day != OnClosedDay::Skip
            && matches!(self.rule, Rule::Cron(_))
        {
            Duration::days(MAX_SHIFT_DAYS)
        } else if self.dst == DstPolicy::Both {
            Duration::hours(3)
        } else {
            Duration::zero()
        }
    }

    /// The next `limit` fires strictly after `after`.
    pub fn next(&self, after: DateTime<Utc>, limit: usize) -> Vec<Fire> {
        let margin = self.margin();
        self.collect(after, |found, nominal| {
            found.len() >= limit
                && found
                    .keys()
                    .nth(limit - 1)
                    .is_some_and(|last| nominal > *last + margin)
        })
        .into_values()
        .take(limit)
        .collect()
    }

    /// Every fire in `(after, until]`.
    pub fn between(&self, after: DateTime<Utc>, until: DateTime<Utc>) -> Vec<Fire> {
        let margin = self.margin();
        self.collect(after, |_, nominal| nominal > until + margin)
            .into_values()
            .take_while(|f| f.at <= until)
            .collect()
    }

    /// Walks the rule's wall-clock times from a little before `after` (a fire can be moved
    /// earlier by a closed day), applies DST and the calendar, and keeps fires after `after`
    /// until `done` says enough.
    fn collect(
        &self,
        after: DateTime<Utc>,
        done: impl Fn(&BTreeMap<DateTime<Utc>, Fire>, DateTime<Utc>) -> bool,
    ) -> BTreeMap<DateTime<Utc>, Fire> {
        let mut found: BTreeMap<DateTime<Utc>, Fire> = BTreeMap::new();
        // An hour more covers a DST change right before `after`.
        let start = (after - self.margin() - Duration::hours(1))
            .with_timezone(&self.tz)
            .naive_local();
        // A hard cap keeps a rule that never fires (e.g. Feb 30) from looping forever.
        let horizon = after + Duration::days(366 * 30);
        for local in self.wall_times(start) {
            let Some(nominal) = earliest(self.tz, local) else {
                continue;
            };
            if nominal > horizon || done(&found, nominal) {
                break;
            }
            for fire in self.place(local) {
                if fire.at > after {
                    found.entry(fire.at).or_insert(fire);
                }
            }
        }
        found
    }

    /// The rule's wall-clock times after `start`, in order.
    fn wall_times(&self, start: NaiveDateTime) -> Box<dyn Iterator<Item = NaiveDateTime> + '_> {
        match &self.rule {
            Rule::Cron(schedules) => {
                let start = Utc.from_utc_datetime(&start);
                let mut iters: Vec<_> = schedules
                    .iter()
                    .map(|s| s.after(&start).map(|t| t.naive_utc()).peekable())
                    .collect();
                // Merge the (sorted) iterators, dropping times both produce.
                let mut last: Option<NaiveDateTime> = None;
                Box::new(std::iter::from_fn(move || {
                    loop {
                        let (i, t) = iters
                            .iter_mut()
                            .enumerate()
                            .filter_map(|(i, it)| it.peek().map(|t| (i, *t)))
                            .min_by_key(|(_, t)| *t)?;
                        iters[i].next();
                        if last != Some(t) {
                            last = Some(t);
                            return Some(t);
                        }
                    }
                }))
            }
            Rule::BusinessDay { n, at, months } => {
                let cal = self.calendar.clone().unwrap_or_default();
                let (n, at, months) = (*n, *at, months.clone());
                let mut year = start.year();
                let mut month = start.month();
                Box::new(std::iter::from_fn(move || {
                    loop {
                        if year > start.year() + 200 {
                            return None;
                        }
                        let (y, m) = (year, month);
                        month += 1;
                        if month > 12 {
                            month = 1;
                            year += 1;
                        }
                        if !months.is_empty() && !months.contains(&m) {
                            continue;
                        }
                        if let Some(day) = cal.nth_business_day(y, m, n) {
                            let t = day.and_time(at);
                            if t > start {
                                return Some(t);
                            }
                        }
                    }
                }))
            }
        }
    }

    /// Turns a wall-clock time into fires: DST policy, then the closed-day policy.
    fn place(&self, local: NaiveDateTime) -> Vec<Fire> {
        let mut out = Vec::new();
        for (at, dst_note) in resolve(self.tz, local, self.dst) {
            let Some(cal) = &self.calendar else {
                out.push(Fire { at, note: dst_note });
                continue;
            };
            if matches!(self.rule, Rule::BusinessDay { .. }) {
                out.push(Fire { at, note: dst_note });
                continue;
            }
            let day = at.with_timezone(&self.tz).date_naive();
            let Some(reason) = cal.closed_reason(day) else {
                out.push(Fire { at, note: dst_note });
                continue;
            };
            let target: Option<NaiveDate> = match self.on_closed_day {
                OnClosedDay::Skip => None,
                OnClosedDay::Next => Some(cal.next_business_day(day)),
                OnClosedDay::Previous => Some(cal.previous_business_day(day)),
            };
            if let Some(target) = target {
                let direction = if target > day { "next" } else { "previous" };
                let note = format!("moved from {day} ({reason}) to the {direction} business day");
                let moved = target.and_time(local.time());
                if let Some((at, _)) = resolve(self.tz, moved, self.dst).into_iter().next() {
                    out.push(Fire {
                        at,
                        note: Some(note),
                    });
                }
            }
        }
        out
    }
}

/// The first instant a wall-clock time maps to (or the end of the gap it falls in).
fn earliest(tz: Tz, local: NaiveDateTime) -> Option<DateTime<Utc>> {
    resolve(tz, local, DstPolicy::First)
        .into_iter()
        .next()
        .map(|(t, _)| t)
}

/// Maps a wall-clock time to instants under a DST policy.
fn resolve(tz: Tz, local: NaiveDateTime, dst: DstPolicy) -> Vec<(DateTime<Utc>, Option<String>)> {
    match tz.from_local_datetime(&local) {
        LocalResult::Single(t) => vec![(t.with_timezone(&Utc), None)],
        LocalResult::Ambiguous(a, b) => {
            let note = format!("{local} occurs twice (DST ends)");
            match dst {
                DstPolicy::Both => vec![
                    (a.with_timezone(&Utc), Some(format!("{note}; first of two"))),
                    (
                        b.with_timezone(&Utc),
                        Some(format!("{note}; second of two")),
                    ),
                ],
                DstPolicy::First | DstPolicy::Skip => {
                    vec![(
                        a.with_timezone(&Utc),
                        Some(format!("{note}; runs once, at the first")),
                    )]
                }
            }
        }
        LocalResult::None => {
            if dst == DstPolicy::Skip {
                return Vec::new();
            }
            // The gap ends at the first valid minute after it.
            let mut probe = local;
            for _ in 0..(24 * 60) {
                probe += Duration::minutes(1);
                let probe_min = probe
                    .date()
                    .and_hms_opt(
                        chrono::Timelike::hour(&probe),
                        chrono::Timelike::minute(&probe),
                        0,
                    )
                    .unwrap_or(probe);
                if let Some(t) = tz.from_local_datetime(&probe_min).earliest() {
                    let note = format!(
                        "{local} does not exist (DST starts); runs at the next valid instant"
                    );
                    return vec![(t.with_timezone(&Utc), Some(note))];
                }
            }
            Vec::new()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn out_of_range_numbers_name_their_field_and_range() {
        let msg = |e: &str| {
            parse_cron(e)
                .expect_err("an invalid expression")
                .to_string()
        };
        assert_eq!(
            msg("0 25 * * *"),
            "invalid cron expression `0 25 * * *`: hour must be 0–23, got `25`"
        );
        assert_eq!(
            msg("60 9 * * *"),
            "invalid cron expression `60 9 * * *`: minute must be 0–59, got `60`"
        );
        assert_eq!(
            msg("0 9 0 * *"),
            "invalid cron expression `0 9 0 * *`: day of month must be 1–31, got `0`"
        );
        assert_eq!(
            msg("0 9 1 1-13 *"),
            "invalid cron expression `0 9 1 1-13 *`: month must be 1–12, got `13`"
        );
        assert_eq!(
            msg("61 0 9 * * *"),
            "invalid cron expression `61 0 9 * * *`: second must be 0–59, got `61`"
        );
        for ok in ["0 23 * * *", "*/15 0-23/2 31 12 *", "0 9 1 JAN-MAR *"] {
            assert!(parse_cron(ok).is_ok(), "{ok}");
        }
    }
    use crate::workflow::raw::{CalendarKind, CatchUp, Overlap};

    pub(crate) fn trigger(cron: Option<&str>, tz: &str) -> Trigger {
        Trigger {
            key: "t0".into(),
            cron: cron.map(str::to_string),
            business_day: None,
            at: None,
            months: Vec::new(),
            timezone: Some(tz.into()),
            dst: DstPolicy::First,
            calendar: None,
            on_closed_day: OnClosedDay::Skip,
            catch_up: CatchUp::Latest,
            catch_up_window: None,
            overlap: Overlap::Allow,
            jitter: None,
            inputs: serde_json::Map::new(),
        }
    }

    fn t(s: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(s)
            .expect("rfc3339")
            .with_timezone(&Utc)
    }

    fn fires(tr: &Trigger, from: &str, n: usize) -> Vec<String> {
        let s = TriggerSchedule::new(tr, chrono_tz::Asia::Tokyo, Arc::new(Calendar::computed()))
            .expect("valid");
        s.next(t(from), n)
            .into_iter()
            .map(|f| f.at.with_timezone(&s.timezone()).to_rfc3339())
            .collect()
    }

    #[test]
    fn five_and_six_fields_and_aliases() {
        assert!(parse_cron("0 9 * * *").is_ok());
        assert!(parse_cron("30 0 9 * * Mon-Fri").is_ok());
        assert!(parse_cron("@daily").is_ok());
        assert!(parse_cron("0 9 * *").is_err());
        assert!(parse_cron("61 9 * * *").is_err());
    }

    #[test]
    fn day_of_week_is_numbered_as_in_crontab() {
        // 2027-04-04 is a Sunday.
        let weekdays = trigger(Some("0 9 * * 1-5"), "Asia/Tokyo");
        assert_eq!(
            fires(&weekdays, "2027-04-03T00:00:00+09:00", 2),
            ["2027-04-05T09:00:00+09:00", "2027-04-06T09:00:00+09:00"]
        );
        let weekend = trigger(Some("0 9 * * 6-7"), "Asia/Tokyo");
        assert_eq!(
            fires(&weekend, "2027-04-05T00:00:00+09:00", 2),
            ["2027-04-10T09:00:00+09:00", "2027-04-11T09:00:00+09:00"]
        );
        let sunday = trigger(Some("0 9 * * 0"), "Asia/Tokyo");
        assert_eq!(
            fires(&sunday, "2027-04-05T00:00:00+09:00", 1),
            ["2027-04-11T09:00:00+09:00"]
        );
        let names = trigger(Some("0 9 * * MON-FRI"), "Asia/Tokyo");
        assert_eq!(
            fires(&names, "2027-04-03T00:00:00+09:00", 1),
            ["2027-04-05T09:00:00+09:00"]
        );
        assert!(parse_cron("0 9 * * 8").is_err());
    }

    #[test]
    fn business_days_and_closed_day_moves() {
        let mut tr = trigger(None, "Asia/Tokyo");
        tr.business_day = Some(1);
        tr.at = chrono::NaiveTime::from_hms_opt(9, 0, 0);
        tr.months = vec![1, 4, 7, 10];
        tr.calendar = Some(CalendarKind::JpGov);
        assert_eq!(
            fires(&tr, "2026-12-01T00:00:00+09:00", 4),
            [
                "2027-01-04T09:00:00+09:00",
                "2027-04-01T09:00:00+09:00",
                "2027-07-01T09:00:00+09:00",
                "2027-10-01T09:00:00+09:00"
            ]
        );
        let mut daily = trigger(Some("0 17 * * *"), "Asia/Tokyo");
        daily.calendar = Some(CalendarKind::JpGov);
        daily.on_closed_day = OnClosedDay::Previous;
        // 2027-05-03..05 are holidays, 05-01/02 a weekend: all move back to 04-30.
        assert_eq!(
            fires(&daily, "2027-04-29T18:00:00+09:00", 2),
            ["2027-04-30T17:00:00+09:00", "2027-05-06T17:00:00+09:00"]
        );
    }
}
