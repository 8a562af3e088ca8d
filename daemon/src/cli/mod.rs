//! The commands behind the `pmoflow` binary other than `run`: they work on the files and the
//! database directly, so they also work while no daemon is running.

use std::io::Write;
use std::path::{Path, PathBuf};

use chrono::{DateTime, Utc};
use serde_json::{Value as Json, json};

use crate::clock::{Clock, SystemClock};
use crate::config::Config;
use crate::diag::Diagnostic;
use crate::engine::{RunRequest, create_run};
use crate::store::{RunFilter, RunRow, RunStatus, Store, StoreError};
use crate::workflow::Catalog;

mod plugin;
pub use plugin::{plugin_inspect, plugin_new, plugin_run};

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
    pub(crate) fn new(message: impl Into<String>) -> Self {
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
pub fn validate(paths: &[PathBuf], config: &Config, format: Format) -> i32 {
    let default_dir = &config.workflows_dir;
    let plugins_dir = &config.plugins_dir;
    let paths: Vec<PathBuf> = if paths.is_empty() {
        vec![default_dir.to_path_buf()]
    } else {
        paths.to_vec()
    };
    let mut diags: Vec<Diagnostic> = Vec::new();
    let mut valid: Vec<(String, PathBuf)> = Vec::new();
    let mut workflows: Vec<std::sync::Arc<crate::workflow::Workflow>> = Vec::new();
    for path in &paths {
        if path.is_dir() {
            let catalog = Catalog::load(path);
            diags.extend(catalog.diagnostics);
            workflows.extend(catalog.workflows.values().cloned());
        } else {
            match Catalog::load_file(path) {
                Ok((wf, _)) => workflows.push(std::sync::Arc::new(wf)),
                Err(d) => diags.extend(d),
            }
        }
    }
    // `plugin:NAME` steps name an installed plugin.
    let installed = crate::plugins::installed(plugins_dir);
    for wf in &workflows {
        let before = diags.len();
        for step in &wf.steps {
            if let Some(name) = step
                .plugin
                .as_deref()
                .filter(|n| !installed.iter().any(|i| i == n))
            {
                diags.push(Diagnostic {
                    path: wf.path.clone(),
                    line: step.line,
                    col: 1,
                    message: format!(
                        "step `{}` uses plugin `{name}`, which is not installed",
                        step.id
                    ),
                    hint: Some(format!(
                        "available: {} (shipped with pmoflow, or installed in {})",
                        installed.join(", "),
                        plugins_dir.display()
                    )),
                });
            }
        }
        if diags.len() == before {
            valid.push((wf.id.clone(), wf.path.clone()));
        }
    }
    // `with` tables fit the input schema of their plugin.
    let used: std::collections::BTreeSet<&str> = workflows
        .iter()
        .flat_map(|wf| wf.steps.iter().filter_map(|s| s.plugin.as_deref()))
        .filter(|n| installed.iter().any(|i| i == n))
        .collect();
    if !used.is_empty() {
        let problems = check_plugin_inputs(config, &workflows, &used);
        let bad: std::collections::BTreeSet<PathBuf> =
            problems.iter().map(|d| d.path.clone()).collect();
        valid.retain(|(_, p)| !bad.contains(p));
        diags.extend(problems);
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
        .map_err(|e| CliError::new(e.to_string()))?;
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

/// `pmoflow simulate WORKFLOW --from --until [--answers FILE]`.
pub async fn simulate(
    config: &Config,
    workflow: &str,
    from: &str,
    until: &str,
    answers: Option<&Path>,
    format: Format,
    bodies: bool,
) -> Result<(), CliError> {
    use crate::simulate as sim;
    let tz = config.engine.timezone;
    let from =
        sim::parse_time(from, tz, false).map_err(|e| CliError::new(format!("--from: {e}")))?;
    let until =
        sim::parse_time(until, tz, true).map_err(|e| CliError::new(format!("--until: {e}")))?;
    if until <= from {
        return Err(CliError::new("--until must be after --from"));
    }
    let scenario = match answers {
        Some(p) => sim::load_scenario(p, tz).map_err(|e| CliError::new(e.to_string()))?,
        None => sim::Scenario::default(),
    };
    let timeline = sim::simulate(config, workflow, from, until, &scenario)
        .await
        .map_err(|e| CliError::new(e.to_string()))?;
    match format {
        Format::Text => print!("{}", sim::render_text(&timeline, tz, bodies)),
        Format::Json => println!(
            "{}",
            serde_json::to_string_pretty(&timeline).unwrap_or_default()
        ),
    }
    Ok(())
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

/// `pmoflow schedule [WORKFLOW|FILE]`: the next fires, one RFC 3339 timestamp per line.
pub fn schedule(
    config: &Config,
    target: Option<&str>,
    from: Option<&str>,
    count: usize,
    explain: bool,
) -> Result<(), CliError> {
    use crate::schedule::TriggerSchedule;
    let from = match from {
        None => SystemClock.now(),
        Some(text) => DateTime::parse_from_rfc3339(text)
            .map(|t| t.with_timezone(&Utc))
            .map_err(|e| {
                CliError::new(format!("--from `{text}` is not an RFC 3339 instant: {e}"))
            })?,
    };
    let (workflows, calendar) = match target {
        Some(t) if std::path::Path::new(t).is_file() => {
            let path = std::path::Path::new(t);
            let (wf, _) = Catalog::load_file(path).map_err(|d| {
                CliError::new(
                    d.iter()
                        .map(ToString::to_string)
                        .collect::<Vec<_>>()
                        .join("\n"),
                )
            })?;
            let dir = path.parent().unwrap_or(std::path::Path::new("."));
            let calendar =
                crate::calendar::Calendar::load(&dir.join(crate::workflow::catalog::CALENDAR_DIR))
                    .map_err(|d| {
                        CliError::new(
                            d.iter()
                                .map(ToString::to_string)
                                .collect::<Vec<_>>()
                                .join("\n"),
                        )
                    })?;
            (vec![std::sync::Arc::new(wf)], std::sync::Arc::new(calendar))
        }
        Some(id) => {
            let catalog = Catalog::load(&config.workflows_dir);
            let wf = catalog.workflows.get(id).cloned().ok_or_else(|| {
                CliError::new(format!(
                    "no workflow or file `{id}` (workflows: {})",
                    catalog
                        .workflows
                        .keys()
                        .cloned()
                        .collect::<Vec<_>>()
                        .join(", ")
                ))
            })?;
            (vec![wf], catalog.calendar.clone())
        }
        None => {
            let catalog = Catalog::load(&config.workflows_dir);
            (
                catalog.workflows.values().cloned().collect(),
                catalog.calendar.clone(),
            )
        }
    };
    let several = workflows.len() > 1 || target.is_none();
    let mut lines: Vec<(DateTime<Utc>, String)> = Vec::new();
    for wf in &workflows {
        let mut fires = Vec::new();
        for trigger in &wf.triggers {
            let s = TriggerSchedule::new(trigger, config.timezone, calendar.clone())
                .map_err(|e| CliError::new(format!("{}: {e}", wf.id)))?;
            for fire in s.next(from, count) {
                let mut line = fire.at.with_timezone(&s.timezone()).to_rfc3339();
                if several {
                    line = format!("{}\t{line}", wf.id);
                }
                if explain && let Some(note) = &fire.note {
                    line.push_str(&format!("  # {note}"));
                }
                fires.push((fire.at, line));
            }
        }
        fires.sort();
        fires.dedup_by(|a, b| a.0 == b.0);
        fires.truncate(count);
        lines.extend(fires);
    }
    lines.sort_by_key(|a| a.0);
    let mut out = std::io::stdout().lock();
    for (_, line) in lines.iter().take(if several { usize::MAX } else { count }) {
        let _ = writeln!(out, "{line}");
    }
    Ok(())
}

/// `pmoflow calendar [--year YYYY]`: closed days with their names.
pub fn calendar_list(config: &Config, year: Option<i32>) -> Result<(), CliError> {
    use chrono::Datelike;
    let catalog = Catalog::load(&config.workflows_dir);
    let year = year.unwrap_or_else(|| SystemClock.now().with_timezone(&config.timezone).year());
    let cal = &catalog.calendar;
    let source = if cal.imported_years().contains(&year) {
        "imported from the Cabinet Office CSV"
    } else {
        "computed by the national holiday law"
    };
    let mut out = std::io::stdout().lock();
    let _ = writeln!(
        out,
        "# closed days of {year} besides Saturdays and Sundays (national holidays {source})"
    );
    for (d, name) in cal.closed_days(year) {
        let _ = writeln!(out, "{}  {}", crate::calendar::format::md_ja_iso(d), name);
    }
    Ok(())
}

/// `pmoflow calendar import FILE`: stores the Cabinet Office CSV next to the workflows.
pub fn calendar_import(config: &Config, file: &std::path::Path) -> Result<String, CliError> {
    let bytes = std::fs::read(file)
        .map_err(|e| CliError::new(format!("cannot read {}: {e}", file.display())))?;
    let years = crate::calendar::csv::parse(&bytes).map_err(|e| {
        CliError::new(format!(
            "{}:{}: error: {}",
            file.display(),
            e.line,
            e.message
        ))
    })?;
    let dir = config
        .workflows_dir
        .join(crate::workflow::catalog::CALENDAR_DIR);
    std::fs::create_dir_all(&dir)
        .map_err(|e| CliError::new(format!("cannot create {}: {e}", dir.display())))?;
    let target = dir.join(crate::calendar::IMPORTED_FILE);
    let name = file
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    // Merge with earlier imports: years in this file replace, others stay.
    let mut merged = crate::calendar::Calendar::load(&dir)
        .map(|c| {
            c.imported_years()
                .into_iter()
                .map(|y| (y, c.holidays(y).into_owned()))
                .collect::<crate::calendar::csv::Years>()
        })
        .unwrap_or_default();
    let mut report = Vec::new();
    for (y, days) in &years {
        let computed = crate::calendar::holidays::holidays(*y);
        let differ: Vec<String> = days
            .iter()
            .filter(|(d, n)| computed.get(*d) != Some(*n))
            .map(|(d, n)| format!("{d} {n}"))
            .chain(
                computed
                    .iter()
                    .filter(|(d, _)| !days.contains_key(*d))
                    .map(|(d, n)| format!("{d} {n} (computed, not in the file)")),
            )
            .collect();
        report.push(if differ.is_empty() {
            format!("  {y}: {} days, same as computed", days.len())
        } else {
            format!(
                "  {y}: {} days, differs from computed: {}",
                days.len(),
                differ.join(", ")
            )
        });
        merged.insert(*y, days.clone());
    }
    // Write then rename: the daemon's watcher never sees a half-written file.
    let tmp = dir.join(format!(".{}.tmp", crate::calendar::IMPORTED_FILE));
    std::fs::write(&tmp, crate::calendar::csv::to_toml(&merged, &name))
        .and_then(|()| std::fs::rename(&tmp, &target))
        .map_err(|e| CliError::new(format!("cannot write {}: {e}", target.display())))?;
    let total: usize = years.values().map(|d| d.len()).sum();
    Ok(format!(
        "imported {total} holidays for {} into {}\n{}",
        years
            .keys()
            .map(|y| y.to_string())
            .collect::<Vec<_>>()
            .join(", "),
        target.display(),
        report.join("\n")
    ))
}

/// `pmoflow workflows`: the workflows on disk, their version, next fire and problems, and what
/// the database knows of their runs.
pub async fn workflows(config: &Config, format: Format) -> Result<(), CliError> {
    let catalog = Catalog::load(&config.workflows_dir);
    let now = SystemClock.now();
    let store = Store::open(&config.database_url, config.durability)
        .await
        .ok();
    // What running daemons have loaded (possibly the last good version of a now broken file).
    let loaded = match &store {
        Some(s) => s.loaded_workflows().await.unwrap_or_default(),
        None => Vec::new(),
    };
    let loaded_of = |id: &str| -> Vec<Json> {
        loaded
            .iter()
            .filter(|(_, wid, _, _)| wid == id)
            .map(|(node, _, hash, _)| json!({"node": node, "version": &hash[..12.min(hash.len())]}))
            .collect()
    };
    let mut rows = Vec::new();
    for wf in catalog.workflows.values() {
        let next =
            crate::schedule::next_fires(&wf.triggers, config.timezone, &catalog.calendar, now, 1)
                .first()
                .map(|f| f.to_rfc3339());
        let last = match &store {
            Some(s) => s
                .list_runs(&RunFilter {
                    workflow_id: Some(wf.id.clone()),
                    status: None,
                    limit: 1,
                })
                .await
                .ok()
                .and_then(|r| r.into_iter().next()),
            None => None,
        };
        rows.push(json!({
            "id": wf.id,
            "name": wf.name,
            "path": wf.path,
            "version": &wf.hash[..12],
            "next_fire": next,
            "last_run": last.as_ref().map(|r| json!({"id": r.id, "status": r.status, "error": r.error})),
            "loaded": loaded_of(&wf.id),
            "error": null,
        }));
    }
    for d in &catalog.diagnostics {
        let path = d.path.display().to_string();
        let kept: Vec<Json> = loaded
            .iter()
            .filter(|(_, _, _, p)| *p == path)
            .map(|(node, id, hash, _)| json!({"node": node, "id": id, "version": &hash[..12.min(hash.len())]}))
            .collect();
        rows.push(json!({"id": null, "path": d.path, "error": d.to_string(), "loaded": kept}));
    }
    if let Some(s) = store {
        s.close().await;
    }
    let mut out = std::io::stdout().lock();
    if format == Format::Json {
        let _ = writeln!(out, "{:#}", Json::Array(rows));
        return Ok(());
    }
    let _ = writeln!(
        out,
        "{:<28}  {:<12}  {:<12}  {:<25}  {:<10}  {:<24}  LAST ERROR",
        "WORKFLOW", "VERSION", "RUNNING", "NEXT FIRE", "LAST RUN", "NAME"
    );
    for r in &rows {
        if r["id"].is_null() {
            let _ = writeln!(
                out,
                "invalid file: {}",
                r["error"].as_str().unwrap_or_default()
            );
            for k in r["loaded"].as_array().into_iter().flatten() {
                let _ = writeln!(
                    out,
                    "  the daemon `{}` keeps running the last good version {} of `{}`",
                    k["node"].as_str().unwrap_or_default(),
                    k["version"].as_str().unwrap_or_default(),
                    k["id"].as_str().unwrap_or_default()
                );
            }
            continue;
        }
        let _ = writeln!(
            out,
            "{:<28}  {:<12}  {:<12}  {:<25}  {:<10}  {:<24}  {}",
            r["id"].as_str().unwrap_or_default(),
            r["version"].as_str().unwrap_or_default(),
            running(r),
            r["next_fire"].as_str().unwrap_or("-"),
            r["last_run"]["status"].as_str().unwrap_or("-"),
            r["name"].as_str().unwrap_or_default(),
            r["last_run"]["error"]
                .as_str()
                .map(|e| e.chars().take(80).collect::<String>())
                .unwrap_or_default(),
        );
    }
    Ok(())
}

/// The RUNNING column: `same` when every daemon runs the file's version, `-` when none has it
/// loaded, else the versions daemons run.
fn running(row: &Json) -> String {
    let versions: Vec<&str> = row["loaded"]
        .as_array()
        .map(|a| a.iter().filter_map(|l| l["version"].as_str()).collect())
        .unwrap_or_default();
    if versions.is_empty() {
        "-".into()
    } else if versions.iter().all(|v| Some(*v) == row["version"].as_str()) {
        "same".into()
    } else {
        versions.join(",")
    }
}

/// `pmoflow outbox [--status S]`: queued, sent and dead messages.
pub async fn outbox_list(
    config: &Config,
    status: Option<&str>,
    limit: i64,
    format: Format,
) -> Result<(), CliError> {
    if let Some(s) = status
        && !matches!(s, "pending" | "sent" | "dead")
    {
        return Err(CliError::new(format!(
            "unknown outbox status `{s}` (pending, sent, dead)"
        )));
    }
    let store = Store::open(&config.database_url, config.durability).await?;
    let rows = store.list_outbox(status, limit).await?;
    store.close().await;
    let mut out = std::io::stdout().lock();
    if format == Format::Json {
        let _ = writeln!(out, "{:#}", json!(rows));
        return Ok(());
    }
    let tz = config.timezone;
    let _ = writeln!(
        out,
        "{:<36}  {:<7}  {:<7}  {:>8}  {:<19}  TARGET / LAST ERROR",
        "ID", "KIND", "STATUS", "ATTEMPTS", "CREATED"
    );
    for r in &rows {
        let _ = writeln!(
            out,
            "{:<36}  {:<7}  {:<7}  {:>8}  {:<19}  {}{}",
            r.id,
            r.kind.as_str(),
            r.status,
            r.attempts,
            local(r.created_at, tz),
            r.target,
            r.last_error
                .as_deref()
                .map(|e| format!("  ({e})"))
                .unwrap_or_default()
        );
    }
    Ok(())
}

/// `pmoflow outbox retry ID`: a dead message goes back to the queue.
pub async fn outbox_retry(config: &Config, id: &str) -> Result<String, CliError> {
    let store = Store::open(&config.database_url, config.durability).await?;
    let ok = store.retry_outbox(id, SystemClock.now()).await?;
    store.close().await;
    if ok {
        Ok(format!(
            "message {id} queued again; a running daemon sends it shortly"
        ))
    } else {
        Err(CliError::new(format!("no dead message {id}")))
    }
}

/// Loads the plugins `used` (with their grants, through the compiled-code cache), and checks
/// every `plugin:NAME` step's `with` against the plugin's input schema. Values that are
/// templates are checked only once rendered, at run time.
fn check_plugin_inputs(
    config: &Config,
    workflows: &[std::sync::Arc<crate::workflow::Workflow>],
    used: &std::collections::BTreeSet<&str>,
) -> Vec<Diagnostic> {
    let mut diags = Vec::new();
    let loaded = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| e.to_string())
        .and_then(|rt| {
            let (mut host, mut problems) = crate::plugins::PluginHost::load(
                &config.plugins_dir,
                &config.plugin_grants,
                Some(&config.plugin_cache_dir),
            )?;
            problems.extend(rt.block_on(host.prepare()));
            Ok((host, problems))
        });
    let (host, problems) = match loaded {
        Ok(ok) => ok,
        Err(e) => {
            diags.push(Diagnostic {
                path: config.plugins_dir.clone(),
                line: 1,
                col: 1,
                message: format!("cannot load plugins: {e}"),
                hint: None,
            });
            return diags;
        }
    };
    for wf in workflows {
        for step in &wf.steps {
            let Some(name) = step.plugin.as_deref().filter(|n| used.contains(n)) else {
                continue;
            };
            let diag = |message: String, hint: Option<String>| Diagnostic {
                path: wf.path.clone(),
                line: step.line,
                col: 1,
                message,
                hint,
            };
            let Some(schema) = host.input_schema(name) else {
                let why = problems
                    .iter()
                    .find(|p| p.contains(&format!("plugin `{name}`")) || p.contains(name))
                    .cloned()
                    .unwrap_or_else(|| "it could not be loaded".into());
                diags.push(diag(
                    format!(
                        "step `{}` uses plugin `{name}`, which cannot be loaded: {why}",
                        step.id
                    ),
                    None,
                ));
                continue;
            };
            let with = if step.with.is_null() {
                json!({})
            } else {
                step.with.clone()
            };
            let problems = crate::plugins::schema_problems_except(schema, &with, is_template);
            if !problems.is_empty() {
                diags.push(diag(
                    format!(
                        "step `{}`: `with` does not fit the input of plugin `{name}`: {}",
                        step.id,
                        problems.join("; ")
                    ),
                    Some(format!(
                        "`pmoflow plugin inspect` shows the input schema of `{name}`"
                    )),
                ));
            }
        }
    }
    diags
}

/// Whether a value is a template string (checked once rendered, at run time).
fn is_template(v: &Json) -> bool {
    v.as_str()
        .is_some_and(|s| s.contains("{{") || s.contains("{%"))
}

/// `pmoflow inbound explain [FILE]`: how pmoflow reads one message, as JSON.
pub fn inbound_explain(
    file: Option<&std::path::Path>,
    fields: &[String],
    reply_address: &str,
) -> Result<(), CliError> {
    use std::io::Read;
    let raw = match file {
        Some(p) if p != std::path::Path::new("-") => std::fs::read(p)
            .map_err(|e| CliError::new(format!("cannot read {}: {e}", p.display())))?,
        _ => {
            let mut buf = Vec::new();
            std::io::stdin()
                .take(crate::inbound::DEFAULT_MAX_SIZE as u64 + 1)
                .read_to_end(&mut buf)
                .map_err(|e| CliError::new(format!("cannot read standard input: {e}")))?;
            buf
        }
    };
    if !reply_address.contains("{token}") {
        return Err(CliError::new(format!(
            "--reply-address `{reply_address}` has no {{token}}"
        )));
    }
    let msg = crate::inbound::parse(&raw, crate::inbound::DEFAULT_MAX_SIZE)
        .map_err(|e| CliError::new(format!("the message cannot be read: {e}")))?;
    let text = crate::message::reply::new_text(&msg.text);
    let answers = crate::message::reply::parse_fields(&text, fields, msg.from_name.as_deref());
    let mut doc = serde_json::to_value(&msg.kind).unwrap_or_else(|_| json!({}));
    let rest = json!({
        "message_id": msg.message_id,
        "from": msg.from,
        "from_name": msg.from_name,
        "recipients": msg.recipients,
        "subject": msg.subject,
        "keys": crate::message::correlate::keys(&msg, reply_address),
        "new_text": text,
        "fields": answers.fields,
        "free_text": answers.free_text,
        "attachments": msg.attachments,
    });
    if let (Some(d), Some(r)) = (doc.as_object_mut(), rest.as_object()) {
        d.extend(r.clone());
    }
    println!("{doc:#}");
    Ok(())
}

fn read_message(file: Option<&std::path::Path>, limit: usize) -> Result<Vec<u8>, CliError> {
    use std::io::Read;
    match file {
        Some(p) if p != std::path::Path::new("-") => {
            std::fs::read(p).map_err(|e| CliError::new(format!("cannot read {}: {e}", p.display())))
        }
        _ => {
            let mut buf = Vec::new();
            std::io::stdin()
                .take(limit as u64 + 1)
                .read_to_end(&mut buf)
                .map_err(|e| CliError::new(format!("cannot read standard input: {e}")))?;
            Ok(buf)
        }
    }
}

fn intake(config: &Config, store: &Store) -> crate::inbound::intake::Intake {
    crate::inbound::intake::Intake::new(
        store.clone(),
        std::sync::Arc::new(SystemClock),
        config.engine.services.clone(),
    )
}

/// `pmoflow inbound [FILE|-] [--queue]`: store one message; process it unless `--queue`.
/// Exit 75 (EX_TEMPFAIL, "try again later" to an MTA) when the database is unreachable.
pub async fn inbound_receive(
    config: &Config,
    file: Option<&std::path::Path>,
    queue: bool,
) -> Result<(), CliError> {
    let max = config.engine.services.replies.max_size;
    let raw = read_message(file, max)?;
    if raw.is_empty() {
        return Err(CliError::new("empty message: nothing to receive"));
    }
    let store = Store::open(&config.database_url, config.durability)
        .await
        .map_err(|e| CliError {
            message: format!("cannot open the database (try again later): {e}"),
            code: 75,
        })?;
    let intake = intake(config, &store);
    let stored = intake.receive("stdin", &raw).await.map_err(|e| CliError {
        message: format!("cannot store the message (try again later): {e}"),
        code: 75,
    })?;
    let Some(id) = stored else {
        store.close().await;
        println!("already received (same Message-ID); nothing to do");
        return Ok(());
    };
    if queue {
        store.close().await;
        println!("stored {id}; a running daemon processes it");
        return Ok(());
    }
    let row = store.inbound_get(&id).await?;
    let processed = match row {
        Some(row) => intake.process(&row).await?,
        None => None,
    };
    store.close().await;
    match processed {
        Some(p) => println!(
            "{id}: {} ({}){}",
            p.outcome,
            p.status,
            if p.detail.is_empty() {
                String::new()
            } else {
                format!(": {}", p.detail)
            }
        ),
        None => println!("{id}: processed by a running daemon"),
    }
    Ok(())
}

/// `pmoflow inbound list`.
pub async fn inbound_list(
    config: &Config,
    status: Option<&str>,
    limit: i64,
    format: Format,
) -> Result<(), CliError> {
    if let Some(s) = status
        && !matches!(s, "pending" | "done" | "quarantined")
    {
        return Err(CliError::new(format!(
            "unknown inbound status `{s}` (pending, done, quarantined)"
        )));
    }
    let store = Store::open(&config.database_url, config.durability).await?;
    let rows = store.inbound_list(status, limit).await?;
    store.close().await;
    let mut out = std::io::stdout().lock();
    if format == Format::Json {
        let _ = writeln!(out, "{:#}", json!(rows));
        return Ok(());
    }
    let _ = writeln!(
        out,
        "{:<36}  {:<11}  {:<17}  {:<19}  FROM / SUBJECT / DETAIL",
        "ID", "STATUS", "OUTCOME", "RECEIVED"
    );
    for r in rows.iter().filter(|r| !r.via.starts_with("imap-")) {
        let _ = writeln!(
            out,
            "{:<36}  {:<11}  {:<17}  {:<19}  {}  {}{}",
            r.id,
            r.status,
            r.outcome.as_deref().unwrap_or("-"),
            local(r.received_at, config.timezone),
            r.from.as_deref().unwrap_or("-"),
            r.subject.as_deref().unwrap_or("-"),
            r.detail
                .as_deref()
                .filter(|d| !d.is_empty())
                .map(|d| format!("  ({d})"))
                .unwrap_or_default()
        );
    }
    Ok(())
}

/// `pmoflow inbound show ID`.
pub async fn inbound_show(config: &Config, id: &str) -> Result<(), CliError> {
    let store = Store::open(&config.database_url, config.durability).await?;
    let row = store.inbound_get(id).await?;
    store.close().await;
    let Some(r) = row else {
        return Err(CliError::new(format!("no received message {id}")));
    };
    println!(
        "{:#}",
        json!({
            "id": r.id,
            "via": r.via,
            "received_at": local(r.received_at, config.timezone),
            "size": r.size,
            "status": r.status,
            "outcome": r.outcome,
            "detail": r.detail,
            "from": r.from,
            "subject": r.subject,
            "processed_at": r.processed_at.map(|t| local(t, config.timezone)),
        })
    );
    println!("---");
    println!("{}", String::from_utf8_lossy(&r.raw));
    Ok(())
}

/// `pmoflow inbound poll`: one IMAP round.
pub async fn inbound_poll(config: &Config) -> Result<(), CliError> {
    let Some(imap) = &config.imap else {
        return Err(CliError::new("no [imap] in the configuration"));
    };
    if !config.secret_errors.is_empty() {
        return Err(CliError::new(config.secret_errors.join("\n")));
    }
    let store = Store::open(&config.database_url, config.durability).await?;
    let clock: crate::clock::SharedClock = std::sync::Arc::new(SystemClock);
    let max = config.engine.services.replies.max_size;
    let stats = crate::inbound::imap::poll_once(imap, &store, &clock, max)
        .await
        .map_err(|e| CliError::new(e.to_string()))?;
    let processed = intake(config, &store).process_pending().await?;
    store.close().await;
    println!(
        "{}: {} new, {} already received, {} older than registration; {} processed",
        crate::inbound::imap::mailbox_key(imap),
        stats.stored,
        stats.duplicates,
        stats.skipped_old,
        processed.len()
    );
    for p in processed {
        println!("  {}: {} ({})", p.id, p.outcome, p.status);
    }
    Ok(())
}

/// `pmoflow requests`: who was asked, who answered.
pub async fn requests(
    config: &Config,
    status: Option<&str>,
    limit: i64,
    format: Format,
) -> Result<(), CliError> {
    let store = Store::open(&config.database_url, config.durability).await?;
    let rows = store.list_requests(status, limit).await?;
    store.close().await;
    let mut out = std::io::stdout().lock();
    if format == Format::Json {
        let _ = writeln!(out, "{:#}", json!(rows));
        return Ok(());
    }
    let _ = writeln!(
        out,
        "{:<8}  {:<9}  {:<19}  {:<19}  {:<30}  RUN / STEP",
        "TAG", "STATUS", "DEADLINE", "ANSWERED", "TO"
    );
    for r in &rows {
        let _ = writeln!(
            out,
            "{:<8}  {:<9}  {:<19}  {:<19}  {:<30}  {} {}",
            format!("#{}", r.tag),
            r.status,
            r.deadline
                .map(|d| local(d, config.timezone))
                .unwrap_or_else(|| "-".into()),
            r.answered_at
                .map(|d| local(d, config.timezone))
                .unwrap_or_else(|| "-".into()),
            r.recipient,
            r.run_id,
            r.step_key
        );
    }
    Ok(())
}

/// `pmoflow token new --name N --role R`.
pub fn token_new(name: &str, role: &str) -> Result<(), CliError> {
    if crate::http::Role::parse(role).is_none() {
        return Err(CliError::new(format!(
            "unknown role `{role}` (viewer, operator, admin)"
        )));
    }
    if name.is_empty() || name.contains('"') {
        return Err(CliError::new("--name must be a plain name"));
    }
    let (token, hash) = crate::http::new_token().map_err(CliError::new)?;
    println!("token (shown once; give it to the client, keep it secret):\n  {token}\n");
    println!("add to pmoflow.toml:\n");
    println!("[[http.tokens]]\nname = \"{name}\"\nrole = \"{role}\"\nhash = \"{hash}\"");
    Ok(())
}
