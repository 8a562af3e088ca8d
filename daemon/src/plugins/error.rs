//! Why a plugin could not be loaded or the host could not start.

use std::path::PathBuf;

use super::net::NetError;

/// Why the plugin host could not start, or one plugin could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    /// The WebAssembly engine or its linker could not be set up.
    #[error("{what}: {error}")]
    Engine {
        /// `wasmtime`, `linking WASI`, …
        what: &'static str,
        /// wasmtime's reason.
        error: wasmtime::Error,
    },
    /// The epoch thread (time limits) could not be started.
    #[error("epoch thread: {0}")]
    EpochThread(#[source] std::io::Error),
    /// A manifest or component file could not be read.
    #[error("{0}")]
    Read(#[from] std::io::Error),
    /// A manifest that is not valid TOML for a plugin.
    #[error("{0}")]
    Manifest(String),
    /// An installed plugin's manifest names no component.
    #[error("no `component` (the path of the .wasm file, relative to plugin.toml)")]
    NoComponent,
    /// A manifest declares a capability the host does not offer.
    #[error("unknown capability `{0}` (known: {known})", known = super::grant::KNOWN.join(", "))]
    UnknownCapability(String),
    /// The component could not be compiled.
    #[error("{0}")]
    Compile(wasmtime::Error),
    /// The child process compiling a component failed (its standard error).
    #[error("compiling in a child process failed: {0}")]
    Child(String),
    /// A shipped component could not be compiled.
    #[error("cannot load the component: {0}")]
    Shipped(Box<LoadError>),
    /// An installed component could not be read or compiled.
    #[error("cannot load component {}: {error}", .file.display())]
    Component {
        /// The `.wasm` file.
        file: PathBuf,
        /// Why.
        error: Box<LoadError>,
    },
    /// The component imports interfaces the host does not offer.
    #[error("imports interfaces it was not granted: {}", .0.join(", "))]
    UnknownImports(Vec<String>),
    /// The component imports capabilities its manifest does not declare.
    #[error(
        "imports capabilities its manifest does not declare: {} (add them to `capabilities` in plugin.toml)",
        .0.join(", ")
    )]
    Undeclared(Vec<&'static str>),
    /// The component imports capabilities the administrator has not granted.
    #[error(
        "imports capabilities it was not granted: {} (an administrator grants them with `capabilities = [{}]` under [plugins.{plugin}] in pmoflow.toml)",
        .capabilities.join(", "),
        .capabilities.iter().map(|c| format!("\"{c}\"")).collect::<Vec<_>>().join(", ")
    )]
    Ungranted {
        /// The plugin.
        plugin: String,
        /// What it lacks.
        capabilities: Vec<&'static str>,
    },
    /// The component's imports cannot be satisfied.
    #[error("cannot link: {0}")]
    Link(wasmtime::Error),
    /// The component does not export `pmoflow:plugin/step`.
    #[error("not a pmoflow:plugin/step component: {0}")]
    NotAStep(wasmtime::Error),
    /// The plugin's HTTP client could not be built.
    #[error(transparent)]
    Net(#[from] NetError),
    /// An installed plugin that would have replaced a shipped one failed.
    #[error("{error} (the shipped `{name}` stays in use)")]
    ShippedStays {
        /// The plugin.
        name: String,
        /// Why the installed one failed.
        error: Box<LoadError>,
    },
}
