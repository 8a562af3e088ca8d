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

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::Path;
use std::sync::Arc;

use chrono::{DateTime, NaiveDate, NaiveDateTime, TimeZone, Utc};
use serde::{Deserialize, Serialize};
use serde_json::{Value as Json, json};
use tokio_util::sync::CancellationToken;

use crate::clock::{Clock, SharedClock, SimClock};
use crate::config::Config;
use crate::engine::{Engine, Registry, RunRequest};
use crate::inbound::intake::Intake;
use crate::store::{NewAnswer, RunFilter, Store};
use crate::workflow::Catalog;

mod scenario;
mod timeline;

use scenario::duration;
pub use scenario::*;
use timeline::outbox_event;
pub use timeline::*;

/// Why a simulation could not run.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct SimError(pub String);

fn err(e: impl std::fmt::Display) -> SimError {
    SimError(e.to_string())
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
        SimError(format!(
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
            None => SimError(format!("{target}: not a workflow")),
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
            _ => Err(SimError(format!(
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
        return Err(SimError(format!(
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
    let tz = config.engine.timezone;
    let (mut catalog, workflow) = load_target(config, workflow)?;
    let workflow = workflow.as_str();
    let defaults = catalog.workflows[workflow].inputs.clone();
    // Only the simulated workflow fires.
    catalog.workflows.retain(|id, _| id == workflow);
    catalog.sources.retain(|id, _| id == workflow);

    let dir = tempfile::tempdir().map_err(err)?;
    let url = format!("sqlite://{}", dir.path().join("simulation.db").display());
    let store = Store::open(&url, crate::store::Durability::Process)
        .await
        .map_err(err)?;
    let sim = SimClock::new(from);
    let clock: SharedClock = Arc::new(sim.clone());

    let mut plugins = ScenarioPlugins::default();
    for p in &scenario.plugin {
        let at = match &p.from {
            Some(f) => parse_time(f.get_ref(), tz, false)?,
            None => DateTime::<Utc>::MIN_UTC,
        };
        let out = serde_json::to_value(&p.output).map_err(err)?;
        plugins.results.push((p.name.clone(), at, out));
    }
    let mut services = (*config.engine.services).clone();
    services.mail.smtp = None;
    {
        // No grants: a plugin that needs the network does not load (the scenario gives its
        // results). The shipped plugins are built in; `plugins_dir` adds or replaces.
        let dir = config.plugins_dir.clone();
        let cache = config.plugin_cache_dir.clone();
        let loaded = tokio::task::spawn_blocking(move || {
            crate::plugins::PluginHost::load(&dir, &crate::plugins::Grants::default(), Some(&cache))
        })
        .await
        .map_err(err)?;
        if let Ok((mut host, _problems)) = loaded {
            let _ = host.prepare().await;
            plugins.host = Some(Arc::new(host.with_kv_store(store.clone())));
        }
    }
    services.plugins = Some(Arc::new(plugins));
    let services = Arc::new(services);
    let mut engine_config = config.engine.clone();
    engine_config.node_id = "simulate".into();
    engine_config.services = services.clone();
    let registry = Arc::new(Registry::default());
    registry.set_catalog(Arc::new(catalog));
    let engine = Engine::new(
        store.clone(),
        clock.clone(),
        engine_config,
        registry.clone(),
        CancellationToken::new(),
    );
    let intake = Intake::new(store.clone(), clock.clone(), services.clone());
    let pattern = services.replies.pattern(&services.mail.from);

    let mut pending: Vec<(DateTime<Utc>, u64, Inject)> = Vec::new();
    let mut seq = 0u64;
    for t in &scenario.trigger {
        let inputs = serde_json::to_value(&t.inputs).map_err(err)?;
        pending.push((
            parse_time(t.at.get_ref(), tz, false)?,
            seq,
            Inject::Trigger(inputs),
        ));
        seq += 1;
    }
    for r in &scenario.resolve {
        pending.push((
            parse_time(r.at.get_ref(), tz, false)?,
            seq,
            Inject::Resolve(r.clone()),
        ));
        seq += 1;
    }
    let mut events: Vec<Event> = Vec::new();
    let mut run_numbers: HashMap<String, usize> = HashMap::new();
    let mut finished: HashSet<String> = HashSet::new();
    let mut seen_requests: HashSet<String> = HashSet::new();
    let mut nth: HashMap<(usize, String), u32> = HashMap::new();
    let mut replies = 0u64;

    loop {
        let now = sim.now();
        let mut rounds = 0;
        loop {
            rounds += 1;
            let mut progressed = false;
            pending.sort_by_key(|(at, s, _)| (*at, *s));
            while pending.first().is_some_and(|(at, _, _)| *at <= now) {
                let (_, _, inject) = pending.remove(0);
                progressed = true;
                match inject {
                    Inject::Trigger(inputs) => {
                        let req = RunRequest {
                            trigger_kind: "api",
                            ..RunRequest::manual(&inputs)
                        };
                        engine.trigger(workflow, &req).await.map_err(err)?;
                    }
                    Inject::Resolve(rule) => {
                        let run_id = match rule.run {
                            Some(n) => run_numbers
                                .iter()
                                .find(|(_, v)| **v == n)
                                .map(|(k, _)| k.clone()),
                            None => {
                                let mut open: Vec<(&String, &usize)> = run_numbers
                                    .iter()
                                    .filter(|(k, _)| !finished.contains(*k))
                                    .collect();
                                open.sort_by_key(|(_, n)| **n);
                                open.last().map(|(k, _)| (*k).clone())
                            }
                        };
                        let by = rule.by.clone().unwrap_or_else(|| "operator".into());
                        let done = match &run_id {
                            Some(id) => store
                                .resolve_incident(id, now, "cli", &by, &rule.note)
                                .await
                                .map_err(err)?,
                            None => false,
                        };
                        events.push(Event {
                            at: now,
                            kind: "resolve".into(),
                            run: run_id.as_ref().and_then(|id| run_numbers.get(id).copied()),
                            to: Vec::new(),
                            cc: Vec::new(),
                            summary: if done {
                                format!("{by} resolves: {}", rule.note)
                            } else {
                                format!("{by} tries to resolve, but no escalation is open")
                            },
                            body: String::new(),
                            attachments: Vec::new(),
                        });
                    }
                    Inject::Reply { token, rule } => {
                        let r = &scenario.answer[rule];
                        let Some(req) = store.request_by_token(&token).await.map_err(err)? else {
                            continue;
                        };
                        let sender = r.from.clone().unwrap_or_else(|| req.recipient.clone());
                        let mut body = String::new();
                        for (k, v) in &r.fields {
                            let v = match v {
                                toml::Value::String(s) => s.clone(),
                                other => other.to_string(),
                            };
                            body.push_str(&format!("{k}: {v}\n"));
                        }
                        let text = r.text.clone().unwrap_or_else(|| {
                            if req.kind == "ack" {
                                "了解しました。対応します。".into()
                            } else {
                                String::new()
                            }
                        });
                        if !text.is_empty() {
                            body.push_str(&format!("\n{text}\n"));
                        }
                        let fields_line = r
                            .fields
                            .iter()
                            .map(|(k, v)| {
                                format!(
                                    "{k}={}",
                                    match v {
                                        toml::Value::String(s) => s.clone(),
                                        o => o.to_string(),
                                    }
                                )
                            })
                            .collect::<Vec<_>>()
                            .join(", ");
                        let via = r
                            .via
                            .as_ref()
                            .map_or_else(|| "email".to_string(), |v| v.get_ref().clone());
                        if via == "web" {
                            let fields = serde_json::to_value(&r.fields).map_err(err)?;
                            let answer = NewAnswer {
                                token: token.clone(),
                                via: "web".into(),
                                from: Some(sender.clone()),
                                message_id: None,
                                fields: if req.kind == "ack" {
                                    json!({ "ack": true })
                                } else {
                                    fields
                                },
                                text: r.text.clone().unwrap_or_default(),
                                attachments: json!([]),
                                complete: true,
                            };
                            store
                                .record_answer(now, &answer, &format!("sim:{token}:{rule}"))
                                .await
                                .map_err(err)?;
                        } else {
                            replies += 1;
                            let raw = format!(
                                "From: {sender}\r\nTo: {}\r\nSubject: Re: {}\r\nIn-Reply-To: <{}>\r\nMessage-ID: <sim.{replies}@simulate.invalid>\r\nDate: {}\r\nMIME-Version: 1.0\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Transfer-Encoding: 8bit\r\n\r\n{}",
                                crate::message::correlate::reply_address(&pattern, &token),
                                req.subject,
                                req.message_id,
                                now.with_timezone(&tz).to_rfc2822(),
                                body.replace('\n', "\r\n"),
                            );
                            intake
                                .receive("simulate", raw.as_bytes())
                                .await
                                .map_err(err)?;
                        }
                        events.push(Event {
                            at: now,
                            kind: "answer".into(),
                            run: run_numbers.get(&req.run_id).copied(),
                            to: vec![req.recipient.clone()],
                            cc: Vec::new(),
                            summary: format!(
                                "{sender} {} by {via}{}",
                                if req.kind == "ack" {
                                    "acknowledges"
                                } else {
                                    "answers"
                                },
                                if fields_line.is_empty() {
                                    String::new()
                                } else {
                                    format!(": {fields_line}")
                                }
                            ),
                            body: String::new(),
                            attachments: Vec::new(),
                        });
                    }
                }
            }
            if !intake.process_pending().await.map_err(err)?.is_empty() {
                progressed = true;
            }
            crate::daemon::scheduler::tick(&engine, tz, now).await;
            if engine.run_due().await.map_err(err)? > 0 {
                progressed = true;
            }
            // Runs: started and finished.
            let runs = store
                .list_runs(&RunFilter {
                    workflow_id: None,
                    status: None,
                    limit: 100_000,
                })
                .await
                .map_err(err)?;
            for run in runs.iter().rev() {
                if !run_numbers.contains_key(&run.id) {
                    let n = run_numbers.len() + 1;
                    run_numbers.insert(run.id.clone(), n);
                    events.push(Event {
                        at: run.scheduled_at.unwrap_or(run.created_at),
                        kind: "run".into(),
                        run: Some(n),
                        to: Vec::new(),
                        cc: Vec::new(),
                        summary: format!(
                            "{} started ({}){}",
                            run.workflow_id,
                            run.trigger_kind,
                            changed_inputs(&run.inputs, &defaults)
                        ),
                        body: String::new(),
                        attachments: Vec::new(),
                    });
                }
                if run.status.is_terminal() && finished.insert(run.id.clone()) {
                    events.push(Event {
                        at: run.finished_at.unwrap_or(now),
                        kind: "finished".into(),
                        run: run_numbers.get(&run.id).copied(),
                        to: Vec::new(),
                        cc: Vec::new(),
                        summary: match &run.error {
                            Some(e) => format!("{}: {e}", run.status.as_str()),
                            None => run.status.as_str().to_string(),
                        },
                        body: String::new(),
                        attachments: Vec::new(),
                    });
                }
            }
            // The simulated mailbox: everything queued is "sent" now.
            let mut batch = Vec::new();
            loop {
                let rows = store
                    .claim_outbox("simulate", now, chrono::Duration::hours(1), 1000)
                    .await
                    .map_err(err)?;
                if rows.is_empty() {
                    break;
                }
                for row in rows {
                    store
                        .outbox_attempted(&row.id, "simulate", now, "sent", None, None)
                        .await
                        .map_err(err)?;
                    batch.push(row);
                }
            }
            if !batch.is_empty() {
                progressed = true;
            }
            let mut mails: Vec<Event> = batch
                .iter()
                .map(|row| {
                    outbox_event(
                        row,
                        now,
                        row.run_id
                            .as_ref()
                            .and_then(|r| run_numbers.get(r).copied()),
                    )
                })
                .collect();
            mails.sort_by(|a, b| (a.run, &a.summary, &a.to).cmp(&(b.run, &b.summary, &b.to)));
            events.extend(mails);
            // New requests: schedule what the scenario says their addressees do.
            let requests = store.list_requests(None, 100_000).await.map_err(err)?;
            let mut new: Vec<_> = requests
                .into_iter()
                .filter(|r| r.kind != "resolve" && seen_requests.insert(r.token.clone()))
                .collect();
            new.sort_by(|a, b| (a.created_at, &a.recipient).cmp(&(b.created_at, &b.recipient)));
            for req in new {
                for (i, rule) in scenario.answer.iter().enumerate() {
                    let who_matches =
                        rule.who == "*" || crate::message::email::bare(&rule.who) == req.recipient;
                    let subject_matches = rule
                        .subject
                        .as_ref()
                        .is_none_or(|s| req.subject.contains(s.as_str()));
                    if !(who_matches && subject_matches) {
                        continue;
                    }
                    let count = nth.entry((i, req.recipient.clone())).or_insert(0);
                    *count += 1;
                    if rule.nth.as_ref().is_some_and(|n| !n.contains(count)) {
                        continue;
                    }
                    let at = match (&rule.after_deadline, req.deadline) {
                        (Some(d), Some(deadline)) => deadline + duration(d.get_ref())?,
                        _ => {
                            req.created_at
                                + duration(rule.after.as_ref().map_or("1h", |a| a.get_ref()))?
                        }
                    };
                    pending.push((
                        at.max(now),
                        seq,
                        Inject::Reply {
                            token: req.token.clone(),
                            rule: i,
                        },
                    ));
                    seq += 1;
                    break;
                }
            }
            if !progressed || rounds > 1000 {
                break;
            }
        }
        // The next instant anything is due.
        let next_fire = crate::daemon::scheduler::tick(&engine, tz, now).await;
        let next_wake = store.next_wake().await.map_err(err)?;
        let next_inject = pending.iter().map(|(at, _, _)| *at).min();
        let Some(next) = [next_fire, next_wake, next_inject]
            .into_iter()
            .flatten()
            .filter(|t| *t > now)
            .min()
        else {
            break;
        };
        if next > until {
            break;
        }
        sim.set(next);
    }

    let mut runs: Vec<(usize, Json)> = Vec::new();
    for (id, n) in &run_numbers {
        if let Some(run) = store.get_run(id).await.map_err(err)? {
            runs.push((
                *n,
                json!({ "run": n, "status": run.status.as_str(), "error": run.error, "started": run.scheduled_at.unwrap_or(run.created_at).to_rfc3339() }),
            ));
        }
    }
    runs.sort_by_key(|(n, _)| *n);
    store.close().await;
    let order = |k: &str| match k {
        "run" => 0,
        "answer" | "resolve" => 1,
        "email" | "webhook" => 2,
        _ => 3,
    };
    events.sort_by_key(|e| (e.at, order(&e.kind)));
    Ok(Timeline {
        workflow: workflow.to_string(),
        from,
        until,
        events,
        runs: runs.into_iter().map(|(_, j)| j).collect(),
    })
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
