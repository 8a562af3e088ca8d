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
    /// Character set.
    pub charset: super::settings::Charset,
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

/// Why a message cannot be built (a bad address, a character the charset cannot carry, …):
/// a fatal step error, since trying again builds the same message.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct EmailError(String);

/// A header value on one line: control characters (CR, LF, TAB, NUL…), which could end the
/// header and start another one, become spaces. Subjects are filled from inputs.
pub fn one_line(text: &str) -> String {
    text.chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect()
}

fn mailbox(text: &str) -> Result<Mailbox, EmailError> {
    if text.chars().any(char::is_control) {
        return Err(EmailError(format!(
            "invalid address `{}`: it contains a control character (a line break?)",
            one_line(text)
        )));
    }
    text.trim()
        .parse::<Mailbox>()
        .map_err(|e| EmailError(format!("invalid address `{text}`: {e}")))
}

/// Builds the message.
pub fn build(spec: &EmailSpec) -> Result<Built, EmailError> {
    if spec.charset == super::settings::Charset::Iso2022Jp {
        return iso2022jp::build(spec);
    }
    let from = mailbox(&spec.from)?;
    let mut b = Message::builder()
        .from(from.clone())
        .subject(one_line(&spec.subject))
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
        return Err(EmailError("the message has no recipients".into()));
    }
    if let Some(r) = &spec.reply_to {
        b = b.reply_to(mailbox(r)?);
    }
    // text/plain alone; multipart/alternative with HTML; with attachments, multipart/mixed
    // holding the body (the text part itself, or the alternative) first, then the files.
    let message = if spec.attachments.is_empty() {
        match &spec.html {
            Some(html) => b.multipart(MultiPart::alternative_plain_html(
                spec.text.clone(),
                html.clone(),
            )),
            None => b.singlepart(SinglePart::plain(spec.text.clone())),
        }
    } else {
        let mut mixed = match &spec.html {
            Some(html) => MultiPart::mixed().multipart(MultiPart::alternative_plain_html(
                spec.text.clone(),
                html.clone(),
            )),
            None => MultiPart::mixed().singlepart(SinglePart::plain(spec.text.clone())),
        };
        for (name, bytes, ctype) in &spec.attachments {
            let ct = header::ContentType::parse(ctype)
                .map_err(|e| EmailError(format!("invalid content type `{ctype}`: {e}")))?;
            mixed = mixed.singlepart(Attachment::new(name.clone()).body(bytes.clone(), ct));
        }
        b.multipart(mixed)
    }
    .map_err(|e| EmailError(format!("cannot build the message: {e}")))?;
    let raw = String::from_utf8(message.formatted())
        .map_err(|_| EmailError("the built message is not ASCII".to_string()))?;
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

mod iso2022jp {
    //! ISO-2022-JP messages, built by hand (lettre writes UTF-8 only): `=?ISO-2022-JP?B?…?=`
    //! encoded words (each self-contained, at most 75 characters, folded), a 7bit body.

    use base64::Engine;

    use super::{Built, EmailError, EmailSpec, mailbox};

    fn encode(text: &str) -> Result<Vec<u8>, EmailError> {
        let (bytes, _, unmappable) = encoding_rs::ISO_2022_JP.encode(text);
        if unmappable {
            let bad: String = text
                .chars()
                .filter(|c| encoding_rs::ISO_2022_JP.encode(&c.to_string()).2)
                .collect();
            return Err(EmailError(format!(
                "cannot be encoded in ISO-2022-JP: {bad:?} (use charset = \"utf-8\", or replace these characters)"
            )));
        }
        Ok(bytes.into_owned())
    }

