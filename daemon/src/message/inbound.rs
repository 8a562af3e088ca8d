//! Raw RFC 5322 bytes → [`Inbound`]: decoded, classified ([`Kind`]) and ready to correlate
//! ([`super::correlate`]) and read ([`super::reply`]). Pure: no SQL, no I/O. It never panics on
//! bad input: a message it cannot read is an error to quarantine, not a crash.

use mail_parser::{Address, HeaderValue, MessageParser, MimeHeaders, PartType};
use serde::Serialize;

/// The largest message accepted (bigger ones are quarantined unread).
pub const DEFAULT_MAX_SIZE: usize = 10 << 20;

/// What a message is.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Kind {
    /// A person wrote it (an answer, or something to quarantine).
    Reply,
    /// An automatic answer (RFC 3834 and the usual out-of-office signs): recorded, never an
    /// answer.
    AutoReply {
        /// Which sign gave it away.
        reason: String,
    },
    /// A delivery status notification that reports no failure: a delay warning (`Action:
    /// delayed`, a 4.x.x status; the server keeps trying) or a success report (`delivered`,
    /// `relayed`, `expanded`). Recorded; it changes nothing.
    DeliveryReport {
        /// The report's action (`delayed`, `delivered`, …).
        action: String,
        /// The recipients it reports on.
        recipients: Vec<String>,
        /// The Message-ID of the message it reports on, if the report includes its headers.
        original_message_id: Option<String>,
    },
    /// A delivery failure report (`Action: failed`, a 5.x.x status).
    Bounce {
        /// Recipients the report says failed.
        recipients: Vec<String>,
        /// The Message-ID of the message that bounced, if the report includes its headers.
        original_message_id: Option<String>,
    },
}

/// An attachment of a reply.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Attachment {
    /// File name, decoded.
    pub name: String,
    /// MIME type.
    pub content_type: String,
    /// Size in bytes.
    pub size: usize,
    /// SHA-256 of the content, hex.
    pub sha256: String,
    /// The content (not serialised; stored by the caller).
    #[serde(skip)]
    pub content: Vec<u8>,
}

/// A parsed incoming message.
#[derive(Debug, Clone, Serialize)]
pub struct Inbound {
    /// `Message-ID`, without angle brackets.
    pub message_id: Option<String>,
    /// The sender's address, lower case.
    pub from: Option<String>,
    /// The sender's display name.
    pub from_name: Option<String>,
    /// `To`, `Cc`, `Delivered-To` and `X-Original-To` addresses, lower case.
    pub recipients: Vec<String>,
    /// Subject, decoded.
    pub subject: String,
    /// `In-Reply-To` and `References` ids, without angle brackets.
    pub references: Vec<String>,
    /// What the message is.
    #[serde(flatten)]
    pub kind: Kind,
    /// The whole body as text.
    pub text: String,
    /// Attachments (not for bounces).
    pub attachments: Vec<Attachment>,
}

/// Why a message cannot be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum InboundError {
    /// Larger than the limit.
    #[error("message of {0} bytes exceeds the {1} MiB limit")]
    TooLarge(usize, usize),
    /// Not an RFC 5322 message.
    #[error("not a readable email message")]
    Unreadable,
}

