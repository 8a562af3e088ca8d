//! Time: `simulate`, `schedule`, `workflows` (next fires), `calendar`.

#[allow(unused_imports)]
use super::*;

/// `pmoflow simulate WORKFLOW --from --until [--answers FILE]`.
/// What `pmoflow simulate` prints and writes.
#[derive(Debug, Clone, Copy)]
pub struct SimOutput<'a> {
    /// The timeline's format.
    pub format: Format,
    /// Each email's body too (text format).
    pub bodies: bool,
    /// Write the portfolio workbook here.
    pub portfolio: Option<&'a Path>,
}

pub async fn simulate(
    config: &Config,
    workflow: &str,
    from: &str,
    until: &str,
    answers: Option<&Path>,
    output: SimOutput<'_>,
) -> Result<(), CliError> {
    let SimOutput {
        format,
        bodies,
        portfolio,
    } = output;
    use crate::simulate as sim;
    let tz = config.engine.timezone;
    let from = sim::parse_time(from, tz, false).map_err(|e| CliError::caused("--from", e))?;
    let until = sim::parse_time(until, tz, true).map_err(|e| CliError::caused("--until", e))?;
    if until <= from {
        return Err(CliError::new("--until must be after --from"));
    }
    let scenario = match answers {
        Some(p) => sim::load_scenario(p, tz).map_err(CliError::of)?,
        None => sim::Scenario::default(),
    };
    let timeline = sim::simulate(config, workflow, from, until, &scenario)
        .await
        .map_err(CliError::of)?;
    if let Some(path) = portfolio {
        let bytes = crate::portfolio::xlsx::workbook(&timeline.portfolio).map_err(CliError::of)?;
        std::fs::write(path, bytes)
            .map_err(|e| CliError::caused(format!("cannot write {}", path.display()), e))?;
    }
    match format {
        Format::Text => print!("{}", sim::render_text(&timeline, tz, bodies)),
        Format::Json => println!(
            "{}",
            serde_json::to_string_pretty(&timeline).unwrap_or_default()
        ),
    }
    Ok(())
}

/// `pmoflow schedule [WORKFLOW|FILE]`: the next fires, one RFC 3339 timestamp per line.
pub fn schedule(
    config: &Config,
    target: Option<&str>,
    from: Option<&str>,
    count: usize,
    explain: bool,
) -> Result<(), CliError> {
    use crate::workflow::schedule::TriggerSchedule;
    let from = match from {
        None => SystemClock.now(),
        Some(text) => DateTime::parse_from_rfc3339(text)
            .map(|t| t.with_timezone(&Utc))
            .map_err(|e| {
                CliError::caused(format!("--from `{text}` is not an RFC 3339 instant"), e)
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
                .map_err(|e| CliError::caused(wf.id.clone(), e))?;
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
        .map_err(|e| CliError::caused(format!("cannot read {}", file.display()), e))?;
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
        .map_err(|e| CliError::caused(format!("cannot create {}", dir.display()), e))?;
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
        .map_err(|e| CliError::caused(format!("cannot write {}", target.display()), e))?;
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
        let next = crate::workflow::schedule::next_fires(
            &wf.triggers,
            config.timezone,
            &catalog.calendar,
            now,
            1,
        )
        .first()
        .map(|f| f.to_rfc3339());
        let last = match &store {
            Some(s) => s.last_run(&wf.id).await.ok().flatten(),
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
pub(super) fn running(row: &Json) -> String {
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
