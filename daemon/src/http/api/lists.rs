//! `GET /api/requests`, `/api/outbox`, `/api/audit`.

#[allow(unused_imports)]
use super::*;

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
pub(in crate::http) async fn requests(
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
pub(in crate::http) async fn cluster(
    State(state): State<AppState>,
    headers: HeaderMap,
) -> Response {
    if let Err(r) = authorize(&state, &headers, Role::Viewer).await {
        return r;
    }
    match crate::cluster::view(&state.store, state.clock.now(), state.lease()).await {
        Ok(view) => ok(StatusCode::OK, view),
        Err(e) => api_error(StatusCode::SERVICE_UNAVAILABLE, &e.to_string()),
    }
}

/// `GET /api/outbox`.
pub(in crate::http) async fn outbox(
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
pub(in crate::http) async fn outbox_retry(
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
pub(in crate::http) async fn audit_log(
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