/// Parses and classifies a raw message.
pub fn parse(raw: &[u8], max_size: usize) -> Result<Inbound, InboundError> {
    if raw.len() > max_size {
        return Err(InboundError::TooLarge(raw.len(), max_size >> 20));
    }
    let msg = MessageParser::default()
        .parse(raw)
        .ok_or(InboundError::Unreadable)?;
    if msg.headers().is_empty() {
        return Err(InboundError::Unreadable);
    }
    let first = |a: Option<&Address<'_>>| {
        a.and_then(|a| a.first())
            .map(|a| {
                (
                    a.address().map(|s| s.trim().to_lowercase()),
                    a.name().map(|s| s.trim().to_string()),
                )
            })
            .unwrap_or((None, None))
    };
    let (from, from_name) = sender(first(msg.from()));
    let mut recipients = Vec::new();
    for list in [msg.to(), msg.cc()].into_iter().flatten() {
        recipients.extend(
            list.iter()
                .filter_map(|a| a.address())
                .map(|s| s.trim().to_lowercase()),
        );
    }
    for name in ["Delivered-To", "X-Original-To", "Envelope-To"] {
        for v in msg.header_values(name) {
            if let Some(t) = v.as_text() {
                recipients.push(strip_brackets(t).to_lowercase());
            }
        }
    }
    recipients.dedup();
    let ids = |v: &HeaderValue<'_>| -> Vec<String> {
        match v {
            HeaderValue::Text(t) => vec![strip_brackets(t)],
            HeaderValue::TextList(l) => l.iter().map(|t| strip_brackets(t)).collect(),
            _ => Vec::new(),
        }
    };
    let mut references = ids(msg.in_reply_to());
    references.extend(ids(msg.references()));
    references.dedup();
    let subject = msg.subject().unwrap_or("").to_string();
    let mut text = body_text(&msg);
    let undecodable = msg.parts.iter().any(|p| {
        p.is_encoding_problem
            && p.content_type()
                .is_some_and(|c| c.ctype().eq_ignore_ascii_case("text"))
    });
    if (undecodable || text.trim().is_empty())
        && let Some(salvaged) = salvage_text(&msg, raw)
    {
        text = salvaged;
    }
    let kind = classify(&msg, from.as_deref(), &subject, &text);
    let attachments = if matches!(kind, Kind::Bounce { .. }) {
        Vec::new()
    } else {
        msg.attachments()
            .filter(|p| !matches!(p.body, PartType::Message(_)))
            .map(|p| {
                use sha2::Digest;
                let content = p.contents().to_vec();
                Attachment {
                    name: p.attachment_name().unwrap_or("attachment").to_string(),
                    content_type: p
                        .content_type()
                        .map(|c| match c.subtype() {
                            Some(s) => format!("{}/{}", c.ctype(), s),
                            None => c.ctype().to_string(),
                        })
                        .unwrap_or_else(|| "application/octet-stream".into()),
                    size: content.len(),
                    sha256: hex::encode(sha2::Sha256::digest(&content)),
                    content,
                }
            })
            .collect()
    };
    Ok(Inbound {
        message_id: msg.message_id().map(strip_brackets),
        from,
        from_name,
        recipients,
        subject,
        references,
        kind,
        text,
        attachments,
    })
}

/// The sender's address and display name. A legacy mailer may encode the whole `From` —
/// display name *and* address — as one RFC 2047 encoded-word (`=?ISO-2022-JP?B?…?=`): the parser
/// then sees only a display name, `山田 太郎 <yamada@…>`. Mail clients show such a sender by its
/// decoded address; so does pmoflow.
fn sender((address, name): (Option<String>, Option<String>)) -> (Option<String>, Option<String>) {
    let looks_like_address = |a: &str| {
        a.split_once('@').is_some_and(|(l, d)| {
            !l.is_empty() && d.contains('.') && !a.contains(char::is_whitespace)
        })
    };
    if address.as_deref().is_some_and(looks_like_address) {
        return (address, name);
    }
    let Some(decoded) = name.as_deref().or(address.as_deref()) else {
        return (address, name);
    };
    let (display, inner) = match decoded.rsplit_once('<') {
        Some((display, rest)) => (display, rest.split('>').next().unwrap_or("")),
        None => ("", decoded),
    };
    let inner = inner.trim().to_lowercase();
    if !looks_like_address(&inner) {
        return (address, name);
    }
    let display = display.trim().trim_matches('"').trim();
    (
        Some(inner),
        (!display.is_empty()).then(|| display.to_string()),
    )
}

pub(super) fn strip_brackets(s: &str) -> String {
    s.trim()
        .trim_start_matches('<')
        .trim_end_matches('>')
        .to_string()
}

/// The body as text: the first text/plain part, or the first HTML part converted by
/// [`html_to_text`] (blocks become lines, `blockquote` becomes `>` lines).
fn body_text(msg: &mail_parser::Message<'_>) -> String {
    let plain = msg
        .text_body
        .first()
        .and_then(|&i| msg.parts.get(i as usize))
        .filter(|p| matches!(p.body, PartType::Text(_)));
    let text = match plain {
        Some(p) => {
            let text = p.text_contents().unwrap_or("");
            let param = |name: &str| {
                p.content_type()
                    .and_then(|c| c.attribute(name))
                    .map(str::to_ascii_lowercase)
            };
            if param("format").as_deref() == Some("flowed") {
                super::flowed::unflow(text, param("delsp").as_deref() == Some("yes"))
            } else {
                text.to_string()
            }
        }
        None => match msg.body_html(0) {
            Some(html) => html_to_text(&html),
            None => msg.body_text(0).map(|t| t.into_owned()).unwrap_or_default(),
        },
    };
    text.trim_start_matches('\u{feff}')
        .replace("\r\n", "\n")
        .replace('\u{a0}', " ")
}

