//! Sandboxed WebAssembly plugins (the `plugin:NAME` action).
//!
//! A plugin is a WebAssembly component for the `pmoflow:plugin/step` world (`plugins/wit/`),
//! installed as `plugins/<name>/plugin.toml` next to its component. The host runs it on wasmtime
//! with the component model and an async host: WASI is linked default-deny (no directories, no
//! environment, no sockets), stdout and stderr are captured (bounded), and every invocation gets
//! a fresh `Store` with a memory limit, an epoch deadline that yields to tokio, and a wall-clock
//! timeout. Whatever a plugin does, the worst outcome is a failed step with a readable reason.
//!
//! At load, the component's actual imports are compared with its manifest and with the
//! administrator's grant (`[plugins.NAME]` in `pmoflow.toml`, see [`grant`]); a plugin that
//! imports more than it was granted is refused. Capabilities beyond `log` and `clock` — `kv`,
//! `http`, `tls`, `whois` — exist only for plugins granted them, and the network ones reach only
//! the hosts in the grant's `allow_hosts` ([`net`]).

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

mod capabilities;
mod child;
mod error;
pub mod grant;
mod load;
pub mod net;
pub mod shipped;

use capabilities::{Kv, State};

pub use child::{compile_in_child, compile_to_file};
pub use error::LoadError;
pub use grant::{Grant, HostRule, HostRuleError};
pub use load::{installed, manifests};
pub use net::NetError;

use serde::Deserialize;
use wasmtime::component::Linker;
use wasmtime::{Engine, Store};
use wasmtime_wasi::WasiCtxBuilder;
use wasmtime_wasi::p2::pipe::MemoryOutputPipe;

mod bindings {
    wasmtime::component::bindgen!({
        path: "../plugins/wit",
        world: "step",
        exports: { default: async },
        imports: {
            "pmoflow:plugin/http.fetch": async,
            "pmoflow:plugin/tls.peer-certificates": async,
            "pmoflow:plugin/whois.query": async,
        },
    });
}

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
    /// Time of one network operation (`http`, `tls`, `whois`).
    pub net_timeout: Duration,
    /// Body of one HTTP response or WHOIS answer, bytes.
    pub max_response: usize,
    /// Keys in the plugin's `kv` namespace.
    pub kv_max_keys: usize,
    /// Total bytes (keys and values) in the plugin's `kv` namespace.
    pub kv_max_bytes: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            timeout: Duration::from_secs(5),
            memory: 64 << 20,
            max_input: 1 << 20,
            max_output: 1 << 20,
            max_log: 64 << 10,
            net_timeout: Duration::from_secs(10),
            max_response: 1 << 20,
            kv_max_keys: 1000,
            kv_max_bytes: 1 << 20,
        }
    }
}

/// Every grant: `[plugins.NAME]` tables, and the default for plugins without one.
#[derive(Debug, Clone, Default)]
pub struct Grants {
    /// By plugin name.
    pub plugins: BTreeMap<String, Grant>,
    /// For plugins without a table: `log` and `clock`, default limits.
    pub default: Grant,
}

impl Grants {
    /// Every plugin gets `grant`'s capabilities, hosts and limits (tests, benchmarks).
    pub fn all(grant: Grant) -> Self {
        Self {
            plugins: BTreeMap::new(),
            default: grant,
        }
    }

    /// The grant of `name`.
    pub fn get(&self, name: &str) -> &Grant {
        self.plugins.get(name).unwrap_or(&self.default)
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
    /// The component, relative to the manifest (absent for the shipped plugins, whose
    /// component is embedded).
    #[serde(default)]
    pub component: PathBuf,
    /// Capabilities requested.
    #[serde(default)]
    pub capabilities: Vec<String>,
    /// Loaded from a bare component file (`pmoflow plugin run|inspect`), named after the file.
    #[serde(skip)]
    pub bare_file: bool,
    /// Shipped with pmoflow, embedded in the binary ([`shipped`]).
    #[serde(skip)]
    pub shipped: bool,
}

struct Loaded {
    manifest: Manifest,
    pre: bindings::StepPre<State>,
    grant: Arc<Grant>,
    http: Option<reqwest::Client>,
    /// From `describe()`, called once when the plugin is loaded.
    descriptor: OnceLock<serde_json::Value>,
    /// The compiled input schema.
    input_schema: OnceLock<jsonschema::Validator>,
}

/// The capability an import stands for: `Ok(None)` for interfaces every plugin may import
/// (WASI, linked default-deny, and the shared types), `Err` for interfaces the host does not
/// offer at all.
fn capability_of(import: &str) -> Result<Option<&'static str>, ()> {
    if import.starts_with("wasi:") || import.starts_with("pmoflow:plugin/types@0.") {
        return Ok(None);
    }
    for cap in grant::KNOWN {
        if let Some(version) = import.strip_prefix(&format!("pmoflow:plugin/{cap}@"))
            && version.starts_with("0.1.")
        {
            return Ok(Some(cap));
        }
    }
    Err(())
}

