//! `action = "request"`: ask people for an answer by email and wait for it, durably.
//!
//! First call: one request per addressee, each with its own single-use token (in the reply
//! address, the Message-ID and the answer link) and a short subject tag; the mails and the request
//! rows are committed with the step's park. Every later call (at a reminder time, at the close, or
//! at once when an answer or a bounce arrived) reads the requests back from the database and
//! decides: all answered → done; reminders due → queue them for those who have not answered;
//! closed → done with 未回答 recorded, or failed when `on_timeout = "fail"`. Every call is
//! idempotent (reminders are keyed by request and number), so a crash anywhere repeats nothing.

mod form;
mod start;

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use serde_json::{Value as Json, json};

use super::deadline::{format_ja, parse_offset};
use super::mail::{StepMail, ack_instructions, step_mail};
use super::{ActionContext, Outcome, Param, StepError, WithProblem, is_dynamic};
use crate::message::email::domain_of;
use crate::message::reply::CUT_MARKER;
use crate::store::{AnswerRow, NewMessage, RequestRow};

pub(crate) const PARAMS: &[Param] = &[
    Param {
        name: "to",
        required: true,
    },
    Param {
        name: "cc",
        required: false,
    },
    Param {
        name: "delegates",
        required: false,
    },
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
        name: "fields",
        required: false,
    },
    Param {
        name: "required",
        required: false,
    },
    Param {
        name: "deadline",
        required: false,
    },
    Param {
        name: "remind",
        required: false,
    },
    Param {
        name: "wait_after_deadline",
        required: false,
    },
    Param {
        name: "on_timeout",
        required: false,
    },
    Param {
        name: "ack",
        required: false,
    },
    Param {
        name: "complete_when",
        required: false,
    },
    Param {
        name: "context",
        required: false,
    },
    Param {
        name: "form",
        required: false,
    },
    Param {
        name: "form_name",
        required: false,
    },
    Param {
        name: "cells",
        required: false,
    },
    Param {
        name: "types",
        required: false,
    },
    Param {
        name: "prefill",
        required: false,
    },
    Param {
        name: "record",
        required: false,
    },
];

const REMIND_HINT: &str = "write offsets from the deadline: \"-1d@10:00\" (the day before at 10:00), \
    \"-3bd\" (3 business days before), \"+1d@09:00\" (a day late), or a table \
    { at = \"+1d\", subject_prefix = \"【再送・要回答】\", cc = [\"…\"] }";

