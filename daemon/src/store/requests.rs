//! Requests (what was asked of whom), answers (what came back) and inbound messages (stored raw
//! before anything is done with them), and where IMAP polling stands.
//!
//! Exactly-once intake: a message is inserted under a unique `source_key` (IMAP mailbox,
//! UIDVALIDITY and UID, or a hash of its Message-ID) in the same transaction that advances the
//! mailbox's last UID; processing marks the row `done` (or `quarantined`, …) in the same transaction
//! that records the answer and wakes the waiting run. A crash between the two leaves the row
//! `pending`, and it is processed once after the restart.

use chrono::{DateTime, Utc};
use serde::Serialize;
use serde_json::Value as Json;
use sqlx::Row;

use super::{Backend, Result, Store, StoreError, from_ms, ms};

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
}

/// A request as stored.
#[derive(Debug, Clone, Serialize)]
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
}

/// An inbound message row.
#[derive(Debug, Clone, Serialize)]
pub struct InboundRow {
    /// Row id.
    pub id: String,
    /// Idempotency key of the intake.
    pub source_key: String,
    /// `imap`, `http` or `stdin`.
    pub via: String,
    /// When it was stored.
    pub received_at: DateTime<Utc>,
    /// Bytes.
    pub size: i64,
    /// The message as received.
    #[serde(skip)]
    pub raw: Vec<u8>,
    /// `pending`, `done`, `quarantined` or `ignored`.
    pub status: String,
    /// What processing decided (`answer`, `auto_reply`, `bounce`, `unmatched`, …).
    pub outcome: Option<String>,
    /// Why.
    pub detail: Option<String>,
    /// Sender.
    pub from: Option<String>,
    /// Subject.
    pub subject: Option<String>,
    /// The request it was matched to.
    #[serde(skip)]
    pub token: Option<String>,
    /// When it was processed.
    pub processed_at: Option<DateTime<Utc>>,
}

/// What processing an inbound message decided; applied in one transaction with the row's status.
#[derive(Debug, Clone)]
pub enum Disposition {
    /// An answer to a request: recorded, the request marked answered (if complete), the run
    /// woken; `notice` (e.g. "a required field is missing" to the sender) queued with it.
    Answer {
        /// The answer.
        answer: NewAnswer,
        /// A message to queue in the same transaction.
        notice: Option<super::NewMessage>,
    },
    /// A bounce for a request: the request marked bounced, the run woken.
    Bounce {
        /// Request token.
        token: String,
        /// What the report said.
        detail: String,
    },
    /// Recorded and nothing else (auto-replies, late answers to a closed request, duplicates).
    Record {
        /// Outcome name.
        outcome: String,
        /// Token matched, if any.
        token: Option<String>,
        /// Why.
        detail: String,
    },
    /// Held for a person; `notify` (a message to the PMO) is queued in the same transaction.
    Quarantine {
        /// Outcome name (`unmatched`, `wrong_sender`, `too_large`, `unreadable`, …).
        outcome: String,
        /// Token matched, if any.
        token: Option<String>,
        /// Why.
        detail: String,
        /// The notice to the PMO.
        notify: Option<super::NewMessage>,
    },
}

/// What applying an inbound message did.
#[derive(Debug, Default)]
pub struct Applied {
    /// The run it woke (an answer or a bounce).
    pub wake: Option<String>,
    /// Set when an answer lost the race with its step's end: it was recorded as `after_close`
    /// with this detail instead.
    pub after_close: Option<String>,
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
    answer_id, bounced_at, bounce, final_at";
const ANSWER_COLUMNS: &str =
    "id, token, received_at, via, from_addr, message_id, fields, free_text, attachments, late";
const INBOUND_COLUMNS: &str = "id, source_key, via, received_at, size, raw, status, outcome, detail, \
    from_addr, subject, token, processed_at";

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

macro_rules! inbound_row {
    ($r:expr) => {{
        let r = $r;
        InboundRow {
            id: r.try_get("id")?,
            source_key: r.try_get("source_key")?,
            via: r.try_get("via")?,
            received_at: from_ms(r.try_get("received_at")?),
            size: r.try_get("size")?,
            raw: r.try_get("raw")?,
            status: r.try_get("status")?,
            outcome: r.try_get("outcome")?,
            detail: r.try_get("detail")?,
            from: r.try_get("from_addr")?,
            subject: r.try_get("subject")?,
            token: r.try_get("token")?,
            processed_at: r.try_get::<Option<i64>, _>("processed_at")?.map(from_ms),
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
                 expires_at, status) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, \
                 $13, $14, $15, $16, 'open') ON CONFLICT DO NOTHING",
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
            .execute(&mut *$conn)
            .await?;
        }
    }};
}
pub(super) use insert_requests;

