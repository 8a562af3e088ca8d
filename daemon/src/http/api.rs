//! The JSON API under `/api/`, webhook triggers (`POST /hooks/{workflow}`), `/readyz` and
//! `/metrics`. Every state-changing call is written to the audit log with the caller's token name.

use std::fmt::Write as _;

use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::{Value as Json, json};

use super::{AppState, Role, api_error, authorize};
use crate::engine::{RunRequest, TriggerError};
use crate::store::{CancelOutcome, Created, RunFilter, RunStatus};

fn ok(status: StatusCode, body: Json) -> Response {
    (status, axum::Json(body)).into_response()
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
    let db = state.store.ping().await;
    let workflows = state
        .engine
        .as_ref()
        .map(|e| e.registry().catalog().workflows.len());
    match (db, workflows) {
        (Ok(()), Some(n)) => ok(StatusCode::OK, json!({ "database": "ok", "workflows": n })),
        (Err(e), _) => ok(
            StatusCode::SERVICE_UNAVAILABLE,
            json!({ "database": e.to_string() }),
        ),
        (Ok(()), None) => ok(
            StatusCode::SERVICE_UNAVAILABLE,
            json!({ "database": "ok", "workflows": "not loaded" }),
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
            ok(StatusCode::ACCEPTED, json!({ "run_id": id }))
        }
        Ok(Created::Existing(id)) => ok(StatusCode::OK, json!({ "run_id": id, "duplicate": true })),
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
        list.push(json!({
            "id": wf.id,
            "name": wf.name,
            "description": wf.description,
            "version": &wf.hash[..12],
            "next_fire": next,
            "webhook": wf.webhook.is_some(),
            "last_run": last.map(|r| json!({ "id": r.id, "status": r.status, "error": r.error })),
        }));
    }
    let invalid: Vec<Json> = catalog
        .diagnostics
        .iter()
        .map(|d| json!({ "path": d.path, "line": d.line, "col": d.col, "message": d.message }))
        .collect();
    ok(
        StatusCode::OK,
        json!({ "workflows": list, "invalid": invalid }),
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
        .map(|r| json!({ "run_id": r.id, "error": r.error, "finished_at": r.finished_at }));
    ok(
        StatusCode::OK,
        json!({
            "id": wf.id, "name": wf.name, "description": wf.description, "version": wf.hash,
            "path": wf.path, "triggers": wf.triggers, "webhook": wf.webhook,
            "inputs": wf.inputs, "steps": wf.steps.iter().map(|s| json!({ "id": s.id, "action": s.action.name() })).collect::<Vec<_>>(),
            "next_fires": fires, "last_error": last_error, "recent_runs": runs,
        }),
    )
}

/// Query of `GET /api/runs`.
#[derive(serde::Deserialize)]
pub(super) struct RunsQuery {
    workflow: Option<String>,
    status: Option<String>,
    limit: Option<i64>,
}

/// `GET /api/runs`.
pub(super) async fn runs(
    State(state): State<AppState>,
    headers: HeaderMap,
    Query(q): Query<RunsQuery>,
) -> Response {
    if let Err(r) = authorize(&state, &headers, Role::Viewer).await {
        return r;
    }
    let status = match q.status.as_deref().map(str::parse::<RunStatus>) {
        None => None,
        Some(Ok(s)) => Some(s),
        Some(Err(_)) => {
            return api_error(
                StatusCode::BAD_REQUEST,
                "unknown status (pending, running, waiting, succeeded, failed, cancelled, queued, skipped)",
            );
        }
    };
    let filter = RunFilter {
        workflow_id: q.workflow,
        status,
        limit: q.limit.unwrap_or(50).clamp(1, 1000),
    };
    match state.store.list_runs(&filter).await {
        Ok(rows) => ok(StatusCode::OK, json!({ "runs": rows })),
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
    ok(
        StatusCode::OK,
        json!({ "run": run, "steps": steps, "events": events }),
    )
}

/// Body of `POST /api/runs`.
#[derive(serde::Deserialize)]
pub(super) struct TriggerBody {
    workflow: String,
    #[serde(default)]
    inputs: Json,
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
            ok(StatusCode::CREATED, json!({ "run_id": id }))
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
            ok(StatusCode::OK, json!({ "status": "cancelled" }))
        }
        Ok(CancelOutcome::Requested) => {
            audit(&state, &actor, "cancel", Some(&id), "requested").await;
            ok(
                StatusCode::ACCEPTED,
                json!({ "status": "cancel_requested" }),
            )
        }
        Ok(CancelOutcome::AlreadyFinished) => {
            api_error(StatusCode::CONFLICT, "the run has already finished")
        }
        Ok(CancelOutcome::NotFound) => api_error(StatusCode::NOT_FOUND, &format!("no run {id}")),
        Err(e) => api_error(StatusCode::SERVICE_UNAVAILABLE, &e.to_string()),
    }
}

