//! Requests (what was asked of whom) and answers (what came back): the rows a `request` or
//! `escalate` step reads, the close that makes them final, and answers given outside mail (the
//! web form, the API, the simulator), which are stored as inbound rows and applied like replies
//! (see `inbound.rs`).

use chrono::{DateTime, Utc};
use serde::Serialize;
use serde_json::Value as Json;
use sqlx::Row;

use super::portfolio::RecordKey;
use super::{Applied, Disposition, Result, Store, StoreError, from_ms, ms};
use crate::workbook::FieldTypes;

/// A request row to insert with the step transition that sends its mail.
#[derive(Debug, Clone, PartialEq)]
pub struct NewRequest {
    /// The single-use token.
    pub token: String,
    /// The workflow.
    pub workflow_id: String,
    /// `request` or `ack`.
    pub kind: String,
    /// The addressee (bare address, lower case).
    pub recipient: String,
    /// Addresses allowed to answer: the addressee and configured delegates (lower case).
    pub allowed: Vec<String>,
    /// The subject tag number.
    pub tag: i64,
    /// Our Message-ID (without angle brackets).
    pub message_id: String,
    /// The subject as sent.
    pub subject: String,
    /// Field names asked for.
    pub fields: Vec<String>,
    /// Fields that must be filled in.
    pub required: Vec<String>,
    /// Answers after this are late.
    pub deadline: Option<DateTime<Utc>>,
    /// The token is refused after this.
    pub expires_at: DateTime<Utc>,
    /// The Excel 様式 a returned workbook is read with (`workbook::FormSpec` as JSON).
    pub form: Option<Json>,
    /// What each field takes (`with.types`).
    pub types: FieldTypes,
    /// Whom and which period the answers are about (`with.record`).
    pub record: Option<RecordKey>,
}

/// A request as stored.
#[derive(Debug, Clone, Serialize, schemars::JsonSchema)]
pub struct RequestRow {
    /// The token (never shown in listings meant for others).
    #[serde(skip)]
    pub token: String,
    /// The run.
    pub run_id: String,
    /// The step key (`ask[3]`).
    pub step_key: String,
    /// The workflow.
    pub workflow_id: String,
    /// `request` or `ack`.
    pub kind: String,
    /// The addressee.
    pub recipient: String,
    /// Addresses allowed to answer.
    pub allowed: Vec<String>,
    /// Subject tag number.
    pub tag: i64,
    /// Our Message-ID.
    pub message_id: String,
    /// Subject as sent.
    pub subject: String,
    /// Field names.
    pub fields: Vec<String>,
    /// Required fields.
    pub required: Vec<String>,
    /// Sent.
    pub created_at: DateTime<Utc>,
    /// Deadline.
    pub deadline: Option<DateTime<Utc>>,
    /// Token expiry.
    pub expires_at: DateTime<Utc>,
    /// `open`, `answered`, `bounced` or `closed`.
    pub status: String,
    /// Latest answer.
    pub answered_at: Option<DateTime<Utc>>,
    /// Latest answer's id.
    pub answer_id: Option<String>,
    /// When a bounce was seen.
    pub bounced_at: Option<DateTime<Utc>>,
    /// What the bounce said.
    pub bounce: Option<String>,
    /// When the request's step finished: from then on nothing sent to it counts.
    pub final_at: Option<DateTime<Utc>>,
    /// The Excel 様式 a returned workbook is read with (`workbook::FormSpec` as JSON).
    #[serde(skip)]
    #[schemars(skip)]
    pub form: Option<Json>,
    /// What each field takes.
    #[serde(skip)]
    #[schemars(skip)]
    pub types: FieldTypes,
    /// Whom and which period the answers are about, if they are recorded in the portfolio.
    pub record: Option<RecordKey>,
}

