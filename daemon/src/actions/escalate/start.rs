//! The first call: read the chain from `with`, snapshot it in the state, create the hidden
//! `resolve` request, inform those who only need to know, and alert the first level.

use chrono::{DateTime, Utc};
use serde_json::{Value as Json, json};

use super::notices::{notice, open_level};
use super::{Event, Level, State, Timer, addresses, duration_param, next_wake};
use crate::actions::deadline::parse_deadline;
use crate::actions::mail::render_body;
use crate::actions::webhook::CHAT_FORMATS;
use crate::actions::{ActionContext, Outcome, StepError, str_param};
use crate::message::correlate;
use crate::store::NewRequest;

pub(super) fn start(cx: &ActionContext<'_>, with: &Json) -> Result<Outcome, StepError> {
    let now = cx.clock.now();
    let subject = str_param(with, "subject")?
        .unwrap_or_default()
        .trim()
        .to_string();
    let levels = levels(cx, with)?;
    let webhook = webhook(cx, with, &levels)?;
    let repeat = repeat(with)?;
    let ack_timeout = duration_param(with, "ack_timeout")?;
    let updates_every =
        duration_param(with, "updates_every")?.filter(|d| *d > chrono::Duration::zero());
    let inform = addresses(cx, with.get("inform").unwrap_or(&Json::Null), "inform")?;
    let timers = timers(cx, with, now, &levels[0].notify)?;
    // The details are optional (the subject names the incident), as documented.
    let text = if with.get("body").is_none() && with.get("template").is_none() {
        String::new()
    } else {
        render_body(cx, with, &json!({}))?
    };
    let mut state = State {
        subject,
        text,
        opened_at: now,
        levels,
        repeat,
        ack_timeout_s: ack_timeout.map(|d| d.num_seconds()),
        updates_every_s: updates_every.map(|d| d.num_seconds()),
        inform,
        webhook,
        timers,
        pass: 0,
        level: 0,
        level_until: None,
        round: Vec::new(),
        acked: None,
        acks: Vec::new(),
        realert_at: None,
        next_update: updates_every.map(|d| now + d),
        updates: 0,
        notified: Vec::new(),
        seq: 0,
        prefix: "【緊急・第一報】".into(),
        events: Vec::new(),
    };
    let mut messages = Vec::new();
    let mut requests = vec![resolve_request(cx, &state.subject, now)?];
    state.events.push(Event {
        at: now,
        what: "opened".into(),
        detail: state.subject.clone(),
    });
    if !state.inform.is_empty() {
        let to = state.inform.clone();
        let body = format!(
            "{}\n\n（情報共有のための送付です。確認のご返信は不要です。）\n",
            state.text
        );
        notice(
            cx,
            &mut state,
            &mut messages,
            "【緊急・第一報】",
            &to,
            &body,
            false,
        )?;
    }
    open_level(cx, &mut state, &mut messages, &mut requests)?;
    let until = next_wake(&state, now);
    Ok(Outcome::Suspend {
        until,
        state: json!({ "escalate": state }),
        messages,
        requests,
    })
}

/// `with.levels`, each with its addresses resolved (roles to people).
fn levels(cx: &ActionContext<'_>, with: &Json) -> Result<Vec<Level>, StepError> {
    let Some(Json::Array(raw_levels)) = with.get("levels") else {
        return Err(StepError::fatal("`with.levels` must be a list of tables"));
    };
    let mut levels = Vec::new();
    for (i, l) in raw_levels.iter().enumerate() {
        let notify = addresses(
            cx,
            l.get("notify").unwrap_or(&Json::Null),
            &format!("level {}", i + 1),
        )?;
        if notify.is_empty() {
            return Err(StepError::fatal(format!("level {} notifies nobody", i + 1)));
        }
        let via: Vec<&str> = match l.get("via") {
            Some(Json::Array(v)) => v.iter().filter_map(Json::as_str).collect(),
            Some(Json::String(s)) => vec![s.as_str()],
            _ => vec!["email"],
        };
        if let Some(bad) = via
            .iter()
            .find(|v| **v != "email" && **v != "webhook" && !CHAT_FORMATS.contains(v))
        {
            return Err(StepError::fatal(format!(
                "level {}: unknown `via` target `{bad}` (email, webhook, teams, slack, line-works)",
                i + 1
            )));
        }
        let wait = match l.get("wait").and_then(Json::as_str) {
            Some(w) => crate::duration::HumanDuration::parse(w.trim())
                .map_err(|e| StepError::fatal(format!("level {}: {e}", i + 1)))?
                .to_chrono(),
            None => chrono::Duration::minutes(15),
        };
        levels.push(Level {
            notify,
            email: via.contains(&"email"),
            webhook: via
                .iter()
                .any(|v| *v == "webhook" || CHAT_FORMATS.contains(v)),
            chat: via
                .iter()
                .find(|v| CHAT_FORMATS.contains(v))
                .map(|v| v.to_string()),
            wait_s: wait.num_seconds(),
        });
    }
    if levels.is_empty() {
        return Err(StepError::fatal("`with.levels` is empty"));
    }
    Ok(levels)
}

