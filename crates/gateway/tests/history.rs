//! History at scale against a real PostgreSQL (issue #16): trips and
//! stops, `/api/reports/summary`, `/api/devices?at=`, and the track's
//! `simplify` and `bucket`. Every database has all migrations (the
//! `location_days` trigger of 0003 included), applied by the bridge's own
//! schema code.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use serde_json::{json, Value};
use support::*;

/// Metres per degree of latitude on the mean sphere.
const M_PER_DEG: f64 = 111_195.08;

/// Yesterday 00:00 UTC: inside the partitions the migration creates.
fn day0() -> i64 {
    let now = fieldcast_core::time::now_ms();
    now - now.rem_euclid(86_400_000) - 86_400_000
}

/// Fixes `(ts, lat, lon)` of `device`, in one statement (as the bridge's
/// batch insert: the trigger sees them as one batch).
async fn insert(env: &Env, device: &str, fixes: &[(i64, f64, f64)]) {
    let ts: Vec<f64> = fixes.iter().map(|f| f.0 as f64).collect();
    let lat: Vec<f64> = fixes.iter().map(|f| f.1).collect();
    let lon: Vec<f64> = fixes.iter().map(|f| f.2).collect();
    env.pg
        .execute(
            "INSERT INTO locations (device_id, ts, lat, lon, received_at) \
             SELECT $1, to_timestamp(t / 1000), a, o, now() \
               FROM unnest($2::float8[], $3::float8[], $4::float8[]) AS u(t, a, o)",
            &[&device, &ts, &lat, &lon],
        )
        .await
        .unwrap();
}

/// A 1 Hz track north along 11°E from 48°N, built leg by leg.
struct Track {
    ts: i64,
    y: f64,
    fixes: Vec<(i64, f64, f64)>,
}

impl Track {
    fn new(ts: i64) -> Self {
        Track {
            ts,
            y: 0.0,
            fixes: vec![(ts, 48.0, 11.0)],
        }
    }
    fn drive(mut self, secs: i64, mps: f64) -> Self {
        for _ in 0..secs {
            self.ts += 1000;
            self.y += mps;
            self.fixes.push((self.ts, 48.0 + self.y / M_PER_DEG, 11.0));
        }
        self
    }
    fn wait(mut self, secs: i64) -> Self {
        for i in 0..secs {
            self.ts += 1000;
            let j = if i % 2 == 0 { 4.0 } else { -4.0 };
            self.fixes
                .push((self.ts, 48.0 + (self.y + j) / M_PER_DEG, 11.0));
        }
        self
    }
}

