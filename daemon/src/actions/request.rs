//! `action = "request"`: ask people for an answer by email and wait for it, durably.
//!
//! First call: one request per addressee, each with its own single-use token (in the reply
//! address, the Message-ID and the answer link) and a short subject tag; the mails and the request
//! rows are committed with the step's park. Every later call (at a reminder time, at the close, or
//! at once when an answer or a bounce arrived) reads the requests back from the database and
//! decides: all answered → done; reminders due → queue them for those who have not answered;
//! closed → done with 未回答 recorded, or failed when `on_timeout = "fail"`. Every call is
//! idempotent (reminders are keyed by request and number), so a crash anywhere repeats nothing.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use serde_json::{Value as Json, json};

use super::deadline::{apply_offset, format_ja, parse_deadline, parse_offset, wait_after_deadline};
use super::mail::{RequestIds, StepMail, ack_instructions, render_body, step_mail};
use super::{ActionContext, Outcome, Param, StepError, WithProblem, is_dynamic, str_param};
use crate::message::correlate;
use crate::message::email::{bare, domain_of};
use crate::message::reply::CUT_MARKER;
use crate::store::{AnswerRow, NewMessage, NewRequest, RequestRow};

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
];

const REMIND_HINT: &str = "write offsets from the deadline: \"-1d@10:00\" (the day before at 10:00), \
    \"-3bd\" (3 business days before), \"+1d@09:00\" (a day late), or a table \
    { at = \"+1d\", subject_prefix = \"【再送・要回答】\", cc = [\"…\"] }";

pub(crate) fn check(with: &BTreeMap<String, Json>) -> Vec<WithProblem> {
    let mut problems = Vec::new();
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
        None => start(cx, with),
    }
}

fn start(cx: &ActionContext<'_>, with: &Json) -> Result<Outcome, StepError> {
    let now = cx.clock.now();
    let tz = cx.services.mail.timezone;
    let to = super::email::recipients(cx, with, "to")?;
    if to.is_empty() {
        return Err(StepError::fatal("`with.to` names nobody"));
    }
    let cc = super::email::recipients(cx, with, "cc")?;
    let delegates: Vec<String> = super::email::recipients(cx, with, "delegates")?
        .iter()
        .map(|d| bare(d))
        .collect();
    let subject = str_param(with, "subject")?.unwrap_or_default().to_string();
    let ack = with.get("ack").and_then(Json::as_bool).unwrap_or(false);
    let (any, until_close) = complete_when(with)?;
    let fields = if ack {
        Vec::new()
    } else {
        strings(with, "fields")?
    };
    let required = strings(with, "required")?;
    if let Some(r) = required.iter().find(|r| !fields.contains(r)) {
        return Err(StepError::fatal(format!(
            "required field `{r}` is not in `fields`"
        )));
    }
    let deadline = str_param(with, "deadline")?
        .filter(|d| !d.trim().is_empty())
        .map(|d| parse_deadline(d, now, tz))
        .transpose()
        .map_err(|e| StepError::fatal(e.to_string()))?;
    let wait_after = str_param(with, "wait_after_deadline")?
        .map(|t| wait_after_deadline(t, deadline, tz))
        .transpose()
        .map_err(|e| StepError::fatal(e.to_string()))?
        .unwrap_or_else(chrono::Duration::zero);
    let on_timeout = str_param(with, "on_timeout")?
        .unwrap_or("continue")
        .to_string();
    if on_timeout != "continue" && on_timeout != "fail" {
        return Err(StepError::fatal(format!(
            "`on_timeout` must be \"continue\" or \"fail\", got \"{on_timeout}\""
        )));
    }
    let reminders = reminders(cx, with, deadline)?;
    let token_ttl = chrono::Duration::from_std(cx.services.replies.token_ttl).unwrap_or_default();
    let close_at = match deadline {
        Some(d) => d + wait_after,
        None => now + token_ttl,
    };
    let ask = Ask {
        subject,
        form: fields.iter().map(|f| format!("{f}: \n")).collect(),
        fields,
        required,
        deadline,
        cc,
        delegates,
        ack,
        expires_at: close_at + token_ttl,
    };
    let mut requests = Vec::new();
    let mut messages = Vec::new();
    let mut text_for_state = String::new();
    for (i, addr) in to.iter().enumerate() {
        let (message, request, body) = ask.one(cx, with, addr)?;
        if i == 0 {
            text_for_state = body;
        }
        messages.push(message);
        requests.push(request);
    }
    let state = State {
        deadline,
        close_at,
        on_timeout,
        reminders,
        sent: 0,
        text: text_for_state,
        cc: ask.cc,
        single: matches!(with.get("to"), Some(Json::String(s)) if !s.starts_with("role:")),
        ack,
        any,
        until_close,
        context: with.get("context").cloned().unwrap_or(Json::Null),
    };
    let until = next_wake(&state);
    Ok(Outcome::Suspend {
        until,
        state: json!({ "request": state }),
        messages,
        requests,
    })
}

/// `with.complete_when`: `(any, until_close)`.
fn complete_when(with: &Json) -> Result<(bool, bool), StepError> {
    match str_param(with, "complete_when")?.unwrap_or("all") {
        "all" => Ok((false, false)),
        "any" => Ok((true, false)),
        "deadline" => Ok((false, true)),
        other => Err(StepError::fatal(format!(
            "`complete_when` must be \"all\", \"any\" or \"deadline\", got \"{other}\""
        ))),
    }
}

