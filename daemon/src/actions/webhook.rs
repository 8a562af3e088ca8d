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
        required: false,
    },
    Param {
        name: "url_secret",
        required: false,
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
    Param {
        name: "oauth2",
        required: false,
    },
];

/// The chat presets of `format` (besides plain `json`).
pub(crate) const CHAT_FORMATS: &[&str] = &["slack", "teams", "line-works"];

pub(crate) fn check(with: &BTreeMap<String, Json>) -> Vec<WithProblem> {
    let mut problems = Vec::new();
    let format = with.get("format").and_then(Json::as_str);
    if let Some(f) = with.get("format").filter(|v| !is_dynamic(v))
        && !matches!(f.as_str(), Some("json" | "slack" | "teams" | "line-works"))
    {
        problems.push(WithProblem {
            key: Some("format".into()),
            message: format!("unknown webhook format {f}"),
            hint: Some("use \"json\" (default), \"slack\", \"teams\" or \"line-works\"".into()),
        });
    }
    if format == Some("line-works") && !with.contains_key("oauth2") {
        problems.push(WithProblem {
            key: Some("format".into()),
            message: "format \"line-works\" needs `with.oauth2`: the [oauth2.NAME] (provider line-works) whose token the bot posts with".into(),
            hint: Some("e.g. oauth2 = \"lineworks\", url = \"https://www.worksapis.com/v1.0/bots/BOT_ID/channels/CHANNEL_ID/messages\"".into()),
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
            hint: Some(if format.is_some_and(|f| CHAT_FORMATS.contains(&f)) {
                "presets take `text` (and `title`, `facts`, `links`)".into()
            } else {
                "json = { … } sends that object".into()
            }),
        });
    }
    if with.contains_key("url") == with.contains_key("url_secret") {
        problems.push(WithProblem {
            key: None,
            message: "action `webhook` needs exactly one of `with.url` or `with.url_secret`".into(),
            hint: Some(
                "url_secret = \"NAME\" posts to the URL kept as secret NAME in pmoflow.toml (for URLs that carry their own signature, like Teams Workflows)"
                    .into(),
            ),
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
    let destination = Destination::of(cx, str_param(with, "url")?, str_param(with, "url_secret")?)?;
    let text = str_param(with, "text")?;
    let body = match (
        str_param(with, "format")?.unwrap_or("json"),
        with.get("json"),
        str_param(with, "body")?,
        text,
    ) {
        ("slack", _, _, Some(t)) => webhook::slack(&chat_post(with, t)?).to_string(),
        ("teams", _, _, Some(t)) => webhook::teams(&chat_post(with, t)?).to_string(),
        ("line-works", _, _, Some(t)) => webhook::line_works(&chat_post(with, t)?).to_string(),
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
    let headers: serde_json::Map<String, Json> = super::header_pairs(with)?
        .into_iter()
        .map(|(k, v)| (k, Json::String(v)))
        .collect();
    let message_id = format!("{}:{}", cx.run_id, cx.step_key);
    let oauth2 = str_param(with, "oauth2")?;
    let mut payload =
        json!({ "headers": headers, "body": body, "secret": secret, "oauth2": oauth2 });
    destination.put(&mut payload);
    let message = NewMessage {
        kind: MessageKind::Webhook,
        key: message_id.clone(),
        target: destination.target(),
        message_id: message_id.clone(),
        payload,
    };
    Ok(Outcome::Emit(
        json!({ "url": destination.target(), "idempotency_key": message_id }),
        vec![message],
    ))
}

/// Where a webhook goes: a URL written in the workflow, or one kept as a secret (a Teams
/// Workflows URL carries its own signature: whoever has it can post). A secret URL is resolved
/// only when the post is delivered; the outbox, the logs and the step output show `secret:NAME`.
pub(crate) enum Destination {
    /// The URL as written.
    Url(String),
    /// The name of the secret that holds the URL.
    Secret(String),
}

impl Destination {
    /// From `url` or `url_secret` (exactly one), checked.
    pub(crate) fn of(
        cx: &ActionContext<'_>,
        url: Option<&str>,
        url_secret: Option<&str>,
    ) -> Result<Self, StepError> {
        match (url, url_secret) {
            (Some(url), None) => {
                if !(url.starts_with("https://") || url.starts_with("http://")) {
                    return Err(StepError::fatal(format!(
                        "`url` must be an http(s) URL, got `{url}`"
                    )));
                }
                // Refused now rather than dead-lettered later (the transport checks again,
                // with the resolved addresses).
                cx.services
                    .egress
                    .check_url(url)
                    .map_err(|e| StepError::fatal(format!("webhook to {url} refused: {e}")))?;
                Ok(Self::Url(url.to_string()))
            }
            (None, Some(name)) => {
                let Some(value) = cx.services.secrets.get(name) else {
                    return Err(StepError::fatal(format!(
                        "secret `{name}` is not configured (add it under [secrets] in pmoflow.toml)"
                    )));
                };
                let v = value.expose();
                if !(v.starts_with("https://") || v.starts_with("http://")) {
                    return Err(StepError::fatal(format!(
                        "secret `{name}` does not hold an http(s) URL"
                    )));
                }
                Ok(Self::Secret(name.to_string()))
            }
            _ => Err(StepError::fatal(
                "a webhook needs exactly one of `url` or `url_secret`",
            )),
        }
    }

    /// What the outbox and the logs show.
    pub(crate) fn target(&self) -> String {
        match self {
            Self::Url(u) => u.clone(),
            Self::Secret(name) => format!("secret:{name}"),
        }
    }

    /// Puts the destination in an outbox payload (`url`, or `url_secret` for the transport to
    /// resolve).
    pub(crate) fn put(&self, payload: &mut Json) {
        if let Some(map) = payload.as_object_mut() {
            match self {
                Self::Url(u) => map.insert("url".into(), json!(u)),
                Self::Secret(name) => map.insert("url_secret".into(), json!(name)),
            };
        }
    }
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
