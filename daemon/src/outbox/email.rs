//! Building an email: UTF-8 with RFC 2047 headers and a base64 / quoted-printable body (lettre
//! chooses the shorter), a Message-ID pmoflow chose, `Auto-Submitted` and
//! `X-Auto-Response-Suppress` so that auto-replies do not loop, and `Date` in the configured zone.

use chrono::{DateTime, Utc};
use lettre::Message;
use lettre::message::header::{self, Header, HeaderName, HeaderValue};
use lettre::message::{Attachment, Mailbox, MultiPart, SinglePart};

/// Everything an email is made of.
#[derive(Debug, Clone)]
pub struct EmailSpec {
    /// `From:`.
    pub from: String,
    /// `To:`.
    pub to: Vec<String>,
    /// `Cc:`.
    pub cc: Vec<String>,
    /// Envelope only (never in the headers).
    pub bcc: Vec<String>,
    /// `Reply-To:`.
    pub reply_to: Option<String>,
    /// Subject (any Unicode).
    pub subject: String,
    /// Plain text body.
    pub text: String,
    /// Optional HTML alternative.
    pub html: Option<String>,
    /// `(file name, bytes, content type)`.
    pub attachments: Vec<(String, Vec<u8>, String)>,
    /// `<…@…>`.
    pub message_id: String,
    /// The `Date:`.
    pub date: DateTime<Utc>,
    /// Zone of the `Date:` header.
    pub timezone: chrono_tz::Tz,
}

/// A built message: its bytes and its envelope.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Built {
    /// The exact bytes sent (or written to a `.eml` file).
    pub raw: String,
    /// Envelope sender.
    pub envelope_from: String,
    /// Envelope recipients (To, Cc and Bcc).
    pub envelope_to: Vec<String>,
}

macro_rules! text_header {
    ($ty:ident, $name:expr) => {
        #[derive(Debug, Clone)]
        struct $ty(String);

        impl Header for $ty {
            fn name() -> HeaderName {
                HeaderName::new_from_ascii_str($name)
            }

            fn parse(s: &str) -> Result<Self, Box<dyn std::error::Error + Send + Sync>> {
                Ok(Self(s.to_string()))
            }

            fn display(&self) -> HeaderValue {
                HeaderValue::new(Self::name(), self.0.clone())
            }
        }
    };
}

text_header!(AutoSubmitted, "Auto-Submitted");
text_header!(AutoResponseSuppress, "X-Auto-Response-Suppress");

fn mailbox(text: &str) -> Result<Mailbox, String> {
    text.trim()
        .parse::<Mailbox>()
        .map_err(|e| format!("invalid address `{text}`: {e}"))
}

/// Builds the message.
pub fn build(spec: &EmailSpec) -> Result<Built, String> {
    let from = mailbox(&spec.from)?;
    let mut b = Message::builder()
        .from(from.clone())
        .subject(spec.subject.clone())
        .message_id(Some(spec.message_id.clone()))
        .date(std::time::SystemTime::from(spec.date))
        .header(AutoSubmitted("auto-generated".into()))
        .header(AutoResponseSuppress("OOF, AutoReply".into()));
    let mut envelope_to = Vec::new();
    for t in &spec.to {
        let m = mailbox(t)?;
        envelope_to.push(m.email.to_string());
        b = b.to(m);
    }
    for t in &spec.cc {
        let m = mailbox(t)?;
        envelope_to.push(m.email.to_string());
        b = b.cc(m);
    }
    for t in &spec.bcc {
        envelope_to.push(mailbox(t)?.email.to_string());
    }
    if envelope_to.is_empty() {
        return Err("the message has no recipients".into());
    }
    if let Some(r) = &spec.reply_to {
        b = b.reply_to(mailbox(r)?);
    }
    let body = match &spec.html {
        Some(html) => MultiPart::alternative_plain_html(spec.text.clone(), html.clone()),
        None => MultiPart::mixed().singlepart(SinglePart::plain(spec.text.clone())),
    };
    let message = if spec.attachments.is_empty() && spec.html.is_none() {
        b.singlepart(SinglePart::plain(spec.text.clone()))
    } else {
        let mut mixed = MultiPart::mixed().multipart(body);
        for (name, bytes, ctype) in &spec.attachments {
            let ct = header::ContentType::parse(ctype)
                .map_err(|e| format!("invalid content type `{ctype}`: {e}"))?;
            mixed = mixed.singlepart(Attachment::new(name.clone()).body(bytes.clone(), ct));
        }
        b.multipart(mixed)
    }
    .map_err(|e| format!("cannot build the message: {e}"))?;
    let raw = String::from_utf8(message.formatted())
        .map_err(|_| "the built message is not ASCII".to_string())?;
    Ok(Built {
        raw: with_local_date(&raw, spec.date, spec.timezone),
        envelope_from: from.email.to_string(),
        envelope_to,
    })
}

