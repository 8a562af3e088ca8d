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
use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

pub mod grant;
pub mod net;
pub mod shipped;

pub use grant::{Grant, HostRule};

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
        imports: {
            "pmoflow:plugin/http.fetch": async,
            "pmoflow:plugin/tls.peer-certificates": async,
            "pmoflow:plugin/whois.query": async,
        },
    });
}

use bindings::pmoflow::plugin::http::{
    HttpError, Request as HttpRequest, Response as HttpResponse,
};
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
    grant: Arc<Grant>,
    http: Option<reqwest::Client>,
    kv: Kv,
}

impl State {
    fn new(wasi: WasiCtx, grant: Arc<Grant>, http: Option<reqwest::Client>, now_ms: i64) -> Self {
        let limits = grant.limits;
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
            now_ms,
            grant,
            http,
            kv: Kv::default(),
        }
    }

    fn denied(&self, capability: &str) -> String {
        format!("capability `{capability}` is not granted")
    }
}

/// One invocation's view of the plugin's key-value namespace: what was stored when it started,
/// plus its own writes (committed only if `run` returns).
#[derive(Default)]
struct Kv {
    data: BTreeMap<String, String>,
    changes: BTreeMap<String, Option<String>>,
    bytes: usize,
}

impl Kv {
    fn load(rows: Vec<(String, String)>) -> Self {
        let bytes = rows.iter().map(|(k, v)| k.len() + v.len()).sum();
        Kv {
            data: rows.into_iter().collect(),
            changes: BTreeMap::new(),
            bytes,
        }
    }

    fn set(&mut self, key: String, value: String, limits: &Limits) -> Result<(), String> {
        if key.is_empty() || key.len() > 256 {
            return Err("a kv key is 1 to 256 bytes".into());
        }
        let old = self.data.get(&key).map(|v| key.len() + v.len());
        if old.is_none() && self.data.len() >= limits.kv_max_keys {
            return Err(format!(
                "kv quota: at most {} keys per plugin",
                limits.kv_max_keys
            ));
        }
        let bytes = self.bytes - old.unwrap_or(0) + key.len() + value.len();
        if bytes > limits.kv_max_bytes {
            return Err(format!(
                "kv quota: at most {} KiB per plugin",
                limits.kv_max_bytes >> 10
            ));
        }
        self.bytes = bytes;
        self.changes.insert(key.clone(), Some(value.clone()));
        self.data.insert(key, value);
        Ok(())
    }

    fn delete(&mut self, key: String) {
        if let Some(v) = self.data.remove(&key) {
            self.bytes -= key.len() + v.len();
            self.changes.insert(key, None);
        }
    }
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

impl bindings::pmoflow::plugin::kv::Host for State {
    fn get(&mut self, key: String) -> Option<String> {
        self.kv.data.get(&key).cloned()
    }

    fn set(&mut self, key: String, value: String) -> Result<(), String> {
        if !self.grant.allows("kv") {
            return Err(self.denied("kv"));
        }
        let limits = self.grant.limits;
        self.kv.set(key, value, &limits)
    }

    fn delete(&mut self, key: String) {
        self.kv.delete(key);
    }

