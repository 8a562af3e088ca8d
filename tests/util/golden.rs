//! Golden files: one comparison for every golden set in the suite (workflow fixtures, the reply
//! corpus, the simulated timelines). A mismatch shows a unified diff; a fixture with no golden
//! file, or a golden file with no fixture, is an error, never an empty match. Goldens are
//! rewritten only with `BLESS=1` and never when `CI` is set, so a `BLESS` leaked into CI (or
//! `BLESS=0`) cannot turn the comparisons into writes that pass.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

/// Whether a golden set compares or rewrites.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Compare every golden file with what the code produces now.
    Compare,
    /// Rewrite the golden files (`BLESS=1` outside CI).
    Bless,
}

impl Mode {
    /// The mode for the values of `BLESS` and `CI`: unset, empty or `0` compares; `1` blesses
    /// unless `CI` is set (to anything but empty, `0` or `false`); anything else is refused, so
    /// a typo cannot bless or skip.
    pub fn from_values(bless: Option<&str>, ci: Option<&str>) -> Result<Mode, String> {
        let ci = ci.is_some_and(|v| !matches!(v.trim(), "" | "0" | "false"));
        match bless.map(str::trim) {
            None | Some("") | Some("0") => Ok(Mode::Compare),
            Some("1") if ci => Err(
                "BLESS=1 is refused when CI is set: golden files are blessed on a developer's \
                 machine and reviewed in the diff, never rewritten by CI"
                    .into(),
            ),
            Some("1") => Ok(Mode::Bless),
            Some(other) => Err(format!(
                "BLESS={other:?} is not understood: BLESS=1 rewrites golden files, unset or 0 compares"
            )),
        }
    }

    /// The mode from this process's environment; panics with the reason when refused.
    pub fn from_env() -> Mode {
        let bless = std::env::var("BLESS").ok();
        let ci = std::env::var("CI").ok();
        Mode::from_values(bless.as_deref(), ci.as_deref()).unwrap_or_else(|e| panic!("{e}"))
    }
}

/// One set of golden files in a directory: every `check` compares (or blesses) one file;
/// `finish` fails with every mismatch as a unified diff and with the golden files no fixture
/// produced.
pub struct GoldenSet {
    mode: Mode,
    /// The golden files' directory.
    dir: PathBuf,
    /// Which file names in `dir` belong to the set (by extension).
    extensions: Vec<&'static str>,
    checked: BTreeSet<PathBuf>,
    problems: Vec<String>,
}

impl GoldenSet {
    /// A set whose golden files are the files in `dir` ending in one of `extensions`.
    pub fn new(dir: &Path, extensions: &[&'static str], mode: Mode) -> GoldenSet {
        GoldenSet {
            mode,
            dir: dir.to_path_buf(),
            extensions: extensions.to_vec(),
            checked: BTreeSet::new(),
            problems: Vec::new(),
        }
    }

    /// Compares `actual` with the golden file `path` (or writes it when blessing).
    pub fn check(&mut self, path: &Path, actual: &str) {
        self.checked.insert(path.to_path_buf());
        match self.mode {
            Mode::Bless => {
                std::fs::create_dir_all(path.parent().expect("a golden file's folder"))
                    .expect("golden folder created");
                std::fs::write(path, actual).expect("golden file written");
            }
            Mode::Compare => match std::fs::read_to_string(path) {
                Err(e) => self.problems.push(format!(
                    "{}: no golden file ({e}); BLESS=1 writes it, then review it",
                    path.display()
                )),
                Ok(expected) if expected != actual => self.problems.push(format!(
                    "{}: differs from what the code produces now\n{}",
                    path.display(),
                    unified_diff(&expected, actual)
                )),
                Ok(_) => {}
            },
        }
    }

    /// Golden files in the set's folder that no `check` touched (their fixture is gone).
    pub fn orphans(&self) -> Vec<PathBuf> {
        let mut out: Vec<PathBuf> = std::fs::read_dir(&self.dir)
            .map(|d| d.flatten().map(|e| e.path()).collect())
            .unwrap_or_default();
        out.retain(|p| {
            p.is_file()
                && p.extension()
                    .and_then(|e| e.to_str())
                    .is_some_and(|e| self.extensions.contains(&e))
                && !self.checked.contains(p)
        });
        out.sort();
        out
    }

    /// Every problem found, as one report (empty: the set matches).
    pub fn report(&self) -> Vec<String> {
        let mut all = self.problems.clone();
        for o in self.orphans() {
            all.push(format!(
                "{}: a golden file with no fixture (delete it, or restore its fixture)",
                o.display()
            ));
        }
        all
    }

    /// Panics with the report unless the set matches; returns how many files were checked.
    pub fn finish(self) -> usize {
        let report = self.report();
        assert!(
            report.is_empty(),
            "{} golden problem(s) (BLESS=1 rewrites the files if the change is intended):\n\n{}",
            report.len(),
            report.join("\n\n")
        );
        self.checked.len()
    }
}

/// `expected` → `actual` as a unified diff with three lines of context.
pub fn unified_diff(expected: &str, actual: &str) -> String {
    similar::TextDiff::from_lines(expected, actual)
        .unified_diff()
        .context_radius(3)
        .header("golden (expected)", "now (actual)")
        .to_string()
}

/// Where the golden tests read their fixtures: `tests/fixtures`, or `PMOFLOW_FIXTURES` (a
/// copy a test makes to show that a changed golden fails and that no mode blesses by accident).
pub fn fixtures_root() -> PathBuf {
    std::env::var_os("PMOFLOW_FIXTURES")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures"))
}
