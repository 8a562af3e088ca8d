//! What the chain sends: a level's alerts (one acknowledgement request per person, and the
//! webhook), status notices (続報, 最終報, timer notices) and their shared text.

use serde_json::{Value as Json, json};

use super::{Event, State};
use crate::actions::deadline::format_ja;
use crate::actions::mail::{RequestIds, StepMail, ack_instructions, step_mail};
use crate::actions::{ActionContext, StepError};
use crate::message::correlate;
use crate::message::email::{bare, domain_of};
use crate::message::reply::CUT_MARKER;
use crate::message::webhook::ChatPost;
use crate::store::{MessageKind, NewMessage, NewRequest};

/// Alerts the current level: one acknowledgement request (and mail) per person, and the webhook.
pub(super) fn open_level(
    cx: &ActionContext<'_>,
    state: &mut State,
    messages: &mut Vec<NewMessage>,
    requests: &mut Vec<NewRequest>,
) -> Result<(), StepError> {
    let prefix = state.prefix.clone();
    let now = cx.clock.now();
    let tz = cx.services.mail.timezone;
    let level = state.levels[state.level].clone();
    state.seq += 1;
    let seq = state.seq;
    let stage = if state.level == 0 && state.pass == 0 {
        String::new()
    } else {
        format!(
            "\n※ エスカレーション（第{}段階{}）: {}までに確認の応答がなかったため通知しています。\n",
            state.level + 1,
            if state.pass > 0 {
                format!("・{}巡目", state.pass + 1)
            } else {
                String::new()
            },
            format_ja(now, tz)
        )
    };
    let subject = format!("{prefix}{}", state.subject);
    if level.email {
        for addr in &level.notify {
            let RequestIds {
                token,
                tag,
                message_id,
            } = RequestIds::new(cx)?;
            let full_subject = format!("{subject} {}", correlate::subject_tag(tag as u64));
            let text = format!(
                "{CUT_MARKER}\n{}\n{stage}{}",
                state.text,
                ack_instructions(cx, &token)
            );
            let recipient = bare(addr);
            messages.extend(step_mail(
                cx,
                StepMail {
                    to: addr,
                    cc: &[],
                    reply_token: Some(&token),
                    subject: full_subject.clone(),
                    text,
                    message_id: &message_id,
                    key: format!("{}:{}:esc:{seq}:{recipient}", cx.run_id, cx.step_key),
                    attachments: Vec::new(),
                },
            )?);
            requests.push(NewRequest {
                token: token.clone(),
                workflow_id: cx.workflow_id.to_string(),
                kind: "ack".into(),
                recipient: recipient.clone(),
                allowed: vec![recipient],
                tag,
                message_id,
                subject: full_subject,
                fields: Vec::new(),
                required: Vec::new(),
                deadline: None,
                expires_at: now
                    + chrono::Duration::days(30)
                    + chrono::Duration::from_std(cx.services.replies.token_ttl).unwrap_or_default(),
                form: None,
                types: Default::default(),
                record: None,
            });
            state.round.push(token);
        }
    }
    if level.webhook {
        let names = level.notify.join(", ");
        let text = format!("{subject}\n{}\n通知先: {names}{stage}", state.text);
        let post = ChatPost {
            title: Some(subject.clone()),
            text: format!("{}{stage}", state.text),
            facts: vec![
                ("発生".into(), format_ja(state.opened_at, tz)),
                (
                    "段階".into(),
                    if state.pass > 0 {
                        format!("第{}段階・{}巡目", state.level + 1, state.pass + 1)
                    } else {
                        format!("第{}段階", state.level + 1)
                    },
                ),
                ("通知先".into(), names),
            ],
            links: Vec::new(),
        };
        messages.push(webhook_message(cx, state, seq, &text, post)?);
    }
    for a in &level.notify {
        if !state.notified.iter().any(|n| bare(n) == bare(a)) {
            state.notified.push(a.clone());
        }
    }
    state.level_until = Some(now + chrono::Duration::seconds(level.wait_s));
    state.events.push(Event {
        at: now,
        what: format!("level {}", state.level + 1),
        detail: format!(
            "pass {}: {}",
            state.pass + 1,
            level
                .notify
                .iter()
                .map(|a| bare(a))
                .collect::<Vec<_>>()
                .join(", ")
        ),
    });
    Ok(())
}

