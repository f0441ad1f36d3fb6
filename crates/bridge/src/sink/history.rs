//! Location history: the batcher, the spool replayer and schema upkeep.
//!
//! The batcher takes every accepted location from the queue's history lane
//! and writes it with binary COPY every flush interval, or as soon as a
//! batch is full. While PostgreSQL is down rows wait in memory up to
//! `history_memory_rows`, then go to the spool; the replayer writes the
//! spool back once PostgreSQL answers again.

use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;

use crate::backoff::Backoff;
use crate::health::Health;
use crate::metrics::Metrics;
use crate::queue::{LocationRow, Queue};
use crate::sink::postgres::Pg;
use crate::spool::{Record, Spool};

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
    /// (to PostgreSQL, or the spool).
    pub async fn run(self) {
        let mut buf: Vec<LocationRow> = Vec::new();
        let mut ticker = tokio::time::interval(self.flush_interval);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        ticker.tick().await;
        loop {
            tokio::select! {
                rows = self.queue.next_history(self.batch_rows) => match rows {
                    Some(rows) => buf.extend(rows),
                    None => break,
                },
                _ = ticker.tick() => {
                    self.flush(&mut buf).await;
                    continue;
                }
            }
            if buf.len() >= self.batch_rows {
                self.flush(&mut buf).await;
                ticker.reset();
            }
            self.metrics.history_pending_rows.set(buf.len() as i64);
        }
        self.flush(&mut buf).await;
        if !buf.is_empty() {
            self.spill(&mut buf).await;
        }
    }

    async fn flush(&self, buf: &mut Vec<LocationRow>) {
        if !buf.is_empty() && self.health.pg() {
            let started = Instant::now();
            let cutoff = fieldcast_core::time::now_ms() - self.retention_ms;
            let mut written = 0;
            for chunk in buf.chunks(self.batch_rows) {
                match self.pg.write_locations(chunk, cutoff, &self.metrics).await {
                    Ok(_) => {
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
                buf.clear();
            }
            // Keep them in memory and try again at the next flush; the
            // queue's history lane holds back the source meanwhile.
            Err(e) => {
                tracing::error!(error = %e, rows = buf.len(), "cannot spill location history to the spool")
            }
        }
    }
}

/// Writes sealed spool segments to PostgreSQL whenever it answers.
pub async fn replay_spool(
    spool: Spool,
    pg: Arc<Pg>,
    health: Arc<Health>,
    metrics: Arc<Metrics>,
    batch_rows: usize,
    retention_ms: i64,
    shutdown: CancellationToken,
) {
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tick.tick() => {}
        }
        let bytes = spool.bytes();
        metrics.spool_bytes.set(bytes as i64);
        if bytes == 0 || !health.pg() {
            continue;
        }
        let segments = match spool.seal() {
            Ok(s) => s,
            Err(e) => {
                tracing::error!(error = %e, "cannot list the spool");
                continue;
            }
        };
        for seg in segments {
            if shutdown.is_cancelled() || !health.pg() {
                break;
            }
            let rows = match Spool::read(&seg) {
                Ok(r) => r,
                Err(e) => {
                    tracing::error!(error = %e, "cannot read a spool segment");
                    break;
                }
            };
            let cutoff = fieldcast_core::time::now_ms() - retention_ms;
            let mut ok = pg
                .write_durable(&rows.statuses, &rows.events, &metrics)
                .await
                .is_ok();
            for chunk in rows.locations.chunks(batch_rows) {
                ok = ok && pg.write_locations(chunk, cutoff, &metrics).await.is_ok();
            }
            if !ok {
                health.set_pg(false);
                break;
            }
            if let Err(e) = Spool::remove(&seg) {
                tracing::error!(error = %e, "cannot remove a replayed spool segment");
                break;
            }
            tracing::info!(
                segment = %seg.display(),
                locations = rows.locations.len(),
                statuses = rows.statuses.len(),
                events = rows.events.len(),
                "replayed spooled history"
            );
        }
        metrics.spool_bytes.set(spool.bytes() as i64);
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
