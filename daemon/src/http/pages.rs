//! The pages for people: login with an API token (a cookie session: HttpOnly, SameSite=Strict,
//! CSRF token on every form), the dashboard, a run's timeline, open requests and
//! acknowledgements, and the status board of the latest status collection. Server-rendered,
//! Japanese, no script.

use std::collections::HashMap;

use axum::extract::{Form, Path, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Redirect, Response};
use chrono::{DateTime, Utc};
use serde_json::{Value as Json, json};
use sha2::{Digest, Sha256};

use super::{AppState, page, verify_token};
use crate::store::{RunFilter, RunStatus, SessionRow};

const COOKIE: &str = "pmoflow_session";
const SESSION_HOURS: i64 = 8;

/// A logged-in person.
#[derive(Debug, Clone, serde::Serialize)]
pub(super) struct User {
    name: String,
    role: String,
    csrf: String,
}

impl User {
    fn can_operate(&self) -> bool {
        matches!(self.role.as_str(), "operator" | "admin")
    }
}

fn cookie_value(headers: &HeaderMap) -> Option<String> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|kv| kv.trim().split_once('='))
        .find(|(k, _)| *k == COOKIE)
        .map(|(_, v)| v.to_string())
}

fn hash(id: &str) -> String {
    hex::encode(Sha256::digest(id.as_bytes()))
}

pub(super) async fn user(state: &AppState, headers: &HeaderMap) -> Option<User> {
    let id = cookie_value(headers)?;
    let s = state
        .store
        .session_get(&hash(&id), state.clock.now())
        .await
        .ok()??;
    Some(User {
        name: s.token_name,
        role: s.role,
        csrf: s.csrf,
    })
}

pub(super) fn to_login() -> Response {
    Redirect::to("/login").into_response()
}

fn local(t: Option<DateTime<Utc>>, tz: chrono_tz::Tz) -> String {
    t.map(|t| t.with_timezone(&tz).format("%Y-%m-%d %H:%M:%S").to_string())
        .unwrap_or_default()
}

fn random_hex(n: usize) -> String {
    let mut b = vec![0u8; n];
    let _ = getrandom::fill(&mut b);
    hex::encode(b)
}

fn run_badge(status: &str) -> (&'static str, &'static str) {
    match status {
        "succeeded" => ("b-good", "成功"),
        "failed" => ("b-bad", "失敗"),
        "cancelled" => ("b-none", "中止"),
        "skipped" => ("b-none", "スキップ"),
        "running" => ("b-warn", "実行中"),
        "waiting" => ("b-warn", "待機中"),
        "queued" => ("b-warn", "順番待ち"),
        _ => ("b-warn", "未開始"),
    }
}

/// Values of keys that look secret are never shown.
fn redact(v: &Json) -> Json {
    match v {
        Json::Object(m) => Json::Object(
            m.iter()
                .map(|(k, v)| {
                    let lk = k.to_lowercase();
                    let secret = [
                        "password",
                        "secret",
                        "token",
                        "authorization",
                        "api_key",
                        "apikey",
                    ]
                    .iter()
                    .any(|s| lk.contains(s));
                    (k.clone(), if secret { json!("***") } else { redact(v) })
                })
                .collect(),
        ),
        Json::Array(a) => Json::Array(a.iter().map(redact).collect()),
        other => other.clone(),
    }
}

pub(super) async fn login_page(State(state): State<AppState>, headers: HeaderMap) -> Response {
    if user(&state, &headers).await.is_some() {
        return Redirect::to("/").into_response();
    }
    page(
        &state,
        StatusCode::OK,
        "login.html",
        json!({ "title": "ログイン" }),
    )
}