/// The chain's webhook post for notice number `seq`.
///
/// `text` is the whole message as one text (the `json` format's `text`); `post` the same for
/// the chat presets, which show the title, facts and a link to the run page apart.
pub(super) fn webhook_message(
    cx: &ActionContext<'_>,
    state: &State,
    seq: u32,
    text: &str,
    mut post: ChatPost,
) -> Result<NewMessage, StepError> {
    let title = post.title.clone().unwrap_or_default();
    let Some(w) = &state.webhook else {
        return Err(StepError::fatal("no `webhook` configured for this chain"));
    };
    let destination = crate::actions::webhook::Destination::of(
        cx,
        w.get("url").and_then(Json::as_str),
        w.get("url_secret").and_then(Json::as_str),
    )?;
    if let Some(u) = &cx.services.replies.public_url {
        post.links
            .push(("状況を見る".into(), format!("{u}/runs/{}", cx.run_id)));
    }
    let body = match w.get("format").and_then(Json::as_str).unwrap_or("json") {
        "slack" => crate::message::webhook::slack(&post),
        "teams" => crate::message::webhook::teams(&post),
        "line-works" => crate::message::webhook::line_works(&post),
        _ => json!({ "title": title, "text": text, "run_id": cx.run_id }),
    };
    let key = format!("{}:{}:esc:{seq}:webhook", cx.run_id, cx.step_key);
    let mut payload = json!({
        "headers": w.get("headers").cloned().unwrap_or_else(|| json!({})),
        "body": body.to_string(),
        "secret": w.get("secret").and_then(Json::as_str),
        "oauth2": w.get("oauth2").and_then(Json::as_str),
    });
    destination.put(&mut payload);
    Ok(NewMessage {
        kind: MessageKind::Webhook,
        key: key.clone(),
        target: destination.target(),
        message_id: key,
        payload,
    })
}

/// A status mail (続報, 最終報, timer notices) to `to`, no acknowledgement asked; and to the
/// webhook when the chain has one.
pub(super) fn notice(
    cx: &ActionContext<'_>,
    state: &mut State,
    messages: &mut Vec<NewMessage>,
    prefix: &str,
    to: &[String],
    body: &str,
    webhook: bool,
) -> Result<(), StepError> {
    let domain = domain_of(&cx.services.mail.from);
    state.seq += 1;
    let seq = state.seq;
    let subject = format!("{prefix}{}", state.subject);
    for addr in to {
        let recipient = bare(addr);
        let message_id = format!(
            "pmoflow.{}.{}.n{seq}.{}@{domain}",
            cx.run_id,
            cx.step_key.replace(['[', ']'], "_"),
            recipient.replace('@', "=")
        );
        messages.extend(step_mail(
            cx,
            StepMail {
                to: addr,
                cc: &[],
                reply_token: None,
                subject: subject.clone(),
                text: body.to_string(),
                message_id: &message_id,
                key: format!("{}:{}:esc:{seq}:{recipient}", cx.run_id, cx.step_key),
                attachments: Vec::new(),
            },
        )?);
    }
    if webhook && state.webhook.is_some() {
        let post = ChatPost {
            title: Some(subject.clone()),
            text: body.to_string(),
            ..ChatPost::default()
        };
        messages.push(webhook_message(cx, state, seq, body, post)?);
    }
    Ok(())
}

/// When it began, who acknowledged, who was alerted: the head of every 続報 and the 最終報.
pub(super) fn status_lines(state: &State, tz: chrono_tz::Tz) -> String {
    let mut s = format!("発生: {}\n", format_ja(state.opened_at, tz));
    match &state.acked {
        Some(a) => s.push_str(&format!(
            "確認: {} 様が{}に確認（{}）\n",
            a.by,
            format_ja(a.at, tz),
            via_ja(&a.via)
        )),
        None => s.push_str("確認: まだ確認の応答がありません\n"),
    }
    s.push_str(&format!(
        "通知済み: {}\n",
        state
            .notified
            .iter()
            .map(|a| bare(a))
            .collect::<Vec<_>>()
            .join(", ")
    ));
    s
}

/// The first report, quoted under the status of a later one.
pub(super) fn first_report(text: &str) -> String {
    format!("\n――――― 第一報の内容（再掲） ―――――\n{text}\n")
}

/// How an acknowledgement came, in Japanese.
fn via_ja(via: &str) -> &'static str {
    match via {
        "email" => "メール返信",
        "web" => "確認リンク",
        "api" => "API",
        "cli" => "コマンド",
        _ => "その他",
    }
}