/// An answer as stored.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct AnswerRow {
    /// Answer id.
    pub id: String,
    /// The request token.
    #[serde(skip)]
    pub token: String,
    /// When it arrived.
    pub received_at: DateTime<Utc>,
    /// `email`, `web` or `api`.
    pub via: String,
    /// Sender.
    pub from: Option<String>,
    /// The reply's Message-ID.
    pub message_id: Option<String>,
    /// Parsed fields.
    pub fields: Json,
    /// Text that is not a field.
    pub text: String,
    /// Attachments (name, type, size, stored id).
    pub attachments: Json,
    /// After the deadline.
    pub late: bool,
}

/// An answer to record.
#[derive(Debug, Clone)]
pub struct NewAnswer {
    /// Request token.
    pub token: String,
    /// `email`, `web` or `api`.
    pub via: String,
    /// Sender.
    pub from: Option<String>,
    /// The reply's Message-ID.
    pub message_id: Option<String>,
    /// Parsed fields.
    pub fields: Json,
    /// Free text.
    pub text: String,
    /// Attachments.
    pub attachments: Json,
    /// Every required field is filled in. An incomplete answer is kept in the history but does
    /// not answer the request.
    pub complete: bool,
    /// The fields whose value came from a returned 様式 (their portfolio source is `workbook`).
    pub form_fields: Vec<String>,
}

/// What became of an answer given through a form, an API call or the simulator.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Recorded {
    /// Recorded as the request's latest answer.
    Accepted,
    /// The same submission was recorded before (idempotency key seen).
    Replay,
    /// The request's step had finished: kept as `after_close`, not an answer.
    Closed,
}

/// The first characters of a token, used to find its row.
pub fn lookup_of(token: &str) -> &str {
    token.get(..8).unwrap_or(token)
}

const REQUEST_COLUMNS: &str = "token, run_id, step_key, workflow_id, kind, recipient, allowed, tag, \
    message_id, subject, fields, required, created_at, deadline, expires_at, status, answered_at, \
    answer_id, bounced_at, bounce, final_at, form, types, record";
const ANSWER_COLUMNS: &str =
    "id, token, received_at, via, from_addr, message_id, fields, free_text, attachments, late";

fn corrupt(table: &'static str) -> impl Fn(serde_json::Error) -> StoreError {
    move |e| StoreError::Corrupt(table, e.to_string())
}

fn list(text: &str) -> Result<Vec<String>> {
    serde_json::from_str(text).map_err(corrupt("requests"))
}

macro_rules! request_row {
    ($r:expr) => {{
        let r = $r;
        RequestRow {
            token: r.try_get("token")?,
            run_id: r.try_get("run_id")?,
            step_key: r.try_get("step_key")?,
            workflow_id: r.try_get("workflow_id")?,
            kind: r.try_get("kind")?,
            recipient: r.try_get("recipient")?,
            allowed: list(&r.try_get::<String, _>("allowed")?)?,
            tag: r.try_get("tag")?,
            message_id: r.try_get("message_id")?,
            subject: r.try_get("subject")?,
            fields: list(&r.try_get::<String, _>("fields")?)?,
            required: list(&r.try_get::<String, _>("required")?)?,
            created_at: from_ms(r.try_get("created_at")?),
            deadline: r.try_get::<Option<i64>, _>("deadline")?.map(from_ms),
            expires_at: from_ms(r.try_get("expires_at")?),
            status: r.try_get("status")?,
            answered_at: r.try_get::<Option<i64>, _>("answered_at")?.map(from_ms),
            answer_id: r.try_get("answer_id")?,
            bounced_at: r.try_get::<Option<i64>, _>("bounced_at")?.map(from_ms),
            bounce: r.try_get("bounce")?,
            final_at: r.try_get::<Option<i64>, _>("final_at")?.map(from_ms),
            form: r
                .try_get::<Option<String>, _>("form")?
                .map(|f| serde_json::from_str(&f))
                .transpose()
                .map_err(corrupt("requests"))?,
            types: r
                .try_get::<Option<String>, _>("types")?
                .map(|f| serde_json::from_str(&f))
                .transpose()
                .map_err(corrupt("requests"))?
                .unwrap_or_default(),
            record: r
                .try_get::<Option<String>, _>("record")?
                .map(|f| serde_json::from_str(&f))
                .transpose()
                .map_err(corrupt("requests"))?,
        }
    }};
}

