//! Answers held for the addressee's confirmation, and the confirmation itself.
//!
//! A reply matched only by subject tag and sender, whose sender nobody authenticated, could be
//! anyone writing the addressee's address in `From`. It is held, and the address it claims gets
//! a mail with a link: one click on the page (a POST) confirms it, and the message is processed
//! again as confirmed. If it was forged, the real owner of the address ignores the mail and the
//! forgery never counts. Without `[http] public_url` there is no page: the PMO is told instead
//! and releases the message with `pmoflow inbound release ID`.

use sha2::{Digest, Sha256};

use chrono::{DateTime, Utc};

use super::{Intake, MAX_PENDING_CONFIRMATIONS, Processed, quarantine};
use crate::inbound::auth::{AuthResult, Verdict};
use crate::inbound::correlate::Key;
use crate::inbound::{Inbound, Kind};
use crate::store::{Disposition, InboundRow, NewMessage, RequestRow, StoreError};

/// `subject` without its `[#tag]` (in any width).
fn without_tag(subject: &str) -> String {
    static TAG: std::sync::LazyLock<Option<regex::Regex>> = std::sync::LazyLock::new(|| {
        regex::Regex::new(r"\s*[\[［]\s*[#＃]\s*[0-9０-９]+\s*[\]］]").ok()
    });
    match TAG.as_ref() {
        Some(re) => re.replace_all(subject, "").trim().to_string(),
        None => subject.to_string(),
    }
}

/// The SHA-256 (hex) a confirmation token is stored as.
pub fn confirm_hash(token: &str) -> String {
    hex::encode(Sha256::digest(token.as_bytes()))
}

/// What sender authentication lets through.
pub(super) enum Gate {
    /// Decided here (quarantined or held), with the verdict.
    Decided(Box<Disposition>, Option<String>),
    /// On to the ordinary decision, with the verdict if one was reached.
    Open(Option<String>),
}

impl Intake {
    /// A trusted `dmarc=fail` quarantines whatever matched; a reply matched by subject tag whose
    /// sender is not authenticated (and not confirmed) is held; the rest goes on.
    pub(super) async fn gate(
        &self,
        row: &InboundRow,
        msg: &Inbound,
        found: Option<&(RequestRow, Key)>,
        said: Option<Verdict>,
        now: DateTime<Utc>,
    ) -> Result<Gate, StoreError> {
        if let Some(v) = said.as_ref().filter(|v| v.result == AuthResult::Fail) {
            let detail = format!(
                "sender authentication failed ({}): the From address is not the sender's",
                v.reason
            );
            let notify = self.pmo_notice(row, msg.from.as_deref(), Some(&msg.subject), &detail);
            let token = found.map(|(r, _)| r.token.clone());
            return Ok(Gate::Decided(
                Box::new(quarantine("auth_failed", token, detail, notify)),
                Some(v.summary()),
            ));
        }
        let mut auth = said.as_ref().map(Verdict::summary);
        if let (Kind::Reply, Some((req, Key::SubjectTag(_)))) = (&msg.kind, found)
            && row.confirmed_at.is_none()
            && req.status == "open"
            && now <= req.expires_at
            && req.kind != "resolve"
        {
            let verdict = match said {
                Some(v) if v.result == AuthResult::Pass => v,
                _ => self.auth.verdict(&row.raw, msg.from.as_deref()).await,
            };
            auth = Some(verdict.summary());
            if verdict.result != AuthResult::Pass {
                let disposition = self.hold(row, msg, req, &verdict).await?;
                return Ok(Gate::Decided(Box::new(disposition), auth));
            }
        }
        if row.confirmed_at.is_some() {
            auth = Some(match auth {
                Some(a) => format!("{a}; confirmed by the addressee"),
                None => "confirmed by the addressee".into(),
            });
        }
        Ok(Gate::Open(auth))
    }

