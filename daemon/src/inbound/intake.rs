//! Inbound mail, from arrival to the waiting run.
//!
//! Two phases, each one transaction: [`Intake::receive`] stores the raw message under an
//! idempotency key (nothing else); [`Intake::process_pending`] decides what each stored message
//! is and applies that decision together with marking the message processed. A crash between
//! the two leaves the message `pending`, and it is processed exactly once after the restart;
//! two daemons processing at once cannot both apply it (the status update is conditional).
//!
//! Decisions: a reply from the addressee (or a delegate) to an open request is an answer; from
//! anyone else it is quarantined and the PMO is told; an auto-reply is recorded and never counts;
//! a bounce marks the addressee bounced; unmatched, unreadable, too large or expired → quarantined.
//! pmoflow never answers an unmatched message or an automatic one.

use std::sync::Arc;

use chrono::{DateTime, Utc};
use futures::StreamExt;
use serde_json::{Value as Json, json};
use sha2::{Digest, Sha256};

use super::auth::Authenticator;
use super::correlate::{self, Key};
use super::{Inbound, Kind, reply};
use crate::actions::StepServices;
use crate::clock::SharedClock;
use crate::store::NewMessage;
use crate::store::{AnswerRow, Disposition, InboundRow, NewAnswer, RequestRow, Store, StoreError};
use crate::workbook::form::{Offered, read_offered};
use crate::workbook::{FormRead, FormSpec, Problem};

mod held;
use held::Gate;
pub use held::confirm_hash;
mod notices;
mod unmatched;

/// Receives and processes inbound messages.
#[derive(Clone)]
pub struct Intake {
    store: Store,
    clock: SharedClock,
    services: Arc<StepServices>,
    /// The daemon's wakers: runs when an answer nudged one, the outbox when a notice was queued.
    wakers: Option<crate::wake::Wakers>,
    /// Sender authentication (`[replies]`).
    auth: Arc<Authenticator>,
}

/// What processing decided about one message, before it is applied.
pub(super) struct Decision {
    from: Option<String>,
    subject: Option<String>,
    /// The authentication verdict, when one was reached.
    auth: Option<String>,
    disposition: Disposition,
}

/// At most this many confirmation mails wait for one addressee and request at a time.
const MAX_PENDING_CONFIRMATIONS: i64 = 3;

/// What happened to one message.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Processed {
    /// The inbound row.
    pub id: String,
    /// `done` or `quarantined`.
    pub status: String,
    /// `answer`, `incomplete_answer`, `auto_reply`, `bounce`, `unmatched`, `wrong_sender`, …
    pub outcome: String,
    /// Why, for people.
    pub detail: String,
    /// The run woken, if any.
    pub run_id: Option<String>,
}

/// The idempotency key for a message that arrived without an IMAP UID: its Message-ID (so the
/// same message delivered twice, by pipe and by HTTP say, is taken once), or its bytes.
pub fn source_key(raw: &[u8]) -> String {
    let id = mail_parser::MessageParser::default()
        .parse_headers(raw)
        .and_then(|m| m.message_id().map(str::to_string));
    let mut h = Sha256::new();
    match &id {
        Some(id) => h.update(id.trim().as_bytes()),
        None => h.update(raw),
    }
    let kind = if id.is_some() { "msgid" } else { "sha256" };
    format!("{kind}:{}", hex::encode(h.finalize()))
}

impl Intake {
    /// An intake over `store`.
    pub fn new(store: Store, clock: SharedClock, services: Arc<StepServices>) -> Self {
        let auth = Arc::new(Authenticator::new(services.replies.auth.clone()));
        Self {
            store,
            clock,
            services,
            wakers: None,
            auth,
        }
    }

    /// Wakes the engine's claim loop when a run was nudged, and its delivery worker when a
    /// notice was queued.
    pub fn with_wakers(mut self, wakers: crate::wake::Wakers) -> Self {
        self.wakers = Some(wakers);
        self
    }

    /// This process's metrics.
    pub fn metrics(&self) -> &crate::metrics::Metrics {
        &self.services.metrics
    }

    /// Stores a message; `None` if it was stored before.
    pub async fn receive(&self, via: &str, raw: &[u8]) -> Result<Option<String>, StoreError> {
        let key = source_key(raw);
        self.store
            .inbound_store(&key, via, raw, raw.len(), self.clock.now(), None)
            .await
    }