/// `with.remind`: offsets from the deadline (`-1d@10:00`), or tables with `at`,
/// `subject_prefix` and `cc`; those already past are dropped, the rest sorted.
fn reminders(
    cx: &ActionContext<'_>,
    with: &Json,
    deadline: Option<DateTime<Utc>>,
) -> Result<Vec<Reminder>, StepError> {
    let tz = cx.services.mail.timezone;
    let mut reminders = Vec::new();
    let Some(list) = with.get("remind").and_then(Json::as_array) else {
        return Ok(reminders);
    };
    let Some(deadline) = deadline else {
        return Err(StepError::fatal(
            "`remind` needs a `deadline` to count from",
        ));
    };
    for item in list {
        let (at, prefix, rcc) = match item {
            Json::String(s) => (s.clone(), None, Vec::new()),
            Json::Object(m) => (
                m.get("at").and_then(Json::as_str).unwrap_or("").to_string(),
                m.get("subject_prefix")
                    .and_then(Json::as_str)
                    .map(str::to_string),
                super::email::recipients(cx, &Json::Object(m.clone()), "cc")?,
            ),
            other => {
                return Err(StepError::fatal(format!(
                    "reminder {other} is not an offset"
                )));
            }
        };
        let off = parse_offset(&at).map_err(|e| StepError::fatal(e.to_string()))?;
        let when = apply_offset(deadline, off, tz);
        let after = when > deadline;
        reminders.push(Reminder {
            at: when,
            subject_prefix: prefix.unwrap_or_else(|| {
                if after {
                    "【再送・要回答】".into()
                } else {
                    "【リマインド】".into()
                }
            }),
            cc: rcc,
        });
    }
    // Reminders already past when the request goes out are not sent.
    let now = cx.clock.now();
    reminders.retain(|r| r.at > now);
    reminders.sort_by_key(|r| r.at);
    Ok(reminders)
}

/// What every addressee of one request step is asked.
struct Ask {
    subject: String,
    fields: Vec<String>,
    required: Vec<String>,
    /// The fields as a form to fill in (`name: ` lines).
    form: String,
    deadline: Option<DateTime<Utc>>,
    cc: Vec<String>,
    /// Who may answer for an addressee.
    delegates: Vec<String>,
    ack: bool,
    expires_at: DateTime<Utc>,
}

impl Ask {
    /// The mail and the request row for `addr`, and the rendered body.
    ///
    /// The body: pmoflow's cut marker first (everything of ours is below it when it comes back
    /// quoted), then the rendered template, with the form appended unless the template placed it.
    fn one(
        &self,
        cx: &ActionContext<'_>,
        with: &Json,
        addr: &str,
    ) -> Result<(NewMessage, NewRequest, String), StepError> {
        let tz = cx.services.mail.timezone;
        let RequestIds {
            token,
            tag,
            message_id,
        } = RequestIds::new(cx)?;
        let pattern = cx.services.replies.pattern(&cx.services.mail.from);
        let reply_to = correlate::reply_address(&pattern, &token);
        let answer_url = cx
            .services
            .replies
            .public_url
            .as_ref()
            .map(|u| format!("{u}/answer/{token}"));
        let request_ctx = json!({
            "fields": self.fields,
            "required": self.required,
            "form": self.form,
            "deadline": self.deadline.map(|d| d.with_timezone(&tz).to_rfc3339()),
            "deadline_ja": self.deadline.map(|d| format_ja(d, tz)),
            "reply_to": reply_to,
            "answer_url": answer_url,
            "tag": tag,
            "to": addr,
        });
        let body = render_body(cx, with, &request_ctx)?;
        let mut text = format!("{CUT_MARKER}\n{body}");
        if !self.fields.is_empty() && !body.contains(self.form.trim_end()) {
            text.push_str("\n\n");
            text.push_str(&self.form);
        }
        if self.ack {
            text.push_str(&ack_instructions(cx, &token));
        } else if let Some(url) = &answer_url
            && !body.contains(url.as_str())
        {
            text.push_str(&format!("\nWebフォームからもご回答いただけます:\n{url}\n"));
        }
        let full_subject = format!("{} {}", self.subject, correlate::subject_tag(tag as u64));
        let recipient = bare(addr);
        let message = step_mail(
            cx,
            StepMail {
                to: addr,
                cc: &self.cc,
                reply_token: Some(&token),
                subject: full_subject.clone(),
                text,
                message_id: &message_id,
                key: format!("{}:{}:request:{recipient}", cx.run_id, cx.step_key),
            },
        )?;
        let mut allowed = vec![recipient.clone()];
        allowed.extend(self.delegates.iter().cloned());
        let request = NewRequest {
            token,
            workflow_id: cx.workflow_id.to_string(),
            kind: if self.ack { "ack" } else { "request" }.into(),
            recipient,
            allowed,
            tag,
            message_id,
            subject: full_subject,
            fields: self.fields.clone(),
            required: self.required.clone(),
            deadline: self.deadline,
            expires_at: self.expires_at,
        };
        Ok((message, request, body))
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
            messages.push(reminder_mail(cx, &state, &reminder, n, req)?);
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
) -> Result<NewMessage, StepError> {
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
    let form: String = req.fields.iter().map(|f| format!("{f}: \n")).collect();
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
