//! Turns triggers into runs.
//!
//! Each trigger has a cursor in the database: the instant up to which its fires have been
//! handled (created when the trigger is first seen, so fires before that never happen). On each
//! tick the fires in `(cursor, now]` are decided — run, or recorded as skipped with the reason —
//! then the cursor moves to the last of them. Every fire becomes a run keyed by
//! `(workflow, sched:<trigger key>:<instant>)`, unique in the database: a restart, or a second
//! daemon on the same database, cannot create it twice.
//!
//! Fires more than [`LATE`] behind `now` were missed (the daemon was down or stalled) and follow
//! the trigger's `catch_up` policy; `catch_up_window` bounds how far back anything runs.

use std::sync::Arc;

use chrono::{DateTime, Duration, Utc};
use sha2::{Digest, Sha256};
use tokio_util::sync::CancellationToken;

use crate::clock::SharedClock;
use crate::engine::{Engine, RunRequest};
use crate::store::RunStatus;
use crate::workflow::raw::{CatchUp, Overlap};
use crate::workflow::schedule::{Fire, TriggerSchedule};
use crate::workflow::{Trigger, Workflow};

/// A fire this far behind `now` counts as missed.
pub const LATE: Duration = Duration::seconds(60);

/// The longest the scheduler sleeps without looking again.
const MAX_SLEEP: Duration = Duration::seconds(60);

/// What becomes of one due fire.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// Start a run.
    Run,
    /// Record the fire as skipped, with the reason.
    Skip(String),
}

/// Applies `catch_up` and `catch_up_window` to the fires due at `now` (in order).
pub fn decide(trigger: &Trigger, due: &[Fire], now: DateTime<Utc>) -> Vec<Decision> {
    let missed = |f: &Fire| now - f.at > LATE;
    let any_on_time = due.iter().any(|f| !missed(f));
    let last_missed = due.iter().rposition(missed);
    due.iter()
        .enumerate()
        .map(|(i, f)| {
            if !missed(f) {
                return Decision::Run;
            }
            if let Some(w) = trigger.catch_up_window {
                let w = Duration::from_std(w).unwrap_or(Duration::MAX);
                if now - f.at > w {
                    return Decision::Skip(format!(
                        "missed while the daemon was not running; older than catch_up_window ({})",
                        humantime::format_duration(w.to_std().unwrap_or_default())
                    ));
                }
            }
            match trigger.catch_up {
                CatchUp::All => Decision::Run,
                CatchUp::Latest if !any_on_time && Some(i) == last_missed => Decision::Run,
                CatchUp::Latest => Decision::Skip(
                    "missed while the daemon was not running; catch_up = \"latest\" runs only the most recent".into(),
                ),
                CatchUp::None => Decision::Skip(
                    "missed while the daemon was not running; catch_up = \"none\"".into(),
                ),
            }
        })
        .collect()
}

/// The dedup key of a fire.
pub fn fire_key(trigger: &Trigger, at: DateTime<Utc>) -> String {
    format!("sched:{}:{}", trigger.key, at.to_rfc3339())
}

/// A delay in `[0, jitter)` derived from the fire's key, so every daemon computes the same one.
fn jitter_for(key: &str, jitter: std::time::Duration) -> Duration {
    let ms = u64::try_from(jitter.as_millis()).unwrap_or(u64::MAX);
    if ms == 0 {
        return Duration::zero();
    }
    let digest = Sha256::digest(key.as_bytes());
    let mut bytes = [0u8; 8];
    bytes.copy_from_slice(&digest[..8]);
    Duration::milliseconds(i64::try_from(u64::from_le_bytes(bytes) % ms).unwrap_or(0))
}

/// Fires triggers until shutdown.
pub async fn run(
    engine: &Engine,
    clock: &SharedClock,
    default_tz: chrono_tz::Tz,
    shutdown: &CancellationToken,
) {
    let mut changes = engine.registry().subscribe();
    loop {
        let now = clock.now();
        let next = tick(engine, default_tz, now).await;
        let wake = next
            .unwrap_or(now + MAX_SLEEP)
            .min(now + MAX_SLEEP)
            .max(now);
        tokio::select! {
            () = clock.sleep_until(wake) => {}
            _ = changes.changed() => {}
            () = shutdown.cancelled() => return,
        }
    }
}

