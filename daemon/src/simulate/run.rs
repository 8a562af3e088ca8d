//! One simulation: the world it builds (a throw-away database, a simulated clock, the engine,
//! the intake and the scenario's plugins), what it does at one instant until nothing more
//! happens, and the timeline it ends with.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use chrono::{DateTime, Utc};
use serde_json::{Value as Json, json};
use tokio_util::sync::CancellationToken;

use super::scenario::duration;
use super::timeline::outbox_event;
use super::{
    Event, Inject, Scenario, ScenarioPlugins, SimError, Timeline, changed_inputs, err, load_target,
    parse_time,
};
use crate::clock::{SharedClock, SimClock};
use crate::config::Config;
use crate::engine::{Engine, Registry};
use crate::inbound::intake::Intake;
use crate::store::{RunFilter, Store};

/// A simulation in progress.
pub(super) struct Simulation<'a> {
    pub(super) scenario: &'a Scenario,
    pub(super) tz: chrono_tz::Tz,
    /// The simulated workflow's id.
    pub(super) workflow: String,
    /// Its default inputs (a run's start shows the ones that differ).
    defaults: serde_json::Map<String, Json>,
    /// Holds the database until the end.
    _dir: tempfile::TempDir,
    pub(super) store: Store,
    pub(super) clock: SimClock,
    pub(super) engine: Engine,
    pub(super) intake: Intake,
    /// The reply-address pattern replies are sent to.
    pub(super) pattern: String,
    /// What the scenario makes happen, with a sequence number that keeps equal times in order.
    pending: Vec<(DateTime<Utc>, u64, Inject)>,
    seq: u64,
    pub(super) events: Vec<Event>,
    /// Runs by id, numbered in order of appearance.
    pub(super) run_numbers: HashMap<String, usize>,
    pub(super) finished: HashSet<String>,
    seen_requests: HashSet<String>,
    /// How many requests each answer rule has matched per addressee (for `nth`).
    nth: HashMap<(usize, String), u32>,
    /// Replies sent so far (for their Message-IDs).
    pub(super) replies: u64,
}

impl<'a> Simulation<'a> {
    /// Builds the world at `from`: the catalog with only the simulated workflow, a temporary
    /// SQLite database, the scenario's plugins in front of a host without network grants, and
    /// the scripted triggers and resolutions.
    pub(super) async fn start(
        config: &Config,
        workflow: &str,
        from: DateTime<Utc>,
        scenario: &'a Scenario,
    ) -> Result<Self, SimError> {
        let tz = config.engine.timezone;
        let (mut catalog, workflow) = load_target(config, workflow)?;
        let defaults = catalog.workflows[&workflow].inputs.clone();
        // Only the simulated workflow fires.
        catalog.workflows.retain(|id, _| *id == workflow);
        catalog.sources.retain(|id, _| *id == workflow);

        let dir = tempfile::tempdir().map_err(err)?;
        let url = format!("sqlite://{}", dir.path().join("simulation.db").display());
        let store = Store::open(&url, crate::store::Durability::Process)
            .await
            .map_err(err)?;
        let sim = SimClock::new(from);
        let clock: SharedClock = Arc::new(sim.clone());

        let mut services = (*config.engine.services).clone();
        services.mail.smtp = None;
        let plugins = plugins(config, scenario, &store, tz).await?;
        services.plugins = Some(Arc::new(plugins));
        let services = Arc::new(services);
        let mut engine_config = config.engine.clone();
        engine_config.node_id = "simulate".into();
        engine_config.instance_id = "simulate".into();
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
        let mut this = Self {
            scenario,
            tz,
            workflow,
            defaults,
            _dir: dir,
            store,
            clock: sim,
            engine,
            intake,
            pattern,
            pending: Vec::new(),
            seq: 0,
            events: Vec::new(),
            run_numbers: HashMap::new(),
            finished: HashSet::new(),
            seen_requests: HashSet::new(),
            nth: HashMap::new(),
            replies: 0,
        };
        for t in &scenario.trigger {
            let inputs = serde_json::to_value(&t.inputs).map_err(err)?;
            this.plan(
                parse_time(t.at.get_ref(), tz, false)?,
                Inject::Trigger(inputs),
            );
        }
        for r in &scenario.resolve {
            this.plan(
                parse_time(r.at.get_ref(), tz, false)?,
                Inject::Resolve(r.clone()),
            );
        }
        Ok(this)
    }

