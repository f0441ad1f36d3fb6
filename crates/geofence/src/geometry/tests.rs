//! Validation errors (one per rule, each naming its field) and the exact
//! meaning of "inside" for every shape.

use crate::{Fence, FenceError, FenceId, Problem};
use serde_json::{json, Value};

fn feature(geometry: Value, props: Value) -> Value {
    json!({"type": "Feature", "geometry": geometry, "properties": props})
}

fn polygon(rings: Value) -> Value {
    feature(
        json!({"type": "Polygon", "coordinates": rings}),
        json!({"name": "p"}),
    )
}

fn circle(lon: f64, lat: f64, radius: f64) -> Value {
    feature(
        json!({"type": "Point", "coordinates": [lon, lat]}),
        json!({"name": "c", "radius": radius}),
    )
}

fn corridor(line: Value, width: f64) -> Value {
    feature(
        json!({"type": "LineString", "coordinates": line}),
        json!({"name": "l", "width": width}),
    )
}

fn fence(v: Value) -> Fence {
    Fence::from_feature(FenceId(1), &v).unwrap()
}

fn fence_id(id: u64, v: Value) -> Fence {
    Fence::from_feature(FenceId(id), &v).unwrap()
}

fn reject(v: Value) -> FenceError {
    Fence::from_feature(FenceId(1), &v).unwrap_err()
}

fn assert_rejects(v: Value, field: &str, problem: Problem) {
    let e = reject(v.clone());
    assert_eq!((e.field(), e.problem()), (field, &problem), "{v}");
    // The message a 400 carries starts with the field it is about.
    assert!(e.to_string().starts_with(field), "{e}");
}

fn inside(f: &Fence, lat: f64, lon: f64) -> bool {
    f.contains(lat, lon, 0, &[] as &[&str])
}

/// A 1°x1° square at 10..11 lon, 50..51 lat with a hole 10.4..10.6, 50.4..50.6.
fn square_with_hole() -> Value {
    json!([
        [
            [10.0, 50.0],
            [11.0, 50.0],
            [11.0, 51.0],
            [10.0, 51.0],
            [10.0, 50.0]
        ],
        [
            [10.4, 50.4],
            [10.4, 50.6],
            [10.6, 50.6],
            [10.6, 50.4],
            [10.4, 50.4]
        ]
    ])
}

