//! Movement of one simulated vehicle, with no clock and no I/O: the caller
//! says how much time passed and hands in the random source.
//!
//! A vehicle drives from one random waypoint to the next inside a circle
//! ([`Area`]). Its heading turns towards the waypoint at a bounded rate (no
//! jumps), it slows down for sharp turns and speeds up on straights, always
//! between [`MIN_SPEED`] and [`MAX_SPEED`]. Positions are kept in metres on a
//! local flat projection around the centre (good to well under a metre at
//! city scale) and turned into latitude/longitude only for a [`Fix`].

use rand::Rng;

/// Slowest a moving vehicle goes, m/s.
pub const MIN_SPEED: f64 = 5.0;
/// Fastest, m/s (90 km/h).
pub const MAX_SPEED: f64 = 25.0;
/// Steering limit, degrees per second.
const TURN_RATE: f64 = 25.0;
/// Acceleration and braking limit, m/s².
const ACCEL: f64 = 2.0;
/// Longest integration step, seconds: long gaps are walked in small steps so
/// curves stay curves.
const MAX_STEP: f64 = 0.5;
/// Mean Earth radius, metres.
const EARTH_RADIUS: f64 = 6_371_008.8;

/// A point on the globe, degrees.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LatLon {
    pub lat: f64,
    pub lon: f64,
}

/// Where the routes are: a circle around `center`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Area {
    pub center: LatLon,
    pub radius_m: f64,
}

impl Area {
    /// Metres east/north of the centre to latitude/longitude.
    fn to_lat_lon(self, x: f64, y: f64) -> LatLon {
        let lat0 = self.center.lat.to_radians();
        LatLon {
            lat: (self.center.lat + (y / EARTH_RADIUS).to_degrees()).clamp(-90.0, 90.0),
            lon: wrap_lon(
                self.center.lon + (x / (EARTH_RADIUS * lat0.cos().max(1e-6))).to_degrees(),
            ),
        }
    }

    /// Waypoints keep clear of the edge by about two turning circles, so a
    /// vehicle that overshoots a waypoint on a curve stays inside.
    fn waypoint_radius(self) -> f64 {
        let margin = 2.0 * MAX_SPEED / TURN_RATE.to_radians() + 20.0;
        if self.radius_m > 3.0 * margin {
            self.radius_m - margin
        } else {
            self.radius_m * 0.6
        }
    }

    /// A uniformly distributed point in the waypoint disc.
    fn random_point(self, rng: &mut impl Rng) -> (f64, f64) {
        let r = self.waypoint_radius() * rng.random::<f64>().sqrt();
        let a = rng.random_range(0.0..std::f64::consts::TAU);
        (r * a.cos(), r * a.sin())
    }
}

/// One position report, ready for a location payload.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Fix {
    pub lat: f64,
    pub lon: f64,
    /// m/s, within [`MIN_SPEED`]..=[`MAX_SPEED`].
    pub speed: f64,
    /// Degrees clockwise from north, in `0.0..360.0`.
    pub heading: f64,
    /// Horizontal accuracy, metres.
    pub accuracy: f64,
    /// Altitude, metres.
    pub alt: f64,
}

/// The state of one vehicle.
#[derive(Debug, Clone)]
pub struct Route {
    area: Area,
    /// Metres east and north of the centre.
    x: f64,
    y: f64,
    heading: f64,
    speed: f64,
    /// The speed the driver wants on this leg.
    cruise: f64,
    waypoint: (f64, f64),
    /// Distance driven, metres; altitude varies along it.
    odometer: f64,
    alt_base: f64,
    accuracy: f64,
}

impl Route {
    /// A vehicle at a random place in `area`, already heading for its first
    /// waypoint.
    pub fn new(area: Area, rng: &mut impl Rng) -> Self {
        let (x, y) = area.random_point(rng);
        let waypoint = area.random_point(rng);
        let cruise = rng.random_range(MIN_SPEED..=MAX_SPEED);
        Route {
            area,
            x,
            y,
            heading: bearing(x, y, waypoint),
            speed: rng.random_range(MIN_SPEED..=cruise),
            cruise,
            waypoint,
            odometer: rng.random_range(0.0..10_000.0),
            alt_base: rng.random_range(10.0..60.0),
            accuracy: rng.random_range(3.0..8.0),
        }
    }

