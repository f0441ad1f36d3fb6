//! The R-tree lookup answers exactly what a scan of every fence answers,
//! for random fences of every kind (with groups and schedules) and random
//! points, in a country-sized box, across the 180° meridian and around the
//! north pole.

use fieldcast_geofence::{Fence, FenceId, FenceIndex};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::{json, Value};

/// Regions as `(min_lon, min_lat, max_lon, max_lat)`.
const REGIONS: [(f64, f64, f64, f64); 3] = [
    (-5.0, 42.0, 8.0, 51.0),
    (178.0, -2.0, 180.0, 2.0),
    (-60.0, 88.0, 60.0, 89.5),
];
const GROUPS: [&str; 3] = ["vans", "trucks", "bikes"];

/// A point within `m` metres (roughly) of `(lon, lat)`.
fn near(rng: &mut StdRng, lon: f64, lat: f64, m: f64) -> (f64, f64) {
    let d = m / 111_000.0;
    let lat2 = (lat + rng.random_range(-d..d)).clamp(-90.0, 90.0);
    let mut lon2 = lon + rng.random_range(-d..d) / lat.to_radians().cos().max(0.05);
    if lon2 > 180.0 {
        lon2 -= 360.0;
    }
    if lon2 < -180.0 {
        lon2 += 360.0;
    }
    (lon2, lat2)
}

fn random_fence(rng: &mut StdRng, id: u64) -> (Fence, (f64, f64)) {
    let (a, b, c, d) = REGIONS[rng.random_range(0..REGIONS.len())];
    let (lon, lat) = (rng.random_range(a..c), rng.random_range(b..d));
    let size: f64 = rng.random_range(100.0..5000.0);
    let geometry = match rng.random_range(0..3) {
        0 => {
            // Star-shaped around the centre: never self-intersecting.
            let n = rng.random_range(3..40);
            let mut ring: Vec<[f64; 2]> = (0..n)
                .map(|i| {
                    let ang = i as f64 / n as f64 * std::f64::consts::TAU;
                    let r = size * rng.random_range(0.3..1.0) / 111_000.0;
                    [
                        (lon + r * ang.cos() / lat.to_radians().cos()).clamp(-180.0, 180.0),
                        (lat + r * ang.sin()).clamp(-90.0, 90.0),
                    ]
                })
                .collect();
            ring.push(ring[0]);
            json!({"type": "Polygon", "coordinates": [ring]})
        }
        1 => json!({"type": "Point", "coordinates": [lon, lat]}),
        _ => {
            let mut line = vec![[lon, lat]];
            for _ in 0..rng.random_range(1..6) {
                let last = line[line.len() - 1];
                let (x, y) = near(rng, last[0], last[1], size);
                // Keep lines on one side of the meridian (the validation
                // refuses edges across it).
                if (x - last[0]).abs() < 180.0 && [x, y] != last {
                    line.push([x, y]);
                }
            }
            if line.len() < 2 {
                line.push([lon, (lat + 0.01).min(90.0)]);
            }
            json!({"type": "LineString", "coordinates": line})
        }
    };
    let mut props = json!({"name": format!("f{id}")});
    match geometry["type"].as_str() {
        Some("Point") => props["radius"] = json!(size),
        Some("LineString") => props["width"] = json!(size / 4.0),
        _ => {}
    }
    if rng.random_bool(0.3) {
        props["groups"] = json!([GROUPS[rng.random_range(0..GROUPS.len())]]);
    }
    if rng.random_bool(0.3) {
        props["schedule"] =
            json!({"days": ["mon", "wed", "sat"], "from": "22:00", "to": "06:00", "tz": "+01:00"});
    }
    let feature: Value = json!({"type": "Feature", "geometry": geometry, "properties": props});
    match Fence::from_feature(FenceId(id), &feature) {
        Ok(f) => (f, (lon, lat)),
        Err(e) => panic!("generated fence {id} refused: {e}: {feature}"),
    }
}

#[test]
fn index_equals_brute_force_scan() {
    let mut rng = StdRng::seed_from_u64(15);
    let mut fences = Vec::new();
    let mut centres = Vec::new();
    for id in 1..=3000 {
        let (f, c) = random_fence(&mut rng, id);
        fences.push(f);
        centres.push(c);
    }
    let index = FenceIndex::new(fences);
    assert_eq!(index.len(), 3000);
    let mut hits = 0;
    let mut buf = Vec::new();
    for i in 0..30_000 {
        let (lon, lat) = if i % 2 == 0 {
            let (a, b, c, d) = REGIONS[rng.random_range(0..REGIONS.len())];
            (rng.random_range(a..c), rng.random_range(b..d))
        } else {
            let (x, y) = centres[rng.random_range(0..centres.len())];
            near(&mut rng, x, y, 3000.0)
        };
        // Any moment of a week in late 2025.
        let at = 1_763_942_400_000 + rng.random_range(0..7 * 86_400_000);
        let groups: Vec<&str> = GROUPS
            .iter()
            .copied()
            .filter(|_| rng.random_bool(0.5))
            .collect();
        let want = index.containing_by_scan(lat, lon, at, &groups);
        index.containing_into(lat, lon, at, &groups, &mut buf);
        assert_eq!(buf, want, "point {lat},{lon} at {at} groups {groups:?}");
        hits += usize::from(!want.is_empty());
    }
    // The comparison means something only if many points hit fences.
    assert!(hits > 4000, "only {hits} points hit a fence");
}

#[test]
fn later_fence_with_the_same_id_wins() {
    let mut rng = StdRng::seed_from_u64(1);
    let (a, _) = random_fence(&mut rng, 5);
    let (b, _) = random_fence(&mut rng, 5);
    let index = FenceIndex::new([a, b.clone()]);
    assert_eq!(index.len(), 1);
    assert_eq!(index.get(FenceId(5)), Some(&b));
    assert_eq!(index.get(FenceId(6)), None);
}
