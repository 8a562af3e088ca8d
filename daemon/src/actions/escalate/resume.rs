//! Every later call: read the chain's requests and answers back and decide, in this order —
//! an acknowledgement stops the pending levels; a resolution sends the 最終報 and ends the step;
//! an acknowledged incident not resolved in time starts the chain again; a level whose wait is
//! over hands on to the next; 続報 and timer notices go out on their schedule.

use chrono::{DateTime, Utc};
use serde_json::{Value as Json, json};

use super::notices::{first_report, notice, open_level, status_lines};
use super::{Ack, Event, State, ack_json, first_answer, next_wake};
use crate::actions::deadline::format_ja;
use crate::actions::{ActionContext, Outcome, StepError};
use crate::message::email::bare;
use crate::store::{AnswerRow, NewMessage, NewRequest, RequestRow, Store};

pub(super) async fn resume(cx: &ActionContext<'_>, mut state: State) -> Result<Outcome, StepError> {
    let now = cx.clock.now();
    let store = cx
        .store
        .ok_or_else(|| StepError::retryable("no database for an escalation step"))?;
    let rows = store
        .requests_for_step(cx.run_id, cx.step_key)
        .await
        .map_err(|e| StepError::retryable(e.to_string()))?;
    let tokens: Vec<String> = rows.iter().map(|r| r.token.clone()).collect();
    let answers = store
        .answers_for(&tokens)
        .await
        .map_err(|e| StepError::retryable(e.to_string()))?;
    let mut messages = Vec::new();
    let mut requests = Vec::new();

    // An acknowledgement in the current round stops every pending level at once.
    if state.acked.is_none()
        && let Some((row, answer)) = first_answer(&rows, &answers, &state.round)
    {
        acknowledge(cx, store, &mut state, row, answer).await?;
    }
    if let Some(row) = rows
        .iter()
        .find(|r| r.kind == "resolve" && r.status == "answered")
    {
        let answer = answers.iter().rev().find(|a| a.token == row.token);
        return resolve(cx, store, state, answer, messages).await;
    }
    // Acknowledged but not resolved in time: the chain starts again.
    if state.acked.is_some() && state.realert_at.is_some_and(|t| now >= t) {
        state.events.push(Event {
            at: now,
            what: "ack timeout".into(),
            detail: "acknowledged but not resolved: the chain starts again".into(),
        });
        state.acked = None;
        state.realert_at = None;
        state.pass = 0;
        state.level = 0;
        state.prefix = "【再通知】".into();
        open_level(cx, &mut state, &mut messages, &mut requests)?;
    }
    escalate(cx, &mut state, &mut messages, &mut requests, now)?;
    send_updates(cx, &mut state, &mut messages, now)?;
    fire_timers(cx, &mut state, &mut messages, now)?;
    Ok(Outcome::Suspend {
        until: next_wake(&state, now),
        state: json!({ "escalate": state }),
        messages,
        requests,
    })
}

/// Records the acknowledgement, stops the levels, closes the round's other requests and sets
/// the re-alert time (`ack_timeout`).
async fn acknowledge(
    cx: &ActionContext<'_>,
    store: &Store,
    state: &mut State,
    row: &RequestRow,
    answer: &AnswerRow,
) -> Result<(), StepError> {
    let level = state
        .levels
        .iter()
        .position(|l| l.notify.iter().any(|a| bare(a) == row.recipient))
        .unwrap_or(state.level);
    let ack = Ack {
        by: answer.from.clone().unwrap_or_else(|| row.recipient.clone()),
        via: answer.via.clone(),
        at: answer.received_at,
        level,
    };
    state.events.push(Event {
        at: ack.at,
        what: "acknowledged".into(),
        detail: format!("{} via {}", ack.by, ack.via),
    });
    state.acks.push(ack.clone());
    state.acked = Some(ack.clone());
    state.level_until = None;
    state.round.clear();
    state.realert_at = state
        .ack_timeout_s
        .map(|s| ack.at + chrono::Duration::seconds(s));
    store
        .close_requests_of_kind(cx.run_id, cx.step_key, "ack")
        .await
        .map_err(|e| StepError::retryable(e.to_string()))
}

