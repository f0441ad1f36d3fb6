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
//!
//! Derived events (alerts, geofence transitions: docs/alerts.md,
//! docs/geofences.md) carry the `ts` of the location that caused them, so
//! each is matched to that location's send and its latency is taken from
//! the same µs send time as a location's: from the tripping message
//! leaving the device to the event reaching the client. They are kept
//! apart from the locations ([`Derived`]), one record per [`Family`].

use std::collections::HashSet;

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

/// One second of the window's latencies (by send time): 10 µs .. 60 s,
/// 2 significant digits, small enough to keep one per second per client.
#[allow(clippy::expect_used)]
pub fn second_histogram() -> Histogram<u64> {
    // Invariant: constant bounds that satisfy `new_with_bounds`.
    let h = Histogram::new_with_bounds(10, 60_000_000, 2);
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
    /// The same, one histogram per second of the window (by the send's
    /// `ts`): where in the window the tail comes from.
    pub by_second: Vec<Histogram<u64>>,
    /// Location frames received (any time, any device).
    pub frames: u64,
    /// Locations not in the send log (another publisher, a device outside the
    /// selection, a `ts` never sent).
    pub unmatched: u64,
    /// A `ts` not newer than one already received for that device.
    pub out_of_order: u64,
    /// bbox: locations outside the box (the "left the box" notice).
    pub outside: u64,
    /// `alert.*` events received.
    pub alerts: Derived,
    /// `geofence_enter` / `geofence_exit` events received.
    pub fences: Derived,
    /// Why the client stopped early, if it did.
    pub error: Option<String>,
}

/// The derived events the bench measures, by their `kind`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Family {
    /// `alert.<rule kind>`.
    Alert,
    /// `geofence_enter`, `geofence_exit`.
    Fence,
}

impl Family {
    /// The family of an event `kind`; `None` for device events.
    pub fn of(kind: &str) -> Option<Family> {
        if kind.starts_with("alert.") {
            Some(Family::Alert)
        } else if kind.starts_with("geofence_") {
            Some(Family::Fence)
        } else {
            None
        }
    }
}

/// Derived events of one family: one client's, or summed over clients.
#[derive(Debug, Default)]
pub struct Derived {
    /// Window events (by their `ts`) received the first time and matched
    /// to the send of the location that caused them.
    pub count: u64,
    /// Their latency, µs: receive time − that location's send time. Made
    /// at the first event: a histogram is ~190 KB, and most runs (and the
    /// idle-connection runs' 10 000 clients) have none.
    pub latency: Option<Histogram<u64>>,
    /// Window events whose `ts` is no logged send of their device (an
    /// `alert.inactive`, whose `ts` is computed; another publisher's).
    pub unmatched: u64,
    /// The same event (device and id) received again.
    pub repeated: u64,
    /// (device index, event id) of every window event received.
    seen: HashSet<(usize, Box<str>)>,
}

impl Derived {
    /// Latencies recorded so far.
    pub fn latency_count(&self) -> u64 {
        self.latency.as_ref().map_or(0, Histogram::len)
    }

    fn record(&mut self, us: u64) {
        self.count += 1;
        self.latency
            .get_or_insert_with(latency_histogram)
            .saturating_record(us);
    }

