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
