//! Scheduling: the government calendar against the official lists, `pmoflow schedule`, DST in a
//! zone that has it, catch-up after downtime on a simulated clock, overlap, and a property test
//! of cron against brute force.

use std::sync::Arc;

use chrono::{DateTime, Datelike, Duration, NaiveDate, TimeZone, Timelike, Utc};
use pmoflow::calendar::{Calendar, csv, holidays};
use pmoflow::clock::{Clock, SharedClock, SimClock};
use pmoflow::daemon::scheduler;
use pmoflow::engine::EngineConfig;
use pmoflow::store::{Durability, RunFilter, RunRow, RunStatus};
use pmoflow::workflow::schedule::TriggerSchedule;
use pmoflow_tests::fresh;
use pmoflow_tests::{Backend, InProcess, Project, cli, cli_ok, wait};

fn fixture(name: &str) -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("fixtures")
        .join(name)
}

fn d(y: i32, m: u32, day: u32) -> NaiveDate {
    NaiveDate::from_ymd_opt(y, m, day).unwrap()
}

#[test]
fn computed_holidays_match_the_cabinet_office_list_2025_2027() {
    let official =
        csv::parse(&std::fs::read(fixture("calendar/syukujitsu-2025-2027.csv")).unwrap()).unwrap();
    assert_eq!(
        official.keys().copied().collect::<Vec<_>>(),
        [2025, 2026, 2027]
    );
    for (year, days) in &official {
        assert_eq!(
            &holidays::holidays(*year),
            days,
            "holidays of {year} differ"
        );
    }
    let cal = Calendar::computed();
    for (day, name) in [
        (d(2026, 5, 6), "休日"),
        (d(2026, 9, 22), "休日"),
        (d(2027, 3, 22), "休日"),
        (d(2025, 11, 24), "休日"),
    ] {
        assert_eq!(cal.holiday(day).as_deref(), Some(name), "{day}");
        assert!(!cal.is_business_day(day));
    }
    for day in [
        d(2026, 12, 29),
        d(2026, 12, 30),
        d(2026, 12, 31),
        d(2027, 1, 1),
        d(2027, 1, 2),
        d(2027, 1, 3),
    ] {
        assert!(
            !cal.is_business_day(day),
            "{day} is in the year-end closure"
        );
    }
    assert!(cal.is_business_day(d(2026, 12, 28)));
    assert!(cal.is_business_day(d(2027, 1, 4)));
    assert_eq!(
        cal.closed_reason(d(2026, 12, 30)).as_deref(),
        Some("年末年始の休日")
    );
}

#[test]
fn imported_csv_and_ministry_days_override_the_computed_calendar() {
    let project = Project::with_workflow(
        "q.toml",
        "id = \"q\"\n[[triggers]]\nbusiness_day = 1\nat = \"09:00\"\nmonths = [4]\n[[steps]]\nid = \"a\"\naction = \"log\"\nwith = { message = \"x\" }\n",
    );
    let dir = project.path();
    let (code, out, err) = cli(
        dir,
        &[
            "calendar",
            "import",
            fixture("calendar/syukujitsu-2025-2027.csv")
                .to_str()
                .unwrap(),
        ],
    );
    assert_eq!(code, 0, "{err}");
    assert!(
        out.contains("imported 54 holidays for 2025, 2026, 2027"),
        "{out}"
    );
    assert!(out.contains("2026: 18 days, same as computed"), "{out}");
    let (code, out, _) = cli(dir, &["calendar", "--year", "2026"]);
    assert_eq!(code, 0);
    assert!(
        out.contains("imported from the Cabinet Office CSV"),
        "{out}"
    );
    for line in [
        "2026-05-06 (水)  休日",
        "2026-09-22 (火)  休日",
        "2026-12-29 (火)  年末年始の休日",
    ] {
        assert!(out.contains(line), "missing {line}:\n{out}");
    }
    // A revised CSV for 2027 (here with an extra holiday on April 1) replaces the computed year.
    let revised =
        "国民の祝日・休日月日,国民の祝日・休日名称\r\n2027/1/1,元日\r\n2027/4/1,臨時の休日\r\n";
    let (bytes, _, _) = encoding_rs_like(revised);
    std::fs::write(dir.join("revised.csv"), bytes).unwrap();
    let (code, out, err) = cli(dir, &["calendar", "import", "revised.csv"]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("differs from computed"), "{out}");
    let out = cli_ok(
        dir,
        &[
            "schedule",
            "q",
            "--from",
            "2027-03-01T00:00:00+09:00",
            "--count",
            "1",
        ],
    );
    assert_eq!(out, "2027-04-02T09:00:00+09:00\n");
    // A ministry-specific closed day moves it again.
    std::fs::write(
        project.workflows().join("calendar/closed-days.toml"),
        "[[closed]]\ndate = 2027-04-02\nname = \"創立記念日\"\n",
    )
    .unwrap();
    let out = cli_ok(
        dir,
        &[
            "schedule",
            "q",
            "--from",
            "2027-03-01T00:00:00+09:00",
            "--count",
            "1",
        ],
    );
    assert_eq!(out, "2027-04-05T09:00:00+09:00\n");
    let out = cli_ok(dir, &["calendar", "--year", "2027"]);
    assert!(out.contains("2027-04-02 (金)  創立記念日"), "{out}");
    // A broken CSV is refused with its line.
    std::fs::write(
        dir.join("bad.csv"),
        "国民の祝日・休日月日,国民の祝日・休日名称\n2027/13/1,x\n",
    )
    .unwrap();
    let (code, _, err) = cli(dir, &["calendar", "import", "bad.csv"]);
    assert_eq!(code, 1);
    assert!(
        err.contains("bad.csv:2: error: `2027/13/1` is not a date"),
        "{err}"
    );
}

