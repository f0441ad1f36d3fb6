//! Exponential backoff with jitter, for every retry in Fieldcast: broker
//! reconnects (bridge and simulated devices), Redis batches and the live
//! feed, PostgreSQL writes and schema upkeep. "Equal jitter" — half the
//! delay fixed, half random — keeps a fleet of bridges, or thousands of
//! simulated devices, from retrying in step, while the fixed half keeps a
//! retry from coming back at once.
//!
//! Also [`LogLimiter`], which keeps a retry loop (or a misbehaving device)
//! from flooding the log.

use std::time::{Duration, Instant};

use rand::Rng;

/// Delays grow `min`, `2·min`, ... up to `max`; each one is drawn
/// uniformly from `[d/2, d]`.
#[derive(Debug, Clone)]
pub struct Backoff {
    min: Duration,
    max: Duration,
    failures: u32,
}

impl Backoff {
    pub fn new(min: Duration, max: Duration) -> Self {
        Backoff {
            min,
            max: max.max(min),
            failures: 0,
        }
    }

    /// The delay after one more failure, jittered by the thread's RNG.
    pub fn next_delay(&mut self) -> Duration {
        self.next_delay_with(&mut rand::rng())
    }

    /// [`Backoff::next_delay`] with the caller's RNG (a seeded one keeps a
    /// simulation reproducible).
    pub fn next_delay_with(&mut self, rng: &mut impl Rng) -> Duration {
        let d = self.delay_after_with(self.failures, rng);
        self.failures = self.failures.saturating_add(1);
        d
    }

    /// The delay after `failures` failures, jittered, without counting one
    /// more: for a caller that keeps the count itself (async-nats's
    /// reconnect callback).
    pub fn delay_after(&self, failures: u32) -> Duration {
        self.delay_after_with(failures, &mut rand::rng())
    }

    fn delay_after_with(&self, failures: u32, rng: &mut impl Rng) -> Duration {
        let d = self.min.saturating_mul(1 << failures.min(20)).min(self.max);
        d.mul_f64(rng.random_range(0.5..=1.0))
    }

    /// After a success: the next failure waits `min` again.
    pub fn reset(&mut self) {
        self.failures = 0;
    }
}

/// Lets through a few log lines per window, then counts what it held back.
#[derive(Debug)]
pub struct LogLimiter {
    per_window: u32,
    window: Duration,
    started: Instant,
    seen: u32,
}

impl LogLimiter {
    pub fn new(per_window: u32, window: Duration) -> Self {
        LogLimiter {
            per_window,
            window,
            started: Instant::now(),
            seen: 0,
        }
    }

    /// `Some(suppressed)` when this line may be logged, with how many were
    /// suppressed since the last one that was.
    pub fn allow(&mut self) -> Option<u32> {
        if self.started.elapsed() >= self.window {
            let suppressed = self.seen.saturating_sub(self.per_window);
            self.started = Instant::now();
            self.seen = 1;
            return Some(suppressed);
        }
        self.seen += 1;
        (self.seen <= self.per_window).then_some(0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::rngs::SmallRng;
    use rand::SeedableRng;

    #[test]
    fn grows_with_jitter_up_to_max() {
        let mut b = Backoff::new(Duration::from_millis(100), Duration::from_secs(1));
        let d: Vec<_> = (0..6).map(|_| b.next_delay()).collect();
        assert!(d[0] >= Duration::from_millis(50) && d[0] <= Duration::from_millis(100));
        assert!(d[5] >= Duration::from_millis(500) && d[5] <= Duration::from_secs(1));
        b.reset();
        assert!(b.next_delay() <= Duration::from_millis(100));
    }

    #[test]
    fn grows_with_jitter_caps_and_resets() {
        let mut rng = SmallRng::seed_from_u64(1);
        let mut b = Backoff::new(Duration::from_millis(100), Duration::from_secs(10));
        let bounds = [100, 200, 400, 800, 1_600, 3_200, 6_400, 10_000, 10_000];
        for hi in bounds {
            let d = b.next_delay_with(&mut rng);
            let hi = Duration::from_millis(hi);
            assert!(
                d >= hi / 2 && d <= hi,
                "{d:?} outside [{:?}, {hi:?}]",
                hi / 2
            );
        }
        for _ in 0..100 {
            assert!(b.next_delay_with(&mut rng) <= Duration::from_secs(10));
        }
        b.reset();
        assert!(b.next_delay_with(&mut rng) <= Duration::from_millis(100));
    }

    #[test]
    fn jitter_spreads_retries() {
        let mut rng = SmallRng::seed_from_u64(2);
        let delays: std::collections::HashSet<Duration> = (0..50)
            .map(|_| {
                Backoff::new(Duration::from_secs(1), Duration::from_secs(1))
                    .next_delay_with(&mut rng)
            })
            .collect();
        assert!(delays.len() > 40);
    }

    #[test]
    fn limiter_holds_back_a_flood() {
        let mut l = LogLimiter::new(3, Duration::from_secs(60));
        let allowed = (0..100).filter(|_| l.allow().is_some()).count();
        assert_eq!(allowed, 3);
    }
}