    /// Processes every pending message; returns what happened to each.
    pub async fn process_pending(&self) -> Result<Vec<Processed>, StoreError> {
        let mut out = Vec::new();
        loop {
            let batch = self.store.inbound_pending(64).await?;
            if batch.is_empty() {
                break;
            }
            let n = batch.len();
            // A few at once: each is a handful of round trips to the database, and applying is
            // conditional, so concurrent processing can never apply a message twice.
            let futures: Vec<_> = batch.iter().map(|row| self.process(row)).collect();
            let results: Vec<Result<Option<Processed>, StoreError>> =
                futures::stream::iter(futures).buffered(8).collect().await;
            for r in results {
                if let Some(p) = r? {
                    out.push(p);
                }
            }
            if n < 64 {
                break;
            }
        }
        Ok(out)
    }

    /// Processes one stored message; `None` if someone else processed it first.
    pub async fn process(&self, row: &InboundRow) -> Result<Option<Processed>, StoreError> {
        let now = self.clock.now();
        let Decision {
            from,
            subject,
            auth,
            disposition,
        } = self.decide(row, now).await?;
        let Some(applied) = self
            .store
            .inbound_apply(
                &row.id,
                now,
                from.as_deref(),
                subject.as_deref(),
                auth.as_deref(),
                &disposition,
            )
            .await?
        else {
            return Ok(None);
        };
        let run = applied.wake;
        let (status, outcome, detail) = match &applied.after_close {
            // The request's step finished between the decision and its application.
            Some(detail) => ("done", "after_close", detail.as_str()),
            None => describe(&disposition),
        };
        self.services
            .metrics
            .inc("pmoflow_inbound_messages_total", &[("outcome", outcome)]);
        match status {
            "quarantined" | "held" => tracing::warn!(
                inbound = %row.id, outcome, from = from.as_deref().unwrap_or("-"), "{detail}"
            ),
            _ => tracing::info!(
                inbound = %row.id, outcome, from = from.as_deref().unwrap_or("-"),
                run = run.as_deref().unwrap_or("-"), "inbound message processed"
            ),
        }
        if run.is_some()
            && let Some(w) = &self.wakers
        {
            w.wake_runs();
        }
        let queued = match &disposition {
            Disposition::Quarantine { notify, .. } | Disposition::Hold { notify, .. } => {
                notify.is_some()
            }
            Disposition::Answer { notices, .. } => !notices.is_empty(),
            _ => false,
        };
        if queued && let Some(w) = &self.wakers {
            w.wake_outbox();
        }
        Ok(Some(Processed {
            id: row.id.clone(),
            status: status.to_string(),
            outcome: outcome.to_string(),
            detail: detail.to_string(),
            run_id: run,
        }))
    }

