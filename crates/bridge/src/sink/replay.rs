//! The spool replayer: what was spooled while PostgreSQL was down (history
//! rows from the batcher, events and status reports from the reliable
//! lane) is written back, oldest segment first, once it answers again.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use crate::health::Health;
use crate::metrics::Metrics;
use crate::queue::Queue;
use crate::sink::dead_letter_unstorable;
use crate::store::postgres::{Pg, PgError};
use crate::store::spool::{Rows, SegmentReader, Spool, SpoolError};
use fieldcast_core::{Backoff, LogLimiter};

/// Records read from a spool segment at a time.
const REPLAY_CHUNK: usize = 5_000;

/// When the replayer looks and how long it keeps trying one segment.
#[derive(Debug, Clone, Copy)]
pub struct ReplayTiming {
    /// Between looks at the spool.
    pub tick: Duration,
    /// Backoff after a failed segment: from `min` doubling to `max`.
    pub min_backoff: Duration,
    pub max_backoff: Duration,
    /// Failed replays of one segment (PostgreSQL answering meanwhile)
    /// before it is moved to quarantine.
    pub attempts: u32,
}

impl Default for ReplayTiming {
    fn default() -> Self {
        ReplayTiming {
            tick: Duration::from_secs(1),
            min_backoff: Duration::from_secs(1),
            max_backoff: Duration::from_secs(30),
            attempts: 8,
        }
    }
}

#[derive(Debug, thiserror::Error)]
enum ReplayError {
    #[error(transparent)]
    Pg(#[from] PgError),
    #[error(transparent)]
    Spool(#[from] SpoolError),
}

/// Writes spool segments to PostgreSQL whenever it answers, oldest first,
/// in bounded chunks. Rows PostgreSQL refuses are dead-lettered; a segment
/// that keeps failing is quarantined, so nothing behind it waits forever.
pub struct Replayer {
    pub spool: Spool,
    pub pg: Arc<Pg>,
    pub queue: Arc<Queue>,
    pub health: Arc<Health>,
    pub metrics: Arc<Metrics>,
    pub batch_rows: usize,
    pub retention_ms: i64,
    pub timing: ReplayTiming,
}

/// What one segment held.
#[derive(Debug, Default)]
struct Replayed {
    locations: usize,
    statuses: usize,
    events: usize,
    torn: u64,
}

impl Replayer {
    pub async fn run(self, shutdown: CancellationToken) {
        let t = self.timing;
        let mut backoff = Backoff::new(t.min_backoff, t.max_backoff);
        let mut failures: HashMap<PathBuf, u32> = HashMap::new();
        let mut log = LogLimiter::new(5, Duration::from_secs(10));
        let mut wait = t.tick;
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tokio::time::sleep(wait) => {}
            }
            wait = t.tick;
            let bytes = self.spool.bytes();
            self.metrics.spool_bytes.set(bytes as i64);
            if bytes == 0 || !self.health.pg() {
                continue;
            }
            let segments = match self.spool.seal() {
                Ok(s) => s,
                Err(e) => {
                    tracing::error!(error = %e, "cannot list the spool");
                    wait = backoff.next_delay();
                    continue;
                }
            };
            for seg in segments {
                if shutdown.is_cancelled() || !self.health.pg() {
                    break;
                }
                match self.replay(&seg, &mut log).await {
                    Ok(r) => {
                        failures.remove(&seg);
                        backoff.reset();
                        if let Err(e) = Spool::remove(&seg) {
                            tracing::error!(error = %e, "cannot remove a replayed spool segment");
                            wait = backoff.next_delay();
                            break;
                        }
                        tracing::info!(
                            segment = %seg.display(),
                            locations = r.locations,
                            statuses = r.statuses,
                            events = r.events,
                            torn = r.torn,
                            "replayed spooled history"
                        );
                    }
                    Err(e) => {
                        // An outage is not the segment's fault: only count
                        // attempts that failed while PostgreSQL answers.
                        let outage = matches!(&e, ReplayError::Pg(p) if !p.is_permanent());
                        if outage {
                            self.health.set_pg(false);
                        }
                        if !outage || self.pg.ping().await {
                            let n = failures.entry(seg.clone()).or_default();
                            *n += 1;
                            if *n >= t.attempts {
                                failures.remove(&seg);
                                self.quarantine(&seg, &e);
                                continue;
                            }
                            tracing::warn!(segment = %seg.display(), error = %e, attempt = *n, "spool segment replay failed; will retry");
                        }
                        wait = backoff.next_delay();
                        break;
                    }
                }
            }
            self.metrics.spool_bytes.set(self.spool.bytes() as i64);
        }
    }

