//! Input points per second of the track's `simplify` alone (no
//! PostgreSQL, no HTTP): a month of 1 Hz fixes (2 678 400) of a wandering
//! drive through [`Simplifier`], as the track handler feeds it.
//!
//! ```text
//! cargo run --release -p fieldcast-gateway --example simplify_rate [-- <tolerance m>]
//! ```

#![allow(clippy::unwrap_used, clippy::print_stdout)]

use std::time::Instant;

use fieldcast_core::Location;
use fieldcast_gateway::track::simplify::Simplifier;

fn main() {
    let tolerance: f64 = std::env::args()
        .nth(1)
        .and_then(|v| v.parse().ok())
        .unwrap_or(10.0);
    let n = 31 * 86_400;
    let (mut lat, mut lon, mut heading) = (48.0f64, 11.0f64, 0.0f64);
    let fixes: Vec<Location> = (0..n)
        .map(|i| {
            // A slow deterministic wander: turns of a few degrees a second.
            heading += ((i as f64) * 0.013).sin() * 4.0;
            let h = heading.to_radians();
            lat += 12.0 * h.cos() / 111_195.0;
            lon += 12.0 * h.sin() / (111_195.0 * lat.to_radians().cos());
            Location {
                ts: i as i64 * 1000,
                lat,
                lon,
                alt: None,
                speed: Some(12.0),
                heading: Some(heading),
                accuracy: None,
            }
        })
        .collect();
    for run in 0..3 {
        let started = Instant::now();
        let mut s = Simplifier::new(tolerance);
        let (mut kept, mut total) = (Vec::new(), 0usize);
        for p in &fixes {
            s.push(p, &mut kept);
            total += kept.len();
            kept.clear();
        }
        s.finish(&mut kept);
        total += kept.len();
        let secs = started.elapsed().as_secs_f64();
        println!(
            "run {run}: {n} fixes -> {total} in {:.1} ms: {:.1} M input points/s",
            secs * 1000.0,
            n as f64 / secs / 1e6
        );
    }
}
