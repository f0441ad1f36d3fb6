//! Location history: the batcher, the spool replayer and schema upkeep.
//!
//! The batcher takes every accepted location from the queue's history lane
//! and writes it with binary COPY every flush interval, or as soon as a
//! batch is full. While PostgreSQL is down rows wait in memory up to
//! `history_memory_rows`, then go to the spool; the replayer writes the
//! spool back once PostgreSQL answers again. If the spool cannot be written
//! either, the batcher stops taking rows (at most `history_memory_rows` +
//! one batch stay in memory), the history lane fills and the source holds
//! back: backpressure, never unbounded memory.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;

use crate::backoff::{Backoff, LogLimiter};
use crate::health::Health;
use crate::metrics::Metrics;
use crate::queue::{LocationRow, Queue};
use crate::sink::dead_letter_unstorable;
use crate::sink::postgres::{Pg, PgError};
use crate::spool::{Record, Rows, SegmentReader, Spool, SpoolError};

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

pub struct Batcher {
    pub queue: Arc<Queue>,
    pub pg: Arc<Pg>,
    pub spool: Spool,
    pub health: Arc<Health>,
    pub metrics: Arc<Metrics>,
    pub flush_interval: Duration,
    pub batch_rows: usize,
    pub memory_rows: usize,
    pub retention_ms: i64,
}

impl Batcher {
    /// Runs until the queue is closed and drained, then writes what is left
    /// (to PostgreSQL, or the spool). Past `abandon` (the shutdown
    /// deadline) rows that can go nowhere are given up, and counted in the
    /// log.
    pub async fn run(self, abandon: CancellationToken) {
        let mut buf: Vec<LocationRow> = Vec::new();
        let mut log = LogLimiter::new(5, Duration::from_secs(10));
        let mut ticker = tokio::time::interval(self.flush_interval);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        ticker.tick().await;
        let cap = self.memory_rows + self.batch_rows;
        loop {
            tokio::select! {
                // At `cap` rows PostgreSQL and the spool have both failed:
                // take no more until one of them works again.
                rows = self.queue.next_history(self.batch_rows), if buf.len() < cap => match rows {
                    Some(rows) => buf.extend(rows),
                    None => break,
                },
                _ = ticker.tick() => {
                    self.flush(&mut buf, &mut log).await;
                    continue;
                }
                _ = abandon.cancelled() => break,
            }
            if buf.len() >= self.batch_rows {
                self.flush(&mut buf, &mut log).await;
                ticker.reset();
            }
            self.metrics.history_pending_rows.set(buf.len() as i64);
        }
        self.flush(&mut buf, &mut log).await;
        if !buf.is_empty() {
            self.spill(&mut buf).await;
        }
        if !buf.is_empty() {
            tracing::error!(
                rows = buf.len(),
                "shutting down with location history that neither PostgreSQL nor the spool took"
            );
        }
    }

    async fn flush(&self, buf: &mut Vec<LocationRow>, log: &mut LogLimiter) {
        if !buf.is_empty() && self.health.pg() {
            let started = Instant::now();
            let cutoff = fieldcast_core::time::now_ms() - self.retention_ms;
            let mut written = 0;
            for chunk in buf.chunks(self.batch_rows) {
                match self
                    .pg
                    .write_locations_isolating(chunk, cutoff, &self.metrics)
                    .await
                {
                    Ok(bad) => {
                        dead_letter_unstorable(&self.queue, &self.metrics, log, bad);
                        self.metrics.history_batch_rows.observe(chunk.len() as f64);
                        written += chunk.len();
                    }
                    Err(_) => {
                        self.health.set_pg(false);
                        break;
                    }
                }
            }
            buf.drain(..written);
            if written > 0 {
                self.health.set_spool(true);
                self.metrics
                    .history_flush_seconds
                    .observe(started.elapsed().as_secs_f64());
            }
        }
        if buf.len() > self.memory_rows {
            self.spill(buf).await;
        }
        self.metrics.history_pending_rows.set(buf.len() as i64);
    }

    async fn spill(&self, buf: &mut Vec<LocationRow>) {
        let records: Vec<Record> = buf.iter().map(Record::from).collect();
        let n = records.len() as u64;
        match self.spool.append(records).await {
            Ok(()) => {
                self.metrics.spooled_records.inc_by(n);
                self.health.set_spool(true);
                buf.clear();
            }
            // Keep them in memory and try again at the next flush; the
            // batcher takes no more meanwhile, so the source holds back.
            Err(e) => {
                self.health.set_spool(false);
                tracing::error!(error = %e, rows = buf.len(), "cannot spill location history to the spool")
            }
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

/// Applies migrations and keeps partitions and retention up to date: at
/// start (retrying with backoff until PostgreSQL answers) and hourly.
pub async fn maintain_schema(
    pg: Arc<Pg>,
    health: Arc<Health>,
    retention: Duration,
    shutdown: CancellationToken,
) {
    let mut backoff = Backoff::new(Duration::from_millis(500), Duration::from_secs(30));
    loop {
        let outcome = async {
            let mut client = pg.pool().get().await.map_err(|e| e.to_string())?;
            crate::db::prepare(&mut client, retention)
                .await
                .map_err(|e| e.to_string())
        }
        .await;
        let wait = match outcome {
            Ok(m) => {
                if m.applied + m.created + m.dropped > 0 {
                    tracing::info!(
                        migrations = m.applied,
                        partitions_created = m.created,
                        partitions_dropped = m.dropped,
                        "schema up to date"
                    );
                }
                health.set_schema(true);
                backoff.reset();
                Duration::from_secs(3600)
            }
            Err(e) => {
                let d = backoff.next_delay();
                tracing::warn!(error = %e, retry_in = ?d, "schema upkeep failed");
                d
            }
        };
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(wait) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::queue::Capacity;

    /// Pins: a segment that cannot be read is retried with backoff, then
    /// moved to quarantine and counted, and the spool is clear again.
    #[tokio::test]
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
        let pool = crate::sink::postgres::pool("postgres://nobody@127.0.0.1:1/none").unwrap();
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