pub(crate) fn check(with: &BTreeMap<String, Json>) -> Vec<WithProblem> {
    let mut problems = form::check(with);
    if with.contains_key("body") && with.contains_key("template") {
        problems.push(WithProblem {
            key: Some("template".into()),
            message: "`request` takes either `body` or `template`, not both".into(),
            hint: None,
        });
    }
    if !with.contains_key("body") && !with.contains_key("template") {
        problems.push(WithProblem {
            key: None,
            message: "action `request` needs `with.body` or `with.template`".into(),
            hint: Some("template = \"status_request.txt\"".into()),
        });
    }
    if let Some(v) = with.get("complete_when").filter(|v| !is_dynamic(v))
        && !matches!(v.as_str(), Some("all" | "any" | "deadline"))
    {
        problems.push(WithProblem {
            key: Some("complete_when".into()),
            message: format!("`complete_when` must be \"all\", \"any\" or \"deadline\", got {v}"),
            hint: None,
        });
    }
    if let Some(v) = with.get("ack").filter(|v| !is_dynamic(v))
        && !v.is_boolean()
    {
        problems.push(WithProblem {
            key: Some("ack".into()),
            message: format!("`ack` must be true or false, got {v}"),
            hint: None,
        });
    }
    if with.get("ack") == Some(&Json::Bool(true)) && with.contains_key("fields") {
        problems.push(WithProblem {
            key: Some("fields".into()),
            message: "an acknowledgement (`ack = true`) asks for no fields".into(),
            hint: Some("remove `fields`/`required`, or `ack`".into()),
        });
    }
    if let Some(v) = with.get("on_timeout").filter(|v| !is_dynamic(v))
        && !matches!(v.as_str(), Some("continue" | "fail"))
    {
        problems.push(WithProblem {
            key: Some("on_timeout".into()),
            message: format!("`on_timeout` must be \"continue\" or \"fail\", got {v}"),
            hint: None,
        });
    }
    for key in ["fields", "required"] {
        if let Some(v) = with.get(key)
            && !is_dynamic(v)
            && !v
                .as_array()
                .is_some_and(|a| a.iter().all(|x| x.as_str().is_some_and(|s| !s.is_empty())))
        {
            problems.push(WithProblem {
                key: Some(key.into()),
                message: format!("`{key}` must be a list of field names"),
                hint: Some("e.g. fields = [\"総合評価\", \"進捗\"]".into()),
            });
        }
    }
    if let (Some(Json::Array(required)), Some(Json::Array(fields))) =
        (with.get("required"), with.get("fields"))
    {
        for r in required {
            if !is_dynamic(r) && !fields.contains(r) {
                problems.push(WithProblem {
                    key: Some("required".into()),
                    message: format!("required field {r} is not in `fields`"),
                    hint: None,
                });
            }
        }
    }
    if let Some(Json::Array(list)) = with.get("remind") {
        for item in list {
            let at = match item {
                Json::Object(m) => m.get("at"),
                other => Some(other),
            };
            let problem = match at {
                Some(v) if is_dynamic(v) => None,
                Some(Json::String(s)) => parse_offset(s).err().map(|e| e.to_string()),
                _ => Some(format!("reminder {item} has no `at` offset")),
            };
            if let Some(message) = problem {
                problems.push(WithProblem {
                    key: Some("remind".into()),
                    message,
                    hint: Some(REMIND_HINT.into()),
                });
            }
        }
    } else if let Some(v) = with.get("remind").filter(|v| !is_dynamic(v)) {
        problems.push(WithProblem {
            key: Some("remind".into()),
            message: format!("`remind` must be a list, got {v}"),
            hint: Some(REMIND_HINT.into()),
        });
    }
    if let Some(v) = with.get("record").filter(|v| !is_dynamic(v)) {
        let ok = v.as_object().is_some_and(|m| {
            m.contains_key("subject")
                && m.contains_key("period")
                && m.keys()
                    .all(|k| ["subject", "period", "name", "owner"].contains(&k.as_str()))
        });
        if !ok {
            problems.push(WithProblem {
                key: Some("record".into()),
                message: format!(
                    "`record` must be a table with `subject` and `period` (and optionally `name`, `owner`), got {v}"
                ),
                hint: Some(
                    "record = { subject = \"{{ item.id }}\", period = \"{{ now[:7] }}\", name = \"{{ item.name }}\" }"
                        .into(),
                ),
            });
        }
    }
    if let Some(v) = with.get("wait_after_deadline").filter(|v| !is_dynamic(v))
        && let Some(message) = match v.as_str() {
            Some(t) if t.contains("bd") || t.contains('@') => {
                parse_offset(&format!("+{}", t.trim_start_matches('+')))
                    .err()
                    .map(|e| e.to_string())
            }
            Some(t) => crate::duration::HumanDuration::parse(t)
                .err()
                .map(|e| e.to_string()),
            None => Some(format!("`wait_after_deadline` must be a duration, got {v}")),
        }
    {
        problems.push(WithProblem {
            key: Some("wait_after_deadline".into()),
            message,
            hint: Some(crate::duration::DURATION_HINT.into()),
        });
    }
    problems
}

fn strings(with: &Json, key: &str) -> Result<Vec<String>, StepError> {
    match with.get(key) {
        None | Some(Json::Null) => Ok(Vec::new()),
        Some(Json::String(s)) if s.trim().is_empty() => Ok(Vec::new()),
        Some(Json::String(s)) => Ok(vec![s.trim().to_string()]),
        Some(Json::Array(a)) => Ok(a
            .iter()
            .filter_map(|v| v.as_str())
            .map(|s| s.trim().to_string())
            .filter(|s| !s.is_empty())
            .collect()),
        Some(other) => Err(StepError::fatal(format!(
            "`with.{key}` must be a string or a list, got {other}"
        ))),
    }
}

/// What the step keeps between calls (committed with each park).
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
struct State {
    deadline: Option<DateTime<Utc>>,
    close_at: DateTime<Utc>,
    on_timeout: String,
    reminders: Vec<Reminder>,
    /// Reminders already queued (a prefix of `reminders`).
    sent: usize,
    text: String,
    cc: Vec<String>,
    single: bool,
    #[serde(default)]
    ack: bool,
    #[serde(default)]
    any: bool,
    /// `complete_when = "deadline"`: wait for the close even when everyone has answered, so
    /// answers can be corrected until then.
    #[serde(default)]
    until_close: bool,
    /// `with.context`, echoed in the output (e.g. the foreach item the request is about).
    #[serde(default)]
    context: Json,
    /// The Excel 様式, sent again with each reminder.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    form: Option<form::FormState>,
}