    /// Schedules `inject` at `at`.
    fn plan(&mut self, at: DateTime<Utc>, inject: Inject) {
        self.pending.push((at, self.seq, inject));
        self.seq += 1;
    }

    /// Everything that happens at `now`, round after round until a round changes nothing:
    /// scripted events, the intake, the scheduler, due runs, the mailbox, new requests.
    pub(super) async fn settle(&mut self, now: DateTime<Utc>) -> Result<(), SimError> {
        let mut rounds = 0;
        loop {
            rounds += 1;
            let mut progressed = false;
            self.pending.sort_by_key(|(at, s, _)| (*at, *s));
            while self.pending.first().is_some_and(|(at, _, _)| *at <= now) {
                let (_, _, inject) = self.pending.remove(0);
                progressed = true;
                self.inject(now, inject).await?;
            }
            if !self.intake.process_pending().await.map_err(err)?.is_empty() {
                progressed = true;
            }
            crate::daemon::scheduler::tick(&self.engine, self.tz, now).await;
            if self.engine.run_due().await.map_err(err)? > 0 {
                progressed = true;
            }
            self.record_runs(now).await?;
            if self.deliver(now).await? {
                progressed = true;
            }
            self.plan_answers(now).await?;
            if !progressed || rounds > 1000 {
                return Ok(());
            }
        }
    }

