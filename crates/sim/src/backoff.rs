//! Exponential backoff with jitter for reconnecting to the broker.
//!
//! rumqttc's event loop retries a lost connection on the very next `poll`,
//! in a tight loop; callers sleep [`Backoff::next_delay`] between failed
//! polls. The jitter ("equal jitter": half fixed, half random) keeps
//! thousands of simulated devices from reconnecting in lock step.

use std::time::Duration;

use rand::Rng;

/// Delay grows `initial`, `2·initial`, ... up to `max`, each one jittered.
#[derive(Debug, Clone)]
pub struct Backoff {
    initial: Duration,
    max: Duration,
    failures: u32,
}

impl Backoff {
    pub fn new(initial: Duration, max: Duration) -> Self {
        Backoff {
            initial,
            max: max.max(initial),
            failures: 0,
        }
    }

    /// The delay after one more failure: uniformly in `[d/2, d]`, where `d`
    /// doubles with each consecutive failure up to `max`.
    pub fn next_delay(&mut self, rng: &mut impl Rng) -> Duration {
        let exp = self.failures.min(20);
        self.failures = self.failures.saturating_add(1);
        let d = self.initial.saturating_mul(1 << exp).min(self.max);
        d.mul_f64(rng.random_range(0.5..=1.0))
    }

    /// After a successful connection.
    pub fn reset(&mut self) {
        self.failures = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::rngs::SmallRng;
    use rand::SeedableRng;

    #[test]
    fn grows_with_jitter_caps_and_resets() {
        let mut rng = SmallRng::seed_from_u64(1);
        let mut b = Backoff::new(Duration::from_millis(100), Duration::from_secs(10));
        let bounds = [100, 200, 400, 800, 1_600, 3_200, 6_400, 10_000, 10_000];
        for hi in bounds {
            let d = b.next_delay(&mut rng);
            let hi = Duration::from_millis(hi);
            assert!(
                d >= hi / 2 && d <= hi,
                "{d:?} outside [{:?}, {hi:?}]",
                hi / 2
            );
        }
        for _ in 0..100 {
            assert!(b.next_delay(&mut rng) <= Duration::from_secs(10));
        }
        b.reset();
        assert!(b.next_delay(&mut rng) <= Duration::from_millis(100));
    }

    #[test]
    fn jitter_spreads_retries() {
        let mut rng = SmallRng::seed_from_u64(2);
        let delays: std::collections::HashSet<Duration> = (0..50)
            .map(|_| {
                Backoff::new(Duration::from_secs(1), Duration::from_secs(1)).next_delay(&mut rng)
            })
            .collect();
        assert!(delays.len() > 40);
    }
}