    /// Holds a reply until the address it claims confirms it.
    pub(super) async fn hold(
        &self,
        row: &InboundRow,
        msg: &Inbound,
        req: &RequestRow,
        verdict: &Verdict,
    ) -> Result<Disposition, StoreError> {
        let from = msg.from.clone().unwrap_or_default();
        let token = crate::message::correlate::new_token()?;
        let mut detail = format!(
            "matched request {} by its subject tag and the sender's address only, and the sender \
             is not authenticated ({}); held until {from} confirms it",
            req.tag, verdict.reason
        );
        let pending = self.store.inbound_held_count(&req.token, &from).await?;
        let notify = match &self.services.replies.public_url {
            _ if pending >= MAX_PENDING_CONFIRMATIONS => {
                detail.push_str(&format!(
                    "; no confirmation mail: {pending} are already waiting for this sender"
                ));
                None
            }
            Some(url) => self.confirm_notice(row, msg, req, &format!("{url}/confirm/{token}")),
            None => {
                detail.push_str(&format!(
                    "; no [http] public_url for a confirmation link: release it with \
                     `pmoflow inbound release {}`",
                    row.id
                ));
                self.pmo_notice(row, Some(&from), Some(&msg.subject), &detail)
            }
        };
        Ok(Disposition::Hold {
            token: req.token.clone(),
            detail,
            confirm_hash: confirm_hash(&token),
            notify,
        })
    }

    /// The mail to the address a held reply claims: what arrived, and the link to confirm it.
    fn confirm_notice(
        &self,
        row: &InboundRow,
        msg: &Inbound,
        req: &RequestRow,
        link: &str,
    ) -> Option<NewMessage> {
        let to = msg.from.clone()?;
        let tz = self.services.mail.timezone;
        let name = msg
            .from_name
            .as_deref()
            .filter(|n| !n.trim().is_empty())
            .map(|n| format!("{n} 様"))
            .unwrap_or_else(|| "ご担当者 様".into());
        let text = format!(
            "{name}\n\n\
             PMO事務局です。\n\
             「{subject}」へのご回答として、{to} から次のメールを受信しました。\n\n\
             \u{3000}受信日時: {received}\n\
             \u{3000}件名: {got}\n\n\
             送信元を確認できなかったため、まだ回答として受け付けていません。\n\
             ご本人が送信されたメールであれば、次のリンクを開き、「回答として受け付ける」ボタンを押してください。\n\n\
             {link}\n\n\
             お心当たりのない場合は、本メールを破棄してください。回答として扱われることはありません。\n\
             （リンクの有効期限: {expires}）\n\n\
             （本メールは pmoflow により自動送信されています。本メールへの返信は回答として扱われません）\n",
            subject = req.subject,
            received = row
                .received_at
                .with_timezone(&tz)
                .format("%Y年%-m月%-d日 %H:%M"),
            got = msg.subject,
            expires = req
                .expires_at
                .with_timezone(&tz)
                .format("%Y年%-m月%-d日 %H:%M"),
        );
        // Its own Message-ID and no reply address: a reply to it matches no request.
        let message_id = format!("<pmoflow.confirm.{}@{}>", row.id, self.domain());
        // Without the request's tag, and no reply address: a reply to this mail must not match
        // the request.
        self.plain_mail(
            format!("inbound:{}:confirm", row.id),
            to,
            None,
            format!(
                "【確認のお願い】ご回答の受付確認（{}）",
                without_tag(&req.subject)
            ),
            text,
            message_id,
        )
    }

    /// Confirms a held message and processes it at once. `None` if nothing is held under that
    /// key (confirmed before, or unknown). `by_hash`: `key` is the token from the link;
    /// otherwise it is the inbound id (the PMO releasing it).
    pub async fn confirm(&self, key: &str, by_link: bool) -> Result<Option<Processed>, StoreError> {
        let key = if by_link {
            confirm_hash(key)
        } else {
            key.to_string()
        };
        let Some(row) = self
            .store
            .inbound_confirm(&key, by_link, self.clock.now())
            .await?
        else {
            return Ok(None);
        };
        tracing::info!(inbound = %row.id, by_link, "held reply confirmed");
        self.process(&row).await
    }
}