#[test]
fn every_validation_rule_names_its_field() {
    let sq = json!([[0.0, 0.0], [1.0, 0.0], [1.0, 1.0], [0.0, 1.0], [0.0, 0.0]]);
    let cases: Vec<(Value, &str, Problem)> = vec![
        (json!([1]), "", Problem::Type("an object")),
        (
            json!({"type": "FeatureCollection", "geometry": {}, "properties": {}}),
            "type",
            Problem::NotFeature,
        ),
        (
            json!({"type": "Feature", "properties": {"name": "x"}}),
            "geometry",
            Problem::Missing,
        ),
        (
            json!({"type": "Feature", "geometry": {"type": "Point", "coordinates": [0, 0]}}),
            "properties",
            Problem::Missing,
        ),
        (
            json!({"type": "Feature", "geometry": {}, "properties": {}, "style": 1}),
            "style",
            Problem::Unknown,
        ),
        (
            feature(
                json!({"type": "Point", "coordinates": [0, 0]}),
                json!({"radius": 5}),
            ),
            "properties.name",
            Problem::Missing,
        ),
        (
            feature(
                json!({"type": "Point", "coordinates": [0, 0]}),
                json!({"name": "  ", "radius": 5}),
            ),
            "properties.name",
            Problem::Text(
                "a non-empty string of at most 200 characters, without control characters",
            ),
        ),
        (
            feature(
                json!({"type": "Point", "coordinates": [0, 0]}),
                json!({"name": "x", "radius": 5, "colour": "red"}),
            ),
            "properties.colour",
            Problem::Unknown,
        ),
        (
            feature(
                json!({"type": "Point", "coordinates": [0, 0], "crs": 4326}),
                json!({"name": "x", "radius": 5}),
            ),
            "geometry.crs",
            Problem::Unknown,
        ),
        (
            feature(
                json!({"type": "MultiPolygon", "coordinates": []}),
                json!({"name": "x"}),
            ),
            "geometry.type",
            Problem::Geometry("MultiPolygon".into()),
        ),
        (
            feature(
                json!({"type": "Point", "coordinates": [0, 0]}),
                json!({"name": "x"}),
            ),
            "properties.radius",
            Problem::Missing,
        ),
        (
            feature(
                json!({"type": "LineString", "coordinates": [[0, 0], [1, 1]]}),
                json!({"name": "x"}),
            ),
            "properties.width",
            Problem::Missing,
        ),
        (
            feature(
                json!({"type": "Polygon", "coordinates": [sq]}),
                json!({"name": "x", "radius": 5}),
            ),
            "properties.radius",
            Problem::Text("given only with a Point geometry"),
        ),
        (
            feature(
                json!({"type": "Point", "coordinates": [0, 0]}),
                json!({"name": "x", "radius": 5, "width": 3}),
            ),
            "properties.width",
            Problem::Text("given only with a LineString geometry"),
        ),
        (
            circle(0.0, 0.0, 0.0),
            "properties.radius",
            Problem::Metres(1_000_000.0),
        ),
        (
            circle(0.0, 0.0, -5.0),
            "properties.radius",
            Problem::Metres(1_000_000.0),
        ),
        (
            circle(0.0, 0.0, 2e6),
            "properties.radius",
            Problem::Metres(1_000_000.0),
        ),
        (
            feature(
                json!({"type": "Point", "coordinates": [0, 0]}),
                json!({"name": "x", "radius": "10"}),
            ),
            "properties.radius",
            Problem::Metres(1_000_000.0),
        ),
        (
            corridor(json!([[0, 0], [1, 1]]), 0.0),
            "properties.width",
            Problem::Metres(100_000.0),
        ),
        (
            corridor(json!([[0, 0], [1, 1]]), 1e6),
            "properties.width",
            Problem::Metres(100_000.0),
        ),
        (
            circle(180.5, 0.0, 10.0),
            "geometry.coordinates",
            Problem::Position,
        ),
        (
            circle(0.0, -90.5, 10.0),
            "geometry.coordinates",
            Problem::Position,
        ),
        (
            feature(
                json!({"type": "Point", "coordinates": [1]}),
                json!({"name": "x", "radius": 5}),
            ),
            "geometry.coordinates",
            Problem::Position,
        ),
        (
            feature(
                json!({"type": "Point", "coordinates": ["1", 2]}),
                json!({"name": "x", "radius": 5}),
            ),
            "geometry.coordinates",
            Problem::Position,
        ),
        (
            polygon(json!([[[0, 0], [1, 0], [1, 91], [0, 0]]])),
            "geometry.coordinates[0][2]",
            Problem::Position,
        ),
        (
            polygon(json!([])),
            "geometry.coordinates",
            Problem::Type("a non-empty list of rings"),
        ),
        (
            polygon(json!([[[0, 0], [1, 0], [0, 0]]])),
            "geometry.coordinates[0]",
            Problem::RingTooShort(3),
        ),
        (
            polygon(json!([[[0, 0], [1, 0], [1, 1], [0, 1]]])),
            "geometry.coordinates[0]",
            Problem::RingNotClosed,
        ),
        (
            polygon(json!([[[0, 0], [1, 0], [1, 0], [1, 1], [0, 0]]])),
            "geometry.coordinates[0][2]",
            Problem::Repeated,
        ),
        // A bow tie: edges 0 and 2 cross.
        (
            polygon(json!([[[0, 0], [1, 1], [1, 0], [0, 1], [0, 0]]])),
            "geometry.coordinates[0]",
            Problem::SelfIntersection(0, 2),
        ),
        // A spike folding back along its own edge.
        (
            polygon(json!([[[0, 0], [2, 0], [1, 0], [1, 1], [0, 0]]])),
            "geometry.coordinates[0]",
            Problem::SelfIntersection(0, 1),
        ),
        // A figure eight touching itself at one vertex.
        (
            polygon(json!([[
                [0, 0],
                [1, 1],
                [2, 0],
                [2, 2],
                [1, 1],
                [0, 2],
                [0, 0]
            ]])),
            "geometry.coordinates[0]",
            Problem::SelfIntersection(0, 3),
        ),
        (
            polygon(json!([
                sq,
                [[0.5, 0.5], [1.5, 0.5], [1.5, 0.6], [0.5, 0.5]]
            ])),
            "geometry.coordinates[1]",
            Problem::RingsIntersect(0),
        ),
        (
            polygon(json!([sq, [[2, 2], [3, 2], [3, 3], [2, 2]]])),
            "geometry.coordinates[1]",
            Problem::HoleOutside,
        ),
        (
            polygon(json!([
                sq,
                [[0.1, 0.1], [0.9, 0.1], [0.9, 0.9], [0.1, 0.1]],
                [[0.5, 0.3], [0.6, 0.3], [0.6, 0.35], [0.5, 0.3]]
            ])),
            "geometry.coordinates[2]",
            Problem::HoleInHole(1),
        ),
        (
            polygon(json!([[[170, 0], [-170, 0], [-170, 1], [170, 0]]])),
            "geometry.coordinates[0][1]",
            Problem::Antimeridian,
        ),
        (
            corridor(json!([[179, 0], [-179, 0]]), 100.0),
            "geometry.coordinates[1]",
            Problem::Antimeridian,
        ),
        (
            corridor(json!([[1, 1]]), 100.0),
            "geometry.coordinates",
            Problem::LineTooShort(1),
        ),
        (
            feature(
                json!({"type": "Point", "coordinates": [0, 0]}),
                json!({"name": "x", "radius": 5, "severity": "fatal"}),
            ),
            "properties.severity",
            Problem::Severity,
        ),
        (
            feature(
                json!({"type": "Point", "coordinates": [0, 0]}),
                json!({"name": "x", "radius": 5, "groups": []}),
            ),
            "properties.groups",
            Problem::Text("a list of 1 to 100 group names (omit it for every device)"),
        ),
        (
            feature(
                json!({"type": "Point", "coordinates": [0, 0]}),
                json!({"name": "x", "radius": 5, "groups": ["a", ""]}),
            ),
            "properties.groups[1]",
            Problem::Text(
                "a non-empty string of at most 64 characters, without control characters",
            ),
        ),
        (
            feature(
                json!({"type": "Point", "coordinates": [0, 0]}),
                json!({"name": "x", "radius": 5, "schedule": {"days": ["someday"]}}),
            ),
            "properties.schedule.days[0]",
            Problem::Day,
        ),
        (
            feature(
                json!({"type": "Point", "coordinates": [0, 0]}),
                json!({"name": "x", "radius": 5, "schedule": {"from": "09:00", "to": "09:00"}}),
            ),
            "properties.schedule",
            Problem::EmptyWindow,
        ),
    ];
    for (v, field, problem) in cases {
        assert_rejects(v, field, problem);
    }
    let e = Fence::from_json(FenceId(1), "{").unwrap_err();
    assert!(matches!(e.problem(), Problem::Json(_)), "{e}");
}

