//! Reply-reading benchmark: the new text of each message of the reply corpus
//! (`tests/fixtures/replies/*.eml`, decoded once beforehand) and the fields read from it, as
//! intake does for a reply to a status request. Prints messages/s (median of 7 rounds) and the
//! per-message time; asserts nothing.
//!
//! Run: `cargo bench -p pmoflow --bench replies` (`PMOFLOW_BENCH_CORPUS=DIR` for another set of
//! `.eml` files)
#![allow(clippy::unwrap_used, missing_docs)]

use std::time::{Duration, Instant};

use pmoflow::message::{inbound, reply};

const FIELDS: [&str; 5] = ["総合評価", "進捗", "経費", "リスク", "課題"];

fn main() {
    // Another corpus (an older checkout's, to compare releases on the same messages):
    // PMOFLOW_BENCH_CORPUS=DIR.
    let dir = std::env::var_os("PMOFLOW_BENCH_CORPUS")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| {
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures/replies")
        });
    let mut paths: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "eml"))
        .collect();
    paths.sort();
    let messages: Vec<inbound::Inbound> = paths
        .iter()
        .filter_map(|p| inbound::parse(&std::fs::read(p).unwrap(), inbound::DEFAULT_MAX_SIZE).ok())
        .collect();
    let fields: Vec<String> = FIELDS.map(String::from).to_vec();
    let rounds = 7;
    let per_round = 200;
    let mut times: Vec<Duration> = Vec::new();
    let mut found = 0usize;
    for _ in 0..rounds {
        let t = Instant::now();
        for _ in 0..per_round {
            for m in &messages {
                let answers = read(&m.text, &fields, m.from_name.as_deref());
                found += answers.fields.len();
            }
        }
        times.push(t.elapsed());
    }
    times.sort();
    let median = times[rounds / 2];
    let n = (messages.len() * per_round) as f64;
    // The two halves apart: the new text, and the fields read from it.
    let texts: Vec<String> = messages.iter().map(|m| reply::new_text(&m.text)).collect();
    let half = |f: &dyn Fn(usize)| {
        let mut t: Vec<Duration> = (0..rounds)
            .map(|_| {
                let s = Instant::now();
                for _ in 0..per_round {
                    (0..messages.len()).for_each(f);
                }
                s.elapsed()
            })
            .collect();
        t.sort();
        t[rounds / 2].as_secs_f64() * 1e6 / n
    };
    let new_text_us = half(&|i| {
        std::hint::black_box(reply::new_text(&messages[i].text));
    });
    let fields_us = half(&|i| {
        std::hint::black_box(reply::parse_fields(
            &texts[i],
            &fields,
            messages[i].from_name.as_deref(),
        ));
    });
    println!("replies: new_text {new_text_us:.1} us, parse_fields {fields_us:.1} us per message");
    println!(
        "replies: {} messages of the corpus, {} rounds x {per_round}: {:.0} messages/s (median), {:.1} us per message, {} fields read",
        messages.len(),
        rounds,
        n / median.as_secs_f64(),
        median.as_secs_f64() * 1e6 / n,
        found / (rounds * per_round),
    );
}

/// What intake does with a reply's body: its new text, then the requested fields (and, when
/// none is there, the request's own form below an unquoted original).
fn read(body: &str, fields: &[String], sender: Option<&str>) -> reply::Answers {
    reply::read(body, fields, sender).answers
}
