//! Every input a fuzz target once failed on, kept under `fuzz/regressions/<target>/`, passes
//! its target now.

use std::path::Path;

#[test]
fn every_past_finding_passes_its_target() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("regressions");
    let mut n = 0;
    for (name, f) in pmoflow_fuzz::TARGETS {
        let Ok(entries) = std::fs::read_dir(dir.join(name)) else {
            continue;
        };
        for e in entries.flatten() {
            let data = std::fs::read(e.path()).expect("read a regression input");
            f(&data);
            n += 1;
        }
    }
    assert!(n >= 3, "the regression inputs are there ({n})");
}