#[test]
fn too_many_vertices() {
    // A circular ring of 10 001 positions (10 000 + the closing one).
    let n = crate::MAX_VERTICES;
    let ring: Vec<[f64; 2]> = (0..=n)
        .map(|i| {
            let a = (i % n) as f64 / n as f64 * std::f64::consts::TAU;
            [a.cos(), a.sin()]
        })
        .collect();
    assert_rejects(
        polygon(json!([ring])),
        "geometry.coordinates",
        Problem::TooManyVertices(n + 1),
    );
    // One fewer is fine (and validating it is quick: an R-tree, not pairs).
    let ok: Vec<[f64; 2]> = (0..n)
        .map(|i| {
            let a = (i % (n - 1)) as f64 / (n - 1) as f64 * std::f64::consts::TAU;
            [a.cos(), a.sin()]
        })
        .collect();
    let start = std::time::Instant::now();
    let f = fence(polygon(json!([ok])));
    assert_eq!(f.shape().vertices(), n);
    assert!(start.elapsed().as_secs() < 5);
    let line: Vec<[f64; 2]> = (0..=n).map(|i| [i as f64 * 1e-4, 0.0]).collect();
    assert_rejects(
        corridor(json!(line), 10.0),
        "geometry.coordinates",
        Problem::TooManyVertices(n + 1),
    );
}

#[test]
fn a_hole_is_outside_and_its_ring_is_boundary() {
    let f = fence(polygon(square_with_hole()));
    assert!(inside(&f, 50.2, 10.2));
    assert!(
        !inside(&f, 50.5, 10.5),
        "inside the hole = outside the fence"
    );
    assert!(
        inside(&f, 50.4, 10.5),
        "on the hole's edge = on the fence's boundary"
    );
    assert!(inside(&f, 50.6, 10.6), "on a hole's vertex");
    assert!(!inside(&f, 51.5, 10.5));
    assert!(!inside(&f, 50.5, 9.99));
}