#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
struct Reminder {
    at: DateTime<Utc>,
    subject_prefix: String,
    cc: Vec<String>,
}

pub(crate) async fn run(cx: &ActionContext<'_>, with: &Json) -> Result<Outcome, StepError> {
    let saved = cx
        .state
        .and_then(|s| s.get("request"))
        .map(|s| serde_json::from_value::<State>(s.clone()));
    match saved {
        Some(Ok(state)) => resume(cx, state).await,
        Some(Err(e)) => Err(StepError::fatal(format!(
            "stored request state unreadable: {e}"
        ))),
        None => start::start(cx, with),
    }
}

fn next_wake(state: &State) -> DateTime<Utc> {
    state
        .reminders
        .get(state.sent)
        .map_or(state.close_at, |r| r.at.min(state.close_at))
}

async fn resume(cx: &ActionContext<'_>, mut state: State) -> Result<Outcome, StepError> {
    let now = cx.clock.now();
    let store = cx
        .store
        .ok_or_else(|| StepError::retryable("no database for a request step"))?;
    let rows = store
        .requests_for_step(cx.run_id, cx.step_key)
        .await
        .map_err(|e| StepError::retryable(e.to_string()))?;
    let tokens: Vec<String> = rows.iter().map(|r| r.token.clone()).collect();
    let open: Vec<&RequestRow> = rows.iter().filter(|r| r.status == "open").collect();
    let first_answer = state.any && rows.iter().any(|r| r.status == "answered");
    let finishing = first_answer
        || (open.is_empty() && !state.until_close)
        || now >= state.close_at
        || rows.iter().any(|r| r.final_at.is_some());
    if finishing {
        // Final first, then read again: an answer that committed before is in the output, and
        // one that comes after is kept as `after_close` (it cannot be accepted unseen).
        store
            .finalize_requests(cx.run_id, cx.step_key, now)
            .await
            .map_err(|e| StepError::retryable(e.to_string()))?;
        let rows = store
            .requests_for_step(cx.run_id, cx.step_key)
            .await
            .map_err(|e| StepError::retryable(e.to_string()))?;
        let answers = store
            .answers_for(&tokens)
            .await
            .map_err(|e| StepError::retryable(e.to_string()))?;
        if first_answer {
            // One acknowledgement (or answer) is enough: the others were not waited for.
            return Ok(Outcome::Done(output(&rows, &answers, &state)));
        }
        let open: Vec<&RequestRow> = rows.iter().filter(|r| r.status == "closed").collect();
        let output = output(&rows, &answers, &state);
        if !open.is_empty() && state.on_timeout == "fail" {
            let who: Vec<&str> = open.iter().map(|r| r.recipient.as_str()).collect();
            return Err(StepError::fatal(format!(
                "未回答 (no answer by the deadline): {}",
                who.join(", ")
            )));
        }
        return Ok(Outcome::Done(output));
    }
    let mut messages = Vec::new();
    while let Some(reminder) = state.reminders.get(state.sent).cloned() {
        if reminder.at > now {
            break;
        }
        let n = state.sent + 1;
        for req in &open {
            messages.extend(reminder_mail(cx, &state, &reminder, n, req)?);
        }
        state.sent = n;
    }
    Ok(Outcome::Suspend {
        until: next_wake(&state),
        state: json!({ "request": state }),
        messages,
        requests: Vec::new(),
    })
}

