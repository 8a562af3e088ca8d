//! Golden files for the workflow format: every `fixtures/workflows/*.toml` is compiled and
//! compared with its `.json` (valid) or `.err` (invalid) file. `BLESS=1` rewrites them.

use std::path::Path;

use pmoflow::workflow::catalog::load_data;
use pmoflow::workflow::compile;

#[test]
fn workflow_fixtures_match_golden_files() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let dir = root.join("fixtures/workflows");
    let (data, diags) = load_data(&dir.join("data"));
    assert!(diags.is_empty(), "{diags:?}");
    let names = data.as_object().unwrap().keys().cloned().collect();
    let bless = std::env::var_os("BLESS").is_some();
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "toml"))
        .collect();
    files.sort();
    assert!(files.len() >= 20, "fixtures missing");
    let mut mismatches = Vec::new();
    for file in files {
        let name = file.file_name().unwrap().to_string_lossy().into_owned();
        let shown = Path::new("fixtures/workflows").join(&name);
        let source = std::fs::read_to_string(&file).unwrap();
        let (actual, ext) = match compile(&shown, &source, &names) {
            Ok(wf) => (
                format!("{:#}\n", serde_json::to_value(&wf).unwrap()),
                "json",
            ),
            Err(diags) => (
                diags.iter().map(|d| format!("{d}\n")).collect::<String>(),
                "err",
            ),
        };
        assert_eq!(
            name.starts_with("valid_"),
            ext == "json",
            "{name}: fixtures named valid_* must compile and no others:\n{actual}"
        );
        let golden = file.with_extension(ext);
        if bless {
            std::fs::write(&golden, &actual).unwrap();
            continue;
        }
        let expected = std::fs::read_to_string(&golden).unwrap_or_default();
        if expected != actual {
            mismatches.push(format!(
                "{}:\n--- expected\n{expected}--- actual\n{actual}",
                golden.display()
            ));
        }
    }
    assert!(
        mismatches.is_empty(),
        "golden mismatches (rerun with BLESS=1 if intended):\n{}",
        mismatches.join("\n")
    );
}
