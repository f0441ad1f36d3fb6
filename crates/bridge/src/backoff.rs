//! Exponential backoff with jitter, for every retry in the bridge: broker
//! reconnects, Redis batches, PostgreSQL and schema upkeep. Jitter keeps a
//! fleet of bridges (or one bridge's several loops) from retrying in step.

use std::time::Duration;

use rand::Rng;

#[derive(Debug, Clone)]
pub struct Backoff {
    min: Duration,
    max: Duration,
    cur: Duration,
}

impl Backoff {
    pub fn new(min: Duration, max: Duration) -> Self {
        Backoff { min, max, cur: min }
    }

    /// The next delay: uniformly in [cur/2, cur], then cur doubles up to max.
    pub fn next_delay(&mut self) -> Duration {
        let cur = self.cur;
        self.cur = (self.cur * 2).min(self.max);
        let half = cur / 2;
        let jitter = rand::rng().random_range(0..=half.as_millis() as u64);
        half + Duration::from_millis(jitter)
    }

    pub fn reset(&mut self) {
        self.cur = self.min;
    }
}

/// Lets through a few log lines per window, then counts what it held back,
/// so a misbehaving device cannot flood the log.
#[derive(Debug)]
pub struct LogLimiter {
    per_window: u32,
    window: Duration,
    started: std::time::Instant,
    seen: u32,
}

impl LogLimiter {
    pub fn new(per_window: u32, window: Duration) -> Self {
        LogLimiter {
            per_window,
            window,
            started: std::time::Instant::now(),
            seen: 0,
        }
    }

    /// `Some(suppressed)` when this line may be logged, with how many were
    /// suppressed since the last one that was.
    pub fn allow(&mut self) -> Option<u32> {
        if self.started.elapsed() >= self.window {
            let suppressed = self.seen.saturating_sub(self.per_window);
            self.started = std::time::Instant::now();
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
    fn limiter_holds_back_a_flood() {
        let mut l = LogLimiter::new(3, Duration::from_secs(60));
        let allowed = (0..100).filter(|_| l.allow().is_some()).count();
        assert_eq!(allowed, 3);
    }
}
