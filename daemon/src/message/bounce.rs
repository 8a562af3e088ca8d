//! Delivery failure reports: RFC 3464 delivery status notifications, and the reports MTAs write
//! for people only (qmail's "failure notice", Postfix's and Exim's text-only bounces, Exchange's
//! plain NDRs) with the original message inline.

use std::sync::LazyLock;

use mail_parser::{MimeHeaders, PartType};
use regex::Regex;

use super::inbound::{Kind, strip_brackets};

/// A delivery status notification (`multipart/report; report-type=delivery-status`), or a
/// message from the mailer daemon.
pub(super) fn bounce(
    msg: &mail_parser::Message<'_>,
    from: Option<&str>,
    text: &str,
) -> Option<Kind> {
    let is_report = msg.content_type().is_some_and(|c| {
        c.ctype().eq_ignore_ascii_case("multipart")
            && c.subtype()
                .is_some_and(|s| s.eq_ignore_ascii_case("report"))
    });
    let daemon = from.is_some_and(|f| {
        let local = f.split('@').next().unwrap_or("").to_ascii_lowercase();
        local.contains("daemon") || local == "postmaster"
    });
    if !is_report && !daemon {
        return None;
    }
    let mut recipients = Vec::new();
    let mut reported: Vec<(String, String)> = Vec::new();
    let mut dsn = false;
    let mut original = None;
    for part in msg.parts.iter() {
        let ct = part
            .content_type()
            .map(|c| {
                format!(
                    "{}/{}",
                    c.ctype().to_ascii_lowercase(),
                    c.subtype().unwrap_or("").to_ascii_lowercase()
                )
            })
            .unwrap_or_default();
        match ct.as_str() {
            "message/delivery-status" | "message/global-delivery-status" => {
                dsn = true;
                let text = String::from_utf8_lossy(part.contents()).to_string();
                for (recipient, action) in dsn_recipients(&text) {
                    if action == "failed" {
                        recipients.push(recipient);
                    } else {
                        reported.push((recipient, action));
                    }
                }
            }
            "text/rfc822-headers" | "message/rfc822-headers" => {
                let text = String::from_utf8_lossy(part.contents()).to_string();
                original = original.or_else(|| message_id_in(&text));
            }
            _ => {}
        }
        if let PartType::Message(inner) = &part.body {
            original = original.or_else(|| inner.message_id().map(strip_brackets));
        }
    }
    // A report that names no failed recipient is not a bounce: a delay warning (the server
    // keeps trying) or a success notice. Without a machine-readable part, the subject tells.
    let delay_subject = {
        let s = super::correlate::nfkc(msg.subject().unwrap_or("")).to_lowercase();
        [
            "delayed",
            "delay)",
            "遅延",
            "still being retried",
            "warning: message",
        ]
        .iter()
        .any(|w| s.contains(w))
    };
    if recipients.is_empty() && ((dsn && !reported.is_empty()) || (!dsn && delay_subject)) {
        let action = reported
            .iter()
            .map(|(_, a)| a.as_str())
            .find(|a| *a == "delayed")
            .or_else(|| reported.first().map(|(_, a)| a.as_str()))
            .unwrap_or("delayed")
            .to_string();
        let mut recipients: Vec<String> = reported.into_iter().map(|(r, _)| r).collect();
        recipients.dedup();
        return Some(Kind::DeliveryReport {
            action,
            recipients,
            original_message_id: original,
        });
    }
    if !dsn {
        // Written for people only (qmail, Postfix, Exim, Exchange, gateways): the report says
        // who failed and whether the server keeps trying; the original follows it inline.
        let report = TextReport::read(text);
        original = original.or(report.original_message_id);
        if recipients.is_empty() {
            recipients = report.recipients;
        }
        if report.temporary {
            return Some(Kind::DeliveryReport {
                action: "delayed".into(),
                recipients,
                original_message_id: original,
            });
        }
    }
    if !is_report && recipients.is_empty() && original.is_none() {
        // A note from the postmaster that is not a report: treat it as an auto-reply.
        return Some(Kind::AutoReply {
            reason: format!("sender {}", from.unwrap_or("")),
        });
    }
    recipients.dedup();
    Some(Kind::Bounce {
        recipients,
        original_message_id: original,
    })
}

