//! The JSON API under `/api/`, webhook triggers (`POST /hooks/{workflow}`), `/readyz` and
//! `/metrics`. Every state-changing call is written to the audit log with the caller's token name.

use std::fmt::Write as _;

use axum::body::Bytes;
use axum::extract::rejection::QueryRejection;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::Value as Json;

use super::{AppState, Role, api_error, authorize};
use crate::engine::{RunRequest, TriggerError};
use crate::store::{
    AuditRow, CancelOutcome, Created, EventRow, OutboxRow, RequestRow, RunFilter, RunRow,
    RunStatus, StepRow,
};

fn ok<T: Serialize>(status: StatusCode, body: T) -> Response {
    (status, axum::Json(body)).into_response()
}

// The bodies the API answers with. The OpenAPI document's schemas are derived from these types
// (see `openapi.rs`), so the document describes exactly what the handlers serialize.

/// Every refusal and failure of the API has this body.
#[derive(Debug, Serialize, Deserialize, JsonSchema)]
pub struct ApiError {
    /// What went wrong, for people.
    pub error: String,
}

/// `GET /readyz`.
#[derive(Debug, Serialize, JsonSchema)]
pub struct Readiness {
    /// `ok`, or why the database does not answer.
    pub database: String,
    /// Workflows loaded (none while the catalog is not loaded).
    pub workflows: Option<usize>,
}

/// A run was started (or, for the same call again, found).
#[derive(Debug, Serialize, JsonSchema)]
pub struct RunStarted {
    /// The run's id: `GET /api/runs/{id}`.
    pub run_id: String,
    /// The same call (signature or `Idempotency-Key`) started this run before.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub duplicate: bool,
}

/// A state change that was made.
#[derive(Debug, Serialize, JsonSchema)]
pub struct Done {
    /// `cancelled`, `cancel_requested`, `resolved`, `pending`, `retrying`, `acknowledged`,
    /// `already_acknowledged`.
    pub status: String,
    /// Steps given another attempt (retry).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub steps: Option<u64>,
    /// The request's number (acknowledgements).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tag: Option<i64>,
}

impl Done {
    pub(super) fn status(status: &str) -> Self {
        Self {
            status: status.into(),
            steps: None,
            tag: None,
        }
    }
}

/// `GET /api/workflows`.
#[derive(Debug, Serialize, JsonSchema)]
pub struct WorkflowList {
    /// The loaded workflows.
    pub workflows: Vec<WorkflowSummary>,
    /// Files in the workflow directory that do not load, with where and why.
    pub invalid: Vec<InvalidFile>,
}

/// One loaded workflow.
#[derive(Debug, Serialize, JsonSchema)]
pub struct WorkflowSummary {
    /// Its id (the file name without `.toml`).
    pub id: String,
    /// Its name.
    pub name: String,
    /// Its description.
    pub description: String,
    /// The first 12 hex digits of its content hash.
    pub version: String,
    /// The next scheduled fire (RFC 3339), if it has a schedule.
    pub next_fire: Option<String>,
    /// Whether it has a webhook trigger (`POST /hooks/{id}`).
    pub webhook: bool,
    /// Its newest run.
    pub last_run: Option<LastRun>,
}

/// A workflow's newest run.
#[derive(Debug, Serialize, JsonSchema)]
pub struct LastRun {
    /// Run id.
    pub id: String,
    /// Its status.
    pub status: RunStatus,
    /// Why it failed, if it did.
    pub error: Option<String>,
}

/// A workflow file that does not load.
#[derive(Debug, Serialize, JsonSchema)]
pub struct InvalidFile {
    /// The file.
    pub path: String,
    /// Line (from 1).
    pub line: usize,
    /// Column (from 1).
    pub col: usize,
    /// What is wrong.
    pub message: String,
}

