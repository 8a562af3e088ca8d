//! Replays a corpus (or one file) through a target without libFuzzer and prints the slowest
//! inputs: `cargo run --release -p pmoflow-fuzz --example replay -- email var/fuzz/corpus/email`.

use std::time::{Duration, Instant};

fn main() {
    let mut args = std::env::args().skip(1);
    let (Some(target), Some(path)) = (args.next(), args.next()) else {
        eprintln!("usage: replay TARGET FILE_OR_DIR");
        std::process::exit(2);
    };
    let Some(f) = pmoflow_fuzz::TARGETS
        .iter()
        .find(|(n, _)| *n == target)
        .map(|(_, f)| *f)
    else {
        eprintln!("unknown target {target}");
        std::process::exit(2);
    };
    let path = std::path::PathBuf::from(path);
    let files: Vec<std::path::PathBuf> = if path.is_dir() {
        std::fs::read_dir(&path)
            .map(|d| d.flatten().map(|e| e.path()).collect())
            .unwrap_or_default()
    } else {
        vec![path]
    };
    let mut times: Vec<(Duration, usize, std::path::PathBuf)> = Vec::new();
    let started = Instant::now();
    for file in files {
        let Ok(data) = std::fs::read(&file) else {
            continue;
        };
        let t = Instant::now();
        f(&data);
        times.push((t.elapsed(), data.len(), file));
    }
    let total = started.elapsed();
    times.sort_by_key(|t| std::cmp::Reverse(t.0));
    println!(
        "{} inputs in {total:?} ({:.0}/s)",
        times.len(),
        times.len() as f64 / total.as_secs_f64()
    );
    for (d, len, file) in times.iter().take(10) {
        println!("{d:>12?} {len:>7} bytes  {}", file.display());
    }
}