#[test]
fn points_on_the_boundary_are_inside() {
    let f = fence(polygon(square_with_hole()));
    // Vertices, horizontal edges, vertical edges.
    for (lat, lon) in [
        (50.0, 10.0),
        (51.0, 11.0),
        (50.0, 10.5),
        (51.0, 10.25),
        (50.5, 10.0),
        (50.75, 11.0),
    ] {
        assert!(inside(&f, lat, lon), "{lat},{lon}");
    }
    // Just off them.
    for (lat, lon) in [(49.999_999, 10.5), (50.5, 11.000_001), (51.000_001, 10.0)] {
        assert!(!inside(&f, lat, lon), "{lat},{lon}");
    }
    // A slanted edge through exactly representable points: (0,0)-(4,2)
    // passes (2,1).
    let tri = fence(polygon(json!([[[0, 0], [4, 2], [0, 2], [0, 0]]])));
    assert!(inside(&tri, 1.0, 2.0));
    assert!(!inside(&tri, 0.999, 2.0));
    assert!(inside(&tri, 1.001, 2.0));
    // A ray through a vertex is counted once: the point level with the
    // apex (4,2) and left of it is inside, right of it outside.
    assert!(inside(&tri, 2.0, 3.0));
    assert!(!inside(&tri, 2.0, 4.5));
}

#[test]
fn shared_edge_points_belong_to_both_neighbours() {
    // Two squares sharing the edge lon = 1: the fences are closed, so a
    // point on it is in both (an enter into B happens before the exit
    // from A is due, never a gap between them).
    let a = fence(polygon(json!([[[0, 0], [1, 0], [1, 1], [0, 1], [0, 0]]])));
    let b = fence(polygon(json!([[[1, 0], [2, 0], [2, 1], [1, 1], [1, 0]]])));
    assert!(inside(&a, 0.5, 1.0) && inside(&b, 0.5, 1.0));
}

#[test]
fn either_ring_orientation_is_accepted() {
    let ccw = fence(polygon(json!([[[0, 0], [1, 0], [1, 1], [0, 1], [0, 0]]])));
    let cw = fence(polygon(json!([[[0, 0], [0, 1], [1, 1], [1, 0], [0, 0]]])));
    for (lat, lon) in [(0.5, 0.5), (0.0, 0.5), (1.5, 0.5)] {
        assert_eq!(inside(&ccw, lat, lon), inside(&cw, lat, lon));
    }
}

#[test]
fn circles_measure_great_circle_metres() {
    let f = fence(circle(2.35, 48.85, 1000.0));
    // 1 km is 0.008993° of latitude on the mean sphere.
    let dlat = 1000.0 / crate::geometry::EARTH_RADIUS_M * 180.0 / std::f64::consts::PI;
    assert!(inside(&f, 48.85 + dlat * 0.999, 2.35));
    assert!(!inside(&f, 48.85 + dlat * 1.001, 2.35));
    // East-west: a degree of longitude is cos(lat) shorter.
    let dlon = dlat / 48.85f64.to_radians().cos();
    assert!(inside(&f, 48.85, 2.35 + dlon * 0.999));
    assert!(!inside(&f, 48.85, 2.35 + dlon * 1.001));
}

#[test]
fn circles_near_the_poles() {
    // 0.02° of arc across the pole is ~2.2 km.
    let f = fence(circle(0.0, 89.99, 5000.0));
    assert!(inside(&f, 89.99, 180.0));
    assert!(inside(&f, 89.99, -90.0));
    assert!(inside(&f, 90.0, 0.0));
    assert!(!inside(&f, 89.9, 180.0));
    // Centred on the pole: a ring of latitude.
    let pole = fence_id(2, circle(0.0, -90.0, 111_195.0 * 1.5));
    assert!(inside(&pole, -88.6, 123.0));
    assert!(!inside(&pole, -88.4, -45.0));
    // Near the pole the box spans every longitude; the index finds it.
    let idx = crate::FenceIndex::new([f.clone(), pole.clone()]);
    assert_eq!(
        idx.containing(89.99, 179.0, 0, &[] as &[&str]),
        [FenceId(1)]
    );
    assert_eq!(
        idx.containing(-89.0, -179.0, 0, &[] as &[&str]),
        [FenceId(2)]
    );
}

