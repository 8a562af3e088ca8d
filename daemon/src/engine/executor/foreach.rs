//! Foreach steps: one instance per item, run with bounded concurrency, each item committed on its
//! own, and the step decided from its items (all done, one failed, some parked).

use chrono::{DateTime, Utc};
use futures::StreamExt;
use serde_json::{Value as Json, json};

use super::{Change, RunExec, StepInstance, StepResult, kind_of, per_item};
use crate::store::{StepRow, StepStatus, StoreError};
use crate::template;
use crate::workflow::Step;

impl RunExec<'_> {
    pub(super) async fn run_foreach(
        &self,
        step: &Step,
        row: Option<&StepRow>,
        outputs: &serde_json::Map<String, Json>,
    ) -> Result<StepResult, StoreError> {
        let parent = StepInstance {
            step,
            key: step.id.clone(),
            item: None,
        };
        let items: Vec<Json> = match row
            .and_then(|r| r.state.as_ref())
            .and_then(|s| s.get("items"))
        {
            Some(Json::Array(items)) => items.clone(),
            _ => {
                let expr = step.foreach.as_deref().unwrap_or_default();
                let ctx = self.context(outputs, None);
                let value = match template::eval(expr, &ctx) {
                    Ok(v) => v,
                    Err(err) => {
                        let message =
                            format!("`foreach` expression (line {}): {}", step.line, err.message);
                        return self.fail_now(&parent, 1, &message).await;
                    }
                };
                let items = match serde_json::to_value(&value) {
                    Ok(Json::Array(items)) => items,
                    Ok(other) => {
                        let message = format!(
                            "`foreach` expression (line {}) must give a list, got {}",
                            step.line,
                            kind_of(&other)
                        );
                        return self.fail_now(&parent, 1, &message).await;
                    }
                    Err(err) => {
                        let message = format!("`foreach` value cannot be stored: {err}");
                        return self.fail_now(&parent, 1, &message).await;
                    }
                };
                // The list is committed before any item runs, so a restart fans out over exactly
                // the same items even if the data changed meanwhile.
                let state = json!({ "items": items });
                if self
                    .write(
                        &parent,
                        Change {
                            status: StepStatus::Running,
                            attempt: 1,
                            state: Some(&state),
                            ..Change::default()
                        },
                    )
                    .await?
                {
                    return Ok(StepResult::Cancelled);
                }
                items
            }
        };
        let started_at = row.and_then(|r| r.started_at);
        let units: Vec<StepInstance<'_>> = items
            .into_iter()
            .enumerate()
            .map(|(i, item)| StepInstance {
                step,
                key: format!("{}[{i}]", step.id),
                item: Some((i64::try_from(i).unwrap_or(i64::MAX), item)),
            })
            .collect();
        let futures: Vec<_> = units
            .iter()
            .map(|unit| self.run_item(unit, outputs))
            .collect();
        let results: Vec<Result<StepResult, StoreError>> = futures::stream::iter(futures)
            .buffered(step.parallelism)
            .collect()
            .await;
        let mut out = Vec::with_capacity(results.len());
        let mut park: Option<DateTime<Utc>> = None;
        let mut failures = Vec::new();
        let mut cancelled = false;
        for (i, result) in results.into_iter().enumerate() {
            match result? {
                StepResult::Done(output, _) => out.push(output),
                StepResult::Park(at) => park = Some(park.map_or(at, |p| p.min(at))),
                StepResult::Failed(message) => failures.push(format!("item {i}: {message}")),
                StepResult::Cancelled => cancelled = true,
            }
        }
        if cancelled {
            return Ok(StepResult::Cancelled);
        }
        if !failures.is_empty() {
            let message = failures.join("; ");
            return self.fail_now(&parent, 1, &message).await;
        }
        if let Some(at) = park {
            return Ok(StepResult::Park(at));
        }
        let output = Json::Array(out);
        if self
            .write(
                &parent,
                Change {
                    status: StepStatus::Succeeded,
                    attempt: 1,
                    started_at,
                    output: Some(&output),
                    ..Change::default()
                },
            )
            .await?
        {
            return Ok(StepResult::Cancelled);
        }
        Ok(StepResult::Done(output, StepStatus::Succeeded))
    }

    async fn run_item(
        &self,
        unit: &StepInstance<'_>,
        outputs: &serde_json::Map<String, Json>,
    ) -> Result<StepResult, StoreError> {
        let row = self.rows.get(&unit.key);
        if row.is_none()
            && let Some(cond) = unit
                .step
                .condition
                .as_ref()
                .filter(|c| per_item(unit.step, c))
        {
            // An `if` that reads `item` is decided for each item: false skips that item only.
            let ctx = self.context(outputs, unit.item.as_ref());
            match template::eval(cond, &ctx) {
                Ok(v) if !v.is_true() => {
                    let cancel = self
                        .write(
                            unit,
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
                    let message =
                        format!("`if` expression (line {}): {}", unit.step.line, err.message);
                    return self.fail_now(unit, 1, &message).await;
                }
            }
        }
        self.run_unit(unit, row, outputs).await
    }
}