/// The text of a message a gateway cut short (a size limit, a broken relay): the closing
/// boundary never comes and the last part's base64 stops mid-line, so the parser yields no text.
/// Decode what arrived of the first text part: the complete base64 quanta, in the part's charset,
/// without the character the cut split.
fn salvage_text(msg: &mail_parser::Message<'_>, raw: &[u8]) -> Option<String> {
    use base64::Engine;
    for part in &msg.parts {
        let Some(ct) = part.content_type() else {
            continue;
        };
        if !ct.ctype().eq_ignore_ascii_case("text") {
            continue;
        }
        let html = ct.subtype().is_some_and(|s| s.eq_ignore_ascii_case("html"));
        let body = raw.get(part.offset_body as usize..(part.offset_end as usize).min(raw.len()))?;
        // The parser may have given up on the encoding too: the header says what it is.
        let base64 = part.encoding == mail_parser::Encoding::Base64
            || part
                .content_transfer_encoding()
                .is_some_and(|e| e.trim().eq_ignore_ascii_case("base64"));
        let qp = part.encoding == mail_parser::Encoding::QuotedPrintable
            || part
                .content_transfer_encoding()
                .is_some_and(|e| e.trim().eq_ignore_ascii_case("quoted-printable"));
        let bytes = match () {
            () if base64 => {
                let mut b64: Vec<u8> = body
                    .iter()
                    .copied()
                    .filter(|c| c.is_ascii_alphanumeric() || matches!(c, b'+' | b'/' | b'='))
                    .collect();
                b64.truncate(b64.len() - b64.len() % 4);
                match base64::engine::general_purpose::STANDARD.decode(&b64) {
                    Ok(b) => b,
                    Err(_) => continue,
                }
            }
            () if qp => quoted_printable(body),
            () => body.to_vec(),
        };
        let charset = ct.attribute("charset").unwrap_or("utf-8");
        let encoding =
            encoding_rs::Encoding::for_label(charset.as_bytes()).unwrap_or(encoding_rs::UTF_8);
        let (decoded, _, _) = encoding.decode(&bytes);
        let decoded = decoded.trim_end_matches('\u{fffd}').replace("\r\n", "\n");
        let text = if html {
            html_to_text(&decoded)
        } else {
            decoded
        };
        if !text.trim().is_empty() {
            return Some(text);
        }
    }
    None
}

/// Quoted-printable, leniently: a soft line break or an escape the cut left incomplete is
/// dropped.
fn quoted_printable(body: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(body.len());
    let mut i = 0;
    while i < body.len() {
        match body[i] {
            b'=' => {
                let hex = body.get(i + 1..i + 3).and_then(|h| {
                    std::str::from_utf8(h)
                        .ok()
                        .and_then(|h| u8::from_str_radix(h, 16).ok())
                });
                match hex {
                    Some(b) => {
                        out.push(b);
                        i += 3;
                    }
                    None => {
                        // `=\r\n` (a soft break) or a truncated escape.
                        i += 1;
                        while i < body.len() && matches!(body[i], b'\r' | b'\n') {
                            i += 1;
                        }
                    }
                }
            }
            b => {
                out.push(b);
                i += 1;
            }
        }
    }
    out
}

