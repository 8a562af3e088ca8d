//! Which workflow definition a run executes.
//!
//! A run is pinned to the version (content hash) it started with. The registry finds that
//! version: in memory if already compiled, else in the current catalog, else in the database
//! (the file may have changed or disappeared since the run began).

use std::collections::HashMap;
use std::path::Path;
use std::sync::{Arc, RwLock};

use serde_json::Value as Json;

use crate::store::Store;
use crate::workflow::{Catalog, SharedWorkflow, compile};

/// Workflows by (id, version), plus the live catalog.
pub struct Registry {
    // std RwLock: held only for map lookups and inserts, never across an await.
    core: RwLock<EngineCore>,
    changed: tokio::sync::watch::Sender<u64>,
}

impl Default for Registry {
    fn default() -> Self {
        Self {
            core: RwLock::default(),
            changed: tokio::sync::watch::Sender::new(0),
        }
    }
}

#[derive(Default)]
struct EngineCore {
    catalog: Arc<Catalog>,
    versions: HashMap<(String, String), SharedWorkflow>,
}

/// Why a run's workflow cannot be found.
#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    /// The version is not in the database.
    #[error("workflow `{0}` version {1} is not stored")]
    Missing(String, String),
    /// The stored version no longer compiles (e.g. a data file it reads was removed).
    #[error("workflow `{0}` version {1} no longer compiles: {2}")]
    Invalid(String, String, String),
    /// The database failed.
    #[error(transparent)]
    Store(#[from] crate::store::StoreError),
}

impl Registry {
    /// Replaces the live catalog (after a reload).
    pub fn set_catalog(&self, catalog: Arc<Catalog>) {
        let mut core = self.core.write().unwrap_or_else(|e| e.into_inner());
        for wf in catalog.workflows.values() {
            core.versions
                .insert((wf.id.clone(), wf.hash.clone()), wf.clone());
        }
        core.catalog = catalog;
        drop(core);
        self.changed.send_modify(|v| *v += 1);
    }

    /// A receiver that sees every `set_catalog`.
    pub fn subscribe(&self) -> tokio::sync::watch::Receiver<u64> {
        self.changed.subscribe()
    }

    /// The current business calendar.
    pub fn calendar(&self) -> Arc<crate::calendar::Calendar> {
        self.catalog().calendar.clone()
    }

    /// The live catalog.
    pub fn catalog(&self) -> Arc<Catalog> {
        self.core
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .catalog
            .clone()
    }

    /// The current reference data.
    pub fn data(&self) -> Arc<Json> {
        self.catalog().data.clone()
    }

    /// The workflow a run is pinned to.
    pub async fn get(
        &self,
        store: &Store,
        workflow_id: &str,
        hash: &str,
    ) -> Result<SharedWorkflow, RegistryError> {
        let key = (workflow_id.to_string(), hash.to_string());
        if let Some(wf) = self
            .core
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .versions
            .get(&key)
        {
            return Ok(wf.clone());
        }
        let (path, source) = store
            .load_version(workflow_id, hash)
            .await?
            .ok_or_else(|| RegistryError::Missing(key.0.clone(), key.1.clone()))?;
        let names = self.catalog().data_names();
        let wf = compile(Path::new(&path), &source, &names).map_err(|diags| {
            let text = diags
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join("; ");
            RegistryError::Invalid(key.0.clone(), key.1.clone(), text)
        })?;
        let wf = Arc::new(wf);
        self.core
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .versions
            .insert(key, wf.clone());
        Ok(wf)
    }
}