    /// RFC 2047 encoded words for a header value (ASCII-only text is left as it is).
    fn words(text: &str) -> Result<String, EmailError> {
        if text.is_ascii() {
            return Ok(text.to_string());
        }
        let mut out = Vec::new();
        let mut chunk = String::new();
        for c in text.chars() {
            chunk.push(c);
            if chunk.chars().count() >= 10 {
                out.push(std::mem::take(&mut chunk));
            }
        }
        if !chunk.is_empty() {
            out.push(chunk);
        }
        let encoded = out
            .iter()
            .map(|part| {
                encode(part).map(|b| {
                    format!(
                        "=?ISO-2022-JP?B?{}?=",
                        base64::engine::general_purpose::STANDARD.encode(b)
                    )
                })
            })
            .collect::<Result<Vec<_>, _>>()?;
        Ok(encoded.join("\r\n "))
    }

    fn address(text: &str) -> Result<(String, String), EmailError> {
        let m = mailbox(text)?;
        let header = match &m.name {
            Some(name) if !name.is_empty() => format!("{} <{}>", words(name)?, m.email),
            _ => m.email.to_string(),
        };
        Ok((header, m.email.to_string()))
    }

    pub(super) fn build(spec: &EmailSpec) -> Result<Built, EmailError> {
        if spec.html.is_some() || !spec.attachments.is_empty() {
            return Err(EmailError(
                "charset iso-2022-jp supports plain-text messages without attachments".into(),
            ));
        }
        let (from, envelope_from) = address(&spec.from)?;
        let mut envelope_to = Vec::new();
        let mut list = |items: &[String]| -> Result<Vec<String>, EmailError> {
            items
                .iter()
                .map(|t| {
                    address(t).map(|(h, e)| {
                        envelope_to.push(e);
                        h
                    })
                })
                .collect()
        };
        let to = list(&spec.to)?;
        let cc = list(&spec.cc)?;
        let _bcc = list(&spec.bcc)?;
        if envelope_to.is_empty() {
            return Err(EmailError("the message has no recipients".into()));
        }
        let mut head = vec![
            format!("From: {from}"),
            format!("To: {}", to.join(",\r\n ")),
        ];
        if !cc.is_empty() {
            head.push(format!("Cc: {}", cc.join(",\r\n ")));
        }
        if let Some(r) = &spec.reply_to {
            head.push(format!("Reply-To: {}", address(r)?.0));
        }
        head.push(format!(
            "Subject: {}",
            words(&super::one_line(&spec.subject))?
        ));
        head.push(format!("Message-ID: {}", spec.message_id));
        head.push(format!(
            "Date: {}",
            spec.date.with_timezone(&spec.timezone).to_rfc2822()
        ));
        head.push("Auto-Submitted: auto-generated".into());
        head.push("X-Auto-Response-Suppress: OOF, AutoReply".into());
        head.push("MIME-Version: 1.0".into());
        head.push("Content-Type: text/plain; charset=ISO-2022-JP".into());
        head.push("Content-Transfer-Encoding: 7bit".into());
        let text = spec.text.replace("\r\n", "\n").replace('\n', "\r\n");
        let body = encode(&text)?;
        let body = String::from_utf8(body)
            .map_err(|_| EmailError("ISO-2022-JP output is not 7-bit".to_string()))?;
        Ok(Built {
            raw: format!("{}\r\n\r\n{body}", head.join("\r\n")),
            envelope_from,
            envelope_to,
        })
    }
}

/// A content type for an attachment, from its extension.
pub fn content_type_for(name: &str) -> &'static str {
    let ext = name.rsplit('.').next().unwrap_or("").to_ascii_lowercase();
    match ext.as_str() {
        "pdf" => "application/pdf",
        "csv" => "text/csv; charset=utf-8",
        "txt" => "text/plain; charset=utf-8",
        "xlsx" => "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet",
        "xlsm" => "application/vnd.ms-excel.sheet.macroEnabled.12",
        "xls" => "application/vnd.ms-excel",
        "docx" => "application/vnd.openxmlformats-officedocument.wordprocessingml.document",
        "zip" => "application/zip",
        "json" => "application/json",
        "png" => "image/png",
        _ => "application/octet-stream",
    }
}

