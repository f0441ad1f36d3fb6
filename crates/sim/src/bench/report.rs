//! The outcome of a benchmark: a [`Report`] printed as a human table
//! (`Display`) and as one JSON line ([`Report::json_line`]).

use std::fmt;

use hdrhistogram::Histogram;
use serde::Serialize;

use super::procstat::Sample;
use super::tally::{Accounting, Derived};

#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub label: Option<String>,
    /// `gateway` or `floor`.
    pub mode: &'static str,
    pub devices: usize,
    /// Locations per second per device.
    pub rate: f64,
    pub connections: usize,
    pub clients: usize,
    /// `fleet`, `watch:<K>` or `bbox:<minLon,minLat,maxLon,maxLat>`.
    pub selection: String,
    pub gateways: Vec<String>,
    pub warmup_s: f64,
    pub duration_s: f64,
    /// Locations published with a `ts` in the window.
    pub sent: u64,
    pub sent_per_s: f64,
    /// Over the whole run: grid slots the load skipped (behind, or link down).
    pub load_skipped: u64,
    pub load_connection_errors: u64,
    #[serde(flatten)]
    pub accounting: Accounting,
    /// delivered / expected (null when nothing was expected).
    pub delivery_ratio: Option<f64>,
    pub delivered_per_s: f64,
    pub expected_per_s: f64,
    pub out_of_order: u64,
    pub unmatched: u64,
    /// bbox: "left the box" notices received.
    pub outside: u64,
    pub clients_failed: usize,
    /// The first few client errors.
    pub client_errors: Vec<String>,
    pub latency_ms: Latency,
    /// p99 and max of each second of the window, by send time: periodic
    /// spikes show up at the same seconds run after run.
    pub by_second: Vec<Second>,
    /// `alert.*` events: present when the run measures alerts (a rule or
    /// bursts given) or any arrived; absent otherwise, so the JSON line of
    /// a run without alerts is what it always was.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub alerts: Option<Events>,
    /// `geofence_enter` / `geofence_exit` events: present when any arrived.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fence_events: Option<Events>,
    pub processes: Vec<ProcessUse>,
}

/// Derived events of one family, summed over the clients: each counted
/// once per client that received it, timed from the send of the location
/// that caused it.
#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct Events {
    /// Window events received and matched to their location's send.
    pub count: u64,
    pub latency_ms: Latency,
    /// Window events whose `ts` is no send of the run (not timed).
    pub unmatched: u64,
    /// Received again by the same client.
    pub repeated: u64,
    /// `--overspeed-every`: bursts whose tripping location was sent in the
    /// window. A client receives one alert per burst of each device it
    /// watches.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub bursts: Option<u64>,
}

impl Events {
    pub fn from_derived(d: &Derived, bursts: Option<u64>) -> Events {
        Events {
            count: d.count,
            latency_ms: d.latency.as_ref().map(Latency::from_us).unwrap_or_default(),
            unmatched: d.unmatched,
            repeated: d.repeated,
            bursts,
        }
    }
}

/// Device-to-client latency of delivered window messages, milliseconds.
#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct Latency {
    pub count: u64,
    pub mean: f64,
    pub p50: f64,
    pub p90: f64,
    pub p99: f64,
    pub p999: f64,
    pub max: f64,
}

impl Latency {
    /// From a histogram of microseconds.
    pub fn from_us(h: &Histogram<u64>) -> Latency {
        if h.is_empty() {
            return Latency::default();
        }
        let ms = |us: u64| us as f64 / 1_000.0;
        Latency {
            count: h.len(),
            mean: round(h.mean() / 1_000.0, 1e3),
            p50: ms(h.value_at_quantile(0.50)),
            p90: ms(h.value_at_quantile(0.90)),
            p99: ms(h.value_at_quantile(0.99)),
            p999: ms(h.value_at_quantile(0.999)),
            max: ms(h.max()),
        }
    }
}

/// One second of the window's latencies, milliseconds.
#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct Second {
    pub p99: f64,
    pub max: f64,
}

impl Second {
    pub fn from_us(h: &Histogram<u64>) -> Second {
        if h.is_empty() {
            return Second::default();
        }
        Second {
            p99: h.value_at_quantile(0.99) as f64 / 1_000.0,
            max: h.max() as f64 / 1_000.0,
        }
    }
}

