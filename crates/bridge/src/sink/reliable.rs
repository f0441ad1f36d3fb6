//! The reliable loop: events and status reports durably first (PostgreSQL,
//! or the fsync'd spool while it is down), then their Redis side (directly,
//! or through the [`Outbox`] while Redis is away), then the acks in order.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use crate::ack::Acker;
use crate::health::Health;
use crate::metrics::Metrics;
use crate::queue::{Batch, Queue};
use crate::record::{EventRow, Reliable, StatusRow};
use crate::sink::outbox::Outbox;
use crate::sink::{dead_letter_refused, dead_letter_unstorable, pause};
use crate::store::postgres::{Pg, Unstorable};
use crate::store::redis::RedisSink;
use crate::store::spool::{Record, Spool};
use fieldcast_core::{Backoff, LogLimiter};

/// How long the reliable lane waits for Redis before it defers a batch's
/// Redis side to the outbox: well inside the broker's patience, so a Redis
/// that hangs never holds acknowledgements back for long.
const REDIS_STEP_TIMEOUT: Duration = Duration::from_secs(1);

/// Takes the reliable lane of the [`Queue`]: one task, so acknowledgements
/// leave in the order the broker sent the PUBLISHes.
pub struct ReliableSink {
    pub queue: Arc<Queue>,
    pub redis: Arc<RedisSink>,
    pub pg: Arc<Pg>,
    pub spool: Spool,
    pub outbox: Arc<Outbox>,
    pub acker: Acker,
    pub health: Arc<Health>,
    pub metrics: Arc<Metrics>,
    pub batch_size: usize,
}

impl ReliableSink {
    /// Drains the reliable lane until the queue is closed and empty. Past
    /// `abandon` nothing more is written: what is left stays unacknowledged
    /// and the broker redelivers it.
    pub async fn run(self, abandon: CancellationToken) {
        let mut log = LogLimiter::new(5, Duration::from_secs(10));
        while let Some(batch) = self.queue.next_reliable(self.batch_size).await {
            let Some(refused) = self.store_durably(&batch, &abandon, &mut log).await else {
                break;
            };
            // Rows the store refused were dead-lettered: they must not
            // appear live either. Their acks still go out.
            let owed = Batch {
                reliable: batch
                    .reliable
                    .iter()
                    .filter(|r| !matches!(r, Reliable::AckOnly(_)) && !refused.contains(&key(r)))
                    .cloned()
                    .collect(),
                ..Batch::default()
            };
            if !self.redis_or_outbox(&owed, &abandon, &mut log).await {
                break;
            }
            for item in &batch.reliable {
                if let Some(t) = item.ack() {
                    if let Err(e) = self.acker.ack(t).await {
                        // The connection is gone; the broker redelivers
                        // unacknowledged messages and every write is
                        // idempotent.
                        tracing::debug!(error = %e, "ack not sent");
                    }
                    self.metrics.acks_pending.dec();
                }
            }
        }
    }

