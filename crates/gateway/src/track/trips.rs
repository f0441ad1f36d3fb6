//! Trips and stops from a stream of fixes, oldest first (issue #16;
//! README, "Trips, stops and the summary report"). No I/O: the HTTP
//! handlers feed it rows as they come out of a portal, so its memory is
//! constant however long the window (a few fixes of state, plus the
//! segments it hands back).
//!
//! The rules, with the defaults of [`Rules::default`]:
//!
//! - The device is *still* while its fixes stay within `stop_radius_m` of
//!   the fix where it came to rest (the anchor); a fix outside the radius
//!   is motion and becomes the next anchor. A radius, not a speed, decides
//!   it, so GPS jitter while parked and fixes without `speed` both work.
//! - A still spell that lasts at least `min_stop_ms` is a **stop**, from
//!   the anchor's time (arrival) to the last fix before the device moved
//!   off (departure). A shorter one (a traffic light, a queue) is part of
//!   the trip around it.
//! - A **trip** runs from the departure of one stop to the arrival of the
//!   next; it is reported when it lasts at least `min_trip_ms` *or* covers
//!   at least `min_trip_m`, else it is dropped (a car moved across a yard).
//! - A gap between two fixes longer than `max_gap_ms` ends the trip at the
//!   last fix before it. A device found within the radius after the gap
//!   was parked (trackers sleep with the ignition off): the gap counts as
//!   stop time. Found elsewhere, where it went is unknown: the stop before
//!   ends at the last fix, and nothing is made of the gap.
//! - The window's edges cut: a stop or trip still open at the end closes
//!   at the last fix, one open at the start begins at the first.
//!
//! Distances are great-circle metres between consecutive fixes; speeds are
//! m/s, the fix's own `speed` when it has one, else distance over time.

use fieldcast_core::Location;
use fieldcast_geofence::geometry::distance_m;
use serde::Serialize;

/// The thresholds; every one a query parameter of `/trips` and `/stops`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Rules {
    /// A trip shorter than this *and* than `min_trip_m` is dropped.
    pub min_trip_ms: i64,
    pub min_trip_m: f64,
    /// Still for at least this long is a stop (shorter: a halt in a trip).
    pub min_stop_ms: i64,
    /// Fixes further apart than this end a trip.
    pub max_gap_ms: i64,
    /// Fixes within this of where the device came to rest are "still".
    pub stop_radius_m: f64,
}

impl Default for Rules {
    fn default() -> Self {
        Rules {
            min_trip_ms: 60_000,
            min_trip_m: 500.0,
            min_stop_ms: 300_000,
            max_gap_ms: 600_000,
            stop_radius_m: 50.0,
        }
    }
}

/// Where and when, as the API writes a trip's ends.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Fix {
    pub ts: i64,
    pub lat: f64,
    pub lon: f64,
}

impl From<&Location> for Fix {
    fn from(l: &Location) -> Self {
        Fix {
            ts: l.ts,
            lat: l.lat,
            lon: l.lon,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Trip {
    pub start: Fix,
    pub end: Fix,
    pub distance_m: f64,
    pub duration_ms: i64,
    /// m/s.
    pub max_speed: f64,
    /// m/s: `distance_m` over the duration (0 for a zero duration).
    pub avg_speed: f64,
}

#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Stop {
    pub ts_arrival: i64,
    pub ts_departure: i64,
    pub lat: f64,
    pub lon: f64,
    pub duration_ms: i64,
}

/// What the detector found, in time order.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Segment {
    Trip(Trip),
    Stop(Stop),
}

/// An open trip's running totals.
#[derive(Debug, Clone, Copy)]
struct OpenTrip {
    start: Fix,
    distance_m: f64,
    max_speed: f64,
}

/// The trip and stop detector: [`Detector::push`] each fix, oldest first,
/// then [`Detector::finish`].
#[derive(Debug)]
pub struct Detector {
    rules: Rules,
    prev: Option<Fix>,
    /// Where the current still spell began.
    anchor: Option<Fix>,
    /// The current spell has lasted `min_stop_ms`: it is a stop.
    stopped: bool,
    trip: Option<OpenTrip>,
    /// Distance and top speed inside the current still spell: added to the
    /// trip if the spell turns out to be a halt, dropped if it is a stop.
    spell_m: f64,
    spell_max: f64,
}

fn speed(prev: Fix, p: &Location, d: f64) -> f64 {
    match p.speed {
        Some(s) if s.is_finite() => s,
        _ if p.ts > prev.ts => d * 1000.0 / (p.ts - prev.ts) as f64,
        _ => 0.0,
    }
}

fn dist(a: Fix, b: Fix) -> f64 {
    distance_m([a.lon, a.lat], [b.lon, b.lat])
}

impl Detector {
    pub fn new(rules: Rules) -> Self {
        Detector {
            rules,
            prev: None,
            anchor: None,
            stopped: false,
            trip: None,
            spell_m: 0.0,
            spell_max: 0.0,
        }
    }