/// Encodes as CP932 the way the Cabinet Office does (via Python's codec, a real independent
/// encoder, when present; the text here is representable in both).
fn encoding_rs_like(text: &str) -> (Vec<u8>, (), ()) {
    let out = std::process::Command::new("python3")
        .args([
            "-c",
            "import sys; sys.stdout.buffer.write(sys.stdin.read().encode('cp932'))",
        ])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .and_then(|mut child| {
            use std::io::Write;
            child.stdin.take().unwrap().write_all(text.as_bytes())?;
            child.wait_with_output()
        })
        .unwrap();
    assert!(out.status.success());
    (out.stdout, (), ())
}

#[test]
fn first_business_day_of_each_quarter() {
    let project = Project::with_workflow(
        "quarterly.toml",
        "id = \"quarterly\"\n[[triggers]]\nbusiness_day = 1\nat = \"09:00\"\nmonths = [4, 7, 10, 1]\ntimezone = \"Asia/Tokyo\"\n[[steps]]\nid = \"a\"\naction = \"log\"\nwith = { message = \"x\" }\n",
    );
    let (code, out, err) = cli(
        project.path(),
        &[
            "schedule",
            "quarterly",
            "--from",
            "2026-12-01T00:00:00+09:00",
            "--count",
            "4",
        ],
    );
    assert_eq!(code, 0, "{err}");
    assert_eq!(
        out,
        "2027-01-04T09:00:00+09:00\n2027-04-01T09:00:00+09:00\n2027-07-01T09:00:00+09:00\n2027-10-01T09:00:00+09:00\n"
    );
    // The same from the file path, and --explain on a cron moved off closed days.
    project.workflow(
        "deadline.toml",
        "id = \"deadline\"\n[[triggers]]\ncron = \"0 17 31 5 *\"\ncalendar = \"jp-gov\"\non_closed_day = \"previous\"\n[[steps]]\nid = \"a\"\naction = \"log\"\nwith = { message = \"x\" }\n",
    );
    let (code, out, _) = cli(
        project.path(),
        &[
            "schedule",
            "workflows/deadline.toml",
            "--from",
            "2026-01-01T00:00:00+09:00",
            "--count",
            "3",
            "--explain",
        ],
    );
    assert_eq!(code, 0);
    // 2026-05-31 is a Sunday → Friday 05-29; 2027-05-31 is a Monday; 2028-05-31 a Wednesday.
    assert_eq!(
        out,
        "2026-05-29T17:00:00+09:00  # moved from 2026-05-31 (日曜日) to the previous business day\n2027-05-31T17:00:00+09:00\n2028-05-31T17:00:00+09:00\n"
    );
}

