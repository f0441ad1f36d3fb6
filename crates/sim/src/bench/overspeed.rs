//! Overspeed bursts (`--overspeed-every`): a known number of `overspeed`
//! episodes per run, for measuring alert latency (docs/alerts.md).
//!
//! The routes drive at 5–25 m/s ([`crate::route`]), so how often a route
//! crosses a limit depends on the seed and the limit (at 20 m/s: about one
//! episode per device every two minutes). With bursts, every device reports
//! `speed` [`BURST_SPEED`] on [`BURST_FIXES`] consecutive locations once
//! per period, and its route's own speed otherwise; only the reported speed
//! changes, the position moves as the route drives. An overspeed rule whose
//! limit lies between [`MAX_SPEED`] and [`BURST_SPEED`] (30 m/s, `for`
//! 1 ms) then trips exactly once per burst, on the burst's second location
//! (the first starts the episode, the second is at least 1 ms later): the
//! alert's `ts` is that location's, i.e. its send time. The route's next
//! location ends the episode. The third burst location still trips one
//! should the first be coalesced away in the bridge's live lane.
//!
//! Device `d` bursts at its locations `k` with `(k + d) mod n < 3` (`n`
//! locations per period), so the fleet's bursts are spread over the period
//! rather than all at once.

use std::time::Duration;

use crate::route::MAX_SPEED;

/// The speed reported in a burst, m/s (126 km/h): above anything a route
/// drives.
pub const BURST_SPEED: f64 = 35.0;
// With room for a limit between the two (the documented 30 m/s).
const _: () = assert!(BURST_SPEED >= MAX_SPEED + 10.0);
/// Consecutive locations of one burst.
pub const BURST_FIXES: u64 = 3;

/// When each device bursts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Bursts {
    /// Locations of one device per period, more than [`BURST_FIXES`].
    every: u64,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error(
    "--overspeed-every {every:?} holds {locations} locations at this --rate; a burst needs at least {}",
    BURST_FIXES + 1
)]
pub struct BurstsError {
    every: Duration,
    locations: u64,
}

impl Bursts {
    /// One burst per device every `every`, for devices sending a location
    /// every `period`.
    pub fn new(every: Duration, period: Duration) -> Result<Bursts, BurstsError> {
        let locations = (every.as_secs_f64() / period.as_secs_f64().max(1e-9)).round();
        // Saturating cast: any huge value is a valid (rare) burst.
        let locations = locations as u64;
        if locations <= BURST_FIXES {
            return Err(BurstsError { every, locations });
        }
        Ok(Bursts { every: locations })
    }

    /// The speed device `d` reports in its location `k` (counted from 0):
    /// [`BURST_SPEED`] in a burst, else `None` (the route's own).
    pub fn speed(&self, d: usize, k: u64) -> Option<f64> {
        (self.position(d, k) < BURST_FIXES).then_some(BURST_SPEED)
    }

    /// Whether location `k` of device `d` is the one that trips a rule with
    /// `for` 1 ms: the second of its burst.
    pub fn trips(&self, d: usize, k: u64) -> bool {
        self.position(d, k) == 1
    }

    fn position(&self, d: usize, k: u64) -> u64 {
        (k % self.every + d as u64 % self.every) % self.every
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const HALF_SECOND: Duration = Duration::from_millis(500);

    #[test]
    fn one_burst_of_three_per_period_tripping_on_the_second() {
        // 2 locations/s, a burst every 5 s: 10 locations per period.
        let b = Bursts::new(Duration::from_secs(5), HALF_SECOND).unwrap();
        for d in [0, 1, 7, 123] {
            let fast = |k: u64| b.speed(d, k).is_some();
            // Over three whole periods: three bursts of three consecutive
            // locations, each tripping on its second.
            let from = 10;
            let starts: Vec<u64> = (from..from + 30)
                .filter(|&k| fast(k) && !fast(k - 1))
                .collect();
            assert_eq!(starts.len(), 3, "device {d}: {starts:?}");
            for &k in &starts {
                assert!(
                    fast(k + 1) && fast(k + 2) && !fast(k + 3),
                    "device {d} at {k}"
                );
                assert!(!b.trips(d, k) && b.trips(d, k + 1) && !b.trips(d, k + 2));
            }
            assert_eq!((from..from + 30).filter(|&k| fast(k)).count(), 9);
            assert_eq!((from..from + 30).filter(|&k| b.trips(d, k)).count(), 3);
        }
        // Devices burst at different locations of the period.
        assert_eq!(b.speed(0, 0), Some(BURST_SPEED));
        assert_eq!(b.speed(5, 0), None);
    }

    #[test]
    fn a_period_must_hold_a_burst_and_the_location_after_it() {
        assert!(Bursts::new(Duration::from_secs(2), HALF_SECOND).is_ok());
        let err = Bursts::new(Duration::from_millis(1500), HALF_SECOND);
        assert_eq!(err.map_err(|e| e.locations), Err(3));
    }
}