/// Pins: trips and stops come out of stored fixes by the documented
/// rules (a light is no stop, a parking is), in all three formats, with
/// the thresholds as parameters; scope and unknown devices are 404, bad
/// thresholds 400.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn trips_and_stops_from_stored_fixes() {
    let (env, gw) = Env::migrated_with_gateway().await;
    let t0 = day0() + 8 * 3_600_000;
    let track = Track::new(t0)
        .drive(300, 12.0)
        .wait(60) // a traffic light
        .drive(300, 12.0)
        .wait(1800) // parked
        .drive(300, 12.0);
    insert(&env, "truck-1", &track.fixes).await;
    let t = token(json!({}));
    let range = format!("from={}&to={}", t0, track.ts + 1);

    let (s, v) = get_json(gw.addr, &format!("/api/devices/truck-1/trips?{range}"), &t).await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["device"], "truck-1");
    let trips = v["trips"].as_array().unwrap();
    assert_eq!(trips.len(), 2, "{v}");
    assert_eq!(trips[0]["start"]["ts"], t0);
    assert_eq!(trips[0]["start"]["lat"], 48.0);
    let arrival = t0 + 660_000;
    assert_eq!(trips[0]["end"]["ts"], arrival);
    assert_eq!(trips[0]["duration_ms"], 660_000);
    let d = trips[0]["distance_m"].as_f64().unwrap();
    assert!((7200.0..7800.0).contains(&d), "{d}");
    let max = trips[0]["max_speed"].as_f64().unwrap();
    // 12 m/s driving; the jitter at the light derives up to 16 m/s.
    assert!((12.0..17.0).contains(&max), "{max}");
    let avg = trips[0]["avg_speed"].as_f64().unwrap();
    assert!((avg - d / 660.0).abs() < 1e-6);

    let (s, v) = get_json(gw.addr, &format!("/api/devices/truck-1/stops?{range}"), &t).await;
    assert_eq!(s, 200, "{v}");
    let stops = v["stops"].as_array().unwrap();
    assert_eq!(stops.len(), 1, "{v}");
    assert_eq!(stops[0]["ts_arrival"], arrival);
    let dep = stops[0]["ts_departure"].as_i64().unwrap();
    assert!((arrival + 1_800_000..arrival + 1_806_000).contains(&dep));
    assert_eq!(stops[0]["duration_ms"], dep - arrival);
    assert_eq!(trips[1]["start"]["ts"], dep);

    // The light becomes a stop when stops may be short.
    let (_, v) = get_json(
        gw.addr,
        &format!("/api/devices/truck-1/stops?{range}&min_stop_ms=30000"),
        &t,
    )
    .await;
    assert_eq!(v["stops"].as_array().unwrap().len(), 2, "{v}");

    let (s, ct, body) = http(
        gw.addr,
        "GET",
        &format!("/api/devices/truck-1/trips?{range}&format=csv"),
        Some(&t),
        None,
    )
    .await;
    assert_eq!(s, 200);
    let _ = ct;
    let lines: Vec<&str> = body.lines().collect();
    assert_eq!(lines[0], "start_ts,start_lat,start_lon,end_ts,end_lat,end_lon,distance_m,duration_ms,max_speed,avg_speed");
    assert_eq!(lines.len(), 3);
    assert!(lines[1].starts_with(&fieldcast_core::time::format_rfc3339_ms(t0)));
    let (s, v) = get_json(
        gw.addr,
        &format!("/api/devices/truck-1/stops?{range}&format=geojson"),
        &t,
    )
    .await;
    assert_eq!(s, 200);
    assert_eq!(v["type"], "FeatureCollection");
    assert_eq!(v["features"][0]["geometry"]["type"], "Point");
    assert_eq!(v["features"][0]["properties"]["ts_arrival"], arrival);

    // A known device with nothing in the window: empty, not 404.
    let (s, v) = get_json(
        gw.addr,
        &format!(
            "/api/devices/truck-1/trips?from={}&to={}",
            t0 - 7_200_000,
            t0 - 1
        ),
        &t,
    )
    .await;
    assert_eq!((s, v["trips"].clone()), (200, json!([])));
    let scoped = token(json!({"devices": ["van-*"]}));
    for (path, tok) in [
        (format!("/api/devices/truck-1/trips?{range}"), &scoped),
        (format!("/api/devices/truck-1/stops?{range}"), &scoped),
        (format!("/api/devices/ghost/stops?{range}"), &t),
    ] {
        let (s, v) = get_json(gw.addr, &path, tok).await;
        assert_eq!(s, 404, "{path}");
        assert_eq!(v["error"]["code"], "not_found");
    }
    for bad in [
        "min_trip_ms=-1",
        "min_stop_ms=abc",
        "max_gap_ms=0",
        "min_trip_m=NaN",
        "format=kml",
    ] {
        let (s, v) = get_json(
            gw.addr,
            &format!("/api/devices/truck-1/trips?{range}&{bad}"),
            &t,
        )
        .await;
        assert_eq!(s, 400, "{bad}");
        assert_eq!(v["error"]["code"], "bad_request");
    }
    gw.stop().await;
}

