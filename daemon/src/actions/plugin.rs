//! `action = "plugin:NAME"`: runs an installed WebAssembly plugin with the rendered `with` table
//! as its JSON input; its JSON output is the step output. See `crate::plugins`.

use serde_json::Value as Json;

use super::{ActionContext, Outcome, StepError};
use crate::plugins::{PluginCall, PluginError};

pub(crate) async fn run(cx: &ActionContext<'_>, with: &Json) -> Result<Outcome, StepError> {
    let name = cx.plugin.unwrap_or_default();
    let Some(host) = &cx.services.plugins else {
        return Err(StepError::fatal(format!(
            "plugin `{name}` is not available (the plugin host did not start)"
        )));
    };
    let call = PluginCall {
        run_id: cx.run_id,
        workflow_id: cx.workflow_id,
        step_key: cx.step_key,
        attempt: cx.attempt,
        now_ms: cx.clock.now().timestamp_millis(),
    };
    let result = host.invoke(name, &call, &with.to_string()).await;
    let outcome = match &result {
        Ok(_) => "ok",
        Err(PluginError::Timeout(_) | PluginError::Memory(_) | PluginError::Size(_)) => "limit",
        Err(_) => "error",
    };
    cx.services.metrics.inc(
        "pmoflow_plugin_invocations_total",
        &[("plugin", name), ("result", outcome)],
    );
    let (output, logs) = match result {
        Ok(ok) => ok,
        Err(PluginError::Step {
            message,
            retryable: true,
        }) => return Err(StepError::retryable(message)),
        Err(PluginError::Timeout(s)) => {
            return Err(StepError::retryable(format!(
                "plugin `{name}` ran past {s} s"
            )));
        }
        Err(e) => return Err(StepError::fatal(format!("plugin `{name}`: {e}"))),
    };
    for (level, message) in &logs {
        let (run, step) = (cx.run_id, cx.step_key);
        match level.as_str() {
            "error" => tracing::error!(run, step, plugin = name, "{message}"),
            "warn" => tracing::warn!(run, step, plugin = name, "{message}"),
            "debug" | "trace" => tracing::debug!(run, step, plugin = name, "{message}"),
            _ => tracing::info!(run, step, plugin = name, "{message}"),
        }
    }
    serde_json::from_str(&output)
        .map(Outcome::Done)
        .map_err(|e| {
            StepError::fatal(format!(
                "plugin `{name}` returned output that is not JSON: {e}"
            ))
        })
}
