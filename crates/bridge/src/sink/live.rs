//! The two sink loops. Live: locations and dead letters straight to Redis.
//! Reliable: events and status durably first, then Redis, then the acks in
//! order. Separate loops, so a PostgreSQL commit never delays a location.
//! See [`crate::sink`].

use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use crate::backoff::{Backoff, LogLimiter};
use crate::health::Health;
use crate::metrics::Metrics;
use crate::queue::{Batch, Queue, Reliable};
use crate::sink::postgres::{EventRow, Pg, StatusRow};
use crate::sink::redis::RedisSink;
use crate::source::mqtt::Acker;
use crate::spool::{Record, Spool};

#[derive(Clone)]
pub struct LiveSink {
    pub queue: Arc<Queue>,
    pub redis: Arc<RedisSink>,
    pub pg: Arc<Pg>,
    pub spool: Spool,
    pub acker: Acker,
    pub health: Arc<Health>,
    pub metrics: Arc<Metrics>,
    pub batch_size: usize,
}

impl LiveSink {
    /// Drains the live lanes until the queue is closed and empty. `abandon`
    /// is the shutdown deadline: past it a batch that cannot be written is
    /// dropped from the live path (history has its locations).
    pub async fn run_live(self, abandon: CancellationToken) {
        let mut log = LogLimiter::new(5, Duration::from_secs(10));
        while let Some(batch) = self.queue.next_live(self.batch_size).await {
            if !self.write_redis(&batch, &abandon, &mut log).await {
                break;
            }
        }
    }

    /// Drains the reliable lane until the queue is closed and empty. Past
    /// `abandon` nothing more is written: what is left stays unacknowledged
    /// and the broker redelivers it.
    pub async fn run_reliable(self, abandon: CancellationToken) {
        let mut log = LogLimiter::new(5, Duration::from_secs(10));
        while let Some(batch) = self.queue.next_reliable(self.batch_size).await {
            if !self.store_durably(&batch, &abandon, &mut log).await
                || !self.write_redis(&batch, &abandon, &mut log).await
            {
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

    /// Events and status reports into PostgreSQL, or the spool. `false`
    /// means neither worked before `abandon`.
    async fn store_durably(
        &self,
        batch: &Batch,
        abandon: &CancellationToken,
        log: &mut LogLimiter,
    ) -> bool {
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
            return true;
        }
        let mut backoff = Backoff::new(Duration::from_millis(100), Duration::from_secs(5));
        loop {
            if self.health.pg() {
                match self
                    .pg
                    .write_durable(&statuses, &events, &self.metrics)
                    .await
                {
                    Ok(()) => return true,
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
                    self.metrics.spooled_records.inc_by(n);
                    return true;
                }
                Err(e) => {
                    if log.allow().is_some() {
                        tracing::error!(error = %e, "cannot store events: PostgreSQL is down and the spool failed");
                    }
                }
            }
            if !self.pause(&mut backoff, abandon).await {
                return false;
            }
        }
    }

    async fn write_redis(
        &self,
        batch: &Batch,
        abandon: &CancellationToken,
        log: &mut LogLimiter,
    ) -> bool {
        let mut backoff = Backoff::new(Duration::from_millis(100), Duration::from_secs(5));
        loop {
            match self.redis.apply(batch, &self.metrics).await {
                Ok(_) => {
                    self.health.set_redis(true);
                    return true;
                }
                Err(e) => {
                    self.health.set_redis(false);
                    if let Some(suppressed) = log.allow() {
                        tracing::warn!(error = %e, suppressed, "redis batch failed; holding it and retrying");
                    }
                }
            }
            if !self.pause(&mut backoff, abandon).await {
                return false;
            }
        }
    }

    async fn pause(&self, backoff: &mut Backoff, abandon: &CancellationToken) -> bool {
        tokio::select! {
            _ = abandon.cancelled() => false,
            _ = tokio::time::sleep(backoff.next_delay()) => true,
        }
    }
}