/// Pins: a gap in the stored data longer than `max_gap_ms` ends the trip.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gap_in_the_data_ends_a_trip() {
    let (env, gw) = Env::migrated_with_gateway().await;
    let t0 = day0() + 3_600_000;
    let a = Track::new(t0).drive(300, 12.0);
    let mut b = Track::new(a.ts + 1_200_000).drive(300, 12.0);
    for f in &mut b.fixes {
        f.1 += 0.5; // 55 km further north
    }
    insert(&env, "car-1", &a.fixes).await;
    insert(&env, "car-1", &b.fixes).await;
    let t = token(json!({}));
    let range = format!("from={t0}&to={}", b.ts + 1);
    let (_, v) = get_json(gw.addr, &format!("/api/devices/car-1/trips?{range}"), &t).await;
    let trips = v["trips"].as_array().unwrap();
    assert_eq!(trips.len(), 2, "{v}");
    assert_eq!(trips[0]["end"]["ts"], a.ts);
    assert_eq!(trips[1]["start"]["ts"], a.ts + 1_200_000);
    // A larger max_gap_ms bridges it: one trip across the jump.
    let (_, v) = get_json(
        gw.addr,
        &format!("/api/devices/car-1/trips?{range}&max_gap_ms=3600000"),
        &t,
    )
    .await;
    assert_eq!(v["trips"].as_array().unwrap().len(), 1, "{v}");
    gw.stop().await;
}

/// Pins: `?at=` answers each in-scope device's last fix at or before the
/// instant (epoch ms or RFC 3339), from history, across a day boundary,
/// leaving out devices with no fix by then; with its last status then.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn devices_at_an_instant() {
    let (env, gw) = Env::migrated_with_gateway().await;
    let d0 = day0();
    // a: fixes yesterday evening and this morning; b: this morning only,
    // from 08:00; c: the day before yesterday (another partition).
    insert(
        &env,
        "a",
        &[(d0 - 3_600_000, 1.0, 1.0), (d0 + 6 * 3_600_000, 2.0, 2.0)],
    )
    .await;
    insert(
        &env,
        "b",
        &[
            (d0 + 8 * 3_600_000, 3.0, 3.0),
            (d0 + 9 * 3_600_000, 4.0, 4.0),
        ],
    )
    .await;
    insert(&env, "c", &[(d0 - 30 * 3_600_000, 5.0, 5.0)]).await;
    env.pg
        .execute(
            "INSERT INTO device_status (device_id, ts, online, battery, received_at) \
             VALUES ('a', to_timestamp($1::float8 / 1000), false, 55, now())",
            &[&((d0 + 3_600_000) as f64)],
        )
        .await
        .unwrap();
    let t = token(json!({}));
    let at = |v: &Value| -> Vec<(String, f64, i64)> {
        v.as_array()
            .unwrap()
            .iter()
            .map(|s| {
                (
                    s["device"].as_str().unwrap().to_owned(),
                    s["lat"].as_f64().unwrap(),
                    s["ts"].as_i64().unwrap(),
                )
            })
            .collect()
    };
    // 07:00 today: a's morning fix is before it; its day's partition has
    // it. b has nothing yet; c's only fix is two days back.
    let (s, v) = get_json(
        gw.addr,
        &format!("/api/devices?at={}", d0 + 7 * 3_600_000),
        &t,
    )
    .await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(
        at(&v),
        vec![
            ("a".into(), 2.0, d0 + 6 * 3_600_000),
            ("c".into(), 5.0, d0 - 30 * 3_600_000)
        ]
    );
    assert_eq!(v[0]["online"], false);
    assert_eq!(v[0]["battery"], 55.0);
    assert_eq!(v[0]["last_seen"], d0 + 6 * 3_600_000);
    // 05:00 today: a's fix of today is later; the one of yesterday holds.
    let rfc = fieldcast_core::time::format_rfc3339_ms(d0 + 5 * 3_600_000);
    let (_, v) = get_json(gw.addr, &format!("/api/devices?at={rfc}"), &t).await;
    assert_eq!(at(&v)[0], ("a".into(), 1.0, d0 - 3_600_000));
    assert_eq!(v[0]["last_seen"], d0 + 3_600_000, "the status is newer");
    // Exactly at b's second fix: included (at or before).
    let (_, v) = get_json(
        gw.addr,
        &format!("/api/devices?at={}", d0 + 9 * 3_600_000),
        &t,
    )
    .await;
    assert_eq!(at(&v)[1], ("b".into(), 4.0, d0 + 9 * 3_600_000));
    // Scope, and bbox on the positions of then.
    let scoped = token(json!({"devices": ["b"]}));
    let (_, v) = get_json(
        gw.addr,
        &format!("/api/devices?at={}", d0 + 10 * 3_600_000),
        &scoped,
    )
    .await;
    assert_eq!(at(&v), vec![("b".into(), 4.0, d0 + 9 * 3_600_000)]);
    let (_, v) = get_json(
        gw.addr,
        &format!("/api/devices?at={}&bbox=0,0,2.5,2.5", d0 + 10 * 3_600_000),
        &t,
    )
    .await;
    assert_eq!(at(&v), vec![("a".into(), 2.0, d0 + 6 * 3_600_000)]);
    let (s, v) = get_json(gw.addr, "/api/devices?at=soon", &t).await;
    assert_eq!((s, v["error"]["code"].clone()), (400, json!("bad_request")));
    gw.stop().await;
}