    /// Runs started and finished since the last look.
    async fn record_runs(&mut self, now: DateTime<Utc>) -> Result<(), SimError> {
        let runs = self
            .store
            .list_runs(&RunFilter {
                workflow_id: None,
                status: None,
                limit: 100_000,
            })
            .await
            .map_err(err)?;
        for run in runs.iter().rev() {
            if !self.run_numbers.contains_key(&run.id) {
                let n = self.run_numbers.len() + 1;
                self.run_numbers.insert(run.id.clone(), n);
                self.events.push(Event {
                    at: run.scheduled_at.unwrap_or(run.created_at),
                    kind: "run".into(),
                    run: Some(n),
                    to: Vec::new(),
                    cc: Vec::new(),
                    summary: format!(
                        "{} started ({}){}",
                        run.workflow_id,
                        run.trigger_kind,
                        changed_inputs(&run.inputs, &self.defaults)
                    ),
                    body: String::new(),
                    attachments: Vec::new(),
                });
            }
            if run.status.is_terminal() && self.finished.insert(run.id.clone()) {
                self.events.push(Event {
                    at: run.finished_at.unwrap_or(now),
                    kind: "finished".into(),
                    run: self.run_numbers.get(&run.id).copied(),
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
        Ok(())
    }

    /// The simulated mailbox: everything queued is "sent" now. Whether anything was.
    async fn deliver(&mut self, now: DateTime<Utc>) -> Result<bool, SimError> {
        let mut batch = Vec::new();
        loop {
            let rows = self
                .store
                .claim_outbox("simulate", now, chrono::Duration::hours(1), now, 1000)
                .await
                .map_err(err)?;
            if rows.is_empty() {
                break;
            }
            for row in rows {
                self.store
                    .outbox_attempted(&row.id, "simulate", now, "sent", None, None)
                    .await
                    .map_err(err)?;
                batch.push(row);
            }
        }
        // A request's copy for the people in cc is a message of its own; the timeline shows it
        // on the addressee's line, as `(cc …)`.
        let mut mails: Vec<Event> = batch
            .iter()
            .filter(|row| !crate::actions::mail::is_copy(&row.message_id))
            .map(|row| {
                outbox_event(
                    row,
                    now,
                    row.run_id
                        .as_ref()
                        .and_then(|r| self.run_numbers.get(r).copied()),
                )
            })
            .collect();
        mails.sort_by(|a, b| (a.run, &a.summary, &a.to).cmp(&(b.run, &b.summary, &b.to)));
        self.events.extend(mails);
        Ok(!batch.is_empty())
    }

    /// New requests: schedules what the scenario says their addressees do (the first rule that
    /// matches each).
    async fn plan_answers(&mut self, now: DateTime<Utc>) -> Result<(), SimError> {
        let requests = self.store.list_requests(None, 100_000).await.map_err(err)?;
        let mut new: Vec<_> = requests
            .into_iter()
            .filter(|r| r.kind != "resolve" && self.seen_requests.insert(r.token.clone()))
            .collect();
        new.sort_by(|a, b| (a.created_at, &a.recipient).cmp(&(b.created_at, &b.recipient)));
        let scenario = self.scenario;
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
                let count = self.nth.entry((i, req.recipient.clone())).or_insert(0);
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
                self.plan(
                    at.max(now),
                    Inject::Reply {
                        token: req.token.clone(),
                        rule: i,
                    },
                );
                break;
            }
        }
        Ok(())
    }

    /// The next instant anything is due (a trigger, a run's wake time, a scripted event).
    pub(super) async fn next_instant(
        &self,
        now: DateTime<Utc>,
    ) -> Result<Option<DateTime<Utc>>, SimError> {
        let next_fire = crate::daemon::scheduler::tick(&self.engine, self.tz, now).await;
        let next_wake = self.store.next_wake().await.map_err(err)?;
        let next_inject = self.pending.iter().map(|(at, _, _)| *at).min();
        Ok([next_fire, next_wake, next_inject]
            .into_iter()
            .flatten()
            .filter(|t| *t > now)
            .min())
    }

    /// The timeline: every event in order, and each run's end state.
    pub(super) async fn finish(
        mut self,
        from: DateTime<Utc>,
        until: DateTime<Utc>,
    ) -> Result<Timeline, SimError> {
        let mut runs: Vec<(usize, Json)> = Vec::new();
        for (id, n) in &self.run_numbers {
            if let Some(run) = self.store.get_run(id).await.map_err(err)? {
                runs.push((
                    *n,
                    json!({ "run": n, "status": run.status.as_str(), "error": run.error, "started": run.scheduled_at.unwrap_or(run.created_at).to_rfc3339() }),
                ));
            }
        }
        runs.sort_by_key(|(n, _)| *n);
        let portfolio = self
            .store
            .portfolio(&crate::store::PortfolioQuery::default())
            .await
            .map_err(err)?;
        self.store.close().await;
        let order = |k: &str| match k {
            "run" => 0,
            "answer" | "resolve" => 1,
            "email" | "webhook" => 2,
            _ => 3,
        };
        self.events.sort_by_key(|e| (e.at, order(&e.kind)));
        Ok(Timeline {
            workflow: self.workflow,
            from,
            until,
            events: self.events,
            runs: runs.into_iter().map(|(_, j)| j).collect(),
            portfolio,
        })
    }
}

/// The scenario's plugin results, in front of the shipped and installed plugins loaded with no
/// grants (a plugin that needs the network does not load; the scenario gives its results).
async fn plugins(
    config: &Config,
    scenario: &Scenario,
    store: &Store,
    tz: chrono_tz::Tz,
) -> Result<ScenarioPlugins, SimError> {
    let mut plugins = ScenarioPlugins::default();
    for p in &scenario.plugin {
        let at = match &p.from {
            Some(f) => parse_time(f.get_ref(), tz, false)?,
            None => DateTime::<Utc>::MIN_UTC,
        };
        let out = serde_json::to_value(&p.output).map_err(err)?;
        plugins.results.push((p.name.clone(), at, out));
    }
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
    Ok(plugins)
}