    /// Drives on for `dt` seconds (negative or non-finite counts as zero).
    pub fn advance(&mut self, dt: f64, rng: &mut impl Rng) {
        let mut left = if dt.is_finite() { dt.max(0.0) } else { 0.0 };
        while left > 0.0 {
            let step = left.min(MAX_STEP);
            self.step(step, rng);
            left -= step;
        }
        // GPS quality wanders between good and mediocre.
        self.accuracy = (self.accuracy + rng.random_range(-1.0..1.0)).clamp(2.0, 25.0);
    }

    fn step(&mut self, dt: f64, rng: &mut impl Rng) {
        let turn_radius = self.speed / TURN_RATE.to_radians();
        let arrive = 2.5 * turn_radius + 10.0;
        if (self.waypoint.0 - self.x).hypot(self.waypoint.1 - self.y) < arrive {
            self.waypoint = self.area.random_point(rng);
            self.cruise = rng.random_range(MIN_SPEED..=MAX_SPEED);
        }
        let error = signed_angle(bearing(self.x, self.y, self.waypoint) - self.heading);
        let max_turn = TURN_RATE * dt;
        self.heading = normalize_heading(self.heading + error.clamp(-max_turn, max_turn));

        // Slow down for a sharp turn, as a driver would at a junction.
        let want = MIN_SPEED + (self.cruise - MIN_SPEED) * (1.0 - error.abs() / 90.0).max(0.0);
        let dv = (want - self.speed).clamp(-ACCEL * dt, ACCEL * dt);
        self.speed = (self.speed + dv).clamp(MIN_SPEED, MAX_SPEED);

        let d = self.speed * dt;
        let h = self.heading.to_radians();
        self.x += d * h.sin();
        self.y += d * h.cos();
        self.odometer += d;
        // Never leave the area, whatever the steering did.
        let r = self.x.hypot(self.y);
        if r > self.area.radius_m {
            let k = self.area.radius_m / r;
            self.x *= k;
            self.y *= k;
        }
    }

    /// Where the vehicle is now.
    pub fn fix(&self) -> Fix {
        let p = self.area.to_lat_lon(self.x, self.y);
        let hills = 8.0 * (self.odometer / 900.0).sin() + 3.0 * (self.odometer / 230.0).sin();
        Fix {
            lat: p.lat,
            lon: p.lon,
            speed: self.speed,
            heading: self.heading,
            accuracy: self.accuracy,
            alt: self.alt_base + hills,
        }
    }
}

/// Compass bearing from (x, y) to `to`, degrees in `0.0..360.0`.
fn bearing(x: f64, y: f64, to: (f64, f64)) -> f64 {
    normalize_heading((to.0 - x).atan2(to.1 - y).to_degrees())
}

/// An angle folded into `0.0..360.0`.
pub fn normalize_heading(deg: f64) -> f64 {
    let h = deg.rem_euclid(360.0);
    // rem_euclid of a tiny negative number rounds up to exactly 360.0.
    if h >= 360.0 || !h.is_finite() {
        0.0
    } else {
        h
    }
}

/// An angle folded into `-180.0..=180.0`.
fn signed_angle(deg: f64) -> f64 {
    let a = normalize_heading(deg);
    if a > 180.0 {
        a - 360.0
    } else {
        a
    }
}

fn wrap_lon(lon: f64) -> f64 {
    (lon + 180.0).rem_euclid(360.0) - 180.0
}