/// The bare address of `"名前 <a@b>"`, lower case.
pub fn bare(addr: &str) -> String {
    let a = addr.trim();
    let inner = match (a.rfind('<'), a.rfind('>')) {
        (Some(l), Some(r)) if l < r => &a[l + 1..r],
        _ => a,
    };
    inner.trim().to_lowercase()
}

/// The domain of our own address (`from`), for Message-IDs; `pmoflow.localhost` when it has
/// none.
pub fn domain_of(from: &str) -> String {
    bare(from)
        .rsplit_once('@')
        .map(|(_, d)| d.to_string())
        .filter(|d| !d.is_empty())
        .unwrap_or_else(|| "pmoflow.localhost".into())
}

#[cfg(test)]
mod tests {
    fn sample() -> EmailSpec {
        EmailSpec {
            from: "PMO事務局 <pmo@example.go.jp>".into(),
            to: vec!["山田 太郎 <yamada@example.go.jp>".into()],
            cc: vec![],
            bcc: vec![],
            reply_to: None,
            subject: "状況確認".into(),
            text: "お疲れ様です。\n".into(),
            html: None,
            attachments: vec![],
            message_id: "<r1.ask.0@example.go.jp>".into(),
            date: DateTime::parse_from_rfc3339("2026-12-01T00:00:00Z")
                .expect("t")
                .with_timezone(&Utc),
            timezone: chrono_tz::Asia::Tokyo,
            charset: crate::message::settings::Charset::Utf8,
        }
    }

    #[test]
    fn line_breaks_from_inputs_cannot_add_headers() {
        for charset in [
            crate::message::settings::Charset::Utf8,
            crate::message::settings::Charset::Iso2022Jp,
        ] {
            let spec = EmailSpec {
                subject: "状況確認\r\nBcc: victim@example.com\r\n\r\nbody".into(),
                charset,
                ..sample()
            };
            let built = build(&spec).expect("builds");
            let head = built.raw.split("\r\n\r\n").next().expect("head");
            assert!(
                !head
                    .lines()
                    .any(|l| l.to_ascii_lowercase().starts_with("bcc:")),
                "{head}"
            );
            assert!(!built.envelope_to.iter().any(|t| t.contains("victim")));
            let bad = EmailSpec {
                to: vec!["担当\r\nBcc: victim@example.com <a@example.go.jp>".into()],
                charset,
                ..sample()
            };
            let err = build(&bad).expect_err("refused").to_string();
            assert!(err.contains("control character"), "{err}");
        }
    }

    use super::*;

    #[test]
    fn bare_addresses() {
        assert_eq!(
            bare("山田 太郎 <Yamada@Example.go.jp>"),
            "yamada@example.go.jp"
        );
        assert_eq!(bare(" a@b.jp "), "a@b.jp");
        assert_eq!(domain_of("PMO <pmo@Example.go.jp>"), "example.go.jp");
        assert_eq!(domain_of("nobody"), "pmoflow.localhost");
    }

    #[test]
    fn japanese_headers_are_encoded_and_date_is_local() {
        let spec = EmailSpec {
            bcc: vec!["audit@example.go.jp".into()],
            subject: "【要回答】12月4日(金)締切".into(),
            text: "お疲れ様です。\nよろしくお願いいたします。\n".into(),
            ..sample()
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

        let jis = EmailSpec {
            charset: crate::message::settings::Charset::Iso2022Jp,
            ..spec.clone()
        };
        let built = build(&jis).expect("builds");
        assert!(built.raw.is_ascii());
        assert!(
            built.raw.contains("Subject: =?ISO-2022-JP?B?"),
            "{}",
            built.raw
        );
        assert!(built.raw.contains("charset=ISO-2022-JP"));
        let bad = EmailSpec {
            text: "お詫び🙇".into(),
            ..jis
        };
        let err = build(&bad)
            .expect_err("emoji are not in ISO-2022-JP")
            .to_string();
        assert!(
            err.contains("cannot be encoded in ISO-2022-JP") && err.contains('🙇'),
            "{err}"
        );
    }
}