    /// Feeds one fix (not older than the one before); whatever it
    /// completes goes to `out`.
    pub fn push(&mut self, p: &Location, out: &mut Vec<Segment>) {
        let fix = Fix::from(p);
        let (Some(prev), Some(anchor)) = (self.prev, self.anchor) else {
            self.prev = Some(fix);
            self.anchor = Some(fix);
            return;
        };
        let step = dist(prev, fix);
        let near = dist(anchor, fix) <= self.rules.stop_radius_m;
        if fix.ts - prev.ts > self.rules.max_gap_ms {
            if near {
                // Parked while the tracker slept: the trip ended on arrival.
                self.close_trip(anchor, out);
            } else {
                self.close_trip_at_prev(prev, out);
                self.close_stop(prev, out);
                self.restart(fix);
                return;
            }
        }
        if near {
            self.spell_m += step;
            self.spell_max = self.spell_max.max(speed(prev, p, step));
            if !self.stopped && fix.ts - anchor.ts >= self.rules.min_stop_ms {
                self.stopped = true;
                self.close_trip(anchor, out);
            }
        } else {
            // After a stop the trip leaves from its last fix; after a halt
            // that was none (or at the window's start) it began at the
            // spell's first, and the spell's crawl is part of it.
            let start = if self.stopped { prev } else { anchor };
            self.close_stop(prev, out);
            let t = self.trip.get_or_insert(OpenTrip {
                start,
                distance_m: 0.0,
                max_speed: 0.0,
            });
            t.distance_m += self.spell_m + step;
            t.max_speed = t.max_speed.max(self.spell_max).max(speed(prev, p, step));
            self.anchor = Some(fix);
            self.stopped = false;
            self.spell_m = 0.0;
            self.spell_max = 0.0;
        }
        self.prev = Some(fix);
    }

    /// Closes whatever is open at the last fix.
    pub fn finish(mut self, out: &mut Vec<Segment>) {
        let (Some(prev), Some(anchor)) = (self.prev, self.anchor) else {
            return;
        };
        if self.stopped || prev.ts - anchor.ts >= self.rules.min_stop_ms {
            self.close_trip(anchor, out);
            self.stopped = true;
            self.close_stop(prev, out);
        } else {
            self.close_trip_at_prev(prev, out);
        }
    }

    /// After a jump across a gap: nothing open, resting at `fix`.
    fn restart(&mut self, fix: Fix) {
        self.prev = Some(fix);
        self.anchor = Some(fix);
        self.stopped = false;
        self.trip = None;
        self.spell_m = 0.0;
        self.spell_max = 0.0;
    }

    /// Ends the open trip on arrival at `end` (the spell's anchor: the
    /// spell's own crawl is not part of it).
    fn close_trip(&mut self, end: Fix, out: &mut Vec<Segment>) {
        if let Some(t) = self.trip.take() {
            self.emit_trip(t, end, out);
        }
    }

    /// Ends the open trip at the last fix, the current spell included.
    fn close_trip_at_prev(&mut self, end: Fix, out: &mut Vec<Segment>) {
        if let Some(mut t) = self.trip.take() {
            t.distance_m += self.spell_m;
            t.max_speed = t.max_speed.max(self.spell_max);
            self.emit_trip(t, end, out);
        }
    }

    fn emit_trip(&self, t: OpenTrip, end: Fix, out: &mut Vec<Segment>) {
        let duration_ms = end.ts - t.start.ts;
        if duration_ms < self.rules.min_trip_ms && t.distance_m < self.rules.min_trip_m {
            return;
        }
        let avg_speed = if duration_ms > 0 {
            t.distance_m * 1000.0 / duration_ms as f64
        } else {
            0.0
        };
        out.push(Segment::Trip(Trip {
            start: t.start,
            end,
            distance_m: t.distance_m,
            duration_ms,
            max_speed: t.max_speed,
            avg_speed,
        }));
    }