/// Resolved: the 最終報 to everyone alerted and informed, and the step ends with the record.
async fn resolve(
    cx: &ActionContext<'_>,
    store: &Store,
    mut state: State,
    answer: Option<&AnswerRow>,
    mut messages: Vec<NewMessage>,
) -> Result<Outcome, StepError> {
    let tz = cx.services.mail.timezone;
    let at = answer.map_or(cx.clock.now(), |a| a.received_at);
    let by = answer.and_then(|a| a.from.clone()).unwrap_or_default();
    let note = answer
        .and_then(|a| {
            a.fields
                .get("note")
                .and_then(Json::as_str)
                .map(str::to_string)
        })
        .unwrap_or_default();
    store
        .close_requests_of_kind(cx.run_id, cx.step_key, "ack")
        .await
        .map_err(|e| StepError::retryable(e.to_string()))?;
    state.events.push(Event {
        at,
        what: "resolved".into(),
        detail: by.clone(),
    });
    let to = everyone(&state);
    let pending: Vec<String> = state
        .timers
        .iter()
        .filter(|t| t.due > at)
        .map(|t| {
            format!(
                "・{}: {}まで（引き続き対応が必要です）\n",
                t.name,
                format_ja(t.due, tz)
            )
        })
        .collect();
    let body = format!(
        "関係者各位\n\nお疲れ様です。下記の事案について、対応を完了しましたのでご報告します（最終報）。\n\n記\n{}収束: {}（{}）\n{}{}\n以上\n{}",
        status_lines(&state, tz),
        format_ja(at, tz),
        if by.is_empty() {
            "-".to_string()
        } else {
            by.clone()
        },
        if note.is_empty() {
            String::new()
        } else {
            format!("対応内容: {note}\n")
        },
        if pending.is_empty() {
            String::new()
        } else {
            format!("\n未了の期限:\n{}", pending.concat())
        },
        first_report(&state.text),
    );
    notice(
        cx,
        &mut state,
        &mut messages,
        "【最終報】",
        &to,
        &body,
        true,
    )?;
    let output = json!({
        "status": "resolved",
        "opened_at": state.opened_at.to_rfc3339(),
        "resolved_at": at.to_rfc3339(),
        "resolved_by": by,
        "note": note,
        "acknowledged": state.acks.first().map(ack_json),
        "acks": state.acks.iter().map(ack_json).collect::<Vec<_>>(),
        "notified": state.notified.iter().map(|a| bare(a)).collect::<Vec<_>>(),
        "updates": state.updates,
        "events": state.events.iter().map(|e| json!({ "at": e.at.to_rfc3339(), "what": e.what, "detail": e.detail })).collect::<Vec<_>>(),
    });
    Ok(Outcome::Emit(output, messages))
}

/// Everyone alerted so far and everyone informed, once each.
fn everyone(state: &State) -> Vec<String> {
    let mut to = state.notified.clone();
    to.extend(state.inform.iter().cloned());
    to.dedup_by(|a, b| bare(a) == bare(b));
    to
}

/// No acknowledgement: the next level when the current one's wait is over (several, if the
/// daemon was down through them), then the whole chain again `repeat` times.
fn escalate(
    cx: &ActionContext<'_>,
    state: &mut State,
    messages: &mut Vec<NewMessage>,
    requests: &mut Vec<NewRequest>,
    now: DateTime<Utc>,
) -> Result<(), StepError> {
    while state.acked.is_none() && state.level_until.is_some_and(|t| now >= t) {
        if state.level + 1 < state.levels.len() {
            state.level += 1;
        } else if state.pass < state.repeat {
            state.pass += 1;
            state.level = 0;
            state.prefix = "【緊急・再通知】".into();
        } else {
            state.level_until = None;
            state.events.push(Event {
                at: now,
                what: "exhausted".into(),
                detail: "nobody acknowledged; the chain has no more levels".into(),
            });
            break;
        }
        open_level(cx, state, messages, requests)?;
    }
    Ok(())
}

/// 続報 on their schedule, to everyone alerted so far and those informed. Updates missed while
/// the daemon was down are folded into one.
fn send_updates(
    cx: &ActionContext<'_>,
    state: &mut State,
    messages: &mut Vec<NewMessage>,
    now: DateTime<Utc>,
) -> Result<(), StepError> {
    let (Some(every), Some(mut at)) = (state.updates_every_s, state.next_update) else {
        return Ok(());
    };
    let tz = cx.services.mail.timezone;
    let every = chrono::Duration::seconds(every.max(60));
    let mut due = 0;
    while at <= now {
        due += 1;
        at += every;
    }
    if due > 0 {
        state.updates += 1;
        let n = state.updates;
        let to = everyone(state);
        let body = format!(
            "関係者各位\n\nお疲れ様です。下記の事案について、現時点の状況をお知らせします（続報 第{n}報）。\n\n記\n{}\n以上\n{}",
            status_lines(state, tz),
            first_report(&state.text)
        );
        notice(
            cx,
            state,
            messages,
            &format!("【続報{n}】"),
            &to,
            &body,
            true,
        )?;
        state.events.push(Event {
            at: now,
            what: format!("update {n}"),
            detail: String::new(),
        });
    }
    state.next_update = Some(at);
    Ok(())
}

/// Deadline timers: a notice for each timer whose next notice time has come (one per timer per
/// call, however many times passed).
fn fire_timers(
    cx: &ActionContext<'_>,
    state: &mut State,
    messages: &mut Vec<NewMessage>,
    now: DateTime<Utc>,
) -> Result<(), StepError> {
    let tz = cx.services.mail.timezone;
    for i in 0..state.timers.len() {
        let mut sent_now = None;
        {
            let t = &mut state.timers[i];
            while t.at.get(t.sent).is_some_and(|a| *a <= now) {
                t.sent += 1;
                sent_now = Some(t.clone());
            }
        }
        let Some(t) = sent_now else {
            continue;
        };
        let reached = t.sent >= t.at.len();
        let prefix = if reached {
            "【期限到来】"
        } else {
            "【期限通知】"
        };
        let body = format!(
            "関係者各位\n\nお疲れ様です。下記の事案について、{}の期限{}。\n\n期限: {}\n\n以上\n{}",
            t.name,
            if reached {
                "が到来しました。至急ご対応ください"
            } else {
                "が近づいています"
            },
            format_ja(t.due, tz),
            first_report(&state.text)
        );
        let to = t.notify.clone();
        notice(
            cx,
            state,
            messages,
            &format!("{prefix}{}：", t.name),
            &to,
            &body,
            false,
        )?;
        state.events.push(Event {
            at: now,
            what: format!("timer {}", t.name),
            detail: if reached { "due" } else { "reminder" }.into(),
        });
    }
    Ok(())
}
