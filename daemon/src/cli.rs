//! The commands behind the `pmoflow` binary other than `run`: they work on the files and the
//! database directly, so they also work while no daemon is running.

use std::io::Write;
use std::path::PathBuf;

use chrono::{DateTime, Utc};
use serde_json::{Value as Json, json};

use crate::clock::{Clock, SystemClock};
use crate::config::Config;
use crate::diag::Diagnostic;
use crate::engine::{RunRequest, create_run};
use crate::store::{RunFilter, RunRow, RunStatus, Store, StoreError};
use crate::workflow::Catalog;

/// Output format of commands that print data.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum Format {
    /// For people.
    #[default]
    Text,
    /// For programs.
    Json,
}

/// A command failure: message for stderr and exit code.
#[derive(Debug, thiserror::Error)]
#[error("{message}")]
pub struct CliError {
    /// What to print.
    pub message: String,
    /// Exit code.
    pub code: i32,
}

impl CliError {
    fn new(message: impl Into<String>) -> Self {
        Self {
            message: message.into(),
            code: 1,
        }
    }
}

impl From<StoreError> for CliError {
    fn from(e: StoreError) -> Self {
        Self::new(e.to_string())
    }
}

/// `pmoflow validate [PATH…]`: returns the exit code (0 valid, 1 invalid).
pub fn validate(paths: &[PathBuf], default_dir: &std::path::Path, format: Format) -> i32 {
    let paths: Vec<PathBuf> = if paths.is_empty() {
        vec![default_dir.to_path_buf()]
    } else {
        paths.to_vec()
    };
    let mut diags: Vec<Diagnostic> = Vec::new();
    let mut valid: Vec<(String, PathBuf)> = Vec::new();
    for path in &paths {
        if path.is_dir() {
            let catalog = Catalog::load(path);
            diags.extend(catalog.diagnostics);
            valid.extend(
                catalog
                    .workflows
                    .values()
                    .map(|w| (w.id.clone(), w.path.clone())),
            );
        } else {
            match Catalog::load_file(path) {
                Ok((wf, _)) => valid.push((wf.id, wf.path)),
                Err(d) => diags.extend(d),
            }
        }
    }
    let ok = diags.is_empty();
    let mut out = std::io::stdout().lock();
    match format {
        Format::Json => {
            let doc = json!({
                "valid": ok,
                "workflows": valid.iter().map(|(id, p)| json!({"id": id, "path": p})).collect::<Vec<_>>(),
                "diagnostics": diags,
            });
            let _ = writeln!(out, "{doc:#}");
        }
        Format::Text => {
            for d in &diags {
                let _ = writeln!(out, "{d}");
            }
            if ok {
                let _ = writeln!(out, "ok: {} workflow(s) valid", valid.len());
            } else {
                let _ = writeln!(
                    out,
                    "{} error(s); {} workflow(s) valid",
                    diags.len(),
                    valid.len()
                );
            }
        }
    }
    i32::from(!ok)
}

/// `pmoflow trigger WORKFLOW [--input JSON]`: creates a run and returns its id.
pub async fn trigger(
    config: &Config,
    workflow: &str,
    input: Option<&str>,
) -> Result<String, CliError> {
    let inputs: Json = match input {
        None => Json::Null,
        Some(text) => serde_json::from_str(text)
            .map_err(|e| CliError::new(format!("--input is not valid JSON: {e}")))?,
    };
    let catalog = Catalog::load(&config.workflows_dir);
    let Some(wf) = catalog.workflows.get(workflow) else {
        let broken: Vec<String> = catalog
            .diagnostics
            .iter()
            .map(ToString::to_string)
            .collect();
        let mut message = format!(
            "unknown workflow `{workflow}` in {}",
            config.workflows_dir.display()
        );
        if !broken.is_empty() {
            message.push_str(&format!("\ninvalid files:\n{}", broken.join("\n")));
        } else if !catalog.workflows.is_empty() {
            message.push_str(&format!(
                "\nknown workflows: {}",
                catalog
                    .workflows
                    .keys()
                    .cloned()
                    .collect::<Vec<_>>()
                    .join(", ")
            ));
        }
        return Err(CliError::new(message));
    };
    let source = catalog
        .sources
        .get(workflow)
        .map(|s| s.to_string())
        .unwrap_or_default();
    let store = Store::open(&config.database_url, config.durability).await?;
    let created = create_run(
        &store,
        wf,
        &source,
        &RunRequest::manual(&inputs),
        SystemClock.now(),
    )
    .await
    .map_err(|e| CliError::new(e.to_string()))?;
    store.close().await;
    Ok(created.id().to_string())
}