    /// The spell ends with `departure` as its last fix: a stop if it was
    /// one. Either way its crawl is settled here or by the trip.
    fn close_stop(&mut self, departure: Fix, out: &mut Vec<Segment>) {
        let Some(anchor) = self.anchor else { return };
        if self.stopped {
            out.push(Segment::Stop(Stop {
                ts_arrival: anchor.ts,
                ts_departure: departure.ts,
                lat: anchor.lat,
                lon: anchor.lon,
                duration_ms: departure.ts - anchor.ts,
            }));
            self.spell_m = 0.0;
            self.spell_max = 0.0;
            self.stopped = false;
        }
    }
}

/// Every segment of `fixes` (a convenience for tests and small inputs).
pub fn detect<'a>(rules: Rules, fixes: impl IntoIterator<Item = &'a Location>) -> Vec<Segment> {
    let mut d = Detector::new(rules);
    let mut out = Vec::new();
    for p in fixes {
        d.push(p, &mut out);
    }
    d.finish(&mut out);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Metres per degree of latitude on the mean sphere.
    const M_PER_DEG: f64 = 111_195.08;
    const T0: i64 = 1_763_800_000_000;

    /// Builds a 1 Hz track northwards along a meridian, in metres from a
    /// start point, without reported speed (derived from the fixes).
    struct Track {
        ts: i64,
        y: f64,
        fixes: Vec<Location>,
    }

    impl Track {
        fn new() -> Self {
            let mut t = Track {
                ts: T0,
                y: 0.0,
                fixes: Vec::new(),
            };
            t.fix();
            t
        }
        fn fix(&mut self) {
            self.fixes
                .push(Location::point(self.ts, 48.0 + self.y / M_PER_DEG, 11.0));
        }
        /// `secs` seconds at `mps` m/s.
        fn drive(&mut self, secs: i64, mps: f64) -> &mut Self {
            for _ in 0..secs {
                self.ts += 1000;
                self.y += mps;
                self.fix();
            }
            self
        }
        /// `secs` seconds still, with ±5 m of jitter.
        fn wait(&mut self, secs: i64) -> &mut Self {
            for i in 0..secs {
                self.ts += 1000;
                let j = if i % 2 == 0 { 5.0 } else { -5.0 };
                self.fixes.push(Location {
                    ts: self.ts,
                    lat: 48.0 + (self.y + j) / M_PER_DEG,
                    lon: 11.0,
                    alt: None,
                    speed: Some(0.0),
                    heading: None,
                    accuracy: None,
                });
            }
            self
        }
        /// Nothing for `secs`, then one fix `metres` further on.
        fn silent(&mut self, secs: i64, metres: f64) -> &mut Self {
            self.ts += secs * 1000;
            self.y += metres;
            self.fix();
            self
        }
        fn segments(&self) -> Vec<Segment> {
            detect(Rules::default(), &self.fixes)
        }
    }

    fn trips(s: &[Segment]) -> Vec<Trip> {
        s.iter()
            .filter_map(|s| match s {
                Segment::Trip(t) => Some(*t),
                _ => None,
            })
            .collect()
    }

    fn stops(s: &[Segment]) -> Vec<Stop> {
        s.iter()
            .filter_map(|s| match s {
                Segment::Stop(t) => Some(*t),
                _ => None,
            })
            .collect()
    }

    #[test]
    fn a_drive_is_one_trip_with_its_distance_and_speeds() {
        let s = Track::new().drive(600, 12.0).drive(60, 24.0).segments();
        assert_eq!(stops(&s), vec![]);
        let t = trips(&s);
        assert_eq!(t.len(), 1, "{s:?}");
        assert_eq!(t[0].start.ts, T0);
        assert_eq!(t[0].end.ts, T0 + 660_000);
        assert_eq!(t[0].duration_ms, 660_000);
        assert!(
            (t[0].distance_m - 8640.0).abs() < 1.0,
            "{}",
            t[0].distance_m
        );
        assert!((t[0].max_speed - 24.0).abs() < 0.01, "{}", t[0].max_speed);
        assert!((t[0].avg_speed - 8640.0 / 660.0).abs() < 0.01);
    }

    #[test]
    fn a_traffic_light_is_no_stop() {
        let s = Track::new()
            .drive(300, 12.0)
            .wait(90)
            .drive(300, 12.0)
            .segments();
        assert_eq!(stops(&s), vec![], "{s:?}");
        let t = trips(&s);
        assert_eq!(t.len(), 1, "{s:?}");
        assert_eq!(t[0].start.ts, T0);
        assert_eq!(t[0].duration_ms, 690_000);
        // The jitter at the light (±5 m, 90 times) counts as crawl.
        assert!(
            t[0].distance_m > 7200.0 && t[0].distance_m < 8200.0,
            "{t:?}"
        );
    }

    #[test]
    fn a_parking_splits_two_trips_and_is_a_stop() {
        let s = Track::new()
            .drive(300, 12.0)
            .wait(1800)
            .drive(300, 12.0)
            .segments();
        let t = trips(&s);
        let st = stops(&s);
        assert_eq!((t.len(), st.len()), (2, 1), "{s:?}");
        let arrival = T0 + 300_000;
        assert_eq!(st[0].ts_arrival, arrival);
        assert_eq!((st[0].lat, st[0].lon), (t[0].end.lat, t[0].end.lon));
        // The first fixes of the drive off are still within the radius.
        let late = st[0].ts_departure - (arrival + 1_800_000);
        assert!((0..=5000).contains(&late), "{st:?}");
        assert_eq!(st[0].duration_ms, st[0].ts_departure - arrival);
        assert_eq!(t[0].end.ts, arrival);
        assert_eq!(t[1].start.ts, st[0].ts_departure);
        // The parked jitter belongs to neither trip.
        assert!(
            (t[0].distance_m - 3600.0).abs() < 1.0,
            "{}",
            t[0].distance_m
        );
        assert!(
            (t[1].distance_m - 3552.0).abs() < 1.0,
            "{}",
            t[1].distance_m
        );
        assert!(matches!(s[0], Segment::Trip(_)) && matches!(s[1], Segment::Stop(_)));
    }

    #[test]
    fn a_gap_ends_the_trip_and_a_jump_across_it_is_no_trip() {
        let s = Track::new()
            .drive(300, 12.0)
            .silent(1200, 20_000.0)
            .drive(300, 12.0)
            .segments();
        let t = trips(&s);
        assert_eq!(stops(&s), vec![], "{s:?}");
        assert_eq!(t.len(), 2, "{s:?}");
        assert_eq!(t[0].end.ts, T0 + 300_000);
        assert!((t[0].distance_m - 3600.0).abs() < 1.0);
        assert_eq!(t[1].start.ts, T0 + 1_500_000);
        assert!((t[1].distance_m - 3600.0).abs() < 1.0);
    }

    #[test]
    fn a_tracker_asleep_in_place_is_a_stop() {
        let s = Track::new()
            .drive(300, 12.0)
            .silent(3600, 0.0)
            .drive(300, 12.0)
            .segments();
        let st = stops(&s);
        assert_eq!(st.len(), 1, "{s:?}");
        assert_eq!(st[0].ts_arrival, T0 + 300_000);
        assert!(
            (3_600_000..3_606_000).contains(&st[0].duration_ms),
            "{st:?}"
        );
        assert_eq!(trips(&s).len(), 2);
    }

    #[test]
    fn short_moves_are_dropped_and_thresholds_apply() {
        // 30 s at 6 m/s: 180 m in 30 s, under both minimums.
        let mut tr = Track::new();
        tr.wait(600).drive(30, 6.0).wait(600);
        assert_eq!(trips(&tr.segments()), vec![]);
        assert_eq!(stops(&tr.segments()).len(), 2);
        let lax = Rules {
            min_trip_ms: 10_000,
            ..Rules::default()
        };
        assert_eq!(trips(&detect(lax, &tr.fixes)).len(), 1);
        let strict = Rules {
            min_stop_ms: 3_600_000,
            ..Rules::default()
        };
        assert_eq!(stops(&detect(strict, &tr.fixes)), vec![]);
    }

    #[test]
    fn empty_and_single_fix_give_nothing() {
        assert_eq!(detect(Rules::default(), &[]), vec![]);
        assert_eq!(Track::new().segments(), vec![]);
    }
}
