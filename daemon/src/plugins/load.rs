//! Loading plugins: the shipped ones (embedded), then those installed under `plugins_dir`, each
//! compiled once and cached by content hash and engine compatibility hash.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use std::collections::BTreeMap;
use std::sync::OnceLock;

use wasmtime::component::{Component, HasSelf, Linker};
use wasmtime::{Config, Engine};

use super::{
    EPOCH_TICK, Grant, Grants, LoadError, Loaded, Manifest, POOL_INSTANCES, PluginHost, State,
    bindings, capability_of, grant, net, shipped,
};

impl PluginHost {
    /// A host with no plugins yet, and the linker plugins are instantiated with. `max_memory` is
    /// the largest memory limit of any grant (the pooling allocator's slot size).
    pub(super) fn empty(max_memory: usize) -> Result<(Self, Arc<Linker<State>>), LoadError> {
        // `PMOFLOW_PLUGIN_POOLING=0` allocates on demand (for hosts that refuse large
        // address-space reservations, and for comparison in the benchmark).
        let pooling = std::env::var("PMOFLOW_PLUGIN_POOLING").map_or(true, |v| v != "0");
        let mut pool_memory = pooling.then_some(max_memory);
        let engine = match Engine::new(&Self::config(pool_memory)) {
            Ok(engine) => engine,
            Err(e) => {
                // Pooling reserves address space up front; some sandboxes refuse that.
                tracing::warn!(error = %e, "pooling allocator unavailable; allocating on demand");
                pool_memory = None;
                Engine::new(&Self::config(None)).map_err(|error| LoadError::Engine {
                    what: "wasmtime",
                    error,
                })?
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
                .map_err(LoadError::EpochThread)?;
        }
        let mut linker: Linker<State> = Linker::new(&engine);
        wasmtime_wasi::p2::add_to_linker_async(&mut linker).map_err(|error| LoadError::Engine {
            what: "linking WASI",
            error,
        })?;
        bindings::Step::add_to_linker::<State, HasSelf<State>>(&mut linker, |s| s).map_err(
            |error| LoadError::Engine {
                what: "linking pmoflow interfaces",
                error,
            },
        )?;
        let linker = Arc::new(linker);
        let host = PluginHost {
            engine,
            plugins: BTreeMap::new(),
            kv_store: None,
            linker: linker.clone(),
            slots: Arc::new(tokio::sync::Semaphore::new(POOL_INSTANCES as usize)),
            pool_memory,
            _ticker: stop,
        };
        Ok((host, linker))
    }

    pub(super) fn config(pool_memory: Option<usize>) -> Config {
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

    /// For development (`pmoflow plugin run|inspect`): a host with one component file, named
    /// after the file, with `grant`. Returns the host, the plugin name and the component's
    /// imports.
    pub fn single(file: &Path, grant: Grant) -> Result<(Self, String, Vec<String>), LoadError> {
        let (mut host, linker) = Self::empty(grant.limits.memory)?;
        let name = file
            .file_stem()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_else(|| "plugin".into());
        let bytes = std::fs::read(file)?;
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
    pub(super) fn link(
        engine: &Engine,
        linker: &Linker<State>,
        component: &Component,
        manifest: Manifest,
        grant: Grant,
    ) -> Result<Loaded, LoadError> {
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
            return Err(LoadError::UnknownImports(unknown));
        }
        if !undeclared.is_empty() {
            return Err(LoadError::Undeclared(undeclared));
        }
        if !ungranted.is_empty() {
            return Err(LoadError::Ungranted {
                plugin: manifest.name,
                capabilities: ungranted,
            });
        }
        let pre = linker.instantiate_pre(component).map_err(LoadError::Link)?;
        let pre = bindings::StepPre::new(pre).map_err(LoadError::NotAStep)?;
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

    /// Loads the shipped plugins, then every `*/plugin.toml` under `dir` (which need not
    /// exist), each with its grant; an installed plugin replaces a shipped one of the same
    /// name. Problems are returned, one line per plugin; the other plugins still load. Compiled
    /// code is cached in `cache` (if given), keyed by the component's content hash and the
    /// engine's compatibility hash. Call [`PluginHost::prepare`] before use.
    pub fn load(
        dir: &Path,
        grants: &Grants,
        cache: Option<&Path>,
    ) -> Result<(Self, Vec<String>), LoadError> {
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
    pub fn without_plugins(grants: &Grants) -> Result<Self, LoadError> {
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
                .map_err(|e| LoadError::Shipped(Box::new(e)))
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

    fn load_one(
        &mut self,
        linker: &Linker<State>,
        path: &Path,
        grants: &Grants,
        cache: Option<&Path>,
    ) -> Result<(String, bool), LoadError> {
        let text = std::fs::read_to_string(path)?;
        let manifest: Manifest =
            toml::from_str(&text).map_err(|e| LoadError::Manifest(e.message().to_string()))?;
        let name = manifest.name.clone();
        let replaces = self.plugins.get(&name).is_some_and(|p| p.manifest.shipped);
        let shipped_stays = |error: LoadError| {
            if replaces {
                LoadError::ShippedStays {
                    name: name.clone(),
                    error: Box::new(error),
                }
            } else {
                error
            }
        };
        if manifest.component.as_os_str().is_empty() {
            return Err(shipped_stays(LoadError::NoComponent));
        }
        if let Some(bad) = manifest
            .capabilities
            .iter()
            .find(|c| !grant::KNOWN.contains(&c.as_str()))
        {
            return Err(LoadError::UnknownCapability(bad.clone()));
        }
        let file = path
            .parent()
            .unwrap_or(Path::new("."))
            .join(&manifest.component);
        let component = std::fs::read(&file)
            .map_err(LoadError::Read)
            .and_then(|bytes| self.component(&bytes, cache))
            .map_err(|e| {
                shipped_stays(LoadError::Component {
                    file: file.clone(),
                    error: Box::new(e),
                })
            })?;
        let grant = grants.get(&name).clone();
        let loaded = Self::link(&self.engine, linker, &component, manifest, grant)
            .map_err(&shipped_stays)?;
        self.plugins.insert(name.clone(), Arc::new(loaded));
        Ok((name, replaces))
    }

    /// Compiles a component, or loads its compiled code from the cache.
    pub(super) fn component(
        &self,
        bytes: &[u8],
        cache: Option<&Path>,
    ) -> Result<Component, LoadError> {
        use sha2::Digest;
        use std::hash::{Hash, Hasher};
        let Some(cache) = cache else {
            return Component::new(&self.engine, bytes).map_err(LoadError::Compile);
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
        let tmp = cache.join(format!(".{}.tmp", std::process::id()));
        if let Some(exe) = super::child::compiler() {
            let compiled = std::fs::create_dir_all(cache)
                .map_err(LoadError::from)
                .and_then(|()| super::child::compile(exe, bytes, self.pool_memory, &tmp))
                .and_then(|()| Ok(std::fs::rename(&tmp, &cached)?));
            match compiled {
                // SAFETY: as above; the file was written a moment ago by this binary's
                // `plugin compile` from `precompile_component` for an engine configured as
                // this one (a mismatch is refused by wasmtime's compatibility check).
                #[allow(unsafe_code)]
                Ok(()) => match unsafe { Component::deserialize_file(&self.engine, &cached) } {
                    Ok(c) => {
                        tracing::info!(file = %cached.display(), "plugin compiled by a child process");
                        return Ok(c);
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "the compiled plugin from the child process is unusable; compiling here")
                    }
                },
                Err(e) => tracing::warn!(error = %e, "compiling here instead"),
            }
        }
        let compiled = self
            .engine
            .precompile_component(bytes)
            .map_err(LoadError::Compile)?;
        let written = std::fs::create_dir_all(cache).and_then(|()| {
            std::fs::write(&tmp, &compiled)?;
            std::fs::rename(&tmp, &cached)
        });
        match written {
            Ok(()) => {
                // The code just written is loaded from the file (mapped, not copied): compiling
                // a second time would double the start-up work, and the mapped pages are clean
                // file pages the kernel can share and reclaim, not heap the daemon keeps.
                // SAFETY: as above; the file was written a moment ago by this host from
                // `precompile_component` with this engine.
                #[allow(unsafe_code)]
                let loaded = unsafe { Component::deserialize_file(&self.engine, &cached) };
                if let Ok(c) = loaded {
                    return Ok(c);
                }
            }
            Err(e) => {
                tracing::warn!(dir = %cache.display(), error = %e, "cannot cache compiled plugin code");
            }
        }
        // SAFETY: `compiled` is what this engine's `precompile_component` produced just above.
        #[allow(unsafe_code)]
        let loaded = unsafe { Component::deserialize(&self.engine, &compiled) };
        loaded.map_err(LoadError::Compile)
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
