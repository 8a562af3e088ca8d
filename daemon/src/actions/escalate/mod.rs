//! `action = "escalate"`: an emergency escalation chain, durable and acknowledged.
//!
//! First call: the chain is resolved (roles to addresses) and snapshotted in the step state, the
//! first level is alerted (【緊急・第一報】, one acknowledgement request per person so that each
//! has a token of their own) and a hidden `resolve` request is created, which `pmoflow resolve`
//! and `POST /api/runs/{id}/resolve` answer. Every later call — at the next level's time, an
//! update's time, a timer, or at once when an acknowledgement or the resolution arrives — reads
//! the requests back and decides: resolved → 最終報 and done; acknowledged → the pending levels are
//! cancelled and the ack recorded (who, how, when); an acknowledged incident not resolved within
//! `ack_timeout` → the chain starts again (【再通知】); a level's wait is over → the next level,
//! then the whole chain again `repeat` times. 続報 go out every `updates_every` until the end.
//!
//! Each decision is committed with the park (the state, the mails, the new requests) in one
//! transaction, and every mail's outbox key names its notice number, so a restart in the middle of
//! a wait neither loses nor repeats a level.

use std::collections::BTreeMap;

mod notices;
mod resume;
mod start;

use chrono::{DateTime, Utc};
use serde_json::{Value as Json, json};

use super::{ActionContext, Outcome, Param, StepError, WithProblem, is_dynamic, str_param};
use crate::message::email::bare;
use crate::store::{AnswerRow, RequestRow};

pub(crate) const PARAMS: &[Param] = &[
    Param {
        name: "subject",
        required: true,
    },
    Param {
        name: "body",
        required: false,
    },
    Param {
        name: "template",
        required: false,
    },
    Param {
        name: "levels",
        required: true,
    },
    Param {
        name: "repeat",
        required: false,
    },
    Param {
        name: "ack_timeout",
        required: false,
    },
    Param {
        name: "updates_every",
        required: false,
    },
    Param {
        name: "inform",
        required: false,
    },
    Param {
        name: "webhook",
        required: false,
    },
    Param {
        name: "timers",
        required: false,
    },
];

const LEVEL_HINT: &str = "levels = [ { notify = [\"role:pmo_staff\"], via = [\"email\", \"webhook\"], wait = \"15m\" }, … ]";

fn duration_problem(key: &str, v: &Json) -> Option<String> {
    if is_dynamic(v) {
        return None;
    }
    match v.as_str() {
        Some(t) => crate::duration::HumanDuration::parse(t)
            .err()
            .map(|e| format!("`{key}`: {e}")),
        None => Some(format!("`{key}` must be a duration, got {v}")),
    }
}

