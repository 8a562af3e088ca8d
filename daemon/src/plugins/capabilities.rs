//! The host side of the capabilities a plugin imports (`log`, `clock`, `kv`, `http`, `tls`,
//! `whois`, and WASI default-deny), and the per-invocation state they work on: the memory
//! limiter, the captured log, the `kv` view. Each capability checks its grant here.

use std::collections::BTreeMap;
use std::sync::Arc;

use wasmtime::ResourceLimiter;
use wasmtime::component::ResourceTable;
use wasmtime_wasi::{WasiCtx, WasiCtxView, WasiView};

use super::bindings;
use super::bindings::pmoflow::plugin::http::{
    HttpError, Request as HttpRequest, Response as HttpResponse,
};
use super::bindings::pmoflow::plugin::log::Level;
use super::{Grant, Limits, net};

pub(super) struct MemLimiter {
    pub(super) max: usize,
    pub(super) exceeded: bool,
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

pub(super) struct State {
    pub(super) wasi: WasiCtx,
    pub(super) table: ResourceTable,
    pub(super) limiter: MemLimiter,
    pub(super) logs: Vec<(String, String)>,
    pub(super) log_bytes: usize,
    pub(super) max_log: usize,
    pub(super) now_ms: i64,
    pub(super) grant: Arc<Grant>,
    pub(super) http: Option<reqwest::Client>,
    pub(super) kv: Kv,
}

impl State {
    pub(super) fn new(
        wasi: WasiCtx,
        grant: Arc<Grant>,
        http: Option<reqwest::Client>,
        now_ms: i64,
    ) -> Self {
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

    pub(super) fn denied(&self, capability: &str) -> String {
        format!("capability `{capability}` is not granted")
    }
}

/// The error half of a WIT `result<_, string>`: text handed back to the guest, which shows it in
/// its own error. The one place an error stays a plain string, because the WIT interface
/// (`plugins/wit/plugin.wit`, part of the plugin ABI) fixes it; host code builds it from the
/// typed errors below and in `net`.
pub(super) type GuestError = String;

/// Why a `kv.set` was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(super) enum KvError {
    /// Empty or over-long key.
    #[error("a kv key is 1 to 256 bytes")]
    KeyLength,
    /// The plugin's namespace holds `kv_max_keys` keys already.
    #[error("kv quota: at most {0} keys per plugin")]
    TooManyKeys(usize),
    /// The write would take the namespace over `kv_max_bytes`.
    #[error("kv quota: at most {} KiB per plugin", .0 >> 10)]
    TooManyBytes(usize),
}

/// One invocation's view of the plugin's key-value namespace: what was stored when it started,
/// plus its own writes (committed only if `run` returns).
#[derive(Default)]
pub(super) struct Kv {
    pub(super) data: BTreeMap<String, String>,
    pub(super) changes: BTreeMap<String, Option<String>>,
    pub(super) bytes: usize,
}

impl Kv {
    pub(super) fn load(rows: Vec<(String, String)>) -> Self {
        let bytes = rows.iter().map(|(k, v)| k.len() + v.len()).sum();
        Kv {
            data: rows.into_iter().collect(),
            changes: BTreeMap::new(),
            bytes,
        }
    }

    pub(super) fn set(
        &mut self,
        key: String,
        value: String,
        limits: &Limits,
    ) -> Result<(), KvError> {
        if key.is_empty() || key.len() > 256 {
            return Err(KvError::KeyLength);
        }
        let old = self.data.get(&key).map(|v| key.len() + v.len());
        if old.is_none() && self.data.len() >= limits.kv_max_keys {
            return Err(KvError::TooManyKeys(limits.kv_max_keys));
        }
        let bytes = self.bytes - old.unwrap_or(0) + key.len() + value.len();
        if bytes > limits.kv_max_bytes {
            return Err(KvError::TooManyBytes(limits.kv_max_bytes));
        }
        self.bytes = bytes;
        self.changes.insert(key.clone(), Some(value.clone()));
        self.data.insert(key, value);
        Ok(())
    }

    pub(super) fn delete(&mut self, key: String) {
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

    fn set(&mut self, key: String, value: String) -> Result<(), GuestError> {
        if !self.grant.allows("kv") {
            return Err(self.denied("kv"));
        }
        let limits = self.grant.limits;
        self.kv.set(key, value, &limits).map_err(|e| e.to_string())
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
    ) -> Result<Vec<bindings::pmoflow::plugin::tls::Certificate>, GuestError> {
        if !self.grant.allows("tls") {
            return Err(self.denied("tls"));
        }
        let grant = self.grant.clone();
        let chain = net::peer_certificates(&grant, &address, &server_name)
            .await
            .map_err(|e| e.to_string())?;
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
    async fn query(&mut self, server: String, query: String) -> Result<String, GuestError> {
        if !self.grant.allows("whois") {
            return Err(self.denied("whois"));
        }
        let grant = self.grant.clone();
        net::whois(&grant, &server, &query)
            .await
            .map_err(|e| e.to_string())
    }
}
