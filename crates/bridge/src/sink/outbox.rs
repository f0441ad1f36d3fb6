//! The outbox: Redis work owed for events and statuses that are already
//! stored (PostgreSQL or the spool) and acknowledged.
//!
//! Durability does not wait for Redis (PROTOCOL.md §3). The reliable sink
//! writes a batch's Redis side directly while the outbox is empty and Redis
//! answers; otherwise it appends the batch here (fsync'd, the spool's
//! format, in `<spool dir>/outbox/`) and acknowledges. [`drain`] replays
//! the outbox in order once Redis is back, also after a restart. New
//! batches queue behind what is owed, so a device's events reach the event
//! log in the order they were received. Replaying an entry twice (a crash
//! mid-drain) pushes nothing twice: events carry their dedup key, statuses
//! only move forward (a status without `ts` is recognised by its receive
//! time).

use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{Mutex, MutexGuard, Notify};
use tokio_util::sync::CancellationToken;

use crate::health::Health;
use crate::metrics::Metrics;
use crate::queue::{Batch, Queue};
use crate::record::Reliable;
use crate::store::redis::RedisSink;
use crate::store::spool::{Record, SegmentReader, Spool, SpoolError};
use fieldcast_core::{Backoff, LogLimiter};

/// The fsync'd log of Redis work owed for acknowledged events and
/// statuses (module doc): appended by the reliable sink while Redis is
/// away or behind, replayed in order by [`drain`], which also gates new
/// batches behind what is owed.
pub struct Outbox {
    spool: Spool,
    /// Held by whoever decides between "write to Redis now" and "append
    /// here", and by the drain while it empties the last segment: so no
    /// batch overtakes one that is owed.
    gate: Mutex<()>,
    pending: AtomicBool,
    /// Wakes [`drain`] (its only waiter).
    wake: Notify,
}

impl Outbox {
    pub fn open(dir: &Path) -> Result<Self, SpoolError> {
        let spool = Spool::open(dir)?;
        let pending = !spool.seal()?.is_empty();
        if pending {
            tracing::info!(dir = %dir.display(), "the outbox holds Redis work from an earlier run; it is replayed once Redis answers");
        }
        Ok(Outbox {
            spool,
            gate: Mutex::new(()),
            pending: AtomicBool::new(pending),
            wake: Notify::new(),
        })
    }

    /// Something is owed to Redis.
    pub fn pending(&self) -> bool {
        self.pending.load(Ordering::Acquire)
    }

    pub async fn gate(&self) -> MutexGuard<'_, ()> {
        self.gate.lock().await
    }

    /// Appends a batch's Redis side; call with the gate held.
    pub async fn defer(&self, items: &[Reliable], metrics: &Metrics) -> Result<(), SpoolError> {
        let records: Vec<Record> = items.iter().filter_map(Record::from_reliable).collect();
        let n = records.len() as u64;
        if n == 0 {
            return Ok(());
        }
        self.spool.append(records).await?;
        self.pending.store(true, Ordering::Release);
        metrics.outbox_records.inc_by(n);
        self.wake.notify_one();
        Ok(())
    }
}

/// Empties the outbox into Redis whenever Redis answers, until `shutdown`.
pub async fn drain(
    outbox: Arc<Outbox>,
    redis: Arc<RedisSink>,
    queue: Arc<Queue>,
    health: Arc<Health>,
    metrics: Arc<Metrics>,
    batch_size: usize,
    shutdown: CancellationToken,
) {
    let mut backoff = Backoff::new(Duration::from_millis(200), Duration::from_secs(10));
    let mut log = LogLimiter::new(5, Duration::from_secs(10));
    let mut wait = Duration::from_secs(1);
    let d = Drainer {
        outbox: &outbox,
        redis: &redis,
        queue: &queue,
        metrics: &metrics,
        batch_size,
    };
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = outbox.wake.notified() => {}
            _ = tokio::time::sleep(wait) => {}
        }
        wait = Duration::from_secs(1);
        metrics.outbox_bytes.set(outbox.spool.bytes() as i64);
        if !outbox.pending() || !health.redis() {
            continue;
        }
        // The bulk without the gate (the reliable sink keeps appending
        // behind it), then the open segment under the gate.
        let sealed = outbox.spool.sealed();
        let done = match sealed {
            Ok(segs) => d.replay(&segs, &mut log).await,
            Err(e) => Err(e.to_string()),
        };
        let done = match done {
            Ok(()) => {
                let _gate = outbox.gate().await;
                let last = match outbox.spool.seal() {
                    Ok(segs) => d.replay(&segs, &mut log).await,
                    Err(e) => Err(e.to_string()),
                };
                if last.is_ok() {
                    outbox.pending.store(false, Ordering::Release);
                    tracing::info!("the outbox is replayed: Redis has caught up");
                }
                last
            }
            e => e,
        };
        metrics.outbox_bytes.set(outbox.spool.bytes() as i64);
        match done {
            Ok(()) => backoff.reset(),
            Err(e) => {
                wait = backoff.next_delay();
                if let Some(suppressed) = log.allow() {
                    tracing::warn!(error = %e, retry_in = ?wait, suppressed, "outbox replay paused");
                }
            }
        }
    }
}

struct Drainer<'a> {
    outbox: &'a Outbox,
    redis: &'a RedisSink,
    queue: &'a Queue,
    metrics: &'a Metrics,
    batch_size: usize,
}

impl Drainer<'_> {
    async fn replay(
        &self,
        segs: &[std::path::PathBuf],
        log: &mut LogLimiter,
    ) -> Result<(), String> {
        for seg in segs {
            let mut reader = match SegmentReader::open(seg) {
                Ok(r) => r,
                Err(e) => {
                    self.quarantine(seg, &e.to_string());
                    continue;
                }
            };
            loop {
                let (r, chunk) = match reader.next_chunk_async(self.batch_size).await {
                    Ok(c) => c,
                    Err(e) => {
                        self.quarantine(seg, &e.to_string());
                        break;
                    }
                };
                reader = r;
                let Some(chunk) = chunk else {
                    if let Err(e) = Spool::remove(seg) {
                        return Err(e.to_string());
                    }
                    break;
                };
                self.metrics.spool_torn_records.inc_by(chunk.torn);
                let batch = Batch {
                    reliable: chunk
                        .records
                        .into_iter()
                        .filter_map(Record::into_reliable)
                        .collect(),
                    ..Batch::default()
                };
                let bad = self
                    .redis
                    .apply_isolating(&batch, self.metrics)
                    .await
                    .map_err(|e| e.to_string())?;
                super::dead_letter_refused(self.queue, self.metrics, log, bad);
            }
        }
        Ok(())
    }

    fn quarantine(&self, seg: &Path, why: &str) {
        self.metrics.spool_quarantined.inc();
        match self.outbox.spool.quarantine(seg) {
            Ok(to) => {
                tracing::error!(segment = %to.display(), error = why, "an outbox segment cannot be read; moved to quarantine")
            }
            Err(e) => {
                tracing::error!(segment = %seg.display(), error = %e, "cannot quarantine an outbox segment")
            }
        }
    }
}