/// `GET /api/workflows/{id}`.
#[derive(Debug, Serialize, JsonSchema)]
pub struct WorkflowDetail {
    /// Its id.
    pub id: String,
    /// Its name.
    pub name: String,
    /// Its description.
    pub description: String,
    /// Its content hash (hex).
    pub version: String,
    /// The file it was loaded from.
    pub path: String,
    /// Its triggers, as the workflow format writes them.
    pub triggers: Json,
    /// Its webhook trigger, if any.
    pub webhook: Json,
    /// Declared inputs with their defaults.
    pub inputs: serde_json::Map<String, Json>,
    /// Its steps.
    pub steps: Vec<StepSummary>,
    /// The next five scheduled fires (RFC 3339).
    pub next_fires: Vec<String>,
    /// The newest failed run among the recent ones.
    pub last_error: Option<LastError>,
    /// Up to 20 recent runs, newest first.
    pub recent_runs: Vec<RunRow>,
}

/// A step of a workflow.
#[derive(Debug, Serialize, JsonSchema)]
pub struct StepSummary {
    /// Step id.
    pub id: String,
    /// Its action (`email`, `request`, `plugin:NAME`, …).
    pub action: String,
}

/// A workflow's newest failure.
#[derive(Debug, Serialize, JsonSchema)]
pub struct LastError {
    /// The failed run.
    pub run_id: String,
    /// Why.
    pub error: Option<String>,
    /// When.
    pub finished_at: Option<chrono::DateTime<chrono::Utc>>,
}

/// `GET /api/runs`.
#[derive(Debug, Serialize, JsonSchema)]
pub struct RunList {
    /// Newest first.
    pub runs: Vec<RunRow>,
}

/// `GET /api/runs/{id}`.
#[derive(Debug, Serialize, JsonSchema)]
pub struct RunDetail {
    /// The run.
    pub run: RunRow,
    /// Its steps (and foreach items).
    pub steps: Vec<StepRow>,
    /// Its events, oldest first.
    pub events: Vec<EventRow>,
}

/// `GET /api/requests`.
#[derive(Debug, Serialize, JsonSchema)]
pub struct RequestList {
    /// Newest first.
    pub requests: Vec<RequestRow>,
}

/// `GET /api/outbox`.
#[derive(Debug, Serialize, JsonSchema)]
pub struct OutboxList {
    /// Newest first.
    pub messages: Vec<OutboxRow>,
}

/// `GET /api/audit`.
#[derive(Debug, Serialize, JsonSchema)]
pub struct AuditList {
    /// Newest first.
    pub entries: Vec<AuditRow>,
}

/// `POST /inbound/email`.
#[derive(Debug, Serialize, JsonSchema)]
pub struct InboundReceived {
    /// The stored message (absent for a duplicate).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    /// `done`, `quarantined`, `pending` (stored, processed later) or `duplicate`.
    pub status: String,
    /// `answer`, `incomplete_answer`, `auto_reply`, `bounce`, `unmatched`, `wrong_sender`, …
    #[serde(skip_serializing_if = "Option::is_none")]
    pub outcome: Option<String>,
    /// Why, for people.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
}

/// Most items a listing returns.
const MAX_LIMIT: i64 = 1000;

/// A request the API answers `400`: the message says what is wrong with it.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub(super) struct BadRequest(pub(super) String);

/// The `limit` query parameter: 1 to 1000.
fn limit(given: Option<i64>, default: i64) -> Result<i64, BadRequest> {
    match given {
        None => Ok(default),
        Some(n) if (1..=MAX_LIMIT).contains(&n) => Ok(n),
        Some(n) => Err(BadRequest(format!(
            "limit must be between 1 and {MAX_LIMIT}, got {n}"
        ))),
    }
}

/// The query string, or why it does not parse.
fn query<T>(q: Result<Query<T>, QueryRejection>) -> Result<T, BadRequest> {
    q.map(|Query(q)| q).map_err(|e| BadRequest(e.body_text()))
}

fn bad_request(e: BadRequest) -> Response {
    api_error(StatusCode::BAD_REQUEST, &e.0)
}