    async fn decide(&self, row: &InboundRow, now: DateTime<Utc>) -> Result<Decision, StoreError> {
        let decided = |from, subject, disposition| Decision {
            from,
            subject,
            auth: None,
            disposition,
        };
        let max = self.services.replies.max_size;
        let size = usize::try_from(row.size).unwrap_or(usize::MAX);
        if size > max {
            let head = mail_parser::MessageParser::default().parse_headers(&row.raw[..]);
            let from = head.as_ref().and_then(|m| {
                m.from()
                    .and_then(|a| a.first())
                    .and_then(|a| a.address())
                    .map(str::to_lowercase)
            });
            let subject = head.as_ref().and_then(|m| m.subject().map(str::to_string));
            let detail = format!(
                "message of {size} bytes exceeds the limit of {} KiB",
                max >> 10
            );
            let notify = self.pmo_notice(row, from.as_deref(), subject.as_deref(), &detail);
            return Ok(decided(
                from,
                subject,
                quarantine("too_large", None, detail, notify),
            ));
        }
        let msg = match super::parse(&row.raw, max) {
            Ok(m) => m,
            Err(e) => {
                let detail = format!("unreadable message: {e}");
                let notify = self.pmo_notice(row, None, None, &detail);
                return Ok(decided(
                    None,
                    None,
                    quarantine("unreadable", None, detail, notify),
                ));
            }
        };
        let from = msg.from.clone();
        let subject = Some(msg.subject.clone());
        if from.is_none() && !matches!(msg.kind, Kind::Bounce { .. } | Kind::DeliveryReport { .. })
        {
            let detail = "unreadable message: no From address".to_string();
            let notify = self.pmo_notice(row, None, subject.as_deref(), &detail);
            return Ok(decided(
                None,
                subject,
                quarantine("unreadable", None, detail, notify),
            ));
        }
        // What the trusted gateway says costs nothing; DKIM verified here (DNS) only when a
        // match by subject tag needs it.
        let said = self.auth.from_headers(&row.raw, from.as_deref());
        let mut found = self.correlate(&msg).await?;
        // A request whose step (or run) has finished is closed, even if it was answered before:
        // a later answer is kept as a message but changes nothing.
        if let Some((req, _)) = found.as_mut()
            && req.status != "closed"
            && self.step_finished(&req.run_id, &req.step_key).await?
        {
            req.status = "closed".into();
        }
        let auth = match self.gate(row, &msg, found.as_ref(), said, now).await? {
            Gate::Decided(disposition, auth) => {
                return Ok(Decision {
                    from,
                    subject,
                    auth,
                    disposition: *disposition,
                });
            }
            Gate::Open(auth) => auth,
        };
        let disposition = match (&msg.kind, found) {
            (Kind::Bounce { recipients, .. }, Some((req, _))) => Disposition::Bounce {
                token: req.token.clone(),
                detail: format!(
                    "delivery to {} failed",
                    if recipients.is_empty() {
                        req.recipient.clone()
                    } else {
                        recipients.join(", ")
                    }
                ),
            },
            (Kind::Bounce { .. }, None) => Disposition::Record {
                outcome: "bounce".into(),
                token: None,
                detail: "delivery failure report for a message that is not a request".into(),
            },
            (
                Kind::DeliveryReport {
                    action, recipients, ..
                },
                found,
            ) => Disposition::Record {
                outcome: if action == "delayed" {
                    "delivery_delayed".into()
                } else {
                    "delivery_report".into()
                },
                token: found.map(|(r, _)| r.token),
                detail: format!(
                    "delivery status notification: {action} for {}; the request is unchanged",
                    if recipients.is_empty() {
                        "the recipient".to_string()
                    } else {
                        recipients.join(", ")
                    }
                ),
            },
            (Kind::AutoReply { reason }, found) => Disposition::Record {
                outcome: "auto_reply".into(),
                token: found.map(|(r, _)| r.token),
                detail: format!("automatic reply ({reason}); not an answer"),
            },
            (Kind::Reply, None) => {
                let detail = self.unmatched_detail(&msg).await?;
                let notify = self.pmo_notice(row, from.as_deref(), subject.as_deref(), &detail);
                quarantine("unmatched", None, detail, notify)
            }
            (Kind::Reply, Some((req, by))) => {
                let form: Option<FormSpec> = req
                    .form
                    .as_ref()
                    .and_then(|f| serde_json::from_value(f.clone()).ok());
                let workbooks = match &form {
                    Some(spec) => {
                        let files = msg
                            .attachments
                            .iter()
                            .map(|a| Offered {
                                name: a.name.clone(),
                                content_type: a.content_type.clone(),
                                content: a.content.clone(),
                            })
                            .collect();
                        read_offered(spec, files, crate::workbook::Limits::default()).await
                    }
                    None => (Vec::new(), Vec::new()),
                };
                // A follow-up to an incomplete answer (a reply to the 【要再回答】, say) completes
                // it. Once answered, a later reply is a correction and carries what it carries
                // (the portfolio supersedes only the values it gives).
                let earlier = if req.status == "open" {
                    self.store
                        .answers_for(std::slice::from_ref(&req.token))
                        .await?
                } else {
                    Vec::new()
                };
                self.answer(row, &msg, req, &by, now, form, workbooks, &earlier)
            }
        };
        Ok(Decision {
            from,
            subject,
            auth,
            disposition,
        })
    }

    /// The request a message belongs to, strongest key first. A subject tag alone only matches
    /// an open request whose addressee (or delegate) sent the message.
    async fn step_finished(&self, run_id: &str, step_key: &str) -> Result<bool, StoreError> {
        self.store.request_step_finished(run_id, step_key).await
    }

