//! Loading plugins: the shipped ones (embedded), then those installed under `plugins_dir`, each
//! compiled once and cached by content hash and engine compatibility hash.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use wasmtime::component::{Component, Linker};

use super::{Grants, LoadError, Manifest, PluginHost, State, grant, shipped};

impl PluginHost {
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
        let compiled = self
            .engine
            .precompile_component(bytes)
            .map_err(LoadError::Compile)?;
        let written = std::fs::create_dir_all(cache).and_then(|()| {
            let tmp = cache.join(format!(".{}.tmp", std::process::id()));
            std::fs::write(&tmp, &compiled)?;
            std::fs::rename(&tmp, &cached)
        });
        if let Err(e) = written {
            tracing::warn!(dir = %cache.display(), error = %e, "cannot cache compiled plugin code");
        }
        Component::new(&self.engine, bytes).map_err(LoadError::Compile)
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
