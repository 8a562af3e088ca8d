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

/// Why a simulation could not run.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct SimError(pub String);

fn err(e: impl std::fmt::Display) -> SimError {
    SimError(e.to_string())
}

/// The scenario file (`--answers`): what people and the world do.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Scenario {
    /// How people answer requests (and acknowledge alerts). The first matching rule applies;
    /// someone no rule matches never answers.
    #[serde(default)]
    pub answer: Vec<AnswerRule>,
    /// Runs started by hand (the CLI, the API, a monitoring webhook) at given times.
    #[serde(default)]
    pub trigger: Vec<TriggerRule>,
    /// Incidents resolved (`pmoflow resolve`) at given times.
    #[serde(default)]
    pub resolve: Vec<ResolveRule>,
    /// Results of plugins that would reach the network, by time.
    #[serde(default)]
    pub plugin: Vec<PluginRule>,
}

/// `[[answer]]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AnswerRule {
    /// The addressee (an email address) or `*` for anyone.
    pub who: String,
    /// Only requests whose subject contains this.
    pub subject: Option<String>,
    /// Answer this long after the request was sent (default `1h`).
    pub after: Option<toml::Spanned<String>>,
    /// Or this long after the request's deadline (`"1d"`; late).
    pub after_deadline: Option<toml::Spanned<String>>,
    /// Only the Nth matching request to this person (1-based), e.g. `[1, 3]`.
    pub nth: Option<Vec<u32>>,
    /// `email` (default: a real reply through the intake) or `web` (the answer form).
    pub via: Option<toml::Spanned<String>>,
    /// Field values.
    #[serde(default)]
    pub fields: BTreeMap<String, toml::Value>,
    /// Free text after the fields (an acknowledgement reply says 了解しました by default).
    pub text: Option<String>,
    /// Send from another address (a delegate, or someone not allowed to answer).
    pub from: Option<String>,
}

/// `[[trigger]]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TriggerRule {
    /// When (RFC 3339, or `YYYY-MM-DD HH:MM` in the configured zone).
    pub at: toml::Spanned<String>,
    /// Inputs of the run.
    #[serde(default)]
    pub inputs: BTreeMap<String, toml::Value>,
}

/// `[[resolve]]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ResolveRule {
    /// When.
    pub at: toml::Spanned<String>,
    /// Which run (1 = the first run of the simulation; default: the latest open escalation).
    pub run: Option<usize>,
    /// What was done.
    #[serde(default)]
    pub note: String,
    /// Who resolved it.
    pub by: Option<String>,
}

/// `[[plugin]]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PluginRule {
    /// Plugin name.
    pub name: String,
    /// From this instant on (default: the start); the latest applicable entry wins.
    pub from: Option<toml::Spanned<String>>,
    /// The plugin's output.
    pub output: toml::Value,
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

/// One line of the timeline.
#[derive(Debug, Clone, Serialize)]
pub struct Event {
    /// When.
    pub at: DateTime<Utc>,
    /// `run`, `email`, `webhook`, `answer`, `resolve`, `finished`.
    pub kind: String,
    /// Run number in this simulation (1-based).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub run: Option<usize>,
    /// Recipients (email).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub to: Vec<String>,
    /// Copies (email).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub cc: Vec<String>,
    /// Subject, or a one-line summary.
    pub summary: String,
    /// Body text (email, webhook) or details.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub body: String,
    /// Attachments: name and (for text) content.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub attachments: Vec<Json>,
}

/// What a simulation produced.
#[derive(Debug, Serialize)]
pub struct Timeline {
    /// The workflow.
    pub workflow: String,
    /// Start.
    pub from: DateTime<Utc>,
    /// End.
    pub until: DateTime<Utc>,
    /// Every event, in time order.
    pub events: Vec<Event>,
    /// The final status of every run.
    pub runs: Vec<Json>,
}