    fn keys(&mut self, prefix: String) -> Vec<String> {
        self.kv
            .data
            .range(prefix.clone()..)
            .take_while(|(k, _)| k.starts_with(&prefix))
            .map(|(k, _)| k.clone())
            .collect()
    }
}

impl bindings::pmoflow::plugin::http::Host for State {
    async fn fetch(&mut self, req: HttpRequest) -> Result<HttpResponse, HttpError> {
        let Some(client) = self.http.clone() else {
            return Err(HttpError::Denied(self.denied("http")));
        };
        let grant = self.grant.clone();
        net::fetch(
            &client,
            &grant,
            &req.method,
            &req.url,
            &req.headers,
            req.body,
        )
        .await
        .map(|r| HttpResponse {
            status: r.status,
            headers: r.headers,
            body: r.body,
        })
        .map_err(|e| match e {
            net::FetchError::Denied(m) => HttpError::Denied(m),
            net::FetchError::Timeout(m) => HttpError::Timeout(m),
            net::FetchError::TooLarge(m) => HttpError::TooLarge(m),
            net::FetchError::Failed(m) => HttpError::Failed(m),
        })
    }
}

impl bindings::pmoflow::plugin::tls::Host for State {
    async fn peer_certificates(
        &mut self,
        address: String,
        server_name: String,
    ) -> Result<Vec<bindings::pmoflow::plugin::tls::Certificate>, String> {
        if !self.grant.allows("tls") {
            return Err(self.denied("tls"));
        }
        let grant = self.grant.clone();
        let chain = net::peer_certificates(&grant, &address, &server_name).await?;
        Ok(chain
            .into_iter()
            .map(|c| bindings::pmoflow::plugin::tls::Certificate {
                subject: c.subject,
                issuer: c.issuer,
                dns_names: c.dns_names,
                not_before_ms: c.not_before_ms,
                not_after_ms: c.not_after_ms,
                serial: c.serial,
            })
            .collect())
    }
}

impl bindings::pmoflow::plugin::whois::Host for State {
    async fn query(&mut self, server: String, query: String) -> Result<String, String> {
        if !self.grant.allows("whois") {
            return Err(self.denied("whois"));
        }
        let grant = self.grant.clone();
        net::whois(&grant, &server, &query).await
    }
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

/// Instances the pooling allocator keeps slots for. Invocations beyond this many at once wait
/// for a slot (`PluginHost::slots`) instead of failing.
const POOL_INSTANCES: u32 = 128;

impl PluginHost {
    /// A host with no plugins yet, and the linker plugins are instantiated with. `max_memory` is
    /// the largest memory limit of any grant (the pooling allocator's slot size).
    fn empty(max_memory: usize) -> Result<(Self, Arc<Linker<State>>), String> {
        // `PMOFLOW_PLUGIN_POOLING=0` allocates on demand (for hosts that refuse large
        // address-space reservations, and for comparison in the benchmark).
        let pooling = std::env::var("PMOFLOW_PLUGIN_POOLING").map_or(true, |v| v != "0");
        let engine = match Engine::new(&Self::config(pooling.then_some(max_memory))) {
            Ok(engine) => engine,
            Err(e) => {
                // Pooling reserves address space up front; some sandboxes refuse that.
                tracing::warn!(error = %e, "pooling allocator unavailable; allocating on demand");
                Engine::new(&Self::config(None)).map_err(|e| format!("wasmtime: {e}"))?
            }
        };
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
        let linker = Arc::new(linker);
        let host = PluginHost {
            engine,
            plugins: BTreeMap::new(),
            kv_store: None,
            linker: linker.clone(),
            slots: Arc::new(tokio::sync::Semaphore::new(POOL_INSTANCES as usize)),
            _ticker: stop,
        };
        Ok((host, linker))
    }

    fn config(pool_memory: Option<usize>) -> Config {
        let mut config = Config::new();
        config.epoch_interruption(true);
        if let Some(max_memory) = pool_memory {
            let mut pool = wasmtime::PoolingAllocationConfig::new();
            pool.total_component_instances(POOL_INSTANCES)
                .total_core_instances(POOL_INSTANCES * 4)
                .total_memories(POOL_INSTANCES * 2)
                .total_tables(POOL_INSTANCES * 4)
                .max_memory_size(max_memory.max(1 << 20))
                // Where the kernel has PAGEMAP_SCAN (Linux 6.7+), reset only the pages a guest
                // touched, in place, and keep them resident: the next instantiation of the slot
                // then takes no page faults. Elsewhere this falls back to `madvise`.
                .pagemap_scan(wasmtime::Enabled::Auto)
                .linear_memory_keep_resident(4 << 20)
                .table_keep_resident(64 << 10)
                .max_unused_warm_slots(32);
            config.allocation_strategy(wasmtime::InstanceAllocationStrategy::Pooling(pool));
        }
        config
    }

    /// Persists the `kv` capability in `store` (without one, `kv` lives for one invocation).
    pub fn with_kv_store(mut self, store: crate::store::Store) -> Self {
        self.kv_store = Some(store);
        self
    }

    /// For development (`pmoflow plugin run|inspect`): a host with one component file, named
    /// after the file, with `grant`. Returns the host, the plugin name and the component's
    /// imports.
    pub fn single(file: &Path, grant: Grant) -> Result<(Self, String, Vec<String>), String> {
        let (mut host, linker) = Self::empty(grant.limits.memory)?;
        let name = file
            .file_stem()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_else(|| "plugin".into());
        let bytes = std::fs::read(file).map_err(|e| e.to_string())?;
        let component = host.component(&bytes, None)?;
        let imports: Vec<String> = component
            .component_type()
            .imports(&host.engine)
            .map(|(n, _)| n.to_string())
            .collect();
        let manifest = Manifest {
            name: name.clone(),
            version: String::new(),
            description: String::new(),
            component: file.to_path_buf(),
            // The component itself is the only declaration there is.
            capabilities: grant::KNOWN.iter().map(|s| s.to_string()).collect(),
            bare_file: true,
            shipped: false,
        };
        let loaded = Self::link(&host.engine, &linker, &component, manifest, grant)?;
        host.plugins.insert(name.clone(), Arc::new(loaded));
        Ok((host, name, imports))
    }

