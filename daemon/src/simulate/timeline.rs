//! The timeline a simulation prints: events, and their text form (one line per fire, mail,
//! answer and end, grouped by day).

use std::collections::{BTreeMap, HashSet};

use chrono::{DateTime, Utc};
use serde::Serialize;
use serde_json::{Value as Json, json};

/// One line of the timeline.
#[derive(Debug, Clone, Serialize)]
pub struct Event {
    /// When.
    pub at: DateTime<Utc>,
    /// `run`, `email`, `webhook`, `answer`, `resolve`, `finished`.
    pub kind: String,
    /// Run number in this simulation (1-based).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub run: Option<usize>,
    /// Recipients (email).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub to: Vec<String>,
    /// Copies (email).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub cc: Vec<String>,
    /// Subject, or a one-line summary.
    pub summary: String,
    /// Body text (email, webhook) or details.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub body: String,
    /// Attachments: name and (for text) content.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub attachments: Vec<Json>,
}

/// What a simulation produced.
#[derive(Debug, Serialize)]
pub struct Timeline {
    /// The workflow.
    pub workflow: String,
    /// Start.
    pub from: DateTime<Utc>,
    /// End.
    pub until: DateTime<Utc>,
    /// Every event, in time order.
    pub events: Vec<Event>,
    /// The final status of every run.
    pub runs: Vec<Json>,
    /// What the simulated year left in the portfolio.
    pub portfolio: Vec<crate::store::PortfolioEntry>,
}
pub(super) fn outbox_event(
    row: &crate::store::OutboxRow,
    now: DateTime<Utc>,
    run: Option<usize>,
) -> Event {
    use mail_parser::{MessageParser, MimeHeaders};
    if row.kind == crate::store::MessageKind::Webhook {
        let body = row.payload["body"].as_str().unwrap_or_default().to_string();
        let parsed: Json = serde_json::from_str(&body).unwrap_or(Json::Null);
        // The JSON format's title (or text); a Teams card's first block; Slack's fallback text.
        let card_title = parsed["attachments"][0]["content"]["body"][0]["text"].as_str();
        let title = ["title", "text", "summary"]
            .iter()
            .find_map(|k| parsed.get(k).and_then(Json::as_str))
            .or(card_title)
            .unwrap_or("")
            .lines()
            .next()
            .unwrap_or("")
            .to_string();
        return Event {
            at: now,
            kind: "webhook".into(),
            run,
            to: vec![row.target.clone()],
            cc: Vec::new(),
            summary: title,
            body,
            attachments: Vec::new(),
        };
    }
    let raw = row.payload["raw"].as_str().unwrap_or_default();
    let Some(msg) = MessageParser::default().parse(raw.as_bytes()) else {
        return Event {
            at: now,
            kind: "email".into(),
            run,
            to: vec![row.target.clone()],
            cc: Vec::new(),
            summary: "(unreadable message)".into(),
            body: String::new(),
            attachments: Vec::new(),
        };
    };
    let list = |a: Option<&mail_parser::Address<'_>>| -> Vec<String> {
        a.map(|a| {
            a.iter()
                .filter_map(|x| x.address())
                .map(str::to_lowercase)
                .collect()
        })
        .unwrap_or_default()
    };
    let attachments = msg
        .attachments()
        .map(|p| {
            let content = p.contents();
            let name = p.attachment_name().unwrap_or("attachment").to_string();
            match std::str::from_utf8(content) {
                Ok(text) => json!({ "name": name, "size": content.len(), "text": text.trim_start_matches('\u{feff}') }),
                Err(_) => json!({ "name": name, "size": content.len() }),
            }
        })
        .collect();
    Event {
        at: now,
        kind: "email".into(),
        run,
        to: list(msg.to()),
        cc: list(msg.cc()),
        summary: mask_tag(msg.subject().unwrap_or("")),
        body: msg.body_text(0).map(|t| t.into_owned()).unwrap_or_default(),
        attachments,
    }
}

/// Subject tags are random (` [#48213]`): the timeline shows ` [#…]` so that it is stable.
pub(super) fn mask_tag(subject: &str) -> String {
    match subject.rfind(" [#") {
        Some(i)
            if subject.ends_with(']')
                && subject[i + 3..subject.len() - 1]
                    .chars()
                    .all(|c| c.is_ascii_digit()) =>
        {
            format!("{} [#…]", &subject[..i])
        }
        _ => subject.to_string(),
    }
}

