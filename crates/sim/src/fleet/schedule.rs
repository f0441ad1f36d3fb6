//! When each device publishes next, for one connection's devices.
//!
//! Periodic sends (locations, status) sit on a fixed grid `start + k·period`
//! computed from the start, so rounding never accumulates into drift. Each
//! device's grid starts at a random phase, which spreads a fleet's sends over
//! the period instead of bursting every tick. A send that falls more than a
//! period behind (broker backpressure, an outage) skips the missed slots
//! rather than catching up in a burst: a tracker reports where it is now.
//! Events come as a Poisson process: exponential gaps around a mean.

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::time::Duration;

use rand::Rng;
use tokio::time::Instant;

/// What a device does when its time comes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Job {
    Location,
    Status,
    Event,
}

/// A fixed-period grid of send times.
#[derive(Debug, Clone)]
pub struct Ticker {
    start: Instant,
    period: Duration,
    k: u64,
}

impl Ticker {
    /// Slots at `start`, `start + period`, ...
    pub fn new(start: Instant, period: Duration) -> Self {
        Ticker {
            start,
            period,
            k: 0,
        }
    }

    /// The current slot.
    pub fn due(&self) -> Instant {
        self.slot(self.k)
    }

    fn slot(&self, k: u64) -> Instant {
        let nanos = self.period.as_nanos().saturating_mul(u128::from(k));
        self.start + Duration::from_nanos(u64::try_from(nanos).unwrap_or(u64::MAX))
    }

    /// Moves to the next slot after one was served at `now`, skipping slots
    /// that are more than a period in the past. Returns how many it skipped.
    pub fn advance(&mut self, now: Instant) -> u64 {
        self.k += 1;
        if self.period.is_zero() || self.slot(self.k) + self.period > now {
            return 0;
        }
        let behind = now.saturating_duration_since(self.start).as_nanos();
        let first_ahead = behind.div_ceil(self.period.as_nanos());
        let first_ahead = u64::try_from(first_ahead).unwrap_or(u64::MAX);
        let skipped = first_ahead.saturating_sub(self.k);
        self.k = first_ahead.max(self.k);
        skipped
    }
}

/// A random gap with an exponential distribution around `mean`, capped at
/// 20 means so a pathological draw cannot park a device forever.
pub fn exponential(mean: Duration, rng: &mut impl Rng) -> Duration {
    let u: f64 = rng.random_range(0.0..1.0);
    let gap = -(1.0 - u).ln();
    mean.mul_f64(gap.min(20.0))
}

/// Due jobs of many devices, earliest first.
#[derive(Debug, Default)]
pub struct Queue {
    heap: BinaryHeap<Reverse<(Instant, usize, Job)>>,
}

impl Queue {
    pub fn push(&mut self, at: Instant, device: usize, job: Job) {
        self.heap.push(Reverse((at, device, job)));
    }

    /// When the earliest job is due.
    pub fn next_at(&self) -> Option<Instant> {
        self.heap.peek().map(|Reverse((at, _, _))| *at)
    }

    /// The earliest job if it is due at `now`.
    pub fn pop_due(&mut self, now: Instant) -> Option<(Instant, usize, Job)> {
        match self.heap.peek() {
            Some(Reverse((at, _, _))) if *at <= now => self.heap.pop().map(|Reverse(j)| j),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::rngs::SmallRng;
    use rand::SeedableRng;

    #[test]
    fn ticker_keeps_to_its_grid_without_drift() {
        let t0 = Instant::now();
        let period = Duration::from_millis(333);
        let mut t = Ticker::new(t0, period);
        for k in 0..10_000u32 {
            assert_eq!(t.due(), t0 + period * k);
            // Served a little late every time: the grid does not move.
            assert_eq!(t.advance(t.due() + Duration::from_millis(50)), 0);
        }
    }

    #[test]
    fn ticker_skips_slots_it_fell_far_behind_on() {
        let t0 = Instant::now();
        let mut t = Ticker::new(t0, Duration::from_secs(1));
        // Slot 0 served 10.5 s late: slots 1..=10 are gone, 11 is next.
        assert_eq!(t.advance(t0 + Duration::from_millis(10_500)), 10);
        assert_eq!(t.due(), t0 + Duration::from_secs(11));
    }

    #[test]
    fn exponential_gaps_average_their_mean() {
        let mut rng = SmallRng::seed_from_u64(3);
        let mean = Duration::from_secs(60);
        let n = 20_000;
        let total: Duration = (0..n).map(|_| exponential(mean, &mut rng)).sum();
        let avg = total.as_secs_f64() / f64::from(n);
        assert!((55.0..65.0).contains(&avg), "mean gap {avg}");
    }

    #[test]
    fn queue_pops_in_time_order_only_when_due() {
        let t0 = Instant::now();
        let mut q = Queue::default();
        q.push(t0 + Duration::from_secs(2), 1, Job::Status);
        q.push(t0 + Duration::from_secs(1), 0, Job::Location);
        assert_eq!(q.next_at(), Some(t0 + Duration::from_secs(1)));
        assert_eq!(q.pop_due(t0), None);
        let now = t0 + Duration::from_secs(5);
        assert_eq!(q.pop_due(now).map(|j| j.1), Some(0));
        assert_eq!(q.pop_due(now).map(|j| j.2), Some(Job::Status));
        assert_eq!(q.pop_due(now), None);
    }
}
