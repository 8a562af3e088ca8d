//! The mail a step sends itself (requests, reminders, escalation alerts and notices): the body
//! from `with.body` or a template, fresh request keys, the ack instructions, and one outbox row
//! built from it all.

use serde_json::{Value as Json, json};
use sha2::Digest;

use super::{ActionContext, StepError, str_param};
use crate::message::correlate;
use crate::message::email::{EmailSpec, build, domain_of};
use crate::store::{MessageKind, NewMessage};

pub(crate) fn render_body(
    cx: &ActionContext<'_>,
    with: &Json,
    request: &Json,
) -> Result<String, StepError> {
    let base = cx.template_ctx.cloned().unwrap_or_default();
    let ctx = minijinja::context! { request => minijinja::Value::from_serialize(request), ..base };
    match (str_param(with, "body")?, str_param(with, "template")?) {
        // `body` was rendered with the step's `with` (it cannot read `request.*`).
        (Some(body), _) => Ok(body.to_string()),
        (None, Some(name)) => super::email::render_file_with(cx, name, &ctx),
        (None, None) => Err(StepError::fatal(
            "action `request` needs `with.body` or `with.template`",
        )),
    }
}

/// A fresh request's keys.
pub(crate) struct RequestIds {
    /// Its single-use token (reply address, answer link).
    pub token: String,
    /// The short tag in its subject (`[#123456]`).
    pub tag: i64,
    /// Our Message-ID, without angle brackets; it carries the token too.
    pub message_id: String,
}

impl RequestIds {
    /// New keys for a request sent from `cx`'s mail address.
    pub(crate) fn new(cx: &ActionContext<'_>) -> Result<Self, StepError> {
        let token = correlate::new_token().map_err(|e| StepError::retryable(e.to_string()))?;
        let tag = fastrand::i64(10_000..1_000_000);
        let message_id = correlate::message_id(&token, &domain_of(&cx.services.mail.from));
        Ok(Self {
            token,
            tag,
            message_id,
        })
    }
}

/// One plain-text email of a step (requests, reminders, escalation alerts and notices).
pub(crate) struct StepMail<'a> {
    /// The addressee (a display address).
    pub to: &'a str,
    /// Copies.
    pub cc: &'a [String],
    /// The request token the reply address carries; `None` for a mail that asks nothing.
    pub reply_token: Option<&'a str>,
    /// The subject as sent.
    pub subject: String,
    /// The body.
    pub text: String,
    /// Our Message-ID, without angle brackets.
    pub message_id: &'a str,
    /// The outbox key: the same mail decided again after a crash is queued once.
    pub key: String,
    /// Files: (name, bytes, content type), e.g. the request's Excel 様式.
    pub attachments: Vec<(String, Vec<u8>, String)>,
}

/// How the Message-ID of a copy for the people in cc begins (it names no token).
const COPY_PREFIX: &str = "pmoflow.cc.";

/// Whether an outbox row's Message-ID (`<…>`) is that of a copy for the people in cc.
pub fn is_copy(message_id: &str) -> bool {
    message_id.trim_start_matches('<').starts_with(COPY_PREFIX)
}