/// Wakes a run now (or, if it is executing, makes its next park wake it at once).
macro_rules! nudge_run {
    ($conn:expr, $run_id:expr, $now:expr) => {{
        sqlx::query(
            "UPDATE runs SET nudged_at = $1, wake_at = CASE WHEN lease_owner IS NULL AND \
             wake_at IS NOT NULL AND wake_at > $1 THEN $1 ELSE wake_at END \
             WHERE id = $2 AND status IN ('pending', 'running', 'waiting')",
        )
        .bind($now)
        .bind($run_id)
        .execute(&mut *$conn)
        .await?;
    }};
}

macro_rules! insert_message {
    ($conn:expr, $now:expr, $m:expr) => {{
        let m: &super::NewMessage = $m;
        sqlx::query(
            "INSERT INTO outbox (id, idempotency_key, run_id, step_key, kind, target, message_id, \
             payload, status, attempts, next_attempt_at, created_at) VALUES ($1, $2, NULL, NULL, \
             $3, $4, $5, $6, 'pending', 0, $7, $7) ON CONFLICT DO NOTHING",
        )
        .bind(uuid::Uuid::now_v7().to_string())
        .bind(m.key.as_str())
        .bind(m.kind.as_str())
        .bind(m.target.as_str())
        .bind(m.message_id.as_str())
        .bind(m.payload.to_string())
        .bind($now)
        .execute(&mut *$conn)
        .await?;
    }};
}

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

    /// Whether an arrival with this source key (an IMAP UID, a Message-ID hash, a form nonce)
    /// has been stored before.
    pub async fn inbound_seen(&self, source_key: &str) -> Result<bool> {
        with_pool!(self, |pool| {
            let row = sqlx::query("SELECT 1 FROM inbound WHERE source_key = $1")
                .bind(source_key)
                .fetch_optional(pool)
                .await?;
            Ok(row.is_some())
        })
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
        with_pool!(self, |pool| {
            sqlx::query(
                "UPDATE requests SET status = CASE WHEN status = 'open' THEN 'closed' ELSE status \
                 END, final_at = $3 WHERE run_id = $1 AND step_key = $2 AND final_at IS NULL",
            )
            .bind(run_id)
            .bind(step_key)
            .bind(ms(now))
            .execute(pool)
            .await?;
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

    /// Stores an inbound message unless one with the same `source_key` was stored before.
    /// Returns the new row's id, or `None` for a duplicate. With `advance`, the IMAP mailbox's
    /// last UID moves in the same transaction.
    pub async fn inbound_store(
        &self,
        source_key: &str,
        via: &str,
        raw: &[u8],
        size: usize,
        now: DateTime<Utc>,
        advance: Option<(&str, i64, i64)>,
    ) -> Result<Option<String>> {
        let id = uuid::Uuid::now_v7().to_string();
        with_pool!(self, |pool| {
            let mut tx = pool.begin().await?;
            let n = sqlx::query(
                "INSERT INTO inbound (id, source_key, via, received_at, size, raw, status) \
                 VALUES ($1, $2, $3, $4, $5, $6, 'pending') ON CONFLICT DO NOTHING",
            )
            .bind(&id)
            .bind(source_key)
            .bind(via)
            .bind(ms(now))
            .bind(i64::try_from(size).unwrap_or(i64::MAX))
            .bind(raw)
            .execute(&mut *tx)
            .await?
            .rows_affected();
            if let Some((mailbox, uidvalidity, uid)) = advance {
                sqlx::query(
                    "UPDATE imap_mailboxes SET last_uid = $1, updated_at = $2 WHERE mailbox = $3 \
                     AND uidvalidity = $4 AND last_uid < $1",
                )
                .bind(uid)
                .bind(ms(now))
                .bind(mailbox)
                .bind(uidvalidity)
                .execute(&mut *tx)
                .await?;
            }
            tx.commit().await?;
            Ok((n > 0).then_some(id))
        })
    }

    /// Inbound messages not processed yet, oldest first.
    pub async fn inbound_pending(&self, limit: i64) -> Result<Vec<InboundRow>> {
        let sql = format!(
            "SELECT {INBOUND_COLUMNS} FROM inbound WHERE status = 'pending' \
             ORDER BY received_at, id LIMIT $1"
        );
        with_pool!(self, |pool| {
            let mut out = Vec::new();
            for r in sqlx::query(&sql).bind(limit).fetch_all(pool).await? {
                out.push(inbound_row!(&r));
            }
            Ok(out)
        })
    }

    /// One inbound message.
    pub async fn inbound_get(&self, id: &str) -> Result<Option<InboundRow>> {
        let sql = format!("SELECT {INBOUND_COLUMNS} FROM inbound WHERE id = $1");
        with_pool!(self, |pool| {
            match sqlx::query(&sql).bind(id).fetch_optional(pool).await? {
                Some(r) => Ok(Some(inbound_row!(&r))),
                None => Ok(None),
            }
        })
    }

    /// Inbound messages, newest first, optionally only one status.
    pub async fn inbound_list(&self, status: Option<&str>, limit: i64) -> Result<Vec<InboundRow>> {
        let sql = format!(
            "SELECT {INBOUND_COLUMNS} FROM inbound WHERE ($1 IS NULL OR status = $1) \
             ORDER BY received_at DESC, id DESC LIMIT $2"
        );
        with_pool!(self, |pool| {
            let mut out = Vec::new();
            for r in sqlx::query(&sql)
                .bind(status)
                .bind(limit)
                .fetch_all(pool)
                .await?
            {
                out.push(inbound_row!(&r));
            }
            Ok(out)
        })
    }

    /// Applies what processing decided about a pending inbound message, in one transaction with
    /// marking it processed. Returns the run to wake, if any, or `None` also when the message
    /// had already been processed (by another daemon, or before a crash).
    pub async fn inbound_apply(
        &self,
        id: &str,
        now: DateTime<Utc>,
        from: Option<&str>,
        subject: Option<&str>,
        disposition: &Disposition,
    ) -> Result<Option<Applied>> {
        let (status, outcome, token, detail): (&str, &str, Option<&str>, String) = match disposition
        {
            Disposition::Answer { answer: a, .. } => (
                "done",
                if a.complete {
                    "answer"
                } else {
                    "incomplete_answer"
                },
                Some(a.token.as_str()),
                String::new(),
            ),
            Disposition::Bounce { token, detail } => {
                ("done", "bounce", Some(token.as_str()), detail.clone())
            }
            Disposition::Record {
                outcome,
                token,
                detail,
            } => ("done", outcome.as_str(), token.as_deref(), detail.clone()),
            Disposition::Quarantine {
                outcome,
                token,
                detail,
                ..
            } => (
                "quarantined",
                outcome.as_str(),
                token.as_deref(),
                detail.clone(),
            ),
        };
        let now_ms = ms(now);
        with_pool!(self, |pool| {
            let mut tx = pool.begin().await?;
            let n = sqlx::query(
                "UPDATE inbound SET status = $1, outcome = $2, detail = $3, from_addr = $4, \
                 subject = $5, token = $6, processed_at = $7 WHERE id = $8 AND status = 'pending'",
            )
            .bind(status)
            .bind(outcome)
            .bind(&detail)
            .bind(from)
            .bind(subject)
            .bind(token)
            .bind(now_ms)
            .bind(id)
            .execute(&mut *tx)
            .await?
            .rows_affected();
            if n == 0 {
                tx.rollback().await?;
                return Ok(None);
            }
            let mut wake = None;
            let mut after_close = None;
            match disposition {
                Disposition::Answer { answer: a, notice } => {
                    let req = sqlx::query(
                        "SELECT run_id, status, deadline, tag, final_at FROM requests \
                         WHERE token = $1",
                    )
                    .bind(&a.token)
                    .fetch_optional(&mut *tx)
                    .await?;
                    if let Some(req) = req {
                        let run_id: String = req.try_get("run_id")?;
                        let req_status: String = req.try_get("status")?;
                        let deadline: Option<i64> = req.try_get("deadline")?;
                        let tag: i64 = req.try_get("tag")?;
                        let final_at: Option<i64> = req.try_get("final_at")?;
                        let late = deadline.is_some_and(|d| now_ms > d);
                        let answer_id = uuid::Uuid::now_v7().to_string();
                        // Decided as an answer, but the step may have finished since: the
                        // conditional update is what counts (it waits for, and then sees, a
                        // concurrent `finalize_requests`).
                        let mut accepted = final_at.is_none() && req_status != "closed";
                        if accepted && a.complete && req_status != "bounced" {
                            let n = sqlx::query(
                                "UPDATE requests SET status = 'answered', answered_at = $1, \
                                 answer_id = $2 WHERE token = $3 AND status IN ('open', 'answered') \
                                 AND final_at IS NULL",
                            )
                            .bind(now_ms)
                            .bind(&answer_id)
                            .bind(&a.token)
                            .execute(&mut *tx)
                            .await?
                            .rows_affected();
                            accepted = n > 0;
                            if accepted {
                                nudge_run!(tx, &run_id, now_ms);
                                wake = Some(run_id);
                            }
                        }
                        if accepted {
                            if let Some(m) = notice {
                                insert_message!(tx, now_ms, m);
                            }
                            sqlx::query(
                                "INSERT INTO answers (id, token, received_at, via, from_addr, \
                                 message_id, fields, free_text, attachments, late, inbound_id) \
                                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)",
                            )
                            .bind(&answer_id)
                            .bind(&a.token)
                            .bind(now_ms)
                            .bind(&a.via)
                            .bind(a.from.as_deref())
                            .bind(a.message_id.as_deref())
                            .bind(a.fields.to_string())
                            .bind(&a.text)
                            .bind(a.attachments.to_string())
                            .bind(i64::from(late))
                            .bind(id)
                            .execute(&mut *tx)
                            .await?;
                        } else {
                            let detail = format!(
                                "request {tag} was already closed; the message is kept but not \
                                 taken as an answer"
                            );
                            sqlx::query(
                                "UPDATE inbound SET outcome = 'after_close', detail = $1 \
                                 WHERE id = $2",
                            )
                            .bind(&detail)
                            .bind(id)
                            .execute(&mut *tx)
                            .await?;
                            after_close = Some(detail);
                        }
                    }
                }
                Disposition::Bounce { token, detail } => {
                    let run: Option<String> = sqlx::query(
                        "UPDATE requests SET status = 'bounced', bounced_at = $1, bounce = $2 \
                         WHERE token = $3 AND status = 'open' RETURNING run_id",
                    )
                    .bind(now_ms)
                    .bind(detail)
                    .bind(token)
                    .fetch_optional(&mut *tx)
                    .await?
                    .map(|r| r.try_get(0usize))
                    .transpose()?;
                    if let Some(run_id) = run {
                        nudge_run!(tx, &run_id, now_ms);
                        wake = Some(run_id);
                    }
                }
                Disposition::Record { .. } => {}
                Disposition::Quarantine { notify, .. } => {
                    if let Some(m) = notify {
                        insert_message!(tx, now_ms, m);
                    }
                }
            }
            tx.commit().await?;
            Ok(Some(Applied { wake, after_close }))
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
                &Disposition::Answer {
                    answer: answer.clone(),
                    notice: None,
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
        };
        Ok(self
            .record_answer(now, &answer, &format!("resolve:{}", row.token))
            .await?
            == Recorded::Accepted)
    }

    /// Where polling of `mailbox` stands: `(uidvalidity, last_uid, registered_at)`.
    pub async fn imap_mailbox(&self, mailbox: &str) -> Result<Option<(i64, i64, DateTime<Utc>)>> {
        with_pool!(self, |pool| {
            let row = sqlx::query(
                "SELECT uidvalidity, last_uid, registered_at FROM imap_mailboxes WHERE mailbox = $1",
            )
            .bind(mailbox)
            .fetch_optional(pool)
            .await?;
            match row {
                Some(r) => Ok(Some((
                    r.try_get(0usize)?,
                    r.try_get(1usize)?,
                    from_ms(r.try_get(2usize)?),
                ))),
                None => Ok(None),
            }
        })
    }

    /// Registers `mailbox` (or re-registers it after its UIDVALIDITY changed): polling starts
    /// after `last_uid`, and nothing older than `registered_at` is processed.
    pub async fn imap_register(
        &self,
        mailbox: &str,
        uidvalidity: i64,
        last_uid: i64,
        registered_at: DateTime<Utc>,
    ) -> Result<()> {
        with_pool!(self, |pool| {
            sqlx::query(
                "INSERT INTO imap_mailboxes (mailbox, uidvalidity, last_uid, registered_at, \
                 updated_at) VALUES ($1, $2, $3, $4, $4) ON CONFLICT (mailbox) DO UPDATE SET \
                 uidvalidity = excluded.uidvalidity, last_uid = excluded.last_uid, \
                 registered_at = excluded.registered_at, updated_at = excluded.updated_at",
            )
            .bind(mailbox)
            .bind(uidvalidity)
            .bind(last_uid)
            .bind(ms(registered_at))
            .execute(pool)
            .await?;
            Ok(())
        })
    }
}

impl Store {
    /// The shared setting `name`, created with `make()` by whichever daemon asks first.
    pub async fn setting_or_insert(
        &self,
        name: &str,
        now: DateTime<Utc>,
        make: impl FnOnce() -> String,
    ) -> Result<String> {
        let value = make();
        with_pool!(self, |pool| {
            sqlx::query(
                "INSERT INTO settings (name, value, created_at) VALUES ($1, $2, $3) \
                 ON CONFLICT (name) DO NOTHING",
            )
            .bind(name)
            .bind(&value)
            .bind(ms(now))
            .execute(pool)
            .await?;
            let r = sqlx::query("SELECT value FROM settings WHERE name = $1")
                .bind(name)
                .fetch_one(pool)
                .await?;
            Ok(r.try_get(0usize)?)
        })
    }
}

/// An audit-log entry.
#[derive(Debug, Clone, Serialize)]
pub struct AuditRow {
    /// When.
    pub at: DateTime<Utc>,
    /// Who (token name).
    pub actor: String,
    /// What (`trigger`, `cancel`, `retry_outbox`, `ack`, `inbound`, `hook`).
    pub action: String,
    /// On what (run id, message id, workflow).
    pub target: Option<String>,
    /// Details.
    pub detail: Option<String>,
}

impl Store {
    /// Appends to the audit log.
    pub async fn audit(
        &self,
        now: DateTime<Utc>,
        actor: &str,
        action: &str,
        target: Option<&str>,
        detail: Option<&str>,
    ) -> Result<()> {
        with_pool!(self, |pool| {
            sqlx::query(
                "INSERT INTO audit_log (id, at, actor, action, target, detail) VALUES ($1, $2, $3, $4, $5, $6)",
            )
            .bind(uuid::Uuid::now_v7().to_string())
            .bind(ms(now))
            .bind(actor)
            .bind(action)
            .bind(target)
            .bind(detail)
            .execute(pool)
            .await?;
            Ok(())
        })
    }

    /// The newest audit entries.
    pub async fn list_audit(&self, limit: i64) -> Result<Vec<AuditRow>> {
        with_pool!(self, |pool| {
            let mut out = Vec::new();
            for r in sqlx::query(
                "SELECT at, actor, action, target, detail FROM audit_log ORDER BY at DESC, id DESC LIMIT $1",
            )
            .bind(limit)
            .fetch_all(pool)
            .await?
            {
                out.push(AuditRow {
                    at: from_ms(r.try_get(0usize)?),
                    actor: r.try_get(1usize)?,
                    action: r.try_get(2usize)?,
                    target: r.try_get(3usize)?,
                    detail: r.try_get(4usize)?,
                });
            }
            Ok(out)
        })
    }

    /// Runs counted by workflow and status.
    pub async fn run_counts(&self) -> Result<Vec<(String, String, i64)>> {
        with_pool!(self, |pool| {
            let mut out = Vec::new();
            for r in sqlx::query(
                "SELECT workflow_id, status, COUNT(*) FROM runs GROUP BY workflow_id, status ORDER BY workflow_id, status",
            )
            .fetch_all(pool)
            .await?
            {
                out.push((r.try_get(0usize)?, r.try_get(1usize)?, r.try_get(2usize)?));
            }
            Ok(out)
        })
    }
}

/// A browser session.
#[derive(Debug, Clone)]
pub struct SessionRow {
    /// The API token it was opened with (its name).
    pub token_name: String,
    /// `viewer`, `operator` or `admin`.
    pub role: String,
    /// The CSRF token of its forms.
    pub csrf: String,
    /// When it ends.
    pub expires_at: DateTime<Utc>,
}

impl Store {
    /// Opens a session under the SHA-256 of its cookie value.
    pub async fn session_create(
        &self,
        id_hash: &str,
        session: &SessionRow,
        now: DateTime<Utc>,
    ) -> Result<()> {
        with_pool!(self, |pool| {
            sqlx::query("DELETE FROM sessions WHERE expires_at < $1")
                .bind(ms(now))
                .execute(pool)
                .await?;
            sqlx::query(
                "INSERT INTO sessions (id_hash, token_name, role, csrf, created_at, expires_at) \
                 VALUES ($1, $2, $3, $4, $5, $6)",
            )
            .bind(id_hash)
            .bind(&session.token_name)
            .bind(&session.role)
            .bind(&session.csrf)
            .bind(ms(now))
            .bind(ms(session.expires_at))
            .execute(pool)
            .await?;
            Ok(())
        })
    }

    /// The live session with this id hash.
    pub async fn session_get(
        &self,
        id_hash: &str,
        now: DateTime<Utc>,
    ) -> Result<Option<SessionRow>> {
        with_pool!(self, |pool| {
            let r = sqlx::query(
                "SELECT token_name, role, csrf, expires_at FROM sessions WHERE id_hash = $1 AND expires_at > $2",
            )
            .bind(id_hash)
            .bind(ms(now))
            .fetch_optional(pool)
            .await?;
            match r {
                Some(r) => Ok(Some(SessionRow {
                    token_name: r.try_get(0usize)?,
                    role: r.try_get(1usize)?,
                    csrf: r.try_get(2usize)?,
                    expires_at: from_ms(r.try_get(3usize)?),
                })),
                None => Ok(None),
            }
        })
    }

    /// Ends a session.
    pub async fn session_delete(&self, id_hash: &str) -> Result<()> {
        with_pool!(self, |pool| {
            sqlx::query("DELETE FROM sessions WHERE id_hash = $1")
                .bind(id_hash)
                .execute(pool)
                .await?;
            Ok(())
        })
    }
}
