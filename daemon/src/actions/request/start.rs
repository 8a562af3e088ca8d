//! The first call of a request step: read `with` (addressees, fields, deadline, reminders,
//! completion rule) and build one mail and one request row per addressee, each with its own
//! token.

use chrono::{DateTime, Utc};
use serde_json::{Value as Json, json};

use super::{Reminder, State, next_wake, strings};
use crate::actions::deadline::{
    apply_offset, format_ja, parse_deadline, parse_offset, wait_after_deadline,
};
use crate::actions::mail::{RequestIds, StepMail, ack_instructions, render_body, step_mail};
use crate::actions::{ActionContext, Outcome, StepError, str_param};
use crate::message::correlate;
use crate::message::email::bare;
use crate::message::reply::CUT_MARKER;
use crate::store::{NewMessage, NewRequest, RecordKey};

pub(super) fn start(cx: &ActionContext<'_>, with: &Json) -> Result<Outcome, StepError> {
    let now = cx.clock.now();
    let tz = cx.services.mail.timezone;
    let to = crate::actions::email::recipients(cx, with, "to")?;
    if to.is_empty() {
        return Err(StepError::fatal("`with.to` names nobody"));
    }
    let cc = crate::actions::email::recipients(cx, with, "cc")?;
    let delegates: Vec<String> = crate::actions::email::recipients(cx, with, "delegates")?
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
        .map(|t| wait_after_deadline(t, deadline, tz, &cx.calendar))
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
    let types = super::form::types_of(with)?;
    if let Some(f) = types.0.keys().find(|f| !fields.contains(f)) {
        return Err(StepError::fatal(format!(
            "`types` declares `{f}`, which is not in `fields`"
        )));
    }
    let record = record_of(with)?;
    let form = super::form::load(cx, with, &fields, &required)?;
    let attachment = form
        .as_ref()
        .map(|f| super::form::attachment(f, &super::form::prefill_of(with)?))
        .transpose()?;
    let token_ttl = chrono::Duration::from_std(cx.services.replies.token_ttl).unwrap_or_default();
    let close_at = match deadline {
        Some(d) => d + wait_after,
        None => now + token_ttl,
    };
    let ask = Ask {
        subject,
        form: crate::workbook::types::form_lines(&fields, &types),
        fields,
        types,
        record,
        required,
        deadline,
        cc,
        delegates,
        ack,
        expires_at: close_at + token_ttl,
        form_spec: form
            .as_ref()
            .map(|f| serde_json::to_value(&f.spec).unwrap_or_default()),
        attachment,
    };
    let mut requests = Vec::new();
    let mut messages = Vec::new();
    let mut text_for_state = String::new();
    for (i, addr) in to.iter().enumerate() {
        let (message, request, body) = ask.one(cx, with, addr)?;
        if i == 0 {
            text_for_state = body;
        }
        messages.extend(message);
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
        form: super::form::FormState::of(with)?,
    };
    let until = next_wake(&state);
    Ok(Outcome::Suspend {
        until,
        state: json!({ "request": state }),
        messages,
        requests,
    })
}

/// `with.record`: whom and which period the answers are about (`subject`, `period`, and
/// optionally `name` and `owner`, else `context.name` / `context.owner`).
fn record_of(with: &Json) -> Result<Option<RecordKey>, StepError> {
    let Some(r) = with.get("record").filter(|r| !r.is_null()) else {
        return Ok(None);
    };
    let text = |k: &str| -> Result<String, StepError> {
        match r.get(k).or_else(|| match k {
            "name" | "owner" => with.get("context").and_then(|c| c.get(k)),
            _ => None,
        }) {
            None | Some(Json::Null) => Ok(String::new()),
            Some(Json::String(s)) => Ok(s.trim().to_string()),
            Some(Json::Number(n)) => Ok(n.to_string()),
            Some(other) => Err(StepError::fatal(format!(
                "`record.{k}` must be text, got {other}"
            ))),
        }
    };
    let record = RecordKey {
        subject: text("subject")?,
        period: text("period")?,
        name: text("name")?,
        owner: text("owner")?,
    };
    for (k, v) in [("subject", &record.subject), ("period", &record.period)] {
        if v.is_empty() {
            return Err(StepError::fatal(format!(
                "`record.{k}` is empty: the portfolio needs whom and which period an answer is about"
            )));
        }
    }
    Ok(Some(record))
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
                crate::actions::email::recipients(cx, &Json::Object(m.clone()), "cc")?,
            ),
            other => {
                return Err(StepError::fatal(format!(
                    "reminder {other} is not an offset"
                )));
            }
        };
        let off = parse_offset(&at).map_err(|e| StepError::fatal(e.to_string()))?;
        let when = apply_offset(deadline, off, tz, &cx.calendar);
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
    /// What each field takes.
    types: crate::workbook::FieldTypes,
    /// Whom and which period the answers are about.
    record: Option<RecordKey>,
    /// The fields as a form to fill in (`name: ` lines).
    form: String,
    deadline: Option<DateTime<Utc>>,
    cc: Vec<String>,
    /// Who may answer for an addressee.
    delegates: Vec<String>,
    ack: bool,
    expires_at: DateTime<Utc>,
    /// The Excel 様式's cell map, stored with each request.
    form_spec: Option<Json>,
    /// The prefilled 様式: (file name, bytes, content type).
    attachment: Option<(String, Vec<u8>, String)>,
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
    ) -> Result<(Vec<NewMessage>, NewRequest, String), StepError> {
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
            "hints": self.fields.iter().map(|f| (f.clone(), json!(self.types.hint(f)))).collect::<serde_json::Map<String, Json>>(),
            "required": self.required,
            "form": self.form,
            "deadline": self.deadline.map(|d| d.with_timezone(&tz).to_rfc3339()),
            "deadline_ja": self.deadline.map(|d| format_ja(d, tz)),
            "reply_to": reply_to,
            "answer_url": answer_url,
            "tag": tag,
            "to": addr,
            "form_file": self.attachment.as_ref().map(|a| a.0.clone()),
        });
        let body = render_body(cx, with, &request_ctx)?;
        let mut text = format!("{CUT_MARKER}\n{body}");
        if let Some((name, _, _)) = &self.attachment
            && !body.contains(name.as_str())
        {
            text.push_str(&format!(
                "\n\n添付の様式（{name}）にご記入のうえ、本メールに添付してご返信ください。\n"
            ));
        }
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
                attachments: self.attachment.iter().cloned().collect(),
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
            form: self.form_spec.clone(),
            types: self.types.clone(),
            record: self.record.clone(),
        };
        Ok((message, request, body))
    }
}
