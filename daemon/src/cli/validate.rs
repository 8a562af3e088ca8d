//! `pmoflow validate`: workflow files, and `plugin:NAME` steps against the installed plugins.

#[allow(unused_imports)]
use super::*;

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
    // A literal `url` of an `http` or `webhook` step is inside the egress policy (a templated
    // one is checked when rendered, at run time).
    let egress = &config.engine.services.egress;
    for wf in &workflows {
        let before = diags.len();
        for step in &wf.steps {
            if !matches!(
                step.action,
                crate::actions::ActionKind::Http | crate::actions::ActionKind::Webhook
            ) {
                continue;
            }
            let Some(url) = step
                .with
                .get("url")
                .filter(|v| !is_template(v))
                .and_then(Json::as_str)
            else {
                continue;
            };
            if let Err(e) = egress.check_url(url) {
                diags.push(Diagnostic {
                    path: wf.path.clone(),
                    line: step.line,
                    col: 1,
                    message: format!(
                        "step `{}`: {url} is refused by the egress policy: {e}",
                        step.id
                    ),
                    hint: Some(
                        "allow the host in [egress] allow_hosts in pmoflow.toml (docs/config.md)"
                            .into(),
                    ),
                });
            }
        }
        if diags.len() > before {
            valid.retain(|(id, _)| id != &wf.id);
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

/// Loads the plugins `used` (with their grants, through the compiled-code cache), and checks
/// every `plugin:NAME` step's `with` against the plugin's input schema. Values that are
/// templates are checked only once rendered, at run time.
pub(super) fn check_plugin_inputs(
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
            )
            .map_err(|e| e.to_string())?;
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
pub(super) fn is_template(v: &Json) -> bool {
    v.as_str()
        .is_some_and(|s| s.contains("{{") || s.contains("{%"))
}
