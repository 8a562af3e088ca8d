//! Time, through one door.
//!
//! Nothing in pmoflow reads the wall clock or sleeps except through a [`Clock`], so that the same
//! engine runs on a simulated clock (tests, and later `pmoflow simulate`) exactly as it runs for real.

use std::collections::BTreeMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};

use chrono::{DateTime, Duration, Utc};
use tokio::sync::oneshot;

/// A boxed future returned by [`Clock::sleep_until`].
pub type Sleep = Pin<Box<dyn Future<Output = ()> + Send + 'static>>;

/// A source of "now" and of timers.
pub trait Clock: Send + Sync + 'static {
    /// The current instant.
    fn now(&self) -> DateTime<Utc>;
    /// A future that completes once [`Clock::now`] has reached `deadline`.
    fn sleep_until(&self, deadline: DateTime<Utc>) -> Sleep;
    /// A future that completes after `duration` of this clock's time.
    fn sleep(&self, duration: Duration) -> Sleep {
        self.sleep_until(self.now() + duration)
    }
}

/// A shared clock handle.
pub type SharedClock = Arc<dyn Clock>;

/// The real clock: `Utc::now()` and tokio timers.
#[derive(Debug, Default, Clone, Copy)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> DateTime<Utc> {
        Utc::now()
    }

    fn sleep_until(&self, deadline: DateTime<Utc>) -> Sleep {
        let wait = (deadline - Utc::now()).to_std().unwrap_or_default();
        Box::pin(tokio::time::sleep(wait))
    }
}

/// A clock that only moves when told to. Sleepers wake when [`SimClock::advance`] or
/// [`SimClock::set`] passes their deadline.
#[derive(Clone)]
pub struct SimClock {
    inner: Arc<Mutex<SimState>>,
}

struct SimState {
    now: DateTime<Utc>,
    next_id: u64,
    sleepers: BTreeMap<(DateTime<Utc>, u64), oneshot::Sender<()>>,
}

impl SimClock {
    /// A simulated clock starting at `start`.
    pub fn new(start: DateTime<Utc>) -> Self {
        Self {
            inner: Arc::new(Mutex::new(SimState {
                now: start,
                next_id: 0,
                sleepers: BTreeMap::new(),
            })),
        }
    }

    /// Moves time forward by `by` and wakes every sleeper whose deadline has passed.
    pub fn advance(&self, by: Duration) {
        let target = self.now() + by;
        self.set(target);
    }

    /// Sets the time (never backwards) and wakes every sleeper whose deadline has passed.
    pub fn set(&self, to: DateTime<Utc>) {
        // std Mutex: no await happens while it is held.
        let due = {
            let mut state = self.inner.lock().unwrap_or_else(|e| e.into_inner());
            if to > state.now {
                state.now = to;
            }
            let now = state.now;
            let later = state.sleepers.split_off(&(now, u64::MAX));
            std::mem::replace(&mut state.sleepers, later)
        };
        for (_, tx) in due {
            let _ = tx.send(());
        }
    }

    /// The earliest deadline anyone is sleeping on.
    pub fn next_deadline(&self) -> Option<DateTime<Utc>> {
        let state = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        state.sleepers.keys().next().map(|(t, _)| *t)
    }
}

impl Clock for SimClock {
    fn now(&self) -> DateTime<Utc> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner()).now
    }

    fn sleep_until(&self, deadline: DateTime<Utc>) -> Sleep {
        let rx = {
            let mut state = self.inner.lock().unwrap_or_else(|e| e.into_inner());
            if deadline <= state.now {
                return Box::pin(async {});
            }
            let (tx, rx) = oneshot::channel();
            let id = state.next_id;
            state.next_id += 1;
            state.sleepers.insert((deadline, id), tx);
            rx
        };
        Box::pin(async move {
            let _ = rx.await;
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn sim_clock_wakes_sleepers_in_order() {
        let start = DateTime::parse_from_rfc3339("2027-04-01T00:00:00Z")
            .map(|t| t.with_timezone(&Utc))
            .expect("valid time");
        let clock = SimClock::new(start);
        let a = clock.sleep(Duration::seconds(10));
        let b = clock.sleep(Duration::seconds(20));
        assert_eq!(clock.next_deadline(), Some(start + Duration::seconds(10)));
        clock.advance(Duration::seconds(15));
        a.await;
        assert_eq!(clock.next_deadline(), Some(start + Duration::seconds(20)));
        let handle = tokio::spawn(b);
        tokio::task::yield_now().await;
        assert!(!handle.is_finished());
        clock.advance(Duration::seconds(5));
        handle.await.expect("sleeper completes");
        assert_eq!(clock.now(), start + Duration::seconds(20));
    }
}
