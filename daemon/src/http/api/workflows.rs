//! `GET /api/workflows` and `GET /api/workflows/{id}`.

#[allow(unused_imports)]
use super::*;

/// `GET /api/workflows`.
pub(in crate::http) async fn workflows(
    State(state): State<AppState>,
    headers: HeaderMap,
) -> Response {
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
pub(in crate::http) async fn workflow(
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