/// `with.webhook`, required when a level notifies by webhook; its secret must be configured.
fn webhook(
    cx: &ActionContext<'_>,
    with: &Json,
    levels: &[Level],
) -> Result<Option<Json>, StepError> {
    let mut webhook = with.get("webhook").filter(|w| !w.is_null()).cloned();
    if levels.iter().any(|l| l.webhook) && webhook.is_none() {
        return Err(StepError::fatal(
            "a level notifies by webhook but the step has no `webhook`",
        ));
    }
    // `via = ["teams"]` (or slack, line-works) posts to `webhook` in that format.
    let chats: Vec<&str> = levels.iter().filter_map(|l| l.chat.as_deref()).collect();
    if let (Some(first), Some(Json::Object(w))) = (chats.first(), webhook.as_mut()) {
        let written = w.get("format").and_then(Json::as_str).map(str::to_string);
        for chat in &chats {
            if chat != first || written.as_deref().is_some_and(|f| f != *chat) {
                return Err(StepError::fatal(format!(
                    "levels post via `{chat}` but the chain's webhook is {}; one chain has one chat format",
                    written
                        .as_deref()
                        .map_or_else(|| format!("`{first}`"), |f| format!("format `{f}`"))
                )));
            }
        }
        w.insert("format".into(), json!(first));
    }
    if let Some(name) = webhook
        .as_ref()
        .and_then(|w| w.get("secret"))
        .and_then(Json::as_str)
        && !cx.services.secrets.contains_key(name)
    {
        return Err(StepError::fatal(format!(
            "secret `{name}` is not configured (add it under [secrets] in pmoflow.toml)"
        )));
    }
    Ok(webhook)
}

/// `with.repeat`: how many more times the whole chain runs when nobody acknowledges (at most
/// 100).
fn repeat(with: &Json) -> Result<u32, StepError> {
    match with.get("repeat") {
        None | Some(Json::Null) => Ok(0),
        Some(Json::Number(n)) => Ok(u32::try_from(n.as_u64().unwrap_or(0).min(100)).unwrap_or(0)),
        Some(Json::String(s)) => s
            .trim()
            .parse()
            .map_err(|_| StepError::fatal(format!("`repeat` must be a number, got `{s}`"))),
        Some(other) => Err(StepError::fatal(format!(
            "`repeat` must be a number, got {other}"
        ))),
    }
}

/// `with.timers`: each due time with its notice times (`before` it, then the due time itself);
/// a timer that names nobody notifies the first level.
fn timers(
    cx: &ActionContext<'_>,
    with: &Json,
    now: DateTime<Utc>,
    first_level: &[String],
) -> Result<Vec<Timer>, StepError> {
    let tz = cx.services.mail.timezone;
    let mut timers = Vec::new();
    let Some(Json::Array(list)) = with.get("timers") else {
        return Ok(timers);
    };
    for t in list {
        let name = t
            .get("name")
            .and_then(Json::as_str)
            .unwrap_or("期限")
            .to_string();
        let due_text = match t.get("due") {
            Some(Json::String(s)) => s.clone(),
            other => {
                return Err(StepError::fatal(format!(
                    "timer `{name}`: `due` must be a duration or an instant, got {other:?}"
                )));
            }
        };
        let due = parse_deadline(&due_text, now, tz)
            .map_err(|e| StepError::fatal(format!("timer `{name}`: {e}")))?;
        let mut notify = addresses(
            cx,
            t.get("notify").unwrap_or(&Json::Null),
            &format!("timer `{name}`"),
        )?;
        if notify.is_empty() {
            notify = first_level.to_vec();
        }
        let before: Vec<String> = match t.get("before") {
            Some(Json::Array(a)) => a
                .iter()
                .filter_map(Json::as_str)
                .map(str::to_string)
                .collect(),
            Some(Json::String(s)) => vec![s.clone()],
            _ => vec!["1d".into()],
        };
        let mut at = Vec::new();
        for b in before {
            let d = crate::duration::HumanDuration::parse(b.trim())
                .map_err(|e| StepError::fatal(format!("timer `{name}`: {e}")))?
                .to_chrono();
            if due - d > now {
                at.push(due - d);
            }
        }
        at.push(due);
        at.sort();
        at.dedup();
        timers.push(Timer {
            name,
            due,
            notify,
            at,
            sent: 0,
        });
    }
    Ok(timers)
}

/// The hidden request that `pmoflow resolve` and the API answer; its token is never mailed.
fn resolve_request(
    cx: &ActionContext<'_>,
    subject: &str,
    now: DateTime<Utc>,
) -> Result<NewRequest, StepError> {
    let token = correlate::new_token().map_err(|e| StepError::retryable(e.to_string()))?;
    Ok(NewRequest {
        message_id: correlate::message_id(&token, "resolve.invalid"),
        token,
        workflow_id: cx.workflow_id.to_string(),
        kind: "resolve".into(),
        recipient: "resolve".into(),
        allowed: Vec::new(),
        tag: fastrand::i64(10_000..1_000_000),
        subject: subject.to_string(),
        fields: vec!["note".into()],
        required: Vec::new(),
        deadline: None,
        expires_at: now + chrono::Duration::days(3650),
        form: None,
        types: Default::default(),
        record: None,
    })
}