/// The timeline as text: one line per event, times in `tz`.
pub fn render_text(t: &Timeline, tz: chrono_tz::Tz, bodies: bool) -> String {
    let mut out = String::new();
    let mut day = String::new();
    // Runs that did nothing anyone sees (a daily check that found nothing) are left out.
    let visible: HashSet<usize> = t
        .events
        .iter()
        .filter(|e| {
            !matches!(e.kind.as_str(), "run" | "finished")
                || (e.kind == "finished" && e.summary != "succeeded")
        })
        .filter_map(|e| e.run)
        .collect();
    let quiet = t.runs.len().saturating_sub(visible.len());
    for e in &t.events {
        if e.run.is_some_and(|n| !visible.contains(&n)) {
            continue;
        }
        let local = e.at.with_timezone(&tz);
        let d = format!(
            "{} ({})",
            local.format("%Y-%m-%d"),
            crate::calendar::format::weekday_ja(chrono::Datelike::weekday(&local))
        );
        if d != day {
            out.push_str(&format!("{d}\n"));
            day = d;
        }
        let run = e.run.map_or(String::new(), |n| format!("#{n} "));
        let line = match e.kind.as_str() {
            "email" => {
                let mut who = e.to.join(", ");
                if !e.cc.is_empty() {
                    who.push_str(&format!(" (cc {})", e.cc.join(", ")));
                }
                let att = if e.attachments.is_empty() {
                    String::new()
                } else {
                    format!(
                        " [添付: {}]",
                        e.attachments
                            .iter()
                            .filter_map(|a| a["name"].as_str())
                            .collect::<Vec<_>>()
                            .join(", ")
                    )
                };
                format!("mail     {who}: {}{att}", e.summary)
            }
            "webhook" => format!("webhook  {}: {}", e.to.join(", "), e.summary),
            "run" => format!("run      {}", e.summary),
            "finished" => format!("finished {}", e.summary),
            "answer" => format!("answer   {}", e.summary),
            "resolve" => format!("resolve  {}", e.summary),
            other => format!("{other} {}", e.summary),
        };
        out.push_str(&format!("  {} {run}{line}\n", local.format("%H:%M")));
        if bodies && !e.body.is_empty() && e.kind == "email" {
            for l in e.body.lines() {
                out.push_str(&format!("        | {l}\n"));
            }
            for a in &e.attachments {
                if let Some(text) = a["text"].as_str() {
                    out.push_str(&format!(
                        "        | --- {} ---\n",
                        a["name"].as_str().unwrap_or("")
                    ));
                    for l in text.lines() {
                        out.push_str(&format!("        | {l}\n"));
                    }
                }
            }
        }
    }
    if !t.portfolio.is_empty() {
        out.push_str(
            "portfolio (subject period: status, typed values)
",
        );
        for e in &t.portfolio {
            let mut ordered: Vec<_> = e.values.iter().collect();
            ordered.sort_by_key(|(k, v)| (v.position, k.as_str()));
            let values: Vec<String> = ordered
                .into_iter()
                .map(|(k, v)| {
                    format!(
                        "{k}={}",
                        crate::portfolio::value_text(&v.value, v.unit.as_deref())
                    )
                })
                .collect();
            out.push_str(&format!(
                "  {} {}: {}{}\n",
                e.subject,
                e.period,
                crate::portfolio::status_ja(e),
                if values.is_empty() {
                    String::new()
                } else {
                    format!(" {}", values.join(", "))
                }
            ));
        }
    }
    let emails = t.events.iter().filter(|e| e.kind == "email").count();
    let webhooks = t.events.iter().filter(|e| e.kind == "webhook").count();
    let answers = t.events.iter().filter(|e| e.kind == "answer").count();
    let statuses: BTreeMap<String, usize> = t.runs.iter().fold(BTreeMap::new(), |mut m, r| {
        *m.entry(r["status"].as_str().unwrap_or("?").to_string())
            .or_insert(0) += 1;
        m
    });
    out.push_str(&format!(
        "-- {} runs ({}{}), {emails} emails, {webhooks} webhooks, {answers} answers\n",
        t.runs.len(),
        statuses
            .iter()
            .map(|(k, v)| format!("{v} {k}"))
            .collect::<Vec<_>>()
            .join(", "),
        if quiet > 0 {
            format!("; {quiet} without visible effect not shown")
        } else {
            String::new()
        }
    ));
    out
}
