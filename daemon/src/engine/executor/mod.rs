//! Executes one leased run from its last committed step.
//!
//! The rule everywhere in this file: a transition is committed before the engine acts on it.
//! An attempt is recorded as `running` before the action runs; its result is committed before
//! anything that depends on it (the next step, the log line, a notification) happens. After a
//! crash the run is re-read from the database and continues where the commits say it was.

use std::collections::HashMap;
use std::sync::Arc;

use chrono::{DateTime, Utc};
use serde_json::{Value as Json, json};

mod attempt;
mod foreach;

use super::EngineCore;

use crate::store::{
    Fence, NewEvent, RunRow, RunStatus, StepRow, StepStatus, StepWrite, StoreError,
};
use crate::template;
use crate::workflow::{SharedWorkflow, Step};

/// How many times an attempt interrupted by a daemon crash is started again before the step is
/// failed (so that a step that kills its daemon cannot loop forever).
const MAX_INTERRUPTED: i64 = 5;

/// What became of a step (or foreach item) in this pass.
#[derive(Debug)]
enum StepResult {
    /// Finished; its output (null when skipped) and final status.
    Done(Json, StepStatus),
    /// Nothing more can happen before this instant.
    Park(DateTime<Utc>),
    /// Failed for good.
    Failed(String),
    /// The run was cancelled.
    Cancelled,
}

/// Executes a run the caller has just leased.
pub(super) async fn execute(core: Arc<EngineCore>, run: RunRow, fresh: bool) {
    let run_id = run.id.clone();
    let fence = Fence {
        run_id: run_id.clone(),
        owner: core.config.instance_id.clone(),
        lease: core.config.lease,
    };
    match execute_run(&core, &fence, run, fresh).await {
        Ok(()) => {}
        Err(StoreError::LeaseLost(_)) => {
            tracing::warn!(run = %run_id, "lease lost; another daemon continues this run");
        }
        Err(err) => {
            // Nothing committed is lost. Hand the run back (due shortly) so that it continues
            // once the database answers again; if even that fails, the lease simply expires.
            tracing::error!(run = %run_id, error = %err, "run execution interrupted by a database error; retrying shortly");
            let retry_at = core.clock.now() + chrono::Duration::seconds(1);
            let _ = core.store.park_run(&fence, retry_at).await;
        }
    }
}

