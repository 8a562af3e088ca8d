//! The mails intake sends back: to the sender of an answer that needs correcting or misses
//! required fields, and to the PMO when a message was held.

use serde_json::json;

use super::Intake;
use crate::inbound::{Inbound, correlate, reply};
use crate::message::email::{EmailSpec, build};
use crate::store::{InboundRow, MessageKind, NewMessage, RequestRow};
use crate::workbook::Problem;

impl Intake {
    /// To the sender of an answer whose 様式 needs correcting: one mail naming each sheet and
    /// cell and what is wrong, and any required item that is still missing.
    pub(super) fn correction_notice(
        &self,
        row: &InboundRow,
        msg: &Inbound,
        req: &RequestRow,
        problems: &[Problem],
        missing: &[&String],
        with_form: bool,
    ) -> Option<NewMessage> {
        let mut lines: Vec<String> = problems
            .iter()
            .map(|p| format!("  ・{}", p.message))
            .collect();
        lines.extend(missing.iter().map(|f| format!("  ・{f}が未記入です")));
        // Cells are fixed in the 様式; values written in the body are written again.
        let in_body: Vec<&String> = problems
            .iter()
            .filter(|p| p.at.is_none())
            .filter_map(|p| p.field.as_ref())
            .chain(missing.iter().copied().filter(|_| !with_form))
            .collect();
        let mut how = Vec::new();
        if with_form && (problems.iter().any(|p| p.at.is_some()) || in_body.is_empty()) {
            how.push(
                "お手数ですが、様式を修正のうえ本メールに添付してご返信ください。".to_string(),
            );
        }
        if !in_body.is_empty() {
            let fix: Vec<String> = in_body
                .iter()
                .map(|f| match req.types.hint(f) {
                    Some(h) => format!("{f}（{h}）: "),
                    None => format!("{f}: "),
                })
                .collect();
            how.push(format!(
                "お手数ですが、本メールにご返信いただき、下記の項目の「:」の後に正しい値をご記入ください。\n\n{}",
                fix.join("\n")
            ));
        }
        let how = how.join("\n");
        let text = format!(
            "{}\nご回答ありがとうございます。\n\
             ご提出いただいた内容を確認したところ、以下の点について修正をお願いいたします。\n\n{}\n\n\
             {how}\n\n\
             （本メールは pmoflow により自動送信されています）\n",
            reply::CUT_MARKER,
            lines.join("\n")
        );
        let base = ["【要回答】", "【ご依頼】", "【要修正】"]
            .iter()
            .find_map(|p| req.subject.strip_prefix(p))
            .unwrap_or(&req.subject);
        self.notice_to_sender(
            row,
            msg,
            req,
            format!("【要修正】{base}"),
            text,
            "correction",
        )
    }

    pub(super) fn domain(&self) -> String {
        crate::message::email::bare(&self.services.mail.from)
            .rsplit_once('@')
            .map(|(_, d)| d.to_string())
            .unwrap_or_else(|| "pmoflow.localhost".into())
    }

    /// To the sender of an answer that misses required fields (a person, matched and verified:
    /// never an automatic or unmatched message).
    pub(super) fn missing_notice(
        &self,
        row: &InboundRow,
        msg: &Inbound,
        req: &RequestRow,
        missing: &[&String],
    ) -> Option<NewMessage> {
        let list: Vec<String> = missing.iter().map(|f| format!("  {f}: ")).collect();
        let text = format!(
            "{}\nご回答ありがとうございます。\n以下の必須項目が確認できませんでした。お手数ですが、ご記入のうえ本メールにご返信ください。\n\n{}\n\n（本メールは pmoflow により自動送信されています）\n",
            reply::CUT_MARKER,
            list.join("\n")
        );
        let subject = format!(
            "【要再回答】{}",
            req.subject.trim_start_matches("【要回答】")
        );
        self.notice_to_sender(row, msg, req, subject, text, "missing")
    }

    /// A notice to the (verified) sender of an answer, as a reply on the request's thread.
    pub(super) fn notice_to_sender(
        &self,
        row: &InboundRow,
        msg: &Inbound,
        req: &RequestRow,
        subject: String,
        text: String,
        what: &str,
    ) -> Option<NewMessage> {
        let pattern = self.services.replies.pattern(&self.services.mail.from);
        let message_id = format!("<pmoflow.{}.m{}@{}>", req.token, row.id, self.domain());
        self.plain_mail(
            format!("inbound:{}:{what}", row.id),
            msg.from.clone()?,
            Some(correlate::reply_address(&pattern, &req.token)),
            subject,
            text,
            message_id,
        )
    }

    /// To the PMO: a message was held for a person to look at.
    pub(super) fn pmo_notice(
        &self,
        row: &InboundRow,
        from: Option<&str>,
        subject: Option<&str>,
        detail: &str,
    ) -> Option<NewMessage> {
        let to = self
            .services
            .replies
            .notify
            .clone()
            .unwrap_or_else(|| self.services.mail.from.clone());
        let text = format!(
            "受信したメールを保留しました。内容をご確認ください。\n\n\
             差出人: {}\n件名: {}\n受信日時: {}\n理由: {detail}\n受信ID: {}\n\n\
             確認: pmoflow inbound show {}\n\n（本メールは pmoflow により自動送信されています）\n",
            from.unwrap_or("（不明）"),
            subject.unwrap_or("（なし）"),
            row.received_at
                .with_timezone(&self.services.mail.timezone)
                .format("%Y-%m-%d %H:%M"),
            row.id,
            row.id
        );
        let message_id = format!("<pmoflow.inbound.{}@{}>", row.id, self.domain());
        self.plain_mail(
            format!("inbound:{}:quarantine", row.id),
            to,
            None,
            "【pmoflow】受信メールを保留しました".into(),
            text,
            message_id,
        )
    }

    /// One plain-text mail from the PMO's address to `to`, queued under the idempotency `key`.
    pub(super) fn plain_mail(
        &self,
        key: String,
        to: String,
        reply_to: Option<String>,
        subject: String,
        text: String,
        message_id: String,
    ) -> Option<NewMessage> {
        let spec = EmailSpec {
            from: self.services.mail.from.clone(),
            to: vec![to.clone()],
            cc: Vec::new(),
            bcc: Vec::new(),
            reply_to,
            subject,
            text,
            html: None,
            attachments: Vec::new(),
            message_id: message_id.clone(),
            date: self.clock.now(),
            timezone: self.services.mail.timezone,
            charset: self.services.mail.charset,
        };
        let built = build(&spec).ok()?;
        Some(NewMessage {
            kind: MessageKind::Email,
            key,
            target: to,
            message_id,
            payload: json!({ "from": built.envelope_from, "to": built.envelope_to, "raw": built.raw }),
        })
    }
}
