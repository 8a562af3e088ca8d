//! The daemon's HTTP face (axum): answer forms and acknowledgement pages behind the links in
//! request mails, raw-message intake for MTAs (`POST /inbound/email`), acknowledgements by API
//! (`POST /api/acks`), and health.
//!
//! Links carry the request's single-use token, which is the key (no login). Pages never change
//! state on GET (mail scanners open links); forms carry a nonce signed with a key shared by all
//! daemons on the database (`settings` table) that expires after two hours and is accepted once:
//! a replayed submission is refused with 409. API calls need `Authorization: Bearer`, checked
//! against argon2 hashes in `[[http.tokens]]`, each with a role.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, Form, Path, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::{get, post};
use chrono::{DateTime, Utc};
use hmac::{Hmac, Mac};
use serde_json::{Value as Json, json};
use sha2::{Digest, Sha256};

use crate::actions::StepServices;
use crate::clock::SharedClock;
use crate::inbound::intake::Intake;
use crate::store::{NewAnswer, Recorded, RequestRow, Store, requests::lookup_of};

mod answer;
mod api;
mod auth;
mod confirm;
pub(crate) mod limit;
mod links;
pub mod openapi;
mod pages;
mod portfolio;
mod serve;
mod view;

use answer::*;
use auth::authorize;
pub(super) use auth::verify_token;
pub use auth::{ApiToken, NewToken, Role, TokenError, is_token_id, new_token, token_id};
use links::*;
pub use serve::{ConnectionLimits, serve};

/// `[http]`, resolved.
#[derive(Debug, Clone)]
pub struct HttpConfig {
    /// Whether to listen at all.
    pub enabled: bool,
    /// Address to listen on.
    pub listen: SocketAddr,
    /// API tokens.
    pub tokens: Vec<ApiToken>,
    /// Refused credentials or tokens a client address may have in a minute before it is
    /// answered 429 (`refusals_per_minute`).
    pub refusals_per_minute: u32,
    /// Header timeout and connection caps.
    pub connections: ConnectionLimits,
}

impl Default for HttpConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            listen: SocketAddr::from(([127, 0, 0, 1], 8080)),
            tokens: Vec::new(),
            refusals_per_minute: limit::MAX_REFUSALS,
            connections: ConnectionLimits::default(),
        }
    }
}

/// How long a form's nonce is accepted.
const NONCE_TTL_MS: i64 = 2 * 3600 * 1000;

/// What the handlers share.
#[derive(Clone)]
pub struct AppState {
    store: Store,
    clock: SharedClock,
    services: Arc<StepServices>,
    intake: Intake,
    engine: Option<crate::engine::Engine>,
    key: Arc<Vec<u8>>,
    /// The API tokens and what is known of presented ones.
    tokens: Arc<auth::TokenBook>,
    pages: Arc<minijinja::Environment<'static>>,
    /// Refused credentials and tokens per client (brute-force limit).
    refusals: Arc<limit::Refusals>,
}

impl AppState {
    /// Sets how many refused credentials or tokens a client may have in a minute.
    pub fn with_refusal_limit(mut self, per_minute: u32) -> Self {
        self.refusals = Arc::new(limit::Refusals::new(per_minute));
        self
    }

    /// The daemons' lease (heartbeat expiry), from the engine's configuration.
    pub(super) fn lease(&self) -> chrono::Duration {
        self.engine.as_ref().map_or(
            chrono::Duration::seconds(crate::engine::DEFAULT_LEASE_SECS),
            |e| e.config().lease,
        )
    }

