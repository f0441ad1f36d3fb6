//! The gateway's Prometheus metrics, declared like the bridge's
//! ([`fieldcast_service::metric_set!`]). One [`Metrics`] per gateway
//! instance (no global recorder), held by [`crate::state::AppState`] and
//! handed to the feed, the hub and each connection, so tests can run
//! several gateways in one process and read each one's numbers.
//!
//! Every label value is known up front and shown from the start (0, not
//! "no data"). The live path never looks a label set up: the hub and the
//! socket writers hold the handles they count with ([`SubscriptionGauges`],
//! [`Sent`]), resolved once per gateway.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use prometheus_client::encoding::{EncodeLabelSet, EncodeMetric, MetricEncoder, NoLabelSet};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::{MetricType, TypedMetric};

use fieldcast_service::metrics::{KindLabel, ReasonLabel};

use crate::live::kind::Kind;

/// `fieldcast_gateway_messages_out_total{type}`: a frame's [`Kind`].
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TypeLabel {
    pub r#type: &'static str,
}

/// `fieldcast_gateway_tile_requests_total{result}`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ResultLabel {
    pub result: &'static str,
}

/// The selector kinds of `fieldcast_gateway_subscriptions`.
pub const SELECTORS: [&str; 4] = ["device", "fleet", "bbox", "channel"];
/// The results of `fieldcast_gateway_tile_requests_total`.
pub const TILE_RESULTS: [&str; 5] = ["hit", "miss", "not_modified", "bad_request", "error"];
/// The reasons of `fieldcast_gateway_history_cut_total`.
pub const CUT_REASONS: [&str; 4] = ["stalled", "gone", "shutdown", "query"];

/// Buckets of the broadcast latency, in seconds (1 ms .. 5 s).
pub const LATENCY_BUCKETS: [f64; 12] = [
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
];

fieldcast_service::metric_set! {
    /// Every metric of the gateway (counters gain `_total` when exported).
    pub struct Metrics in "fieldcast_gateway" {
        /// Open WebSocket connections
        pub connections: Gauge = Gauge::default(),
        /// Live subscriptions by selector kind
        pub subscriptions: Family<KindLabel, Gauge> = Family::default(),
        /// Frames written to sockets by type
        pub messages_out: Family<TypeLabel, Counter> = Family::default(),
        /// Bytes of text frames written to sockets
        pub bytes_out: Counter = Counter::default(),
        /// Queued locations replaced by a newer one of the same device (slow clients)
        pub coalesced: Counter = Counter::default(),
        /// Connections closed with 4008 slow_consumer by the hub
        pub slow_consumer_closes: Counter = Counter::default(),
        /// Events not sent to a connection a second time (the bridge published one again, e.g. across a Redis failover)
        pub duplicate_events_dropped: Counter = Counter::default(),
        /// Connections closed with 4008 because a reply waited too long for room
        pub reply_wait_closed: Counter = Counter::default(),
        /// Bridge receive to socket write of a live update
        pub broadcast_latency_seconds: LatencyHistogram = LatencyHistogram::new(&LATENCY_BUCKETS),
        /// Reconnects of the live feed's Redis subscriber
        pub redis_reconnects: Counter = Counter::default(),
        /// Live feed messages missed by falling behind (every connection resyncs)
        pub feed_lagged: Counter = Counter::default(),
        /// Times the live feed asked every connection to resync (after a reconnect, coalesced, or a lag)
        pub feed_resyncs: Counter = Counter::default(),
        /// 1 when Redis, PostgreSQL and the live feed all answer
        pub ready: Gauge = Gauge::default(),
        /// Requests for map tiles by result
        pub tile_requests: Family<ResultLabel, Counter> = Family::default(),
        /// History requests refused with 429 (every slot taken)
        pub history_rejected: Counter = Counter::default(),
        /// History responses cut before their end, by reason
        pub history_cut: Family<ReasonLabel, Counter> = Family::default(),
    }
}

