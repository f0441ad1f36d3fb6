//! Dependency health: one flag per dependency, set by the loops that use
//! them and by a checker that probes each one every second, so `/readyz`
//! turns within the 5 s PROTOCOL.md §1 allows.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

#[derive(Debug, Default)]
pub struct Health {
    mqtt: AtomicBool,
    redis: AtomicBool,
    /// Partitions whose keys did not answer the last probe.
    partitions_down: AtomicUsize,
    pg: AtomicBool,
    schema: AtomicBool,
    /// Set when an append to the spool or the outbox failed, cleared by the
    /// next write that worked: acknowledgements are held back meanwhile.
    spool_failing: AtomicBool,
}

impl Health {
    pub fn set_mqtt(&self, ok: bool) {
        self.mqtt.store(ok, Ordering::Relaxed);
    }
    /// Records how many partitions did not answer; returns the count
    /// before.
    pub fn set_partitions_down(&self, n: usize) -> usize {
        self.partitions_down.swap(n, Ordering::Relaxed)
    }
    pub fn partitions_down(&self) -> usize {
        self.partitions_down.load(Ordering::Relaxed)
    }
    pub fn set_redis(&self, ok: bool) {
        self.redis.store(ok, Ordering::Relaxed);
    }
    pub fn set_pg(&self, ok: bool) {
        self.pg.store(ok, Ordering::Relaxed);
    }
    pub fn set_schema(&self, ok: bool) {
        self.schema.store(ok, Ordering::Relaxed);
    }
    pub fn set_spool(&self, ok: bool) {
        self.spool_failing.store(!ok, Ordering::Relaxed);
    }
    /// The spool (and outbox) can be written.
    pub fn spool(&self) -> bool {
        !self.spool_failing.load(Ordering::Relaxed)
    }
    pub fn mqtt(&self) -> bool {
        self.mqtt.load(Ordering::Relaxed)
    }
    pub fn redis(&self) -> bool {
        self.redis.load(Ordering::Relaxed)
    }
    /// PostgreSQL answers and the schema (migrations, partitions) is in place.
    pub fn pg(&self) -> bool {
        self.pg.load(Ordering::Relaxed) && self.schema.load(Ordering::Relaxed)
    }
    pub fn ready(&self) -> bool {
        self.mqtt() && self.redis() && self.pg() && self.spool()
    }
}
