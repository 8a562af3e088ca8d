//! Inbound messages (stored raw before anything is done with them) and where IMAP polling
//! stands.
//!
//! Exactly-once intake: a message is inserted under a unique `source_key` (IMAP mailbox,
//! UIDVALIDITY and UID, or a hash of its Message-ID) in the same transaction that advances the
//! mailbox's last UID; processing marks the row `done` (or `quarantined`, …) in the same transaction
//! that records the answer and wakes the waiting run. A crash between the two leaves the row
//! `pending`, and it is processed once after the restart.

use chrono::{DateTime, Utc};
use serde::Serialize;
use sqlx::Row;

use super::requests::NewAnswer;
use super::{Result, Store, StoreError, from_ms, ms};

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
    /// `pending`, `done`, `quarantined`, `held` (waiting for the addressee's confirmation).
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
    /// What sender authentication said (`pass: dmarc=pass (mx…)`), when it was asked.
    pub auth: Option<String>,
    /// When the addressee confirmed a held answer as theirs (or the PMO released it).
    pub confirmed_at: Option<DateTime<Utc>>,
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
        notices: Vec<super::NewMessage>,
        /// What the inbound row's detail says (e.g. which earlier answer this one completes).
        detail: String,
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
    /// An answer matched only by subject tag and sender, from a sender nobody authenticated:
    /// held until the addressee confirms it (`confirm_hash` finds it from the link), then
    /// processed again as confirmed.
    Hold {
        /// Request token.
        token: String,
        /// Why.
        detail: String,
        /// SHA-256 (hex) of the confirmation token mailed to the addressee.
        confirm_hash: String,
        /// The confirmation mail (none once a few are pending for the same request and sender).
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

/// Where polling of one IMAP mailbox stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MailboxState {
    /// The mailbox's UIDVALIDITY when it was registered.
    pub uidvalidity: i64,
    /// The last UID taken.
    pub last_uid: i64,
    /// Nothing older than this is processed.
    pub registered_at: DateTime<Utc>,
}

pub(super) const INBOUND_COLUMNS: &str = "id, source_key, via, received_at, size, raw, status, \
    outcome, detail, from_addr, subject, token, processed_at, auth, confirmed_at";

macro_rules! inbound_row {
    ($r:expr) => {{
        let r = $r;
        InboundRow {
            id: r.try_get("id")?,
            source_key: r.try_get("source_key")?,
            via: r.try_get("via")?,
            received_at: super::from_ms(r.try_get("received_at")?),
            size: r.try_get("size")?,
            raw: r.try_get("raw")?,
            status: r.try_get("status")?,
            outcome: r.try_get("outcome")?,
            detail: r.try_get("detail")?,
            from: r.try_get("from_addr")?,
            subject: r.try_get("subject")?,
            token: r.try_get("token")?,
            processed_at: r
                .try_get::<Option<i64>, _>("processed_at")?
                .map(super::from_ms),
            auth: r.try_get("auth")?,
            confirmed_at: r
                .try_get::<Option<i64>, _>("confirmed_at")?
                .map(super::from_ms),
        }
    }};
}
pub(super) use inbound_row;

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
        auth: Option<&str>,
        disposition: &Disposition,
    ) -> Result<Option<Applied>> {
        let (status, outcome, token, detail): (&str, &str, Option<&str>, String) = match disposition
        {
            Disposition::Answer {
                answer: a, detail, ..
            } => (
                "done",
                if a.complete {
                    "answer"
                } else {
                    "incomplete_answer"
                },
                Some(a.token.as_str()),
                detail.clone(),
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
            Disposition::Hold { token, detail, .. } => (
                "held",
                "unauthenticated",
                Some(token.as_str()),
                detail.clone(),
            ),
        };
        let confirm_hash = match disposition {
            Disposition::Hold { confirm_hash, .. } => Some(confirm_hash.as_str()),
            _ => None,
        };
        let now_ms = ms(now);
        with_pool!(self, |pool| {
            let mut tx = pool.begin().await?;
            let n = sqlx::query(
                "UPDATE inbound SET status = $1, outcome = $2, detail = $3, from_addr = $4, \
                 subject = $5, token = $6, processed_at = $7, auth = $9, \
                 confirm_hash = COALESCE($10, confirm_hash) WHERE id = $8 AND status = 'pending'",
            )
            .bind(status)
            .bind(outcome)
            .bind(&detail)
            .bind(from)
            .bind(subject)
            .bind(token)
            .bind(now_ms)
            .bind(id)
            .bind(auth)
            .bind(confirm_hash)
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
                Disposition::Answer {
                    answer: a, notices, ..
                } => {
                    let req = sqlx::query(
                        "SELECT run_id, status, deadline, tag, final_at, workflow_id, record, types, fields \
                         FROM requests WHERE token = $1",
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
                        let workflow_id: String = req.try_get("workflow_id")?;
                        let record: Option<super::RecordKey> = req
                            .try_get::<Option<String>, _>("record")?
                            .map(|r| serde_json::from_str(&r))
                            .transpose()
                            .map_err(|e| StoreError::Corrupt("requests", e.to_string()))?;
                        let types: crate::workbook::FieldTypes = req
                            .try_get::<Option<String>, _>("types")?
                            .map(|r| serde_json::from_str(&r))
                            .transpose()
                            .map_err(|e| StoreError::Corrupt("requests", e.to_string()))?
                            .unwrap_or_default();
                        let order: Vec<String> =
                            serde_json::from_str(&req.try_get::<String, _>("fields")?)
                                .map_err(|e| StoreError::Corrupt("requests", e.to_string()))?;
                        let mut answered = false;
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
                            answered = accepted;
                            if accepted {
                                nudge_run!(tx, &run_id, now_ms);
                                wake = Some(run_id.clone());
                            }
                        }
                        if accepted {
                            for m in notices {
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
                            if answered && let Some(record) = &record {
                                super::portfolio::record_accepted!(
                                    tx,
                                    &super::portfolio::Accepted {
                                        workflow_id: &workflow_id,
                                        run_id: &run_id,
                                        token: &a.token,
                                        record,
                                        answer_id: &answer_id,
                                        via: &a.via,
                                        fields: &a.fields,
                                        form_fields: &a.form_fields,
                                        types: &types,
                                        order: &order,
                                        late,
                                        now: now_ms,
                                    }
                                );
                            }
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
                Disposition::Quarantine { notify, .. } | Disposition::Hold { notify, .. } => {
                    if let Some(m) = notify {
                        insert_message!(tx, now_ms, m);
                    }
                }
            }
            tx.commit().await?;
            Ok(Some(Applied { wake, after_close }))
        })
    }

    /// Where polling of `mailbox` stands, if it was registered.
    pub async fn imap_mailbox(&self, mailbox: &str) -> Result<Option<MailboxState>> {
        with_pool!(self, |pool| {
            let row = sqlx::query(
                "SELECT uidvalidity, last_uid, registered_at FROM imap_mailboxes WHERE mailbox = $1",
            )
            .bind(mailbox)
            .fetch_optional(pool)
            .await?;
            match row {
                Some(r) => Ok(Some(MailboxState {
                    uidvalidity: r.try_get(0usize)?,
                    last_uid: r.try_get(1usize)?,
                    registered_at: from_ms(r.try_get(2usize)?),
                })),
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
