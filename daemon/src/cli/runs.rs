//! Runs from the command line: `trigger`, `runs`, `show`, `cancel`, `resolve`.

#[allow(unused_imports)]
use super::*;

/// `pmoflow trigger WORKFLOW [--input JSON]`: creates a run and returns its id.
pub async fn trigger(
    config: &Config,
    workflow: &str,
    input: Option<&str>,
) -> Result<String, CliError> {
    let inputs: Json = match input {
        None => Json::Null,
        Some(text) => serde_json::from_str(text)
            .map_err(|e| CliError::caused("--input is not valid JSON", e))?,
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
    .map_err(CliError::of)?;
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
        .map_err(CliError::of)?;
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

/// `pmoflow resolve RUN_ID`: ends a run's escalation; the run sends the 最終報.
pub async fn resolve(
    config: &Config,
    run_id: &str,
    by: Option<&str>,
    note: &str,
) -> Result<String, CliError> {
    let store = Store::open(&config.database_url, config.durability).await?;
    let by = by.map_or_else(
        || {
            format!(
                "cli:{}",
                std::env::var("USER").unwrap_or_else(|_| "operator".into())
            )
        },
        str::to_string,
    );
    let done = store
        .resolve_incident(run_id, SystemClock.now(), "cli", &by, note)
        .await?;
    store.close().await;
    if done {
        Ok(format!(
            "run {run_id}: incident resolved; the 最終報 goes out when the daemon picks it up"
        ))
    } else {
        Err(CliError::new(format!(
            "run {run_id} has no open escalation (unknown run, not an escalation, or already resolved)"
        )))
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