impl Metrics {
    pub fn new() -> Self {
        let m = Self::register();
        for kind in SELECTORS {
            let _ = m.subscriptions.get_or_create(&KindLabel { kind });
        }
        for k in Kind::ALL {
            let _ = m
                .messages_out
                .get_or_create(&TypeLabel { r#type: k.as_str() });
        }
        for result in TILE_RESULTS {
            let _ = m.tile_requests.get_or_create(&ResultLabel { result });
        }
        for reason in CUT_REASONS {
            let _ = m.history_cut.get_or_create(&ReasonLabel { reason });
        }
        m
    }

    /// One tile request answered with `result` (one of [`TILE_RESULTS`]).
    pub fn tile_request(&self, result: &'static str) {
        self.tile_requests
            .get_or_create(&ResultLabel { result })
            .inc();
    }

    /// One history response cut for `reason` (one of [`CUT_REASONS`]).
    pub fn history_cut(&self, reason: &'static str) {
        self.history_cut
            .get_or_create(&ReasonLabel { reason })
            .inc();
    }

    /// The hub's handles on `fieldcast_gateway_subscriptions`.
    pub fn subscription_gauges(&self) -> SubscriptionGauges {
        let g = |kind| {
            self.subscriptions
                .get_or_create(&KindLabel { kind })
                .clone()
        };
        SubscriptionGauges {
            device: g("device"),
            fleet: g("fleet"),
            bbox: g("bbox"),
            channel: g("channel"),
        }
    }

    /// The socket writers' handles.
    pub fn sent(&self) -> Sent {
        let kind = |k: Kind| {
            self.messages_out
                .get_or_create(&TypeLabel { r#type: k.as_str() })
                .clone()
        };
        Sent {
            by_kind: Kind::ALL.map(kind),
            bytes: self.bytes_out.clone(),
            latency: self.broadcast_latency_seconds.clone(),
        }
    }
}

/// `fieldcast_gateway_subscriptions{kind}`, one handle per selector kind.
#[derive(Debug, Clone, Default)]
pub struct SubscriptionGauges {
    pub device: Gauge,
    pub fleet: Gauge,
    pub bbox: Gauge,
    pub channel: Gauge,
}

/// What a socket writer counts for every frame it sends.
#[derive(Debug, Clone)]
pub struct Sent {
    /// `messages_out{type}`, indexed like [`Kind::ALL`].
    by_kind: [Counter; Kind::ALL.len()],
    bytes: Counter,
    latency: LatencyHistogram,
}

impl Sent {
    /// A text frame of `len` bytes; `rx_ms` is the bridge's receive time
    /// of a live update (0 for anything else, which is not timed).
    pub fn text(&self, kind: Kind, len: usize, rx_ms: i64, now_ms: i64) {
        self.by_kind[kind.index()].inc();
        self.bytes.inc_by(len as u64);
        if rx_ms > 0 {
            self.latency.observe_ms((now_ms - rx_ms).max(0) as u64);
        }
    }
}

/// A histogram observed once per frame by every connection's writer, so
/// its buckets are atomics: prometheus-client's `Histogram` takes a write
/// lock per observation, which thousands of writers would contend for.
/// Observations are whole milliseconds (the bridge's receive time is in
/// ms), exported in seconds like any `_seconds` histogram.
#[derive(Debug, Clone)]
pub struct LatencyHistogram {
    inner: Arc<LatencyInner>,
}

#[derive(Debug)]
struct LatencyInner {
    /// Upper bounds in seconds, ascending; `counts` has one more (+Inf).
    bounds: Box<[f64]>,
    /// Observations per bucket (not cumulative).
    counts: Box<[AtomicU64]>,
    sum_ms: AtomicU64,
}

impl LatencyHistogram {
    pub fn new(bounds: &[f64]) -> Self {
        LatencyHistogram {
            inner: Arc::new(LatencyInner {
                bounds: bounds.into(),
                counts: (0..=bounds.len()).map(|_| AtomicU64::new(0)).collect(),
                sum_ms: AtomicU64::new(0),
            }),
        }
    }

    pub fn observe_ms(&self, ms: u64) {
        let secs = ms as f64 / 1000.0;
        let i = self.inner.bounds.partition_point(|&b| b < secs);
        if let Some(c) = self.inner.counts.get(i) {
            c.fetch_add(1, Ordering::Relaxed);
        }
        self.inner.sum_ms.fetch_add(ms, Ordering::Relaxed);
    }
}

impl TypedMetric for LatencyHistogram {
    const TYPE: MetricType = MetricType::Histogram;
}

impl EncodeMetric for LatencyHistogram {
    fn encode(&self, mut encoder: MetricEncoder) -> Result<(), std::fmt::Error> {
        let inner = &self.inner;
        // prometheus-client's form: the last bound f64::MAX is +Inf.
        let buckets: Vec<(f64, u64)> = inner
            .bounds
            .iter()
            .copied()
            .chain(std::iter::once(f64::MAX))
            .zip(inner.counts.iter().map(|c| c.load(Ordering::Relaxed)))
            .collect();
        // The count is the buckets' total, so the two always agree.
        let count = buckets.iter().map(|(_, n)| n).sum();
        let sum = inner.sum_ms.load(Ordering::Relaxed) as f64 / 1000.0;
        encoder.encode_histogram::<NoLabelSet>(sum, count, &buckets, None)
    }

    fn metric_type(&self) -> MetricType {
        Self::TYPE
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use prometheus_client::metrics::histogram::Histogram;
    use prometheus_client::registry::Registry;

    fn encoded(name: &str, metric: impl prometheus_client::registry::Metric) -> String {
        let mut r = Registry::default();
        r.register(name, "h", metric);
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &r).unwrap();
        out
    }

    /// Pins: the atomic histogram exports exactly what prometheus-client's
    /// own `Histogram` would for the same observations (bounds inclusive).
    #[test]
    fn latency_histogram_encodes_like_prometheus_clients() {
        let ours = LatencyHistogram::new(&LATENCY_BUCKETS);
        let theirs = Histogram::new(LATENCY_BUCKETS);
        for ms in [0, 1, 2, 3, 10, 11, 250, 999, 1000, 5000, 5001, 60_000] {
            ours.observe_ms(ms);
            theirs.observe(ms as f64 / 1000.0);
        }
        assert_eq!(encoded("l", ours), encoded("l", theirs));
    }

    /// Pins: every series the gateway exported with the `metrics` crate,
    /// with the same names, types and label values, present from the start.
    #[test]
    fn exports_the_gateways_series() {
        let text = Metrics::new().encode();
        let series: Vec<&str> = text
            .lines()
            .filter(|l| !l.starts_with('#'))
            .filter_map(|l| l.rsplit_once(' ').map(|(s, _)| s))
            .collect();
        for s in [
            "fieldcast_gateway_connections",
            "fieldcast_gateway_subscriptions{kind=\"device\"}",
            "fieldcast_gateway_subscriptions{kind=\"fleet\"}",
            "fieldcast_gateway_subscriptions{kind=\"bbox\"}",
            "fieldcast_gateway_subscriptions{kind=\"channel\"}",
            "fieldcast_gateway_messages_out_total{type=\"location\"}",
            "fieldcast_gateway_messages_out_total{type=\"status\"}",
            "fieldcast_gateway_messages_out_total{type=\"event\"}",
            "fieldcast_gateway_messages_out_total{type=\"message\"}",
            "fieldcast_gateway_messages_out_total{type=\"reply\"}",
            "fieldcast_gateway_bytes_out_total",
            "fieldcast_gateway_coalesced_total",
            "fieldcast_gateway_slow_consumer_closes_total",
            "fieldcast_gateway_reply_wait_closed_total",
            "fieldcast_gateway_duplicate_events_dropped_total",
            "fieldcast_gateway_broadcast_latency_seconds_sum",
            "fieldcast_gateway_broadcast_latency_seconds_count",
            "fieldcast_gateway_broadcast_latency_seconds_bucket{le=\"0.001\"}",
            "fieldcast_gateway_broadcast_latency_seconds_bucket{le=\"+Inf\"}",
            "fieldcast_gateway_redis_reconnects_total",
            "fieldcast_gateway_feed_lagged_total",
            "fieldcast_gateway_feed_resyncs_total",
            "fieldcast_gateway_ready",
            "fieldcast_gateway_tile_requests_total{result=\"miss\"}",
            "fieldcast_gateway_history_rejected_total",
            "fieldcast_gateway_history_cut_total{reason=\"stalled\"}",
        ] {
            assert!(series.contains(&s), "{s} missing from\n{text}");
        }
        for (name, ty) in [
            ("connections", "gauge"),
            ("subscriptions", "gauge"),
            ("ready", "gauge"),
            ("messages_out", "counter"),
            ("broadcast_latency_seconds", "histogram"),
        ] {
            let line = format!("# TYPE fieldcast_gateway_{name} {ty}");
            assert!(text.contains(&line), "{line} missing");
        }
    }

    #[test]
    fn writers_count_through_their_handles() {
        let m = Metrics::new();
        let sent = m.sent();
        sent.text(Kind::Event, 10, 1_000, 1_004);
        sent.text(Kind::Reply, 5, 0, 1_004);
        let text = m.encode();
        assert!(text.contains("fieldcast_gateway_messages_out_total{type=\"event\"} 1\n"));
        assert!(text.contains("fieldcast_gateway_bytes_out_total 15\n"));
        assert!(text.contains("fieldcast_gateway_broadcast_latency_seconds_count 1\n"));
        assert!(text.contains("fieldcast_gateway_broadcast_latency_seconds_sum 0.004\n"));
        m.subscription_gauges().bbox.inc();
        assert!(m
            .encode()
            .contains("fieldcast_gateway_subscriptions{kind=\"bbox\"} 1\n"));
    }
}
