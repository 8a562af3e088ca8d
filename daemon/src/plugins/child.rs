//! Compiling plugins in a child process. The daemon compiles a component only when its
//! compiled code is not in the cache yet (the first start, a new plugin, a new pmoflow); it
//! then runs `pmoflow plugin compile` (this binary) with the component on standard input and
//! maps the file the child wrote. The daemon itself never pages in the compiler (about 28 MB
//! of code) nor keeps the heap compiling leaves behind, so its first start is as small as the
//! ones after. Hosts that have not asked for it (tests, `pmoflow plugin run`) compile in
//! process, and so does the daemon if the child fails.

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;

use wasmtime::Engine;

use super::{LoadError, PluginHost};

static COMPILER: OnceLock<PathBuf> = OnceLock::new();

/// Compile plugins missing from the cache in a child process running `exe` with `plugin
/// compile` (the daemon passes its own executable).
pub fn compile_in_child(exe: PathBuf) {
    let _ = COMPILER.set(exe);
}

/// The executable plugins are compiled with, if a child is to be used.
pub(super) fn compiler() -> Option<&'static Path> {
    COMPILER.get().map(PathBuf::as_path)
}

/// `pmoflow plugin compile`: compiles the component read from standard input for an engine
/// configured as the daemon's (`pool_memory`, the pooling allocator's slot size, or none) and
/// writes the code to `out`.
pub fn compile_to_file(pool_memory: Option<usize>, out: &Path) -> Result<(), LoadError> {
    let mut bytes = Vec::new();
    std::io::stdin().read_to_end(&mut bytes)?;
    let engine =
        Engine::new(&PluginHost::config(pool_memory)).map_err(|error| LoadError::Engine {
            what: "wasmtime",
            error,
        })?;
    let compiled = engine
        .precompile_component(&bytes)
        .map_err(LoadError::Compile)?;
    std::fs::write(out, compiled)?;
    Ok(())
}

/// Runs `exe plugin compile` on `bytes`, writing to `out`.
pub(super) fn compile(
    exe: &Path,
    bytes: &[u8],
    pool_memory: Option<usize>,
    out: &Path,
) -> Result<(), LoadError> {
    let mut cmd = Command::new(exe);
    cmd.args(["plugin", "compile", "--out"])
        .arg(out)
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    if let Some(m) = pool_memory {
        cmd.arg("--pool-memory").arg(m.to_string());
    }
    let mut child = cmd.spawn()?;
    if let Some(mut stdin) = child.stdin.take() {
        stdin.write_all(bytes)?;
    }
    let output = child.wait_with_output()?;
    if output.status.success() {
        Ok(())
    } else {
        Err(LoadError::Child(
            String::from_utf8_lossy(&output.stderr).trim().to_string(),
        ))
    }
}
