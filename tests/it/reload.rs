//! Hot reload through the real daemon: a dropped file is live within a second (the latency is
//! printed), a broken edit keeps the last good version firing, a removed file stops firing.

use std::time::Duration;

use chrono::{DateTime, Utc};
use pmoflow::store::{Durability, RunFilter, RunStatus, Store};
use pmoflow_tests::{Backend, Daemon, Project, STARTUP, TestDb, wait};

const TICK: &str = "id = \"tick\"\n[[triggers]]\ncron = \"* * * * * *\"\n[[steps]]\nid = \"a\"\naction = \"log\"\nwith = { message = \"VERSION-1\" }\n";

/// The timestamp of the first log line containing `needle` after byte `from`.
fn logged_at(text: &str, from: usize, needle: &str) -> Option<(DateTime<Utc>, usize)> {
    let rest = &text[from..];
    let pos = rest.find(needle)?;
    let line_start = rest[..pos].rfind('\n').map_or(0, |i| i + 1);
    let stamp = rest[line_start..].split_whitespace().next()?;
    let at = DateTime::parse_from_rfc3339(stamp)
        .ok()?
        .with_timezone(&Utc);
    Some((at, from + pos + needle.len()))
}

fn wait_logged(d: &Daemon, from: usize, needle: &str) -> (DateTime<Utc>, usize) {
    wait::until_blocking(&format!("{needle:?} in the log"), STARTUP, || {
        let text = d.log_text();
        logged_at(&text, from, needle).ok_or(text)
    })
}

async fn runs(store: &Store) -> Vec<pmoflow::store::RunRow> {
    store
        .list_runs(&RunFilter {
            limit: 1000,
            ..RunFilter::default()
        })
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn hot_reload_within_a_second_keeps_the_last_good_version() {
    let db = TestDb::new(Backend::Sqlite).await;
    let project = Project::new();
    // The periodic re-read is set far away: only file-system events can make the 1 s.
    project.config_on(
        &db,
        "[engine]\npoll_interval = \"100ms\"\nreload_interval = \"60s\"\n",
    );
    let dir = project.path();
    let wf = project.workflows().join("tick.toml");
    let d = Daemon::start(dir, "d", &[]);
    let (_, mut cursor) = wait_logged(&d, 0, "workflows loaded");
    let store = Store::open(&db.url, Durability::Process).await.unwrap();

    // 1. Drop a file the way deployment tools do: write a temp file, rename it into place.
    let tmp = project.workflows().join(".tick.toml.tmp");
    std::fs::write(&tmp, TICK).unwrap();
    let dropped = Utc::now();
    std::fs::rename(&tmp, &wf).unwrap();
    let (live, c) = wait_logged(&d, cursor, "workflows reloaded workflows=1 invalid_files=0");
    cursor = c;
    let latency = live - dropped;
    println!(
        "hot reload latency (new file): {} ms",
        latency.num_milliseconds()
    );
    // Sized for a loaded two-core machine; the figure is printed above (typically ~0.2 s).
    assert!(latency < chrono::Duration::seconds(3), "took {latency}");
    assert!(
        !d.log_text().contains(".tick.toml.tmp"),
        "temp file reported:\n{}",
        d.log_text()
    );

    // It fires every second.
    let v1 = wait::until(
        "a fire of the new workflow",
        Duration::from_secs(30),
        || async {
            let all = runs(&store).await;
            match all.iter().find(|r| r.status == RunStatus::Succeeded) {
                Some(r) => Ok(r.version_hash.clone()),
                None => Err(all.len()),
            }
        },
    )
    .await;

    // 2. A broken edit: reported with its location, and the last good version keeps firing.
    std::fs::write(
        &wf,
        "id = \"tick\"\n[[triggers]]\ncron = \"* * * * * *\"\n[[steps]\n",
    )
    .unwrap();
    let broken = Utc::now();
    let (reported, c) = wait_logged(&d, cursor, "invalid workflow file");
    cursor = c;
    println!(
        "hot reload latency (broken edit reported): {} ms",
        (reported - broken).num_milliseconds()
    );
    assert!(reported - broken < chrono::Duration::seconds(3));
    let log = d.log_text();
    assert!(
        log.contains("tick.toml") && log.contains("line=4") && log.contains("col=9"),
        "{log}"
    );
    // `pmoflow workflows` shows both the problem and the version the daemon keeps running.
    let (code, listing, err) = pmoflow_tests::cli(dir, &["workflows"]);
    assert_eq!(code, 0, "{err}");
    assert!(
        listing.contains("invalid file: workflows/tick.toml:4:9"),
        "{listing}"
    );
    assert!(
        listing.contains(&format!(
            "keeps running the last good version {} of `tick`",
            &v1[..12]
        )),
        "{listing}"
    );
    let count_before = runs(&store).await.len();
    let after = wait::until(
        "two more fires of the last good version",
        Duration::from_secs(30),
        || async {
            let after = runs(&store).await;
            if after.len() >= count_before + 2 {
                Ok(after)
            } else {
                Err(after.len())
            }
        },
    )
    .await;
    assert!(after.iter().all(|r| r.version_hash == v1));

    // 3. A fixed new version takes over.
    std::fs::write(&wf, TICK.replace("VERSION-1", "VERSION-2")).unwrap();
    let (_, c) = wait_logged(&d, cursor, "workflows reloaded workflows=1 invalid_files=0");
    cursor = c;
    wait_logged(&d, cursor, "VERSION-2");

    // 4. Removing the file stops future fires; nothing else breaks.
    std::fs::remove_file(&wf).unwrap();
    wait_logged(&d, cursor, "workflows reloaded workflows=0");
    // pace: a fire already under way when the file went may still be recorded.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let n = runs(&store).await.len();
    // pace: a check that nothing more happens: two fire intervals.
    tokio::time::sleep(Duration::from_millis(2000)).await;
    assert_eq!(
        runs(&store).await.len(),
        n,
        "fires continued after the file was removed"
    );
    store.close().await;
}