/// Parses `2027-04-01`, `2027-04-01 09:00`, `2027-04-01T09:00` (in `tz`) or RFC 3339.
/// A bare date is the start of that day, or its end with `end_of_day`.
pub fn parse_time(
    text: &str,
    tz: chrono_tz::Tz,
    end_of_day: bool,
) -> Result<DateTime<Utc>, SimError> {
    let t = text.trim();
    if let Ok(i) = DateTime::parse_from_rfc3339(t) {
        return Ok(i.with_timezone(&Utc));
    }
    let local = ["%Y-%m-%d %H:%M", "%Y-%m-%dT%H:%M", "%Y-%m-%d %H:%M:%S", "%Y-%m-%dT%H:%M:%S"]
        .iter()
        .find_map(|f| NaiveDateTime::parse_from_str(t, f).ok())
        .or_else(|| {
            NaiveDate::parse_from_str(t, "%Y-%m-%d").ok().map(|d| {
                if end_of_day {
                    d.and_hms_opt(23, 59, 59).unwrap_or_default()
                } else {
                    d.and_hms_opt(0, 0, 0).unwrap_or_default()
                }
            })
        })
        .ok_or_else(|| SimError(format!("`{t}` is not a date (2027-04-01), a local time (2027-04-01 09:00) or an RFC 3339 instant")))?;
    tz.from_local_datetime(&local)
        .earliest()
        .map(|x| x.with_timezone(&Utc))
        .ok_or_else(|| SimError(format!("`{t}` does not exist in {tz}")))
}

fn duration(text: &str) -> Result<chrono::Duration, SimError> {
    crate::duration::HumanDuration::parse(text.trim())
        .map(|d| d.to_chrono())
        .map_err(err)
}

/// Loads a scenario file and checks its times, durations and `via` values, with
/// `file:line:col` in errors.
pub fn load_scenario(path: &Path, tz: chrono_tz::Tz) -> Result<Scenario, SimError> {
    let text =
        std::fs::read_to_string(path).map_err(|e| SimError(format!("{}: {e}", path.display())))?;
    let scenario: Scenario = toml::from_str(&text).map_err(|e| {
        let (line, col) = e
            .span()
            .map(|s| crate::diag::line_col(&text, s.start))
            .unwrap_or((1, 1));
        SimError(format!("{}:{line}:{col}: {}", path.display(), e.message()))
    })?;
    let at = |v: &toml::Spanned<String>, message: String| {
        let (line, col) = crate::diag::line_col(&text, v.span().start);
        SimError(format!("{}:{line}:{col}: {message}", path.display()))
    };
    for r in &scenario.answer {
        for d in [&r.after, &r.after_deadline].into_iter().flatten() {
            duration(d.get_ref())
                .map_err(|e| at(d, format!("{e} (write e.g. \"2d\", \"3h\", \"15m\")")))?;
        }
        if let Some(v) = &r.via
            && !matches!(v.get_ref().as_str(), "email" | "web")
        {
            return Err(at(
                v,
                format!("`via` is \"email\" or \"web\", got \"{}\"", v.get_ref()),
            ));
        }
    }
    let times = scenario
        .trigger
        .iter()
        .map(|t| &t.at)
        .chain(scenario.resolve.iter().map(|r| &r.at))
        .chain(scenario.plugin.iter().filter_map(|p| p.from.as_ref()));
    for t in times {
        parse_time(t.get_ref(), tz, false).map_err(|e| at(t, e.0))?;
    }
    Ok(scenario)
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
                    let who_matches = rule.who == "*"
                        || crate::actions::request::bare(&rule.who) == req.recipient;
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

fn outbox_event(row: &crate::store::OutboxRow, now: DateTime<Utc>, run: Option<usize>) -> Event {
    use mail_parser::{MessageParser, MimeHeaders};
    if row.kind == crate::store::MessageKind::Webhook {
        let body = row.payload["body"].as_str().unwrap_or_default().to_string();
        let parsed: Json = serde_json::from_str(&body).unwrap_or(Json::Null);
        let title = ["title", "text", "summary"]
            .iter()
            .find_map(|k| parsed.get(k).and_then(Json::as_str))
            .unwrap_or("")
            .lines()
            .next()
            .unwrap_or("")
            .to_string();
        return Event {
            at: now,
            kind: "webhook".into(),
            run,
            to: vec![row.target.clone()],
            cc: Vec::new(),
            summary: title,
            body,
            attachments: Vec::new(),
        };
    }
    let raw = row.payload["raw"].as_str().unwrap_or_default();
    let Some(msg) = MessageParser::default().parse(raw.as_bytes()) else {
        return Event {
            at: now,
            kind: "email".into(),
            run,
            to: vec![row.target.clone()],
            cc: Vec::new(),
            summary: "(unreadable message)".into(),
            body: String::new(),
            attachments: Vec::new(),
        };
    };
    let list = |a: Option<&mail_parser::Address<'_>>| -> Vec<String> {
        a.map(|a| {
            a.iter()
                .filter_map(|x| x.address())
                .map(str::to_lowercase)
                .collect()
        })
        .unwrap_or_default()
    };
    let attachments = msg
        .attachments()
        .map(|p| {
            let content = p.contents();
            let name = p.attachment_name().unwrap_or("attachment").to_string();
            match std::str::from_utf8(content) {
                Ok(text) => json!({ "name": name, "size": content.len(), "text": text.trim_start_matches('\u{feff}') }),
                Err(_) => json!({ "name": name, "size": content.len() }),
            }
        })
        .collect();
    Event {
        at: now,
        kind: "email".into(),
        run,
        to: list(msg.to()),
        cc: list(msg.cc()),
        summary: mask_tag(msg.subject().unwrap_or("")),
        body: msg.body_text(0).map(|t| t.into_owned()).unwrap_or_default(),
        attachments,
    }
}