macro_rules! answer_row {
    ($r:expr) => {{
        let r = $r;
        AnswerRow {
            id: r.try_get("id")?,
            token: r.try_get("token")?,
            received_at: from_ms(r.try_get("received_at")?),
            via: r.try_get("via")?,
            from: r.try_get("from_addr")?,
            message_id: r.try_get("message_id")?,
            fields: serde_json::from_str(&r.try_get::<String, _>("fields")?)
                .map_err(corrupt("answers"))?,
            text: r.try_get("free_text")?,
            attachments: serde_json::from_str(&r.try_get::<String, _>("attachments")?)
                .map_err(corrupt("answers"))?,
            late: r.try_get::<i64, _>("late")? != 0,
        }
    }};
}

/// Inserts request rows inside a transaction (the step transition's). A repeated insert is a
/// no-op.
macro_rules! insert_requests {
    ($conn:expr, $run_id:expr, $step_key:expr, $now:expr, $requests:expr) => {{
        for req in $requests {
            let req: &$crate::store::NewRequest = req;
            sqlx::query(
                "INSERT INTO requests (token, lookup, run_id, step_key, workflow_id, kind, recipient, \
                 allowed, tag, message_id, subject, fields, required, created_at, deadline, \
                 expires_at, status, form, types, record) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, \
                 $9, $10, $11, $12, $13, $14, $15, $16, 'open', $17, $18, $19) ON CONFLICT DO NOTHING",
            )
            .bind(req.token.as_str())
            .bind($crate::store::requests::lookup_of(&req.token))
            .bind($run_id)
            .bind($step_key)
            .bind(req.workflow_id.as_str())
            .bind(req.kind.as_str())
            .bind(req.recipient.as_str())
            .bind(serde_json::to_string(&req.allowed).unwrap_or_default())
            .bind(req.tag)
            .bind(req.message_id.as_str())
            .bind(req.subject.as_str())
            .bind(serde_json::to_string(&req.fields).unwrap_or_default())
            .bind(serde_json::to_string(&req.required).unwrap_or_default())
            .bind($now)
            .bind(req.deadline.map($crate::store::ms))
            .bind($crate::store::ms(req.expires_at))
            .bind(req.form.as_ref().map(|f| f.to_string()))
            .bind((!req.types.is_empty()).then(|| serde_json::to_string(&req.types).unwrap_or_default()))
            .bind(req.record.as_ref().map(|r| serde_json::to_string(r).unwrap_or_default()))
            .execute(&mut *$conn)
            .await?;
        }
    }};
}
pub(super) use insert_requests;

impl Store {
    /// The requests of one step (or foreach item), in recipient order.
    pub async fn requests_for_step(&self, run_id: &str, step_key: &str) -> Result<Vec<RequestRow>> {
        let sql = format!(
            "SELECT {REQUEST_COLUMNS} FROM requests WHERE run_id = $1 AND step_key = $2 \
             ORDER BY created_at, recipient"
        );
        with_pool!(self, |pool| {
            let mut out = Vec::new();
            for r in sqlx::query(&sql)
                .bind(run_id)
                .bind(step_key)
                .fetch_all(pool)
                .await?
            {
                out.push(request_row!(&r));
            }
            Ok(out)
        })
    }

    /// Open and answered requests of any run (for listings), newest first.
    pub async fn list_requests(&self, status: Option<&str>, limit: i64) -> Result<Vec<RequestRow>> {
        let sql = format!(
            "SELECT {REQUEST_COLUMNS} FROM requests WHERE ($1 IS NULL OR status = $1) \
             ORDER BY created_at DESC LIMIT $2"
        );
        with_pool!(self, |pool| {
            let mut out = Vec::new();
            for r in sqlx::query(&sql)
                .bind(status)
                .bind(limit)
                .fetch_all(pool)
                .await?
            {
                out.push(request_row!(&r));
            }
            Ok(out)
        })
    }