    /// State over `store`; the form key is read from (or created in) the database.
    pub async fn new(
        store: Store,
        clock: SharedClock,
        services: Arc<StepServices>,
        engine: Option<crate::engine::Engine>,
        tokens: Vec<ApiToken>,
    ) -> Result<AppState, crate::store::StoreError> {
        let key = store
            .setting_or_insert("form_key", clock.now(), || {
                let mut k = [0u8; 32];
                let _ = getrandom::fill(&mut k);
                hex::encode(k)
            })
            .await?;
        let mut intake = Intake::new(store.clone(), clock.clone(), services.clone());
        if let Some(e) = &engine {
            intake = intake.with_wakers(e.wakers());
        }
        let tokens = auth::TokenBook::new(tokens);
        for name in tokens.without_id() {
            tracing::warn!(
                token = name,
                "API token has no id: every unknown token presented costs an argon2 verification \
                 while it is configured; replace it with one from `pmoflow token new`"
            );
        }
        Ok(AppState {
            store,
            clock,
            services,
            intake,
            engine,
            key: Arc::new(hex::decode(&key).unwrap_or_else(|_| key.into_bytes())),
            tokens: Arc::new(tokens),
            pages: Arc::new(pages()),
            refusals: Arc::default(),
        })
    }
}

fn pages() -> minijinja::Environment<'static> {
    let mut env = minijinja::Environment::new();
    env.set_auto_escape_callback(|_| minijinja::AutoEscape::Html);
    for (name, text) in [
        ("base.html", include_str!("templates/base.html")),
        ("answer.html", include_str!("templates/answer.html")),
        ("ack.html", include_str!("templates/ack.html")),
        ("confirm.html", include_str!("templates/confirm.html")),
        ("message.html", include_str!("templates/message.html")),
        ("login.html", include_str!("templates/login.html")),
        ("dashboard.html", include_str!("templates/dashboard.html")),
        ("run.html", include_str!("templates/run.html")),
        ("requests.html", include_str!("templates/requests.html")),
        ("status.html", include_str!("templates/status.html")),
        ("portfolio.html", include_str!("templates/portfolio.html")),
        ("subject.html", include_str!("templates/subject.html")),
    ] {
        // The templates are part of the binary; a broken one fails the unit test below.
        let _ = env.add_template(name, text);
    }
    env
}

/// The routes.
pub fn router(state: AppState) -> Router {
    let max = state.services.replies.max_size + (64 << 10);
    let pages = Router::new()
        .route("/", get(pages::dashboard))
        .route("/login", get(pages::login_page).post(pages::login))
        .route("/logout", post(pages::logout))
        .route("/runs/{id}", get(pages::run_page))
        .route("/runs/{id}/{action}", post(pages::run_action))
        .route("/requests", get(pages::requests_page))
        .route("/status", get(pages::status_board))
        .route("/portfolio", get(portfolio::overview))
        .route("/portfolio/{subject}", get(portfolio::subject_page))
        .route("/static/pmoflow.css", get(css))
        .route("/answer/{token}", get(answer_page).post(answer_submit))
        .route("/answer/{token}/form", get(answer_form_file))
        .route("/ack/{token}", get(ack_page).post(ack_submit))
        .route(
            "/confirm/{token}",
            get(confirm::confirm_page).post(confirm::confirm_submit),
        );
    openapi::routes(pages)
        .layer(DefaultBodyLimit::max(max))
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            limit::limit_refusals,
        ))
        .layer(axum::middleware::from_fn(json_bodies))
        .layer(axum::middleware::from_fn(clean_paths))
        .layer(axum::middleware::map_response(security_headers))
        .layer(axum::middleware::from_fn(request_context))
        .layer(axum::middleware::from_fn(json_errors))
        .with_state(state)
}

/// Paths of the machine-facing API: their errors are JSON.
pub(super) fn is_api_path(path: &str) -> bool {
    path.starts_with("/api/")
        || path.starts_with("/hooks/")
        || path.starts_with("/inbound/")
        || path == "/readyz"
}

