//! What one receiving client saw, kept so the report can match it against
//! the send log message by message.
//!
//! Per watched device a client keeps how many window messages it received
//! and the newest `ts` it received. Locations of one device reach a client
//! in `ts` order (the bridge only moves a device's state forward and the
//! gateway keeps order), so these two numbers are enough to split every
//! expected message into *delivered*, *superseded* (not received, but a
//! newer location of that device was: coalesced, latest-wins) and
//! *missing* (nothing newer arrived: the client's map is stale).

use fieldcast_core::geo::BBox;
use hdrhistogram::Histogram;

use super::args::DeviceRange;
use super::log::SendLog;

/// Latencies are recorded in microseconds, 1 µs .. 1 h, 3 significant digits.
#[allow(clippy::expect_used)]
pub fn latency_histogram() -> Histogram<u64> {
    // Invariant: these constant bounds satisfy `new_with_bounds` (low >= 1,
    // high >= 2 * low, 3 significant figures <= 5), so it cannot fail.
    let h = Histogram::new_with_bounds(1, 3_600_000_000, 3);
    h.expect("valid bounds") // ok: constant bounds
}

/// Per watched device.
#[derive(Debug, Clone, Copy, Default)]
pub struct Slot {
    /// Window messages received the first time.
    pub delivered: u32,
    /// Newest `ts` received (any time), or `i64::MIN`.
    pub last_ts: i64,
}

/// One client's record.
#[derive(Debug)]
pub struct Tally {
    pub range: DeviceRange,
    /// A bbox client's box (the gateway's own test: edges included).
    pub bbox: Option<BBox>,
    pub slots: Vec<Slot>,
    /// Device-to-client latency of delivered window messages, µs.
    pub latency: Histogram<u64>,
    /// Location frames received (any time, any device).
    pub frames: u64,
    /// Locations not in the send log (another publisher, a device outside the
    /// selection, a `ts` never sent).
    pub unmatched: u64,
    /// A `ts` not newer than one already received for that device.
    pub out_of_order: u64,
    /// bbox: locations outside the box (the "left the box" notice).
    pub outside: u64,
    /// Why the client stopped early, if it did.
    pub error: Option<String>,
}

impl Tally {
    pub fn new(range: DeviceRange, bbox: Option<BBox>) -> Self {
        Tally {
            range,
            bbox,
            slots: vec![
                Slot {
                    delivered: 0,
                    last_ts: i64::MIN
                };
                range.len
            ],
            latency: latency_histogram(),
            frames: 0,
            unmatched: 0,
            out_of_order: 0,
            outside: 0,
            error: None,
        }
    }

    /// One location of `device` stamped `ts`, received at `recv_us` (epoch µs).
    pub fn location(&mut self, log: &SendLog, device: &str, ts: i64, recv_us: i64) {
        self.frames += 1;
        let Some((d, slot)) = log
            .index_of(device)
            .and_then(|d| Some((d, self.range.slot(d)?)))
        else {
            self.unmatched += 1;
            return;
        };
        let s = &mut self.slots[slot];
        if ts <= s.last_ts {
            self.out_of_order += 1;
            return;
        }
        s.last_ts = ts;
        let Some(sent) = log.find(d, ts) else {
            self.unmatched += 1;
            return;
        };
        if !log.window().contains(ts) {
            return;
        }
        if let Some(b) = self.bbox {
            if !b.contains(sent.lon, sent.lat) {
                self.outside += 1;
                return;
            }
        }
        s.delivered += 1;
        let us = u64::try_from(recv_us - sent.sent_us).unwrap_or(0).max(1);
        self.latency.saturating_record(us);
    }

    /// Expected, delivered, superseded and missing window messages of this
    /// client, from the send log.
    pub fn account(&self, log: &SendLog) -> Accounting {
        let w = log.window();
        let mut a = Accounting::default();
        for (slot, d) in self.range.iter().enumerate() {
            let Some(sends) = log.sends(d) else { continue };
            let s = self.slots[slot];
            let lo = sends.partition_point(|x| x.ts < w.start_ms);
            let hi = sends.partition_point(|x| x.ts < w.end_ms);
            let in_window = sends.get(lo..hi).unwrap_or_default();
            let (expected, reached) = match self.bbox {
                None => (
                    in_window.len() as u64,
                    in_window.partition_point(|x| x.ts <= s.last_ts) as u64,
                ),
                Some(b) => in_window
                    .iter()
                    .filter(|x| b.contains(x.lon, x.lat))
                    .fold((0, 0), |(e, r), x| {
                        (e + 1, r + u64::from(x.ts <= s.last_ts))
                    }),
            };
            let delivered = u64::from(s.delivered);
            a.expected += expected;
            a.delivered += delivered;
            a.superseded += reached.saturating_sub(delivered);
            a.missing += expected - reached.min(expected);
        }
        a
    }
}

/// Window totals of one or more clients.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct Accounting {
    pub expected: u64,
    pub delivered: u64,
    pub superseded: u64,
    pub missing: u64,
}

impl std::ops::AddAssign for Accounting {
    fn add_assign(&mut self, o: Accounting) {
        self.expected += o.expected;
        self.delivered += o.delivered;
        self.superseded += o.superseded;
        self.missing += o.missing;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bench::log::{Sent, Window};

    fn log() -> SendLog {
        let log = SendLog::new("b", 2);
        log.set_window(Window {
            start_ms: 100,
            end_ms: 200,
        });
        for (i, ts) in [90, 110, 120, 130, 140, 210].into_iter().enumerate() {
            let lat = if i % 2 == 0 { 1.0 } else { 5.0 };
            log.push(
                0,
                Sent {
                    ts,
                    sent_us: ts * 1_000,
                    lat,
                    lon: 1.0,
                },
            );
        }
        log
    }

    const ALL: DeviceRange = DeviceRange {
        start: 0,
        len: 2,
        of: 2,
    };

    #[test]
    fn splits_delivered_superseded_and_missing() {
        let log = log();
        let mut t = Tally::new(ALL, None);
        t.location(&log, "b-1", 90, 95_000); // warm-up: not counted
        t.location(&log, "b-1", 110, 112_500);
        t.location(&log, "b-1", 130, 131_000); // 120 superseded
        t.location(&log, "b-1", 130, 131_000); // again
        t.location(&log, "b-1", 135, 136_000); // never sent
        t.location(&log, "x-1", 135, 136_000);
        assert_eq!((t.frames, t.out_of_order, t.unmatched), (6, 1, 2));
        let a = t.account(&log);
        // 140 was not received and nothing newer was: missing.
        assert_eq!(
            a,
            Accounting {
                expected: 4,
                delivered: 2,
                superseded: 1,
                missing: 1
            }
        );
        assert_eq!(t.latency.len(), 2);
        assert_eq!(t.latency.max(), t.latency.highest_equivalent(2_500));
        // A newer location after the window supersedes everything before it.
        t.location(&log, "b-1", 210, 211_000);
        assert_eq!(t.account(&log).superseded, 2);
    }

    #[test]
    fn a_bbox_client_expects_only_what_was_inside() {
        let log = log();
        let mut t = Tally::new(ALL, Some(BBox::new([0.0, 0.0, 2.0, 2.0]).unwrap()));
        t.location(&log, "b-1", 110, 111_000); // lat 5: outside
        t.location(&log, "b-1", 120, 121_000);
        let a = t.account(&log);
        assert_eq!(
            (t.outside, a.expected, a.delivered, a.missing),
            (1, 2, 1, 1)
        );
    }
}
