//! Signed webhooks: `X-Pmoflow-Timestamp: <unix seconds>` and
//! `X-Pmoflow-Signature: sha256=<hex HMAC-SHA256(secret, "<timestamp>.<body>")>`.
//! A receiver recomputes the HMAC and rejects timestamps outside its tolerance (5 minutes is the
//! default here), which makes a replayed request recognisable. The signature is computed at each
//! delivery attempt, so retries carry a fresh timestamp; `Idempotency-Key` stays the same.

use hmac::{Hmac, Mac};
use sha2::Sha256;

/// Header carrying the signing time.
pub const TIMESTAMP_HEADER: &str = "X-Pmoflow-Timestamp";
/// Header carrying the signature.
pub const SIGNATURE_HEADER: &str = "X-Pmoflow-Signature";
/// Header carrying the idempotency key (the message id).
pub const IDEMPOTENCY_HEADER: &str = "Idempotency-Key";
/// Default replay window.
pub const DEFAULT_TOLERANCE_SECS: i64 = 300;

/// `sha256=<hex>` over `"{timestamp}.{body}"`.
pub fn sign(secret: &[u8], timestamp: i64, body: &[u8]) -> String {
    #[allow(clippy::expect_used)]
    let mut mac = Hmac::<Sha256>::new_from_slice(secret).expect("HMAC accepts keys of any length");
    mac.update(timestamp.to_string().as_bytes());
    mac.update(b".");
    mac.update(body);
    format!("sha256={}", hex::encode(mac.finalize().into_bytes()))
}

/// Why a signed request is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum VerifyError {
    /// The timestamp header is not a number.
    #[error("malformed timestamp")]
    BadTimestamp,
    /// Outside the tolerance: a replay, or a badly wrong clock.
    #[error("timestamp outside the {0} s window (replayed or stale request)")]
    Stale(i64),
    /// The signature does not match.
    #[error("signature does not match")]
    BadSignature,
}

/// Verifies a signed request at `now` (unix seconds).
pub fn verify(
    secret: &[u8],
    timestamp: &str,
    body: &[u8],
    signature: &str,
    now: i64,
    tolerance: i64,
) -> Result<(), VerifyError> {
    let ts: i64 = timestamp
        .trim()
        .parse()
        .map_err(|_| VerifyError::BadTimestamp)?;
    if (now - ts).abs() > tolerance {
        return Err(VerifyError::Stale(tolerance));
    }
    let expected = sign(secret, ts, body);
    // Constant-time comparison of equal-length ASCII strings.
    let (a, b) = (expected.as_bytes(), signature.trim().as_bytes());
    if a.len() != b.len() || a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) != 0 {
        return Err(VerifyError::BadSignature);
    }
    Ok(())
}

/// A chat post, whatever the chat system: a title, the text (lines as written), facts (label and
/// value) and links shown as buttons.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ChatPost {
    /// The headline (`【緊急・第一報】…`).
    pub title: Option<String>,
    /// The body, plain text with line breaks.
    pub text: String,
    /// Label and value pairs (発生, 段階, 通知先, …).
    pub facts: Vec<(String, String)>,
    /// Button label and URL.
    pub links: Vec<(String, String)>,
}

impl ChatPost {
    /// A post with only text.
    pub fn text(text: impl Into<String>) -> Self {
        Self {
            text: text.into(),
            ..Self::default()
        }
    }

    /// The title and text as one plain string (notification previews, fallbacks).
    pub fn plain(&self) -> String {
        match &self.title {
            Some(t) if !self.text.is_empty() => format!("{t}\n{}", self.text),
            Some(t) => t.clone(),
            None => self.text.clone(),
        }
    }
}

/// At most this many text blocks in a Teams card; the rest of the text goes in the last one.
const TEAMS_MAX_LINES: usize = 80;

