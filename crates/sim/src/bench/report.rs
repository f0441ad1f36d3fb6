//! The outcome of a benchmark: a [`Report`] printed as a human table
//! (`Display`) and as one JSON line ([`Report::json_line`]).

use std::fmt;

use hdrhistogram::Histogram;
use serde::Serialize;

use super::procstat::Sample;
use super::tally::Accounting;

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
    pub processes: Vec<ProcessUse>,
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
