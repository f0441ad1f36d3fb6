//! The probe's Prometheus metrics (own registry, `fieldcast_probe_` prefix).
//! Labels: `kind` (`location`, `event`) and `target`: `mqtt` for the echo
//! from the broker (device -> broker hop), else the gateway URL
//! (device -> browser, end to end).

use std::sync::atomic::AtomicU64;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

/// The target name of the broker echo.
pub const MQTT: &str = "mqtt";

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct Labels {
    pub kind: &'static str,
    pub target: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct FailureLabels {
    pub kind: &'static str,
    pub target: String,
    /// `publish` (the broker did not take it), `timeout`, `disconnected`
    /// (the watcher had no socket when the round ended).
    pub reason: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TargetLabel {
    pub target: String,
}

type HistogramFamily = Family<Labels, Histogram, fn() -> Histogram>;

fn latency() -> Histogram {
    // 0.5 ms .. ~16 s
    Histogram::new(exponential_buckets(0.000_5, 2.0, 16))
}

pub struct Metrics {
    registry: Registry,
    pub latency: HistogramFamily,
    pub success: Family<Labels, Counter>,
    pub failure: Family<FailureLabels, Counter>,
    pub last_success: Family<Labels, Gauge<f64, AtomicU64>>,
    pub connected: Family<TargetLabel, Gauge>,
    pub rounds: Counter,
}

impl Metrics {
    /// Every (kind, target) pair is created up front, so a dashboard sees 0
    /// rather than no data before the first success or failure.
    pub fn new(targets: &[String], kinds: &[&'static str]) -> Self {
        let m = Metrics {
            registry: Registry::default(),
            latency: Family::new_with_constructor(latency as fn() -> Histogram),
            success: Family::default(),
            failure: Family::default(),
            last_success: Family::default(),
            connected: Family::default(),
            rounds: Counter::default(),
        };
        for target in targets {
            let _ = m.connected.get_or_create(&TargetLabel {
                target: target.clone(),
            });
            for &kind in kinds {
                let l = Labels {
                    kind,
                    target: target.clone(),
                };
                let _ = m.latency.get_or_create(&l);
                let _ = m.success.get_or_create(&l);
                let _ = m.last_success.get_or_create(&l);
                for reason in ["publish", "timeout", "disconnected"] {
                    let _ = m.failure.get_or_create(&FailureLabels {
                        kind,
                        target: target.clone(),
                        reason,
                    });
                }
            }
        }
        let mut registry = Registry::with_prefix("fieldcast_probe");
        registry.register(
            "latency_seconds",
            "Time from the probe's publish to its arrival (target mqtt: echo from the broker; else at the gateway's WebSocket)",
            m.latency.clone(),
        );
        registry.register(
            "success",
            "Probe messages that arrived in time",
            m.success.clone(),
        );
        registry.register(
            "failure",
            "Probe messages that did not arrive in time, by reason",
            m.failure.clone(),
        );
        registry.register(
            "last_success_timestamp_seconds",
            "Unix time of the last message that arrived in time",
            m.last_success.clone(),
        );
        registry.register(
            "connected",
            "1 while the probe's connection to the target is up",
            m.connected.clone(),
        );
        registry.register("rounds", "Probe rounds run", m.rounds.clone());
        Metrics { registry, ..m }
    }

    pub fn set_connected(&self, target: &str, up: bool) {
        self.connected
            .get_or_create(&TargetLabel {
                target: target.to_owned(),
            })
            .set(i64::from(up));
    }

    pub fn is_connected(&self, target: &str) -> bool {
        self.connected
            .get_or_create(&TargetLabel {
                target: target.to_owned(),
            })
            .get()
            == 1
    }

    pub fn succeeded(&self, kind: &'static str, target: &str, seconds: f64) {
        let l = Labels {
            kind,
            target: target.to_owned(),
        };
        self.latency.get_or_create(&l).observe(seconds);
        self.success.get_or_create(&l).inc();
        let now = fieldcast_core::time::now_ms() as f64 / 1_000.0;
        self.last_success.get_or_create(&l).set(now);
    }

    pub fn failed(&self, kind: &'static str, target: &str, reason: &'static str) {
        self.failure
            .get_or_create(&FailureLabels {
                kind,
                target: target.to_owned(),
                reason,
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exports_every_series_from_the_start() {
        let m = Metrics::new(&[MQTT.into(), "ws://g/ws".into()], &["location"]);
        m.succeeded("location", "ws://g/ws", 0.004);
        m.failed("location", MQTT, "timeout");
        let text = m.encode();
        for line in [
            r#"fieldcast_probe_success_total{kind="location",target="ws://g/ws"} 1"#,
            r#"fieldcast_probe_success_total{kind="location",target="mqtt"} 0"#,
            r#"fieldcast_probe_failure_total{kind="location",target="mqtt",reason="timeout"} 1"#,
            r#"fieldcast_probe_latency_seconds_count{kind="location",target="ws://g/ws"} 1"#,
            r#"fieldcast_probe_connected{target="mqtt"} 0"#,
        ] {
            assert!(text.contains(line), "{line} not in\n{text}");
        }
    }
}