async fn audit(state: &AppState, actor: &str, action: &str, target: Option<&str>, detail: &str) {
    if let Err(e) = state
        .store
        .audit(state.clock.now(), actor, action, target, Some(detail))
        .await
    {
        tracing::error!(error = %e, actor, action, "audit log write failed");
    }
}

/// `GET /readyz`: the database answers and a catalog is loaded.
pub(super) async fn readyz(State(state): State<AppState>) -> Response {
    // A database that has gone away may leave the connection attempt hanging: readiness is
    // answered within two seconds either way.
    let db = match tokio::time::timeout(std::time::Duration::from_secs(2), state.store.ping()).await
    {
        Ok(r) => r.map_err(|e| e.to_string()),
        Err(_) => Err("no answer within 2 s".to_string()),
    };
    let workflows = state
        .engine
        .as_ref()
        .map(|e| e.registry().catalog().workflows.len());
    match (db, workflows) {
        (Ok(()), Some(n)) => ok(
            StatusCode::OK,
            Readiness {
                database: "ok".into(),
                workflows: Some(n),
            },
        ),
        (Err(e), _) => ok(
            StatusCode::SERVICE_UNAVAILABLE,
            Readiness {
                database: e,
                workflows: None,
            },
        ),
        (Ok(()), None) => ok(
            StatusCode::SERVICE_UNAVAILABLE,
            Readiness {
                database: "ok".into(),
                workflows: None,
            },
        ),
    }
}

/// `GET /metrics`: Prometheus text format.
pub(super) async fn metrics(State(state): State<AppState>) -> Response {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "# HELP pmoflow_runs Runs in the database by workflow and status.\n# TYPE pmoflow_runs gauge"
    );
    if let Ok(counts) = state.store.run_counts().await {
        for (wf, status, n) in counts {
            let _ = writeln!(
                out,
                "pmoflow_runs{} {n}",
                crate::metrics::label_text(&[("workflow", wf), ("status", status)], None)
            );
        }
    }
    let _ = writeln!(
        out,
        "# HELP pmoflow_outbox_messages Outgoing messages by status (pending = depth, dead = dead letters).\n# TYPE pmoflow_outbox_messages gauge"
    );
    for status in ["pending", "sent", "dead"] {
        if let Ok(n) = state.store.count_outbox(status).await {
            let _ = writeln!(out, "pmoflow_outbox_messages{{status=\"{status}\"}} {n}");
        }
    }
    state.services.metrics.render(&mut out);
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        out,
    )
        .into_response()
}

fn trigger_error(e: &TriggerError) -> Response {
    match e {
        TriggerError::UnknownWorkflow(_) => api_error(StatusCode::NOT_FOUND, &e.to_string()),
        TriggerError::UnknownInput { .. } | TriggerError::NotAnObject(_) => {
            api_error(StatusCode::BAD_REQUEST, &e.to_string())
        }
        TriggerError::Store(_) => api_error(StatusCode::SERVICE_UNAVAILABLE, &e.to_string()),
    }
}

