//! Cron triggers: each fire becomes a run keyed by (workflow, fire time), so that a restart or a
//! second daemon on the same database can never fire it twice.
//!
//! This is the minimal scheduler: fires from the moment the daemon starts. Catch-up of fires
//! missed while the daemon was down, business calendars and DST policies come with the
//! scheduling issue.

use std::collections::HashMap;

use chrono::{DateTime, Utc};
use tokio_util::sync::CancellationToken;

use crate::clock::SharedClock;
use crate::engine::{Engine, RunRequest};
use crate::schedule::{next_fire, parse_cron};

/// Fires cron triggers until shutdown.
pub async fn run(
    engine: &Engine,
    clock: &SharedClock,
    default_tz: chrono_tz::Tz,
    shutdown: &CancellationToken,
) {
    // Per (workflow, trigger index, expression): the last instant already considered.
    let mut cursor: HashMap<(String, usize, String), DateTime<Utc>> = HashMap::new();
    loop {
        let now = clock.now();
        let catalog = engine.registry().catalog();
        let mut next_wake = now + chrono::Duration::seconds(30);
        for wf in catalog.workflows.values() {
            for (i, trigger) in wf.triggers.iter().enumerate() {
                let Some(expr) = &trigger.cron else { continue };
                let Ok(schedule) = parse_cron(expr) else {
                    continue;
                };
                let tz = trigger
                    .timezone
                    .as_deref()
                    .and_then(|t| t.parse().ok())
                    .unwrap_or(default_tz);
                let key = (wf.id.clone(), i, format!("{expr}@{tz}"));
                let from = *cursor.entry(key.clone()).or_insert(now);
                let mut after = from;
                while let Some(fire) = next_fire(&schedule, tz, after).filter(|f| *f <= now) {
                    let dedup = format!("cron:{i}:{}", fire.to_rfc3339());
                    let inputs = serde_json::Value::Object(trigger.inputs.clone());
                    let req = RunRequest {
                        inputs: &inputs,
                        trigger_kind: "schedule",
                        dedup_key: Some(&dedup),
                        scheduled_at: Some(fire),
                    };
                    match engine.trigger(&wf.id, &req).await {
                        Ok(created) => {
                            tracing::info!(workflow = %wf.id, run = %created.id(), fire = %fire, "scheduled fire")
                        }
                        Err(err) => {
                            tracing::error!(workflow = %wf.id, fire = %fire, error = %err, "cannot start scheduled run")
                        }
                    }
                    after = fire;
                }
                cursor.insert(key, now);
                if let Some(next) = next_fire(&schedule, tz, now) {
                    next_wake = next_wake.min(next);
                }
            }
        }
        tokio::select! {
            () = clock.sleep_until(next_wake.min(now + chrono::Duration::seconds(2))) => {}
            () = shutdown.cancelled() => return,
        }
    }
}