pub(super) async fn login(
    State(state): State<AppState>,
    headers: HeaderMap,
    Form(form): Form<HashMap<String, String>>,
) -> Response {
    // Login CSRF: a page elsewhere must not sign a browser in (to an account of its choosing).
    if cross_site(&headers, state.services.replies.public_url.as_deref()) {
        tracing::warn!("login from another site refused");
        return page(
            &state,
            StatusCode::FORBIDDEN,
            "message.html",
            json!({ "title": "ログイン", "message": "他のサイトからのログインは受け付けていません。pmoflow のログイン画面からログインしてください。", "kind": "error" }),
        );
    }
    let token = form.get("token").map(|t| t.trim()).unwrap_or("");
    let Some((name, role)) = verify_token(&state, token).await else {
        tracing::warn!("login with an unknown token refused");
        return page(
            &state,
            StatusCode::UNAUTHORIZED,
            "login.html",
            json!({ "title": "ログイン", "error": "トークンが正しくありません。" }),
        );
    };
    // The session id rotates at every login: a new random id from the server (never one the
    // client brought), and the session the browser held before, if any, is ended.
    if let Some(old) = cookie_value(&headers) {
        let _ = state.store.session_delete(&hash(&old)).await;
    }
    let id = random_hex(32);
    let now = state.clock.now();
    let session = SessionRow {
        token_name: name.clone(),
        role: format!("{role:?}").to_lowercase(),
        csrf: random_hex(16),
        expires_at: now + chrono::Duration::hours(SESSION_HOURS),
    };
    if let Err(e) = state.store.session_create(&hash(&id), &session, now).await {
        tracing::error!(error = %e, "session could not be stored");
        return (StatusCode::SERVICE_UNAVAILABLE, "一時的なエラーです").into_response();
    }
    tracing::info!(token = %name, "logged in");
    let secure = state
        .services
        .replies
        .public_url
        .as_deref()
        .is_some_and(|u| u.starts_with("https://"));
    let cookie = format!(
        "{COOKIE}={id}; Path=/; HttpOnly; SameSite=Strict; Max-Age={}{}",
        SESSION_HOURS * 3600,
        if secure { "; Secure" } else { "" }
    );
    let mut res = Redirect::to("/").into_response();
    if let Ok(v) = HeaderValue::from_str(&cookie) {
        res.headers_mut().insert(header::SET_COOKIE, v);
    }
    res
}

fn csrf_ok(user: &User, form: &HashMap<String, String>) -> bool {
    let sent = form.get("csrf").map(String::as_str).unwrap_or("");
    crate::message::correlate::token_eq(sent, &user.csrf)
}

fn forbidden(state: &AppState, text: &str) -> Response {
    super::message(
        state,
        StatusCode::FORBIDDEN,
        "操作できません",
        text,
        "error",
    )
}

pub(super) async fn logout(
    State(state): State<AppState>,
    headers: HeaderMap,
    Form(form): Form<HashMap<String, String>>,
) -> Response {
    if let (Some(u), Some(id)) = (user(&state, &headers).await, cookie_value(&headers)) {
        if !csrf_ok(&u, &form) {
            return forbidden(&state, "不正なリクエストです。");
        }
        let _ = state.store.session_delete(&hash(&id)).await;
    }
    let mut res = to_login();
    res.headers_mut().insert(
        header::SET_COOKIE,
        HeaderValue::from_static("pmoflow_session=; Path=/; HttpOnly; SameSite=Strict; Max-Age=0"),
    );
    res
}