/// `POST /hooks/{workflow}`: starts a run of a workflow with `[[triggers]] webhook = true`. The
/// JSON body is the inputs. Signed (`X-Pmoflow-Timestamp` + `X-Pmoflow-Signature`, the scheme of
/// outgoing webhooks, with the trigger's `secret`) or a bearer token with the operator role. A
/// signed request outside the 5-minute window is refused; the same signed request (or the same
/// `Idempotency-Key`) again returns the run it started.
pub(super) async fn hook(
    State(state): State<AppState>,
    Path(workflow): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let Some(engine) = state.engine.clone() else {
        return api_error(StatusCode::SERVICE_UNAVAILABLE, "no engine in this process");
    };
    let catalog = engine.registry().catalog();
    let Some(hook) = catalog
        .workflows
        .get(&workflow)
        .and_then(|wf| wf.webhook.clone())
    else {
        return api_error(
            StatusCode::NOT_FOUND,
            &format!("no workflow `{workflow}` with a webhook trigger"),
        );
    };
    let signature = headers
        .get(crate::message::webhook::SIGNATURE_HEADER)
        .and_then(|v| v.to_str().ok());
    let (actor, dedup) = match signature {
        Some(sig) => {
            let Some(secret) = hook
                .secret
                .as_ref()
                .and_then(|name| state.services.secrets.get(name))
            else {
                tracing::warn!(
                    workflow,
                    "signed webhook call, but the trigger has no usable secret"
                );
                return api_error(
                    StatusCode::UNAUTHORIZED,
                    "this workflow does not accept signed calls (no secret configured)",
                );
            };
            let ts = headers
                .get(crate::message::webhook::TIMESTAMP_HEADER)
                .and_then(|v| v.to_str().ok())
                .unwrap_or("");
            if let Err(e) = crate::message::webhook::verify(
                secret.expose().as_bytes(),
                ts,
                &body,
                sig,
                state.clock.now().timestamp(),
                crate::message::webhook::DEFAULT_TOLERANCE_SECS,
            ) {
                tracing::warn!(workflow, reason = %e, "webhook call refused");
                return api_error(StatusCode::UNAUTHORIZED, &e.to_string());
            }
            ("signature".to_string(), Some(format!("hook:sig:{sig}")))
        }
        None => match authorize(&state, &headers, Role::Operator).await {
            Ok((name, _)) => (name, None),
            Err(r) => return r,
        },
    };
    let dedup = headers
        .get("idempotency-key")
        .and_then(|v| v.to_str().ok())
        .map(|k| format!("hook:key:{k}"))
        .or(dedup);
    let mut inputs = Json::Object(hook.inputs.clone());
    if !body.is_empty() {
        match serde_json::from_slice::<Json>(&body) {
            Ok(Json::Object(m)) => {
                if let Some(obj) = inputs.as_object_mut() {
                    obj.extend(m);
                }
            }
            Ok(other) => {
                return api_error(
                    StatusCode::BAD_REQUEST,
                    &format!("the body must be a JSON object of inputs, got {other}"),
                );
            }
            Err(e) => {
                return api_error(StatusCode::BAD_REQUEST, &format!("invalid JSON: {e}"));
            }
        }
    }
    let req = RunRequest {
        trigger_kind: "webhook",
        dedup_key: dedup.as_deref(),
        ..RunRequest::manual(&inputs)
    };
    match engine.trigger(&workflow, &req).await {
        Ok(Created::New(id)) => {
            audit(&state, &actor, "hook", Some(&id), &workflow).await;
            ok(
                StatusCode::ACCEPTED,
                RunStarted {
                    run_id: id,
                    duplicate: false,
                },
            )
        }
        Ok(Created::Existing(id)) => ok(
            StatusCode::OK,
            RunStarted {
                run_id: id,
                duplicate: true,
            },
        ),
        Err(e) => trigger_error(&e),
    }
}

/// `GET /api/workflows`.
pub(super) async fn workflows(State(state): State<AppState>, headers: HeaderMap) -> Response {
    if let Err(r) = authorize(&state, &headers, Role::Viewer).await {
        return r;
    }
    let Some(engine) = &state.engine else {
        return api_error(StatusCode::SERVICE_UNAVAILABLE, "no engine in this process");
    };
    let catalog = engine.registry().catalog();
    let now = state.clock.now();
    let tz = engine.config().timezone;
    let mut list = Vec::new();
    for wf in catalog.workflows.values() {
        let next =
            crate::workflow::schedule::next_fires(&wf.triggers, tz, &catalog.calendar, now, 1)
                .first()
                .map(|f| f.to_rfc3339());
        let last = state.store.last_run(&wf.id).await.ok().flatten();
        list.push(WorkflowSummary {
            id: wf.id.clone(),
            name: wf.name.clone(),
            description: wf.description.clone(),
            version: wf.hash.chars().take(12).collect(),
            next_fire: next,
            webhook: wf.webhook.is_some(),
            last_run: last.map(|r| LastRun {
                id: r.id,
                status: r.status,
                error: r.error,
            }),
        });
    }
    let invalid = catalog
        .diagnostics
        .iter()
        .map(|d| InvalidFile {
            path: d.path.display().to_string(),
            line: d.line,
            col: d.col,
            message: d.message.clone(),
        })
        .collect();
    ok(
        StatusCode::OK,
        WorkflowList {
            workflows: list,
            invalid,
        },
    )
}

