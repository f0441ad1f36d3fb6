//! The bridge's Prometheus metrics. One [`Metrics`] per bridge instance (no
//! global registry), so tests can run several bridges in one process and
//! read each one's numbers.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

use fieldcast_core::{Kind, RejectReason};

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct KindLabel {
    pub kind: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReasonLabel {
    pub reason: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct LaneLabel {
    pub lane: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TableLabel {
    pub table: &'static str,
}

fn latency() -> Histogram {
    // 0.25 ms .. ~8 s
    Histogram::new(exponential_buckets(0.000_25, 2.0, 16))
}

/// Every metric of the bridge; field names are the metric names without
/// the `fieldcast_bridge_` prefix (counters gain `_total` when exported).
pub struct Metrics {
    registry: Registry,
    pub messages: Family<KindLabel, Counter>,
    pub rejected: Family<ReasonLabel, Counter>,
    pub stale: Family<KindLabel, Counter>,
    pub duplicate_events: Counter,
    pub coalesced: Counter,
    pub live_dropped: Counter,
    pub deadletter_dropped: Counter,
    pub queue_depth: Family<LaneLabel, Gauge>,
    pub acks_pending: Gauge,
    pub mqtt_connected: Gauge,
    pub mqtt_reconnects: Counter,
    pub redis_write_seconds: Histogram,
    pub redis_errors: Counter,
    pub redis_messages: Counter,
    pub pg_write_seconds: Histogram,
    pub pg_errors: Counter,
    pub history_rows: Family<TableLabel, Counter>,
    pub history_batch_rows: Histogram,
    pub history_flush_seconds: Histogram,
    pub history_pending_rows: Gauge,
    pub spool_bytes: Gauge,
    pub spooled_records: Counter,
    pub ready: Gauge,
    pub unread_at_shutdown: Counter,
    pub store_rejected: Family<TableLabel, Counter>,
    pub spool_writable: Gauge,
    pub spool_torn_records: Counter,
    pub spool_quarantined: Counter,
    pub outbox_records: Counter,
    pub outbox_bytes: Gauge,
    pub shed: Family<KindLabel, Counter>,
    pub redis_eviction_risk: Gauge,
    pub redis_version_ok: Gauge,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("fieldcast_bridge");
        let m = Metrics {
            messages: Family::default(),
            rejected: Family::default(),
            stale: Family::default(),
            duplicate_events: Counter::default(),
            coalesced: Counter::default(),
            live_dropped: Counter::default(),
            deadletter_dropped: Counter::default(),
            queue_depth: Family::default(),
            acks_pending: Gauge::default(),
            mqtt_connected: Gauge::default(),
            mqtt_reconnects: Counter::default(),
            redis_write_seconds: latency(),
            redis_errors: Counter::default(),
            redis_messages: Counter::default(),
            pg_write_seconds: latency(),
            pg_errors: Counter::default(),
            history_rows: Family::default(),
            history_batch_rows: Histogram::new(exponential_buckets(1.0, 4.0, 10)),
            history_flush_seconds: latency(),
            history_pending_rows: Gauge::default(),
            spool_bytes: Gauge::default(),
            spooled_records: Counter::default(),
            ready: Gauge::default(),
            unread_at_shutdown: Counter::default(),
            store_rejected: Family::default(),
            spool_writable: Gauge::default(),
            spool_torn_records: Counter::default(),
            spool_quarantined: Counter::default(),
            outbox_records: Counter::default(),
            outbox_bytes: Gauge::default(),
            shed: Family::default(),
            redis_eviction_risk: Gauge::default(),
            redis_version_ok: Gauge::default(),
            registry: Registry::default(),
        };
        // Show every label value from the start: a dashboard should see 0,
        // not "no data", for a reason that never happened.
        for k in [Kind::Location, Kind::Status, Kind::Event] {
            let _ = m.messages.get_or_create(&KindLabel { kind: k.as_str() });
            let _ = m.stale.get_or_create(&KindLabel { kind: k.as_str() });
        }
        let _ = m.shed.get_or_create(&KindLabel {
            kind: Kind::Location.as_str(),
        });
        for table in ["locations", "events", "device_status"] {
            let _ = m.store_rejected.get_or_create(&TableLabel { table });
        }
        m.spool_writable.set(1);
        for r in RejectReason::ALL {
            let _ = m
                .rejected
                .get_or_create(&ReasonLabel { reason: r.as_str() });
        }
        let r = &mut registry;
        r.register(
            "messages",
            "Accepted device messages by kind",
            m.messages.clone(),
        );
        r.register(
            "rejected",
            "Rejected messages by reason (also dead-lettered)",
            m.rejected.clone(),
        );
        r.register(
            "stale",
            "Messages not newer than the hot state (stored in history, not pushed)",
            m.stale.clone(),
        );
        r.register(
            "duplicate_events",
            "Redelivered events pushed live only once",
            m.duplicate_events.clone(),
        );
        r.register(
            "coalesced",
            "Queued live locations replaced by a newer one of the same device",
            m.coalesced.clone(),
        );
        r.register(
            "live_dropped",
            "Live locations dropped because the live lane was full (history kept them)",
            m.live_dropped.clone(),
        );
        r.register(
            "deadletter_dropped",
            "Dead letters not written because their buffer was full",
            m.deadletter_dropped.clone(),
        );
        r.register(
            "queue_depth",
            "Items waiting in each queue lane",
            m.queue_depth.clone(),
        );
        r.register(
            "acks_pending",
            "QoS 1 messages received and not yet acknowledged",
            m.acks_pending.clone(),
        );
        r.register(
            "mqtt_connected",
            "1 while connected to the broker",
            m.mqtt_connected.clone(),
        );
        r.register(
            "mqtt_reconnects",
            "Broker connection losses",
            m.mqtt_reconnects.clone(),
        );
        r.register(
            "redis_write_seconds",
            "Latency of one pipelined Redis batch",
            m.redis_write_seconds.clone(),
        );
        r.register(
            "redis_messages",
            "Messages written to Redis (applied, stale or duplicate)",
            m.redis_messages.clone(),
        );
        r.register(
            "redis_errors",
            "Failed Redis batches (retried)",
            m.redis_errors.clone(),
        );
        r.register(
            "pg_write_seconds",
            "Latency of one PostgreSQL write",
            m.pg_write_seconds.clone(),
        );
        r.register(
            "pg_errors",
            "Failed PostgreSQL writes (retried or spooled)",
            m.pg_errors.clone(),
        );
        r.register(
            "history_rows",
            "Rows written to history tables",
            m.history_rows.clone(),
        );
        r.register(
            "history_batch_rows",
            "Rows per location history batch",
            m.history_batch_rows.clone(),
        );
        r.register(
            "history_flush_seconds",
            "Duration of one location history flush",
            m.history_flush_seconds.clone(),
        );
        r.register(
            "history_pending_rows",
            "Location rows waiting in memory for the next flush",
            m.history_pending_rows.clone(),
        );
        r.register(
            "spool_bytes",
            "Bytes in the on-disk spool waiting for PostgreSQL",
            m.spool_bytes.clone(),
        );
        r.register(
            "spooled_records",
            "Records written to the on-disk spool",
            m.spooled_records.clone(),
        );
        r.register(
            "unread_at_shutdown",
            "Messages arriving after shutdown began (QoS 1 ones are redelivered)",
            m.unread_at_shutdown.clone(),
        );
        r.register(
            "ready",
            "1 when broker, Redis and PostgreSQL all answer",
            m.ready.clone(),
        );
        r.register(
            "store_rejected",
            "History rows PostgreSQL refused for their content (dead-lettered, reason store_rejected)",
            m.store_rejected.clone(),
        );
        r.register(
            "spool_writable",
            "0 while the spool cannot be written (the bridge then holds back acknowledgements)",
            m.spool_writable.clone(),
        );
        r.register(
            "spool_torn_records",
            "Spool lines skipped on replay as torn or undecodable (never acknowledged records)",
            m.spool_torn_records.clone(),
        );
        r.register(
            "spool_quarantined",
            "Spool or outbox segments moved to quarantine/ after failing every replay attempt",
            m.spool_quarantined.clone(),
        );
        r.register(
            "outbox_records",
            "Acknowledged events and statuses whose Redis step was deferred to the outbox",
            m.outbox_records.clone(),
        );
        r.register(
            "outbox_bytes",
            "Bytes in the outbox: Redis work owed for stored messages",
            m.outbox_bytes.clone(),
        );
        r.register(
            "shed",
            "QoS 0 messages not accepted because the queue stayed full (backpressure)",
            m.shed.clone(),
        );
        r.register(
            "redis_eviction_risk",
            "1 when Redis's maxmemory-policy may evict the bridge's keys",
            m.redis_eviction_risk.clone(),
        );
        r.register(
            "redis_version_ok",
            "1 when Redis is 7.0 or newer",
            m.redis_version_ok.clone(),
        );
        Metrics { registry, ..m }
    }

    pub fn message(&self, kind: Kind) {
        self.messages
            .get_or_create(&KindLabel {
                kind: kind.as_str(),
            })
            .inc();
    }

    pub fn reject(&self, reason: RejectReason) {
        self.rejected
            .get_or_create(&ReasonLabel {
                reason: reason.as_str(),
            })
            .inc();
    }

    /// Prometheus text exposition.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }
}
