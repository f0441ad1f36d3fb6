//! The loops that drain the queue, each lane its own (see
//! [`crate::queue`]), over the clients of [`crate::store`].
//!
//! - [`live`]: live locations and dead letters to Redis, one pipeline per
//!   batch; several workers.
//! - [`reliable`]: events and status reports stored durably (PostgreSQL,
//!   or the fsync'd spool while it is down), then to Redis — or, while
//!   Redis is away, to the [`outbox`] — then the QoS 1 messages are
//!   acknowledged in order; one task.
//! - [`history`]: the location batcher (binary COPY every flush interval or
//!   when a batch is full).
//! - [`outbox`], [`replay`]: what the loops owe later — the Redis side of
//!   stored messages, and the spool's rows for PostgreSQL.
//!
//! Every store error is one of two kinds (`PgError::is_permanent`,
//! `RedisSinkError::is_permanent`): an outage, retried with backoff and
//! reported on `/readyz`, or rows the store refuses for their content,
//! which are found by splitting the batch, dead-lettered with reason
//! `store_rejected` and counted, while the rest is written.

pub mod history;
pub mod live;
pub mod outbox;
pub mod reliable;
pub mod replay;

use tokio_util::sync::CancellationToken;

use fieldcast_core::live as live_json;

use crate::metrics::{Metrics, TableLabel};
use crate::queue::{Batch, Queue};
use crate::record::{DeadLetter, Reliable};
use crate::store::postgres::Unstorable;
use crate::store::spool::Record;
use fieldcast_core::{Backoff, LogLimiter};

/// The dead-letter reason of a row a store refused for its content.
pub const STORE_REJECTED: &str = "store_rejected";

/// Dead-letters rows a store refused (PROTOCOL.md §2's list, so an
/// operator finds them where the edge's rejects are) and counts them.
pub fn dead_letter_unstorable(
    queue: &Queue,
    metrics: &Metrics,
    log: &mut LogLimiter,
    bad: Vec<Unstorable>,
) {
    let now = fieldcast_core::time::now_ms();
    for u in bad {
        let (table, topic, record, reason) = match &u {
            Unstorable::Location(r, why) => (
                "locations",
                format!("devices/{}/location", r.device),
                Record::from(r),
                why,
            ),
            Unstorable::Status(r, why) => (
                "device_status",
                format!("devices/{}/status", r.device),
                Record::from(r),
                why,
            ),
            Unstorable::Event(r, why) => (
                "events",
                format!("devices/{}/events", r.device),
                Record::from(r),
                why,
            ),
        };
        if let Some(suppressed) = log.allow() {
            tracing::error!(%topic, table, error = %reason, suppressed, "a row was refused by the store; dead-lettered");
        }
        metrics
            .store_rejected
            .get_or_create(&TableLabel { table })
            .inc();
        let payload = serde_json::to_vec(&record).unwrap_or_default();
        queue.push_deadletter(DeadLetter::new(&topic, STORE_REJECTED, now, &payload));
    }
}

/// Dead-letters items Redis refused for their content (one-item batches
/// from `RedisSink::apply_isolating`) and counts them.
pub fn dead_letter_refused(
    queue: &Queue,
    metrics: &Metrics,
    log: &mut LogLimiter,
    bad: Vec<Batch>,
) {
    let now = fieldcast_core::time::now_ms();
    for b in bad {
        metrics
            .store_rejected
            .get_or_create(&TableLabel { table: "redis" })
            .inc();
        let dl = if let Some(l) = b.locations.first() {
            let id = l.device.as_str();
            Some((
                format!("devices/{id}/location"),
                live_json::location_json(id, &l.loc),
            ))
        } else if let Some(r) = b.reliable.first() {
            match r {
                Reliable::Status { device, status, .. } => Some((
                    format!("devices/{device}/status"),
                    live_json::status_json(device.as_str(), status),
                )),
                Reliable::Event { device, event, .. } => Some((
                    format!("devices/{device}/events"),
                    live_json::event_json(device.as_str(), event),
                )),
                Reliable::AckOnly(_) => None,
            }
        } else {
            // A dead letter the list refused cannot go to the list either.
            None
        };
        if let Some(suppressed) = log.allow() {
            tracing::error!(item = ?dl.as_ref().map(|d| &d.0), suppressed, "redis refused an item for its content; dead-lettered");
        }
        if let Some((topic, payload)) = dl {
            queue.push_deadletter(DeadLetter::new(
                &topic,
                STORE_REJECTED,
                now,
                payload.as_bytes(),
            ));
        }
    }
}

/// Waits out the next backoff delay; `false` when `abandon` (the shutdown
/// deadline) came first.
pub(crate) async fn pause(backoff: &mut Backoff, abandon: &CancellationToken) -> bool {
    tokio::select! {
        _ = abandon.cancelled() => false,
        _ = tokio::time::sleep(backoff.next_delay()) => true,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    /// Pins, on the paused clock: a retry waits out the backoff's delay
    /// (which grows), and the shutdown deadline ends the wait at once.
    #[tokio::test(start_paused = true)]
    async fn a_retry_waits_its_backoff_unless_abandoned() {
        let mut backoff = Backoff::new(Duration::from_secs(1), Duration::from_secs(8));
        let abandon = CancellationToken::new();
        let mut waited = Vec::new();
        for _ in 0..4 {
            let t0 = tokio::time::Instant::now();
            assert!(pause(&mut backoff, &abandon).await);
            waited.push(t0.elapsed());
        }
        assert!(waited[0] >= Duration::from_millis(500) && waited[0] <= Duration::from_secs(1));
        assert!(waited[3] >= Duration::from_secs(4), "{waited:?}");

        let t0 = tokio::time::Instant::now();
        let cancel = abandon.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(300)).await;
            cancel.cancel();
        });
        assert!(!pause(&mut backoff, &abandon).await);
        assert_eq!(t0.elapsed(), Duration::from_millis(300));
    }
}