/// `GET /api/workflows/{id}`: one workflow with its next fires, triggers and last error.
pub(super) async fn workflow(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Response {
    if let Err(r) = authorize(&state, &headers, Role::Viewer).await {
        return r;
    }
    let Some(engine) = &state.engine else {
        return api_error(StatusCode::SERVICE_UNAVAILABLE, "no engine in this process");
    };
    let catalog = engine.registry().catalog();
    let Some(wf) = catalog.workflows.get(&id) else {
        return api_error(StatusCode::NOT_FOUND, &format!("no workflow `{id}`"));
    };
    let tz = engine.config().timezone;
    let now = state.clock.now();
    let fires: Vec<String> =
        crate::workflow::schedule::next_fires(&wf.triggers, tz, &catalog.calendar, now, 5)
            .iter()
            .map(|f| f.to_rfc3339())
            .collect();
    let runs = state
        .store
        .list_runs(&RunFilter {
            workflow_id: Some(id.clone()),
            status: None,
            limit: 20,
        })
        .await
        .unwrap_or_default();
    let last_error = runs
        .iter()
        .find(|r| r.status == RunStatus::Failed)
        .map(|r| LastError {
            run_id: r.id.clone(),
            error: r.error.clone(),
            finished_at: r.finished_at,
        });
    ok(
        StatusCode::OK,
        WorkflowDetail {
            id: wf.id.clone(),
            name: wf.name.clone(),
            description: wf.description.clone(),
            version: wf.hash.clone(),
            path: wf.path.display().to_string(),
            triggers: serde_json::to_value(&wf.triggers).unwrap_or_default(),
            webhook: serde_json::to_value(&wf.webhook).unwrap_or_default(),
            inputs: wf.inputs.clone(),
            steps: wf
                .steps
                .iter()
                .map(|s| StepSummary {
                    id: s.id.clone(),
                    action: s.action.name().to_string(),
                })
                .collect(),
            next_fires: fires,
            last_error,
            recent_runs: runs,
        },
    )
}

/// Query of `GET /api/runs`.
#[derive(Debug, Deserialize, JsonSchema)]
pub struct RunsQuery {
    /// Only runs of this workflow.
    workflow: Option<String>,
    /// Only runs in this status.
    status: Option<RunStatus>,
    /// At most this many (default 50).
    #[schemars(range(min = 1, max = 1000))]
    limit: Option<i64>,
}

/// `GET /api/runs`.
pub(super) async fn runs(
    State(state): State<AppState>,
    headers: HeaderMap,
    q: Result<Query<RunsQuery>, QueryRejection>,
) -> Response {
    if let Err(r) = authorize(&state, &headers, Role::Viewer).await {
        return r;
    }
    let q = match query(q) {
        Ok(q) => q,
        Err(m) => return bad_request(m),
    };
    let limit = match limit(q.limit, 50) {
        Ok(n) => n,
        Err(m) => return bad_request(m),
    };
    let filter = RunFilter {
        workflow_id: q.workflow,
        status: q.status,
        limit,
    };
    match state.store.list_runs(&filter).await {
        Ok(runs) => ok(StatusCode::OK, RunList { runs }),
        Err(e) => api_error(StatusCode::SERVICE_UNAVAILABLE, &e.to_string()),
    }
}

/// `GET /api/runs/{id}`: the run, its steps and events.
pub(super) async fn run(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Response {
    if let Err(r) = authorize(&state, &headers, Role::Viewer).await {
        return r;
    }
    let run = match state.store.get_run(&id).await {
        Ok(Some(r)) => r,
        Ok(None) => return api_error(StatusCode::NOT_FOUND, &format!("no run {id}")),
        Err(e) => return api_error(StatusCode::SERVICE_UNAVAILABLE, &e.to_string()),
    };
    let steps = state.store.get_steps(&id).await.unwrap_or_default();
    let events = state.store.get_events(&id).await.unwrap_or_default();
    ok(StatusCode::OK, RunDetail { run, steps, events })
}

/// Body of `POST /api/runs`.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct TriggerBody {
    /// The workflow's id.
    pub workflow: String,
    /// Inputs overriding the workflow's defaults; only declared inputs are accepted.
    #[serde(default = "empty_object")]
    #[schemars(with = "serde_json::Map<String, Json>")]
    pub inputs: Json,
}

fn empty_object() -> Json {
    Json::Object(serde_json::Map::new())
}

/// `POST /api/runs`: starts a run (operator).
pub(super) async fn trigger(
    State(state): State<AppState>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let (actor, _) = match authorize(&state, &headers, Role::Operator).await {
        Ok(w) => w,
        Err(r) => return r,
    };
    let body: TriggerBody = match serde_json::from_slice(&body) {
        Ok(b) => b,
        Err(e) => {
            return api_error(
                StatusCode::BAD_REQUEST,
                &format!("body must be {{\"workflow\": \"…\", \"inputs\": {{…}}}}: {e}"),
            );
        }
    };
    if !body.inputs.is_object() {
        return api_error(
            StatusCode::BAD_REQUEST,
            &format!("inputs must be a JSON object, got {}", body.inputs),
        );
    }
    let Some(engine) = &state.engine else {
        return api_error(StatusCode::SERVICE_UNAVAILABLE, "no engine in this process");
    };
    let req = RunRequest {
        trigger_kind: "api",
        ..RunRequest::manual(&body.inputs)
    };
    match engine.trigger(&body.workflow, &req).await {
        Ok(created) => {
            let id = created.id().to_string();
            audit(&state, &actor, "trigger", Some(&id), &body.workflow).await;
            ok(
                StatusCode::CREATED,
                RunStarted {
                    run_id: id,
                    duplicate: false,
                },
            )
        }
        Err(e) => trigger_error(&e),
    }
}

/// `POST /api/runs/{id}/cancel` (operator).
pub(super) async fn cancel(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Response {
    let (actor, _) = match authorize(&state, &headers, Role::Operator).await {
        Ok(w) => w,
        Err(r) => return r,
    };
    match state
        .store
        .cancel_run(&id, state.clock.now(), &format!("api:{actor}"))
        .await
    {
        Ok(CancelOutcome::Cancelled) => {
            audit(&state, &actor, "cancel", Some(&id), "cancelled").await;
            ok(StatusCode::OK, Done::status("cancelled"))
        }
        Ok(CancelOutcome::Requested) => {
            audit(&state, &actor, "cancel", Some(&id), "requested").await;
            ok(StatusCode::ACCEPTED, Done::status("cancel_requested"))
        }
        Ok(CancelOutcome::AlreadyFinished) => {
            api_error(StatusCode::CONFLICT, "the run has already finished")
        }
        Ok(CancelOutcome::NotFound) => api_error(StatusCode::NOT_FOUND, &format!("no run {id}")),
        Err(e) => api_error(StatusCode::SERVICE_UNAVAILABLE, &e.to_string()),
    }
}

/// Body of `POST /api/runs/{id}/resolve` (optional).
#[derive(Debug, Deserialize, Default, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ResolveBody {
    /// What was done, for the 最終報.
    #[serde(default)]
    pub note: String,
    /// Who resolved it (default: `api:` and the token's name).
    pub by: Option<String>,
}

/// `POST /api/runs/{id}/resolve` (operator): ends the run's escalation with a 最終報.
pub(super) async fn resolve(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(id): Path<String>,
    body: axum::body::Bytes,
) -> Response {
    let (actor, _) = match authorize(&state, &headers, Role::Operator).await {
        Ok(w) => w,
        Err(r) => return r,
    };
    let body: ResolveBody = if body.iter().all(u8::is_ascii_whitespace) {
        ResolveBody::default()
    } else {
        match serde_json::from_slice(&body) {
            Ok(b) => b,
            Err(e) => {
                return api_error(
                    StatusCode::BAD_REQUEST,
                    &format!("body must be {{\"note\": \"…\", \"by\": \"…\"}}: {e}"),
                );
            }
        }
    };
    let by = body.by.unwrap_or_else(|| format!("api:{actor}"));
    match state
        .store
        .resolve_incident(&id, state.clock.now(), "api", &by, &body.note)
        .await
    {
        Ok(true) => {
            if let Some(e) = &state.engine {
                e.wake();
            }
            audit(&state, &actor, "resolve", Some(&id), &body.note).await;
            ok(StatusCode::OK, Done::status("resolved"))
        }
        Ok(false) => match state.store.get_run(&id).await {
            Ok(Some(_)) => api_error(
                StatusCode::CONFLICT,
                &format!(
                    "run {id} has no open escalation (not an escalation, or already resolved)"
                ),
            ),
            Ok(None) => api_error(StatusCode::NOT_FOUND, &format!("no run {id}")),
            Err(e) => api_error(StatusCode::SERVICE_UNAVAILABLE, &e.to_string()),
        },
        Err(e) => api_error(StatusCode::SERVICE_UNAVAILABLE, &e.to_string()),
    }
}

/// `POST /api/runs/{id}/retry` (operator): a failed run's failed steps get another attempt.
pub(super) async fn retry(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Response {
    let (actor, _) = match authorize(&state, &headers, Role::Operator).await {
        Ok(w) => w,
        Err(r) => return r,
    };
    match state
        .store
        .retry_run(&id, state.clock.now(), &format!("api:{actor}"))
        .await
    {
        Ok(Some(n)) => {
            audit(&state, &actor, "retry", Some(&id), &format!("{n} step(s)")).await;
            if let Some(e) = &state.engine {
                e.wake();
            }
            ok(
                StatusCode::ACCEPTED,
                Done {
                    steps: Some(n),
                    ..Done::status("retrying")
                },
            )
        }
        Ok(None) => match state.store.get_run(&id).await {
            Ok(Some(_)) => api_error(StatusCode::CONFLICT, "only a failed run can be retried"),
            Ok(None) => api_error(StatusCode::NOT_FOUND, &format!("no run {id}")),
            Err(e) => api_error(StatusCode::SERVICE_UNAVAILABLE, &e.to_string()),
        },
        Err(e) => api_error(StatusCode::SERVICE_UNAVAILABLE, &e.to_string()),
    }
}

/// States of a request.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum RequestState {
    /// Waiting for an answer.
    Open,
    /// Answered.
    Answered,
    /// The mail bounced.
    Bounced,
    /// Its step finished.
    Closed,
}

/// Query of `GET /api/requests`.
#[derive(Debug, Deserialize, JsonSchema)]
pub struct RequestsQuery {
    /// Only requests in this state.
    status: Option<RequestState>,
    /// At most this many (default 100).
    #[schemars(range(min = 1, max = 1000))]
    limit: Option<i64>,
}

/// States of an outgoing message.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum OutboxState {
    /// Not delivered yet.
    Pending,
    /// Accepted by the server.
    Sent,
    /// Given up (a dead letter).
    Dead,
}

