//! The JSON API under `/api/`, webhook triggers (`POST /hooks/{workflow}`), `/readyz` and
//! `/metrics`. Every state-changing call is written to the audit log with the caller's token name.
//!
//! Here: the bodies the API answers with (the OpenAPI schemas derive from them), the shared
//! helpers, `/readyz` and `/metrics`; the handlers by resource in the submodules.

mod hooks;
mod lists;
mod runs;
mod workflows;

pub(in crate::http) use hooks::*;
pub(in crate::http) use lists::*;
pub(in crate::http) use runs::*;
pub(in crate::http) use workflows::*;

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