/// The per-recipient fields of an RFC 3464 `message/delivery-status` body: each recipient with
/// its action (`failed`, `delayed`, `delivered`, `relayed`, `expanded`). Without an `Action:`
/// field, the status class decides (5.x.x failed, 4.x.x delayed, 2.x.x delivered).
fn dsn_recipients(text: &str) -> Vec<(String, String)> {
    let mut out = Vec::new();
    // Blocks are separated by blank lines; the first one is about the message (Reporting-MTA).
    for block in text.replace("\r\n", "\n").split("\n\n") {
        let (mut recipient, mut original, mut action, mut status) = (None, None, None, None);
        for line in block.lines() {
            let Some((key, value)) = line.split_once(':') else {
                continue;
            };
            let value = value.trim();
            let address = || {
                value
                    .rsplit(';')
                    .next()
                    .unwrap_or(value)
                    .trim()
                    .trim_matches(['<', '>'])
                    .to_lowercase()
            };
            match key.trim().to_ascii_lowercase().as_str() {
                "final-recipient" => recipient = Some(address()),
                "original-recipient" => original = Some(address()),
                "action" => action = Some(value.to_ascii_lowercase()),
                "status" => status = value.chars().next(),
                _ => {}
            }
        }
        let Some(recipient) = recipient.or(original) else {
            continue;
        };
        let action = action
            .map(|a| a.split_whitespace().next().unwrap_or("").to_string())
            .or_else(|| match status {
                Some('5') => Some("failed".into()),
                Some('4') => Some("delayed".into()),
                Some('2') => Some("delivered".into()),
                _ => None,
            });
        if let Some(action) = action {
            out.push((recipient, action));
        }
    }
    out
}

fn message_id_in(headers: &str) -> Option<String> {
    let lines: Vec<&str> = headers.lines().collect();
    lines.iter().enumerate().find_map(|(i, l)| {
        let (k, v) = l.split_once(':')?;
        if !k.trim().eq_ignore_ascii_case("message-id") {
            return None;
        }
        // Folded: the id on the next line.
        let v = match v.trim() {
            "" => lines.get(i + 1).map(|n| n.trim()).unwrap_or(""),
            v => v,
        };
        (!v.is_empty()).then(|| strip_brackets(v))
    })
}

/// What a text-only failure report says: the failed recipients (the addresses in the report
/// part, before the original message), whether the failure is temporary (a full mailbox, a
/// 4.x.x status, "will keep trying"), and the original's Message-ID (from the copy below).
#[derive(Debug, Default, PartialEq)]
struct TextReport {
    recipients: Vec<String>,
    temporary: bool,
    original_message_id: Option<String>,
}

impl TextReport {
    fn read(text: &str) -> Self {
        static ORIGINAL: LazyLock<Regex> = LazyLock::new(|| {
            Regex::new(
                r"(?i)^\s*(-+\s*)?(below this line is a copy of the message|this is a copy of the message|original message( follows)?|undelivered message|returned message|元のメッセージ|以下.{0,10}(元の|送信された)メ)|^(return-path|received|message-id|dkim-signature|mime-version|delivered-to):",
            )
            .expect("a valid pattern")
        });
        static ADDRESS: LazyLock<Regex> = LazyLock::new(|| {
            Regex::new(r"[A-Za-z0-9._%+-]+@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)+")
                .expect("a valid pattern")
        });
        static TEMPORARY: LazyLock<Regex> = LazyLock::new(|| {
            Regex::new(
                r"(?i)mailbox (is )?full|over ?quota|quota (exceeded|full)|insufficient (system )?storage|容量(超過|オーバー|不足)|いっぱい|\b4\.\d{1,3}\.\d{1,3}\b|\b(421|450|451|452)[ -]|temporar(y|ily) (error|failure|problem|unavailable)|will (be retried|retry|keep trying|continue)|attempts will continue|warning only|not yet been delivered|has been delayed|遅延|再送を試み",
            )
            .expect("a valid pattern")
        });
        let lines: Vec<&str> = text.lines().collect();
        let split = lines
            .iter()
            .position(|l| ORIGINAL.is_match(l))
            .unwrap_or(lines.len());
        let report = lines[..split].join("\n");
        let original = lines[split..].join("\n");
        let sender = original.lines().find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.trim().eq_ignore_ascii_case("from").then(|| {
                ADDRESS
                    .find(v)
                    .map(|m| m.as_str().to_lowercase())
                    .unwrap_or_default()
            })
        });
        let mut recipients: Vec<String> = Vec::new();
        for m in ADDRESS.find_iter(&report) {
            let a = m.as_str().trim_end_matches('.').to_lowercase();
            let local = a.split('@').next().unwrap_or("");
            if local.contains("daemon")
                || local == "postmaster"
                || sender.as_deref() == Some(a.as_str())
                || recipients.contains(&a)
            {
                continue;
            }
            recipients.push(a);
        }
        Self {
            recipients,
            temporary: TEMPORARY.is_match(&report),
            original_message_id: message_id_in(&original),
        }
    }
}