fn new_york(cron: &str, dst: &str) -> String {
    let project = Project::with_workflow(
        "ny.toml",
        &format!(
            "id = \"ny\"\n[[triggers]]\ncron = \"{cron}\"\ntimezone = \"America/New_York\"\ndst = \"{dst}\"\n[[steps]]\nid = \"a\"\naction = \"log\"\nwith = {{ message = \"x\" }}\n"
        ),
    );
    let from = if cron.contains(" 2 ") {
        "2027-03-13T00:00:00-05:00"
    } else {
        "2027-11-06T00:00:00-04:00"
    };
    let (code, out, err) = cli(
        project.path(),
        &["schedule", "ny", "--from", from, "--count", "3"],
    );
    assert_eq!(code, 0, "{err}");
    out
}

#[test]
fn dst_in_new_york_both_transitions() {
    // Spring forward, 2027-03-14: 02:30 does not exist.
    assert_eq!(
        new_york("30 2 * * *", "first"),
        "2027-03-13T02:30:00-05:00\n2027-03-14T03:00:00-04:00\n2027-03-15T02:30:00-04:00\n"
    );
    assert_eq!(
        new_york("30 2 * * *", "both"),
        "2027-03-13T02:30:00-05:00\n2027-03-14T03:00:00-04:00\n2027-03-15T02:30:00-04:00\n"
    );
    assert_eq!(
        new_york("30 2 * * *", "skip"),
        "2027-03-13T02:30:00-05:00\n2027-03-15T02:30:00-04:00\n2027-03-16T02:30:00-04:00\n"
    );
    // Fall back, 2027-11-07: 01:30 happens twice.
    assert_eq!(
        new_york("30 1 * * *", "first"),
        "2027-11-06T01:30:00-04:00\n2027-11-07T01:30:00-04:00\n2027-11-08T01:30:00-05:00\n"
    );
    assert_eq!(
        new_york("30 1 * * *", "skip"),
        "2027-11-06T01:30:00-04:00\n2027-11-07T01:30:00-04:00\n2027-11-08T01:30:00-05:00\n"
    );
    assert_eq!(
        new_york("30 1 * * *", "both"),
        "2027-11-06T01:30:00-04:00\n2027-11-07T01:30:00-04:00\n2027-11-07T01:30:00-05:00\n"
    );
    // An hourly job keeps one run per wall-clock hour on both days.
    let project = Project::with_workflow(
        "h.toml",
        "id = \"h\"\n[[triggers]]\ncron = \"0 * * * *\"\ntimezone = \"America/New_York\"\n[[steps]]\nid = \"a\"\naction = \"log\"\nwith = { message = \"x\" }\n",
    );
    let out = cli_ok(
        project.path(),
        &[
            "schedule",
            "h",
            "--from",
            "2027-03-14T00:30:00-05:00",
            "--count",
            "3",
        ],
    );
    assert_eq!(
        out,
        "2027-03-14T01:00:00-05:00\n2027-03-14T03:00:00-04:00\n2027-03-14T04:00:00-04:00\n"
    );
    let out = cli_ok(
        project.path(),
        &[
            "schedule",
            "h",
            "--from",
            "2027-11-07T00:30:00-04:00",
            "--count",
            "3",
        ],
    );
    assert_eq!(
        out,
        "2027-11-07T01:00:00-04:00\n2027-11-07T02:00:00-05:00\n2027-11-07T03:00:00-05:00\n"
    );
}

const DAILY: &str = include_str!("../fixtures/flows/scheduling_daily.toml");

fn jst(y: i32, m: u32, day: u32, h: u32) -> DateTime<Utc> {
    chrono_tz::Asia::Tokyo
        .with_ymd_and_hms(y, m, day, h, 0, 0)
        .unwrap()
        .with_timezone(&Utc)
}

async fn runs_of(engine: &InProcess) -> Vec<RunRow> {
    let mut runs = engine
        .engine
        .store()
        .list_runs(&RunFilter {
            limit: 100,
            ..RunFilter::default()
        })
        .await
        .unwrap();
    runs.sort_by_key(|r| r.scheduled_at);
    runs
}