/// Pins: `simplify` keeps the ends and the corners of a stored track and
/// drops what lies within the tolerance; `bucket` answers the first fix of
/// each epoch-aligned bucket; both page with `next` (csv's header too)
/// without a skip or a repeat.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn simplify_and_bucket_thin_a_track() {
    let (env, gw) = Env::migrated_with_gateway().await;
    let t0 = day0() + 12 * 3_600_000;
    // 600 s north, then 600 s east: one corner.
    let mut fixes = Vec::new();
    for i in 0..600i64 {
        fixes.push((t0 + i * 1000, 48.0 + i as f64 * 1e-4, 11.0));
    }
    for i in 0..600i64 {
        fixes.push((t0 + (600 + i) * 1000, 48.0 + 599e-4, 11.0 + i as f64 * 1e-4));
    }
    insert(&env, "s1", &fixes).await;
    let t = token(json!({}));
    let range = format!("from={t0}&to={}", t0 + 3_600_000);
    let ts_of = |v: &Value| -> Vec<i64> {
        v["points"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| p["ts"].as_i64().unwrap())
            .collect()
    };
    let (s, v) = get_json(
        gw.addr,
        &format!("/api/devices/s1/track?{range}&simplify=5"),
        &t,
    )
    .await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(ts_of(&v), vec![t0, t0 + 599_000, t0 + 1_199_000]);
    assert_eq!(v["next"], Value::Null);
    let (_, v) = get_json(
        gw.addr,
        &format!("/api/devices/s1/track?{range}&simplify=5&limit=2"),
        &t,
    )
    .await;
    assert_eq!(ts_of(&v), vec![t0, t0 + 599_000]);
    assert_eq!(v["next"], t0 + 1_199_000);
    let (s, next, body) = http(
        gw.addr,
        "GET",
        &format!("/api/devices/s1/track?{range}&simplify=5&limit=2&format=csv"),
        Some(&t),
        None,
    )
    .await;
    assert_eq!(s, 200);
    assert_eq!(next, (t0 + 1_199_000).to_string());
    assert_eq!(body.lines().count(), 3);
    let (_, v) = get_json(
        gw.addr,
        &format!("/api/devices/s1/track?{range}&simplify=5&format=geojson"),
        &t,
    )
    .await;
    assert_eq!(
        v["features"][0]["properties"]["times"],
        json!([t0, t0 + 599_000, t0 + 1_199_000])
    );

    // Buckets of 1 min, aligned on the epoch (t0 is on a full hour).
    let (s, v) = get_json(
        gw.addr,
        &format!("/api/devices/s1/track?{range}&bucket=1m"),
        &t,
    )
    .await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(
        ts_of(&v),
        (0..20).map(|m| t0 + m * 60_000).collect::<Vec<_>>()
    );
    // Paged from mid-bucket: the first fix, then the bucket starts.
    let mut from = t0 + 30_000;
    let mut all = Vec::new();
    loop {
        let (_, v) = get_json(
            gw.addr,
            &format!(
                "/api/devices/s1/track?from={from}&to={}&bucket=60000&limit=7",
                t0 + 3_600_000
            ),
            &t,
        )
        .await;
        all.extend(ts_of(&v));
        match v["next"].as_i64() {
            Some(n) => from = n,
            None => break,
        }
    }
    let mut want = vec![t0 + 30_000];
    want.extend((1..20).map(|m| t0 + m * 60_000));
    assert_eq!(all, want);
    let (_, next, body) = http(
        gw.addr,
        "GET",
        &format!("/api/devices/s1/track?{range}&bucket=5m&format=csv&limit=3"),
        Some(&t),
        None,
    )
    .await;
    assert_eq!(next, (t0 + 900_000).to_string());
    assert_eq!(body.lines().count(), 4);
    for bad in [
        "simplify=0",
        "simplify=-3",
        "simplify=x",
        "bucket=0",
        "bucket=soon",
        "bucket=400d",
    ] {
        let (s, v) = get_json(gw.addr, &format!("/api/devices/s1/track?{range}&{bad}"), &t).await;
        assert_eq!(s, 400, "{bad}");
        assert_eq!(v["error"]["code"], "bad_request");
    }
    gw.stop().await;
}