#[derive(serde::Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct ResolveBody {
    #[serde(default)]
    note: String,
    by: Option<String>,
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
            ok(StatusCode::OK, json!({ "status": "resolved" }))
        }
        Ok(false) => api_error(
            StatusCode::NOT_FOUND,
            &format!("run {id} has no open escalation"),
        ),
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
                json!({ "status": "retrying", "steps": n }),
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

/// Query with a status and a limit.
#[derive(serde::Deserialize)]
pub(super) struct ListQuery {
    status: Option<String>,
    limit: Option<i64>,
}

/// `GET /api/requests`: who was asked, who has answered.
pub(super) async fn requests(
    State(state): State<AppState>,
    headers: HeaderMap,
    Query(q): Query<ListQuery>,
) -> Response {
    if let Err(r) = authorize(&state, &headers, Role::Viewer).await {
        return r;
    }
    if let Some(s) = &q.status
        && !matches!(s.as_str(), "open" | "answered" | "bounced" | "closed")
    {
        return api_error(
            StatusCode::BAD_REQUEST,
            "unknown status (open, answered, bounced, closed)",
        );
    }
    let limit = q.limit.unwrap_or(100).clamp(1, 1000);
    match state.store.list_requests(q.status.as_deref(), limit).await {
        Ok(rows) => ok(StatusCode::OK, json!({ "requests": rows })),
        Err(e) => api_error(StatusCode::SERVICE_UNAVAILABLE, &e.to_string()),
    }
}

/// `GET /api/cluster`: the daemons sharing the database.
pub(super) async fn cluster(State(state): State<AppState>, headers: HeaderMap) -> Response {
    if let Err(r) = authorize(&state, &headers, Role::Viewer).await {
        return r;
    }
    match crate::cluster::view(&state.store, state.clock.now(), state.lease()).await {
        Ok(view) => ok(
            StatusCode::OK,
            serde_json::to_value(&view).unwrap_or_default(),
        ),
        Err(e) => api_error(StatusCode::SERVICE_UNAVAILABLE, &e.to_string()),
    }
}

/// `GET /api/outbox`.
pub(super) async fn outbox(
    State(state): State<AppState>,
    headers: HeaderMap,
    Query(q): Query<ListQuery>,
) -> Response {
    if let Err(r) = authorize(&state, &headers, Role::Viewer).await {
        return r;
    }
    if let Some(s) = &q.status
        && !matches!(s.as_str(), "pending" | "sent" | "dead")
    {
        return api_error(
            StatusCode::BAD_REQUEST,
            "unknown status (pending, sent, dead)",
        );
    }
    let limit = q.limit.unwrap_or(100).clamp(1, 1000);
    match state.store.list_outbox(q.status.as_deref(), limit).await {
        Ok(rows) => ok(StatusCode::OK, json!({ "messages": rows })),
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
            ok(StatusCode::OK, json!({ "status": "pending" }))
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
    Query(q): Query<ListQuery>,
) -> Response {
    if let Err(r) = authorize(&state, &headers, Role::Admin).await {
        return r;
    }
    match state
        .store
        .list_audit(q.limit.unwrap_or(100).clamp(1, 1000))
        .await
    {
        Ok(rows) => ok(StatusCode::OK, json!({ "entries": rows })),
        Err(e) => api_error(StatusCode::SERVICE_UNAVAILABLE, &e.to_string()),
    }
}
