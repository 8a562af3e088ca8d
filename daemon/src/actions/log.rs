//! `action = "log"`: a message into the daemon log and the step output.
//!
//! The message is written to the log only after the step's success is committed, so a crash can
//! never make one step log twice.

use std::collections::BTreeMap;

use serde_json::{Value as Json, json};

use super::{ActionContext, Outcome, Param, StepError, WithProblem, is_dynamic, str_param};

pub(crate) const PARAMS: &[Param] = &[
    Param {
        name: "message",
        required: true,
    },
    Param {
        name: "level",
        required: false,
    },
];

const LEVELS: &[&str] = &["trace", "debug", "info", "warn", "error"];

pub(crate) fn check(with: &BTreeMap<String, Json>) -> Vec<WithProblem> {
    let mut problems = Vec::new();
    if let Some(level) = with.get("level").filter(|v| !is_dynamic(v))
        && !level.as_str().is_some_and(|l| LEVELS.contains(&l))
    {
        problems.push(WithProblem {
            key: Some("level".into()),
            message: format!("unknown log level {level}"),
            hint: Some(format!("use one of: {}", LEVELS.join(", "))),
        });
    }
    if let Some(msg) = with.get("message")
        && !msg.is_string()
    {
        problems.push(WithProblem {
            key: Some("message".into()),
            message: "`message` must be a string".into(),
            hint: None,
        });
    }
    problems
}

pub(crate) fn run(_cx: &ActionContext<'_>, with: &Json) -> Result<Outcome, StepError> {
    let message = str_param(with, "message")?.unwrap_or_default();
    let level = str_param(with, "level")?.unwrap_or("info");
    if !LEVELS.contains(&level) {
        return Err(StepError::fatal(format!("unknown log level `{level}`")));
    }
    Ok(Outcome::Done(json!({ "message": message, "level": level })))
}

pub(crate) fn after_commit(cx: &ActionContext<'_>, output: &Json) {
    let message = output.get("message").and_then(Json::as_str).unwrap_or("");
    let (run, workflow, step) = (cx.run_id, cx.workflow_id, cx.step_key);
    match output.get("level").and_then(Json::as_str).unwrap_or("info") {
        "trace" => tracing::trace!(run, workflow, step, "{message}"),
        "debug" => tracing::debug!(run, workflow, step, "{message}"),
        "warn" => tracing::warn!(run, workflow, step, "{message}"),
        "error" => tracing::error!(run, workflow, step, "{message}"),
        _ => tracing::info!(run, workflow, step, "{message}"),
    }
}