/// Pins: the summary has one line per device in scope (and in `group`),
/// with its trips' distance and time, its stops and its `alert.*` events.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn summary_per_device_and_group() {
    let (env, gw) = Env::migrated_with_gateway().await;
    let t0 = day0() + 10 * 3_600_000;
    let track = Track::new(t0).drive(300, 12.0).wait(900).drive(300, 12.0);
    insert(&env, "north-1", &track.fixes).await;
    insert(&env, "south-1", &Track::new(t0).drive(600, 10.0).fixes).await;
    env.pg
        .batch_execute(
            "INSERT INTO device_groups (device_id, group_name) VALUES ('north-1', 'north')",
        )
        .await
        .unwrap();
    for (id, kind) in [
        ("e1", "alert.overspeed"),
        ("e2", "alert.offline"),
        ("e3", "door"),
    ] {
        env.pg
            .execute(
                "INSERT INTO events (device_id, event_id, ts, kind, severity, received_at) \
                 VALUES ('north-1', $1, to_timestamp($2::float8 / 1000), $3, 'warning', now())",
                &[&id, &((t0 + 60_000) as f64), &kind],
            )
            .await
            .unwrap();
    }
    let t = token(json!({}));
    let range = format!("from={t0}&to={}", track.ts + 1);
    let (s, v) = get_json(gw.addr, &format!("/api/reports/summary?{range}"), &t).await;
    assert_eq!(s, 200, "{v}");
    let lines = v["devices"].as_array().unwrap();
    assert_eq!(lines.len(), 2, "{v}");
    assert_eq!(lines[0]["device"], "north-1");
    assert_eq!(lines[0]["trips"], 2);
    assert_eq!(lines[0]["stops"], 1);
    assert_eq!(lines[0]["alerts"], 2);
    let d = lines[0]["distance_m"].as_f64().unwrap();
    assert!((7100.0..7300.0).contains(&d), "{d}");
    assert_eq!(lines[1]["device"], "south-1");
    assert_eq!(lines[1]["driving_ms"], 600_000);
    assert_eq!(lines[1]["alerts"], 0);

    let (_, v) = get_json(
        gw.addr,
        &format!("/api/reports/summary?{range}&group=north"),
        &t,
    )
    .await;
    let names: Vec<&str> = v["devices"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l["device"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["north-1"]);
    let scoped = token(json!({"devices": ["south-*"]}));
    let (_, v) = get_json(gw.addr, &format!("/api/reports/summary?{range}"), &scoped).await;
    assert_eq!(v["devices"].as_array().unwrap().len(), 1);
    assert_eq!(v["devices"][0]["device"], "south-1");
    let (s, _) = get_json(gw.addr, &format!("/api/reports/summary?{range}&group="), &t).await;
    assert_eq!(s, 400);
    gw.stop().await;
}