/// A Microsoft Teams Workflows payload ("When a Teams webhook request is received"): a message
/// with one Adaptive Card 1.4 — the title in bold, each line of the text as a block of its own
/// (so line breaks survive whatever the client does with Markdown; a blank line adds space), the
/// facts as a FactSet and the links as `Action.OpenUrl` buttons.
pub fn teams(post: &ChatPost) -> serde_json::Value {
    use serde_json::json;
    let mut body = Vec::new();
    if let Some(t) = &post.title {
        body.push(json!({
            "type": "TextBlock", "text": t, "weight": "Bolder", "size": "Medium", "wrap": true,
        }));
    }
    let lines: Vec<&str> = post.text.trim_end().lines().collect();
    let mut gap = false;
    for (i, line) in lines.iter().enumerate() {
        if line.trim().is_empty() {
            gap = true;
            continue;
        }
        let text = if body.len() + 1 >= TEAMS_MAX_LINES {
            lines[i..].join("\n")
        } else {
            (*line).to_string()
        };
        let spacing = if gap || body.is_empty() {
            "Medium"
        } else {
            "None"
        };
        body.push(json!({ "type": "TextBlock", "text": text, "wrap": true, "spacing": spacing }));
        gap = false;
        if body.len() >= TEAMS_MAX_LINES {
            break;
        }
    }
    if !post.facts.is_empty() {
        let facts: Vec<_> = post
            .facts
            .iter()
            .map(|(k, v)| json!({ "title": k, "value": v }))
            .collect();
        body.push(json!({ "type": "FactSet", "facts": facts, "spacing": "Medium" }));
    }
    let mut card = json!({
        "type": "AdaptiveCard",
        "$schema": "http://adaptivecards.io/schemas/adaptive-card.json",
        "version": "1.4",
        "body": body,
    });
    if !post.links.is_empty()
        && let Some(map) = card.as_object_mut()
    {
        let actions: Vec<_> = post
            .links
            .iter()
            .map(|(label, url)| json!({ "type": "Action.OpenUrl", "title": label, "url": url }))
            .collect();
        map.insert("actions".into(), json!(actions));
    }
    json!({
        "type": "message",
        "attachments": [{
            "contentType": "application/vnd.microsoft.card.adaptive",
            "contentUrl": null,
            "content": card,
        }],
    })
}

/// Slack's limits on a header's and a section's text.
const SLACK_HEADER_MAX: usize = 150;
const SLACK_SECTION_MAX: usize = 3000;

/// A Slack payload (incoming webhook or `chat.postMessage`): Block Kit blocks — a header, the
/// text in sections (split at line breaks under Slack's 3,000-character limit), the facts as
/// fields and the links as buttons — with the plain text as the `text` fallback that
/// notifications and old clients show.
pub fn slack(post: &ChatPost) -> serde_json::Value {
    use serde_json::json;
    let mut blocks = Vec::new();
    if let Some(t) = &post.title {
        blocks.push(json!({
            "type": "header",
            "text": { "type": "plain_text", "text": truncate(t, SLACK_HEADER_MAX), "emoji": true },
        }));
    }
    for chunk in chunks(&mrkdwn_escape(post.text.trim_end()), SLACK_SECTION_MAX) {
        blocks.push(json!({ "type": "section", "text": { "type": "mrkdwn", "text": chunk } }));
    }
    // A section holds at most 10 fields.
    for group in post.facts.chunks(10) {
        let fields: Vec<_> = group
            .iter()
            .map(|(k, v)| {
                json!({ "type": "mrkdwn", "text": format!("*{}*\n{}", mrkdwn_escape(k), mrkdwn_escape(v)) })
            })
            .collect();
        blocks.push(json!({ "type": "section", "fields": fields }));
    }
    if !post.links.is_empty() {
        let buttons: Vec<_> = post
            .links
            .iter()
            .take(25)
            .map(|(label, url)| {
                json!({
                    "type": "button",
                    "text": { "type": "plain_text", "text": truncate(label, 75), "emoji": true },
                    "url": url,
                })
            })
            .collect();
        blocks.push(json!({ "type": "actions", "elements": buttons }));
    }
    json!({ "text": post.plain(), "blocks": blocks })
}

