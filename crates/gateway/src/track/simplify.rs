//! Douglas–Peucker over a stream of fixes, in bounded windows (the track's
//! `simplify=<metres>`, issue #16). No I/O.
//!
//! Douglas–Peucker needs the whole line at once, which for a month of 1 Hz
//! fixes is millions of points. Instead the stream is cut into windows of
//! [`WINDOW`] fixes; each window is simplified on its own, keeping both its
//! ends, and the next window starts at the last one. Memory is one window
//! (about 0.6 MB); the price is one kept point per window boundary that a
//! whole-line pass might have dropped (a few hundred in a month), never a
//! point further than `tolerance` from the output line.
//!
//! Distances are planar, in metres, on an equirectangular projection about
//! each window's first fix: a window spans at most a few hundred km, where
//! that error is far under any useful tolerance.

use fieldcast_core::Location;
use fieldcast_geofence::geometry::EARTH_RADIUS_M;

/// Fixes per window.
pub const WINDOW: usize = 8192;

/// Streaming simplifier: [`Simplifier::push`] fixes, oldest first, then
/// [`Simplifier::finish`]; kept fixes come out in order.
#[derive(Debug)]
pub struct Simplifier {
    tolerance: f64,
    window: Vec<Location>,
    /// Scratch, kept between windows to avoid reallocating.
    keep: Vec<bool>,
    xy: Vec<(f64, f64)>,
    stack: Vec<(usize, usize)>,
}

impl Simplifier {
    /// `tolerance` in metres; 0 keeps every fix.
    pub fn new(tolerance: f64) -> Self {
        Simplifier {
            tolerance: tolerance.max(0.0),
            window: Vec::with_capacity(WINDOW),
            keep: Vec::with_capacity(WINDOW),
            xy: Vec::with_capacity(WINDOW),
            stack: Vec::new(),
        }
    }

    pub fn push(&mut self, p: &Location, out: &mut Vec<Location>) {
        self.window.push(p.clone());
        if self.window.len() >= WINDOW {
            self.flush(out, false);
        }
    }

    pub fn finish(mut self, out: &mut Vec<Location>) {
        self.flush(out, true);
    }

    /// Simplifies the window and emits its kept fixes; unless `last`, the
    /// window's final fix is held back to start the next one.
    fn flush(&mut self, out: &mut Vec<Location>, last: bool) {
        let n = self.window.len();
        if n == 0 {
            return;
        }
        self.mark();
        let end = if last { n } else { n - 1 };
        for i in 0..end {
            if self.keep[i] {
                out.push(self.window[i].clone());
            }
        }
        if last {
            self.window.clear();
        } else {
            // Drains all but the final fix, which starts the next window.
            self.window.drain(..n - 1);
        }
    }

    /// Sets `keep` for the window by Douglas–Peucker (iterative: a month
    /// of a straight road would recurse too deep).
    fn mark(&mut self) {
        let n = self.window.len();
        self.keep.clear();
        self.keep.resize(n, false);
        self.keep[0] = true;
        self.keep[n - 1] = true;
        if n < 3 || self.tolerance == 0.0 {
            self.keep.iter_mut().for_each(|k| *k = true);
            return;
        }
        let (lat0, lon0) = (self.window[0].lat, self.window[0].lon);
        let kx = EARTH_RADIUS_M * lat0.to_radians().cos() * std::f64::consts::PI / 180.0;
        let ky = EARTH_RADIUS_M * std::f64::consts::PI / 180.0;
        self.xy.clear();
        self.xy.extend(self.window.iter().map(|p| {
            let mut dlon = p.lon - lon0;
            if dlon > 180.0 {
                dlon -= 360.0;
            } else if dlon < -180.0 {
                dlon += 360.0;
            }
            (dlon * kx, (p.lat - lat0) * ky)
        }));
        let tol2 = self.tolerance * self.tolerance;
        self.stack.clear();
        self.stack.push((0, n - 1));
        while let Some((a, b)) = self.stack.pop() {
            if b <= a + 1 {
                continue;
            }
            let (mut worst, mut at) = (0.0, a);
            for i in a + 1..b {
                let d = seg_dist2(self.xy[i], self.xy[a], self.xy[b]);
                if d > worst {
                    worst = d;
                    at = i;
                }
            }
            if worst > tol2 {
                self.keep[at] = true;
                self.stack.push((a, at));
                self.stack.push((at, b));
            }
        }
    }
}

