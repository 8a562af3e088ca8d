//! Bounded waits on a condition. Every wait in the suite goes through these (or a helper built
//! on them): each has a deadline, names what it waited for, and shows the last state it saw
//! when the time is up. A test waits for a state or a log line, never for a fixed time; a
//! fixed pause is only pacing (how often a chaos test kills), marked `// pace:` where it is.
//!
//! Async tests use [`until`] (the runtime's sleep: in-process servers keep running on the
//! same workers); sync code uses [`until_blocking`], which steps out of a multi-thread runtime
//! with `block_in_place` when it is called from one.

use std::fmt::Debug;
use std::future::Future;
use std::time::{Duration, Instant};

/// How often a condition is polled.
pub const POLL: Duration = Duration::from_millis(20);

/// Polls `probe` until it returns `Ok`, for at most `timeout`; then panics naming `what` and
/// the last `Err` the probe returned (the state it saw).
pub async fn until<T, S, F, Fut>(what: &str, timeout: Duration, mut probe: F) -> T
where
    S: Debug,
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, S>>,
{
    let start = Instant::now();
    loop {
        let last = match probe().await {
            Ok(v) => return v,
            Err(state) => state,
        };
        assert!(
            start.elapsed() < timeout,
            "timed out after {timeout:?} waiting for {what}; last seen: {last:?}"
        );
        tokio::time::sleep(POLL).await;
    }
}

/// [`until`] for a condition that has no state worth showing.
pub async fn until_true<F, Fut>(what: &str, timeout: Duration, mut probe: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    until(what, timeout, || {
        let f = probe();
        async move { if f.await { Ok(()) } else { Err("not yet") } }
    })
    .await
}

/// The blocking form of [`until`], for sync tests and helpers. Inside a multi-thread runtime
/// it runs under `block_in_place`, so the runtime's other tasks move to another worker.
pub fn until_blocking<T, S: Debug>(
    what: &str,
    timeout: Duration,
    mut probe: impl FnMut() -> Result<T, S>,
) -> T {
    let mut run = move || {
        let start = Instant::now();
        loop {
            let last = match probe() {
                Ok(v) => return v,
                Err(state) => state,
            };
            assert!(
                start.elapsed() < timeout,
                "timed out after {timeout:?} waiting for {what}; last seen: {last:?}"
            );
            std::thread::sleep(POLL);
        }
    };
    outside_runtime(&mut run)
}

/// Runs blocking `f`, stepping out of a multi-thread tokio runtime if called from one.
pub fn outside_runtime<T>(f: impl FnOnce() -> T) -> T {
    match tokio::runtime::Handle::try_current() {
        Ok(h) if h.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread => {
            tokio::task::block_in_place(f)
        }
        _ => f(),
    }
}
