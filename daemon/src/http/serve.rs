//! The listener: HTTP/1 connections served by hyper with the limits `axum::serve` does not
//! offer. A connection must send a complete request head within `header_timeout` — also
//! between requests on a kept-alive connection, so an idle or slow-header (slowloris)
//! connection is closed — and at most `max_connections` are open at once, `per_address` of
//! them from one client address; a connection over a cap is closed at once, before anything
//! is read, so one client cannot take the seats of the others.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::ConnectInfo;
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio_util::sync::CancellationToken;
use tower_service::Service;

/// `[http]` connection limits.
#[derive(Debug, Clone, Copy)]
pub struct ConnectionLimits {
    /// Time for a request head to arrive (`header_timeout`).
    pub header_timeout: Duration,
    /// Open connections at most (`max_connections`).
    pub max: usize,
    /// Open connections from one address at most (`max_connections_per_address`).
    pub per_address: usize,
}

impl Default for ConnectionLimits {
    fn default() -> Self {
        Self {
            header_timeout: Duration::from_secs(10),
            max: 1024,
            per_address: 64,
        }
    }
}

#[derive(Debug, Default)]
struct Open {
    total: usize,
    per: HashMap<IpAddr, usize>,
}

/// A seat taken by one connection, given back when it closes.
struct Seat {
    open: Arc<Mutex<Open>>,
    ip: IpAddr,
}

impl Drop for Seat {
    fn drop(&mut self) {
        let mut open = self.open.lock().unwrap_or_else(|e| e.into_inner());
        open.total = open.total.saturating_sub(1);
        if let Some(n) = open.per.get_mut(&self.ip) {
            *n -= 1;
            if *n == 0 {
                open.per.remove(&self.ip);
            }
        }
    }
}

/// A seat for a connection from `ip`, if the caps allow one.
fn seat(open: &Arc<Mutex<Open>>, ip: IpAddr, limits: &ConnectionLimits) -> Option<Seat> {
    let mut o = open.lock().unwrap_or_else(|e| e.into_inner());
    let mine = o.per.get(&ip).copied().unwrap_or(0);
    if o.total >= limits.max || mine >= limits.per_address {
        return None;
    }
    o.total += 1;
    o.per.insert(ip, mine + 1);
    Some(Seat {
        open: open.clone(),
        ip,
    })
}

/// Serves until `shutdown`, then lets open requests finish (10 s at most). A listen address
/// that cannot be bound is logged and the HTTP face stays off; the rest of the daemon keeps
/// running.
pub async fn serve(
    listen: SocketAddr,
    limits: ConnectionLimits,
    state: super::AppState,
    shutdown: CancellationToken,
) {
    let listener = match tokio::net::TcpListener::bind(listen).await {
        Ok(l) => l,
        Err(e) => {
            tracing::error!(%listen, error = %e, "cannot listen for HTTP; answer links, acknowledgement links and the API are unavailable");
            return;
        }
    };
    // The bound address: with port 0 the system chose one.
    let listen = listener.local_addr().unwrap_or(listen);
    tracing::info!(
        %listen,
        header_timeout_s = limits.header_timeout.as_secs_f64(),
        max_connections = limits.max,
        per_address = limits.per_address,
        "http listening"
    );
    let app = super::router(state);
    let open = Arc::new(Mutex::new(Open::default()));
    // When a refusal was last logged (unix seconds): at most one line a minute.
    let last_warned = AtomicI64::new(0);
    loop {
        let (stream, addr) = tokio::select! {
            () = shutdown.cancelled() => break,
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    // Out of file descriptors and the like: wait a little, never spin.
                    tracing::warn!(error = %e, "accepting an HTTP connection failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let Some(seat) = seat(&open, addr.ip(), &limits) else {
            let now = chrono::Utc::now().timestamp();
            if last_warned.swap(now, Ordering::Relaxed) + 60 <= now {
                tracing::warn!(client = %addr.ip(), "HTTP connection refused: too many open connections (max_connections, max_connections_per_address)");
            }
            drop(stream);
            continue;
        };
        let _ = stream.set_nodelay(true);
        let app = app.clone();
        let shutdown = shutdown.clone();
        tokio::spawn(async move {
            let _seat = seat;
            let service = hyper::service::service_fn(move |mut req: hyper::Request<Incoming>| {
                req.extensions_mut().insert(ConnectInfo(addr));
                let mut app = app.clone();
                async move { app.call(req).await }
            });
            let mut builder = hyper::server::conn::http1::Builder::new();
            builder
                .timer(TokioTimer::new())
                .header_read_timeout(limits.header_timeout);
            let conn = builder.serve_connection(TokioIo::new(stream), service);
            tokio::pin!(conn);
            let result = tokio::select! {
                r = conn.as_mut() => r,
                () = shutdown.cancelled() => {
                    conn.as_mut().graceful_shutdown();
                    conn.await
                }
            };
            if let Err(e) = result {
                tracing::debug!(client = %addr, error = %e, "HTTP connection ended");
            }
        });
    }
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while open.lock().unwrap_or_else(|e| e.into_inner()).total > 0
        && tokio::time::Instant::now() < deadline
    {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn seats_are_capped_in_total_and_per_address_and_given_back() {
        let limits = ConnectionLimits {
            header_timeout: Duration::from_secs(1),
            max: 3,
            per_address: 2,
        };
        let open = Arc::new(Mutex::new(Open::default()));
        let a: IpAddr = [127, 0, 0, 2].into();
        let b: IpAddr = [127, 0, 0, 3].into();
        let a1 = seat(&open, a, &limits).unwrap();
        let _a2 = seat(&open, a, &limits).unwrap();
        assert!(
            seat(&open, a, &limits).is_none(),
            "a third from one address"
        );
        let _b1 = seat(&open, b, &limits).unwrap();
        assert!(seat(&open, b, &limits).is_none(), "the total cap");
        drop(a1);
        assert!(
            seat(&open, b, &limits).is_some(),
            "a seat given back is free again"
        );
    }
}
