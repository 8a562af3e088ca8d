//! Sandboxed WebAssembly plugins (the `plugin:NAME` action).
//!
//! A plugin is a WebAssembly component for the `pmoflow:plugin/step` world (`plugins/wit/`),
//! installed as `plugins/<name>/plugin.toml` next to its component. The host runs it on wasmtime
//! with the component model and an async host: WASI is linked default-deny (no directories, no
//! environment, no sockets), stdout and stderr are captured (bounded), and every invocation gets
//! a fresh `Store` with a memory limit, an epoch deadline that yields to tokio, and a wall-clock
//! timeout. Whatever a plugin does, the worst outcome is a failed step with a readable reason.
//!
//! At load, the component's actual imports are compared with what the host offers; a plugin that
//! imports anything else is refused.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use serde::Deserialize;
use wasmtime::component::{Component, HasSelf, Linker, ResourceTable};
use wasmtime::{Config, Engine, ResourceLimiter, Store};
use wasmtime_wasi::p2::pipe::MemoryOutputPipe;
use wasmtime_wasi::{WasiCtx, WasiCtxBuilder, WasiCtxView, WasiView};

mod bindings {
    wasmtime::component::bindgen!({
        path: "../plugins/wit",
        world: "step",
        exports: { default: async },
    });
}

use bindings::pmoflow::plugin::log::Level;
use bindings::pmoflow::plugin::types::{Context, StepError as GuestError};

/// Limits of one invocation.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Wall-clock time.
    pub timeout: Duration,
    /// Linear memory, bytes.
    pub memory: usize,
    /// Input JSON, bytes.
    pub max_input: usize,
    /// Output JSON, bytes.
    pub max_output: usize,
    /// Captured stdout/stderr and log lines, bytes each.
    pub max_log: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            timeout: Duration::from_secs(5),
            memory: 64 << 20,
            max_input: 1 << 20,
            max_output: 1 << 20,
            max_log: 64 << 10,
        }
    }
}

/// Why an invocation failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PluginError {
    /// No such plugin is installed.
    #[error("plugin `{0}` is not installed")]
    NotInstalled(String),
    /// Ran past the time limit.
    #[error("ran past {0} s")]
    Timeout(u64),
    /// Tried to grow memory past the limit.
    #[error("exceeded {0} MiB memory limit")]
    Memory(usize),
    /// Input or output too large.
    #[error("{0}")]
    Size(String),
    /// A trap (panic, unreachable, …).
    #[error("plugin trapped: {0}")]
    Trap(String),
    /// The plugin reported a failure; `retryable` from its error kind.
    #[error("{message}")]
    Step {
        /// Readable reason.
        message: String,
        /// Whether the engine may retry.
        retryable: bool,
    },
}

/// `plugins/<name>/plugin.toml`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    /// Plugin name (`plugin:NAME`).
    pub name: String,
    /// Semver.
    pub version: String,
    /// Free text.
    #[serde(default)]
    pub description: String,
    /// The component, relative to the manifest.
    pub component: PathBuf,
    /// Capabilities requested.
    #[serde(default)]
    pub capabilities: Vec<String>,
}

struct MemLimiter {
    max: usize,
    exceeded: bool,
}

impl ResourceLimiter for MemLimiter {
    fn memory_growing(
        &mut self,
        _current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        if desired > self.max {
            self.exceeded = true;
            // An error (not `Ok(false)`) traps at once with a readable reason, instead of the
            // guest allocator's bare `unreachable`.
            return Err(wasmtime::Error::msg(format!(
                "exceeded {} MiB memory limit",
                self.max >> 20
            )));
        }
        Ok(true)
    }

    fn table_growing(
        &mut self,
        _current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        Ok(desired <= 100_000)
    }
}

struct State {
    wasi: WasiCtx,
    table: ResourceTable,
    limiter: MemLimiter,
    logs: Vec<(String, String)>,
    log_bytes: usize,
    max_log: usize,
    now_ms: i64,
}

impl WasiView for State {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView {
            ctx: &mut self.wasi,
            table: &mut self.table,
        }
    }
}

impl bindings::pmoflow::plugin::types::Host for State {}