/// Registers the trigger at 4/5 08:00, "stops" until 4/7 10:00 (fires at 4/5, 4/6 and 4/7 09:00
/// are missed), then runs the scheduler again.
async fn catch_up(policy: &str, window: &str) -> Vec<(String, RunStatus)> {
    let (db, project) = fresh(
        Backend::Sqlite,
        "daily.toml",
        &DAILY.replace("POLICY", policy).replace("WINDOW", window),
    )
    .await;
    let sim = SimClock::new(jst(2027, 4, 5, 8));
    let clock: SharedClock = Arc::new(sim.clone());
    let config = EngineConfig {
        node_id: "sim".into(),
        ..EngineConfig::default()
    };
    // The engine is not started: the runs the scheduler creates are only looked at.
    let engine = InProcess::create(
        &db.url,
        Durability::Process,
        &project.workflows(),
        clock,
        config,
    )
    .await;
    let tz = chrono_tz::Asia::Tokyo;
    let next = scheduler::tick(&engine.engine, tz, Clock::now(&sim)).await;
    assert_eq!(next, Some(jst(2027, 4, 5, 9)));
    assert!(runs_of(&engine).await.is_empty());
    sim.set(jst(2027, 4, 7, 10));
    let next = scheduler::tick(&engine.engine, tz, Clock::now(&sim)).await;
    assert_eq!(next, Some(jst(2027, 4, 8, 9)));
    // Idempotent: another tick (or another daemon) at the same moment changes nothing.
    scheduler::tick(&engine.engine, tz, Clock::now(&sim)).await;
    let runs = runs_of(&engine).await;
    assert!(runs.iter().all(|r| r.trigger_kind == "schedule"));
    for r in runs.iter().filter(|r| r.status == RunStatus::Skipped) {
        assert!(
            r.error
                .as_deref()
                .unwrap()
                .contains("missed while the daemon was not running"),
            "{r:?}"
        );
    }
    runs.iter()
        .map(|r| {
            let at = r.scheduled_at.unwrap().with_timezone(&tz);
            (
                format!("{:02}-{:02} {:02}:00", at.month(), at.day(), at.hour()),
                r.status,
            )
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn catch_up_policies_after_downtime() {
    use RunStatus::{Pending, Skipped};
    let s = |v: &[(&str, RunStatus)]| {
        v.iter()
            .map(|(a, b)| (a.to_string(), *b))
            .collect::<Vec<_>>()
    };
    assert_eq!(
        catch_up("none", "").await,
        s(&[
            ("04-05 09:00", Skipped),
            ("04-06 09:00", Skipped),
            ("04-07 09:00", Skipped)
        ])
    );
    assert_eq!(
        catch_up("latest", "").await,
        s(&[
            ("04-05 09:00", Skipped),
            ("04-06 09:00", Skipped),
            ("04-07 09:00", Pending)
        ])
    );
    assert_eq!(
        catch_up("all", "").await,
        s(&[
            ("04-05 09:00", Pending),
            ("04-06 09:00", Pending),
            ("04-07 09:00", Pending)
        ])
    );
    assert_eq!(
        catch_up("all", "catch_up_window = \"30h\"").await,
        s(&[
            ("04-05 09:00", Skipped),
            ("04-06 09:00", Pending),
            ("04-07 09:00", Pending)
        ])
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn the_scheduler_loop_fires_on_time_on_a_simulated_clock_and_runs_execute() {
    let (db, project) = fresh(
        Backend::Sqlite,
        "daily.toml",
        &DAILY
            .replace("POLICY", "latest")
            .replace("WINDOW", "jitter = \"10m\""),
    )
    .await;
    let sim = SimClock::new(jst(2027, 4, 5, 8));
    let clock: SharedClock = Arc::new(sim.clone());
    let config = EngineConfig {
        node_id: "sim".into(),
        poll_interval: std::time::Duration::from_millis(50),
        ..EngineConfig::default()
    };
    let engine = InProcess::start(
        &db.url,
        Durability::Process,
        &project.workflows(),
        clock.clone(),
        config,
    )
    .await;
    let (e, c, stop) = (
        engine.engine.clone(),
        clock.clone(),
        engine.shutdown.clone(),
    );
    let sched =
        tokio::spawn(async move { scheduler::run(&e, &c, chrono_tz::Asia::Tokyo, &stop).await });
    for day in 0..3 {
        let fire = jst(2027, 4, 5 + day, 9);
        let want = usize::try_from(day + 1).unwrap();
        // Let the scheduler register and go to sleep, then step just past the fire: the run is
        // created at once, due after its jitter (a delay below 10 minutes, the same for every
        // daemon since it derives from the fire's key).
        // pace: the scheduler goes to sleep on the simulated clock.
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
        sim.set(fire + Duration::seconds(1));
        let created = wait::until(
            &format!("day {day}'s run"),
            std::time::Duration::from_secs(30),
            || async {
                let runs = runs_of(&engine).await;
                if runs.len() == want {
                    Ok(runs[want - 1].clone())
                } else {
                    Err(runs)
                }
            },
        )
        .await;
        assert_eq!(created.scheduled_at, Some(fire));
        let due = created.wake_at.unwrap_or(fire);
        assert!(
            due >= fire && due < fire + Duration::minutes(10),
            "jitter out of range: {due}"
        );
        sim.set(fire + Duration::minutes(11));
        pmoflow_tests::wait_run(
            engine.engine.store(),
            &created.id,
            std::time::Duration::from_secs(10),
            |r| r.status == RunStatus::Succeeded,
        )
        .await;
    }
    let runs = runs_of(&engine).await;
    assert_eq!(runs.len(), 3);
    assert!(runs.iter().all(|r| r.status == RunStatus::Succeeded));
    engine.shutdown.cancel();
    sched.await.unwrap();
    engine.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn overlap_skip_and_queue() {
    for (policy, expected) in [("skip", RunStatus::Skipped), ("queue", RunStatus::Queued)] {
        let (db, project) = fresh(Backend::Postgres, "slow.toml",
            &format!(
                "id = \"slow\"\n[[triggers]]\ncron = \"0 * * * *\"\noverlap = \"{policy}\"\n[[steps]]\nid = \"w\"\naction = \"wait\"\nwith = {{ duration = \"90m\" }}\n"
            )).await;
        let sim = SimClock::new(jst(2027, 4, 5, 8));
        let clock: SharedClock = Arc::new(sim.clone());
        let config = EngineConfig {
            node_id: "ov".into(),
            ..EngineConfig::default()
        };
        let engine = InProcess::start(
            &db.url,
            Durability::Process,
            &project.workflows(),
            clock,
            config,
        )
        .await;
        let tz = chrono_tz::Asia::Tokyo;
        scheduler::tick(&engine.engine, tz, Clock::now(&sim)).await;
        sim.set(jst(2027, 4, 5, 9));
        scheduler::tick(&engine.engine, tz, Clock::now(&sim)).await;
        let store = engine.store();
        let first = runs_of(&engine).await[0].id.clone();
        pmoflow_tests::wait_run(&store, &first, std::time::Duration::from_secs(10), |r| {
            r.status == RunStatus::Waiting
        })
        .await;
        sim.set(jst(2027, 4, 5, 10));
        scheduler::tick(&engine.engine, tz, Clock::now(&sim)).await;
        let runs = runs_of(&engine).await;
        assert_eq!(runs.len(), 2);
        assert_eq!(runs[1].status, expected, "{policy}: {runs:?}");
        if policy == "queue" {
            // When the first run finishes (its 90 min wait ends at 10:30), the queued one starts.
            sim.set(jst(2027, 4, 5, 10) + Duration::minutes(31));
            pmoflow_tests::wait_run(&store, &first, std::time::Duration::from_secs(10), |r| {
                r.status == RunStatus::Succeeded
            })
            .await;
            scheduler::tick(&engine.engine, tz, Clock::now(&sim)).await;
            pmoflow_tests::wait_run(
                &store,
                &runs[1].id,
                std::time::Duration::from_secs(10),
                |r| r.status == RunStatus::Waiting,
            )
            .await;
        }
        engine.stop().await;
    }
}

/// An independent cron matcher for 5-field crontab expressions (Sunday = 0 or 7).
fn field_values(spec: &str, lo: u32, hi: u32) -> Vec<u32> {
    let mut out = Vec::new();
    for part in spec.split(',') {
        let (range, step) = part
            .split_once('/')
            .map_or((part, 1), |(r, s)| (r, s.parse().unwrap()));
        let (a, b) = if range == "*" {
            (lo, hi)
        } else if let Some((a, b)) = range.split_once('-') {
            (a.parse().unwrap(), b.parse().unwrap())
        } else {
            let a: u32 = range.parse().unwrap();
            (a, if part.contains('/') { hi } else { a })
        };
        out.extend((a..=b).step_by(step));
    }
    out
}

fn brute_force(expr: &str, after: DateTime<Utc>, n: usize) -> Vec<DateTime<Utc>> {
    let f: Vec<&str> = expr.split_whitespace().collect();
    let (min, hour, dom, mon) = (
        field_values(f[0], 0, 59),
        field_values(f[1], 0, 23),
        field_values(f[2], 1, 31),
        field_values(f[3], 1, 12),
    );
    let dow: Vec<u32> = field_values(f[4], 0, 6)
        .into_iter()
        .map(|v| v % 7)
        .collect();
    let (dom_star, dow_star) = (f[2] == "*", f[4] == "*");
    let mut t = after.with_second(0).unwrap().with_nanosecond(0).unwrap() + Duration::minutes(1);
    let mut out = Vec::new();
    for _ in 0..(60 * 24 * 366 * 2) {
        let day_ok = match (dom_star, dow_star) {
            (true, true) => true,
            (false, true) => dom.contains(&t.day()),
            (true, false) => dow.contains(&t.weekday().num_days_from_sunday()),
            // Both restricted: as in crontab, either may match.
            (false, false) => {
                dom.contains(&t.day()) || dow.contains(&t.weekday().num_days_from_sunday())
            }
        };
        if min.contains(&t.minute())
            && hour.contains(&t.hour())
            && mon.contains(&t.month())
            && day_ok
        {
            out.push(t);
            if out.len() == n {
                break;
            }
        }
        t += Duration::minutes(1);
    }
    out
}

#[test]
fn property_cron_agrees_with_brute_force_and_never_repeats() {
    let mut rng = fastrand_like(0x5eed);
    let pick = |rng: &mut Lcg, lo: u32, hi: u32, star_bias: u32| -> String {
        match rng.below(6 + star_bias) {
            0 => format!("{}", lo + rng.below(hi - lo + 1)),
            1 => {
                let a = lo + rng.below(hi - lo + 1);
                let b = a + rng.below(hi - a + 1);
                format!("{a}-{b}")
            }
            2 => format!("*/{}", 1 + rng.below((hi - lo).max(1))),
            3 => {
                let a = lo + rng.below(hi - lo + 1);
                let b = lo + rng.below(hi - lo + 1);
                if a == b {
                    format!("{a}")
                } else {
                    format!("{},{}", a.min(b), a.max(b))
                }
            }
            4 => {
                let a = lo + rng.below(hi - lo + 1);
                format!("{a}-{hi}/{}", 1 + rng.below(3))
            }
            _ => "*".into(),
        }
    };
    let utc_calendar = Arc::new(Calendar::computed());
    for case in 0..150 {
        let expr = format!(
            "{} {} {} {} {}",
            pick(&mut rng, 0, 59, 0),
            pick(&mut rng, 0, 23, 1),
            pick(&mut rng, 1, 28, 6),
            pick(&mut rng, 1, 12, 6),
            pick(&mut rng, 0, 6, 4)
        );
        let after = Utc.with_ymd_and_hms(2025, 1, 1, 0, 0, 0).unwrap()
            + Duration::minutes(i64::from(rng.below(3 * 365 * 24 * 60)));
        let wf_text = format!(
            "id = \"p\"\n[[triggers]]\ncron = \"{expr}\"\ntimezone = \"UTC\"\n[[steps]]\nid = \"a\"\naction = \"log\"\nwith = {{ message = \"x\" }}\n"
        );
        let wf = pmoflow::workflow::compile(
            std::path::Path::new("p.toml"),
            &wf_text,
            &Default::default(),
        )
        .unwrap_or_else(|e| panic!("case {case}: `{expr}` rejected: {e:?}"));
        let schedule =
            TriggerSchedule::new(&wf.triggers[0], chrono_tz::UTC, utc_calendar.clone()).unwrap();
        let got: Vec<_> = schedule.next(after, 5).into_iter().map(|f| f.at).collect();
        let want = brute_force(&expr, after, 5);
        assert_eq!(got, want, "case {case}: `{expr}` after {after}");
        assert!(
            got.windows(2).all(|w| w[0] < w[1]),
            "case {case}: repeated or unordered fires"
        );
    }
}

/// A tiny deterministic generator, so failures are reproducible.
struct Lcg(u64);

impl Lcg {
    fn below(&mut self, n: u32) -> u32 {
        self.0 = self
            .0
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        u32::try_from((self.0 >> 33) % u64::from(n.max(1))).unwrap()
    }
}

fn fastrand_like(seed: u64) -> Lcg {
    Lcg(seed)
}
