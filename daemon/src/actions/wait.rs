//! `action = "wait"`: a durable pause. The deadline is computed once, committed, and survives
//! restarts: a daemon that comes back after the deadline finishes the step at once.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use serde_json::Value as Json;

use super::{ActionContext, Outcome, Param, StepError, WithProblem, is_dynamic, str_param};
use crate::duration::{DURATION_HINT, HumanDuration};

pub(crate) const PARAMS: &[Param] = &[
    Param {
        name: "duration",
        required: false,
    },
    Param {
        name: "until",
        required: false,
    },
];

const UNTIL_HINT: &str = "write an RFC 3339 instant such as \"2027-05-31T17:00:00+09:00\"";

pub(crate) fn check(with: &BTreeMap<String, Json>) -> Vec<WithProblem> {
    let mut problems = Vec::new();
    match (with.get("duration"), with.get("until")) {
        (Some(_), Some(_)) => problems.push(WithProblem {
            key: Some("until".into()),
            message: "`wait` takes either `duration` or `until`, not both".into(),
            hint: None,
        }),
        (None, None) => problems.push(WithProblem {
            key: None,
            message: "action `wait` needs `with.duration` or `with.until`".into(),
            hint: Some("e.g. with = { duration = \"3s\" }".into()),
        }),
        _ => {}
    }
    if let Some(d) = with.get("duration").filter(|v| !is_dynamic(v)) {
        let problem = match d.as_str() {
            Some(text) => HumanDuration::parse(text).err().map(|e| e.to_string()),
            None => Some(format!("`duration` must be a string, got {d}")),
        };
        if let Some(message) = problem {
            problems.push(WithProblem {
                key: Some("duration".into()),
                message,
                hint: Some(DURATION_HINT.into()),
            });
        }
    }
    if let Some(u) = with.get("until").filter(|v| !is_dynamic(v))
        && let Err(e) = parse_until(u)
    {
        problems.push(WithProblem {
            key: Some("until".into()),
            message: e.to_string(),
            hint: Some(UNTIL_HINT.into()),
        });
    }
    problems
}

/// Why `with.until` is not an instant.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
enum UntilError {
    /// Not a string.
    #[error("`until` must be a string, got {0}")]
    NotAString(Json),
    /// Not RFC 3339.
    #[error("invalid `until` instant `{text}`: {error}")]
    NotAnInstant {
        /// As written.
        text: String,
        /// chrono's reason.
        error: chrono::ParseError,
    },
}

fn parse_until(value: &Json) -> Result<DateTime<Utc>, UntilError> {
    let text = value
        .as_str()
        .ok_or_else(|| UntilError::NotAString(value.clone()))?;
    DateTime::parse_from_rfc3339(text.trim())
        .map(|t| t.with_timezone(&Utc))
        .map_err(|error| UntilError::NotAnInstant {
            text: text.to_string(),
            error,
        })
}

pub(crate) fn run(cx: &ActionContext<'_>, with: &Json) -> Result<Outcome, StepError> {
    if let Some(text) = str_param(with, "duration")? {
        let d = HumanDuration::parse(text).map_err(|e| StepError::fatal(e.to_string()))?;
        return Ok(Outcome::WaitUntil(cx.clock.now() + d.to_chrono()));
    }
    match with.get("until") {
        Some(value) => parse_until(value)
            .map(Outcome::WaitUntil)
            .map_err(|e| StepError::fatal(e.to_string())),
        None => Err(StepError::fatal(
            "action `wait` needs `with.duration` or `with.until`",
        )),
    }
}
