//! The sinks, fed by the queue.
//!
//! - [`live`]: two tasks. One takes live locations and dead letters to
//!   Redis in one pipeline per batch. The other takes the reliable lane:
//!   events and status reports are stored durably (PostgreSQL, or the
//!   fsync'd spool while it is down), then go to Redis in one pipeline — or,
//!   while Redis is away, to the [`outbox`] — then the QoS 1 messages are
//!   acknowledged in order.
//! - [`outbox`]: the Redis work owed for stored messages, replayed in order.
//! - [`history`]: the location batcher (binary COPY every flush interval or
//!   when a batch is full) and the spool replayer.
//! - [`redis`], [`postgres`]: the two stores.
//!
//! Every store error is one of two kinds (`PgError::is_permanent`,
//! `RedisSinkError::is_permanent`): an outage, retried with backoff and
//! reported on `/readyz`, or rows the store refuses for their content,
//! which are found by splitting the batch, dead-lettered with reason
//! `store_rejected` and counted, while the rest is written.

pub mod history;
pub mod live;
pub mod outbox;
pub mod postgres;
pub mod redis;

use crate::backoff::LogLimiter;
use crate::metrics::{Metrics, TableLabel};
use crate::queue::{DeadLetter, Queue};
use postgres::Unstorable;

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
                crate::spool::Record::from(r),
                why,
            ),
            Unstorable::Status(r, why) => (
                "device_status",
                format!("devices/{}/status", r.device),
                crate::spool::Record::from(r),
                why,
            ),
            Unstorable::Event(r, why) => (
                "events",
                format!("devices/{}/events", r.device),
                crate::spool::Record::from(r),
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