/// Query of `GET /api/outbox`.
#[derive(Debug, Deserialize, JsonSchema)]
pub struct OutboxQuery {
    /// Only messages in this state.
    status: Option<OutboxState>,
    /// At most this many (default 100).
    #[schemars(range(min = 1, max = 1000))]
    limit: Option<i64>,
}

/// Query of `GET /api/audit`.
#[derive(Debug, Deserialize, JsonSchema)]
pub struct AuditQuery {
    /// At most this many (default 100).
    #[schemars(range(min = 1, max = 1000))]
    limit: Option<i64>,
}

fn state_name<T: Serialize>(s: Option<T>) -> Option<String> {
    s.and_then(|s| serde_json::to_value(s).ok())
        .and_then(|v| v.as_str().map(str::to_string))
}

/// `GET /api/requests`: who was asked, who has answered.
pub(super) async fn requests(
    State(state): State<AppState>,
    headers: HeaderMap,
    q: Result<Query<RequestsQuery>, QueryRejection>,
) -> Response {
    if let Err(r) = authorize(&state, &headers, Role::Viewer).await {
        return r;
    }
    let (status, limit) =
        match query(q).and_then(|q| Ok((state_name(q.status), limit(q.limit, 100)?))) {
            Ok(v) => v,
            Err(m) => return bad_request(m),
        };
    match state.store.list_requests(status.as_deref(), limit).await {
        Ok(requests) => ok(StatusCode::OK, RequestList { requests }),
        Err(e) => api_error(StatusCode::SERVICE_UNAVAILABLE, &e.to_string()),
    }
}

