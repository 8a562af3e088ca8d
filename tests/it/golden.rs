//! Golden files for the workflow format: every `fixtures/workflows/*.toml` is compiled and
//! compared with its `.json` (valid) or `.err` (invalid) file; `BLESS=1` rewrites them (never
//! under `CI`). Beside the byte comparison, the facts that matter are asserted one by one, and
//! the golden machinery itself is tested: a changed golden fails, and neither `BLESS=0` nor
//! `CI=true BLESS=1` writes anything.

use std::path::Path;
use std::process::Command;

use pmoflow::workflow::catalog::load_data;
use pmoflow::workflow::compile;
use pmoflow_tests::golden::{GoldenSet, Mode, fixtures_root};

/// Compiles one fixture: the golden text and whether it is the `.json` (valid) kind.
fn compiled(file: &Path, names: &std::collections::BTreeSet<String>) -> (String, &'static str) {
    let name = file.file_name().unwrap().to_string_lossy().into_owned();
    let shown = Path::new("fixtures/workflows").join(&name);
    let source = std::fs::read_to_string(file).unwrap();
    match compile(&shown, &source, names) {
        Ok(wf) => (
            format!("{:#}\n", serde_json::to_value(&wf).unwrap()),
            "json",
        ),
        Err(diags) => (
            diags.iter().map(|d| format!("{d}\n")).collect::<String>(),
            "err",
        ),
    }
}

#[test]
fn workflow_fixtures_match_golden_files() {
    let dir = fixtures_root().join("workflows");
    let (data, diags) = load_data(&dir.join("data"));
    assert!(diags.is_empty(), "{diags:?}");
    let names = data.as_object().unwrap().keys().cloned().collect();
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "toml"))
        .collect();
    files.sort();
    assert!(files.len() >= 20, "fixtures missing: {}", files.len());
    let mut set = GoldenSet::new(&dir, &["json", "err"], Mode::from_env());
    for file in &files {
        let name = file.file_name().unwrap().to_string_lossy().into_owned();
        let (actual, ext) = compiled(file, &names);
        assert_eq!(
            name.starts_with("valid_"),
            ext == "json",
            "{name}: fixtures named valid_* must compile and no others:\n{actual}"
        );
        if ext == "err" {
            // An invalid fixture always says where and what: never an empty golden.
            assert!(
                actual.starts_with(&format!("fixtures/workflows/{name}:"))
                    && actual.contains(": error: "),
                "{name}: a diagnostic names the file, line and column:\n{actual}"
            );
        }
        set.check(&file.with_extension(ext), &actual);
    }
    assert_eq!(set.finish(), files.len());
}

/// The messages administrators read most, asserted apart from the byte comparison.
#[test]
fn workflow_diagnostics_say_what_is_wrong() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/workflows");
    let (data, _) = load_data(&dir.join("data"));
    let names = data.as_object().unwrap().keys().cloned().collect();
    let err = |n: &str| compiled(&dir.join(n), &names).0;
    assert_eq!(
        err("bad_cron.toml").lines().next().unwrap(),
        "fixtures/workflows/bad_cron.toml:4:8: error: invalid cron expression `0 25 * * *`: hour must be 0–23, got `25`"
    );
    assert!(
        err("unknown_key.toml").contains("unknown field"),
        "{}",
        err("unknown_key.toml")
    );
    assert!(err("invalid_toml.toml").starts_with("fixtures/workflows/invalid_toml.toml:"));
    let (json, kind) = compiled(&dir.join("valid_minimal.toml"), &names);
    assert_eq!(kind, "json");
    let v: serde_json::Value = serde_json::from_str(&json).unwrap();
    assert!(
        v["steps"].as_array().is_some_and(|s| !s.is_empty()),
        "{v:#}"
    );
}

