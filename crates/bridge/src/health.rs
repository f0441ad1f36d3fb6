//! Dependency health: one flag per dependency, set by the loops that use
//! them and by a checker that probes each one every second, so `/readyz`
//! turns within the 5 s PROTOCOL.md §1 allows.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

#[derive(Debug, Default)]
pub struct Health {
    /// Which broker the source reads (`/readyz` names it).
    broker_kind: BrokerKind,
    /// The source has its broker: subscribed (MQTT), or connected with its
    /// consumer (JetStream).
    broker: AtomicBool,
    redis: AtomicBool,
    /// Partitions whose keys did not answer the last probe.
    partitions_down: AtomicUsize,
    pg: AtomicBool,
    schema: AtomicBool,
    /// Set when an append to the spool or the outbox failed, cleared by the
    /// next write that worked: acknowledgements are held back meanwhile.
    spool_failing: AtomicBool,
}

/// The broker a bridge reads from.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub enum BrokerKind {
    #[default]
    Mqtt,
    Nats,
}

impl BrokerKind {
    /// Its key in `/readyz`.
    pub fn as_str(self) -> &'static str {
        match self {
            BrokerKind::Mqtt => "mqtt",
            BrokerKind::Nats => "nats",
        }
    }
}

impl Health {
    /// Health of a bridge reading from `broker`, everything down until
    /// checked.
    pub fn new(broker: BrokerKind) -> Self {
        Health {
            broker_kind: broker,
            ..Health::default()
        }
    }
    pub fn broker_kind(&self) -> BrokerKind {
        self.broker_kind
    }
    pub fn set_broker(&self, ok: bool) {
        self.broker.store(ok, Ordering::Relaxed);
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
    pub fn broker(&self) -> bool {
        self.broker.load(Ordering::Relaxed)
    }
    pub fn redis(&self) -> bool {
        self.redis.load(Ordering::Relaxed)
    }
    /// PostgreSQL answers and the schema (migrations, partitions) is in place.
    pub fn pg(&self) -> bool {
        self.pg.load(Ordering::Relaxed) && self.schema.load(Ordering::Relaxed)
    }
    pub fn ready(&self) -> bool {
        self.broker() && self.redis() && self.pg() && self.spool()
    }
}