/// CPU and memory of one watched process over the window.
#[derive(Debug, Clone, Serialize)]
pub struct ProcessUse {
    pub pid: u32,
    pub name: String,
    /// CPU seconds (user + system) used during the window.
    pub cpu_s: f64,
    /// `cpu_s` / window length, in % of one core.
    pub cpu_pct: f64,
    pub rss_start_mib: f64,
    pub rss_end_mib: f64,
    /// `VmHWM` at the end: peak since the process started.
    pub peak_rss_mib: f64,
}

impl ProcessUse {
    pub fn between(a: &Sample, b: &Sample, window_s: f64) -> ProcessUse {
        let cpu_s = (b.cpu_s - a.cpu_s).max(0.0);
        let mib = |kib: u64| round(kib as f64 / 1024.0, 100.0);
        ProcessUse {
            pid: b.pid,
            name: b.name.clone(),
            cpu_s: round(cpu_s, 100.0),
            cpu_pct: if window_s > 0.0 {
                round(100.0 * cpu_s / window_s, 10.0)
            } else {
                0.0
            },
            rss_start_mib: mib(a.rss_kib),
            rss_end_mib: mib(b.rss_kib),
            peak_rss_mib: mib(b.peak_rss_kib),
        }
    }
}

/// `v` to the nearest `1 / scale`, so the JSON line reads cleanly.
pub fn round(v: f64, scale: f64) -> f64 {
    (v * scale).round() / scale
}