    async fn correlate(&self, msg: &Inbound) -> Result<Option<(RequestRow, Key)>, StoreError> {
        let pattern = self.services.replies.pattern(&self.services.mail.from);
        let mut keys = correlate::keys(msg, &pattern);
        if let Kind::Bounce {
            original_message_id: Some(id),
            ..
        }
        | Kind::DeliveryReport {
            original_message_id: Some(id),
            ..
        } = &msg.kind
        {
            let probe = Inbound {
                references: vec![id.clone()],
                recipients: Vec::new(),
                subject: String::new(),
                ..msg.clone()
            };
            keys.splice(0..0, correlate::keys(&probe, &pattern));
        }
        for key in keys {
            let found = match &key {
                Key::Address(t) | Key::MessageId(t) => self.store.request_by_token(t).await?,
                Key::SubjectTag(n) => {
                    let from = msg.from.clone().unwrap_or_default();
                    self.store
                        .requests_by_tag(i64::try_from(*n).unwrap_or(-1))
                        .await?
                        .into_iter()
                        .find(|r| r.status == "open" && r.allowed.contains(&from))
                }
            };
            if let Some(req) = found {
                return Ok(Some((req, key)));
            }
        }
        Ok(None)
    }

    /// The answer a reply makes, with what its workbooks said (read beforehand, off the async
    /// workers) when the request has a form.
    #[allow(clippy::too_many_arguments)] // the reply, its request and what was read of it
    fn answer(
        &self,
        row: &InboundRow,
        msg: &Inbound,
        req: RequestRow,
        by: &Key,
        now: DateTime<Utc>,
        form: Option<FormSpec>,
        workbooks: (Vec<FormRead>, Vec<(String, String)>),
        earlier: &[AnswerRow],
    ) -> Disposition {
        let from = msg.from.clone().unwrap_or_default();
        if !req.allowed.contains(&from) {
            let detail = format!(
                "sender {from} is not the addressee of request {} ({}){}",
                req.tag,
                req.recipient,
                if req.allowed.len() > 1 {
                    " nor one of its delegates"
                } else {
                    ""
                }
            );
            let notify = self.pmo_notice(row, Some(&from), Some(&msg.subject), &detail);
            return quarantine("wrong_sender", Some(req.token), detail, notify);
        }
        if now > req.expires_at {
            let detail = format!(
                "request {} expired on {}; the answer was not accepted",
                req.tag,
                req.expires_at.to_rfc3339()
            );
            let notify = self.pmo_notice(row, Some(&from), Some(&msg.subject), &detail);
            return quarantine("expired", Some(req.token), detail, notify);
        }
        if req.status == "closed" {
            return Disposition::Record {
                outcome: "after_close".into(),
                token: Some(req.token),
                detail: format!(
                    "request {} was already closed; the message is kept but not taken as an answer",
                    req.tag
                ),
            };
        }
        if req.kind == "resolve" {
            return Disposition::Record {
                outcome: "not_accepted".into(),
                token: Some(req.token),
                detail: "an incident is resolved with `pmoflow resolve` or the API, not by email"
                    .into(),
            };
        }
        let reading = reply::read(&msg.text, &req.fields, msg.from_name.as_deref());
        let text = reading.new_text;
        if req.kind == "ack" {
            if !reply::is_ack(&text) {
                return Disposition::Record {
                    outcome: "not_an_ack".into(),
                    token: Some(req.token),
                    detail: "a reply to an acknowledgement request without ACK/了解/承知".into(),
                };
            }
            return Disposition::Answer {
                answer: NewAnswer {
                    token: req.token,
                    via: "email".into(),
                    from: Some(from),
                    message_id: msg.message_id.clone(),
                    fields: json!({ "ack": true }),
                    text,
                    attachments: json!([]),
                    complete: true,
                    form_fields: Vec::new(),
                },
                notices: Vec::new(),
                detail: String::new(),
            };
        }
        let mut parsed = reading.answers;
        let detail = complete_from_earlier(&mut parsed.fields, earlier);
        let (reads, broken) = workbooks;
        let mut problems: Vec<Problem> = Vec::new();
        if let Some(spec) = &form {
            problems = crate::workbook::form::merge(spec, &reads, &mut parsed.fields);
        }
        // The same types govern the body and the 様式: what is still not typed is refused.
        for p in req.types.apply(&mut parsed.fields) {
            if !problems.iter().any(|q| q.field == p.field) {
                problems.push(p);
            }
        }
        let form_fields = crate::workbook::form::given_by_workbook(&reads, &parsed.fields);
        for (name, error) in &broken {
            problems.insert(
                0,
                Problem {
                    field: None,
                    at: None,
                    message: format!("添付ファイル「{name}」: {error}"),
                },
            );
        }
        let missing: Vec<&String> =
            req.required
                .iter()
                .filter(|f| {
                    parsed.fields.get(*f).is_none_or(|v| {
                        v.is_null() || v.as_str().is_some_and(|s| s.trim().is_empty())
                    })
                })
                .filter(|f| !problems.iter().any(|p| p.field.as_ref() == Some(*f)))
                .collect();
        let attachments: Vec<Json> = msg
            .attachments
            .iter()
            .map(|a| {
                Offered {
                    name: a.name.clone(),
                    content_type: a.content_type.clone(),
                    content: a.content.clone(),
                }
                .record(&reads, &broken)
            })
            .collect();
        let complete = missing.is_empty() && problems.is_empty();
        let mut notices = Vec::new();
        if !complete && req.status == "open" {
            let notice = if form.is_some() || !problems.is_empty() {
                self.correction_notice(row, msg, &req, &problems, &missing, form.is_some())
            } else {
                self.missing_notice(row, msg, &req, &missing)
            };
            notices.extend(notice);
        }
        if !broken.is_empty() {
            let detail = broken
                .iter()
                .map(|(n, e)| format!("添付ファイル「{n}」を読み取れませんでした: {e}"))
                .collect::<Vec<_>>()
                .join("\n");
            notices.extend(self.pmo_notice(row, Some(&from), Some(&msg.subject), &detail));
        }
        tracing::debug!(request = req.tag, by = ?by, "reply correlated");
        Disposition::Answer {
            answer: NewAnswer {
                token: req.token,
                via: "email".into(),
                from: Some(from),
                message_id: msg.message_id.clone(),
                fields: serde_json::to_value(&parsed.fields).unwrap_or_default(),
                text: parsed.free_text,
                attachments: Json::Array(attachments),
                complete,
                form_fields,
            },
            notices,
            detail,
        }
    }
}

