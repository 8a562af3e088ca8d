//! The delivery worker: leases due messages, delivers them (bounded concurrency), records the
//! result. Several daemons can share one database: leases keep them from sending the same
//! message at the same time.

use std::sync::Arc;

use chrono::{DateTime, Duration, Utc};
use futures::StreamExt;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use super::transport::Transports;
use super::{Delivery, DeliveryConfig};
use crate::clock::SharedClock;
use crate::store::{OutboxRow, Store};

/// How long a delivery may hold a message before another worker may try it.
const LEASE: Duration = Duration::minutes(5);

/// How long a worker keeps trying to record a delivery's result while the database is away:
/// well within [`LEASE`], so that no other worker has taken the message meanwhile.
const RECORD_FOR: Duration = Duration::minutes(4);

/// The delay before attempt `attempt + 1`, exponential with equal jitter.
pub fn backoff(delivery: &DeliveryConfig, attempt: u32, random_unit: f64) -> std::time::Duration {
    let cfg = &delivery.outbox;
    let exp = attempt.saturating_sub(1).min(30);
    let base = cfg.backoff.saturating_mul(1u32 << exp).min(cfg.max_backoff);
    let half = base / 2;
    half + half.mul_f64(random_unit.clamp(0.0, 1.0))
}

/// Who claims messages: this process's instance id, and the lease after which a daemon whose
/// heartbeat stopped is considered gone (its claimed messages are taken over then, not after
/// the delivery lease).
#[derive(Debug, Clone)]
pub struct Owner {
    /// The claiming instance.
    pub instance_id: String,
    /// The daemons' lease (heartbeat expiry).
    pub lease: Duration,
}

/// Delivers messages until shutdown. `wake` is notified when a step commits new messages.
pub async fn run(
    store: Store,
    clock: SharedClock,
    delivery: Arc<DeliveryConfig>,
    tokens: crate::oauth::TokenSources,
    owner: Owner,
    wake: Arc<Notify>,
    shutdown: CancellationToken,
) {
    let transports = match Transports::new(delivery.clone(), tokens) {
        Ok(t) => t,
        Err(err) => {
            tracing::error!(error = %err, "outbox: cannot set up delivery; messages stay queued");
            shutdown.cancelled().await;
            return;
        }
    };
    let concurrency = delivery.outbox.concurrency.max(1);
    loop {
        if shutdown.is_cancelled() {
            return;
        }
        let now = clock.now();
        let limit = i64::try_from(concurrency * 8).unwrap_or(64);
        let node_id = &owner.instance_id;
        let batch = match store
            .claim_outbox(node_id, now, LEASE, now - owner.lease, limit)
            .await
        {
            Ok(b) => b,
            Err(err) => {
                tracing::error!(error = %err, "outbox: cannot claim messages; retrying");
                Vec::new()
            }
        };
        let full = i64::try_from(batch.len()).unwrap_or(0) == limit;
        if !batch.is_empty() {
            futures::stream::iter(batch)
                .map(|row| deliver_one(&store, &clock, &delivery, &transports, node_id, row))
                .buffer_unordered(concurrency)
                .collect::<Vec<()>>()
                .await;
        }
        if full {
            continue;
        }
        let poll =
            Duration::from_std(delivery.outbox.poll_interval).unwrap_or(Duration::seconds(1));
        let mut until = clock.now() + poll;
        if let Ok(Some(next)) = store.next_outbox_due().await {
            until = until.min(next);
        }
        tokio::select! {
            () = clock.sleep_until(until) => {}
            () = wake.notified() => {}
            () = shutdown.cancelled() => return,
        }
    }
}

async fn deliver_one(
    store: &Store,
    clock: &SharedClock,
    delivery: &DeliveryConfig,
    transports: &Transports,
    node_id: &str,
    row: OutboxRow,
) {
    let now = clock.now();
    let result = transports
        .deliver(row.kind, &row.message_id, &row.payload, now.timestamp())
        .await;
    let done = clock.now();
    let attempt = u32::try_from(row.attempts + 1).unwrap_or(u32::MAX);
    let server_wait = match &result {
        Delivery::Later(_, wait) => Some(*wait),
        _ => None,
    };
    let (status, retry_at, error): (&str, Option<DateTime<Utc>>, Option<String>) = match result {
        Delivery::Sent => {
            tracing::info!(kind = row.kind.as_str(), target = %row.target, message_id = %row.message_id, attempt, "message sent");
            ("sent", None, None)
        }
        Delivery::Permanent(reason) => {
            tracing::error!(kind = row.kind.as_str(), target = %row.target, message_id = %row.message_id, attempt, reason = %reason, "message refused; moved to dead letters");
            ("dead", None, Some(reason))
        }
        Delivery::Temporary(reason) | Delivery::Later(reason, _) => {
            let too_old =
                (done - row.created_at).to_std().unwrap_or_default() > delivery.outbox.max_age;
            if attempt >= delivery.outbox.max_attempts || too_old {
                tracing::error!(kind = row.kind.as_str(), target = %row.target, message_id = %row.message_id, attempt, reason = %reason, "message undeliverable; moved to dead letters");
                (
                    "dead",
                    None,
                    Some(format!("{reason} (gave up after {attempt} attempts)")),
                )
            } else {
                let mut delay = backoff(delivery, attempt, fastrand::f64());
                if let Some(wait) = server_wait {
                    // The server's word, within reason (an hour at most).
                    delay = delay.max(wait.min(std::time::Duration::from_secs(3600)));
                }
                let at = done + Duration::from_std(delay).unwrap_or(Duration::seconds(60));
                tracing::warn!(kind = row.kind.as_str(), target = %row.target, message_id = %row.message_id, attempt, reason = %reason, retry_in_ms = delay.as_millis() as u64, "delivery failed; will retry");
                ("pending", Some(at), Some(reason))
            }
        }
    };
    // The result is known: record it, trying again while the database is away (an outage, a
    // failover) for most of the lease. Only if that fails too does the lease expire and the
    // message go out again: at most a duplicate of a message the server already accepted, with
    // the same Message-ID / Idempotency-Key. (Found by the PostgreSQL outage test: dropping
    // the result left a delivered message leased for the whole five minutes.)
    let give_up = clock.now() + RECORD_FOR;
    let mut pause = std::time::Duration::from_millis(200);
    let mut failures = 0u32;
    loop {
        match store
            .outbox_attempted(&row.id, node_id, done, status, retry_at, error.as_deref())
            .await
        {
            Ok(()) => {
                if failures > 0 {
                    tracing::info!(message_id = %row.message_id, failures, "outbox: delivery result recorded after the database came back");
                }
                return;
            }
            Err(err) if clock.now() < give_up => {
                if failures == 0 {
                    tracing::warn!(message_id = %row.message_id, error = %err, "outbox: cannot record the delivery result yet; retrying");
                }
                failures += 1;
                clock
                    .sleep_until(
                        clock.now() + Duration::from_std(pause).unwrap_or(Duration::seconds(1)),
                    )
                    .await;
                pause = (pause * 2).min(std::time::Duration::from_secs(5));
            }
            Err(err) => {
                tracing::error!(message_id = %row.message_id, error = %err, "outbox: cannot record the delivery result; the message is tried again when its lease ends");
                return;
            }
        }
    }
}