/// `pmoflow runs`.
pub async fn runs(
    config: &Config,
    workflow: Option<String>,
    status: Option<String>,
    limit: i64,
    format: Format,
) -> Result<(), CliError> {
    let status = status
        .map(|s| s.parse::<RunStatus>())
        .transpose()
        .map_err(CliError::new)?;
    let store = Store::open(&config.database_url, config.durability).await?;
    let rows = store
        .list_runs(&RunFilter {
            workflow_id: workflow,
            status,
            limit,
        })
        .await?;
    store.close().await;
    let mut out = std::io::stdout().lock();
    if format == Format::Json {
        let _ = writeln!(out, "{:#}", json!(rows));
        return Ok(());
    }
    let tz = config.timezone;
    let _ = writeln!(
        out,
        "{:<36}  {:<24}  {:<9}  {:<8}  {:<19}  DURATION",
        "RUN", "WORKFLOW", "STATUS", "TRIGGER", "CREATED"
    );
    for r in &rows {
        let _ = writeln!(
            out,
            "{:<36}  {:<24}  {:<9}  {:<8}  {:<19}  {}",
            r.id,
            r.workflow_id,
            r.status.as_str(),
            r.trigger_kind,
            local(r.created_at, tz),
            run_duration(r)
        );
    }
    Ok(())
}

/// `pmoflow cancel RUN_ID`.
pub async fn cancel(config: &Config, run_id: &str) -> Result<String, CliError> {
    use crate::store::CancelOutcome as C;
    let store = Store::open(&config.database_url, config.durability).await?;
    let outcome = store.cancel_run(run_id, SystemClock.now(), "cli").await?;
    store.close().await;
    match outcome {
        C::Cancelled => Ok(format!("run {run_id} cancelled")),
        C::Requested => Ok(format!(
            "run {run_id} is executing; it stops at the next step boundary"
        )),
        C::AlreadyFinished => Err(CliError::new(format!("run {run_id} has already finished"))),
        C::NotFound => Err(CliError::new(format!("no run {run_id}"))),
    }
}

/// `pmoflow show RUN_ID`.
pub async fn show(config: &Config, run_id: &str, format: Format) -> Result<(), CliError> {
    let store = Store::open(&config.database_url, config.durability).await?;
    let run = store
        .get_run(run_id)
        .await?
        .ok_or_else(|| CliError::new(format!("no run {run_id}")))?;
    let steps = store.get_steps(run_id).await?;
    let events = store.get_events(run_id).await?;
    store.close().await;
    let mut out = std::io::stdout().lock();
    if format == Format::Json {
        let _ = writeln!(
            out,
            "{:#}",
            json!({"run": run, "steps": steps, "events": events})
        );
        return Ok(());
    }
    let tz = config.timezone;
    let _ = writeln!(out, "run       {}", run.id);
    let _ = writeln!(
        out,
        "workflow  {} (version {})",
        run.workflow_id,
        &run.version_hash[..12.min(run.version_hash.len())]
    );
    let _ = writeln!(
        out,
        "status    {}{}",
        run.status.as_str(),
        run.error
            .as_deref()
            .map(|e| format!(": {e}"))
            .unwrap_or_default()
    );
    let _ = writeln!(out, "trigger   {}", run.trigger_kind);
    let _ = writeln!(out, "inputs    {}", run.inputs);
    let _ = writeln!(out, "created   {}", local(run.created_at, tz));
    if let Some(t) = run.started_at {
        let _ = writeln!(out, "started   {}", local(t, tz));
    }
    if let Some(t) = run.finished_at {
        let _ = writeln!(out, "finished  {}  ({})", local(t, tz), run_duration(&run));
    } else if let Some(t) = run.wake_at {
        let _ = writeln!(out, "next      {}", local(t, tz));
    }
    let _ = writeln!(out);
    let _ = writeln!(
        out,
        "{:<20}  {:<10}  {:>7}  {:<23}  {:<23}  ERROR",
        "STEP", "STATUS", "ATTEMPT", "STARTED", "FINISHED"
    );
    for s in &steps {
        let _ = writeln!(
            out,
            "{:<20}  {:<10}  {:>7}  {:<23}  {:<23}  {}",
            s.step_key,
            s.status.as_str(),
            s.attempt,
            s.started_at.map(|t| local_ms(t, tz)).unwrap_or_default(),
            s.finished_at
                .map(|t| local_ms(t, tz))
                .or_else(|| s.wake_at.map(|t| format!("(until {})", local(t, tz))))
                .unwrap_or_default(),
            s.error.as_deref().unwrap_or("")
        );
    }
    if !events.is_empty() {
        let _ = writeln!(out, "\nevents:");
        for e in &events {
            let _ = writeln!(
                out,
                "  {}  {:<18} {}{}",
                local_ms(e.at, tz),
                e.kind,
                e.step_key
                    .as_deref()
                    .map(|k| format!("[{k}] "))
                    .unwrap_or_default(),
                e.message
            );
        }
    }
    Ok(())
}

fn local(t: DateTime<Utc>, tz: chrono_tz::Tz) -> String {
    t.with_timezone(&tz).format("%Y-%m-%d %H:%M:%S").to_string()
}

fn local_ms(t: DateTime<Utc>, tz: chrono_tz::Tz) -> String {
    t.with_timezone(&tz)
        .format("%Y-%m-%d %H:%M:%S%.3f")
        .to_string()
}

fn run_duration(r: &RunRow) -> String {
    match (r.started_at, r.finished_at) {
        (Some(s), Some(f)) => {
            let ms = (f - s).num_milliseconds().max(0);
            humantime::format_duration(std::time::Duration::from_millis(
                u64::try_from(ms).unwrap_or(0),
            ))
            .to_string()
        }
        _ => String::new(),
    }
}