    /// Checks a component's imports against its manifest and its grant, and prepares it.
    fn link(
        engine: &Engine,
        linker: &Linker<State>,
        component: &Component,
        manifest: Manifest,
        grant: Grant,
    ) -> Result<Loaded, String> {
        let (mut unknown, mut undeclared, mut ungranted) = (Vec::new(), Vec::new(), Vec::new());
        for (import, _) in component.component_type().imports(engine) {
            match capability_of(import) {
                Err(()) => unknown.push(import.to_string()),
                Ok(None) => {}
                Ok(Some(cap)) => {
                    if !manifest.capabilities.iter().any(|c| c == cap) {
                        undeclared.push(cap);
                    }
                    if !grant.allows(cap) {
                        ungranted.push(cap);
                    }
                }
            }
        }
        if !unknown.is_empty() {
            return Err(format!(
                "imports interfaces it was not granted: {}",
                unknown.join(", ")
            ));
        }
        if !undeclared.is_empty() {
            return Err(format!(
                "imports capabilities its manifest does not declare: {} (add them to `capabilities` in plugin.toml)",
                undeclared.join(", ")
            ));
        }
        if !ungranted.is_empty() {
            return Err(format!(
                "imports capabilities it was not granted: {} (an administrator grants them with `capabilities = [{}]` under [plugins.{}] in pmoflow.toml)",
                ungranted.join(", "),
                ungranted
                    .iter()
                    .map(|c| format!("\"{c}\""))
                    .collect::<Vec<_>>()
                    .join(", "),
                manifest.name
            ));
        }
        let pre = linker
            .instantiate_pre(component)
            .map_err(|e| format!("cannot link: {e}"))?;
        let pre = bindings::StepPre::new(pre)
            .map_err(|e| format!("not a pmoflow:plugin/step component: {e}"))?;
        let grant = Arc::new(grant);
        let http = if grant.allows("http") {
            Some(net::http_client(grant.clone())?)
        } else {
            None
        };
        Ok(Loaded {
            manifest,
            pre,
            grant,
            http,
            descriptor: OnceLock::new(),
            input_schema: OnceLock::new(),
        })
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

    /// Loads the shipped plugins, then every `*/plugin.toml` under `dir` (which need not
    /// exist), each with its grant; an installed plugin replaces a shipped one of the same
    /// name. Problems are returned, one line per plugin; the other plugins still load. Compiled
    /// code is cached in `cache` (if given), keyed by the component's content hash and the
    /// engine's compatibility hash. Call [`PluginHost::prepare`] before use.
    pub fn load(
        dir: &Path,
        grants: &Grants,
        cache: Option<&Path>,
    ) -> Result<(Self, Vec<String>), String> {
        let mut host = Self::without_plugins(grants)?;
        let mut problems = host.load_shipped(grants, cache);
        problems.extend(host.load_dir(dir, grants, cache));
        for name in grants.plugins.keys() {
            if !host.plugins.contains_key(name) {
                tracing::warn!(plugin = %name, "pmoflow.toml grants capabilities to a plugin that is not loaded");
            }
        }
        Ok((host, problems))
    }

    /// A host with no plugin loaded yet: the engine (sized for the largest memory limit of
    /// `grants`), the linker and the epoch thread.
    pub fn without_plugins(grants: &Grants) -> Result<Self, String> {
        let max_memory = grants
            .plugins
            .values()
            .map(|g| g.limits.memory)
            .fold(grants.default.limits.memory, usize::max);
        Ok(Self::empty(max_memory)?.0)
    }

    /// Loads the plugins built into the binary ([`shipped`]) into this host.
    pub fn load_shipped(&mut self, grants: &Grants, cache: Option<&Path>) -> Vec<String> {
        let linker = self.linker.clone();
        let mut problems = Vec::new();
        for plugin in shipped::all() {
            let name = plugin.manifest.name.clone();
            let loaded = self
                .component(plugin.component, cache)
                .map_err(|e| format!("cannot load the component: {e}"))
                .and_then(|component| {
                    Self::link(
                        &self.engine,
                        &linker,
                        &component,
                        plugin.manifest,
                        grants.get(&name).clone(),
                    )
                });
            match loaded {
                Ok(loaded) => {
                    tracing::info!(plugin = %name, "shipped plugin loaded");
                    self.plugins.insert(name, Arc::new(loaded));
                }
                Err(e) => problems.push(format!("shipped plugin `{name}`: {e}")),
            }
        }
        problems
    }

    /// Loads the plugins under `dir` into this host (its engine, with its memory ceiling). An
    /// installed plugin replaces a shipped one of the same name; if it cannot be loaded, the
    /// shipped one stays.
    pub fn load_dir(&mut self, dir: &Path, grants: &Grants, cache: Option<&Path>) -> Vec<String> {
        let linker = self.linker.clone();
        let mut problems = Vec::new();
        for path in manifests(dir) {
            match self.load_one(&linker, &path, grants, cache) {
                Ok((name, true)) => {
                    tracing::info!(plugin = %name, manifest = %path.display(), "installed plugin replaces the shipped one")
                }
                Ok((name, false)) => {
                    tracing::info!(plugin = %name, manifest = %path.display(), "plugin loaded")
                }
                Err(e) => problems.push(format!("{}: {e}", path.display())),
            }
        }
        problems
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

    fn load_one(
        &mut self,
        linker: &Linker<State>,
        path: &Path,
        grants: &Grants,
        cache: Option<&Path>,
    ) -> Result<(String, bool), String> {
        let text = std::fs::read_to_string(path).map_err(|e| e.to_string())?;
        let manifest: Manifest = toml::from_str(&text).map_err(|e| e.message().to_string())?;
        let name = manifest.name.clone();
        let replaces = self.plugins.get(&name).is_some_and(|p| p.manifest.shipped);
        let shipped_stays = |e: String| {
            if replaces {
                format!("{e} (the shipped `{name}` stays in use)")
            } else {
                e
            }
        };
        if manifest.component.as_os_str().is_empty() {
            return Err(shipped_stays(
                "no `component` (the path of the .wasm file, relative to plugin.toml)".into(),
            ));
        }
        if let Some(bad) = manifest
            .capabilities
            .iter()
            .find(|c| !grant::KNOWN.contains(&c.as_str()))
        {
            return Err(format!(
                "unknown capability `{bad}` (known: {})",
                grant::KNOWN.join(", ")
            ));
        }
        let file = path
            .parent()
            .unwrap_or(Path::new("."))
            .join(&manifest.component);
        let component = std::fs::read(&file)
            .map_err(|e| e.to_string())
            .and_then(|bytes| self.component(&bytes, cache))
            .map_err(|e| shipped_stays(format!("cannot load component {}: {e}", file.display())))?;
        let grant = grants.get(&name).clone();
        let loaded = Self::link(&self.engine, linker, &component, manifest, grant)
            .map_err(&shipped_stays)?;
        self.plugins.insert(name.clone(), Arc::new(loaded));
        Ok((name, replaces))
    }

    /// Compiles a component, or loads its compiled code from the cache.
    fn component(&self, bytes: &[u8], cache: Option<&Path>) -> Result<Component, String> {
        use sha2::Digest;
        use std::hash::{Hash, Hasher};
        let Some(cache) = cache else {
            return Component::new(&self.engine, bytes).map_err(|e| e.to_string());
        };
        let mut compat = std::collections::hash_map::DefaultHasher::new();
        self.engine
            .precompile_compatibility_hash()
            .hash(&mut compat);
        let key = format!(
            "{}-{:016x}.cwasm",
            hex::encode(sha2::Sha256::digest(bytes)),
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
            .precompile_component(bytes)
            .map_err(|e| e.to_string())?;
        let written = std::fs::create_dir_all(cache).and_then(|()| {
            let tmp = cache.join(format!(".{}.tmp", std::process::id()));
            std::fs::write(&tmp, &compiled)?;
            std::fs::rename(&tmp, &cached)
        });
        if let Err(e) = written {
            tracing::warn!(dir = %cache.display(), error = %e, "cannot cache compiled plugin code");
        }
        Component::new(&self.engine, bytes).map_err(|e| e.to_string())
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

/// Names of the plugins available with `dir` as `plugins_dir`: the shipped ones and those
/// installed under `dir`, from their manifests (nothing is compiled), sorted.
pub fn installed(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = manifests(dir)
        .iter()
        .filter_map(|p| std::fs::read_to_string(p).ok())
        .filter_map(|t| toml::from_str::<Manifest>(&t).ok())
        .map(|m| m.name)
        .chain(shipped::names())
        .collect();
    names.sort();
    names.dedup();
    names
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