/// `&`, `<` and `>` as Slack's mrkdwn wants them (everything else is shown as written).
fn mrkdwn_escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

/// At most `max` characters, with `…` when cut.
/// The longest text of a LINE WORKS text message.
const LINE_WORKS_TEXT_MAX: usize = 2000;

/// LINE WORKS API 2.0 bot message (`POST /v1.0/bots/{botId}/channels/{channelId}/messages` or
/// `/users/{userId}/messages`): one text message — the title, the text, the facts as
/// `label：value` lines and the links as `label: URL` lines (LINE WORKS makes URLs clickable),
/// cut at 2,000 characters.
pub fn line_works(post: &ChatPost) -> serde_json::Value {
    let mut text = String::new();
    if let Some(t) = &post.title {
        text.push_str(t);
        text.push_str("\n\n");
    }
    text.push_str(post.text.trim_end());
    if !post.facts.is_empty() {
        text.push('\n');
        for (k, v) in &post.facts {
            text.push_str(&format!("\n{k}：{v}"));
        }
    }
    if !post.links.is_empty() {
        text.push('\n');
        for (label, url) in &post.links {
            text.push_str(&format!("\n{label}: {url}"));
        }
    }
    serde_json::json!({
        "content": { "type": "text", "text": truncate(&text, LINE_WORKS_TEXT_MAX) }
    })
}

fn truncate(text: &str, max: usize) -> String {
    if text.chars().count() <= max {
        return text.to_string();
    }
    let mut out: String = text.chars().take(max.saturating_sub(1)).collect();
    out.push('…');
    out
}