    /// The request whose token is `token`: found by its first characters, then compared whole
    /// in constant time (so response timing says nothing about how much of a guess was right).
    pub async fn request_by_token(&self, token: &str) -> Result<Option<RequestRow>> {
        let sql = format!("SELECT {REQUEST_COLUMNS} FROM requests WHERE lookup = $1");
        let lookup = lookup_of(token);
        let rows: Vec<RequestRow> = with_pool!(self, |pool| {
            let mut out = Vec::new();
            for r in sqlx::query(&sql).bind(lookup).fetch_all(pool).await? {
                out.push(request_row!(&r));
            }
            Ok::<_, StoreError>(out)
        })?;
        Ok(rows
            .into_iter()
            .find(|r| crate::message::correlate::token_eq(&r.token, token)))
    }

    /// Requests carrying subject tag `tag`, newest first.
    pub async fn requests_by_tag(&self, tag: i64) -> Result<Vec<RequestRow>> {
        let sql = format!(
            "SELECT {REQUEST_COLUMNS} FROM requests WHERE tag = $1 ORDER BY created_at DESC LIMIT 50"
        );
        with_pool!(self, |pool| {
            let mut out = Vec::new();
            for r in sqlx::query(&sql).bind(tag).fetch_all(pool).await? {
                out.push(request_row!(&r));
            }
            Ok(out)
        })
    }

    /// Every answer to these requests, oldest first.
    pub async fn answers_for(&self, tokens: &[String]) -> Result<Vec<AnswerRow>> {
        if tokens.is_empty() {
            return Ok(Vec::new());
        }
        let ids = serde_json::to_string(tokens).unwrap_or_default();
        let cond = match &self.backend {
            super::Backend::Sqlite(_) => "token IN (SELECT value FROM json_each($1))",
            super::Backend::Postgres(_) => "token IN (SELECT json_array_elements_text($1::json))",
        };
        let sql =
            format!("SELECT {ANSWER_COLUMNS} FROM answers WHERE {cond} ORDER BY received_at, id");
        with_pool!(self, |pool| {
            let mut out = Vec::new();
            for r in sqlx::query(&sql).bind(&ids).fetch_all(pool).await? {
                out.push(answer_row!(&r));
            }
            Ok(out)
        })
    }

    /// Whether the step a request belongs to has finished (or its run has, or is gone): its
    /// output is final, so nothing sent to the request can count any more.
    pub async fn request_step_finished(&self, run_id: &str, step_key: &str) -> Result<bool> {
        let Some(run) = self.get_run(run_id).await? else {
            return Ok(true);
        };
        if run.status.is_terminal() {
            return Ok(true);
        }
        Ok(self.get_steps(run_id).await?.iter().any(|s| {
            s.step_key == step_key
                && matches!(
                    s.status,
                    super::StepStatus::Succeeded | super::StepStatus::Failed
                )
        }))
    }

    /// Marks the requests of a finishing step final (the still-open ones become `closed`). An
    /// answer is applied only to a request that is not final, in a statement that conflicts with
    /// this one, so an answer either commits before (and a read after this call sees it) or is
    /// kept as `after_close`. Idempotent: a step executed again after a crash finds them final.
    pub async fn finalize_requests(
        &self,
        run_id: &str,
        step_key: &str,
        now: DateTime<Utc>,
    ) -> Result<()> {
        let now = ms(now);
        with_pool!(self, |pool| {
            let mut tx = pool.begin().await?;
            let closed = sqlx::query(
                "UPDATE requests SET status = CASE WHEN status = 'open' THEN 'closed' ELSE status \
                 END, final_at = $3 WHERE run_id = $1 AND step_key = $2 AND final_at IS NULL \
                 RETURNING token, workflow_id, status, record",
            )
            .bind(run_id)
            .bind(step_key)
            .bind(now)
            .fetch_all(&mut *tx)
            .await?;
            // Whoever did not answer is 未回答 for the period in the portfolio.
            for r in closed {
                let status: String = r.try_get("status")?;
                let Some(record) = r.try_get::<Option<String>, _>("record")? else {
                    continue;
                };
                if status == "answered" {
                    continue;
                }
                let record: RecordKey =
                    serde_json::from_str(&record).map_err(corrupt("requests"))?;
                let token: String = r.try_get("token")?;
                let workflow_id: String = r.try_get("workflow_id")?;
                super::portfolio::record_unanswered!(
                    tx,
                    &workflow_id,
                    run_id,
                    &token,
                    &record,
                    now
                );
            }
            tx.commit().await?;
            Ok(())
        })
    }

