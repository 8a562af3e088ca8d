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

use chrono::{DateTime, Utc};
use serde_json::{Value as Json, json};

use super::deadline::{format_ja, parse_deadline};
use super::mail::{RequestIds, StepMail, ack_instructions, render_body, step_mail};
use super::{ActionContext, Outcome, Param, StepError, WithProblem, is_dynamic, str_param};
use crate::message::correlate;
use crate::message::email::{bare, domain_of};
use crate::message::reply::CUT_MARKER;
use crate::store::{AnswerRow, NewRequest, RequestRow};
use crate::store::{MessageKind, NewMessage};

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
                        if !matches!(v.as_str(), Some("email" | "webhook")) {
                            push(
                                "levels",
                                format!(
                                    "level {}: `via` takes \"email\" and \"webhook\", got {v}",
                                    i + 1
                                ),
                                None,
                            );
                        }
                    }
                    if via.iter().any(|v| v == "webhook") && !with.contains_key("webhook") {
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
        if !w.contains_key("url") {
            push("webhook", "`webhook` needs `url`".into(), None);
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

fn dur(with: &Json, key: &str) -> Result<Option<chrono::Duration>, StepError> {
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
        Some(Ok(state)) => resume(cx, state).await,
        Some(Err(e)) => Err(StepError::fatal(format!(
            "stored escalation state unreadable: {e}"
        ))),
        None => start(cx, with),
    }
}

fn start(cx: &ActionContext<'_>, with: &Json) -> Result<Outcome, StepError> {
    let now = cx.clock.now();
    let tz = cx.services.mail.timezone;
    let subject = str_param(with, "subject")?
        .unwrap_or_default()
        .trim()
        .to_string();
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
        let wait = match l.get("wait").and_then(Json::as_str) {
            Some(w) => crate::duration::HumanDuration::parse(w.trim())
                .map_err(|e| StepError::fatal(format!("level {}: {e}", i + 1)))?
                .to_chrono(),
            None => chrono::Duration::minutes(15),
        };
        levels.push(Level {
            notify,
            email: via.contains(&"email"),
            webhook: via.contains(&"webhook"),
            wait_s: wait.num_seconds(),
        });
    }
    if levels.is_empty() {
        return Err(StepError::fatal("`with.levels` is empty"));
    }
    let webhook = with.get("webhook").filter(|w| !w.is_null()).cloned();
    if levels.iter().any(|l| l.webhook) && webhook.is_none() {
        return Err(StepError::fatal(
            "a level notifies by webhook but the step has no `webhook`",
        ));
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
    let repeat = match with.get("repeat") {
        None | Some(Json::Null) => 0,
        Some(Json::Number(n)) => u32::try_from(n.as_u64().unwrap_or(0).min(100)).unwrap_or(0),
        Some(Json::String(s)) => s
            .trim()
            .parse()
            .map_err(|_| StepError::fatal(format!("`repeat` must be a number, got `{s}`")))?,
        Some(other) => {
            return Err(StepError::fatal(format!(
                "`repeat` must be a number, got {other}"
            )));
        }
    };
    let ack_timeout = dur(with, "ack_timeout")?;
    let updates_every = dur(with, "updates_every")?.filter(|d| *d > chrono::Duration::zero());
    let inform = addresses(cx, with.get("inform").unwrap_or(&Json::Null), "inform")?;
    let mut timers = Vec::new();
    if let Some(Json::Array(list)) = with.get("timers") {
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
                notify = levels[0].notify.clone();
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
    }
    let text = render_body(cx, with, &json!({}))?;
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
    let mut requests = Vec::new();
    // The hidden request that `pmoflow resolve` / the API answer; its token is never mailed.
    let resolve_token = correlate::new_token().map_err(|e| StepError::retryable(e.to_string()))?;
    requests.push(NewRequest {
        token: resolve_token.clone(),
        workflow_id: cx.workflow_id.to_string(),
        kind: "resolve".into(),
        recipient: "resolve".into(),
        allowed: Vec::new(),
        tag: fastrand::i64(10_000..1_000_000),
        message_id: correlate::message_id(&resolve_token, "resolve.invalid"),
        subject: state.subject.clone(),
        fields: vec!["note".into()],
        required: Vec::new(),
        deadline: None,
        expires_at: now + chrono::Duration::days(3650),
    });
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

/// Alerts the current level: one acknowledgement request (and mail) per person, and the webhook.
fn open_level(
    cx: &ActionContext<'_>,
    state: &mut State,
    messages: &mut Vec<NewMessage>,
    requests: &mut Vec<NewRequest>,
) -> Result<(), StepError> {
    let prefix = state.prefix.clone();
    let now = cx.clock.now();
    let tz = cx.services.mail.timezone;
    let level = state.levels[state.level].clone();
    state.seq += 1;
    let seq = state.seq;
    let stage = if state.level == 0 && state.pass == 0 {
        String::new()
    } else {
        format!(
            "\n※ エスカレーション（第{}段階{}）: {}までに確認の応答がなかったため通知しています。\n",
            state.level + 1,
            if state.pass > 0 {
                format!("・{}巡目", state.pass + 1)
            } else {
                String::new()
            },
            format_ja(now, tz)
        )
    };
    let subject = format!("{prefix}{}", state.subject);
    if level.email {
        for addr in &level.notify {
            let RequestIds {
                token,
                tag,
                message_id,
            } = RequestIds::new(cx)?;
            let full_subject = format!("{subject} {}", correlate::subject_tag(tag as u64));
            let text = format!(
                "{CUT_MARKER}\n{}\n{stage}{}",
                state.text,
                ack_instructions(cx, &token)
            );
            let recipient = bare(addr);
            messages.push(step_mail(
                cx,
                StepMail {
                    to: addr,
                    cc: &[],
                    reply_token: Some(&token),
                    subject: full_subject.clone(),
                    text,
                    message_id: &message_id,
                    key: format!("{}:{}:esc:{seq}:{recipient}", cx.run_id, cx.step_key),
                },
            )?);
            requests.push(NewRequest {
                token: token.clone(),
                workflow_id: cx.workflow_id.to_string(),
                kind: "ack".into(),
                recipient: recipient.clone(),
                allowed: vec![recipient],
                tag,
                message_id,
                subject: full_subject,
                fields: Vec::new(),
                required: Vec::new(),
                deadline: None,
                expires_at: now
                    + chrono::Duration::days(30)
                    + chrono::Duration::from_std(cx.services.replies.token_ttl).unwrap_or_default(),
            });
            state.round.push(token);
        }
    }
    if level.webhook {
        let names = level.notify.join(", ");
        let text = format!("{subject}\n{}\n通知先: {names}{stage}", state.text);
        messages.push(webhook_message(cx, state, seq, &subject, &text)?);
    }
    for a in &level.notify {
        if !state.notified.iter().any(|n| bare(n) == bare(a)) {
            state.notified.push(a.clone());
        }
    }
    state.level_until = Some(now + chrono::Duration::seconds(level.wait_s));
    state.events.push(Event {
        at: now,
        what: format!("level {}", state.level + 1),
        detail: format!(
            "pass {}: {}",
            state.pass + 1,
            level
                .notify
                .iter()
                .map(|a| bare(a))
                .collect::<Vec<_>>()
                .join(", ")
        ),
    });
    Ok(())
}

fn webhook_message(
    cx: &ActionContext<'_>,
    state: &State,
    seq: u32,
    title: &str,
    text: &str,
) -> Result<NewMessage, StepError> {
    let Some(w) = &state.webhook else {
        return Err(StepError::fatal("no `webhook` configured for this chain"));
    };
    let url = w
        .get("url")
        .and_then(Json::as_str)
        .unwrap_or_default()
        .to_string();
    if !(url.starts_with("https://") || url.starts_with("http://")) {
        return Err(StepError::fatal(format!(
            "`webhook.url` must be an http(s) URL, got `{url}`"
        )));
    }
    let body = match w.get("format").and_then(Json::as_str).unwrap_or("json") {
        "slack" => crate::message::webhook::slack(text),
        "teams" => crate::message::webhook::teams(Some(title), text),
        _ => json!({ "title": title, "text": text, "run_id": cx.run_id }),
    };
    let key = format!("{}:{}:esc:{seq}:webhook", cx.run_id, cx.step_key);
    Ok(NewMessage {
        kind: MessageKind::Webhook,
        key: key.clone(),
        target: url.clone(),
        message_id: key,
        payload: json!({
            "url": url,
            "headers": w.get("headers").cloned().unwrap_or_else(|| json!({})),
            "body": body.to_string(),
            "secret": w.get("secret").and_then(Json::as_str),
        }),
    })
}

/// A status mail (続報, 最終報, timer notices) to `to`, no acknowledgement asked; and to the
/// webhook when the chain has one.
fn notice(
    cx: &ActionContext<'_>,
    state: &mut State,
    messages: &mut Vec<NewMessage>,
    prefix: &str,
    to: &[String],
    body: &str,
    webhook: bool,
) -> Result<(), StepError> {
    let domain = domain_of(&cx.services.mail.from);
    state.seq += 1;
    let seq = state.seq;
    let subject = format!("{prefix}{}", state.subject);
    for addr in to {
        let recipient = bare(addr);
        let message_id = format!(
            "pmoflow.{}.{}.n{seq}.{}@{domain}",
            cx.run_id,
            cx.step_key.replace(['[', ']'], "_"),
            recipient.replace('@', "=")
        );
        messages.push(step_mail(
            cx,
            StepMail {
                to: addr,
                cc: &[],
                reply_token: None,
                subject: subject.clone(),
                text: body.to_string(),
                message_id: &message_id,
                key: format!("{}:{}:esc:{seq}:{recipient}", cx.run_id, cx.step_key),
            },
        )?);
    }
    if webhook && state.webhook.is_some() {
        messages.push(webhook_message(cx, state, seq, &subject, body)?);
    }
    Ok(())
}

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

fn status_lines(state: &State, tz: chrono_tz::Tz) -> String {
    let mut s = format!("発生: {}\n", format_ja(state.opened_at, tz));
    match &state.acked {
        Some(a) => s.push_str(&format!(
            "確認: {} 様が{}に確認（{}）\n",
            a.by,
            format_ja(a.at, tz),
            via_ja(&a.via)
        )),
        None => s.push_str("確認: まだ確認の応答がありません\n"),
    }
    s.push_str(&format!(
        "通知済み: {}\n",
        state
            .notified
            .iter()
            .map(|a| bare(a))
            .collect::<Vec<_>>()
            .join(", ")
    ));
    s
}

/// The first report, quoted under the status of a later one.
fn first_report(text: &str) -> String {
    format!("\n――――― 第一報の内容（再掲） ―――――\n{text}\n")
}

fn via_ja(via: &str) -> &'static str {
    match via {
        "email" => "メール返信",
        "web" => "確認リンク",
        "api" => "API",
        "cli" => "コマンド",
        _ => "その他",
    }
}

async fn resume(cx: &ActionContext<'_>, mut state: State) -> Result<Outcome, StepError> {
    let now = cx.clock.now();
    let tz = cx.services.mail.timezone;
    let store = cx
        .store
        .ok_or_else(|| StepError::retryable("no database for an escalation step"))?;
    let rows = store
        .requests_for_step(cx.run_id, cx.step_key)
        .await
        .map_err(|e| StepError::retryable(e.to_string()))?;
    let tokens: Vec<String> = rows.iter().map(|r| r.token.clone()).collect();
    let answers = store
        .answers_for(&tokens)
        .await
        .map_err(|e| StepError::retryable(e.to_string()))?;
    let mut messages = Vec::new();
    let mut requests = Vec::new();

    // An acknowledgement in the current round stops every pending level at once.
    if state.acked.is_none()
        && let Some((row, answer)) = first_answer(&rows, &answers, &state.round)
    {
        let level = state
            .levels
            .iter()
            .position(|l| l.notify.iter().any(|a| bare(a) == row.recipient))
            .unwrap_or(state.level);
        let ack = Ack {
            by: answer.from.clone().unwrap_or_else(|| row.recipient.clone()),
            via: answer.via.clone(),
            at: answer.received_at,
            level,
        };
        state.events.push(Event {
            at: ack.at,
            what: "acknowledged".into(),
            detail: format!("{} via {}", ack.by, ack.via),
        });
        state.acks.push(ack.clone());
        state.acked = Some(ack.clone());
        state.level_until = None;
        state.round.clear();
        state.realert_at = state
            .ack_timeout_s
            .map(|s| ack.at + chrono::Duration::seconds(s));
        store
            .close_requests_of_kind(cx.run_id, cx.step_key, "ack")
            .await
            .map_err(|e| StepError::retryable(e.to_string()))?;
    }

    // Resolved: the 最終報 to everyone alerted and informed, and the step ends.
    if let Some(row) = rows
        .iter()
        .find(|r| r.kind == "resolve" && r.status == "answered")
    {
        let answer = answers.iter().rev().find(|a| a.token == row.token);
        let at = answer.map_or(now, |a| a.received_at);
        let by = answer.and_then(|a| a.from.clone()).unwrap_or_default();
        let note = answer
            .and_then(|a| {
                a.fields
                    .get("note")
                    .and_then(Json::as_str)
                    .map(str::to_string)
            })
            .unwrap_or_default();
        store
            .close_requests_of_kind(cx.run_id, cx.step_key, "ack")
            .await
            .map_err(|e| StepError::retryable(e.to_string()))?;
        state.events.push(Event {
            at,
            what: "resolved".into(),
            detail: by.clone(),
        });
        let mut to = state.notified.clone();
        to.extend(state.inform.iter().cloned());
        to.dedup_by(|a, b| bare(a) == bare(b));
        let pending: Vec<String> = state
            .timers
            .iter()
            .filter(|t| t.due > at)
            .map(|t| {
                format!(
                    "・{}: {}まで（引き続き対応が必要です）\n",
                    t.name,
                    format_ja(t.due, tz)
                )
            })
            .collect();
        let body = format!(
            "関係者各位\n\nお疲れ様です。下記の事案について、対応を完了しましたのでご報告します（最終報）。\n\n記\n{}収束: {}（{}）\n{}{}\n以上\n{}",
            status_lines(&state, tz),
            format_ja(at, tz),
            if by.is_empty() {
                "-".to_string()
            } else {
                by.clone()
            },
            if note.is_empty() {
                String::new()
            } else {
                format!("対応内容: {note}\n")
            },
            if pending.is_empty() {
                String::new()
            } else {
                format!("\n未了の期限:\n{}", pending.concat())
            },
            first_report(&state.text),
        );
        notice(
            cx,
            &mut state,
            &mut messages,
            "【最終報】",
            &to,
            &body,
            true,
        )?;
        let output = json!({
            "status": "resolved",
            "opened_at": state.opened_at.to_rfc3339(),
            "resolved_at": at.to_rfc3339(),
            "resolved_by": by,
            "note": note,
            "acknowledged": state.acks.first().map(ack_json),
            "acks": state.acks.iter().map(ack_json).collect::<Vec<_>>(),
            "notified": state.notified.iter().map(|a| bare(a)).collect::<Vec<_>>(),
            "updates": state.updates,
            "events": state.events.iter().map(|e| json!({ "at": e.at.to_rfc3339(), "what": e.what, "detail": e.detail })).collect::<Vec<_>>(),
        });
        return Ok(Outcome::Emit(output, messages));
    }

    // Acknowledged but not resolved in time: the chain starts again.
    if state.acked.is_some() && state.realert_at.is_some_and(|t| now >= t) {
        state.events.push(Event {
            at: now,
            what: "ack timeout".into(),
            detail: "acknowledged but not resolved: the chain starts again".into(),
        });
        state.acked = None;
        state.realert_at = None;
        state.pass = 0;
        state.level = 0;
        state.prefix = "【再通知】".into();
        open_level(cx, &mut state, &mut messages, &mut requests)?;
    }

    // No acknowledgement: the next level when the current one's wait is over.
    while state.acked.is_none() && state.level_until.is_some_and(|t| now >= t) {
        if state.level + 1 < state.levels.len() {
            state.level += 1;
        } else if state.pass < state.repeat {
            state.pass += 1;
            state.level = 0;
            state.prefix = "【緊急・再通知】".into();
        } else {
            state.level_until = None;
            state.events.push(Event {
                at: now,
                what: "exhausted".into(),
                detail: "nobody acknowledged; the chain has no more levels".into(),
            });
            break;
        }
        open_level(cx, &mut state, &mut messages, &mut requests)?;
    }

    // 続報 on their schedule, to everyone alerted so far and those informed.
    if let (Some(every), Some(mut at)) = (state.updates_every_s, state.next_update) {
        let every = chrono::Duration::seconds(every.max(60));
        let mut due = 0;
        while at <= now {
            due += 1;
            at += every;
        }
        if due > 0 {
            // Missed updates (the daemon was down) are folded into one.
            state.updates += 1;
            let n = state.updates;
            let mut to = state.notified.clone();
            to.extend(state.inform.iter().cloned());
            to.dedup_by(|a, b| bare(a) == bare(b));
            let body = format!(
                "関係者各位\n\nお疲れ様です。下記の事案について、現時点の状況をお知らせします（続報 第{n}報）。\n\n記\n{}\n以上\n{}",
                status_lines(&state, tz),
                first_report(&state.text)
            );
            notice(
                cx,
                &mut state,
                &mut messages,
                &format!("【続報{n}】"),
                &to,
                &body,
                true,
            )?;
            state.events.push(Event {
                at: now,
                what: format!("update {n}"),
                detail: String::new(),
            });
        }
        state.next_update = Some(at);
    }

    // Deadline timers.
    for i in 0..state.timers.len() {
        let mut sent_now = None;
        {
            let t = &mut state.timers[i];
            while t.at.get(t.sent).is_some_and(|a| *a <= now) {
                t.sent += 1;
                sent_now = Some(t.clone());
            }
        }
        if let Some(t) = sent_now {
            let reached = t.sent >= t.at.len();
            let prefix = if reached {
                "【期限到来】"
            } else {
                "【期限通知】"
            };
            let body = format!(
                "関係者各位\n\nお疲れ様です。下記の事案について、{}の期限{}。\n\n期限: {}\n\n以上\n{}",
                t.name,
                if reached {
                    "が到来しました。至急ご対応ください"
                } else {
                    "が近づいています"
                },
                format_ja(t.due, tz),
                first_report(&state.text)
            );
            let to = t.notify.clone();
            notice(
                cx,
                &mut state,
                &mut messages,
                &format!("{prefix}{}：", t.name),
                &to,
                &body,
                false,
            )?;
            state.events.push(Event {
                at: now,
                what: format!("timer {}", t.name),
                detail: if reached { "due" } else { "reminder" }.into(),
            });
        }
    }

    Ok(Outcome::Suspend {
        until: next_wake(&state, now),
        state: json!({ "escalate": state }),
        messages,
        requests,
    })
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