/// `GET /api/cluster`: the daemons sharing the database.
pub(super) async fn cluster(State(state): State<AppState>, headers: HeaderMap) -> Response {
    if let Err(r) = authorize(&state, &headers, Role::Viewer).await {
        return r;
    }
    match crate::cluster::view(&state.store, state.clock.now(), state.lease()).await {
        Ok(view) => ok(StatusCode::OK, view),
        Err(e) => api_error(StatusCode::SERVICE_UNAVAILABLE, &e.to_string()),
    }
}

/// `GET /api/outbox`.
pub(super) async fn outbox(
    State(state): State<AppState>,
    headers: HeaderMap,
    q: Result<Query<OutboxQuery>, QueryRejection>,
) -> Response {
    if let Err(r) = authorize(&state, &headers, Role::Viewer).await {
        return r;
    }
    let (status, limit) =
        match query(q).and_then(|q| Ok((state_name(q.status), limit(q.limit, 100)?))) {
            Ok(v) => v,
            Err(m) => return bad_request(m),
        };
    match state.store.list_outbox(status.as_deref(), limit).await {
        Ok(messages) => ok(StatusCode::OK, OutboxList { messages }),
        Err(e) => api_error(StatusCode::SERVICE_UNAVAILABLE, &e.to_string()),
    }
}

