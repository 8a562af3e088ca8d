//! `pmoflow simulate`: the real engine, templates, scheduler, reply intake and plugins on a
//! simulated clock, with a simulated mailbox and scripted people.
//!
//! The simulation is a discrete-event loop over a throw-away SQLite database. At each instant it
//! (1) applies what the scenario says happens then (a reply, a web answer, an acknowledgement, a
//! manual trigger, a resolution), (2) lets the scheduler fire due triggers, (3) executes every
//! due run to its next wait, (4) takes what the runs put in the outbox as "sent" (the simulated
//! mailbox) and (5) schedules the scripted answers to the requests that just went out — until
//! nothing more happens at that instant; then the clock jumps to the next instant anything is due
//! (a trigger, a run's wake time, a scripted event). Replies go through the same parser,
//! correlation and sender checks as real mail, so a scenario proves the reply path too.
//!
//! Nothing leaves the machine: no SMTP, no webhooks, no network for plugins (a plugin that needs
//! the network gets its results from the scenario's `[[plugin]]` entries).

use std::path::Path;
use std::sync::Arc;

use chrono::{DateTime, Utc};
use serde_json::Value as Json;

use crate::clock::Clock;
use crate::config::Config;
use crate::failure::Failure;
use crate::workflow::Catalog;

mod inject;
mod run;
mod scenario;
mod timeline;

pub use scenario::{
    AnswerRule, PluginRule, ResolveRule, Scenario, TriggerRule, load_scenario, parse_scenario,
    parse_time,
};
pub use timeline::{Event, Timeline, render_text};

/// Why a simulation could not run: a [`Failure`] (a message, an underlying error, or both).
#[derive(Debug, thiserror::Error)]
#[error(transparent)]
pub struct SimError(#[from] Failure);

impl SimError {
    /// A failure with no underlying error.
    pub fn new(message: impl Into<String>) -> Self {
        Self(Failure::new(message))
    }
}

/// A failure of a component the simulation drives (the store, the engine, the intake, …), kept
/// whole so that its causes are printed.
fn err(e: impl std::error::Error + Send + Sync + 'static) -> SimError {
    SimError(Failure::of(e))
}

/// The plugins of a simulation: the results a scenario gives (`[[plugin]]`, for plugins that
/// would need the network) in front of a real host without network grants.
#[derive(Debug, Default)]
pub struct ScenarioPlugins {
    results: Vec<(String, DateTime<Utc>, Json)>,
    host: Option<Arc<crate::plugins::PluginHost>>,
}

impl ScenarioPlugins {
    /// The scripted output of plugin `name` at `now`, if the scenario gives one.
    fn scripted(&self, name: &str, now: DateTime<Utc>) -> Option<Json> {
        self.results
            .iter()
            .filter(|(n, from, _)| n == name && *from <= now)
            .max_by_key(|(_, from, _)| *from)
            .map(|(_, _, out)| out.clone())
    }
}

impl crate::plugins::PluginRunner for ScenarioPlugins {
    fn invoke<'a>(
        &'a self,
        name: &'a str,
        call: &'a crate::plugins::PluginCall<'a>,
        input: &'a str,
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = crate::plugins::Invocation> + Send + 'a>>
    {
        Box::pin(async move {
            let now = DateTime::<Utc>::from_timestamp_millis(call.now_ms).unwrap_or_default();
            if let Some(output) = self.scripted(name, now) {
                // The scenario says what the plugin finds.
                return Ok((output.to_string(), Vec::new()));
            }
            match &self.host {
                Some(host) => host.invoke(name, call, input).await,
                None => Err(crate::plugins::PluginError::NotInstalled(name.to_string())),
            }
        })
    }
}

enum Inject {
    Reply { token: String, rule: usize },
    Trigger(Json),
    Resolve(ResolveRule),
}

/// The catalog to simulate in and the id of the simulated workflow.
fn load_target(config: &Config, target: &str) -> Result<(Catalog, String), SimError> {
    let located = |d: &crate::diag::Diagnostic| {
        SimError::new(format!(
            "{}:{}:{}: {}",
            d.path.display(),
            d.line,
            d.col,
            d.message
        ))
    };
    let file = Path::new(target);
    if file.is_file() {
        let (wf, _) = Catalog::load_file(file).map_err(|d| match d.first() {
            Some(d) => located(d),
            None => SimError::new(format!("{target}: not a workflow")),
        })?;
        let dir = file.parent().filter(|d| !d.as_os_str().is_empty());
        let catalog = Catalog::load(dir.unwrap_or(Path::new(".")));
        // Other workflow files of the directory do not matter; its data and calendar do.
        let file_id = std::fs::canonicalize(file).ok();
        if let Some(d) = catalog.diagnostics.iter().find(|d| {
            !catalog.files.contains(&d.path) || std::fs::canonicalize(&d.path).ok() == file_id
        }) {
            return Err(located(d));
        }
        return match catalog.workflows.get(&wf.id) {
            Some(found) if std::fs::canonicalize(&found.path).ok() == file_id => {
                Ok((catalog, wf.id))
            }
            _ => Err(SimError::new(format!(
                "{target}: another file in its directory also defines the workflow `{}`",
                wf.id
            ))),
        };
    }
    let catalog = Catalog::load(&config.workflows_dir);
    if let Some(d) = catalog.diagnostics.first() {
        return Err(located(d));
    }
    if !catalog.workflows.contains_key(target) {
        let known: Vec<&str> = catalog.workflows.keys().map(String::as_str).collect();
        return Err(SimError::new(format!(
            "no workflow `{target}` in {} (workflows: {}); give a workflow id or the path of a workflow file",
            config.workflows_dir.display(),
            known.join(", ")
        )));
    }
    Ok((catalog, target.to_string()))
}

/// Runs `workflow` from `from` to `until`. `workflow` is a workflow id (in the configured
/// workflows directory) or the path of a workflow file, whose directory then supplies the
/// data, templates and calendar (as for `pmoflow schedule`).
pub async fn simulate(
    config: &Config,
    workflow: &str,
    from: DateTime<Utc>,
    until: DateTime<Utc>,
    scenario: &Scenario,
) -> Result<Timeline, SimError> {
    let mut sim = run::Simulation::start(config, workflow, from, scenario).await?;
    loop {
        let now = sim.clock.now();
        sim.settle(now).await?;
        let Some(next) = sim.next_instant(now).await? else {
            break;
        };
        if next > until {
            break;
        }
        sim.clock.set(next);
    }
    sim.finish(from, until).await
}

/// The inputs that differ from the workflow's defaults, as ` key=value …`.
fn changed_inputs(inputs: &Json, defaults: &serde_json::Map<String, Json>) -> String {
    let Json::Object(m) = inputs else {
        return String::new();
    };
    m.iter()
        .filter(|(k, v)| defaults.get(*k) != Some(*v))
        .map(|(k, v)| match v {
            Json::String(s) => format!(" {k}={s}"),
            other => format!(" {k}={other}"),
        })
        .collect()
}