/// Handles every trigger once; returns the earliest next fire.
pub async fn tick(
    engine: &Engine,
    default_tz: chrono_tz::Tz,
    now: DateTime<Utc>,
) -> Option<DateTime<Utc>> {
    let catalog = engine.registry().catalog();
    let calendar = catalog.calendar.clone();
    let mut next: Option<DateTime<Utc>> = None;
    for wf in catalog.workflows.values() {
        for trigger in &wf.triggers {
            let schedule = match TriggerSchedule::new(trigger, default_tz, calendar.clone()) {
                Ok(s) => s,
                Err(err) => {
                    tracing::error!(workflow = %wf.id, trigger = %trigger.key, error = %err, "invalid trigger");
                    continue;
                }
            };
            if let Err(err) = fire_due(engine, wf, trigger, &schedule, now).await {
                tracing::error!(workflow = %wf.id, trigger = %trigger.key, error = %err, "cannot fire trigger; will retry");
                next = Some(next.map_or(now + Duration::seconds(1), |n| {
                    n.min(now + Duration::seconds(1))
                }));
            }
            if let Some(fire) = schedule.next(now, 1).into_iter().next() {
                next = Some(next.map_or(fire.at, |n| n.min(fire.at)));
            }
        }
        if wf.triggers.iter().any(|t| t.overlap == Overlap::Queue) {
            match engine.store().promote_queued(&wf.id, now).await {
                Ok(Some(run)) => {
                    tracing::info!(workflow = %wf.id, run = %run, "queued run started");
                    engine.wake();
                }
                Ok(None) => {}
                Err(err) => {
                    tracing::error!(workflow = %wf.id, error = %err, "cannot start queued run")
                }
            }
        }
    }
    next
}

async fn fire_due(
    engine: &Engine,
    wf: &Arc<Workflow>,
    trigger: &Trigger,
    schedule: &TriggerSchedule,
    now: DateTime<Utc>,
) -> Result<(), crate::engine::TriggerError> {
    let store = engine.store();
    let cursor = store.trigger_cursor(&wf.id, &trigger.key, now).await?;
    let due = schedule.between(cursor, now);
    let Some(last) = due.last().map(|f| f.at) else {
        return Ok(());
    };
    let inputs = serde_json::Value::Object(trigger.inputs.clone());
    for (fire, decision) in due.iter().zip(decide(trigger, &due, now)) {
        let key = fire_key(trigger, fire.at);
        let mut reason = match decision {
            Decision::Run => None,
            Decision::Skip(r) => Some(r),
        };
        let mut status = if reason.is_some() {
            RunStatus::Skipped
        } else {
            RunStatus::Pending
        };
        if status == RunStatus::Pending
            && trigger.overlap != Overlap::Allow
            && store.active_runs(&wf.id).await? > 0
        {
            if trigger.overlap == Overlap::Skip {
                status = RunStatus::Skipped;
                reason = Some(
                    "an earlier run of this workflow is still in progress (overlap = \"skip\")"
                        .into(),
                );
            } else {
                status = RunStatus::Queued;
            }
        }
        let wake_at = trigger.jitter.map(|j| fire.at + jitter_for(&key, j));
        let req = RunRequest {
            inputs: &inputs,
            trigger_kind: "schedule",
            dedup_key: Some(&key),
            scheduled_at: Some(fire.at),
            status,
            wake_at,
            error: reason.as_deref(),
        };
        let created = engine.trigger(&wf.id, &req).await?;
        match (&created, status) {
            (crate::store::Created::New(id), RunStatus::Skipped) => {
                tracing::warn!(workflow = %wf.id, run = %id, fire = %fire.at, reason = reason.as_deref().unwrap_or(""), "scheduled fire skipped");
            }
            (crate::store::Created::New(id), _) => {
                tracing::info!(workflow = %wf.id, run = %id, fire = %fire.at, status = status.as_str(), note = fire.note.as_deref().unwrap_or(""), "scheduled fire");
            }
            (crate::store::Created::Existing(_), _) => {}
        }
    }
    store
        .advance_trigger_cursor(&wf.id, &trigger.key, last)
        .await?;
    Ok(())
}