impl bindings::pmoflow::plugin::log::Host for State {
    fn log(&mut self, level: Level, message: String) {
        if self.log_bytes + message.len() > self.max_log {
            return;
        }
        self.log_bytes += message.len();
        let level = match level {
            Level::Trace => "trace",
            Level::Debug => "debug",
            Level::Info => "info",
            Level::Warn => "warn",
            Level::Error => "error",
        };
        self.logs.push((level.to_string(), message));
    }
}

impl bindings::pmoflow::plugin::clock::Host for State {
    fn now_ms(&mut self) -> i64 {
        self.now_ms
    }
}

struct Loaded {
    manifest: Manifest,
    pre: bindings::StepPre<State>,
}

/// Interfaces a plugin may import: the WASI ones (linked default-deny) and the pmoflow ones.
fn allowed_import(name: &str) -> bool {
    name.starts_with("wasi:")
        || name.starts_with("pmoflow:plugin/types@0.1")
        || name.starts_with("pmoflow:plugin/log@0.1")
        || name.starts_with("pmoflow:plugin/clock@0.1")
}

/// The plugin host: one wasmtime engine, the installed plugins, ready to instantiate.
pub struct PluginHost {
    engine: Engine,
    plugins: BTreeMap<String, Arc<Loaded>>,
    limits: Limits,
    _ticker: Arc<std::sync::atomic::AtomicBool>,
}

impl std::fmt::Debug for PluginHost {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PluginHost")
            .field("plugins", &self.plugins.keys().collect::<Vec<_>>())
            .finish()
    }
}

impl Drop for PluginHost {
    fn drop(&mut self) {
        self._ticker
            .store(true, std::sync::atomic::Ordering::Relaxed);
    }
}

/// How often the epoch advances: the granularity at which running wasm yields to tokio (and so
/// at which a timeout can stop it).
const EPOCH_TICK: Duration = Duration::from_millis(10);