/// Replaces the `Date:` header (lettre writes GMT) with the same instant in `tz`.
fn with_local_date(raw: &str, date: DateTime<Utc>, tz: chrono_tz::Tz) -> String {
    let local = date.with_timezone(&tz).to_rfc2822();
    let head_end = raw.find("\r\n\r\n").unwrap_or(raw.len());
    let (head, rest) = raw.split_at(head_end);
    let head = head
        .split("\r\n")
        .map(|line| {
            if line.len() >= 5 && line[..5].eq_ignore_ascii_case("date:") {
                format!("Date: {local}")
            } else {
                line.to_string()
            }
        })
        .collect::<Vec<_>>()
        .join("\r\n");
    format!("{head}{rest}")
}

/// A content type for an attachment, from its extension.
pub fn content_type_for(name: &str) -> &'static str {
    let ext = name.rsplit('.').next().unwrap_or("").to_ascii_lowercase();
    match ext.as_str() {
        "pdf" => "application/pdf",
        "csv" => "text/csv; charset=utf-8",
        "txt" => "text/plain; charset=utf-8",
        "xlsx" => "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet",
        "docx" => "application/vnd.openxmlformats-officedocument.wordprocessingml.document",
        "zip" => "application/zip",
        "json" => "application/json",
        "png" => "image/png",
        _ => "application/octet-stream",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn japanese_headers_are_encoded_and_date_is_local() {
        let spec = EmailSpec {
            from: "PMO事務局 <pmo@example.go.jp>".into(),
            to: vec!["山田 太郎 <yamada@example.go.jp>".into()],
            cc: vec![],
            bcc: vec!["audit@example.go.jp".into()],
            reply_to: None,
            subject: "【要回答】12月4日(金)締切".into(),
            text: "お疲れ様です。\nよろしくお願いいたします。\n".into(),
            html: None,
            attachments: vec![],
            message_id: "<r1.ask.0@example.go.jp>".into(),
            date: DateTime::parse_from_rfc3339("2026-12-01T00:00:00Z")
                .expect("t")
                .with_timezone(&Utc),
            timezone: chrono_tz::Asia::Tokyo,
        };
        let built = build(&spec).expect("builds");
        assert!(built.raw.is_ascii());
        assert!(built.raw.contains("Subject: =?utf-8?"), "{}", built.raw);
        assert!(
            built.raw.contains("Date: Tue, 1 Dec 2026 09:00:00 +0900"),
            "{}",
            built.raw
        );
        assert!(built.raw.contains("Auto-Submitted: auto-generated"));
        assert!(built.raw.contains("Message-ID: <r1.ask.0@example.go.jp>"));
        assert!(!built.raw.to_ascii_lowercase().contains("bcc"));
        assert_eq!(
            built.envelope_to,
            ["yamada@example.go.jp", "audit@example.go.jp"]
        );
    }
}