    async fn replay(&self, seg: &Path, log: &mut LogLimiter) -> Result<Replayed, ReplayError> {
        let mut reader = SegmentReader::open(seg)?;
        let mut done = Replayed::default();
        loop {
            let (r, chunk) = reader.next_chunk_async(REPLAY_CHUNK).await?;
            reader = r;
            let Some(chunk) = chunk else {
                return Ok(done);
            };
            self.metrics.spool_torn_records.inc_by(chunk.torn);
            done.torn += chunk.torn;
            let rows = Rows::from_records(chunk.records);
            self.metrics.spool_torn_records.inc_by(rows.skipped);
            let bad = self
                .pg
                .write_durable_isolating(&rows.statuses, &rows.events, &self.metrics)
                .await?;
            dead_letter_unstorable(&self.queue, &self.metrics, log, bad);
            let cutoff = fieldcast_core::time::now_ms() - self.retention_ms;
            for part in rows.locations.chunks(self.batch_rows) {
                let bad = self
                    .pg
                    .write_locations_isolating(part, cutoff, &self.metrics)
                    .await?;
                dead_letter_unstorable(&self.queue, &self.metrics, log, bad);
            }
            done.locations += rows.locations.len();
            done.statuses += rows.statuses.len();
            done.events += rows.events.len();
        }
    }

    fn quarantine(&self, seg: &Path, why: &ReplayError) {
        self.metrics.spool_quarantined.inc();
        match self.spool.quarantine(seg) {
            Ok(to) => tracing::error!(
                segment = %to.display(),
                error = %why,
                "a spool segment failed every replay attempt; moved to quarantine (inspect it, then move it back to replay it)"
            ),
            Err(e) => {
                tracing::error!(segment = %seg.display(), error = %e, "cannot quarantine a spool segment")
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::queue::Capacity;

    /// Pins: a segment that cannot be read is retried with backoff, then
    /// moved to quarantine and counted, and the spool is clear again. On
    /// the paused clock, so the retry waits take no real time.
    #[tokio::test(start_paused = true)]
    async fn an_unreadable_segment_is_quarantined_after_its_attempts() {
        let dir = tempfile::tempdir().unwrap();
        let spool = Spool::open(dir.path()).unwrap();
        // A directory where a segment should be: opening works, reading
        // fails (EISDIR), as a damaged file system would.
        let bad = dir.path().join("seg-0000000000001-000000.jsonl");
        std::fs::create_dir(&bad).unwrap();
        let metrics = Arc::new(Metrics::new());
        let health = Arc::new(Health::default());
        health.set_pg(true);
        health.set_schema(true);
        let pool = crate::store::postgres::pool("postgres://nobody@127.0.0.1:1/none").unwrap();
        let replayer = Replayer {
            spool: spool.clone(),
            pg: Arc::new(Pg::new(pool)),
            queue: Arc::new(Queue::new(
                Capacity {
                    live: 10,
                    reliable: 10,
                    history: 10,
                    deadletters: 10,
                },
                metrics.clone(),
            )),
            health,
            metrics: metrics.clone(),
            batch_rows: 100,
            retention_ms: i64::MAX / 2,
            timing: ReplayTiming {
                tick: Duration::from_millis(10),
                min_backoff: Duration::from_millis(10),
                max_backoff: Duration::from_millis(20),
                attempts: 3,
            },
        };
        let stop = CancellationToken::new();
        let task = tokio::spawn(replayer.run(stop.clone()));
        for _ in 0..500 {
            if metrics.spool_quarantined.get() > 0 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        stop.cancel();
        task.await.unwrap();
        assert_eq!(metrics.spool_quarantined.get(), 1);
        assert!(!bad.exists());
        assert!(dir
            .path()
            .join("quarantine/seg-0000000000001-000000.jsonl")
            .is_dir());
        assert_eq!(spool.bytes(), 0);
    }
}