impl PluginHost {
    /// A host with no plugins yet, and the linker plugins are instantiated with.
    fn empty(limits: Limits) -> Result<(Self, Linker<State>), String> {
        let mut config = Config::new();
        config.epoch_interruption(true);
        let engine = Engine::new(&config).map_err(|e| format!("wasmtime: {e}"))?;
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        {
            let (engine, stop) = (engine.clone(), stop.clone());
            std::thread::Builder::new()
                .name("pmoflow-epoch".into())
                .spawn(move || {
                    while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                        std::thread::sleep(EPOCH_TICK);
                        engine.increment_epoch();
                    }
                })
                .map_err(|e| format!("epoch thread: {e}"))?;
        }
        let mut linker: Linker<State> = Linker::new(&engine);
        wasmtime_wasi::p2::add_to_linker_async(&mut linker)
            .map_err(|e| format!("linking WASI: {e}"))?;
        bindings::Step::add_to_linker::<State, HasSelf<State>>(&mut linker, |s| s)
            .map_err(|e| format!("linking pmoflow interfaces: {e}"))?;
        let host = PluginHost {
            engine,
            plugins: BTreeMap::new(),
            limits,
            _ticker: stop,
        };
        Ok((host, linker))
    }

    /// For development (`pmoflow plugin run|inspect`): a host with one component file, named
    /// after the file. Returns the host, the plugin name and the component's imports.
    pub fn single(file: &Path, limits: Limits) -> Result<(Self, String, Vec<String>), String> {
        let (mut host, linker) = Self::empty(limits)?;
        let name = file
            .file_stem()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_else(|| "plugin".into());
        let component = host.component(file, None)?;
        let imports: Vec<String> = component
            .component_type()
            .imports(&host.engine)
            .map(|(n, _)| n.to_string())
            .collect();
        let pre = Self::link(&host.engine, &linker, &component)?;
        let manifest = Manifest {
            name: name.clone(),
            version: String::new(),
            description: String::new(),
            component: file.to_path_buf(),
            capabilities: Vec::new(),
        };
        host.plugins
            .insert(name.clone(), Arc::new(Loaded { manifest, pre }));
        Ok((host, name, imports))
    }

    /// Checks a component's imports against what the host offers and prepares it.
    fn link(
        engine: &Engine,
        linker: &Linker<State>,
        component: &Component,
    ) -> Result<bindings::StepPre<State>, String> {
        let refused: Vec<String> = component
            .component_type()
            .imports(engine)
            .map(|(name, _)| name.to_string())
            .filter(|n| !allowed_import(n))
            .collect();
        if !refused.is_empty() {
            return Err(format!(
                "imports interfaces it was not granted: {}",
                refused.join(", ")
            ));
        }
        let pre = linker
            .instantiate_pre(component)
            .map_err(|e| format!("cannot link: {e}"))?;
        bindings::StepPre::new(pre).map_err(|e| format!("not a pmoflow:plugin/step component: {e}"))
    }

    /// Calls a plugin's `describe` (fresh store, same limits as `run`).
    pub async fn describe(&self, name: &str) -> Result<serde_json::Value, PluginError> {
        let plugin = self
            .plugins
            .get(name)
            .ok_or_else(|| PluginError::NotInstalled(name.to_string()))?;
        let mut store = Store::new(
            &self.engine,
            State {
                wasi: WasiCtxBuilder::new().build(),
                table: ResourceTable::new(),
                limiter: MemLimiter {
                    max: self.limits.memory,
                    exceeded: false,
                },
                logs: Vec::new(),
                log_bytes: 0,
                max_log: self.limits.max_log,
                now_ms: 0,
            },
        );
        store.limiter(|s| &mut s.limiter);
        store.set_epoch_deadline(1);
        store.epoch_deadline_async_yield_and_update(1);
        let fut = async {
            let instance = plugin.pre.instantiate_async(&mut store).await?;
            instance.call_describe(&mut store).await
        };
        let d = match tokio::time::timeout(self.limits.timeout, fut).await {
            Err(_) => return Err(PluginError::Timeout(self.limits.timeout.as_secs().max(1))),
            Ok(Err(e)) => return Err(PluginError::Trap(trap_reason(&e))),
            Ok(Ok(d)) => d,
        };
        let schema = |s: &str| {
            serde_json::from_str::<serde_json::Value>(s)
                .unwrap_or(serde_json::Value::String(s.to_string()))
        };
        Ok(serde_json::json!({
            "name": d.name,
            "version": d.version,
            "description": d.description,
            "input_schema": schema(&d.input_schema),
            "output_schema": schema(&d.output_schema),
            "capabilities": d.capabilities,
        }))
    }

    /// Loads every `*/plugin.toml` under `dir`. Problems are returned, one line per plugin; the
    /// other plugins still load. Compiled code is cached in `cache` (if given), keyed by the
    /// component's content hash and the engine's compatibility hash.
    pub fn load(
        dir: &Path,
        limits: Limits,
        cache: Option<&Path>,
    ) -> Result<(Self, Vec<String>), String> {
        let (mut host, linker) = Self::empty(limits)?;
        let mut problems = Vec::new();
        for path in manifests(dir) {
            match host.load_one(&linker, &path, cache) {
                Ok(name) => {
                    tracing::info!(plugin = %name, manifest = %path.display(), "plugin loaded")
                }
                Err(e) => problems.push(format!("{}: {e}", path.display())),
            }
        }
        Ok((host, problems))
    }

    fn load_one(
        &mut self,
        linker: &Linker<State>,
        path: &Path,
        cache: Option<&Path>,
    ) -> Result<String, String> {
        let text = std::fs::read_to_string(path).map_err(|e| e.to_string())?;
        let manifest: Manifest = toml::from_str(&text).map_err(|e| e.message().to_string())?;
        let file = path
            .parent()
            .unwrap_or(Path::new("."))
            .join(&manifest.component);
        let component = self
            .component(&file, cache)
            .map_err(|e| format!("cannot load component {}: {e}", file.display()))?;
        let pre = Self::link(&self.engine, linker, &component)?;
        let name = manifest.name.clone();
        self.plugins
            .insert(name.clone(), Arc::new(Loaded { manifest, pre }));
        Ok(name)
    }

    /// Compiles a component, or loads its compiled code from the cache.
    fn component(&self, file: &Path, cache: Option<&Path>) -> Result<Component, String> {
        use sha2::Digest;
        use std::hash::{Hash, Hasher};
        let bytes = std::fs::read(file).map_err(|e| e.to_string())?;
        let Some(cache) = cache else {
            return Component::new(&self.engine, &bytes).map_err(|e| e.to_string());
        };
        let mut compat = std::collections::hash_map::DefaultHasher::new();
        self.engine
            .precompile_compatibility_hash()
            .hash(&mut compat);
        let key = format!(
            "{}-{:016x}.cwasm",
            hex::encode(sha2::Sha256::digest(&bytes)),
            compat.finish()
        );
        let cached = cache.join(key);
        if cached.is_file() {
            // SAFETY: `deserialize_file` trusts the file to be wasmtime-compiled code for this
            // engine. The file was written below by this host from `precompile_component`, under
            // a name that binds the source's SHA-256 and the engine's compatibility hash, in the
            // daemon's own state directory; anyone able to write there can already replace the
            // daemon itself.
            #[allow(unsafe_code)]
            let loaded = unsafe { Component::deserialize_file(&self.engine, &cached) };
            match loaded {
                Ok(c) => return Ok(c),
                Err(e) => {
                    tracing::warn!(file = %cached.display(), error = %e, "ignoring an unusable compiled-plugin cache entry")
                }
            }
        }
        let compiled = self
            .engine
            .precompile_component(&bytes)
            .map_err(|e| e.to_string())?;
        let written = std::fs::create_dir_all(cache).and_then(|()| {
            let tmp = cache.join(format!(".{}.tmp", std::process::id()));
            std::fs::write(&tmp, &compiled)?;
            std::fs::rename(&tmp, &cached)
        });
        if let Err(e) = written {
            tracing::warn!(dir = %cache.display(), error = %e, "cannot cache compiled plugin code");
        }
        Component::new(&self.engine, &bytes).map_err(|e| e.to_string())
    }

    /// Installed plugin names.
    pub fn names(&self) -> Vec<String> {
        self.plugins.keys().cloned().collect()
    }

    /// The manifest of an installed plugin.
    pub fn manifest(&self, name: &str) -> Option<&Manifest> {
        self.plugins.get(name).map(|p| &p.manifest)
    }

    /// Runs a plugin once: fresh store, instantiate, call, throw away. Returns the output JSON
    /// and the plugin's log lines (`level`, `message`), including captured stdout/stderr.
    pub async fn invoke(
        &self,
        name: &str,
        ctx: &PluginCall<'_>,
        input: &str,
    ) -> Result<(String, Vec<(String, String)>), PluginError> {
        let plugin = self
            .plugins
            .get(name)
            .ok_or_else(|| PluginError::NotInstalled(name.to_string()))?;
        let limits = self.limits;
        if input.len() > limits.max_input {
            return Err(PluginError::Size(format!(
                "input of {} bytes exceeds the {} KiB limit",
                input.len(),
                limits.max_input >> 10
            )));
        }
        let stdout = MemoryOutputPipe::new(limits.max_log);
        let stderr = MemoryOutputPipe::new(limits.max_log);
        let wasi = WasiCtxBuilder::new()
            .stdout(stdout.clone())
            .stderr(stderr.clone())
            .build();
        let mut store = Store::new(
            &self.engine,
            State {
                wasi,
                table: ResourceTable::new(),
                limiter: MemLimiter {
                    max: limits.memory,
                    exceeded: false,
                },
                logs: Vec::new(),
                log_bytes: 0,
                max_log: limits.max_log,
                now_ms: ctx.now_ms,
            },
        );
        store.limiter(|s| &mut s.limiter);
        store.set_epoch_deadline(1);
        store.epoch_deadline_async_yield_and_update(1);
        let call = Context {
            run_id: ctx.run_id.to_string(),
            workflow_id: ctx.workflow_id.to_string(),
            step_key: ctx.step_key.to_string(),
            attempt: ctx.attempt,
        };
        let outcome = {
            let fut = async {
                let instance = plugin.pre.instantiate_async(&mut store).await?;
                instance.call_run(&mut store, &call, input).await
            };
            tokio::time::timeout(limits.timeout, fut).await
        };
        let mut logs = std::mem::take(&mut store.data_mut().logs);
        for (level, pipe) in [("info", &stdout), ("warn", &stderr)] {
            let bytes = pipe.contents();
            if !bytes.is_empty() {
                logs.push((
                    level.to_string(),
                    String::from_utf8_lossy(&bytes).trim_end().to_string(),
                ));
            }
        }
        let exceeded = store.data().limiter.exceeded;
        drop(store);
        match outcome {
            Err(_) => Err(PluginError::Timeout(limits.timeout.as_secs().max(1))),
            Ok(Err(_)) if exceeded => Err(PluginError::Memory(limits.memory >> 20)),
            Ok(Err(trap)) => {
                // A Rust guest's panic message goes to stderr just before the trap.
                let stderr = String::from_utf8_lossy(&stderr.contents()).to_string();
                let detail = stderr
                    .lines()
                    .rev()
                    .find(|l| !l.trim().is_empty() && !l.starts_with("note:"))
                    .map(|l| format!(" ({})", l.trim()));
                Err(PluginError::Trap(format!(
                    "{}{}",
                    trap_reason(&trap),
                    detail.unwrap_or_default()
                )))
            }
            Ok(Ok(Err(e))) => Err(match e {
                GuestError::Retryable(m) => PluginError::Step {
                    message: m,
                    retryable: true,
                },
                GuestError::InvalidInput(m) => PluginError::Step {
                    message: format!("invalid input: {m}"),
                    retryable: false,
                },
                GuestError::Rejected(m) => PluginError::Step {
                    message: m,
                    retryable: false,
                },
                GuestError::Internal(m) => PluginError::Step {
                    message: format!("plugin error: {m}"),
                    retryable: false,
                },
            }),
            Ok(Ok(Ok(out))) if out.len() > limits.max_output => Err(PluginError::Size(format!(
                "output of {} bytes exceeds the {} KiB limit",
                out.len(),
                limits.max_output >> 10
            ))),
            Ok(Ok(Ok(out))) => Ok((out, logs)),
        }
    }
}