fn reminder_mail(
    cx: &ActionContext<'_>,
    state: &State,
    reminder: &Reminder,
    n: usize,
    req: &RequestRow,
) -> Result<Vec<NewMessage>, StepError> {
    let tz = cx.services.mail.timezone;
    let domain = domain_of(&cx.services.mail.from);
    // The reminder's prefix replaces the request's own (【要回答】, 【ご依頼】, …).
    let base = ["【要回答】", "【ご依頼】", "【ご連絡】", "【要修正】"]
        .iter()
        .find_map(|p| req.subject.strip_prefix(p))
        .unwrap_or(&req.subject);
    let subject = format!("{}{base}", reminder.subject_prefix);
    let deadline = state.deadline.map(|d| format_ja(d, tz));
    let preface = match (
        deadline,
        reminder.at > state.deadline.unwrap_or(reminder.at),
    ) {
        (Some(d), true) => format!(
            "{d}締切のご回答がまだ確認できておりません。\nお手数をおかけしますが、至急ご回答くださいますようお願いいたします。\n"
        ),
        (Some(d), false) => format!(
            "ご回答の締切（{d}）が近づいております。\nまだご回答いただいていない場合は、ご回答をお願いいたします。\n"
        ),
        (None, _) => "ご回答がまだ確認できておりません。ご回答をお願いいたします。\n".to_string(),
    };
    let answer_url = cx
        .services
        .replies
        .public_url
        .as_ref()
        .map(|u| format!("{u}/answer/{}", req.token));
    let mut text = format!("{CUT_MARKER}\n{preface}\n{}", state.text);
    let form = crate::workbook::types::form_lines(&req.fields, &req.types);
    if !form.is_empty() && !state.text.contains(form.trim_end()) {
        text.push_str("\n\n");
        text.push_str(&form);
    }
    if state.ack {
        text.push_str(&ack_instructions(cx, &req.token));
    } else if let Some(url) = answer_url {
        text.push_str(&format!("\nWebフォームからもご回答いただけます:\n{url}\n"));
    }
    let message_id = format!("pmoflow.{}.r{n}@{domain}", req.token);
    let attachments: Vec<_> = state
        .form
        .as_ref()
        .and_then(|f| form::again(cx, f, &req.fields))
        .into_iter()
        .collect();
    let mut cc = state.cc.clone();
    cc.extend(reminder.cc.iter().cloned());
    step_mail(
        cx,
        StepMail {
            to: &req.recipient,
            cc: &cc,
            reply_token: Some(&req.token),
            subject,
            text,
            message_id: &message_id,
            key: format!("{}:{}:remind:{n}:{}", cx.run_id, cx.step_key, req.recipient),
            attachments,
        },
    )
}

/// Attachment metadata for the step output: the bytes stay in the answers table.
fn without_content(attachments: &Json) -> Json {
    match attachments {
        Json::Array(list) => Json::Array(
            list.iter()
                .map(|a| {
                    let mut a = a.clone();
                    if let Some(m) = a.as_object_mut() {
                        m.remove("content_base64");
                    }
                    a
                })
                .collect(),
        ),
        other => other.clone(),
    }
}

/// Per addressee: status, when, the fields and text of the latest complete answer, its history.
fn output(rows: &[RequestRow], answers: &[AnswerRow], state: &State) -> Json {
    let per: Vec<Json> = rows
        .iter()
        .map(|r| {
            let mine: Vec<&AnswerRow> = answers.iter().filter(|a| a.token == r.token).collect();
            let latest = r
                .answer_id
                .as_ref()
                .and_then(|id| mine.iter().find(|a| &a.id == id));
            let status = match (r.status.as_str(), latest) {
                ("bounced", _) => "bounced",
                (_, Some(_)) if state.ack => "acknowledged",
                (_, Some(a)) if a.late => "late",
                (_, Some(_)) => "answered",
                _ if state.ack => "unacknowledged",
                _ => "unanswered",
            };
            json!({
                "to": r.recipient,
                "status": status,
                "status_ja": match status {
                    "answered" => "回答済",
                    "acknowledged" => "確認済",
                    "unacknowledged" => "未確認",
                    "late" => "遅延回答",
                    "bounced" => "不達",
                    _ => "未回答",
                },
                "answered_at": latest.map(|a| a.received_at.to_rfc3339()),
                "via": latest.map(|a| a.via.clone()),
                "fields": latest.map_or_else(|| json!({}), |a| a.fields.clone()),
                "text": latest.map_or("", |a| a.text.as_str()),
                "attachments": latest.map_or_else(|| json!([]), |a| without_content(&a.attachments)),
                "message_id": latest.and_then(|a| a.message_id.clone()),
                "from": latest.and_then(|a| a.from.clone()),
                "bounce": r.bounce,
                "request_message_id": format!("<{}>", r.message_id),
                "tag": r.tag,
                "context": state.context,
                "history": mine.iter().map(|a| json!({
                    "received_at": a.received_at.to_rfc3339(),
                    "via": a.via,
                    "from": a.from,
                    "fields": a.fields,
                    "text": a.text,
                    "late": a.late,
                })).collect::<Vec<_>>(),
            })
        })
        .collect();
    if state.single && per.len() == 1 {
        per.into_iter().next().unwrap_or(Json::Null)
    } else {
        Json::Array(per)
    }
}