pub(super) async fn dashboard(State(state): State<AppState>, headers: HeaderMap) -> Response {
    let Some(u) = user(&state, &headers).await else {
        return to_login();
    };
    let tz = state.services.mail.timezone;
    let mut workflows = Vec::new();
    let mut invalid = Vec::new();
    if let Some(engine) = &state.engine {
        let catalog = engine.registry().catalog();
        let now = state.clock.now();
        for wf in catalog.workflows.values() {
            let next =
                crate::workflow::schedule::next_fires(&wf.triggers, tz, &catalog.calendar, now, 1)
                    .first()
                    .map(|f| f.with_timezone(&chrono::Utc));
            let last = state
                .store
                .list_runs(&RunFilter {
                    workflow_id: Some(wf.id.clone()),
                    status: None,
                    limit: 1,
                })
                .await
                .ok()
                .and_then(|r| r.into_iter().next());
            workflows.push(json!({
                "id": wf.id,
                "name": wf.name,
                "next_fire": next.map(|n| local(Some(n), tz)),
                "last": last.map(|r| {
                    let (badge, ja) = run_badge(r.status.as_str());
                    json!({ "id": r.id, "badge": badge, "status_ja": ja, "error": r.error })
                }),
            }));
        }
        invalid = catalog
            .diagnostics
            .iter()
            .map(|d| format!("{}:{}:{}: {}", d.path.display(), d.line, d.col, d.message))
            .collect();
    }
    let mut active = Vec::new();
    for status in [RunStatus::Running, RunStatus::Waiting, RunStatus::Pending] {
        let rows = state
            .store
            .list_runs(&RunFilter {
                workflow_id: None,
                status: Some(status),
                limit: 50,
            })
            .await
            .unwrap_or_default();
        for r in rows {
            let (badge, ja) = run_badge(r.status.as_str());
            active.push(json!({
                "id": r.id, "workflow_id": r.workflow_id, "badge": badge, "status_ja": ja,
                "trigger_kind": super::view::trigger_ja(&r.trigger_kind), "created": local(Some(r.created_at), tz),
            }));
        }
    }
    let failed: Vec<Json> = state
        .store
        .list_runs(&RunFilter {
            workflow_id: None,
            status: Some(RunStatus::Failed),
            limit: 20,
        })
        .await
        .unwrap_or_default()
        .into_iter()
        .map(|r| {
            json!({
                "id": r.id, "workflow_id": r.workflow_id, "finished": local(r.finished_at, tz),
                "error": r.error,
            })
        })
        .collect();
    let dead: Vec<Json> = state
        .store
        .list_outbox(Some("dead"), 20)
        .await
        .unwrap_or_default()
        .into_iter()
        .map(|m| json!({ "id": m.id, "target": m.target, "attempts": m.attempts, "last_error": m.last_error }))
        .collect();
    let pending = state.store.count_outbox("pending").await.unwrap_or(0);
    let dead_n = state.store.count_outbox("dead").await.unwrap_or(0);
    let cluster = cluster_section(&state).await;
    page(
        &state,
        StatusCode::OK,
        "dashboard.html",
        json!({
            "title": "ダッシュボード", "wide": true, "user": u,
            "workflows": workflows, "invalid": invalid, "active": active, "failed": failed,
            "dead": dead, "outbox": { "pending": pending, "dead": dead_n },
            "cluster": cluster,
        }),
    )
}

/// The dashboard's daemons: the live and lost ones (stopped ones are in `pmoflow cluster`).
async fn cluster_section(state: &AppState) -> Json {
    use crate::cluster::DaemonState;
    let Ok(view) = crate::cluster::view(&state.store, state.clock.now(), state.lease()).await
    else {
        return json!({ "daemons": [], "warnings": ["データベースに接続できません"] });
    };
    let daemons: Vec<Json> = view
        .daemons
        .iter()
        .filter(|d| d.state != DaemonState::Stopped)
        .take(20)
        .map(|d| {
            let (badge, ja) = match d.state {
                DaemonState::Live => ("b-good", "稼働中"),
                DaemonState::Lost => ("b-bad", "応答なし"),
                DaemonState::Stopped => ("b-none", "停止"),
            };
            json!({
                "instance_id": d.daemon.instance_id, "label": d.daemon.label,
                "version": d.daemon.version, "badge": badge, "state_ja": ja,
                "age": d.heartbeat_age_ms / 1000, "runs": d.runs,
                "roles": if d.roles.is_empty() { "—".to_string() } else { d.roles.join(", ") },
            })
        })
        .collect();
    json!({ "daemons": daemons, "warnings": view.warnings })
}

