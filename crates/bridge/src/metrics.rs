//! The bridge's Prometheus metrics. One [`Metrics`] per bridge instance (no
//! global registry), so tests can run several bridges in one process and
//! read each one's numbers.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};

use fieldcast_core::{Kind, RejectReason};

pub use fieldcast_service::metrics::{KindLabel, ReasonLabel};

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

fieldcast_service::metric_set! {
    /// Every metric of the bridge (counters gain `_total` when exported).
    pub struct Metrics in "fieldcast_bridge" {
        /// Accepted device messages by kind
        pub messages: Family<KindLabel, Counter> = Family::default(),
        /// Rejected messages by reason (also dead-lettered)
        pub rejected: Family<ReasonLabel, Counter> = Family::default(),
        /// Messages not newer than the hot state (stored in history, not pushed)
        pub stale: Family<KindLabel, Counter> = Family::default(),
        /// Redelivered events pushed live only once
        pub duplicate_events: Counter = Counter::default(),
        /// Queued live locations replaced by a newer one of the same device
        pub coalesced: Counter = Counter::default(),
        /// Live locations dropped because the live lane was full (history kept them)
        pub live_dropped: Counter = Counter::default(),
        /// Dead letters not written because their buffer was full
        pub deadletter_dropped: Counter = Counter::default(),
        /// Items waiting in each queue lane
        pub queue_depth: Family<LaneLabel, Gauge> = Family::default(),
        /// QoS 1 messages received and not yet acknowledged
        pub acks_pending: Gauge = Gauge::default(),
        /// 1 while connected to the broker
        pub mqtt_connected: Gauge = Gauge::default(),
        /// Broker connection losses
        pub mqtt_reconnects: Counter = Counter::default(),
        /// 1 while connected to NATS (FIELDCAST_NATS_URL set)
        pub nats_connected: Gauge = Gauge::default(),
        /// NATS connection losses
        pub nats_reconnects: Counter = Counter::default(),
        /// JetStream messages delivered more than once (a bridge died or stalled before its ack)
        pub nats_redelivered: Counter = Counter::default(),
        /// 1 while the QoS 1 lane pulls from nats-server's `$MQTT_msgs` stream
        pub nats_qos1_lane: Gauge = Gauge::default(),
        /// QoS 1 MQTT messages of the main stream acknowledged unhandled: the QoS 1 lane handles them
        pub nats_qos1_copies: Counter = Counter::default(),
        /// Latency of one pipelined Redis batch
        pub redis_write_seconds: Histogram = latency(),
        /// Messages written to Redis (applied, stale or duplicate)
        pub redis_messages: Counter = Counter::default(),
        /// Failed Redis batches (retried)
        pub redis_errors: Counter = Counter::default(),
        /// Latency of one PostgreSQL write
        pub pg_write_seconds: Histogram = latency(),
        /// Failed PostgreSQL writes (retried or spooled)
        pub pg_errors: Counter = Counter::default(),
        /// Rows written to history tables
        pub history_rows: Family<TableLabel, Counter> = Family::default(),
        /// Rows per location history batch
        pub history_batch_rows: Histogram = Histogram::new(exponential_buckets(1.0, 4.0, 10)),
        /// Duration of one location history flush
        pub history_flush_seconds: Histogram = latency(),
        /// Location rows waiting in memory for the next flush
        pub history_pending_rows: Gauge = Gauge::default(),
        /// Bytes in the on-disk spool waiting for PostgreSQL
        pub spool_bytes: Gauge = Gauge::default(),
        /// Records written to the on-disk spool
        pub spooled_records: Counter = Counter::default(),
        /// Messages arriving after shutdown began (QoS 1 ones are redelivered)
        pub unread_at_shutdown: Counter = Counter::default(),
        /// 1 when broker, Redis and PostgreSQL all answer
        pub ready: Gauge = Gauge::default(),
        /// History rows PostgreSQL refused for their content (dead-lettered, reason store_rejected)
        pub store_rejected: Family<TableLabel, Counter> = Family::default(),
        /// 0 while the spool cannot be written (the bridge then holds back acknowledgements)
        pub spool_writable: Gauge = Gauge::default(),
        /// Spool lines skipped on replay as torn or undecodable (never acknowledged records)
        pub spool_torn_records: Counter = Counter::default(),
        /// Spool or outbox segments moved to quarantine/ after failing every replay attempt
        pub spool_quarantined: Counter = Counter::default(),
        /// Acknowledged events and statuses whose Redis step was deferred to the outbox
        pub outbox_records: Counter = Counter::default(),
        /// Bytes in the outbox: Redis work owed for stored messages
        pub outbox_bytes: Gauge = Gauge::default(),
        /// QoS 0 messages not accepted because the queue stayed full (backpressure)
        pub shed: Family<KindLabel, Counter> = Family::default(),
        /// 1 when Redis's maxmemory-policy may evict the bridge's keys
        pub redis_eviction_risk: Gauge = Gauge::default(),
        /// 1 when Redis is 7.0 or newer
        pub redis_version_ok: Gauge = Gauge::default(),
        /// Live geofences in this bridge's index
        pub geofences: Gauge = Gauge::default(),
        /// The configuration version (fences, rules, groups) this bridge holds
        pub config_version: Gauge = Gauge::default(),
        /// Failed loads of the geofence configuration (retried with backoff)
        pub config_reload_errors: Counter = Counter::default(),
        /// Transitions-stream entries (membership changes, tripped alerts) turned into events (a replay after a crash counts again)
        pub geofence_changes: Counter = Counter::default(),
        /// Events the bridge derives (geofence_enter/exit, alert.*) by kind; the stores keep each id once
        pub derived_events: Family<KindLabel, Counter> = Family::default(),
        /// Sweeps for inactive devices this bridge made (holding the sweep lease)
        pub inactive_sweeps: Counter = Counter::default(),
        // Webhooks (webhook/sender.rs).
        /// Webhook POSTs answered with a 2xx (the row is then deleted)
        pub webhook_sent: Counter = Counter::default(),
        /// Webhook attempts that failed (no answer, timeout, non-2xx) and will be retried
        pub webhook_retried: Counter = Counter::default(),
        /// Webhook rows given up unsent: older than FIELDCAST_WEBHOOK_GIVE_UP, or a url that is not http(s)
        pub webhook_failed: Counter = Counter::default(),
        /// Rows owed in the shared webhook outbox (every bridge reports the whole table)
        pub webhook_pending: Gauge = Gauge::default(),
    }
}

impl Metrics {
    pub fn new() -> Self {
        let m = Self::register();
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
        m
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
}