    /// Closes the still-open requests of one kind of a step (an escalation's acknowledgement
    /// requests once someone acknowledged, leaving its `resolve` request open).
    pub async fn close_requests_of_kind(
        &self,
        run_id: &str,
        step_key: &str,
        kind: &str,
    ) -> Result<()> {
        with_pool!(self, |pool| {
            sqlx::query(
                "UPDATE requests SET status = 'closed' WHERE run_id = $1 AND step_key = $2 \
                 AND kind = $3 AND status = 'open'",
            )
            .bind(run_id)
            .bind(step_key)
            .bind(kind)
            .execute(pool)
            .await?;
            Ok(())
        })
    }

    /// The open requests of a run of one kind (`resolve` for an escalation's end).
    pub async fn open_requests_of_run(&self, run_id: &str, kind: &str) -> Result<Vec<RequestRow>> {
        let sql = format!(
            "SELECT {REQUEST_COLUMNS} FROM requests WHERE run_id = $1 AND kind = $2 \
             AND status = 'open' ORDER BY created_at"
        );
        with_pool!(self, |pool| {
            let mut out = Vec::new();
            for r in sqlx::query(&sql)
                .bind(run_id)
                .bind(kind)
                .fetch_all(pool)
                .await?
            {
                out.push(request_row!(&r));
            }
            Ok(out)
        })
    }

    /// Records an answer that did not come by email (the web form, the API): stored as an
    /// inbound row of its own and applied like a reply.
    /// `key` makes the submission idempotent (a replayed form is not recorded twice).
    pub async fn record_answer(
        &self,
        now: DateTime<Utc>,
        answer: &NewAnswer,
        key: &str,
    ) -> Result<Recorded> {
        let Some(id) = self
            .inbound_store(key, &answer.via, b"", 0, now, None)
            .await?
        else {
            return Ok(Recorded::Replay);
        };
        let applied = self
            .inbound_apply(
                &id,
                now,
                answer.from.as_deref(),
                None,
                None,
                &Disposition::Answer {
                    answer: answer.clone(),
                    notices: Vec::new(),
                    detail: String::new(),
                },
            )
            .await?;
        Ok(match applied {
            None => Recorded::Replay,
            Some(Applied {
                after_close: Some(_),
                ..
            }) => Recorded::Closed,
            Some(_) => Recorded::Accepted,
        })
    }

    /// Resolves the open escalation of a run (its hidden `resolve` request gets an answer, which
    /// wakes the run to send the 最終報). `false` when the run has no open escalation.
    pub async fn resolve_incident(
        &self,
        run_id: &str,
        now: DateTime<Utc>,
        via: &str,
        by: &str,
        note: &str,
    ) -> Result<bool> {
        let Some(row) = self
            .open_requests_of_run(run_id, "resolve")
            .await?
            .into_iter()
            .next()
        else {
            return Ok(false);
        };
        let answer = NewAnswer {
            token: row.token.clone(),
            via: via.into(),
            from: Some(by.to_string()),
            message_id: None,
            fields: serde_json::json!({ "note": note }),
            text: note.to_string(),
            attachments: serde_json::json!([]),
            complete: true,
            form_fields: Vec::new(),
        };
        Ok(self
            .record_answer(now, &answer, &format!("resolve:{}", row.token))
            .await?
            == Recorded::Accepted)
    }
}