pub(crate) fn check(with: &BTreeMap<String, Json>) -> Vec<WithProblem> {
    let mut problems = Vec::new();
    let mut push = |key: &str, message: String, hint: Option<&str>| {
        problems.push(WithProblem {
            key: Some(key.into()),
            message,
            hint: hint.map(str::to_string),
        });
    };
    if with.contains_key("body") && with.contains_key("template") {
        push(
            "template",
            "`escalate` takes either `body` or `template`, not both".into(),
            None,
        );
    }
    match with.get("levels") {
        Some(Json::Array(levels)) if !levels.is_empty() => {
            for (i, level) in levels.iter().enumerate() {
                let Json::Object(m) = level else {
                    push(
                        "levels",
                        format!("level {} must be a table", i + 1),
                        Some(LEVEL_HINT),
                    );
                    continue;
                };
                for k in m.keys() {
                    if !matches!(k.as_str(), "notify" | "via" | "wait") {
                        push(
                            "levels",
                            format!("level {} has no key `{k}` (keys: notify, via, wait)", i + 1),
                            Some(LEVEL_HINT),
                        );
                    }
                }
                if !m.contains_key("notify") {
                    push(
                        "levels",
                        format!("level {} needs `notify`", i + 1),
                        Some(LEVEL_HINT),
                    );
                }
                if let Some(Json::Array(via)) = m.get("via") {
                    for v in via {
                        let known = v.as_str().is_some_and(|v| {
                            v == "email"
                                || v == "webhook"
                                || crate::actions::webhook::CHAT_FORMATS.contains(&v)
                        });
                        if !known {
                            push(
                                "levels",
                                format!(
                                    "level {}: `via` takes \"email\", \"webhook\", \"teams\", \"slack\" and \"line-works\", got {v}",
                                    i + 1
                                ),
                                None,
                            );
                        }
                    }
                    let posts = via.iter().any(|v| {
                        v.as_str().is_some_and(|v| {
                            v == "webhook" || crate::actions::webhook::CHAT_FORMATS.contains(&v)
                        })
                    });
                    if posts && !with.contains_key("webhook") {
                        push(
                            "levels",
                            format!(
                                "level {} notifies by webhook but the step has no `webhook`",
                                i + 1
                            ),
                            Some("webhook = { url = \"https://…\", format = \"teams\" }"),
                        );
                    }
                }
                if let Some(msg) = m.get("wait").and_then(|w| duration_problem("wait", w)) {
                    push(
                        "levels",
                        format!("level {}: {msg}", i + 1),
                        Some(crate::duration::DURATION_HINT),
                    );
                }
            }
        }
        Some(v) if is_dynamic(v) => {}
        Some(_) => push(
            "levels",
            "`levels` must be a non-empty list of tables".into(),
            Some(LEVEL_HINT),
        ),
        None => {}
    }
    for key in ["ack_timeout", "updates_every"] {
        if let Some(msg) = with.get(key).and_then(|v| duration_problem(key, v)) {
            push(key, msg, Some(crate::duration::DURATION_HINT));
        }
    }
    if let Some(v) = with.get("repeat").filter(|v| !is_dynamic(v))
        && v.as_u64().is_none_or(|n| n > 100)
    {
        push(
            "repeat",
            format!("`repeat` must be a whole number 0–100, got {v}"),
            None,
        );
    }
    if let Some(Json::Object(w)) = with.get("webhook") {
        if w.contains_key("url") == w.contains_key("url_secret") {
            push(
                "webhook",
                "`webhook` needs exactly one of `url` or `url_secret`".into(),
                Some(
                    "webhook = { url_secret = \"teams_pmo\", format = \"teams\" } posts to the URL kept as secret `teams_pmo`",
                ),
            );
        }
    } else if let Some(v) = with.get("webhook").filter(|v| !is_dynamic(v)) {
        push(
            "webhook",
            format!("`webhook` must be a table, got {v}"),
            Some("webhook = { url = \"https://…\", format = \"teams\", secret = \"…\" }"),
        );
    }
    if let Some(Json::Array(timers)) = with.get("timers") {
        for t in timers {
            let ok = t.get("name").is_some_and(Json::is_string) && t.get("due").is_some();
            if !ok {
                push(
                    "timers",
                    format!("timer {t} needs `name` and `due`"),
                    Some(
                        "timers = [ { name = \"個人情報保護委員会への速報\", due = \"3d\", notify = [\"role:ciso\"], before = [\"1d\"] } ]",
                    ),
                );
            }
        }
    }
    problems
}

/// One level of the chain, resolved.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
struct Level {
    notify: Vec<String>,
    email: bool,
    webhook: bool,
    /// `via` names a chat format (`teams`, `slack`, `line-works`): the webhook posts in it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    chat: Option<String>,
    wait_s: i64,
}

/// A deadline timer (e.g. the 速報 to the Personal Information Protection Commission).
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
struct Timer {
    name: String,
    due: DateTime<Utc>,
    notify: Vec<String>,
    /// Notice times, ascending (reminders before, then the due time itself).
    at: Vec<DateTime<Utc>>,
    sent: usize,
}

#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
struct Ack {
    by: String,
    via: String,
    at: DateTime<Utc>,
    level: usize,
}

#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
struct Event {
    at: DateTime<Utc>,
    what: String,
    detail: String,
}