/// HTML to text for reply parsing: block elements and `<br>` end lines, `<blockquote>` content
/// is prefixed with `> `, `<style>`/`<script>`/`<head>` are dropped, entities are decoded.
pub fn html_to_text(html: &str) -> String {
    let mut out = String::new();
    let mut depth = 0usize;
    let mut rest = html;
    let mut at_line_start = true;
    let mut row_start = true;
    let mut in_cell = false;
    let newline = |out: &mut String, at_line_start: &mut bool| {
        if !*at_line_start {
            out.push('\n');
            *at_line_start = true;
        }
    };
    while !rest.is_empty() {
        if let Some(tag_start) = rest.strip_prefix('<') {
            let end = tag_start.find('>').unwrap_or(tag_start.len());
            let tag = &tag_start[..end];
            rest = tag_start.get(end + 1..).unwrap_or("");
            let closing = tag.starts_with('/');
            let name: String = tag
                .trim_start_matches('/')
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric())
                .collect::<String>()
                .to_ascii_lowercase();
            match name.as_str() {
                "style" | "script" | "head" | "title" if !closing => {
                    let close = format!("</{name}");
                    let lower = rest.to_ascii_lowercase();
                    rest = match lower.find(&close) {
                        Some(i) => &rest[i..],
                        None => "",
                    };
                }
                // Inside a table cell, paragraphs and breaks keep the cell on its row.
                "br" | "p" | "div" if in_cell && !at_line_start && !out.ends_with([' ', '\t']) => {
                    out.push(' ');
                }
                "br" | "p" | "div" if in_cell => {}
                "br" => {
                    at_line_start = false;
                    newline(&mut out, &mut at_line_start);
                }
                "blockquote" => {
                    newline(&mut out, &mut at_line_start);
                    depth = if closing {
                        depth.saturating_sub(1)
                    } else {
                        depth + 1
                    };
                }
                // Table cells are separated by a tab, rows are lines (answers pasted from
                // Excel arrive as a table: see `reply`'s table layouts).
                "td" | "th" if closing => in_cell = false,
                "td" | "th" => {
                    in_cell = true;
                    if !row_start {
                        if at_line_start {
                            for _ in 0..depth {
                                out.push_str("> ");
                            }
                            at_line_start = false;
                        }
                        out.push('\t');
                    }
                    row_start = false;
                }
                "tr" => {
                    row_start = true;
                    in_cell = false;
                    newline(&mut out, &mut at_line_start);
                }
                "p" | "div" | "li" | "table" | "ul" | "ol" | "h1" | "h2" | "h3" | "h4" | "h5"
                | "h6" | "hr" | "pre" => newline(&mut out, &mut at_line_start),
                _ => {}
            }
            continue;
        }
        let next = rest.find('<').unwrap_or(rest.len());
        let chunk = decode_entities(&rest[..next]);
        rest = &rest[next..];
        for c in chunk.chars() {
            let c = if c == '\n' || c == '\r' || c == '\t' {
                ' '
            } else {
                c
            };
            if at_line_start {
                if c == ' ' {
                    continue;
                }
                for _ in 0..depth {
                    out.push_str("> ");
                }
                at_line_start = false;
            }
            if c == ' ' && out.ends_with([' ', '\t']) {
                continue;
            }
            out.push(c);
        }
    }
    let lines: Vec<&str> = out.lines().map(str::trim_end).collect();
    let mut text = String::new();
    let mut blanks = 0;
    for l in lines {
        if l.is_empty() {
            blanks += 1;
            if blanks > 1 {
                continue;
            }
        } else {
            blanks = 0;
        }
        text.push_str(l);
        text.push('\n');
    }
    text.trim().to_string()
}

fn decode_entities(s: &str) -> String {
    if !s.contains('&') {
        return s.to_string();
    }
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    while let Some(i) = rest.find('&') {
        out.push_str(&rest[..i]);
        rest = &rest[i..];
        let end = rest.find(';').filter(|&e| e <= 10);
        let Some(end) = end else {
            out.push('&');
            rest = &rest[1..];
            continue;
        };
        let entity = &rest[1..end];
        let decoded = match entity {
            "nbsp" => Some(' '),
            "lt" => Some('<'),
            "gt" => Some('>'),
            "amp" => Some('&'),
            "quot" => Some('"'),
            "apos" => Some('\''),
            _ => entity
                .strip_prefix("#x")
                .or_else(|| entity.strip_prefix("#X"))
                .and_then(|h| u32::from_str_radix(h, 16).ok())
                .or_else(|| entity.strip_prefix('#').and_then(|d| d.parse().ok()))
                .and_then(char::from_u32),
        };
        match decoded {
            Some(c) => {
                out.push(c);
                rest = &rest[end + 1..];
            }
            None => {
                out.push('&');
                rest = &rest[1..];
            }
        }
    }
    out.push_str(rest);
    out
}

/// Auto-reply signs (RFC 3834 and the de facto ones), then delivery reports.
fn classify(msg: &mail_parser::Message<'_>, from: Option<&str>, subject: &str, text: &str) -> Kind {
    if let Some(bounce) = super::bounce::bounce(msg, from, text) {
        return bounce;
    }
    let header = |name: &str| msg.header_raw(name).map(|v| v.trim().to_ascii_lowercase());
    let auto = |reason: String| Kind::AutoReply { reason };
    if let Some(v) = header("Auto-Submitted")
        && v != "no"
    {
        return auto(format!("Auto-Submitted: {v}"));
    }
    for name in ["X-Autoreply", "X-Autorespond", "X-Auto-Reply"] {
        if header(name).is_some() {
            return auto(format!("{name} header"));
        }
    }
    if let Some(v) = header("Precedence")
        && matches!(v.as_str(), "bulk" | "junk" | "list" | "auto_reply")
    {
        return auto(format!("Precedence: {v}"));
    }
    if let Some(f) = from {
        let local = f.split('@').next().unwrap_or("");
        if ["noreply", "no-reply", "donotreply", "do-not-reply"].contains(&local) {
            return auto(format!("sender {f}"));
        }
    }
    let s = super::correlate::nfkc(subject).to_lowercase();
    for sign in [
        "不在",
        "自動応答",
        "自動返信",
        "out of office",
        "out of the office",
        "automatic reply",
        "auto reply",
        "autoreply",
        "休暇",
    ] {
        if s.contains(sign) {
            return auto(format!("subject contains `{sign}`"));
        }
    }
    Kind::Reply
}
