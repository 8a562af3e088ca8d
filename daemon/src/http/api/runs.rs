//! `/api/runs`: list, show, trigger, cancel, resolve, retry.

#[allow(unused_imports)]
use super::*;

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
pub(in crate::http) async fn runs(
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
pub(in crate::http) async fn run(
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
pub(in crate::http) async fn trigger(
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
pub(in crate::http) async fn cancel(
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
pub(in crate::http) async fn resolve(
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
pub(in crate::http) async fn retry(
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