/// Every error of the API answers `{"error": …}`, also those made outside the handlers (an
/// unknown path, a method not allowed, a body over the limit, a timeout).
async fn json_errors(req: axum::extract::Request, next: axum::middleware::Next) -> Response {
    let api = is_api_path(req.uri().path());
    let res = next.run(req).await;
    if !api || res.status().as_u16() < 400 {
        return res;
    }
    let is_json = res
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/json"));
    if is_json {
        return res;
    }
    let (mut parts, body) = res.into_parts();
    let text = axum::body::to_bytes(body, 16 << 10)
        .await
        .map(|b| String::from_utf8_lossy(&b).trim().to_string())
        .unwrap_or_default();
    let error = if text.is_empty() {
        parts
            .status
            .canonical_reason()
            .unwrap_or("error")
            .to_lowercase()
    } else {
        text
    };
    let body = serde_json::to_vec(&api::ApiError { error }).unwrap_or_default();
    parts.headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    parts.headers.remove(header::CONTENT_LENGTH);
    Response::from_parts(parts, axum::body::Body::from(body))
}

/// A path with a control character (CR, LF, NUL…), raw or percent-encoded, names nothing:
/// `400 Bad Request` before any handler sees it (an id with a line break could otherwise reach
/// a header or a log line).
async fn clean_paths(req: axum::extract::Request, next: axum::middleware::Next) -> Response {
    if has_control(req.uri().path()) {
        let message = "the path contains a control character";
        return if is_api_path(req.uri().path()) {
            api_error(StatusCode::BAD_REQUEST, message)
        } else {
            (StatusCode::BAD_REQUEST, "不正なアドレスです。").into_response()
        };
    }
    next.run(req).await
}

/// Whether `path` has a control byte, raw or as `%XX`.
fn has_control(path: &str) -> bool {
    let b = path.as_bytes();
    let hex = |c: u8| (c as char).to_digit(16);
    (0..b.len()).any(|i| {
        let byte = if b[i] == b'%' && i + 2 < b.len() {
            match (hex(b[i + 1]), hex(b[i + 2])) {
                (Some(h), Some(l)) => (h * 16 + l) as u8,
                _ => b[i],
            }
        } else {
            b[i]
        };
        byte < 0x20 || byte == 0x7f
    })
}

/// A body sent to a JSON endpoint (`/api/…`, `/hooks/…`) must say it is JSON: anything else is
/// `415 Unsupported Media Type` before it is read. An empty body needs no type.
async fn json_bodies(req: axum::extract::Request, next: axum::middleware::Next) -> Response {
    let path = req.uri().path();
    let json_endpoint = path.starts_with("/api/") || path.starts_with("/hooks/");
    let has_body = req
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .is_none_or(|n| n.trim() != "0")
        && (req.headers().contains_key(header::CONTENT_LENGTH)
            || req.headers().contains_key(header::TRANSFER_ENCODING));
    if json_endpoint && has_body && !is_json_type(req.headers()) {
        return api_error(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "the body must be JSON, sent with Content-Type: application/json",
        );
    }
    next.run(req).await
}

/// `application/json` or a `+json` type, with any parameters.
fn is_json_type(headers: &HeaderMap) -> bool {
    headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .map(|t| t.trim().to_ascii_lowercase())
        .is_some_and(|t| {
            t == "application/json" || (t.starts_with("application/") && t.ends_with("+json"))
        })
}

/// Longest a request may take before it is answered 503.
const REQUEST_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(30);

/// A request id for every request (in the log span and the `X-Request-Id` header), a time
/// limit, and one log line per request. Paths carrying tokens are logged without them.
async fn request_context(req: axum::extract::Request, next: axum::middleware::Next) -> Response {
    use tracing::Instrument;
    let id = uuid::Uuid::now_v7().simple().to_string();
    let path = req.uri().path();
    let shown = match path.split('/').nth(1) {
        Some(p @ ("answer" | "ack" | "confirm")) => format!("/{p}/…"),
        _ => path.to_string(),
    };
    let span = tracing::info_span!("http", request_id = %id, method = %req.method(), path = %shown);
    let started = std::time::Instant::now();
    let mut res =
        match tokio::time::timeout(REQUEST_TIMEOUT, next.run(req).instrument(span.clone())).await {
            Ok(res) => res,
            Err(_) => {
                span.in_scope(|| tracing::warn!("request timed out"));
                (StatusCode::SERVICE_UNAVAILABLE, "timed out").into_response()
            }
        };
    span.in_scope(|| {
        tracing::debug!(
            status = res.status().as_u16(),
            ms = started.elapsed().as_millis() as u64,
            "request"
        );
    });
    if let Ok(v) = HeaderValue::from_str(&id) {
        res.headers_mut().insert("x-request-id", v);
    }
    res
}