impl Report {
    /// The report as one line of JSON.
    pub fn json_line(&self) -> String {
        // A struct of numbers, strings and vectors always serialises.
        serde_json::to_string(self).unwrap_or_else(|e| format!("{{\"error\":\"{e}\"}}"))
    }
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let a = &self.accounting;
        let pct = |n: u64| {
            if a.expected == 0 {
                0.0
            } else {
                100.0 * n as f64 / a.expected as f64
            }
        };
        let title = self.label.as_deref().unwrap_or("fieldcast-sim bench");
        writeln!(f, "{title} ({} mode)", self.mode)?;
        writeln!(
            f,
            "  load        {} devices x {}/s over {} MQTT connections; {} clients watching {}",
            self.devices, self.rate, self.connections, self.clients, self.selection
        )?;
        writeln!(
            f,
            "  window      {:.1} s after {:.1} s warm-up",
            self.duration_s, self.warmup_s
        )?;
        writeln!(
            f,
            "  sent        {:>12}  {:>10.0} msg/s",
            self.sent, self.sent_per_s
        )?;
        writeln!(
            f,
            "  expected    {:>12}  {:>10.0} deliveries/s",
            a.expected, self.expected_per_s
        )?;
        writeln!(
            f,
            "  delivered   {:>12}  {:>10.0} deliveries/s  {:>8.3} %",
            a.delivered,
            self.delivered_per_s,
            pct(a.delivered)
        )?;
        writeln!(
            f,
            "  superseded  {:>12}  (coalesced: a newer location arrived) {:.3} %",
            a.superseded,
            pct(a.superseded)
        )?;
        writeln!(
            f,
            "  missing     {:>12}  (nothing newer arrived)               {:.3} %",
            a.missing,
            pct(a.missing)
        )?;
        writeln!(
            f,
            "  other       out of order {}, unmatched {}, outside bbox {}, load skipped {}, clients failed {}",
            self.out_of_order, self.unmatched, self.outside, self.load_skipped, self.clients_failed
        )?;
        let l = &self.latency_ms;
        writeln!(
            f,
            "  latency ms  p50 {:.2}  p90 {:.2}  p99 {:.2}  p99.9 {:.2}  max {:.2}  (mean {:.2}, n={})",
            l.p50, l.p90, l.p99, l.p999, l.max, l.mean, l.count
        )?;
        if !self.by_second.is_empty() {
            for (name, pick) in [
                ("p99", (|s: &Second| s.p99) as fn(&Second) -> f64),
                ("max", |s: &Second| s.max),
            ] {
                write!(f, "  {name} by s   ")?;
                for s in &self.by_second {
                    write!(f, " {:.1}", pick(s))?;
                }
                writeln!(f)?;
            }
        }
        for (name, events) in [
            ("alerts", &self.alerts),
            ("fence events", &self.fence_events),
        ] {
            let Some(e) = events else { continue };
            let l = &e.latency_ms;
            write!(
                f,
                "  {name}: n={}, latency ms p50 {:.2}  p90 {:.2}  p99 {:.2}  p99.9 {:.2}  max {:.2}  (mean {:.2}; unmatched {}, repeated {}",
                e.count, l.p50, l.p90, l.p99, l.p999, l.max, l.mean, e.unmatched, e.repeated
            )?;
            if let Some(b) = e.bursts {
                write!(f, ", overspeed bursts {b}")?;
            }
            writeln!(f, ")")?;
        }
        for p in &self.processes {
            writeln!(
                f,
                "  process     {:<16} pid {:<7} cpu {:>8.2} s ({:>5.1} % of a core)  rss {:.1} -> {:.1} MiB, peak {:.1} MiB",
                p.name, p.pid, p.cpu_s, p.cpu_pct, p.rss_start_mib, p.rss_end_mib, p.peak_rss_mib
            )?;
        }
        for e in &self.client_errors {
            writeln!(f, "  client error: {e}")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bench::tally::latency_histogram;

    fn report(alerts: Option<Events>) -> Report {
        Report {
            label: Some("b".into()),
            mode: "gateway",
            devices: 2,
            rate: 2.0,
            connections: 2,
            clients: 1,
            selection: "fleet".into(),
            gateways: vec![],
            warmup_s: 1.0,
            duration_s: 1.0,
            sent: 4,
            sent_per_s: 4.0,
            load_skipped: 0,
            load_connection_errors: 0,
            accounting: Accounting::default(),
            delivery_ratio: None,
            delivered_per_s: 0.0,
            expected_per_s: 0.0,
            out_of_order: 0,
            unmatched: 0,
            outside: 0,
            clients_failed: 0,
            client_errors: vec![],
            latency_ms: Latency::default(),
            by_second: vec![],
            alerts,
            fence_events: None,
            processes: vec![],
        }
    }

    /// Pins that a run without alerts prints and serialises exactly the
    /// fields it did before alerts were measured, and that a run with them
    /// adds one line and one `alerts` object.
    #[test]
    fn alerts_appear_only_when_measured() {
        let plain = report(None);
        assert!(!plain.to_string().contains("alerts"));
        let json: serde_json::Value = serde_json::from_str(&plain.json_line()).unwrap();
        assert!(json.get("alerts").is_none() && json.get("fence_events").is_none());

        let mut d = Derived::default();
        let mut h = latency_histogram();
        for us in [1_000, 1_500, 40_000] {
            h.record(us).unwrap();
        }
        d.count = 3;
        d.latency = Some(h);
        d.repeated = 1;
        let with = report(Some(Events::from_derived(&d, Some(3))));
        let text = with.to_string();
        let line = text
            .lines()
            .find(|l| l.contains("alerts: n=3, latency ms p50 1.50"));
        assert!(
            line.is_some_and(|l| l.contains("max 40.0") && l.contains("overspeed bursts 3")),
            "{text}"
        );
        let json: serde_json::Value = serde_json::from_str(&with.json_line()).unwrap();
        assert_eq!(json["alerts"]["count"], 3);
        assert_eq!(json["alerts"]["latency_ms"]["count"], 3);
        assert_eq!(json["alerts"]["latency_ms"]["p50"], 1.5);
        assert_eq!(
            (
                json["alerts"]["repeated"].as_u64(),
                json["alerts"]["bursts"].as_u64()
            ),
            (Some(1), Some(3))
        );
        assert_eq!(json["latency_ms"]["count"], 0, "locations apart");

        // Measured but nothing arrived: said, with n=0.
        let none = report(Some(Events::from_derived(&Derived::default(), None)));
        assert!(none.to_string().contains("alerts: n=0,"));
        let json: serde_json::Value = serde_json::from_str(&none.json_line()).unwrap();
        assert!(json["alerts"].get("bursts").is_none());
    }
}
