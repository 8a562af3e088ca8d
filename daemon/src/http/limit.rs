//! Brute-force protection: refused credentials (an unknown bearer token, a failed login) and
//! unknown answer or acknowledgement tokens are counted per client address; a client with
//! [`MAX_REFUSALS`] (or `[http] refusals_per_minute`) refusals in a [`WINDOW`] is answered `429 Too Many Requests` with
//! `Retry-After` until the window ends. Successful requests are never counted, so legitimate
//! traffic is not slowed. The first block of a client in a window is written to the audit log
//! (`action = "refusals"`, with the count), once, so an attack shows up in aggregate.
//!
//! The counts are per daemon (in memory): behind a load balancer each daemon limits on its
//! own, which bounds an attacker at `MAX_REFUSALS` × daemons per window. Behind a reverse proxy
//! the client address is the proxy's; limiting per proxy is then the conservative outcome.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use axum::extract::{ConnectInfo, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};

use super::AppState;

/// Refusals a client may have in one window, unless `[http] refusals_per_minute` says otherwise.
pub const MAX_REFUSALS: u32 = 20;
/// The counting window.
pub const WINDOW: Duration = Duration::from_secs(60);
/// Clients remembered at most (the oldest windows are dropped first when full).
const MAX_CLIENTS: usize = 10_000;

/// Refusal counts per client address.
#[derive(Debug)]
pub struct Refusals {
    clients: Mutex<HashMap<IpAddr, Window>>,
    max: u32,
}

impl Default for Refusals {
    fn default() -> Self {
        Self::new(MAX_REFUSALS)
    }
}

#[derive(Debug, Clone, Copy)]
struct Window {
    started: Instant,
    refusals: u32,
    reported: bool,
}

impl Refusals {
    /// A limit of `max` refusals per client and window.
    pub fn new(max: u32) -> Self {
        Self {
            clients: Mutex::default(),
            max: max.max(1),
        }
    }

    /// How long `ip` must still wait, if it is blocked now.
    fn blocked(&self, ip: IpAddr, now: Instant) -> Option<Duration> {
        let clients = self.clients.lock().unwrap_or_else(|e| e.into_inner());
        let w = clients.get(&ip)?;
        let left = WINDOW.checked_sub(now.duration_since(w.started))?;
        (w.refusals >= self.max && !left.is_zero()).then_some(left)
    }

    /// Counts a refusal; returns the count if this one reached the limit (to be audited).
    fn refused(&self, ip: IpAddr, now: Instant) -> Option<u32> {
        let mut clients = self.clients.lock().unwrap_or_else(|e| e.into_inner());
        if clients.len() >= MAX_CLIENTS && !clients.contains_key(&ip) {
            clients.retain(|_, w| now.duration_since(w.started) < WINDOW);
            if clients.len() >= MAX_CLIENTS
                && let Some(oldest) = clients
                    .iter()
                    .min_by_key(|(_, w)| w.started)
                    .map(|(k, _)| *k)
            {
                clients.remove(&oldest);
            }
        }
        let w = clients.entry(ip).or_insert(Window {
            started: now,
            refusals: 0,
            reported: false,
        });
        if now.duration_since(w.started) >= WINDOW {
            *w = Window {
                started: now,
                refusals: 0,
                reported: false,
            };
        }
        w.refusals += 1;
        if w.refusals >= self.max && !w.reported {
            w.reported = true;
            return Some(w.refusals);
        }
        None
    }
}

/// Whether a response refuses a credential or a token: what a guesser gets.
fn is_refusal(path: &str, status: StatusCode) -> bool {
    status == StatusCode::UNAUTHORIZED
        || (status == StatusCode::NOT_FOUND
            && (path.starts_with("/answer/")
                || path.starts_with("/ack/")
                || path.starts_with("/confirm/")
                || path == "/api/acks"))
}

/// The middleware.
pub async fn limit_refusals(
    State(state): State<AppState>,
    req: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    // Without the peer address (a router used without `into_make_service_with_connect_info`)
    // there is nothing to count by.
    let Some(ip) = req
        .extensions()
        .get::<ConnectInfo<SocketAddr>>()
        .map(|c| c.0.ip())
    else {
        return next.run(req).await;
    };
    let path = req.uri().path().to_string();
    if let Some(left) = state.refusals.blocked(ip, Instant::now()) {
        return too_many(&path, left);
    }
    let res = next.run(req).await;
    if is_refusal(&path, res.status())
        && let Some(count) = state.refusals.refused(ip, Instant::now())
    {
        tracing::warn!(client = %ip, refusals = count, "client blocked for a minute after repeated refused credentials or tokens");
        let detail = format!(
            "{count} refused credentials or tokens within a minute; blocked until the minute ends"
        );
        if let Err(e) = state
            .store
            .audit(
                state.clock.now(),
                &ip.to_string(),
                "refusals",
                None,
                Some(&detail),
            )
            .await
        {
            tracing::warn!(error = %e, "cannot record the refusals in the audit log");
        }
    }
    res
}

fn too_many(path: &str, left: Duration) -> Response {
    let secs = left.as_secs().max(1);
    let mut res = if super::is_api_path(path) {
        (
            StatusCode::TOO_MANY_REQUESTS,
            axum::Json(serde_json::json!({
                "error": format!("too many refused credentials or tokens from this address; retry in {secs} s")
            })),
        )
            .into_response()
    } else {
        (
            StatusCode::TOO_MANY_REQUESTS,
            [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
            format!("試行回数が多すぎます。{secs} 秒ほど待ってから、もう一度お試しください。"),
        )
            .into_response()
    };
    if let Ok(v) = HeaderValue::from_str(&secs.to_string()) {
        res.headers_mut().insert(header::RETRY_AFTER, v);
    }
    res
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blocks_after_the_limit_for_the_rest_of_the_window() {
        let r = Refusals::default();
        let ip: IpAddr = "192.0.2.7".parse().expect("ip");
        let other: IpAddr = "192.0.2.8".parse().expect("ip");
        let t0 = Instant::now();
        for i in 1..MAX_REFUSALS {
            assert_eq!(r.refused(ip, t0), None, "refusal {i}");
            assert!(r.blocked(ip, t0).is_none());
        }
        assert_eq!(r.refused(ip, t0), Some(MAX_REFUSALS), "reported once");
        assert_eq!(r.refused(ip, t0), None);
        assert!(r.blocked(ip, t0 + Duration::from_secs(30)).is_some());
        assert!(
            r.blocked(other, t0).is_none(),
            "other clients are not slowed"
        );
        assert!(r.blocked(ip, t0 + WINDOW).is_none(), "the window ends");
        assert!(is_refusal("/api/runs", StatusCode::UNAUTHORIZED));
        assert!(is_refusal("/answer/abc", StatusCode::NOT_FOUND));
        assert!(!is_refusal("/api/runs/x", StatusCode::NOT_FOUND));
        assert!(!is_refusal("/answer/abc", StatusCode::GONE));
    }
}