async fn security_headers(mut res: Response) -> Response {
    let h = res.headers_mut();
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(
            "default-src 'none'; style-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'",
        ),
    );
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    // Links carry tokens: never leak them in a Referer.
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    res
}

async fn css() -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, "text/css; charset=utf-8")],
        include_str!("templates/pmoflow.css"),
    )
}

fn api_error(status: StatusCode, message: &str) -> Response {
    let body = api::ApiError {
        error: message.to_string(),
    };
    (status, axum::Json(body)).into_response()
}

/// Body of `POST /api/acks`.
#[derive(Debug, serde::Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct AckBody {
    /// The acknowledgement request's token (from its link).
    pub token: String,
    /// Who acknowledges (default: `api:` and the token's name).
    pub by: Option<String>,
}

async fn api_ack(State(state): State<AppState>, headers: HeaderMap, body: Bytes) -> Response {
    let (name, _) = match authorize(&state, &headers, Role::Operator).await {
        Ok(w) => w,
        Err(r) => return r,
    };
    let body: AckBody = match serde_json::from_slice(&body) {
        Ok(b) => b,
        Err(e) => {
            return api_error(
                StatusCode::BAD_REQUEST,
                &format!("body must be {{\"token\": \"…\", \"by\": \"…\"}}: {e}"),
            );
        }
    };
    let row = match find(&state, &body.token, "ack").await {
        Ok(r) => r,
        Err(Refused::Unknown) => {
            tracing::warn!(token = %name, "API ack for an unknown token refused");
            return api_error(
                StatusCode::NOT_FOUND,
                "no acknowledgement request has this token",
            );
        }
        Err(_) => {
            return api_error(
                StatusCode::GONE,
                "this acknowledgement request is closed or expired",
            );
        }
    };
    let by = Some(body.by.unwrap_or_else(|| format!("api:{name}")));
    match acknowledge(&state, &row, "api", by, &format!("api:{}", row.token)).await {
        Ok(Recorded::Closed) => api_error(
            StatusCode::GONE,
            "this acknowledgement request is closed or expired",
        ),
        Ok(Recorded::Accepted) => {
            let _ = state
                .store
                .audit(
                    state.clock.now(),
                    &name,
                    "ack",
                    Some(&row.run_id),
                    Some(&format!("request #{} ({})", row.tag, row.recipient)),
                )
                .await;
            (
                StatusCode::CREATED,
                axum::Json(api::Done {
                    tag: Some(row.tag),
                    ..api::Done::status("acknowledged")
                }),
            )
                .into_response()
        }
        Ok(Recorded::Replay) => (
            StatusCode::OK,
            axum::Json(api::Done {
                tag: Some(row.tag),
                ..api::Done::status("already_acknowledged")
            }),
        )
            .into_response(),
        Err(e) => api_error(StatusCode::SERVICE_UNAVAILABLE, &e.to_string()),
    }
}

