//! Builds the guest workspace (`../plugins`, for `wasm32-wasip2`) and embeds the shipped plugins
//! in the binary, so that `cargo run -- run`, `cargo install --path daemon` and any package
//! of the binary carry them: nothing at run time depends on a checkout or a build directory.
//!
//! The guest workspace is built once per cargo target directory (in `<target>/wasm-plugins`,
//! always with its own release profile), whatever the daemon's profile; cargo reruns this
//! script only when something under `plugins/` changes. The test fixtures of that workspace
//! are built too (they are small), and the directory is exported to the crate as
//! `PMOFLOW_GUEST_TARGET_DIR` for the tests and benchmarks that load them.
//!
//! The `wasm32-wasip2` target is added with `rustup target add` when it is missing (rustup may be
//! configured not to install what `rust-toolchain.toml` names); without rustup the build stops
//! with the command to run.

use std::path::{Path, PathBuf};
use std::process::Command;

/// The shipped plugins: the directory under `plugins/` (which holds `builtin.toml`) and the
/// component file the crate builds to.
const SHIPPED: &[(&str, &str)] = &[
    ("echo", "echo.wasm"),
    ("domain-check", "domain_check.wasm"),
    ("status-digest", "status_digest.wasm"),
];

const TARGET: &str = "wasm32-wasip2";

fn main() {
    let manifest_dir = PathBuf::from(env("CARGO_MANIFEST_DIR"));
    let guests = manifest_dir.join("../plugins");
    let guests = guests.canonicalize().unwrap_or(guests);
    for p in [
        "Cargo.toml",
        "Cargo.lock",
        ".cargo",
        "wit",
        "sdk",
        "echo",
        "domain-check",
        "status-digest",
        "fixtures",
    ] {
        println!("cargo:rerun-if-changed={}", guests.join(p).display());
    }
    let out_dir = PathBuf::from(env("OUT_DIR"));
    // OUT_DIR is <target>/[<triple>/]<profile>/build/pmoflow-<hash>/out: share one guest build
    // between the daemon's profiles (dev, release, test, bench) in the same target directory.
    let target_dir = out_dir
        .ancestors()
        .nth(4)
        .map(|t| t.join("wasm-plugins"))
        .unwrap_or_else(|| out_dir.join("wasm-plugins"));
    println!(
        "cargo:rustc-env=PMOFLOW_GUEST_TARGET_DIR={}",
        target_dir.display()
    );

    ensure_target();
    build_guests(&guests, &target_dir);

    let wasm_dir = target_dir.join(TARGET).join("release");
    let mut table = String::from(
        "/// The shipped plugins: (directory name, `builtin.toml`, component bytes).\n\
         pub(crate) static SHIPPED: &[(&str, &str, &[u8])] = &[\n",
    );
    for (dir, wasm) in SHIPPED {
        let manifest = guests.join(dir).join("builtin.toml");
        let component = wasm_dir.join(wasm);
        assert!(
            manifest.is_file(),
            "{} is missing: every shipped plugin has a builtin.toml",
            manifest.display()
        );
        // A copy in OUT_DIR: the guest target directory may be shared with other checkouts
        // (a CI clone), whose builds rewrite its uplifted files.
        let embedded = out_dir.join(wasm);
        std::fs::copy(&component, &embedded).unwrap_or_else(|e| {
            panic!(
                "the guest build did not produce {}: {e}",
                component.display()
            )
        });
        table.push_str(&format!(
            "    ({dir:?}, include_str!({:?}), include_bytes!({:?})),\n",
            manifest.display().to_string(),
            embedded.display().to_string()
        ));
    }
    table.push_str("];\n");
    std::fs::write(out_dir.join("shipped_plugins.rs"), table)
        .unwrap_or_else(|e| panic!("cannot write {}: {e}", out_dir.display()));
}

fn env(name: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| panic!("cargo did not set {name}"))
}

/// Makes sure the compiler this build uses has the `wasm32-wasip2` standard library.
fn ensure_target() {
    let rustc = std::env::var("RUSTC").unwrap_or_else(|_| "rustc".into());
    let has_target = || {
        Command::new(&rustc)
            .args(["--print", "sysroot"])
            .output()
            .ok()
            .filter(|o| o.status.success())
            .map(|o| {
                Path::new(String::from_utf8_lossy(&o.stdout).trim())
                    .join("lib/rustlib")
                    .join(TARGET)
                    .is_dir()
            })
            .unwrap_or(false)
    };
    if has_target() {
        return;
    }
    println!(
        "cargo:warning=the {TARGET} target is missing; adding it with `rustup target add {TARGET}`"
    );
    // RUSTUP_TOOLCHAIN, set by rustup's proxy, makes rustup add it to the toolchain in use.
    let added = Command::new("rustup")
        .args(["target", "add", TARGET])
        .status()
        .map(|s| s.success())
        .unwrap_or(false);
    if !added || !has_target() {
        panic!(
            "pmoflow embeds its shipped WebAssembly plugins and needs the {TARGET} target to \
             build them, which is not installed for {rustc}. With rustup: \
             `rustup target add {TARGET}`; otherwise install your distribution's {TARGET} \
             standard library for this compiler."
        );
    }
}

/// `cargo build --release` in the guest workspace, isolated from the daemon's own build
/// settings (target directory, flags, wrappers such as clippy's).
fn build_guests(guests: &Path, target_dir: &Path) {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let mut cmd = Command::new(cargo);
    cmd.current_dir(guests)
        .args([
            "build",
            "--release",
            "--locked",
            "--workspace",
            "--target",
            TARGET,
        ])
        .env("CARGO_TARGET_DIR", target_dir)
        .stdout(std::process::Stdio::null());
    for var in [
        "RUSTC",
        "RUSTC_WRAPPER",
        "RUSTC_WORKSPACE_WRAPPER",
        "RUSTFLAGS",
        "CARGO_ENCODED_RUSTFLAGS",
        "CARGO_BUILD_TARGET",
        "CARGO_BUILD_RUSTFLAGS",
        "CLIPPY_ARGS",
    ] {
        cmd.env_remove(var);
    }
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("cannot run cargo for the guest workspace: {e}"));
    if !out.status.success() {
        panic!(
            "building the shipped plugins (cargo build --release in {}) failed:\n{}",
            guests.display(),
            String::from_utf8_lossy(&out.stderr)
        );
    }
}
