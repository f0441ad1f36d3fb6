//! Fence lookup per location (issue #15's target: <= 2 us with 10 000
//! polygon fences of 50 vertices each).
//!
//! Fences: star-shaped 50-vertex polygons (never self-intersecting) around
//! random centres, 100 m to 5 km across, over a 1 300 km x 1 000 km box
//! (France-sized). Two point sets: uniform over the box (most hit no
//! fence: the R-tree's miss path) and near fence centres (every point
//! tests a polygon exactly: the hit path).
//!
//! `CARGO_TARGET_DIR=... nice -n 19 cargo bench -p fieldcast-geofence --bench lookup`

use criterion::{criterion_group, criterion_main, Criterion};
use fieldcast_geofence::{Fence, FenceId, FenceIndex};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::json;
use std::hint::black_box;

const FENCES: u64 = 10_000;
const VERTICES: usize = 50;
const BOX: (f64, f64, f64, f64) = (-5.0, 42.0, 8.0, 51.0);
const POINTS: usize = 4096;

fn fences(rng: &mut StdRng) -> (Vec<Fence>, Vec<(f64, f64)>) {
    let mut out = Vec::new();
    let mut centres = Vec::new();
    for id in 1..=FENCES {
        let lon = rng.random_range(BOX.0..BOX.2);
        let lat = rng.random_range(BOX.1..BOX.3);
        // 100 m to 5 km across: radius 50 m to 2.5 km, log-uniform.
        let radius_m = (rng.random_range(50f64.ln()..2500f64.ln())).exp();
        let mut ring: Vec<[f64; 2]> = (0..VERTICES)
            .map(|i| {
                let a = i as f64 / VERTICES as f64 * std::f64::consts::TAU;
                let r = radius_m * rng.random_range(0.5..1.0) / 111_195.0;
                [
                    lon + r * a.cos() / lat.to_radians().cos(),
                    lat + r * a.sin(),
                ]
            })
            .collect();
        ring.push(ring[0]);
        let feature = json!({
            "type": "Feature",
            "geometry": {"type": "Polygon", "coordinates": [ring]},
            "properties": {"name": format!("fence {id}")},
        });
        match Fence::from_feature(FenceId(id), &feature) {
            Ok(f) => out.push(f),
            Err(e) => panic!("generated fence {id} refused: {e}"),
        }
        centres.push((lon, lat));
    }
    (out, centres)
}

fn lookup(c: &mut Criterion) {
    let mut rng = StdRng::seed_from_u64(15);
    let (fences, centres) = fences(&mut rng);
    let index = FenceIndex::new(fences);
    let uniform: Vec<(f64, f64)> = (0..POINTS)
        .map(|_| {
            (
                rng.random_range(BOX.0..BOX.2),
                rng.random_range(BOX.1..BOX.3),
            )
        })
        .collect();
    let near: Vec<(f64, f64)> = (0..POINTS)
        .map(|i| {
            let (lon, lat) = centres[i * 7 % centres.len()];
            (
                lon + rng.random_range(-2e-4..2e-4),
                lat + rng.random_range(-2e-4..2e-4),
            )
        })
        .collect();
    let groups: [&str; 0] = [];
    let at = 1_763_942_400_000;
    let mut out = Vec::new();
    for (name, points) in [("uniform", &uniform), ("near_centres", &near)] {
        let hits = points
            .iter()
            .filter(|(lon, lat)| !index.containing(*lat, *lon, at, &groups).is_empty())
            .count();
        eprintln!("{name}: {hits}/{} points inside a fence", points.len());
        let mut i = 0;
        c.bench_function(&format!("lookup_10k_polygons_50v/{name}"), |b| {
            b.iter(|| {
                let (lon, lat) = points[i % POINTS];
                i += 1;
                index.containing_into(black_box(lat), black_box(lon), at, &groups, &mut out);
                black_box(out.len())
            })
        });
    }
}

criterion_group!(benches, lookup);
criterion_main!(benches);