/// The `plugin.toml` manifests under `dir` (one level of grouping allowed), sorted.
pub fn manifests(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let Ok(entries) = std::fs::read_dir(dir) else {
        return out;
    };
    for entry in entries.flatten() {
        let p = entry.path().join("plugin.toml");
        if p.is_file() {
            out.push(p);
        }
        if let Ok(sub) = std::fs::read_dir(entry.path()) {
            for e in sub.flatten() {
                let p = e.path().join("plugin.toml");
                if p.is_file() {
                    out.push(p);
                }
            }
        }
    }
    out.sort();
    out
}

/// Names of the plugins installed under `dir`, from their manifests (nothing is compiled).
pub fn installed(dir: &Path) -> Vec<String> {
    manifests(dir)
        .iter()
        .filter_map(|p| std::fs::read_to_string(p).ok())
        .filter_map(|t| toml::from_str::<Manifest>(&t).ok())
        .map(|m| m.name)
        .collect()
}

/// A trap's reason, without wasmtime's backtrace.
fn trap_reason(err: &wasmtime::Error) -> String {
    if let Some(trap) = err.downcast_ref::<wasmtime::Trap>() {
        return trap.to_string();
    }
    let text = format!("{err:#}");
    text.lines()
        .map(str::trim)
        .rfind(|l| {
            !l.is_empty()
                && !l.starts_with("error while executing")
                && !l.contains("wasm backtrace")
                && !l.starts_with(|c: char| c.is_ascii_digit())
        })
        .unwrap_or("trap")
        .to_string()
}

/// Who is calling.
#[derive(Debug, Clone, Copy)]
pub struct PluginCall<'a> {
    /// Run id.
    pub run_id: &'a str,
    /// Workflow id.
    pub workflow_id: &'a str,
    /// Step key.
    pub step_key: &'a str,
    /// Attempt.
    pub attempt: u32,
    /// The engine's clock.
    pub now_ms: i64,
}