/// Builds `m` now (the outbox keeps the raw message) into outbox rows: one for the addressee,
/// and — when there are copies of a mail that can be answered — one for the people copied.
/// Both show the same `To` and `Cc`, but only the addressee's carries the reply token and the
/// answer or acknowledgement link: a copy has neither (its links are replaced by a note, its
/// replies go to the PMO's plain address and its Message-ID names no token), so nobody copied
/// can answer in the addressee's name.
pub(crate) fn step_mail(
    cx: &ActionContext<'_>,
    m: StepMail<'_>,
) -> Result<Vec<NewMessage>, StepError> {
    let pattern = cx.services.replies.pattern(&cx.services.mail.from);
    let mut spec = EmailSpec {
        from: cx.services.mail.from.clone(),
        to: vec![m.to.to_string()],
        cc: m.cc.to_vec(),
        bcc: Vec::new(),
        reply_to: m.reply_token.map(|t| correlate::reply_address(&pattern, t)),
        subject: m.subject,
        text: m.text,
        html: None,
        attachments: m.attachments,
        message_id: format!("<{}>", m.message_id),
        date: cx.clock.now(),
        timezone: cx.services.mail.timezone,
        charset: cx.services.mail.charset,
    };
    let built = build(&spec).map_err(|e| StepError::fatal(e.to_string()))?;
    let Some(token) = m.reply_token.filter(|_| !m.cc.is_empty()) else {
        return Ok(vec![NewMessage {
            kind: MessageKind::Email,
            key: m.key,
            target: std::iter::once(m.to.to_string())
                .chain(m.cc.iter().cloned())
                .collect::<Vec<_>>()
                .join(", "),
            message_id: format!("<{}>", m.message_id),
            payload: json!({ "from": built.envelope_from, "to": built.envelope_to, "raw": built.raw }),
        }]);
    };
    // The addressee's own mail goes to the addressee alone (the Cc header still shows who is
    // copied); the copy is another message, to the copied people only.
    let addressee = vec![crate::message::email::bare(m.to)];
    let own = NewMessage {
        kind: MessageKind::Email,
        key: m.key.clone(),
        target: m.to.to_string(),
        message_id: format!("<{}>", m.message_id),
        payload: json!({ "from": built.envelope_from, "to": addressee, "raw": built.raw }),
    };
    let note = "（ご回答はご依頼先の方からお願いいたします。本メールは写しのため、回答用のリンクは記載していません）";
    let mut text = std::mem::take(&mut spec.text);
    for path in ["answer", "ack"] {
        if let Some(base) = &cx.services.replies.public_url {
            text = text.replace(&format!("{base}/{path}/{token}"), note);
        }
        text = text.replace(&format!("/{path}/{token}"), note);
    }
    let text = text.replace(token, "");
    let digest = hex::encode(&sha2::Sha256::digest(format!("cc:{}", m.message_id))[..12]);
    let copy_id = format!(
        "<{COPY_PREFIX}{digest}@{}>",
        domain_of(&cx.services.mail.from)
    );
    // 「山田 太郎 <yamada@…>」 is called 山田 太郎; a bare address is itself.
    let addressee_name =
        m.to.split('<')
            .next()
            .map(|n| n.trim().trim_matches('"'))
            .filter(|n| !n.is_empty())
            .unwrap_or(m.to);
    let copy_spec = EmailSpec {
        reply_to: None,
        text: format!("（本メールは{addressee_name} 様へのご依頼の写しです）\n\n{text}"),
        message_id: copy_id.clone(),
        ..spec
    };
    let copy = build(&copy_spec).map_err(|e| StepError::fatal(e.to_string()))?;
    let copied: Vec<String> =
        m.cc.iter()
            .map(|c| crate::message::email::bare(c))
            .collect();
    Ok(vec![
        own,
        NewMessage {
            kind: MessageKind::Email,
            key: format!("{}:cc", m.key),
            target: m.cc.join(", "),
            message_id: copy_id,
            payload: json!({ "from": copy.envelope_from, "to": copied, "raw": copy.raw }),
        },
    ])
}

/// How to acknowledge: reply with a word, or open the link (a page with a button: mail scanners
/// that open links must not acknowledge anything).
pub(crate) fn ack_instructions(cx: &ActionContext<'_>, token: &str) -> String {
    let mut t = String::from(
        "\n確認しましたら、本メールに「了解」（ACK / 承知 でも可）とご返信ください。\n",
    );
    if let Some(u) = &cx.services.replies.public_url {
        t.push_str(&format!(
            "次のリンクから確認することもできます:\n{u}/ack/{token}\n"
        ));
    }
    t
}
