//! The live loop: locations and dead letters straight to Redis, in one
//! pipeline per batch, so a location never waits for a PostgreSQL commit
//! (history has its own lane, [`crate::sink::history`]).

use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use crate::health::Health;
use crate::metrics::Metrics;
use crate::queue::{Batch, Queue};
use crate::sink::{dead_letter_refused, pause};
use crate::store::redis::RedisSink;
use fieldcast_core::{Backoff, LogLimiter};

/// Takes one shard of the live lane of the [`Queue`] (and, for shard 0,
/// the dead letters) to Redis. One runs per shard
/// (`FIELDCAST_SINK_WORKERS`): a device's locations are all in one shard,
/// so one worker writes them, batch after batch, in the order taken.
#[derive(Clone)]
pub struct LiveSink {
    pub queue: Arc<Queue>,
    /// The live shard this worker takes ([`Queue::with_live_shards`]).
    pub shard: usize,
    pub redis: Arc<RedisSink>,
    pub health: Arc<Health>,
    pub metrics: Arc<Metrics>,
    pub batch_size: usize,
}

impl LiveSink {
    /// Drains the live lanes until the queue is closed and empty. `abandon`
    /// is the shutdown deadline: past it a batch that cannot be written is
    /// dropped from the live path (history has its locations).
    pub async fn run(self, abandon: CancellationToken) {
        let mut log = LogLimiter::new(5, Duration::from_secs(10));
        while let Some(batch) = self.queue.next_live(self.shard, self.batch_size).await {
            let written = self.write_redis(&batch, &abandon, &mut log).await;
            if !batch.deadletters.is_empty() {
                self.queue.deadletters_written();
            }
            if !written {
                break;
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
            match self.redis.apply_isolating(batch, &self.metrics).await {
                Ok(bad) => {
                    self.health.set_redis(true);
                    dead_letter_refused(&self.queue, &self.metrics, log, bad);
                    return true;
                }
                Err(e) => {
                    self.health.set_redis(false);
                    if let Some(suppressed) = log.allow() {
                        tracing::warn!(error = %e, suppressed, "redis batch failed; holding it and retrying");
                    }
                }
            }
            if !pause(&mut backoff, abandon).await {
                return false;
            }
        }
    }
}