pub(super) async fn run_page(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Response {
    let Some(u) = user(&state, &headers).await else {
        return to_login();
    };
    let tz = state.services.mail.timezone;
    let Ok(Some(run)) = state.store.get_run(&id).await else {
        return super::message(
            &state,
            StatusCode::NOT_FOUND,
            "見つかりません",
            "指定された実行はありません。",
            "error",
        );
    };
    let steps: Vec<Json> = state
        .store
        .get_steps(&id)
        .await
        .unwrap_or_default()
        .into_iter()
        .map(|s| {
            let (badge, status_ja) = super::view::step_status(s.status.as_str());
            let shown = s.output.as_ref().map(redact);
            json!({
                "key": s.step_key, "status_ja": status_ja, "badge": badge, "attempt": s.attempt,
                "started": local(s.started_at, tz), "finished": local(s.finished_at, tz),
                "view": shown.as_ref().map(|o| super::view::output(o, 4)),
                "output": shown.as_ref().map(|o| serde_json::to_string_pretty(o).unwrap_or_default()),
                "error": s.error,
            })
        })
        .collect();
    let events: Vec<Json> = state
        .store
        .get_events(&id)
        .await
        .unwrap_or_default()
        .into_iter()
        .map(|e| json!({ "at": local(Some(e.at), tz), "kind": super::view::event_ja(&e.kind), "message": e.message }))
        .collect();
    let (badge, ja) = run_badge(run.status.as_str());
    page(
        &state,
        StatusCode::OK,
        "run.html",
        json!({
            "title": format!("実行 {id}"), "wide": true, "user": u, "run": run,
            "badge": badge, "status_ja": ja, "trigger_ja": super::view::trigger_ja(&run.trigger_kind),
            "created": local(Some(run.created_at), tz), "finished": run.finished_at.map(|f| local(Some(f), tz)),
            "steps": steps, "events": events,
            "can_operate": u.can_operate(),
            "cancellable": !run.status.is_terminal(),
            "retryable": run.status == RunStatus::Failed,
        }),
    )
}

pub(super) async fn run_action(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path((id, action)): Path<(String, String)>,
    Form(form): Form<HashMap<String, String>>,
) -> Response {
    let Some(u) = user(&state, &headers).await else {
        return to_login();
    };
    if !csrf_ok(&u, &form) {
        tracing::warn!(user = %u.name, "page form without a valid CSRF token refused");
        return forbidden(&state, "不正なリクエストです。ページを開き直してください。");
    }
    if !u.can_operate() {
        return forbidden(&state, "この操作には operator 以上の権限が必要です。");
    }
    let now = state.clock.now();
    let by = format!("web:{}", u.name);
    let done = match action.as_str() {
        "cancel" => state.store.cancel_run(&id, now, &by).await.map(|_| ()),
        "retry" => state.store.retry_run(&id, now, &by).await.map(|_| ()),
        _ => {
            return super::message(
                &state,
                StatusCode::NOT_FOUND,
                "見つかりません",
                "不明な操作です。",
                "error",
            );
        }
    };
    if let Err(e) = done {
        tracing::error!(error = %e, "run action failed");
    } else {
        let _ = state
            .store
            .audit(now, &u.name, &action, Some(&id), Some("web"))
            .await;
        if let Some(e) = &state.engine {
            e.wake();
        }
    }
    Redirect::to(&format!("/runs/{id}")).into_response()
}

fn request_badge(status: &str, ack: bool, late: bool) -> (&'static str, &'static str) {
    match (status, ack) {
        ("answered", true) => ("b-good", "確認済"),
        ("answered", false) if late => ("b-warn", "遅延回答"),
        ("answered", false) => ("b-good", "回答済"),
        ("bounced", _) => ("b-bad", "不達"),
        ("closed", true) => ("b-bad", "未確認"),
        ("closed", false) => ("b-bad", "未回答"),
        (_, true) => ("b-warn", "確認待ち"),
        _ => ("b-warn", "回答待ち"),
    }
}

pub(super) async fn requests_page(State(state): State<AppState>, headers: HeaderMap) -> Response {
    let Some(u) = user(&state, &headers).await else {
        return to_login();
    };
    let tz = state.services.mail.timezone;
    let rows = state
        .store
        .list_requests(None, 200)
        .await
        .unwrap_or_default();
    let tokens: Vec<String> = rows.iter().map(|r| r.token.clone()).collect();
    let answers = state.store.answers_for(&tokens).await.unwrap_or_default();
    let list: Vec<Json> = rows
        .iter()
        .map(|r| {
            let latest = r
                .answer_id
                .as_ref()
                .and_then(|id| answers.iter().find(|a| &a.id == id));
            let (badge, ja) = request_badge(&r.status, r.kind == "ack", latest.is_some_and(|a| a.late));
            json!({
                "tag": r.tag, "subject": r.subject, "run_id": r.run_id, "recipient": r.recipient,
                "sent": local(Some(r.created_at), tz), "deadline": r.deadline.map(|d| local(Some(d), tz)),
                "badge": badge, "status_ja": ja,
                "answered": r.answered_at.map(|d| local(Some(d), tz)),
                "by": latest.and_then(|a| a.from.clone()).map(|f| format!("{f}, {}", latest.map(|a| a.via.as_str()).unwrap_or(""))),
            })
        })
        .collect();
    page(
        &state,
        StatusCode::OK,
        "requests.html",
        json!({ "title": "依頼・確認", "wide": true, "user": u, "requests": list }),
    )
}

pub(super) async fn status_board(State(state): State<AppState>, headers: HeaderMap) -> Response {
    let Some(u) = user(&state, &headers).await else {
        return to_login();
    };
    let tz = state.services.mail.timezone;
    // The latest run that asked for 総合評価.
    let all = state
        .store
        .list_requests(Some("open"), 1)
        .await
        .unwrap_or_default();
    let recent = state
        .store
        .list_requests(None, 500)
        .await
        .unwrap_or_default();
    let latest_run = recent
        .iter()
        .chain(all.iter())
        .filter(|r| r.kind == "request" && r.fields.iter().any(|f| f == "総合評価"))
        .max_by_key(|r| r.created_at)
        .map(|r| r.run_id.clone());
    let mut ctx = json!({ "title": "状況報告ボード", "wide": true, "user": u, "run": null });
    if let Some(run_id) = latest_run
        && let Ok(Some(run)) = state.store.get_run(&run_id).await
    {
        let mut rows: Vec<_> = recent
            .iter()
            .filter(|r| r.run_id == run_id)
            .cloned()
            .collect();
        rows.sort_by(|a, b| a.step_key.cmp(&b.step_key));
        let tokens: Vec<String> = rows.iter().map(|r| r.token.clone()).collect();
        let answers = state.store.answers_for(&tokens).await.unwrap_or_default();
        let list: Vec<Json> = rows
            .iter()
            .map(|r| {
                let latest = r
                    .answer_id
                    .as_ref()
                    .and_then(|id| answers.iter().find(|a| &a.id == id));
                let (badge, ja) = request_badge(&r.status, false, latest.is_some_and(|a| a.late));
                let rating = latest
                    .and_then(|a| a.fields.get("総合評価"))
                    .and_then(Json::as_str)
                    .map(str::to_string);
                let rating_badge = match rating.as_deref() {
                    Some(s) if s.contains("良") => "b-good",
                    Some(s) if s.contains("要対応") || s.contains("悪") => "b-bad",
                    Some(_) => "b-warn",
                    None => "b-none",
                };
                json!({
                    "recipient": r.recipient, "step_key": r.step_key, "badge": badge, "status_ja": ja, "rating": rating,
                    "rating_badge": rating_badge, "answered": r.answered_at.map(|d| local(Some(d), tz)),
                    "subject": r.subject,
                })
            })
            .collect();
        ctx["run"] = serde_json::to_value(&run).unwrap_or(Json::Null);
        ctx["created"] = json!(local(Some(run.created_at), tz));
        ctx["rows"] = Json::Array(list);
    }
    page(&state, StatusCode::OK, "status.html", ctx)
}

/// Whether a request came from a page of another site: `Sec-Fetch-Site: cross-site` (or
/// `same-site`, another host of the same site), or an `Origin` whose host is not the `Host` the
/// request was sent to nor the configured public URL's. A request with neither header (an old
/// browser, a script) is not refused here.
fn cross_site(headers: &HeaderMap, public_url: Option<&str>) -> bool {
    let fetch_site = headers
        .get("sec-fetch-site")
        .and_then(|v| v.to_str().ok())
        .map(str::to_ascii_lowercase);
    if let Some(site) = fetch_site {
        return site != "same-origin" && site != "none";
    }
    let Some(origin) = headers.get(header::ORIGIN).and_then(|v| v.to_str().ok()) else {
        return false;
    };
    let host = headers
        .get(header::HOST)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    let origin_host = origin
        .split_once("://")
        .map_or("", |(_, rest)| rest.trim_end_matches('/'));
    let public_host = public_url
        .and_then(|u| u.split_once("://"))
        .map(|(_, rest)| rest.split('/').next().unwrap_or(""));
    origin == "null"
        || !(origin_host.eq_ignore_ascii_case(host)
            || public_host.is_some_and(|p| origin_host.eq_ignore_ascii_case(p)))
}
