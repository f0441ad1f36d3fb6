//! Location history: the batcher. It takes every accepted location from the queue's history lane
//! and writes it with binary COPY every flush interval, or as soon as a
//! batch is full. While PostgreSQL is down rows wait in memory up to
//! `history_memory_rows`, then go to the spool; the replayer writes the
//! spool back once PostgreSQL answers again. If the spool cannot be written
//! either, the batcher stops taking rows (at most `history_memory_rows` +
//! one batch stay in memory), the history lane fills and the source holds
//! back: backpressure, never unbounded memory.

use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;

use crate::health::Health;
use crate::metrics::Metrics;
use crate::queue::Queue;
use crate::record::LocationRow;
use crate::sink::dead_letter_unstorable;
use crate::store::postgres::Pg;
use crate::store::spool::{Record, Spool};
use fieldcast_core::LogLimiter;

/// Every accepted location into the history table (see the module doc).
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
                    // The queue wakes this loop only for whole batches.
                    if buf.len() < cap {
                        buf.extend(self.queue.take_history(cap - buf.len()));
                    }
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::queue::Capacity;

    fn row(ts: i64) -> LocationRow {
        LocationRow::at("d1", ts)
    }

    /// Pins the flush rule on tokio's paused clock: rows below a batch wait
    /// for the flush interval, a full batch goes at once and restarts the
    /// interval. PostgreSQL is reported down and `memory_rows` is 0, so each
    /// flush is a spill to the spool, which `spooled_records` counts.
    #[tokio::test(start_paused = true)]
    async fn a_batch_waits_for_the_interval_unless_it_is_full() {
        let dir = tempfile::tempdir().unwrap();
        let metrics = Arc::new(Metrics::new());
        let queue = Arc::new(Queue::new(
            Capacity {
                live: 100,
                reliable: 10,
                history: 100,
                deadletters: 10,
            },
            metrics.clone(),
        ));
        let pool = crate::store::postgres::pool("postgres://nobody@127.0.0.1:1/none").unwrap();
        let interval = Duration::from_secs(30);
        let batcher = Batcher {
            queue: queue.clone(),
            pg: Arc::new(Pg::new(pool)),
            spool: Spool::open(dir.path()).unwrap(),
            health: Arc::new(Health::default()),
            metrics: metrics.clone(),
            flush_interval: interval,
            batch_rows: 10,
            memory_rows: 0,
            retention_ms: i64::MAX / 2,
        };
        let stop = CancellationToken::new();
        let task = tokio::spawn(batcher.run(stop.clone()));
        let spooled = || metrics.spooled_records.get();
        // Lets the batcher start its interval (at t0), and after each step
        // lets it and the spool's blocking write run until idle.
        tokio::task::yield_now().await;
        let t0 = tokio::time::Instant::now();
        let at = |secs: u64| async move {
            tokio::time::sleep_until(t0 + Duration::from_secs(secs)).await;
            tokio::time::sleep(Duration::from_millis(1)).await;
        };

        for ts in 0..3 {
            queue.push_location(row(ts)).await;
        }
        at(29).await;
        assert_eq!(spooled(), 0, "three rows wait for the interval");
        at(30).await;
        assert_eq!(spooled(), 3, "the interval flushes them");

        at(40).await;
        for ts in 3..13 {
            queue.push_location(row(ts)).await;
        }
        at(41).await;
        assert_eq!(spooled(), 13, "a full batch goes at once");
        // The interval restarted at the full batch (t = 40 s): one more row
        // waits a whole interval from there, not the 20 s left of the old one.
        queue.push_location(row(13)).await;
        at(60).await;
        assert_eq!(spooled(), 13);
        at(71).await;
        assert_eq!(spooled(), 14);

        queue.close();
        stop.cancel();
        task.await.unwrap();
    }
}