async fn inbound_email(State(state): State<AppState>, headers: HeaderMap, body: Bytes) -> Response {
    let (actor, _) = match authorize(&state, &headers, Role::Operator).await {
        Ok(w) => w,
        Err(r) => return r,
    };
    if body.is_empty() {
        return api_error(
            StatusCode::BAD_REQUEST,
            "empty body: send the raw RFC 5322 message",
        );
    }
    if body.len() > state.services.replies.max_size {
        return api_error(
            StatusCode::PAYLOAD_TOO_LARGE,
            &format!(
                "message of {} bytes exceeds the limit of {} KiB",
                body.len(),
                state.services.replies.max_size >> 10
            ),
        );
    }
    let id = match state.intake.receive("http", &body).await {
        Ok(Some(id)) => {
            let _ = state
                .store
                .audit(state.clock.now(), &actor, "inbound", Some(&id), None)
                .await;
            id
        }
        Ok(None) => {
            let body = api::InboundReceived {
                id: None,
                status: "duplicate".into(),
                outcome: None,
                detail: None,
            };
            return (StatusCode::OK, axum::Json(body)).into_response();
        }
        Err(e) => return api_error(StatusCode::SERVICE_UNAVAILABLE, &e.to_string()),
    };
    let pending = |id: String| {
        let body = api::InboundReceived {
            id: Some(id),
            status: "pending".into(),
            outcome: None,
            detail: None,
        };
        (StatusCode::ACCEPTED, axum::Json(body)).into_response()
    };
    let row = match state.store.inbound_get(&id).await {
        Ok(Some(r)) => r,
        _ => return pending(id),
    };
    match state.intake.process(&row).await {
        Ok(Some(p)) => {
            let body = api::InboundReceived {
                id: Some(id),
                status: p.status,
                outcome: Some(p.outcome),
                detail: Some(p.detail),
            };
            (StatusCode::ACCEPTED, axum::Json(body)).into_response()
        }
        _ => pending(id),
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn pages_parse() {
        let env = pages();
        for name in [
            "base.html",
            "answer.html",
            "ack.html",
            "message.html",
            "login.html",
            "dashboard.html",
            "run.html",
            "requests.html",
            "status.html",
            "portfolio.html",
            "subject.html",
        ] {
            env.get_template(name).unwrap();
        }
        // Filters and macros fail only when rendered.
        let html = env
            .get_template("portfolio.html")
            .unwrap()
            .render(minijinja::context! {
                periods => ["2027-04"], field => "総合評価", fields => ["総合評価"], values => ["良好"],
                owners => ["高橋"], workflows => ["status"], q => minijinja::context! {},
                rows => [minijinja::context! { id => "P 1", workflow => "status", name => "<x>", owner => "高橋",
                    cells => [minijinja::context! { value => "良好", badge => "b-good", unanswered => false, late => true }] }],
            })
            .unwrap();
        assert!(html.contains("/portfolio/P%201?workflow=status"), "{html}");
        assert!(html.contains("&lt;x&gt;"), "{html}");
        let html = env
            .get_template("run.html")
            .unwrap()
            .render(minijinja::context! {
                run => minijinja::context! { id => "r1" },
                steps => [minijinja::context! { key => "ask", view => view::output(&serde_json::json!([{ "fields": { "総合評価": "良好" } }]), 4), output => "[]" }],
            })
            .unwrap();
        assert!(html.contains("<th>総合評価</th><td>良好</td>"), "{html}");
        let html = env
            .get_template("message.html")
            .unwrap()
            .render(minijinja::context! { title => "<b>", message => "x", kind => "ok" })
            .unwrap();
        assert!(html.contains("&lt;b&gt;"), "auto-escaped: {html}");
    }

    #[test]
    fn control_characters_in_paths_are_found_raw_or_encoded() {
        assert!(has_control("/api/runs/a%0D%0Ab"));
        assert!(has_control("/api/runs/a%00"));
        assert!(has_control("/runs/a\tb"));
        assert!(!has_control("/api/runs/0192-abc"));
        assert!(!has_control("/portfolio/%E6%9D%B1"));
        assert!(!has_control("/x%"), "a lone % is not a control character");
        assert!(!has_control("/x%2"));
    }

    #[test]
    fn token_hashes_verify() {
        use argon2::PasswordVerifier;
        let NewToken { token, hash, .. } = new_token().unwrap();
        let parsed = argon2::PasswordHash::new(&hash).unwrap();
        assert!(
            argon2::Argon2::default()
                .verify_password(token.as_bytes(), &parsed)
                .is_ok()
        );
        assert!(
            argon2::Argon2::default()
                .verify_password(b"pmo_wrong", &parsed)
                .is_err()
        );
    }
}