#[test]
fn circles_and_corridors_reach_across_the_180th_meridian() {
    let c = fence(circle(179.999, 0.0, 1000.0));
    assert!(inside(&c, 0.0, -179.999), "222 m away across the meridian");
    assert!(inside(&c, 0.0, -180.0));
    assert!(!inside(&c, 0.0, -179.98));
    let l = fence_id(2, corridor(json!([[179.99, -1.0], [179.99, 1.0]]), 4000.0));
    assert!(
        inside(&l, 0.5, -179.995),
        "1.67 km from the line across the meridian"
    );
    assert!(!inside(&l, 0.5, -179.97));
    let idx = crate::FenceIndex::new([c, l]);
    let none: &[&str] = &[];
    assert_eq!(
        idx.containing(0.0, -179.999, 0, none),
        [FenceId(1), FenceId(2)]
    );
    assert_eq!(idx.containing(0.5, -179.995, 0, none), [FenceId(2)]);
    assert_eq!(
        idx.containing(0.0, 179.9995, 0, none),
        [FenceId(1), FenceId(2)]
    );
    assert!(idx.containing(0.0, -179.97, 0, none).is_empty());
}

#[test]
fn corridors_measure_metres_to_the_line() {
    // A corridor 200 m wide along the equator from lon 0 to 1, then north.
    let f = fence(corridor(json!([[0.0, 0.0], [1.0, 0.0], [1.0, 1.0]]), 200.0));
    let m = 1.0 / 111_195.08; // degrees per metre on the mean sphere
    assert!(inside(&f, 99.0 * m, 0.5));
    assert!(!inside(&f, 101.0 * m, 0.5));
    assert!(inside(&f, 0.5, 1.0 + 99.0 * m));
    assert!(!inside(&f, 0.5, 1.0 - 101.0 * m));
    // Round ends: past the start, within 100 m of it.
    assert!(inside(&f, 60.0 * m, -60.0 * m), "85 m from the end");
    assert!(!inside(&f, 75.0 * m, -75.0 * m), "106 m from the end");
}

#[test]
fn corridor_distance_matches_dense_sampling() {
    // Pins the error bound in the module doc: the distance used is never
    // below the true one and at most 0.1 % of the half-width above it, on
    // long diagonal segments at high latitude, where the local plane is
    // most distorted.
    use crate::geometry::{distance_m, segment_hav_point};
    use rand::{Rng, SeedableRng};
    let mut rng = rand::rngs::StdRng::seed_from_u64(7);
    for _ in 0..300 {
        let lat0: f64 = rng.random_range(-70.0..70.0);
        let a = [rng.random_range(-10.0..10.0), lat0];
        let b = [
            a[0] + rng.random_range(-3.0..3.0),
            lat0 + rng.random_range(-2.0..2.0),
        ];
        let t: f64 = rng.random_range(0.0..1.0);
        let on = [a[0] + t * (b[0] - a[0]), a[1] + t * (b[1] - a[1])];
        // A point up to 50 km (half the widest corridor) off the line.
        let p = [
            on[0] + rng.random_range(-0.45..0.45) / on[1].to_radians().cos(),
            on[1] + rng.random_range(-0.45..0.45),
        ];
        let (_, q) = segment_hav_point(p, a, b);
        let ours = distance_m(p, q);
        let truth = (0..=20_000)
            .map(|i| {
                let s = i as f64 / 20_000.0;
                distance_m(p, [a[0] + s * (b[0] - a[0]), a[1] + s * (b[1] - a[1])])
            })
            .fold(f64::INFINITY, f64::min);
        if truth > 50_000.0 {
            continue;
        }
        assert!(ours >= truth - 1.0, "ours {ours} truth {truth}");
        assert!(
            ours - truth <= 50.0 + 1.0,
            "ours {ours} truth {truth}: off by {}",
            ours - truth
        );
    }
}

#[test]
fn schedules_and_groups_gate_every_shape() {
    let mut v = circle(0.0, 0.0, 1000.0);
    v["properties"]["schedule"] = json!({"days": ["mon"], "from": "08:00", "to": "09:00"});
    v["properties"]["groups"] = json!(["vans", "trucks"]);
    let f = fence(v);
    let monday_0830 = 1_763_942_400_000 + 8 * 3_600_000 + 1_800_000;
    assert!(f.contains(0.0, 0.0, monday_0830, &["trucks"]));
    assert!(f.contains(0.0, 0.0, monday_0830, &["cars", "vans"]));
    assert!(!f.contains(0.0, 0.0, monday_0830, &["cars"]));
    assert!(!f.contains(0.0, 0.0, monday_0830, &[] as &[&str]));
    assert!(
        !f.contains(0.0, 0.0, monday_0830 + 3_600_000, &["vans"]),
        "after 09:00"
    );
    assert!(
        !f.contains(0.0, 0.0, monday_0830 + 86_400_000, &["vans"]),
        "Tuesday"
    );
    let idx = crate::FenceIndex::new([f]);
    assert_eq!(
        idx.containing(0.0, 0.0, monday_0830, &["vans"]),
        [FenceId(1)]
    );
    assert!(idx
        .containing(0.0, 0.0, monday_0830 + 86_400_000, &["vans"])
        .is_empty());
    assert!(idx.containing(0.0, 0.0, monday_0830, &["cars"]).is_empty());
}