#[test]
fn bless_only_with_1_and_never_under_ci() {
    assert_eq!(Mode::from_values(None, None), Ok(Mode::Compare));
    assert_eq!(Mode::from_values(Some("0"), None), Ok(Mode::Compare));
    assert_eq!(Mode::from_values(Some(""), None), Ok(Mode::Compare));
    assert_eq!(Mode::from_values(Some("1"), None), Ok(Mode::Bless));
    assert_eq!(Mode::from_values(Some("1"), Some("false")), Ok(Mode::Bless));
    let refused = Mode::from_values(Some("1"), Some("true")).unwrap_err();
    assert!(
        refused.starts_with("BLESS=1 is refused when CI is set"),
        "{refused}"
    );
    assert!(Mode::from_values(Some("yes"), None).is_err());
    assert_eq!(
        Mode::from_values(Some("0"), Some("true")),
        Ok(Mode::Compare)
    );
}

/// Runs this test binary's workflow golden test on `fixtures` with the given environment;
/// returns (passed, output).
fn golden_run(fixtures: &Path, env: &[(&str, &str)]) -> (bool, String) {
    let mut cmd = Command::new(std::env::current_exe().unwrap());
    cmd.args([
        "golden::workflow_fixtures_match_golden_files",
        "--exact",
        "--nocapture",
    ])
    .env("PMOFLOW_FIXTURES", fixtures)
    .env_remove("BLESS")
    .env_remove("CI");
    for (k, v) in env {
        cmd.env(k, v);
    }
    let out = cmd.output().unwrap();
    let text =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    (out.status.success() && text.contains("1 passed"), text)
}

/// A changed golden file fails the suite with a diff; `BLESS=0` and `CI=true BLESS=1` write
/// nothing (they fail as well); only `BLESS=1` outside CI rewrites it. A golden with no fixture
/// and a fixture with no golden are both reported.
#[test]
fn a_changed_golden_fails_and_only_bless_1_outside_ci_rewrites_it() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/workflows");
    let tmp = tempfile::tempdir().unwrap();
    let dst = tmp.path().join("workflows");
    let ok = Command::new("cp")
        .arg("-r")
        .arg(&src)
        .arg(&dst)
        .status()
        .unwrap();
    assert!(ok.success());
    let golden = dst.join("bad_duration.err");
    let real = std::fs::read_to_string(&golden).unwrap();
    let changed = real.replace("error", "eror");
    assert_ne!(changed, real);
    std::fs::write(&golden, &changed).unwrap();

    let (passed, out) = golden_run(tmp.path(), &[]);
    assert!(!passed, "a changed golden passed:\n{out}");
    assert!(
        out.contains("bad_duration.err: differs")
            && out.contains("-fixtures/workflows/bad_duration.toml"),
        "{out}"
    );
    for env in [&[("BLESS", "0")][..], &[("CI", "true"), ("BLESS", "1")][..]] {
        let (passed, out) = golden_run(tmp.path(), env);
        assert!(!passed, "{env:?} passed with a changed golden:\n{out}");
        assert_eq!(
            std::fs::read_to_string(&golden).unwrap(),
            changed,
            "{env:?} rewrote the golden"
        );
    }
    // A fixture whose golden is missing, and a golden whose fixture is gone.
    std::fs::remove_file(dst.join("bad_cron.err")).unwrap();
    std::fs::write(dst.join("gone.err"), "x\n").unwrap();
    let (passed, out) = golden_run(tmp.path(), &[]);
    assert!(!passed);
    assert!(out.contains("bad_cron.err: no golden file"), "{out}");
    assert!(
        out.contains("gone.err: a golden file with no fixture"),
        "{out}"
    );
    std::fs::remove_file(dst.join("gone.err")).unwrap();

    let (passed, out) = golden_run(tmp.path(), &[("BLESS", "1")]);
    assert!(passed, "{out}");
    assert_eq!(std::fs::read_to_string(&golden).unwrap(), real);
    assert!(dst.join("bad_cron.err").exists());
    let (passed, out) = golden_run(tmp.path(), &[]);
    assert!(passed, "{out}");
}
