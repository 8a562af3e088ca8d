//! `action = "webhook"`: a JSON POST through the outbox, signed with HMAC-SHA256 when a secret
//! is named, with Slack (Block Kit) and Microsoft Teams (Workflows, Adaptive Card) presets.

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
        name: "facts",
        required: false,
    },
    Param {
        name: "links",
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
        ("slack", _, _, Some(t)) => webhook::slack(&chat_post(with, t)?).to_string(),
        ("teams", _, _, Some(t)) => webhook::teams(&chat_post(with, t)?).to_string(),
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

/// `title`, `text`, `facts` (a table of label = value) and `links` (a list of
/// `{ title, url }`) of a chat preset.
fn chat_post(with: &Json, text: &str) -> Result<webhook::ChatPost, StepError> {
    let facts = match with.get("facts") {
        None | Some(Json::Null) => Vec::new(),
        Some(Json::Object(m)) => m
            .iter()
            .map(|(k, v)| {
                let v = match v {
                    Json::String(s) => s.clone(),
                    other => other.to_string(),
                };
                (k.clone(), v)
            })
            .collect(),
        Some(other) => {
            return Err(StepError::fatal(format!(
                "`with.facts` must be a table of label = value, got {other}"
            )));
        }
    };
    let mut links = Vec::new();
    if let Some(list) = with.get("links").filter(|l| !l.is_null()) {
        let Some(list) = list.as_array() else {
            return Err(StepError::fatal(
                "`with.links` must be a list of { title, url }",
            ));
        };
        for l in list {
            let (Some(title), Some(url)) = (
                l.get("title").and_then(Json::as_str),
                l.get("url").and_then(Json::as_str),
            ) else {
                return Err(StepError::fatal(format!(
                    "a link needs `title` and `url`, got {l}"
                )));
            };
            if !(url.starts_with("https://") || url.starts_with("http://")) {
                return Err(StepError::fatal(format!(
                    "link `{title}`: `url` must be an http(s) URL, got `{url}`"
                )));
            }
            links.push((title.to_string(), url.to_string()));
        }
    }
    Ok(webhook::ChatPost {
        title: str_param(with, "title")?.map(str::to_string),
        text: text.to_string(),
        facts,
        links,
    })
}