#[test]
fn features_round_trip_canonically() {
    let mut with_all = polygon(square_with_hole());
    with_all["id"] = json!("ignored");
    with_all["bbox"] = json!([10, 50, 11, 51]);
    with_all["properties"] = json!({
        "name": " Yard ", "groups": ["b", "a", "b"], "severity": "critical",
        "schedule": {"days": ["tue"], "from": "22:00", "to": "06:00", "tz": "+02:00"}
    });
    for v in [
        with_all,
        circle(2.0, 3.0, 250.5),
        corridor(json!([[0, 0, 12.5], [1, 1]]), 30.0),
    ] {
        let f = Fence::from_feature(FenceId(9), &v).unwrap();
        let out = f.to_feature();
        assert_eq!(out["id"], json!(9));
        assert_eq!(out["type"], "Feature");
        assert_eq!(Fence::from_feature(FenceId(9), &out).unwrap(), f, "{out}");
    }
    let f = fence(circle(2.0, 3.0, 250.5));
    assert_eq!(
        f.to_feature(),
        json!({"type": "Feature", "id": 1,
               "geometry": {"type": "Point", "coordinates": [2.0, 3.0]},
               "properties": {"name": "c", "radius": 250.5, "severity": "info"}})
    );
    let all = crate::fence::feature_collection([&f, &f]);
    assert_eq!(all["type"], "FeatureCollection");
    assert_eq!(all["features"].as_array().map(Vec::len), Some(2));
    let yard = Fence::from_feature(
        FenceId(2),
        &json!({
        "type": "Feature", "geometry": {"type": "Point", "coordinates": [0, 0]},
        "properties": {"name": " Yard ", "radius": 1, "groups": ["b", "a", "b"]}}),
    )
    .unwrap();
    assert_eq!(yard.name(), "Yard");
    assert_eq!(yard.to_feature()["properties"]["groups"], json!(["a", "b"]));
}

/// Pins the webhook member: kept whole (the bridge signs with the secret),
/// written back by `to_feature`, and each bad member named by its path.
#[test]
fn a_webhook_is_kept_whole_and_validated() {
    use fieldcast_core::webhook::WebhookProblem;
    let hooked = |webhook: Value| {
        feature(
            json!({"type": "Point", "coordinates": [2.0, 3.0]}),
            json!({"name": "c", "radius": 10, "webhook": webhook}),
        )
    };
    let f = fence(hooked(
        json!({"url": "https://hooks.example/fence", "secret": "s3cret"}),
    ));
    let w = f.webhook().unwrap();
    assert_eq!(
        (w.url(), w.secret()),
        ("https://hooks.example/fence", "s3cret")
    );
    let out = f.to_feature();
    assert_eq!(
        out["properties"]["webhook"],
        json!({"url": "https://hooks.example/fence", "secret": "s3cret"})
    );
    assert_eq!(Fence::from_feature(FenceId(1), &out).unwrap(), f);
    assert!(fence(circle(2.0, 3.0, 10.0)).webhook().is_none());
    assert!(!format!("{f:?}").contains("s3cret"));
    for (webhook, field, problem) in [
        (
            json!("https://x"),
            "properties.webhook",
            WebhookProblem::NotObject,
        ),
        (
            json!({"url": "https://x"}),
            "properties.webhook.secret",
            WebhookProblem::Missing,
        ),
        (
            json!({"url": "https://x", "secret": ""}),
            "properties.webhook.secret",
            WebhookProblem::Secret,
        ),
        (
            json!({"url": "mailto:a@b", "secret": "s"}),
            "properties.webhook.url",
            WebhookProblem::Url,
        ),
        (
            json!({"url": "https://x", "secret": "s", "method": "PUT"}),
            "properties.webhook.method",
            WebhookProblem::Unknown,
        ),
    ] {
        assert_rejects(hooked(webhook), field, Problem::Webhook(problem));
    }
}