/// `POST /api/outbox/{id}/retry` (operator): a dead letter goes back to the queue.
pub(super) async fn outbox_retry(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Response {
    let (actor, _) = match authorize(&state, &headers, Role::Operator).await {
        Ok(w) => w,
        Err(r) => return r,
    };
    match state.store.retry_outbox(&id, state.clock.now()).await {
        Ok(true) => {
            audit(&state, &actor, "retry_outbox", Some(&id), "queued again").await;
            if let Some(e) = &state.engine {
                e.outbox_wake().notify_one();
            }
            ok(StatusCode::OK, Done::status("pending"))
        }
        Ok(false) => api_error(
            StatusCode::CONFLICT,
            &format!("message {id} does not exist or is not dead"),
        ),
        Err(e) => api_error(StatusCode::SERVICE_UNAVAILABLE, &e.to_string()),
    }
}

/// `GET /api/audit` (admin).
pub(super) async fn audit_log(
    State(state): State<AppState>,
    headers: HeaderMap,
    q: Result<Query<AuditQuery>, QueryRejection>,
) -> Response {
    if let Err(r) = authorize(&state, &headers, Role::Admin).await {
        return r;
    }
    let limit = match query(q).and_then(|q| limit(q.limit, 100)) {
        Ok(n) => n,
        Err(m) => return bad_request(m),
    };
    match state.store.list_audit(limit).await {
        Ok(entries) => ok(StatusCode::OK, AuditList { entries }),
        Err(e) => api_error(StatusCode::SERVICE_UNAVAILABLE, &e.to_string()),
    }
}