/// Completes a reply's fields with those of the earlier (incomplete) answers to the same open
/// request (by email, the web form or the API; later ones first): fields given now replace, the
/// others are kept.
/// The inbound row's detail says which were kept, and from when.
fn complete_from_earlier(
    fields: &mut std::collections::BTreeMap<String, Json>,
    earlier: &[AnswerRow],
) -> String {
    let given: Vec<String> = fields.keys().cloned().collect();
    let mut kept: Vec<String> = Vec::new();
    let mut from = None;
    for a in earlier.iter().rev() {
        let Some(old) = a.fields.as_object() else {
            continue;
        };
        for (k, v) in old {
            if !fields.contains_key(k) && !v.is_null() {
                fields.insert(k.clone(), v.clone());
                kept.push(k.clone());
                from = from.or(Some(a.received_at));
            }
        }
    }
    match from {
        None => String::new(),
        Some(at) => format!(
            "completes the earlier answer of {}: {} given now; {} kept from it",
            at.to_rfc3339(),
            if given.is_empty() {
                "nothing".to_string()
            } else {
                given.join(", ")
            },
            kept.join(", ")
        ),
    }
}

fn quarantine(
    outcome: &str,
    token: Option<String>,
    detail: String,
    notify: Option<NewMessage>,
) -> Disposition {
    Disposition::Quarantine {
        outcome: outcome.into(),
        token,
        detail,
        notify,
    }
}

fn describe(d: &Disposition) -> (&'static str, &str, &str) {
    match d {
        Disposition::Answer { answer, detail, .. } => (
            "done",
            if answer.complete {
                "answer"
            } else {
                "incomplete_answer"
            },
            detail,
        ),
        Disposition::Bounce { detail, .. } => ("done", "bounce", detail),
        Disposition::Record {
            outcome, detail, ..
        } => ("done", outcome, detail),
        Disposition::Quarantine {
            outcome, detail, ..
        } => ("quarantined", outcome, detail),
        Disposition::Hold { detail, .. } => ("held", "unauthenticated", detail),
    }
}