/// Subject tags are random (` [#48213]`): the timeline shows ` [#…]` so that it is stable.
fn mask_tag(subject: &str) -> String {
    match subject.rfind(" [#") {
        Some(i)
            if subject.ends_with(']')
                && subject[i + 3..subject.len() - 1]
                    .chars()
                    .all(|c| c.is_ascii_digit()) =>
        {
            format!("{} [#…]", &subject[..i])
        }
        _ => subject.to_string(),
    }
}

/// The timeline as text: one line per event, times in `tz`.
pub fn render_text(t: &Timeline, tz: chrono_tz::Tz, bodies: bool) -> String {
    let mut out = String::new();
    let mut day = String::new();
    // Runs that did nothing anyone sees (a daily check that found nothing) are left out.
    let visible: HashSet<usize> = t
        .events
        .iter()
        .filter(|e| {
            !matches!(e.kind.as_str(), "run" | "finished")
                || (e.kind == "finished" && e.summary != "succeeded")
        })
        .filter_map(|e| e.run)
        .collect();
    let quiet = t.runs.len().saturating_sub(visible.len());
    for e in &t.events {
        if e.run.is_some_and(|n| !visible.contains(&n)) {
            continue;
        }
        let local = e.at.with_timezone(&tz);
        let d = format!(
            "{} ({})",
            local.format("%Y-%m-%d"),
            crate::calendar::format::weekday_ja(chrono::Datelike::weekday(&local))
        );
        if d != day {
            out.push_str(&format!("{d}\n"));
            day = d;
        }
        let run = e.run.map_or(String::new(), |n| format!("#{n} "));
        let line = match e.kind.as_str() {
            "email" => {
                let mut who = e.to.join(", ");
                if !e.cc.is_empty() {
                    who.push_str(&format!(" (cc {})", e.cc.join(", ")));
                }
                let att = if e.attachments.is_empty() {
                    String::new()
                } else {
                    format!(
                        " [添付: {}]",
                        e.attachments
                            .iter()
                            .filter_map(|a| a["name"].as_str())
                            .collect::<Vec<_>>()
                            .join(", ")
                    )
                };
                format!("mail     {who}: {}{att}", e.summary)
            }
            "webhook" => format!("webhook  {}: {}", e.to.join(", "), e.summary),
            "run" => format!("run      {}", e.summary),
            "finished" => format!("finished {}", e.summary),
            "answer" => format!("answer   {}", e.summary),
            "resolve" => format!("resolve  {}", e.summary),
            other => format!("{other} {}", e.summary),
        };
        out.push_str(&format!("  {} {run}{line}\n", local.format("%H:%M")));
        if bodies && !e.body.is_empty() && e.kind == "email" {
            for l in e.body.lines() {
                out.push_str(&format!("        | {l}\n"));
            }
            for a in &e.attachments {
                if let Some(text) = a["text"].as_str() {
                    out.push_str(&format!(
                        "        | --- {} ---\n",
                        a["name"].as_str().unwrap_or("")
                    ));
                    for l in text.lines() {
                        out.push_str(&format!("        | {l}\n"));
                    }
                }
            }
        }
    }
    let emails = t.events.iter().filter(|e| e.kind == "email").count();
    let webhooks = t.events.iter().filter(|e| e.kind == "webhook").count();
    let answers = t.events.iter().filter(|e| e.kind == "answer").count();
    let statuses: BTreeMap<String, usize> = t.runs.iter().fold(BTreeMap::new(), |mut m, r| {
        *m.entry(r["status"].as_str().unwrap_or("?").to_string())
            .or_insert(0) += 1;
        m
    });
    out.push_str(&format!(
        "-- {} runs ({}{}), {emails} emails, {webhooks} webhooks, {answers} answers\n",
        t.runs.len(),
        statuses
            .iter()
            .map(|(k, v)| format!("{v} {k}"))
            .collect::<Vec<_>>()
            .join(", "),
        if quiet > 0 {
            format!("; {quiet} without visible effect not shown")
        } else {
            String::new()
        }
    ));
    out
}
