//! `/api/*` against a real PostgreSQL: track and events pagination,
//! formats, limits, scope.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use serde_json::{json, Value};
use support::*;

const T0: i64 = 1_763_800_000_000;

async fn insert_track(env: &Env, device: &str, n: i64) {
    for i in 0..n {
        env.pg
            .execute(
                "INSERT INTO locations (device_id, ts, lat, lon, alt, received_at) \
                 VALUES ($1, to_timestamp($2::float8 / 1000), $3, $4, $5, now())",
                &[
                    &device,
                    &((T0 + i * 1000) as f64),
                    &(51.0 + i as f64 * 0.001234567890123),
                    &-0.5f64,
                    &(if i % 2 == 0 { Some(10.5f64) } else { None }),
                ],
            )
            .await
            .unwrap();
    }
}

/// Pins: keyset pages of a track cover every point once, in order, and
/// `next` is the following page's `from`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn track_pages_have_no_skip_or_repeat() {
    let env = Env::new().await;
    let gw = env.gateway().await;
    insert_track(&env, "t1", 25).await;
    insert_track(&env, "t2", 3).await;
    let t = token(json!({}));
    let to = T0 + 3_600_000;
    let mut from = T0 - 1;
    let mut all = Vec::new();
    loop {
        let (s, v) = get_json(
            gw.addr,
            &format!("/api/devices/t1/track?from={from}&to={to}&limit=7"),
            &t,
        )
        .await;
        assert_eq!(s, 200, "{v}");
        assert_eq!(v["device"], "t1");
        all.extend(v["points"].as_array().unwrap().iter().cloned());
        match v["next"].as_i64() {
            Some(n) => from = n,
            None => break,
        }
    }
    let ts: Vec<i64> = all.iter().map(|p| p["ts"].as_i64().unwrap()).collect();
    assert_eq!(ts, (0..25).map(|i| T0 + i * 1000).collect::<Vec<_>>());
    assert_eq!(
        all[3]["lat"].as_f64().unwrap(),
        51.0 + 3.0 * 0.001234567890123
    );
    assert_eq!(all[0]["alt"], json!(10.5));
    assert_eq!(all[1]["alt"], Value::Null);

    let (s, _, body) = http(
        gw.addr,
        "GET",
        &format!("/api/devices/t1/track?from={T0}&to={to}&format=geojson"),
        Some(&t),
        None,
    )
    .await;
    assert_eq!(s, 200);
    let g: Value = serde_json::from_str(&body).unwrap();
    let f = &g["features"][0];
    assert_eq!(f["geometry"]["type"], "LineString");
    assert_eq!(f["geometry"]["coordinates"].as_array().unwrap().len(), 25);
    assert_eq!(f["geometry"]["coordinates"][0], json!([-0.5, 51.0]));
    assert_eq!(f["properties"]["device"], "t1");
    assert_eq!(f["properties"]["times"][1], json!(T0 + 1000));

    let (s, next, body) = http(
        gw.addr,
        "GET",
        &format!("/api/devices/t1/track?from={T0}&to={to}&format=csv&limit=10"),
        Some(&t),
        None,
    )
    .await;
    assert_eq!(s, 200);
    let lines: Vec<&str> = body.lines().collect();
    assert_eq!(lines[0], "ts,lat,lon,alt,speed,heading,accuracy");
    assert_eq!(lines.len(), 11);
    assert!(
        lines[1].starts_with("2025-11-22T08:26:40.000Z,51,-0.5,10.5,"),
        "{}",
        lines[1]
    );
    assert_eq!(next, (T0 + 10_000).to_string());

    for bad in [
        "limit=100001",
        "limit=0",
        "from=yesterday",
        "format=xml",
        &format!("from={to}&to={T0}"),
    ] {
        let (s, v) = get_json(gw.addr, &format!("/api/devices/t1/track?{bad}"), &t).await;
        assert_eq!(s, 400, "{bad}");
        assert_eq!(v["error"]["code"], "bad_request");
    }
    let (s, v) = get_json(
        gw.addr,
        "/api/devices/t1/track?from=2025-11-22T08:26:40Z&to=2025-11-22T08:26:43Z",
        &t,
    )
    .await;
    assert_eq!(s, 200);
    assert_eq!(v["points"].as_array().unwrap().len(), 3);
    gw.stop().await;
}

/// Pins: events sharing a `ts` are paged by an opaque cursor with no event
/// skipped or repeated; filters and scope apply.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_pages_have_no_skip_or_repeat() {
    let env = Env::new().await;
    let gw = env.gateway().await;
    let mut want = Vec::new();
    for i in 0..23i64 {
        let device = if i % 3 == 0 { "van-1" } else { "truck-1" };
        let ts = T0 + (i / 5) * 1000; // five events per timestamp
        let kind = if i % 2 == 0 { "panic" } else { "door" };
        env.pg
            .execute(
                "INSERT INTO events (device_id, event_id, ts, kind, severity, data, received_at) \
                 VALUES ($1, $2, to_timestamp($3::float8 / 1000), $4, 'info', $5, now())",
                &[
                    &device,
                    &format!("e{i:02}"),
                    &(ts as f64),
                    &kind,
                    &json!({"i": i}),
                ],
            )
            .await
            .unwrap();
        want.push((device.to_owned(), format!("e{i:02}")));
    }
    let t = token(json!({}));
    let range = format!("from={}&to={}", T0 - 1, T0 + 3_600_000);
    let mut cursor = String::new();
    let mut got = Vec::new();
    loop {
        let (s, v) = get_json(
            gw.addr,
            &format!("/api/events?{range}&limit=4&cursor={cursor}"),
            &t,
        )
        .await;
        assert_eq!(s, 200, "{v}");
        for e in v["events"].as_array().unwrap() {
            got.push((
                e["device"].as_str().unwrap().to_owned(),
                e["id"].as_str().unwrap().to_owned(),
            ));
            assert!(e["data"]["i"].is_number());
        }
        match v["next"].as_str() {
            Some(n) => cursor = n.to_owned(),
            None => break,
        }
    }
    let mut sorted = want.clone();
    sorted.sort();
    let mut got_sorted = got.clone();
    got_sorted.sort();
    assert_eq!(got_sorted, sorted, "skip or repeat");
    assert_eq!(got.len(), 23);

    let (_, v) = get_json(
        gw.addr,
        &format!("/api/events?{range}&device=van-1&kind=panic"),
        &t,
    )
    .await;
    let ids: Vec<&str> = v["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, ["e00", "e06", "e12", "e18"]);

    let scoped = token(json!({"devices": ["truck-?"]}));
    let (_, v) = get_json(gw.addr, &format!("/api/events?{range}&limit=100"), &scoped).await;
    assert!(v["events"]
        .as_array()
        .unwrap()
        .iter()
        .all(|e| e["device"] == "truck-1"));
    assert_eq!(v["events"].as_array().unwrap().len(), 15);
    let (_, v) = get_json(
        gw.addr,
        &format!("/api/events?{range}&device=van-1"),
        &scoped,
    )
    .await;
    assert_eq!(v["events"], json!([]));
    assert_eq!(get_json(gw.addr, "/api/events?cursor=zz", &t).await.0, 400);
    gw.stop().await;
}