/// Squared distance from `p` to the segment `a`-`b` (not the line: a
/// track doubling back on itself keeps its far end).
fn seg_dist2(p: (f64, f64), a: (f64, f64), b: (f64, f64)) -> f64 {
    let (dx, dy) = (b.0 - a.0, b.1 - a.1);
    let len2 = dx * dx + dy * dy;
    let t = if len2 > 0.0 {
        (((p.0 - a.0) * dx + (p.1 - a.1) * dy) / len2).clamp(0.0, 1.0)
    } else {
        0.0
    };
    let (x, y) = (a.0 + t * dx - p.0, a.1 + t * dy - p.1);
    x * x + y * y
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fix(ts: i64, lat: f64, lon: f64) -> Location {
        Location::point(ts, lat, lon)
    }

    fn run(tol: f64, fixes: &[Location]) -> Vec<Location> {
        let mut s = Simplifier::new(tol);
        let mut out = Vec::new();
        for p in fixes {
            s.push(p, &mut out);
        }
        s.finish(&mut out);
        out
    }

    #[test]
    fn a_straight_line_keeps_its_ends() {
        let line: Vec<_> = (0..1000)
            .map(|i| fix(i, 48.0 + i as f64 * 1e-5, 11.0))
            .collect();
        let out = run(1.0, &line);
        assert_eq!(out.iter().map(|p| p.ts).collect::<Vec<_>>(), vec![0, 999]);
    }

    #[test]
    fn a_corner_is_kept_and_a_wobble_under_the_tolerance_is_not() {
        // East 100 fixes, then north 100; a 0.5 m wobble on the way east.
        let mut v = Vec::new();
        for i in 0..100 {
            let wobble = if i % 2 == 0 { 0.0 } else { 0.5 / 111_195.0 };
            v.push(fix(i, 48.0 + wobble, 11.0 + i as f64 * 1e-4));
        }
        for i in 1..=100 {
            v.push(fix(99 + i, 48.0 + i as f64 * 1e-4, 11.0 + 99e-4));
        }
        let out = run(5.0, &v);
        assert_eq!(
            out.iter().map(|p| p.ts).collect::<Vec<_>>(),
            vec![0, 99, 199]
        );
        assert_eq!(run(0.0, &v).len(), 200);
    }

    #[test]
    fn windows_bound_memory_and_keep_every_far_point() {
        // A zigzag of 3 windows: every vertex is 100 m off the straight
        // line, so all must survive, across window boundaries too.
        let n = WINDOW * 3 + 17;
        let v: Vec<_> = (0..n)
            .map(|i| {
                let off = if (i / 50) % 2 == 0 {
                    0.0
                } else {
                    100.0 / 111_195.0
                };
                fix(i as i64, 48.0 + off, 11.0 + i as f64 * 2e-4)
            })
            .collect();
        let mut s = Simplifier::new(10.0);
        let mut out = Vec::new();
        for p in &v {
            s.push(p, &mut out);
            assert!(s.window.len() <= WINDOW);
        }
        s.finish(&mut out);
        let ts: Vec<i64> = out.iter().map(|p| p.ts).collect();
        assert!(ts.windows(2).all(|w| w[0] < w[1]), "in order, no repeats");
        assert_eq!(ts.first(), Some(&0));
        assert_eq!(ts.last(), Some(&(n as i64 - 1)));
        // Each step of the zigzag (both its corners) is kept.
        for k in (50..n - 1).step_by(50) {
            assert!(
                ts.contains(&(k as i64)) && ts.contains(&(k as i64 - 1)),
                "corner {k}"
            );
        }
        assert!(out.len() < n / 20);
    }
}
