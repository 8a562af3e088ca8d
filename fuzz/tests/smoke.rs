//! The fuzz targets' smoke run in the ordinary test build: every seed, then random mutations
//! of the seeds (bit flips, byte and token insertions, deletions, splices) for
//! `PMOFLOW_FUZZ_SMOKE_SECS` seconds per target (default 30). A panic fails the test and
//! prints the input. The coverage-guided campaigns (libFuzzer, ≥ 10⁶ executions per target)
//! are `fuzz/run`; this only keeps the targets and their seeds working in CI.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// Bytes that matter to the formats under test.
const TOKENS: &[&[u8]] = &[
    b"\"",
    b"'",
    b"[",
    b"]",
    b"[[",
    b"{",
    b"}",
    b"{{",
    b"}}",
    b"{%",
    b"%}",
    b"=",
    b"\n",
    b"\r\n",
    b"\0",
    b":",
    b"\xef\xbc\x9a",
    b",",
    b"\\",
    b"\\u0000",
    b"=?utf-8?b?",
    b"=?iso-2022-jp?q?",
    b"?=",
    b"\x1b$B",
    b"\x1b(B",
    b"Content-Type: multipart/mixed; boundary=x\r\n",
    b"--x\r\n",
    b"\xe2\x80\xae",
    b"\xf0\x9f\x98\x80",
    b"-1",
    b"9999999999999999999999",
    b"1e308",
    b"NaN",
    b"\xe4\xbb\xa4\xe5\x92\x8c",
    b"2027/02/29",
    b"0x",
    b"${",
    b"inputs.",
    b"|",
    b"()",
];

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("fuzz/ has a parent")
        .to_path_buf()
}

fn seeds(target: &str) -> Vec<Vec<u8>> {
    let root = root();
    let mut out = Vec::new();
    for dir in pmoflow_fuzz::seed_dirs(target) {
        let mut files: Vec<PathBuf> = std::fs::read_dir(root.join(dir))
            .unwrap_or_else(|e| panic!("seed directory {dir}: {e}"))
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.is_file())
            .collect();
        files.sort();
        out.extend(files.iter().filter_map(|p| std::fs::read(p).ok()));
    }
    assert!(!out.is_empty(), "{target} has no seeds");
    out
}

fn mutate(rng: &mut fastrand::Rng, pool: &[Vec<u8>]) -> Vec<u8> {
    let mut data = pool[rng.usize(..pool.len())].clone();
    for _ in 0..rng.usize(1..=8) {
        let len = data.len();
        match rng.u8(..6) {
            0 if len > 0 => {
                let i = rng.usize(..len);
                data[i] ^= 1 << rng.u8(..8);
            }
            1 => {
                let i = rng.usize(..=len);
                data.insert(i, rng.u8(..));
            }
            2 => {
                let t = TOKENS[rng.usize(..TOKENS.len())];
                let i = rng.usize(..=len);
                data.splice(i..i, t.iter().copied());
            }
            3 if len > 0 => {
                let a = rng.usize(..len);
                let b = (a + rng.usize(..=16)).min(len);
                data.drain(a..b);
            }
            4 => {
                let other = &pool[rng.usize(..pool.len())];
                if !other.is_empty() {
                    let a = rng.usize(..other.len());
                    let b = (a + rng.usize(..=64)).min(other.len());
                    let i = rng.usize(..=len);
                    data.splice(i..i, other[a..b].iter().copied());
                }
            }
            _ if len > 0 => {
                // Repeat a slice: deep nesting and long lines.
                let a = rng.usize(..len);
                let b = (a + rng.usize(1..=8)).min(len);
                let piece = data[a..b].to_vec();
                for _ in 0..rng.usize(1..=64) {
                    data.splice(a..a, piece.iter().copied());
                }
            }
            _ => {}
        }
    }
    data.truncate(1 << 16);
    data
}

fn smoke(target: &str) {
    let f = pmoflow_fuzz::TARGETS
        .iter()
        .find(|(n, _)| *n == target)
        .map(|(_, f)| *f)
        .expect("a target");
    let secs: u64 = std::env::var("PMOFLOW_FUZZ_SMOKE_SECS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(30);
    let pool = seeds(target);
    // PMOFLOW_FUZZ_TRACE=1 keeps each input in a file before it runs, for an input that kills
    // the process (out of memory) rather than panicking.
    let trace = std::env::var_os("PMOFLOW_FUZZ_TRACE")
        .map(|_| std::env::temp_dir().join(format!("pmoflow-fuzz-{target}-current")));
    let run = |data: &[u8]| {
        if let Some(t) = &trace {
            let _ = std::fs::write(t, data);
        }
        let started = Instant::now();
        let result = std::panic::catch_unwind(|| f(data));
        if let Err(e) = result {
            let dump = std::env::temp_dir().join(format!("pmoflow-fuzz-{target}-crash"));
            let _ = std::fs::write(&dump, data);
            std::panic::resume_unwind(e);
        }
        started.elapsed()
    };
    let mut slowest = Duration::ZERO;
    for s in &pool {
        slowest = slowest.max(run(s));
    }
    let mut rng = fastrand::Rng::with_seed(0x9e37_79b9 ^ target.len() as u64);
    let deadline = Instant::now() + Duration::from_secs(secs);
    let mut n = pool.len();
    while Instant::now() < deadline {
        let data = mutate(&mut rng, &pool);
        let took = run(&data);
        if took > Duration::from_secs(10) {
            let dump = std::env::temp_dir().join(format!("pmoflow-fuzz-{target}-slow"));
            let _ = std::fs::write(&dump, &data);
            panic!(
                "{target}: one input took {took:?} (kept in {})",
                dump.display()
            );
        }
        slowest = slowest.max(took);
        n += 1;
    }
    println!(
        "fuzz smoke {target}: {n} inputs ({} seeds), slowest {slowest:?}",
        pool.len()
    );
}

#[test]
fn workflow() {
    smoke("workflow");
}

#[test]
fn config() {
    smoke("config");
}

#[test]
fn email() {
    smoke("email");
}

#[test]
fn template() {
    smoke("template");
}

#[test]
fn calendar_csv() {
    smoke("calendar_csv");
}

#[test]
fn scenario() {
    smoke("scenario");
}

#[test]
fn registry() {
    smoke("registry");
}

#[test]
fn certificate() {
    smoke("certificate");
}

#[test]
fn workbook() {
    smoke("workbook");
}

#[test]
fn webhook_trigger() {
    smoke("webhook_trigger");
}

#[test]
fn every_target_has_a_libfuzzer_binary_and_seeds() {
    for (name, _) in pmoflow_fuzz::TARGETS {
        assert!(
            root()
                .join(format!("fuzz/fuzz_targets/{name}.rs"))
                .is_file(),
            "fuzz_targets/{name}.rs"
        );
        assert!(!seeds(name).is_empty());
    }
}