async fn execute_run(
    core: &Arc<EngineCore>,
    fence: &Fence,
    run: RunRow,
    fresh: bool,
) -> Result<(), StoreError> {
    let store = &core.store;
    if run.status.is_terminal() || run.lease_owner.as_deref() != Some(fence.owner.as_str()) {
        return Ok(());
    }
    if run.cancel_requested {
        return store
            .finish_run(
                fence,
                core.clock.now(),
                RunStatus::Cancelled,
                Some("cancelled"),
            )
            .await;
    }
    let wf = match core
        .registry
        .get(store, &run.workflow_id, &run.version_hash)
        .await
    {
        Ok(wf) => wf,
        Err(err) => {
            tracing::error!(run = %run.id, workflow = %run.workflow_id, error = %err, "cannot execute run");
            return store
                .finish_run(
                    fence,
                    core.clock.now(),
                    RunStatus::Failed,
                    Some(&err.to_string()),
                )
                .await;
        }
    };
    // A run that never executed has no step rows: no need to ask.
    let rows: HashMap<String, StepRow> = if !fresh {
        store
            .get_steps(&run.id)
            .await?
            .into_iter()
            .map(|r| (r.step_key.clone(), r))
            .collect()
    } else {
        HashMap::new()
    };
    if rows.is_empty()
        && run.trigger_kind == "schedule"
        && let Some(at) = run.scheduled_at
    {
        let lag = (core.clock.now() - at).num_milliseconds() as f64 / 1000.0;
        core.config.services.metrics.observe(
            "pmoflow_scheduler_lag_seconds",
            &[("workflow", run.workflow_id.as_str())],
            lag,
        );
    }
    let exec = RunExec {
        core,
        fence,
        run: &run,
        wf: &wf,
        rows: &rows,
        pending: std::sync::Mutex::new(Vec::new()),
    };
    let mut outputs = serde_json::Map::new();
    for step in &wf.steps {
        // The span covers the step's whole execution, across its awaits.
        let span = tracing::info_span!("step", run = %run.id, workflow = %wf.id, step = %step.id);
        match tracing::Instrument::instrument(exec.run_step(step, &outputs), span).await? {
            StepResult::Done(output, status) => {
                outputs.insert(
                    step.id.clone(),
                    json!({ "output": output, "status": status.as_str() }),
                );
            }
            StepResult::Park(at) => {
                exec.flush().await?;
                store.park_run(fence, at).await?;
                core.wake_poller();
                return Ok(());
            }
            StepResult::Failed(message) => {
                let error = format!("step `{}` failed: {message}", step.id);
                tracing::warn!(run = %run.id, workflow = %wf.id, step = %step.id, "{error}");
                exec.flush().await?;
                return store
                    .finish_run(fence, core.clock.now(), RunStatus::Failed, Some(&error))
                    .await;
            }
            StepResult::Cancelled => {
                tracing::info!(run = %run.id, workflow = %wf.id, "run cancelled");
                exec.flush().await?;
                return store
                    .finish_run(
                        fence,
                        core.clock.now(),
                        RunStatus::Cancelled,
                        Some("cancelled"),
                    )
                    .await;
            }
        }
        if core.shutdown.is_cancelled() {
            // Hand the run back, due at once, so the next daemon (or this one after restart)
            // continues immediately with the next step.
            exec.flush().await?;
            store.park_run(fence, core.clock.now()).await?;
            return Ok(());
        }
    }
    if exec.flush().await? {
        tracing::info!(run = %run.id, workflow = %wf.id, "run cancelled");
        return store
            .finish_run(
                fence,
                core.clock.now(),
                RunStatus::Cancelled,
                Some("cancelled"),
            )
            .await;
    }
    tracing::info!(run = %run.id, workflow = %wf.id, "run succeeded");
    store
        .finish_run(fence, core.clock.now(), RunStatus::Succeeded, None)
        .await
}

struct RunExec<'a> {
    core: &'a Arc<EngineCore>,
    fence: &'a Fence,
    run: &'a RunRow,
    wf: &'a SharedWorkflow,
    rows: &'a HashMap<String, StepRow>,
    /// Successes of pure steps queued for the group commit but not yet awaited (see
    /// [`RunExec::flush`]).
    pending: std::sync::Mutex<Vec<Deferred>>,
}

/// A pure step's success, queued for commit; its after-commit effect (the `log` line) waits for
/// the commit.
struct Deferred {
    write: crate::store::PendingWrite,
    step_id: String,
    key: String,
    item: Option<(i64, Json)>,
    attempt: i64,
    output: Json,
}

/// A step transition to commit.
struct Change<'a> {
    status: StepStatus,
    attempt: i64,
    started_at: Option<DateTime<Utc>>,
    wake_at: Option<DateTime<Utc>>,
    output: Option<&'a Json>,
    state: Option<&'a Json>,
    error: Option<&'a str>,
    event: Option<NewEvent<'a>>,
    messages: &'a [crate::store::NewMessage],
    requests: &'a [crate::store::NewRequest],
}

impl Default for Change<'_> {
    fn default() -> Self {
        Self {
            status: StepStatus::Running,
            attempt: 1,
            started_at: None,
            wake_at: None,
            output: None,
            state: None,
            error: None,
            event: None,
            messages: &[],
            requests: &[],
        }
    }
}

/// One unit of execution: a plain step, or one item of a foreach step.
struct StepInstance<'a> {
    step: &'a Step,
    key: String,
    item: Option<(i64, Json)>,
}

