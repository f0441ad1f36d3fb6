//! Boxes across the 180° meridian (`minLon > maxLon`, PROTOCOL.md §4, §5;
//! issue #11, point 7) on `/ws` and `/api/devices?bbox=`, against the real
//! Redis geo index.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::collections::BTreeSet;

use serde_json::{json, Value};
use support::*;

const T0: i64 = 1_763_800_000_000;

fn ids(devices: &[Value]) -> BTreeSet<String> {
    devices
        .iter()
        .map(|d| d["device"].as_str().unwrap().to_owned())
        .collect()
}

async fn api_ids(gw: &Gateway, bbox: &str) -> Vec<String> {
    let (s, v) = get_json(
        gw.addr,
        &format!("/api/devices?bbox={bbox}"),
        &token(json!({})),
    )
    .await;
    assert_eq!(s, 200, "{bbox}: {v}");
    v.as_array()
        .unwrap()
        .iter()
        .map(|d| d["device"].as_str().unwrap().to_owned())
        .collect()
}

/// Pins: a box across the meridian gets the devices on both sides of it,
/// in its snapshot and live (entering from either side, moving across the
/// meridian, leaving once), and so does `/api/devices?bbox=`; the other
/// side of the world stays out, and the checks on latitude and range stay.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_box_across_the_meridian_gets_both_sides() {
    let env = Env::new().await;
    let gw = env.gateway().await;
    env.location("east", T0, 0.5, 179.5).await;
    env.location("west", T0, -0.5, -179.5).await;
    env.location("edge", T0, 0.0, 180.0).await;
    env.location("zero", T0, 0.5, 0.0).await; // the other side of the world
    env.location("north", T0, 5.0, 179.5).await; // right longitude, outside in lat
    env.location("far", T0, 0.5, 90.0).await;

    let mut ws = gw.ws(&token(json!({}))).await;
    let (snap, _) = ws
        .subscribe(json!({"bbox": [179.0, -1.0, -179.0, 1.0]}))
        .await;
    let want: BTreeSet<String> = ["east", "west", "edge"].map(String::from).into();
    assert_eq!(ids(&snap.unwrap()), want);

    env.location("far", T0 + 1, 0.2, -179.9).await; // enters from the west
    let v = ws.recv().await;
    assert_eq!(
        (v["device"].as_str(), v["ts"].as_i64()),
        (Some("far"), Some(T0 + 1))
    );
    env.location("north", T0 + 1, 0.0, 179.9).await; // enters from the east
    let v = ws.recv().await;
    assert_eq!(
        (v["device"].as_str(), v["ts"].as_i64()),
        (Some("north"), Some(T0 + 1))
    );
    env.location("west", T0 + 1, -0.5, 179.2).await; // crosses the meridian, inside
    let v = ws.recv().await;
    assert_eq!(
        (v["device"].as_str(), v["lon"].as_f64()),
        (Some("west"), Some(179.2))
    );
    env.location("east", T0 + 1, 0.5, 178.0).await; // leaves: sent once
    let v = ws.recv().await;
    assert_eq!(
        (v["device"].as_str(), v["lon"].as_f64()),
        (Some("east"), Some(178.0))
    );
    env.location("east", T0 + 2, 0.5, 177.0).await; // outside: not sent
    env.location("zero", T0 + 1, 0.6, 0.1).await; // never inside: not sent
    env.status("east", T0 + 3, false).await; // an outside device's status: not sent
    env.status("far", T0 + 3, true).await; // an inside device's status: sent
    let v = ws.recv().await;
    assert_eq!(
        (v["type"].as_str(), v["device"].as_str()),
        (Some("status"), Some("far"))
    );
    assert!(ws.sync().await.is_empty());

    // The same box over HTTP; a wider one (over 90° in all, read as the
    // whole fleet then filtered) too.
    assert_eq!(
        api_ids(&gw, "179,-1,-179,1").await,
        ["edge", "far", "north", "west"]
    );
    assert_eq!(
        api_ids(&gw, "100,-10,-100,10").await,
        ["east", "edge", "far", "north", "west"]
    );
    // A plain box still works, and does not wrap.
    assert_eq!(api_ids(&gw, "-1,0,1,1").await, ["zero"]);

    // Still refused: latitudes upside down, out-of-range values.
    for bad in ["179,1,-179,-1", "-181,0,0,1", "0,0,181,1", "0,-91,1,1"] {
        let (s, v) = get_json(
            gw.addr,
            &format!("/api/devices?bbox={bad}"),
            &token(json!({})),
        )
        .await;
        assert_eq!(
            (s, v["error"]["code"].as_str()),
            (400, Some("bad_request")),
            "{bad}"
        );
    }
    ws.send(json!({"op":"subscribe","ref":"b","bbox":[179.0, 1.0, -179.0, -1.0]}))
        .await;
    let v = ws.recv().await;
    assert_eq!(
        (v["type"].as_str(), v["code"].as_str()),
        (Some("error"), Some("bad_request"))
    );

    // A new plain box replaces the wrapped one: the far side is gone.
    let (snap, _) = ws.subscribe(json!({"bbox": [-1.0, 0.0, 1.0, 1.0]})).await;
    assert_eq!(ids(&snap.unwrap()), ["zero".to_owned()].into());
    env.location("far", T0 + 4, 0.3, -179.8).await;
    env.location("zero", T0 + 2, 0.7, 0.2).await;
    let v = ws.recv().await;
    assert_eq!(v["device"], "zero");
    assert!(ws.sync().await.is_empty());
    gw.stop().await;
}

/// Pins: scope still filters a wrapped box, snapshot and live.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_box_across_the_meridian_keeps_to_the_scope() {
    let env = Env::new().await;
    let gw = env.gateway().await;
    env.location("fiji-1", T0, -17.7, 178.4).await;
    env.location("samoa-1", T0, -13.8, -171.8).await;
    env.location("fiji-2", T0, -16.5, -179.9).await;
    let scoped = token(json!({"devices": ["fiji-*"]}));
    let mut ws = gw.ws(&scoped).await;
    let (snap, _) = ws
        .subscribe(json!({"bbox": [170.0, -20.0, -170.0, -10.0]}))
        .await;
    let want: BTreeSet<String> = ["fiji-1", "fiji-2"].map(String::from).into();
    assert_eq!(ids(&snap.unwrap()), want);
    env.location("samoa-1", T0 + 1, -13.9, -171.7).await; // out of scope
    env.location("fiji-2", T0 + 1, -16.6, 179.9).await;
    let v = ws.recv().await;
    assert_eq!(v["device"], "fiji-2");
    assert!(ws.sync().await.is_empty());
    let (s, v) = get_json(gw.addr, "/api/devices?bbox=170,-20,-170,-10", &scoped).await;
    assert_eq!(s, 200);
    assert_eq!(
        v.as_array()
            .unwrap()
            .iter()
            .map(|d| d["device"].as_str().unwrap())
            .collect::<Vec<_>>(),
        ["fiji-1", "fiji-2"]
    );
    gw.stop().await;
}
