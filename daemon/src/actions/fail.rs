//! `action = "fail"`: fail the step on purpose (a guard in a workflow, or a test of retries).

use std::collections::BTreeMap;

use serde_json::Value as Json;

use super::{ActionContext, Outcome, Param, StepError, WithProblem, str_param};

pub(crate) const PARAMS: &[Param] = &[
    Param {
        name: "message",
        required: true,
    },
    Param {
        name: "retryable",
        required: false,
    },
];

pub(crate) fn check(with: &BTreeMap<String, Json>) -> Vec<WithProblem> {
    match with.get("retryable") {
        Some(v) if !v.is_boolean() => vec![WithProblem {
            key: Some("retryable".into()),
            message: "`retryable` must be true or false".into(),
            hint: None,
        }],
        _ => Vec::new(),
    }
}

pub(crate) fn run(_cx: &ActionContext<'_>, with: &Json) -> Result<Outcome, StepError> {
    let message = str_param(with, "message")?.unwrap_or("failed by the workflow");
    if with
        .get("retryable")
        .and_then(Json::as_bool)
        .unwrap_or(false)
    {
        Err(StepError::retryable(message))
    } else {
        Err(StepError::fatal(message))
    }
}
