//! Wakers: how one part of the daemon tells another that work is waiting, without knowing it.
//!
//! The engine's claim loop waits on [`Wakers::runs`], the delivery worker on
//! [`Wakers::outbox`]. Whoever commits something they should look at — the intake after an
//! answer, the HTTP face after a trigger, the executor after queuing mail — wakes them. A wake-up
//! is only a hint: both loops also poll the database, so a wake-up lost (or another daemon's
//! commit) is picked up at the next poll.

use std::sync::Arc;

use tokio::sync::Notify;

/// The run and outbox wakers of one daemon (cheap to clone: shared handles).
#[derive(Debug, Clone, Default)]
pub struct Wakers {
    runs: Arc<Notify>,
    outbox: Arc<Notify>,
}

impl Wakers {
    /// New wakers, with no one waiting yet.
    pub fn new() -> Self {
        Self::default()
    }

    /// A run may have become due: wake the claim loop.
    pub fn wake_runs(&self) {
        self.runs.notify_one();
    }

    /// Messages were queued: wake the delivery worker.
    pub fn wake_outbox(&self) {
        self.outbox.notify_one();
    }

    /// What the claim loop waits on.
    pub fn runs(&self) -> &Notify {
        &self.runs
    }

    /// What the delivery worker waits on.
    pub fn outbox(&self) -> Arc<Notify> {
        self.outbox.clone()
    }
}