    /// Events and status reports into PostgreSQL, or the spool. Returns the
    /// keys of the rows PostgreSQL refused for their content (dead-lettered
    /// here); `None` means neither store worked before `abandon`.
    async fn store_durably(
        &self,
        batch: &Batch,
        abandon: &CancellationToken,
        log: &mut LogLimiter,
    ) -> Option<HashSet<ItemKey>> {
        let mut statuses = Vec::new();
        let mut events = Vec::new();
        for r in &batch.reliable {
            match r {
                Reliable::Status {
                    device, status, rx, ..
                } => statuses.push(StatusRow {
                    device: device.clone(),
                    status: status.clone(),
                    received_at: *rx,
                }),
                Reliable::Event {
                    device, event, rx, ..
                } => events.push(EventRow {
                    device: device.clone(),
                    event: event.clone(),
                    received_at: *rx,
                }),
                Reliable::AckOnly(_) => {}
            }
        }
        if statuses.is_empty() && events.is_empty() {
            return Some(HashSet::new());
        }
        let mut backoff = Backoff::new(Duration::from_millis(100), Duration::from_secs(5));
        loop {
            if self.health.pg() {
                match self
                    .pg
                    .write_durable_isolating(&statuses, &events, &self.metrics)
                    .await
                {
                    Ok(bad) => {
                        // Nothing waits on the spool any more.
                        self.health.set_spool(true);
                        let refused = bad.iter().map(unstorable_key).collect();
                        dead_letter_unstorable(&self.queue, &self.metrics, log, bad);
                        return Some(refused);
                    }
                    Err(_) => self.health.set_pg(false),
                }
            }
            let records: Vec<Record> = statuses
                .iter()
                .map(Record::from)
                .chain(events.iter().map(Record::from))
                .collect();
            let n = records.len() as u64;
            match self.spool.append(records).await {
                Ok(()) => {
                    self.health.set_spool(true);
                    self.metrics.spooled_records.inc_by(n);
                    return Some(HashSet::new());
                }
                Err(e) => {
                    // Nothing is acknowledged until one of them works: the
                    // queue fills and the source holds back.
                    self.health.set_spool(false);
                    if log.allow().is_some() {
                        tracing::error!(error = %e, "cannot store events: PostgreSQL is down and the spool failed; holding acknowledgements back");
                    }
                }
            }
            if !pause(&mut backoff, abandon).await {
                return None;
            }
        }
    }

    /// The Redis side of stored items: applied now when nothing is owed and
    /// Redis answers, else appended to the outbox. `false` means neither
    /// worked before `abandon`.
    async fn redis_or_outbox(
        &self,
        batch: &Batch,
        abandon: &CancellationToken,
        log: &mut LogLimiter,
    ) -> bool {
        if batch.is_empty() {
            return true;
        }
        let mut backoff = Backoff::new(Duration::from_millis(100), Duration::from_secs(5));
        loop {
            {
                let _gate = self.outbox.gate().await;
                if !self.outbox.pending() && self.health.redis() {
                    match tokio::time::timeout(
                        REDIS_STEP_TIMEOUT,
                        self.redis.apply_isolating(batch, &self.metrics),
                    )
                    .await
                    {
                        Ok(Ok(bad)) => {
                            dead_letter_refused(&self.queue, &self.metrics, log, bad);
                            return true;
                        }
                        Ok(Err(e)) => {
                            self.health.set_redis(false);
                            if let Some(suppressed) = log.allow() {
                                tracing::warn!(error = %e, suppressed, "redis is failing; deferring to the outbox");
                            }
                        }
                        Err(_) => {
                            self.health.set_redis(false);
                            if let Some(suppressed) = log.allow() {
                                tracing::warn!(timeout = ?REDIS_STEP_TIMEOUT, suppressed, "redis did not answer; deferring to the outbox");
                            }
                        }
                    }
                }
                // A batch that timed out may have reached Redis after all;
                // replaying it from the outbox changes nothing (see there).
                match self.outbox.defer(&batch.reliable, &self.metrics).await {
                    Ok(()) => return true,
                    Err(e) => {
                        self.health.set_spool(false);
                        if log.allow().is_some() {
                            tracing::error!(error = %e, "cannot write the outbox while Redis is down; holding acknowledgements back");
                        }
                    }
                }
            }
            if !pause(&mut backoff, abandon).await {
                return false;
            }
        }
    }
}

/// Identifies a stored item: (device, event id) or (device, status ts).
#[derive(Debug, PartialEq, Eq, Hash)]
pub(crate) enum ItemKey {
    Status(String, i64),
    Event(String, String),
    Other,
}

fn key(r: &Reliable) -> ItemKey {
    match r {
        Reliable::Status { device, status, .. } => ItemKey::Status(device.to_string(), status.ts),
        Reliable::Event { device, event, .. } => {
            ItemKey::Event(device.to_string(), event.id.clone())
        }
        Reliable::AckOnly(_) => ItemKey::Other,
    }
}

fn unstorable_key(u: &Unstorable) -> ItemKey {
    match u {
        Unstorable::Status(r, _) => ItemKey::Status(r.device.to_string(), r.status.ts),
        Unstorable::Event(r, _) => ItemKey::Event(r.device.to_string(), r.event.id.clone()),
        Unstorable::Location(..) => ItemKey::Other,
    }
}