/// `text` in pieces of at most `max` characters, cut at line breaks where possible.
fn chunks(text: &str, max: usize) -> Vec<String> {
    let mut out = Vec::new();
    let mut current = String::new();
    let mut len = 0;
    for line in text.split_inclusive('\n') {
        let n = line.chars().count();
        if len + n > max && !current.is_empty() {
            out.push(std::mem::take(&mut current));
            len = 0;
        }
        if n > max {
            let chars: Vec<char> = line.chars().collect();
            for piece in chars.chunks(max) {
                out.push(piece.iter().collect());
            }
            continue;
        }
        current.push_str(line);
        len += n;
    }
    if !current.trim().is_empty() {
        out.push(current);
    }
    out.retain(|c| !c.trim().is_empty());
    out
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn sign_and_verify() {
        let sig = sign(b"k", 1_700_000_000, b"{\"a\":1}");
        assert!(verify(b"k", "1700000000", b"{\"a\":1}", &sig, 1_700_000_100, 300).is_ok());
        assert_eq!(
            verify(b"k", "1700000000", b"{\"a\":2}", &sig, 1_700_000_100, 300),
            Err(VerifyError::BadSignature)
        );
        assert_eq!(
            verify(b"k", "1700000000", b"{\"a\":1}", &sig, 1_700_000_900, 300),
            Err(VerifyError::Stale(300))
        );
        assert_eq!(
            verify(b"x", "1700000000", b"{\"a\":1}", &sig, 1_700_000_000, 300),
            Err(VerifyError::BadSignature)
        );
    }

    fn post() -> ChatPost {
        ChatPost {
            title: Some("【緊急・第一報】基幹システム停止".into()),
            text:
                "業務システムが停止しています。\n影響: 全庁 <重大> & 至急\n\n対応をお願いします。"
                    .into(),
            facts: vec![("発生".into(), "12月4日(金)17:00".into())],
            links: vec![(
                "状況を見る".into(),
                "https://pmo.example.go.jp/runs/r1".into(),
            )],
        }
    }

    /// Every key and enum value of the card is one the Adaptive Card 1.4 schema
    /// (adaptivecards.io/schemas/1.4.0, `additionalProperties: false` on each element) allows
    /// for its element type; the allow-lists below are copied from that schema by hand.
    #[test]
    fn teams_card_keeps_to_the_adaptive_card_1_4_schema() {
        let card_keys = [
            "type",
            "version",
            "refresh",
            "body",
            "actions",
            "selectAction",
            "fallbackText",
            "backgroundImage",
            "minHeight",
            "speak",
            "lang",
            "verticalContentAlignment",
            "$schema",
        ];
        let element = [
            "fallback",
            "height",
            "separator",
            "spacing",
            "id",
            "isVisible",
            "requires",
        ];
        let text_block = [
            "type",
            "text",
            "color",
            "fontType",
            "horizontalAlignment",
            "isSubtle",
            "maxLines",
            "size",
            "weight",
            "wrap",
        ];
        let open_url = [
            "type", "url", "title", "iconUrl", "style", "fallback", "requires",
        ];
        let one_of = |v: &serde_json::Value, allowed: &[&str]| {
            let s = v.as_str().unwrap().to_ascii_lowercase();
            assert!(allowed.contains(&s.as_str()), "{v} not in {allowed:?}");
        };
        let long = (0..120)
            .map(|i| format!("{i}行目"))
            .collect::<Vec<_>>()
            .join("\n");
        let post = ChatPost {
            title: Some("【緊急・第一報】基幹システム停止".into()),
            text: format!("発生しました。\n\n{long}"),
            facts: vec![("段階".into(), "1".into()), ("通知先".into(), "PMO".into())],
            links: vec![("確認する".into(), "https://pmo.example.go.jp/ack/x".into())],
        };
        let msg = teams(&post);
        let card = &msg["attachments"][0]["content"];
        assert_eq!(card["version"], "1.4");
        for k in card.as_object().unwrap().keys() {
            assert!(card_keys.contains(&k.as_str()), "AdaptiveCard.{k}");
        }
        let body = card["body"].as_array().unwrap();
        assert!(body.len() <= TEAMS_MAX_LINES + 1);
        for b in body {
            let kind = b["type"].as_str().unwrap();
            for (k, v) in b.as_object().unwrap() {
                let ok = element.contains(&k.as_str())
                    || match kind {
                        "TextBlock" => text_block.contains(&k.as_str()),
                        "FactSet" => k == "type" || k == "facts",
                        other => panic!("unexpected element {other}"),
                    };
                assert!(ok, "{kind}.{k}");
                match k.as_str() {
                    "spacing" => one_of(
                        v,
                        &[
                            "default",
                            "none",
                            "small",
                            "medium",
                            "large",
                            "extralarge",
                            "padding",
                        ],
                    ),
                    "weight" => one_of(v, &["default", "lighter", "bolder"]),
                    "size" => one_of(v, &["default", "small", "medium", "large", "extralarge"]),
                    "wrap" => assert!(v.is_boolean()),
                    "text" => assert!(v.is_string()),
                    _ => {}
                }
            }
            if kind == "FactSet" {
                for f in b["facts"].as_array().unwrap() {
                    let keys: Vec<&String> = f.as_object().unwrap().keys().collect();
                    assert_eq!(keys, ["title", "value"]);
                    assert!(f["title"].is_string() && f["value"].is_string());
                }
            }
        }
        for a in card["actions"].as_array().unwrap() {
            assert_eq!(a["type"], "Action.OpenUrl");
            assert!(a["url"].is_string(), "url is required");
            for k in a.as_object().unwrap().keys() {
                assert!(open_url.contains(&k.as_str()), "Action.OpenUrl.{k}");
            }
        }
    }

    #[test]
    fn line_works_text_message() {
        let post = ChatPost {
            title: Some("題".into()),
            text: "本文".repeat(1500),
            facts: vec![],
            links: vec![],
        };
        let m = line_works(&post);
        assert_eq!(m["content"]["type"], "text");
        assert!(m["content"]["text"].as_str().unwrap().chars().count() <= LINE_WORKS_TEXT_MAX);
    }

    #[test]
    fn teams_workflows_card() {
        let v = teams(&post());
        assert_eq!(v["type"], "message");
        let att = &v["attachments"][0];
        assert_eq!(
            att["contentType"],
            "application/vnd.microsoft.card.adaptive"
        );
        let card = &att["content"];
        assert_eq!(card["type"], "AdaptiveCard");
        assert_eq!(card["version"], "1.4");
        let body = card["body"].as_array().unwrap();
        assert_eq!(body[0]["text"], "【緊急・第一報】基幹システム停止");
        assert_eq!(body[0]["weight"], "Bolder");
        // One block per line; the blank line becomes space before the next block.
        assert_eq!(body[1]["text"], "業務システムが停止しています。");
        assert_eq!(body[2]["text"], "影響: 全庁 <重大> & 至急");
        assert_eq!(body[2]["spacing"], "None");
        assert_eq!(body[3]["text"], "対応をお願いします。");
        assert_eq!(body[3]["spacing"], "Medium");
        assert_eq!(body[4]["type"], "FactSet");
        assert_eq!(body[4]["facts"][0]["title"], "発生");
        assert_eq!(card["actions"][0]["type"], "Action.OpenUrl");
        assert_eq!(
            card["actions"][0]["url"],
            "https://pmo.example.go.jp/runs/r1"
        );
        // No MessageCard remains.
        assert!(!v.to_string().contains("MessageCard"));
        // A long text stays within the block limit and loses nothing.
        let long = ChatPost::text(
            (0..200)
                .map(|i| format!("行{i}"))
                .collect::<Vec<_>>()
                .join("\n"),
        );
        let body = teams(&long)["attachments"][0]["content"]["body"].clone();
        let body = body.as_array().unwrap();
        assert!(body.len() <= TEAMS_MAX_LINES, "{}", body.len());
        assert!(
            body.last().unwrap()["text"]
                .as_str()
                .unwrap()
                .ends_with("行199")
        );
    }

    #[test]
    fn slack_block_kit() {
        let v = slack(&post());
        assert!(
            v["text"]
                .as_str()
                .unwrap()
                .starts_with("【緊急・第一報】基幹システム停止\n業務")
        );
        let blocks = v["blocks"].as_array().unwrap();
        assert_eq!(blocks[0]["type"], "header");
        assert_eq!(blocks[0]["text"]["type"], "plain_text");
        assert_eq!(blocks[1]["text"]["type"], "mrkdwn");
        let text = blocks[1]["text"]["text"].as_str().unwrap();
        assert!(text.contains("&lt;重大&gt; &amp; 至急"), "{text}");
        assert_eq!(blocks[2]["fields"][0]["text"], "*発生*\n12月4日(金)17:00");
        assert_eq!(blocks[3]["type"], "actions");
        assert_eq!(
            blocks[3]["elements"][0]["url"],
            "https://pmo.example.go.jp/runs/r1"
        );
        // Sections stay under Slack's limit, cut at line breaks.
        let long = ChatPost::text("あ".repeat(3500) + &"\nい".repeat(4000));
        let v = slack(&long);
        let mut joined = String::new();
        for b in v["blocks"].as_array().unwrap() {
            let t = b["text"]["text"].as_str().unwrap();
            assert!(t.chars().count() <= SLACK_SECTION_MAX);
            joined.push_str(t);
        }
        assert_eq!(joined, long.text, "nothing lost between the sections");
        // A header is at most 150 characters.
        let v = slack(&ChatPost {
            title: Some("題".repeat(200)),
            ..ChatPost::default()
        });
        assert_eq!(
            v["blocks"][0]["text"]["text"]
                .as_str()
                .unwrap()
                .chars()
                .count(),
            150
        );
    }
}
