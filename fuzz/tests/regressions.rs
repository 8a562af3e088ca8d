//! Every input a fuzz target once failed on, kept under `fuzz/regressions/<target>/`, passes
//! its target now, replayed under a memory cap as the campaign runs them (libFuzzer's
//! `-rss_limit_mb=2048`): an allocation regression fails here instead of passing on a machine
//! with memory to spare. A folder that names no target, or holds no input, is an error.

#![allow(clippy::unwrap_used)]

use std::path::{Path, PathBuf};
use std::process::Command;

/// The address-space cap each target's replay runs under (`ulimit -v`, KiB): the campaign's
/// 2 GiB RSS limit plus room for the test binary's own mappings.
const CAP_KIB: u64 = 3 * 1024 * 1024;

fn regressions() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("regressions")
}

/// The inputs kept for each target, by folder; panics on a folder no target has.
fn kept() -> Vec<(&'static str, Vec<PathBuf>)> {
    let mut folders: Vec<PathBuf> = std::fs::read_dir(regressions())
        .expect("fuzz/regressions")
        .map(|e| e.unwrap().path())
        .collect();
    folders.sort();
    let mut out = Vec::new();
    for folder in folders {
        let name = folder.file_name().unwrap().to_string_lossy().into_owned();
        let target = pmoflow_fuzz::TARGETS
            .iter()
            .find(|(t, _)| *t == name)
            .map(|(t, _)| *t)
            .unwrap_or_else(|| {
                panic!(
                    "fuzz/regressions/{name} matches no fuzz target (targets: {:?}); rename it",
                    pmoflow_fuzz::TARGETS
                        .iter()
                        .map(|t| t.0)
                        .collect::<Vec<_>>()
                )
            });
        let mut files: Vec<PathBuf> = std::fs::read_dir(&folder)
            .unwrap()
            .map(|e| e.unwrap().path())
            .filter(|p| p.is_file())
            .collect();
        files.sort();
        assert!(!files.is_empty(), "fuzz/regressions/{name} holds no input");
        out.push((target, files));
    }
    out
}

#[test]
fn every_past_finding_passes_its_target() {
    let exe = std::env::current_exe().unwrap();
    let mut n = 0;
    for (target, files) in kept() {
        // One child per target, under the cap, single-threaded.
        let out = Command::new("bash")
            .arg("-c")
            .arg(format!("ulimit -v {CAP_KIB} && exec \"$@\""))
            .arg("replay")
            .arg(&exe)
            .args(["replay_one_target_under_the_cap", "--exact", "--ignored"])
            .args(["--test-threads", "1", "--nocapture"])
            .env("PMOFLOW_REPLAY_TARGET", target)
            .output()
            .expect("bash");
        let text = String::from_utf8_lossy(&out.stdout).into_owned()
            + &String::from_utf8_lossy(&out.stderr);
        assert!(
            out.status.success() && text.contains(&format!("replayed {} input(s)", files.len())),
            "{target}: a kept input fails its target under a {} MiB address-space cap:\n{text}",
            CAP_KIB / 1024
        );
        n += files.len();
    }
    assert!(n >= 3, "the regression inputs are there ({n})");
}

/// The capped child of [`every_past_finding_passes_its_target`]: replays one target's inputs.
#[test]
#[ignore = "run by every_past_finding_passes_its_target, in a child process under a memory cap"]
fn replay_one_target_under_the_cap() {
    let target = std::env::var("PMOFLOW_REPLAY_TARGET").expect("PMOFLOW_REPLAY_TARGET");
    let (_, f) = pmoflow_fuzz::TARGETS
        .iter()
        .find(|(t, _)| *t == target)
        .expect("a known target");
    let (_, files) = kept()
        .into_iter()
        .find(|(t, _)| *t == target)
        .expect("inputs for the target");
    for file in &files {
        eprintln!("replaying {}", file.display());
        f(&std::fs::read(file).unwrap());
    }
    println!("replayed {} input(s)", files.len());
}

/// The cap is real: an allocation past it fails the child (so a regression that allocates
/// without bound cannot pass the replay).
#[test]
fn the_replay_cap_stops_an_oversized_allocation() {
    let out = Command::new("bash")
        .arg("-c")
        .arg(format!("ulimit -v {CAP_KIB} && exec \"$@\""))
        .arg("replay")
        .arg(std::env::current_exe().unwrap())
        .args([
            "allocate_past_the_cap",
            "--exact",
            "--ignored",
            "--nocapture",
        ])
        .output()
        .expect("bash");
    let text = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "4 GiB were allocated under the cap");
    assert!(text.contains("memory allocation of"), "{text}");
}

/// The child of [`the_replay_cap_stops_an_oversized_allocation`].
#[test]
#[ignore = "run by the_replay_cap_stops_an_oversized_allocation under a memory cap"]
fn allocate_past_the_cap() {
    let v = vec![1u8; 4 << 30];
    println!(
        "allocated {}",
        v.iter().map(|b| usize::from(*b)).sum::<usize>()
    );
}