    /// Adds another record's counts and latencies into this one (the
    /// report's sum over clients; duplicates are per client).
    pub fn absorb(&mut self, other: &Derived) {
        self.count += other.count;
        self.unmatched += other.unmatched;
        self.repeated += other.repeated;
        if let Some(h) = &other.latency {
            // Same bounds everywhere, so adding cannot fail.
            let _ = self.latency.get_or_insert_with(latency_histogram).add(h);
        }
    }
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
            by_second: Vec::new(),
            frames: 0,
            unmatched: 0,
            out_of_order: 0,
            outside: 0,
            alerts: Derived::default(),
            fences: Derived::default(),
            error: None,
        }
    }

    /// One derived event of `device` (`family`, `id`, stamped `ts`: the
    /// location that caused it), received at `recv_us` (epoch µs). Events
    /// outside the window (a replay of older ones on subscribe included)
    /// are not counted.
    pub fn event(
        &mut self,
        log: &SendLog,
        family: Family,
        device: &str,
        id: &str,
        ts: i64,
        recv_us: i64,
    ) {
        if !log.window().contains(ts) {
            return;
        }
        let derived = match family {
            Family::Alert => &mut self.alerts,
            Family::Fence => &mut self.fences,
        };
        let Some(d) = log.index_of(device) else {
            derived.unmatched += 1;
            return;
        };
        if !derived.seen.insert((d, id.into())) {
            derived.repeated += 1;
            return;
        }
        match log.find(d, ts) {
            Some(sent) => derived.record(u64::try_from(recv_us - sent.sent_us).unwrap_or(0).max(1)),
            None => derived.unmatched += 1,
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
        let window = log.window();
        if !window.contains(ts) {
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
        let second = usize::try_from((ts - window.start_ms) / 1_000).unwrap_or(0);
        if self.by_second.len() <= second {
            self.by_second.resize_with(second + 1, second_histogram);
        }
        self.by_second[second].saturating_record(us);
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
    fn event_kinds_fall_into_families() {
        assert_eq!(Family::of("alert.overspeed"), Some(Family::Alert));
        assert_eq!(Family::of("alert.inactive"), Some(Family::Alert));
        assert_eq!(Family::of("geofence_enter"), Some(Family::Fence));
        assert_eq!(Family::of("geofence_exit"), Some(Family::Fence));
        for device_event in ["door_open", "speeding", "alert", "alerts.x", "geofence"] {
            assert_eq!(Family::of(device_event), None, "{device_event}");
        }
    }

    /// Pins the alert latency's basis: the µs send time of the location
    /// whose `ts` the alert carries (not `ts` itself, whose milliseconds
    /// would add up to 1 ms), counted once per id, in the window only,
    /// and apart from the locations.
    #[test]
    fn alerts_are_timed_from_the_tripping_send() {
        let log = log();
        let mut t = Tally::new(ALL, None);
        assert!(t.alerts.latency.is_none(), "no histogram until an event");
        // Sent at 130 ms + 0 µs (the log's sent_us = ts * 1000); received 4.25 ms later.
        t.event(
            &log,
            Family::Alert,
            "b-1",
            "alert-overspeed-1-120",
            130,
            134_250,
        );
        t.event(
            &log,
            Family::Alert,
            "b-1",
            "alert-overspeed-1-120",
            130,
            139_000,
        ); // again
        t.event(
            &log,
            Family::Alert,
            "b-1",
            "alert-overspeed-1-90",
            90,
            95_000,
        ); // warm-up
        t.event(
            &log,
            Family::Alert,
            "b-1",
            "alert-inactive-2-135",
            135,
            136_000,
        ); // no such send
        t.event(
            &log,
            Family::Alert,
            "x-1",
            "alert-overspeed-1-110",
            110,
            111_000,
        ); // not ours
        t.event(
            &log,
            Family::Fence,
            "b-1",
            "geofence-enter-3-110",
            110,
            111_000,
        );
        let a = &t.alerts;
        assert_eq!((a.count, a.repeated, a.unmatched), (1, 1, 2));
        let h = a.latency.as_ref().expect("one latency");
        assert_eq!((h.len(), h.max()), (1, h.highest_equivalent(4_250)));
        assert_eq!((t.fences.count, t.fences.latency_count()), (1, 1));
        assert_eq!((t.frames, t.latency.len()), (0, 0), "locations untouched");

        let mut sum = Derived::default();
        sum.absorb(&t.alerts);
        sum.absorb(&t.fences);
        sum.absorb(&Derived::default());
        assert_eq!(
            (sum.count, sum.latency_count(), sum.repeated, sum.unmatched),
            (2, 2, 1, 2)
        );
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