/// What the step keeps between calls (committed with each park).
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
struct State {
    subject: String,
    text: String,
    opened_at: DateTime<Utc>,
    levels: Vec<Level>,
    repeat: u32,
    ack_timeout_s: Option<i64>,
    updates_every_s: Option<i64>,
    inform: Vec<String>,
    webhook: Option<Json>,
    timers: Vec<Timer>,
    /// The chain's position: pass (0 = first) and level.
    pass: u32,
    level: usize,
    /// When the current level's wait is over (None once acknowledged or exhausted).
    level_until: Option<DateTime<Utc>>,
    /// Tokens of the acknowledgement requests of the current round.
    round: Vec<String>,
    acked: Option<Ack>,
    acks: Vec<Ack>,
    realert_at: Option<DateTime<Utc>>,
    next_update: Option<DateTime<Utc>>,
    updates: u32,
    /// Everyone alerted so far (they get the 続報 and the 最終報).
    notified: Vec<String>,
    /// Notices sent, for outbox keys.
    seq: u32,
    /// The subject prefix of the current round's alerts.
    #[serde(default)]
    prefix: String,
    events: Vec<Event>,
}

/// `with.KEY` as a duration, if given and not empty.
fn duration_param(with: &Json, key: &str) -> Result<Option<chrono::Duration>, StepError> {
    str_param(with, key)?
        .filter(|s| !s.trim().is_empty())
        .map(|s| {
            crate::duration::HumanDuration::parse(s.trim())
                .map(|d| d.to_chrono())
                .map_err(|e| StepError::fatal(format!("`with.{key}`: {e}")))
        })
        .transpose()
}

fn addresses(cx: &ActionContext<'_>, value: &Json, what: &str) -> Result<Vec<String>, StepError> {
    let mut out: Vec<String> = Vec::new();
    for a in super::email::recipients(cx, &json!({ "v": value }), "v")
        .map_err(|e| StepError::fatal(format!("{what}: {}", e.message)))?
    {
        if !out.iter().any(|o| bare(o) == bare(&a)) {
            out.push(a);
        }
    }
    Ok(out)
}

pub(crate) async fn run(cx: &ActionContext<'_>, with: &Json) -> Result<Outcome, StepError> {
    let saved = cx
        .state
        .and_then(|s| s.get("escalate"))
        .map(|s| serde_json::from_value::<State>(s.clone()));
    match saved {
        Some(Ok(state)) => resume::resume(cx, state).await,
        Some(Err(e)) => Err(StepError::fatal(format!(
            "stored escalation state unreadable: {e}"
        ))),
        None => start::start(cx, with),
    }
}

/// When the step must look again: the earliest of the level's end, the re-alert after an
/// unresolved acknowledgement, the next 続報 and the next timer notice.
fn next_wake(state: &State, now: DateTime<Utc>) -> DateTime<Utc> {
    let timer = state
        .timers
        .iter()
        .filter_map(|t| t.at.get(t.sent).copied())
        .min();
    [
        state.level_until,
        state.realert_at,
        state.next_update,
        timer,
    ]
    .into_iter()
    .flatten()
    .min()
    // Nothing pending (the chain is exhausted, no updates): look again in a day.
    .unwrap_or(now + chrono::Duration::days(1))
}

fn ack_json(a: &Ack) -> Json {
    json!({ "by": a.by, "via": a.via, "at": a.at.to_rfc3339(), "level": a.level + 1 })
}

/// The earliest answer to one of the round's acknowledgement requests.
fn first_answer<'a>(
    rows: &'a [RequestRow],
    answers: &'a [AnswerRow],
    round: &[String],
) -> Option<(&'a RequestRow, &'a AnswerRow)> {
    answers
        .iter()
        .filter(|a| round.contains(&a.token))
        .filter_map(|a| {
            rows.iter()
                .find(|r| r.token == a.token && r.kind == "ack")
                .map(|r| (r, a))
        })
        .min_by_key(|(_, a)| a.received_at)
}
