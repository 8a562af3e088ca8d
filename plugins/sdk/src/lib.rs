//! Write pmoflow step plugins in Rust.
//!
//! ```ignore
//! use pmoflow_plugin_sdk::{Context, Descriptor, Guest, StepError, export_plugin};
//!
//! struct Echo;
//!
//! impl Guest for Echo {
//!     fn describe() -> Descriptor { /* … */ }
//!     fn run(ctx: Context, input: String) -> Result<String, StepError> { Ok(input) }
//! }
//!
//! export_plugin!(Echo);
//! ```

#[allow(missing_docs, unsafe_code, clippy::all)]
pub mod bindings {
    wit_bindgen::generate!({
        path: "../wit",
        world: "step",
        pub_export_macro: true,
        export_macro_name: "export_plugin",
        default_bindings_module: "pmoflow_plugin_sdk::bindings",
    });
}

pub use bindings::pmoflow::plugin::log::Level;
pub use bindings::pmoflow::plugin::types::{Context, Descriptor, StepError};
pub use bindings::{Guest, export_plugin};

/// Writes to the step's log.
pub fn log(level: Level, message: &str) {
    bindings::pmoflow::plugin::log::log(level, message);
}

/// The engine's clock, in milliseconds since the Unix epoch.
pub fn now_ms() -> i64 {
    bindings::pmoflow::plugin::clock::now_ms()
}

/// Parses the step input as JSON, or fails with `invalid-input`.
pub fn parse_input(input: &str) -> Result<serde_json::Value, StepError> {
    serde_json::from_str(input)
        .map_err(|e| StepError::InvalidInput(format!("input is not JSON: {e}")))
}

/// Persistent key-value storage private to the plugin (capability `kv`). Writes are committed
/// when `run` returns and dropped if it traps or times out.
pub mod kv {
    use crate::bindings::pmoflow::plugin::kv as imp;

    /// The value of `key`.
    pub fn get(key: &str) -> Option<String> {
        imp::get(key)
    }

    /// Stores `value` under `key`; fails when the grant's quota would be exceeded.
    pub fn set(key: &str, value: &str) -> Result<(), String> {
        imp::set(key, value)
    }

    /// Removes `key`.
    pub fn delete(key: &str) {
        imp::delete(key)
    }

    /// Keys starting with `prefix`, sorted.
    pub fn keys(prefix: &str) -> Vec<String> {
        imp::keys(prefix)
    }
}

/// Outgoing HTTP(S) (capability `http`), limited to the grant's `allow_hosts`.
pub mod http {
    use crate::bindings::pmoflow::plugin::http as imp;
    pub use crate::bindings::pmoflow::plugin::http::{HttpError, Request, Response};

    /// Sends a request.
    pub fn fetch(req: &Request) -> Result<Response, HttpError> {
        imp::fetch(req)
    }

    /// A readable reason: `denied: …`, `timed out: …`, `too large: …`, `failed: …`.
    pub fn reason(e: &HttpError) -> String {
        match e {
            HttpError::Denied(m) => format!("denied: {m}"),
            HttpError::Timeout(m) => format!("timed out: {m}"),
            HttpError::TooLarge(m) => format!("too large: {m}"),
            HttpError::Failed(m) => format!("failed: {m}"),
        }
    }

    /// `GET url` with an `Accept` header.
    pub fn get(url: &str, accept: &str) -> Result<Response, HttpError> {
        fetch(&Request {
            method: "GET".into(),
            url: url.into(),
            headers: vec![("accept".into(), accept.into())],
            body: Vec::new(),
        })
    }
}

/// TLS certificate facts (capability `tls`), limited to the grant's `allow_hosts`.
pub mod tls {
    pub use crate::bindings::pmoflow::plugin::tls::Certificate;

    /// The chain `address` presents for `server_name`, leaf first.
    pub fn peer_certificates(address: &str, server_name: &str) -> Result<Vec<Certificate>, String> {
        crate::bindings::pmoflow::plugin::tls::peer_certificates(address, server_name)
    }
}

/// WHOIS over port 43 (capability `whois`), limited to the grant's `allow_hosts`.
pub fn whois(server: &str, query: &str) -> Result<String, String> {
    bindings::pmoflow::plugin::whois::query(server, query)
}