/// The plugin host: one wasmtime engine, the installed plugins, ready to instantiate.
pub struct PluginHost {
    engine: Engine,
    plugins: BTreeMap<String, Arc<Loaded>>,
    kv_store: Option<crate::store::Store>,
    linker: Arc<Linker<State>>,
    slots: Arc<tokio::sync::Semaphore>,
    /// The pooling allocator's slot size the engine was made with (none: on demand), for a
    /// child process compiling for it.
    pool_memory: Option<usize>,
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
pub(super) const EPOCH_TICK: Duration = Duration::from_millis(10);

/// Instances the pooling allocator keeps slots for. Invocations beyond this many at once wait
/// for a slot (`PluginHost::slots`) instead of failing.
pub(super) const POOL_INSTANCES: u32 = 128;

impl PluginHost {
    /// Persists the `kv` capability in `store` (without one, `kv` lives for one invocation).
    pub fn with_kv_store(mut self, store: crate::store::Store) -> Self {
        self.kv_store = Some(store);
        self
    }

    /// Calls a plugin's `describe` (fresh store, same limits as `run`).
    pub async fn describe(&self, name: &str) -> Result<serde_json::Value, PluginError> {
        let plugin = self
            .plugins
            .get(name)
            .ok_or_else(|| PluginError::NotInstalled(name.to_string()))?;
        if let Some(d) = plugin.descriptor.get() {
            return Ok(d.clone());
        }
        let limits = plugin.grant.limits;
        // `describe` reaches nothing: no network (so `pmoflow validate` stays offline) and no kv,
        // whatever the grant says.
        let offline = Arc::new(Grant::with_limits(limits));
        let mut store = Store::new(
            &self.engine,
            State::new(WasiCtxBuilder::new().build(), offline, None, 0),
        );
        store.limiter(|s| &mut s.limiter);
        store.set_epoch_deadline(1);
        store.epoch_deadline_async_yield_and_update(1);
        let fut = async {
            let instance = plugin.pre.instantiate_async(&mut store).await?;
            instance.call_describe(&mut store).await
        };
        let d = match tokio::time::timeout(limits.timeout, fut).await {
            Err(_) => return Err(PluginError::Timeout(limits.timeout.as_secs().max(1))),
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

    /// Calls every plugin's `describe` once and compiles its input schema. A plugin whose
    /// descriptor is unusable is dropped, with a problem line.
    pub async fn prepare(&mut self) -> Vec<String> {
        let mut problems = Vec::new();
        let mut dropped = Vec::new();
        for (name, plugin) in &self.plugins {
            let checked = match self.describe(name).await {
                Err(e) => Err(format!("describe() failed: {e}")),
                Ok(d) if d["name"] != serde_json::json!(name) && !plugin.manifest.bare_file => {
                    Err(format!(
                        "describe() names the plugin {}, but its manifest says `{name}`",
                        d["name"]
                    ))
                }
                Ok(d) => match &d["input_schema"] {
                    serde_json::Value::Object(_) | serde_json::Value::Bool(_) => {
                        jsonschema::validator_for(&d["input_schema"])
                            .map(|v| (d.clone(), v))
                            .map_err(|e| {
                                format!("its input schema is not a valid JSON Schema: {e}")
                            })
                    }
                    _ => Err("its input schema is not a JSON object".to_string()),
                },
            };
            match checked {
                Ok((d, v)) => {
                    let _ = plugin.descriptor.set(d);
                    let _ = plugin.input_schema.set(v);
                }
                Err(e) => {
                    problems.push(format!("plugin `{name}`: {e}"));
                    dropped.push(name.clone());
                }
            }
        }
        for name in dropped {
            self.plugins.remove(&name);
        }
        problems
    }

    /// The compiled input schema of a prepared plugin.
    pub fn input_schema(&self, name: &str) -> Option<&jsonschema::Validator> {
        self.plugins.get(name).and_then(|p| p.input_schema.get())
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
        let limits = plugin.grant.limits;
        if input.len() > limits.max_input {
            return Err(PluginError::Size(format!(
                "input of {} bytes exceeds the {} KiB limit",
                input.len(),
                limits.max_input >> 10
            )));
        }
        if let Some(schema) = plugin.input_schema.get() {
            let value: serde_json::Value =
                serde_json::from_str(input).map_err(|e| PluginError::Step {
                    message: format!("invalid input: not JSON: {e}"),
                    retryable: false,
                })?;
            // `is_valid` is the fast path; the readable errors are collected only on failure.
            if !schema.is_valid(&value) {
                let problems = schema_problems(schema, &value);
                return Err(PluginError::Step {
                    message: format!("invalid input: {}", problems.join("; ")),
                    retryable: false,
                });
            }
        }
        let kv = if plugin.grant.allows("kv")
            && let Some(store) = &self.kv_store
        {
            let rows = store
                .plugin_kv_load(name)
                .await
                .map_err(|e| PluginError::Step {
                    message: format!("cannot read the plugin's kv namespace: {e}"),
                    retryable: true,
                })?;
            Kv::load(rows)
        } else {
            Kv::default()
        };
        let _slot = self.slots.acquire().await.map_err(|_| PluginError::Step {
            message: "the plugin host is shutting down".into(),
            retryable: true,
        })?;
        let stdout = MemoryOutputPipe::new(limits.max_log);
        let stderr = MemoryOutputPipe::new(limits.max_log);
        let wasi = WasiCtxBuilder::new()
            .stdout(stdout.clone())
            .stderr(stderr.clone())
            .build();
        let mut state = State::new(wasi, plugin.grant.clone(), plugin.http.clone(), ctx.now_ms);
        state.kv = kv;
        let mut store = Store::new(&self.engine, state);
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
        let kv_changes: Vec<(String, Option<String>)> =
            std::mem::take(&mut store.data_mut().kv.changes)
                .into_iter()
                .collect();
        drop(store);
        // The guest returned (with an output or a step error): its kv writes stand.
        if matches!(outcome, Ok(Ok(_)))
            && let Some(kv_store) = &self.kv_store
        {
            let now = chrono::DateTime::from_timestamp_millis(ctx.now_ms).unwrap_or_default();
            kv_store
                .plugin_kv_save(name, &kv_changes, now)
                .await
                .map_err(|e| PluginError::Step {
                    message: format!("cannot save the plugin's kv namespace: {e}"),
                    retryable: true,
                })?;
        }
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

/// Why `value` does not fit `schema`, one line per problem (at most five).
pub fn schema_problems(schema: &jsonschema::Validator, value: &serde_json::Value) -> Vec<String> {
    schema_problems_except(schema, value, |_| false)
}

/// Like [`schema_problems`], ignoring problems whose offending value `skip` accepts (templates
/// not rendered yet, in `pmoflow validate`).
pub fn schema_problems_except(
    schema: &jsonschema::Validator,
    value: &serde_json::Value,
    skip: impl Fn(&serde_json::Value) -> bool,
) -> Vec<String> {
    schema
        .iter_errors(value)
        .filter(|e| !skip(e.instance()))
        .take(5)
        .map(|e| {
            let path = e.instance_path().to_string();
            if path.is_empty() {
                e.to_string()
            } else {
                format!("{path}: {e}")
            }
        })
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

/// What one invocation returns: the output (JSON text) and the plugin's log lines.
pub type Invocation = Result<(String, Vec<(String, String)>), PluginError>;

/// What the `plugin:NAME` action needs from a plugin host: one invocation. The daemon's
/// [`PluginHost`] implements it; `pmoflow simulate` implements it too, with the scenario's
/// results in front of a host, so no production code asks whether it is simulated.
pub trait PluginRunner: Send + Sync + std::fmt::Debug {
    /// Runs plugin `name` once with `input` (JSON text).
    fn invoke<'a>(
        &'a self,
        name: &'a str,
        call: &'a PluginCall<'a>,
        input: &'a str,
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = Invocation> + Send + 'a>>;
}

impl PluginRunner for PluginHost {
    fn invoke<'a>(
        &'a self,
        name: &'a str,
        call: &'a PluginCall<'a>,
        input: &'a str,
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = Invocation> + Send + 'a>> {
        Box::pin(PluginHost::invoke(self, name, call, input))
    }
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
