//! `action = "webhook"`: a JSON POST through the outbox, signed with HMAC-SHA256 when a secret
//! is named, with Slack and Microsoft Teams presets.

use std::collections::BTreeMap;

use serde_json::{Value as Json, json};

use super::{ActionContext, Outcome, Param, StepError, WithProblem, is_dynamic, str_param};
use crate::message::webhook;
use crate::store::{MessageKind, NewMessage};

pub(crate) const PARAMS: &[Param] = &[
    Param {
        name: "url",
        required: true,
    },
    Param {
        name: "json",
        required: false,
    },
    Param {
        name: "body",
        required: false,
    },
    Param {
        name: "text",
        required: false,
    },
    Param {
        name: "title",
        required: false,
    },
    Param {
        name: "format",
        required: false,
    },
    Param {
        name: "headers",
        required: false,
    },
    Param {
        name: "secret",
        required: false,
    },
];

pub(crate) fn check(with: &BTreeMap<String, Json>) -> Vec<WithProblem> {
    let mut problems = Vec::new();
    let format = with.get("format").and_then(Json::as_str);
    if let Some(f) = with.get("format").filter(|v| !is_dynamic(v))
        && !matches!(f.as_str(), Some("json" | "slack" | "teams"))
    {
        problems.push(WithProblem {
            key: Some("format".into()),
            message: format!("unknown webhook format {f}"),
            hint: Some("use \"json\" (default), \"slack\" or \"teams\"".into()),
        });
    }
    let bodies = ["json", "body", "text"]
        .iter()
        .filter(|k| with.contains_key(**k))
        .count();
    if bodies != 1 {
        problems.push(WithProblem {
            key: None,
            message:
                "action `webhook` needs exactly one of `with.json`, `with.body` or `with.text`"
                    .into(),
            hint: Some(if matches!(format, Some("slack" | "teams")) {
                "presets take `text` (and `title` for Teams)".into()
            } else {
                "json = { … } sends that object".into()
            }),
        });
    }
    if let Some(u) = with.get("url").filter(|v| !is_dynamic(v))
        && !u
            .as_str()
            .is_some_and(|s| s.starts_with("https://") || s.starts_with("http://"))
    {
        problems.push(WithProblem {
            key: Some("url".into()),
            message: format!("`url` must be an http(s) URL, got {u}"),
            hint: None,
        });
    }
    problems
}

pub(crate) fn run(cx: &ActionContext<'_>, with: &Json) -> Result<Outcome, StepError> {
    let url = str_param(with, "url")?.unwrap_or_default().to_string();
    if !(url.starts_with("https://") || url.starts_with("http://")) {
        return Err(StepError::fatal(format!(
            "`url` must be an http(s) URL, got `{url}`"
        )));
    }
    let text = str_param(with, "text")?;
    let body = match (
        str_param(with, "format")?.unwrap_or("json"),
        with.get("json"),
        str_param(with, "body")?,
        text,
    ) {
        ("slack", _, _, Some(t)) => webhook::slack(t).to_string(),
        ("teams", _, _, Some(t)) => webhook::teams(str_param(with, "title")?, t).to_string(),
        (_, Some(j), _, _) => j.to_string(),
        (_, None, Some(b), _) => b.to_string(),
        (_, None, None, Some(t)) => json!({ "text": t }).to_string(),
        _ => {
            return Err(StepError::fatal(
                "action `webhook` needs `with.json`, `with.body` or `with.text`",
            ));
        }
    };
    let secret = str_param(with, "secret")?.map(str::to_string);
    if let Some(name) = &secret
        && !cx.services.secrets.contains_key(name)
    {
        return Err(StepError::fatal(format!(
            "secret `{name}` is not configured (add it under [secrets] in pmoflow.toml)"
        )));
    }
    let headers = with.get("headers").cloned().unwrap_or_else(|| json!({}));
    let message_id = format!("{}:{}", cx.run_id, cx.step_key);
    let message = NewMessage {
        kind: MessageKind::Webhook,
        key: message_id.clone(),
        target: url.clone(),
        message_id: message_id.clone(),
        payload: json!({ "url": url, "headers": headers, "body": body, "secret": secret }),
    };
    Ok(Outcome::Emit(
        json!({ "url": url, "idempotency_key": message_id }),
        vec![message],
    ))
}