impl RunExec<'_> {
    fn now(&self) -> DateTime<Utc> {
        self.core.clock.now()
    }

    /// The template context for a step.
    fn context(
        &self,
        outputs: &serde_json::Map<String, Json>,
        item: Option<&(i64, Json)>,
    ) -> minijinja::Value {
        let tz = self.core.config.timezone;
        let mut ctx = json!({
            "inputs": self.run.inputs,
            "steps": outputs,
            "run": {
                "id": self.run.id,
                "workflow": self.run.workflow_id,
                "trigger": self.run.trigger_kind,
                "started_at": self.run.started_at.map(|t| t.with_timezone(&tz).to_rfc3339()),
                "scheduled_at": self.run.scheduled_at.map(|t| t.with_timezone(&tz).to_rfc3339()),
            },
            "now": self.now().with_timezone(&tz).to_rfc3339(),
            "data": *self.core.registry.data(),
        });
        if let (Some((index, item)), Some(map)) = (item, ctx.as_object_mut()) {
            map.insert("item".into(), item.clone());
            map.insert("index".into(), json!(index));
        }
        template::with_calendar(template::value(&ctx), self.core.registry.calendar())
    }

    async fn write(&self, unit: &StepInstance<'_>, change: Change<'_>) -> Result<bool, StoreError> {
        // Everything queued before this write commits (and takes effect) first.
        let cancelled_before = self.flush().await?;
        let Change {
            status,
            attempt,
            started_at,
            wake_at,
            output,
            state,
            error,
            event,
            messages,
            requests,
        } = change;
        let now = self.now();
        let finished = matches!(
            status,
            StepStatus::Succeeded | StepStatus::Failed | StepStatus::Skipped
        );
        self.core
            .store
            .write_step(
                self.fence,
                now,
                &StepWrite {
                    step_key: &unit.key,
                    step_id: &unit.step.id,
                    item_index: unit.item.as_ref().map(|(i, _)| *i),
                    status,
                    attempt,
                    started_at: started_at.or(Some(now)),
                    finished_at: finished.then_some(now),
                    wake_at,
                    output,
                    state,
                    error,
                    messages,
                    requests,
                },
                event.as_ref(),
            )
            .await
            .map(|cancel| cancel || cancelled_before)
    }

    /// Waits for every queued pure-step success to commit, then lets each take effect (the
    /// `log` line) in order. Returns whether cancellation of the run was requested meanwhile.
    /// Called before any other write, before the run parks or ends, so that nothing acts on a
    /// transition before it is committed.
    async fn flush(&self) -> Result<bool, StoreError> {
        let pending = std::mem::take(
            &mut *self
                .pending
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner),
        );
        let mut cancel = false;
        for d in pending {
            cancel |= d.write.wait().await?;
            let Some(step) = self.wf.steps.iter().find(|s| s.id == d.step_id) else {
                continue;
            };
            let unit = StepInstance {
                step,
                key: d.key,
                item: d.item,
            };
            let data = Json::Null;
            step.action.after_commit(
                &self.action_cx(&unit, d.attempt, &data, None, None),
                &d.output,
            );
        }
        Ok(cancel)
    }

    async fn run_step(
        &self,
        step: &Step,
        outputs: &serde_json::Map<String, Json>,
    ) -> Result<StepResult, StoreError> {
        let unit = StepInstance {
            step,
            key: step.id.clone(),
            item: None,
        };
        let row = self.rows.get(&step.id);
        if let Some(row) = row {
            match row.status {
                StepStatus::Succeeded | StepStatus::Skipped => {
                    return Ok(StepResult::Done(
                        row.output.clone().unwrap_or(Json::Null),
                        row.status,
                    ));
                }
                StepStatus::Failed => {
                    return Ok(StepResult::Failed(row.error.clone().unwrap_or_default()));
                }
                _ => {}
            }
        } else if let Some(cond) = step.condition.as_ref().filter(|c| !per_item(step, c)) {
            let ctx = self.context(outputs, None);
            match template::eval(cond, &ctx) {
                Ok(v) if !v.is_true() => {
                    let cancel = self
                        .write(
                            &unit,
                            Change {
                                status: StepStatus::Skipped,
                                attempt: 0,
                                ..Change::default()
                            },
                        )
                        .await?;
                    if cancel {
                        return Ok(StepResult::Cancelled);
                    }
                    return Ok(StepResult::Done(Json::Null, StepStatus::Skipped));
                }
                Ok(_) => {}
                Err(err) => {
                    let message = format!("`if` expression (line {}): {}", step.line, err.message);
                    return self.fail_now(&unit, 1, &message).await;
                }
            }
        }
        if step.foreach.is_some() {
            return self.run_foreach(step, row, outputs).await;
        }
        self.run_unit(&unit, row, outputs).await
    }

    async fn fail_now(
        &self,
        unit: &StepInstance<'_>,
        attempt: i64,
        message: &str,
    ) -> Result<StepResult, StoreError> {
        self.write(
            unit,
            Change {
                status: StepStatus::Failed,
                attempt,
                error: Some(message),
                event: Some(NewEvent {
                    step_key: Some(&unit.key),
                    kind: "step_failed",
                    message,
                }),
                ..Change::default()
            },
        )
        .await?;
        self.observe(unit, None, "failed");
        Ok(StepResult::Failed(message.to_string()))
    }

    fn observe(&self, unit: &StepInstance<'_>, started_at: Option<DateTime<Utc>>, outcome: &str) {
        let started = started_at
            .or_else(|| self.rows.get(&unit.key).and_then(|r| r.started_at))
            .unwrap_or_else(|| self.now());
        let secs = (self.now() - started).num_milliseconds() as f64 / 1000.0;
        self.core.config.services.metrics.observe(
            "pmoflow_step_duration_seconds",
            &[
                ("workflow", self.wf.id.as_str()),
                ("action", unit.step.action.name()),
                ("outcome", outcome),
            ],
            secs,
        );
    }

    /// Continues one unit from its committed row.
    async fn run_unit(
        &self,
        unit: &StepInstance<'_>,
        row: Option<&StepRow>,
        outputs: &serde_json::Map<String, Json>,
    ) -> Result<StepResult, StoreError> {
        let now = self.now();
        let started_at = row.and_then(|r| r.started_at);
        let attempt = match row {
            None => 1,
            Some(row) => match row.status {
                StepStatus::Succeeded | StepStatus::Skipped => {
                    return Ok(StepResult::Done(
                        row.output.clone().unwrap_or(Json::Null),
                        row.status,
                    ));
                }
                StepStatus::Failed => {
                    return Ok(StepResult::Failed(row.error.clone().unwrap_or_default()));
                }
                StepStatus::Waiting if unit.step.action.resumes() => {
                    // Called again at its time, or earlier when something it waits for arrived
                    // (the run was nudged); the action decides whether there is anything to do.
                    return self
                        .attempt(unit, row.attempt, started_at, outputs, Some(row))
                        .await;
                }
                StepStatus::Waiting => {
                    let until = row.wake_at.unwrap_or(now);
                    if until > now {
                        return Ok(StepResult::Park(until));
                    }
                    return self
                        .succeed(
                            unit,
                            row.attempt,
                            started_at,
                            json!({ "until": until.to_rfc3339() }),
                            &[],
                        )
                        .await;
                }
                StepStatus::RetryWait => {
                    if let Some(at) = row.wake_at.filter(|at| *at > now) {
                        return Ok(StepResult::Park(at));
                    }
                    row.attempt + 1
                }
                StepStatus::Running => {
                    // The daemon died (or lost its lease) during this attempt.
                    let interrupted = row
                        .state
                        .as_ref()
                        .and_then(|s| s.get("interrupted"))
                        .and_then(Json::as_i64)
                        .unwrap_or(0)
                        + 1;
                    let message = format!(
                        "attempt {} was interrupted (daemon stopped); starting it again",
                        row.attempt
                    );
                    tracing::warn!(run = %self.run.id, step = %unit.key, "{message}");
                    if interrupted > MAX_INTERRUPTED {
                        return self
                            .fail_now(unit, row.attempt, "interrupted too many times")
                            .await;
                    }
                    let state = json!({ "interrupted": interrupted });
                    self.write(
                        unit,
                        Change {
                            status: StepStatus::Running,
                            attempt: row.attempt + 1,
                            started_at,
                            state: Some(&state),
                            event: Some(NewEvent {
                                step_key: Some(&unit.key),
                                kind: "attempt_interrupted",
                                message: &message,
                            }),
                            ..Change::default()
                        },
                    )
                    .await?;
                    return self
                        .attempt(unit, row.attempt + 1, started_at, outputs, Some(row))
                        .await;
                }
            },
        };
        self.attempt(unit, attempt, started_at, outputs, None).await
    }

    async fn succeed(
        &self,
        unit: &StepInstance<'_>,
        attempt: i64,
        started_at: Option<DateTime<Utc>>,
        output: Json,
        messages: &[crate::store::NewMessage],
    ) -> Result<StepResult, StoreError> {
        if unit.step.action.is_pure() && messages.is_empty() {
            // No effect outside the database: queue the commit and go on; it is awaited (and
            // the log line written) before anything acts on it.
            let now = self.now();
            let write = self
                .core
                .store
                .write_step_later(
                    self.fence,
                    now,
                    &StepWrite {
                        step_key: &unit.key,
                        step_id: &unit.step.id,
                        item_index: unit.item.as_ref().map(|(i, _)| *i),
                        status: StepStatus::Succeeded,
                        attempt,
                        started_at: started_at.or(Some(now)),
                        finished_at: Some(now),
                        wake_at: None,
                        output: Some(&output),
                        state: None,
                        error: None,
                        messages: &[],
                        requests: &[],
                    },
                )
                .await?;
            self.observe(unit, started_at, "succeeded");
            self.pending
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .push(Deferred {
                    write,
                    step_id: unit.step.id.clone(),
                    key: unit.key.clone(),
                    item: unit.item.clone(),
                    attempt,
                    output: output.clone(),
                });
            return Ok(StepResult::Done(output, StepStatus::Succeeded));
        }
        let cancel = self
            .write(
                unit,
                Change {
                    status: StepStatus::Succeeded,
                    attempt,
                    started_at,
                    output: Some(&output),
                    messages,
                    ..Change::default()
                },
            )
            .await?;
        self.observe(unit, started_at, "succeeded");
        // Effects that must not repeat happen only after the commit.
        let data = Json::Null;
        unit.step
            .action
            .after_commit(&self.action_cx(unit, attempt, &data, None, None), &output);
        if !messages.is_empty() {
            self.core.wake_outbox();
        }
        if cancel {
            return Ok(StepResult::Cancelled);
        }
        Ok(StepResult::Done(output, StepStatus::Succeeded))
    }
}

fn kind_of(v: &Json) -> &'static str {
    match v {
        Json::Null => "none",
        Json::Bool(_) => "a boolean",
        Json::Number(_) => "a number",
        Json::String(_) => "a string",
        Json::Array(_) => "a list",
        Json::Object(_) => "a map",
    }
}

/// Whether a foreach step's `if` reads `item` or `index`, and so is decided per item.
fn per_item(step: &Step, cond: &str) -> bool {
    step.foreach.is_some()
        && template::expression_names(cond).is_ok_and(|names| {
            names.iter().any(|n| {
                let root = n.split('.').next().unwrap_or(n);
                root == "item" || root == "index"
            })
        })
}
