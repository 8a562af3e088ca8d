//! Japanese national holidays computed offline by the rules of the 国民の祝日に関する法律:
//! fixed days, Happy Monday days, equinox days by the astronomical formula, 振替休日 and
//! 国民の休日, with the one-off moves of 2019–2021. Valid for 1980–2099 (the equinox formula's
//! range); the Cabinet Office CSV, when imported, overrides these for the years it covers.

use std::collections::BTreeMap;

use chrono::{Datelike, Duration, NaiveDate, Weekday};

/// The name the Cabinet Office uses for substitute and sandwiched days.
pub const KYUJITSU: &str = "休日";

fn date(y: i32, m: u32, d: u32) -> Option<NaiveDate> {
    NaiveDate::from_ymd_opt(y, m, d)
}

/// The `n`th Monday (1-based) of a month.
fn nth_monday(y: i32, m: u32, n: u8) -> Option<NaiveDate> {
    NaiveDate::from_weekday_of_month_opt(y, m, Weekday::Mon, n)
}

/// 春分の日 (vernal equinox day), 1980–2099.
pub fn vernal_equinox(y: i32) -> Option<NaiveDate> {
    if !(1980..=2099).contains(&y) {
        return None;
    }
    let t = f64::from(y - 1980);
    let day = (20.8431 + 0.242_194 * t - (t / 4.0).floor()).floor();
    date(y, 3, day as u32)
}

/// 秋分の日 (autumnal equinox day), 1980–2099.
pub fn autumnal_equinox(y: i32) -> Option<NaiveDate> {
    if !(1980..=2099).contains(&y) {
        return None;
    }
    let t = f64::from(y - 1980);
    let day = (23.2488 + 0.242_194 * t - (t / 4.0).floor()).floor();
    date(y, 9, day as u32)
}

/// The 国民の祝日 of a year (without substitute and sandwiched days).
fn statutory(y: i32) -> BTreeMap<NaiveDate, &'static str> {
    let mut h: BTreeMap<NaiveDate, &'static str> = BTreeMap::new();
    let mut add = |d: Option<NaiveDate>, name: &'static str| {
        if let Some(d) = d {
            h.insert(d, name);
        }
    };
    add(date(y, 1, 1), "元日");
    add(
        if y >= 2000 {
            nth_monday(y, 1, 2)
        } else {
            date(y, 1, 15)
        },
        "成人の日",
    );
    add(date(y, 2, 11), "建国記念の日");
    if y >= 2020 {
        add(date(y, 2, 23), "天皇誕生日");
    } else if (1989..=2018).contains(&y) {
        add(date(y, 12, 23), "天皇誕生日");
    }
    add(vernal_equinox(y), "春分の日");
    add(
        date(y, 4, 29),
        if y >= 2007 {
            "昭和の日"
        } else if y >= 1989 {
            "みどりの日"
        } else {
            "天皇誕生日"
        },
    );
    add(date(y, 5, 3), "憲法記念日");
    if y >= 2007 {
        add(date(y, 5, 4), "みどりの日");
    }
    add(date(y, 5, 5), "こどもの日");
    match y {
        2020 => add(date(y, 7, 23), "海の日"),
        2021 => add(date(y, 7, 22), "海の日"),
        y if y >= 2003 => add(nth_monday(y, 7, 3), "海の日"),
        y if y >= 1996 => add(date(y, 7, 20), "海の日"),
        _ => {}
    }
    match y {
        2020 => add(date(y, 8, 10), "山の日"),
        2021 => add(date(y, 8, 8), "山の日"),
        y if y >= 2016 => add(date(y, 8, 11), "山の日"),
        _ => {}
    }
    add(
        if y >= 2003 {
            nth_monday(y, 9, 3)
        } else {
            date(y, 9, 15)
        },
        "敬老の日",
    );
    add(autumnal_equinox(y), "秋分の日");
    match y {
        2020 => add(date(y, 7, 24), "スポーツの日"),
        2021 => add(date(y, 7, 23), "スポーツの日"),
        y if y >= 2020 => add(nth_monday(y, 10, 2), "スポーツの日"),
        y if y >= 2000 => add(nth_monday(y, 10, 2), "体育の日"),
        _ => add(date(y, 10, 10), "体育の日"),
    }
    add(date(y, 11, 3), "文化の日");
    add(date(y, 11, 23), "勤労感謝の日");
    // One-off holidays by special acts.
    match y {
        1989 => add(date(y, 2, 24), "昭和天皇の大喪の礼"),
        1990 => add(date(y, 11, 12), "即位礼正殿の儀"),
        1993 => add(date(y, 6, 9), "皇太子徳仁親王の結婚の儀"),
        2019 => {
            add(date(y, 5, 1), "天皇の即位の日");
            add(date(y, 10, 22), "即位礼正殿の儀の行われる日");
        }
        _ => {}
    }
    h
}

/// Every national holiday of year `y`, with 振替休日 and 国民の休日 named `休日` as in the
/// Cabinet Office CSV.
pub fn holidays(y: i32) -> BTreeMap<NaiveDate, String> {
    // Neighbouring years matter for substitute days near 1/1 (never in practice) — compute
    // within the year only, as the law applies day by day.
    let base = statutory(y);
    let mut all: BTreeMap<NaiveDate, String> =
        base.iter().map(|(d, n)| (*d, (*n).to_string())).collect();
    // 国民の休日: a day (not itself a holiday, not a Sunday) between two 国民の祝日 (since 1988).
    if y >= 1988 {
        for d in base.keys() {
            let mid = *d + Duration::days(1);
            let after = *d + Duration::days(2);
            if base.contains_key(&after)
                && !base.contains_key(&mid)
                && mid.weekday() != Weekday::Sun
                && mid.year() == y
            {
                all.insert(mid, KYUJITSU.to_string());
            }
        }
    }
    // 振替休日: a 国民の祝日 on a Sunday makes the nearest following day that is not a
    // 国民の祝日 a holiday (since 2007; from 1973 to 2006 only the Monday).
    for d in base.keys().filter(|d| d.weekday() == Weekday::Sun) {
        let mut next = *d + Duration::days(1);
        if y >= 2007 {
            while base.contains_key(&next) {
                next += Duration::days(1);
            }
        } else if base.contains_key(&next) {
            continue;
        }
        if next.year() == y {
            all.insert(next, KYUJITSU.to_string());
        }
    }
    all
}
