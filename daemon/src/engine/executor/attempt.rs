//! One attempt of a step (or foreach item): recorded as `running` first, `with` rendered, the
//! action called under the step's timeout, and its outcome committed — done, suspended with
//! its state and messages, waiting until an instant, parked for a retry, or failed.

use chrono::{DateTime, Utc};
use serde_json::{Value as Json, json};

use super::{Change, RunExec, StepInstance, StepResult};
use crate::actions::{ActionContext, ErrorKind, Outcome, StepError};
use crate::store::{NewEvent, NewMessage, NewRequest, StepRow, StepStatus, StoreError};
use crate::template;

impl RunExec<'_> {
    pub(super) fn action_cx<'b>(
        &'b self,
        unit: &'b StepInstance<'_>,
        attempt: i64,
        data: &'b Json,
        template_ctx: Option<&'b minijinja::Value>,
        state: Option<&'b Json>,
    ) -> ActionContext<'b> {
        ActionContext {
            clock: &self.core.clock,
            run_id: &self.run.id,
            workflow_id: &self.wf.id,
            step_key: &unit.key,
            attempt: u32::try_from(attempt).unwrap_or(u32::MAX),
            services: &self.core.config.services,
            data,
            workflow_dir: self.wf.path.parent().unwrap_or(std::path::Path::new(".")),
            template_ctx,
            http: &self.core.http,
            plugin: unit.step.plugin.as_deref(),
            state,
            store: Some(&self.core.store),
            calendar: self.core.registry.calendar(),
        }
    }

    /// Runs attempt number `attempt`, recording it first. `prior` is the step's row when the
    /// attempt is already recorded: restarted after an interruption, or a suspended step being
    /// called again (its saved state is handed to the action).
    pub(super) async fn attempt(
        &self,
        unit: &StepInstance<'_>,
        attempt: i64,
        started_at: Option<DateTime<Utc>>,
        outputs: &serde_json::Map<String, Json>,
        prior: Option<&StepRow>,
    ) -> Result<StepResult, StoreError> {
        let step = unit.step;
        let resumed = prior.filter(|r| r.status == StepStatus::Waiting);
        if prior.is_none()
            && !step.action.is_pure()
            && self
                .write(
                    unit,
                    Change {
                        status: StepStatus::Running,
                        attempt,
                        started_at,
                        ..Change::default()
                    },
                )
                .await?
        {
            return Ok(StepResult::Cancelled);
        }
        let started_at = started_at.or(Some(self.now()));
        let with = match self.render_with(unit, outputs) {
            Ok(w) => w,
            Err(err) => return self.fail_now(unit, attempt, &err.message).await,
        };
        let saved_state = resumed.and_then(|r| r.state.as_ref());
        let result = self
            .call_action(unit, attempt, outputs, &with, saved_state)
            .await;
        let this = Attempt {
            unit,
            number: attempt,
            started_at,
        };
        // An output over `[engine] max_output_kib` is refused: the step fails, nothing huge is
        // written (a big write would hold the database from every other run and the heartbeat).
        let result = result.and_then(|outcome| match &outcome {
            Outcome::Done(output) | Outcome::Emit(output, _) => {
                within(output, self.core.config.max_output).map(|()| outcome)
            }
            _ => Ok(outcome),
        });
        match result {
            Ok(Outcome::Done(output)) => self.succeed(unit, attempt, started_at, output, &[]).await,
            Ok(Outcome::Emit(output, messages)) => {
                self.succeed(unit, attempt, started_at, output, &messages)
                    .await
            }
            Ok(Outcome::Suspend {
                until,
                state,
                messages,
                requests,
            }) => {
                self.suspend(&this, resumed, until, &state, &messages, &requests)
                    .await
            }
            Ok(Outcome::WaitUntil(until)) => self.wait_until(&this, until).await,
            Err(err) => self.failed(&this, &err).await,
        }
    }

    /// The step's `with`, rendered against the run so far (and the foreach item).
    fn render_with(
        &self,
        unit: &StepInstance<'_>,
        outputs: &serde_json::Map<String, Json>,
    ) -> Result<Json, StepError> {
        let step = unit.step;
        if !template::json_has_templates(&step.with) {
            return Ok(step.with.clone());
        }
        template::render_json_with(
            &step.with,
            &self.context(outputs, unit.item.as_ref()),
            step.action == crate::actions::ActionKind::Plugin,
        )
        .map_err(|err| {
            StepError::fatal(format!(
                "template in `with` (step at line {}): {}",
                step.line, err.message
            ))
        })
    }

    /// Calls the action, under the step's `timeout` when it has one.
    async fn call_action(
        &self,
        unit: &StepInstance<'_>,
        attempt: i64,
        outputs: &serde_json::Map<String, Json>,
        with: &Json,
        saved_state: Option<&Json>,
    ) -> Result<Outcome, StepError> {
        let step = unit.step;
        let data = self.core.registry.data();
        let template_ctx = step
            .action
            .needs_context()
            .then(|| self.context(outputs, unit.item.as_ref()));
        let cx = self.action_cx(unit, attempt, &data, template_ctx.as_ref(), saved_state);
        let run = step.action.run(&cx, with);
        match step.timeout {
            None => run.await,
            Some(limit) => {
                tokio::select! {
                    r = run => r,
                    () = self.core.clock.sleep(chrono::Duration::from_std(limit).unwrap_or(chrono::Duration::MAX)) => {
                        Err(StepError::retryable(format!("ran past its {} timeout", humantime::format_duration(limit))))
                    }
                }
            }
        }
    }

    /// The action suspended: its state, messages and requests are committed with the park
    /// (nothing is written when a resumed step decided nothing new).
    async fn suspend(
        &self,
        this: &Attempt<'_, '_>,
        resumed: Option<&StepRow>,
        until: DateTime<Utc>,
        state: &Json,
        messages: &[NewMessage],
        requests: &[NewRequest],
    ) -> Result<StepResult, StoreError> {
        let unchanged = resumed
            .is_some_and(|r| r.wake_at == Some(until) && r.state.as_ref() == Some(state))
            && messages.is_empty()
            && requests.is_empty();
        if !unchanged
            && self
                .write(
                    this.unit,
                    Change {
                        status: StepStatus::Waiting,
                        attempt: this.number,
                        started_at: this.started_at,
                        wake_at: Some(until),
                        state: Some(state),
                        messages,
                        requests,
                        ..Change::default()
                    },
                )
                .await?
        {
            return Ok(StepResult::Cancelled);
        }
        if !messages.is_empty() {
            self.core.wake_outbox();
        }
        Ok(StepResult::Park(until))
    }

    /// `wait`: done at once if the instant has passed, otherwise parked until it.
    async fn wait_until(
        &self,
        this: &Attempt<'_, '_>,
        until: DateTime<Utc>,
    ) -> Result<StepResult, StoreError> {
        if until <= self.now() {
            return self
                .succeed(
                    this.unit,
                    this.number,
                    this.started_at,
                    json!({ "until": until.to_rfc3339() }),
                    &[],
                )
                .await;
        }
        if self
            .write(
                this.unit,
                Change {
                    status: StepStatus::Waiting,
                    attempt: this.number,
                    started_at: this.started_at,
                    wake_at: Some(until),
                    ..Change::default()
                },
            )
            .await?
        {
            return Ok(StepResult::Cancelled);
        }
        Ok(StepResult::Park(until))
    }

    /// The action failed: parked for a retry (with backoff) while the error is retryable and
    /// attempts remain, failed otherwise.
    async fn failed(
        &self,
        this: &Attempt<'_, '_>,
        err: &StepError,
    ) -> Result<StepResult, StoreError> {
        let (unit, attempt) = (this.unit, this.number);
        let step = unit.step;
        let max = i64::from(step.retry.attempts);
        if err.kind != ErrorKind::Retryable || attempt >= max {
            let message = if attempt > 1 {
                format!("{} (after {attempt} attempts)", err.message)
            } else {
                err.message.clone()
            };
            return self.fail_now(unit, attempt, &message).await;
        }
        let next = u32::try_from(attempt + 1).unwrap_or(u32::MAX);
        let delay = step.retry.delay_before(next, fastrand::f64());
        let at = self.now() + chrono::Duration::from_std(delay).unwrap_or(chrono::Duration::MAX);
        let message = format!(
            "attempt {attempt}/{max} failed: {}; retrying in {}",
            err.message,
            humantime::format_duration(std::time::Duration::from_secs(delay.as_secs()))
        );
        tracing::warn!(run = %self.run.id, step = %unit.key, "{message}");
        if self
            .write(
                unit,
                Change {
                    status: StepStatus::RetryWait,
                    attempt,
                    started_at: this.started_at,
                    wake_at: Some(at),
                    error: Some(&err.message),
                    event: Some(NewEvent {
                        step_key: Some(&unit.key),
                        kind: "attempt_failed",
                        message: &message,
                    }),
                    ..Change::default()
                },
            )
            .await?
        {
            return Ok(StepResult::Cancelled);
        }
        Ok(StepResult::Park(at))
    }
}

/// The attempt being decided.
struct Attempt<'a, 'b> {
    unit: &'a StepInstance<'b>,
    number: i64,
    started_at: Option<DateTime<Utc>>,
}

/// Whether `output` serialises to at most `max` bytes (counted without keeping the bytes, and
/// stopping at the limit).
fn within(output: &Json, max: usize) -> Result<(), StepError> {
    struct Counter {
        n: usize,
        max: usize,
    }
    impl std::io::Write for Counter {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.n += buf.len();
            if self.n > self.max {
                return Err(std::io::Error::other("over the limit"));
            }
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    let mut counter = Counter { n: 0, max };
    match serde_json::to_writer(&mut counter, output) {
        Ok(()) => Ok(()),
        Err(_) => Err(StepError::fatal(format!(
            "the step's output exceeds the {} KiB limit ([engine] max_output_kib)",
            max >> 10
        ))),
    }
}