/// Great-circle distance in metres (for tests and sanity checks).
pub fn haversine_m(a: LatLon, b: LatLon) -> f64 {
    let (p1, p2) = (a.lat.to_radians(), b.lat.to_radians());
    let dp = p2 - p1;
    let dl = (b.lon - a.lon).to_radians();
    let h = (dp / 2.0).sin().powi(2) + p1.cos() * p2.cos() * (dl / 2.0).sin().powi(2);
    2.0 * EARTH_RADIUS * h.sqrt().asin()
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::rngs::SmallRng;
    use rand::SeedableRng;

    const LONDON: LatLon = LatLon {
        lat: 51.5074,
        lon: -0.1278,
    };

    fn area(radius_m: f64) -> Area {
        Area {
            center: LONDON,
            radius_m,
        }
    }

    /// Drives `n` vehicles for `seconds` in steps of `dt`, checking `check`
    /// on every consecutive pair of fixes.
    fn drive(area: Area, n: u64, seconds: f64, dt: f64, mut check: impl FnMut(&Fix, &Fix)) {
        for seed in 0..n {
            let mut rng = SmallRng::seed_from_u64(seed);
            let mut route = Route::new(area, &mut rng);
            let mut prev = route.fix();
            let mut t = 0.0;
            while t < seconds {
                route.advance(dt, &mut rng);
                let fix = route.fix();
                check(&prev, &fix);
                prev = fix;
                t += dt;
            }
        }
    }

    #[test]
    fn stays_within_the_radius() {
        for (radius, dt) in [(10_000.0, 1.0), (2_000.0, 0.5), (300.0, 1.0), (50.0, 3.0)] {
            drive(area(radius), 20, 3_600.0, dt, |_, fix| {
                let d = haversine_m(
                    LONDON,
                    LatLon {
                        lat: fix.lat,
                        lon: fix.lon,
                    },
                );
                // The flat projection is off from haversine by far less than 0.1%.
                assert!(
                    d <= radius * 1.001 + 0.01,
                    "{d} m from the centre, radius {radius}"
                );
            });
        }
    }

    #[test]
    fn speed_and_heading_stay_in_bounds_and_heading_turns_smoothly() {
        drive(area(10_000.0), 20, 3_600.0, 1.0, |prev, fix| {
            assert!(
                (MIN_SPEED..=MAX_SPEED).contains(&fix.speed),
                "speed {}",
                fix.speed
            );
            assert!(
                (0.0..360.0).contains(&fix.heading),
                "heading {}",
                fix.heading
            );
            assert!(
                (2.0..=25.0).contains(&fix.accuracy),
                "accuracy {}",
                fix.accuracy
            );
            let turn = signed_angle(fix.heading - prev.heading).abs();
            assert!(
                turn <= TURN_RATE + 1e-9,
                "turned {turn} degrees in one second"
            );
            assert!((fix.speed - prev.speed).abs() <= ACCEL + 1e-9);
        });
    }

    #[test]
    fn moves_about_as_far_as_its_speed_says() {
        drive(area(10_000.0), 5, 600.0, 1.0, |prev, fix| {
            let moved = haversine_m(
                LatLon {
                    lat: prev.lat,
                    lon: prev.lon,
                },
                LatLon {
                    lat: fix.lat,
                    lon: fix.lon,
                },
            );
            assert!(moved <= MAX_SPEED * 1.01, "jumped {moved} m in one second");
            assert!(moved >= MIN_SPEED * 0.5, "crawled {moved} m in one second");
        });
    }

    #[test]
    fn visits_more_than_one_waypoint() {
        let mut rng = SmallRng::seed_from_u64(7);
        let mut route = Route::new(area(2_000.0), &mut rng);
        let first = route.waypoint;
        route.advance(3_600.0, &mut rng);
        assert_ne!(route.waypoint, first);
    }

    #[test]
    fn same_seed_same_route() {
        let run = || {
            let mut rng = SmallRng::seed_from_u64(42);
            let mut route = Route::new(area(5_000.0), &mut rng);
            route.advance(120.0, &mut rng);
            route.fix()
        };
        assert_eq!(run(), run());
    }

    #[test]
    fn headings_fold_into_range() {
        assert_eq!(normalize_heading(-1e-18), 0.0);
        assert_eq!(normalize_heading(360.0), 0.0);
        assert_eq!(normalize_heading(-90.0), 270.0);
        assert_eq!(normalize_heading(f64::NAN), 0.0);
        assert_eq!(signed_angle(270.0), -90.0);
        assert_eq!(wrap_lon(181.0), -179.0);
    }
}
