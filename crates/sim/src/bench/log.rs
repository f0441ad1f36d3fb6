//! The send log: every location the benchmark's devices published, per
//! device, in send order. Publishers append; receivers look a received
//! `(device, ts)` up to match it to its send and take the exact send time;
//! the report walks it to count what each client should have received.
//!
//! A location's `ts` is its key: the publishers make it strictly increasing
//! per device, so it is unique, and it is the one stamp that survives the
//! whole chain (the bridge drops unknown fields). The send time itself is
//! kept here in microseconds, so latency is not limited to `ts`'s
//! millisecond resolution.

use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Mutex, MutexGuard};

/// One published location.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Sent {
    /// The payload's `ts` (epoch ms).
    pub ts: i64,
    /// Wall-clock send time, epoch µs.
    pub sent_us: i64,
    pub lat: f64,
    pub lon: f64,
}

/// The measured window, by location `ts`: `[start_ms, end_ms)`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Window {
    pub start_ms: i64,
    pub end_ms: i64,
}

impl Window {
    pub fn contains(&self, ts: i64) -> bool {
        (self.start_ms..self.end_ms).contains(&ts)
    }
}

/// Sends of devices `<prefix>-1 ..= <prefix>-N`, one lock per device (each
/// is written by one publisher and read briefly by the clients watching it).
#[derive(Debug)]
pub struct SendLog {
    prefix: String,
    devices: Vec<Mutex<Vec<Sent>>>,
    /// The window, set once when the load starts; empty until then.
    window_start_ms: AtomicI64,
    window_end_ms: AtomicI64,
}

impl SendLog {
    pub fn new(prefix: &str, devices: usize) -> Self {
        SendLog {
            prefix: prefix.to_owned(),
            devices: (0..devices).map(|_| Mutex::new(Vec::new())).collect(),
            window_start_ms: AtomicI64::new(i64::MAX),
            window_end_ms: AtomicI64::new(i64::MAX),
        }
    }

    /// Sets the measured window (before the first send).
    pub fn set_window(&self, w: Window) {
        self.window_end_ms.store(w.end_ms, Ordering::Relaxed);
        self.window_start_ms.store(w.start_ms, Ordering::Relaxed);
    }

    pub fn window(&self) -> Window {
        Window {
            start_ms: self.window_start_ms.load(Ordering::Relaxed),
            end_ms: self.window_end_ms.load(Ordering::Relaxed),
        }
    }

    pub fn len(&self) -> usize {
        self.devices.len()
    }

    pub fn is_empty(&self) -> bool {
        self.devices.is_empty()
    }

    /// The index of device id `<prefix>-<n>` (n from 1, no leading zero).
    pub fn index_of(&self, id: &str) -> Option<usize> {
        let n = id.strip_prefix(self.prefix.as_str())?.strip_prefix('-')?;
        if n.starts_with('0') || !n.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        let n: usize = n.parse().ok()?;
        (1..=self.devices.len()).contains(&n).then(|| n - 1)
    }

    /// The sends of device `d`. A publisher that panicked while holding the
    /// lock left a complete `Vec` (pushes are atomic to observers), so a
    /// poisoned lock is still read.
    pub fn sends(&self, d: usize) -> Option<MutexGuard<'_, Vec<Sent>>> {
        self.devices
            .get(d)
            .map(|m| m.lock().unwrap_or_else(|e| e.into_inner()))
    }

    pub fn push(&self, d: usize, sent: Sent) {
        if let Some(mut s) = self.sends(d) {
            s.push(sent);
        }
    }

    /// Takes back the newest send of `d` (its publish failed).
    pub fn pop(&self, d: usize) {
        if let Some(mut s) = self.sends(d) {
            s.pop();
        }
    }

    /// The send of `d` with this `ts`.
    pub fn find(&self, d: usize, ts: i64) -> Option<Sent> {
        let s = self.sends(d)?;
        s.binary_search_by_key(&ts, |x| x.ts).ok().map(|i| s[i])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sent(ts: i64) -> Sent {
        Sent {
            ts,
            sent_us: ts * 1000 + 7,
            lat: 0.0,
            lon: 0.0,
        }
    }

    #[test]
    fn ids_map_to_indexes() {
        let log = SendLog::new("b", 12);
        assert_eq!(log.index_of("b-1"), Some(0));
        assert_eq!(log.index_of("b-12"), Some(11));
        for bad in ["b-0", "b-13", "b-01", "b1", "c-1", "b-", "b-1x", "bb-1"] {
            assert_eq!(log.index_of(bad), None, "{bad}");
        }
    }

    #[test]
    fn sends_are_found_by_ts() {
        let log = SendLog::new("b", 2);
        assert!(!log.window().contains(10));
        log.set_window(Window {
            start_ms: 10,
            end_ms: 20,
        });
        for ts in [5, 10, 15, 20] {
            log.push(1, sent(ts));
        }
        log.pop(1);
        assert_eq!(log.find(1, 15).map(|s| s.sent_us), Some(15_007));
        assert_eq!(
            (log.find(1, 20), log.find(0, 10), log.find(9, 10)),
            (None, None, None)
        );
        assert!(log.window().contains(10) && !log.window().contains(20));
    }
}
