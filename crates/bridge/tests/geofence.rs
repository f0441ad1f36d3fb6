//! Geofence transitions through the real bridge (docs/geofences.md): fences
//! written to PostgreSQL as the API writes them, loaded by every bridge,
//! each membership change decided once in `location.lua` and turned into
//! one `geofence_enter` / `geofence_exit` event, stored in `events` and
//! logged in Redis once, whatever the redeliveries, the number of bridges
//! and the order the locations arrive in.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::sync::Arc;

use fred::prelude::*;
use rumqttc::QoS;
use serde_json::json;

use fieldcast_bridge::fences::{Fences, Snapshot};
use fieldcast_bridge::metrics::Metrics;
use fieldcast_bridge::queue::Batch;
use fieldcast_bridge::record::LiveLocation;
use fieldcast_bridge::store::redis::RedisSink;
use fieldcast_core::{DeviceId, Location};
use fieldcast_geofence::{Fence, FenceId};
use fieldcast_testkit::{unique, wait_until};
use support::*;

/// A 0.01° square (about 1.1 km x 0.7 km) at 50° N, 10° E.
const LAT0: f64 = 50.0;
const LON0: f64 = 10.0;
const INSIDE: (f64, f64) = (50.005, 10.005);
const OUTSIDE: (f64, f64) = (49.995, 10.005);

fn square_feature(name: &str) -> serde_json::Value {
    json!({"type": "Feature", "properties": {"name": name, "severity": "warning"},
        "geometry": {"type": "Polygon", "coordinates": [[
            [LON0, LAT0], [LON0 + 0.01, LAT0], [LON0 + 0.01, LAT0 + 0.01],
            [LON0, LAT0 + 0.01], [LON0, LAT0]]]}})
}

/// Stores a fence as the API does and returns its id.
async fn add_fence(h: &Harness, name: &str) -> u64 {
    let c = h.db.client().await.unwrap();
    let row = c
        .query_one(
            "INSERT INTO geofences (feature) VALUES ($1::text::jsonb) RETURNING id",
            &[&square_feature(name).to_string()],
        )
        .await
        .unwrap();
    row.get::<_, i64>(0) as u64
}

/// Waits until the bridge holds `fences` live fences.
async fn wait_loaded(m: &Metrics, fences: usize) {
    let r = wait_until(WAIT, "fences loaded", || async move {
        metric(&m.encode(), "fieldcast_bridge_geofences") == fences as f64
    })
    .await;
    assert!(r.is_ok(), "{}", m.encode());
}

async fn locate(dev: &Device, id: &str, ts: i64, (lat, lon): (f64, f64)) {
    dev.publish(
        &format!("devices/{id}/location"),
        QoS::AtLeastOnce,
        false,
        json!({"ts": ts, "lat": lat, "lon": lon}).to_string(),
    )
    .await;
}

/// The device's geofence events in PostgreSQL, oldest first: (kind, id, data).
async fn stored(h: &Harness, id: &str) -> Vec<(String, String, serde_json::Value)> {
    let c = h.db.client().await.unwrap();
    c.query(
        "SELECT kind, event_id, data FROM events WHERE device_id = $1 AND kind LIKE 'geofence_%' ORDER BY ts, kind DESC",
        &[&id],
    )
    .await
    .unwrap()
    .iter()
    .map(|r| (r.get(0), r.get(1), r.get(2)))
    .collect()
}

/// A device drives through a polygon: one enter, one exit, with two
/// bridges sharing the subscription and every location sent twice (each
/// copy may go to either bridge, the two race to apply it).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_drive_through_a_polygon_gives_one_enter_and_one_exit() {
    fieldcast_testkit::init_tracing();
    let mut h = Harness::private().await;
    h.extra = vec!["--mqtt-shared-group".into(), unique("grp")];
    let a = h.start().await;
    h.client_id = unique("bridge-b");
    let b = h.start().await;
    let fence = add_fence(&h, "depot").await;
    wait_loaded(&a.handles.metrics, 1).await;
    wait_loaded(&b.handles.metrics, 1).await;

    let dev = device(&h.mqtt_url).await;
    let id = unique("truck");
    let t0 = now_ms() - 60_000;
    let path = [OUTSIDE, OUTSIDE, INSIDE, INSIDE, INSIDE, OUTSIDE, OUTSIDE];
    for (i, &at) in path.iter().enumerate() {
        let ts = t0 + 1000 * i as i64;
        for _ in 0..2 {
            locate(&dev, &id, ts, at).await;
        }
        h.wait_field(&id, "ts", ts).await;
    }
    h.wait_count(
        &format!("SELECT count(*) FROM events WHERE device_id = '{id}'"),
        2,
    )
    .await;
    h.wait_transitions_drained().await;
    let events = stored(&h, &id).await;
    assert_eq!(
        events,
        vec![
            (
                "geofence_enter".to_string(),
                format!("geofence-enter-{fence}-{}", t0 + 2000),
                json!({"geofence": fence, "name": "depot"})
            ),
            (
                "geofence_exit".to_string(),
                format!("geofence-exit-{fence}-{}", t0 + 5000),
                json!({"geofence": fence, "name": "depot"})
            ),
        ]
    );
    let c = h.db.client().await.unwrap();
    let sev: String = c
        .query_one(
            "SELECT min(severity) FROM events WHERE device_id = $1",
            &[&id],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(sev, "warning", "the fence's severity");
    assert_eq!(
        h.logged_events(&id, "geofence_").await.len(),
        2,
        "each logged once in Redis"
    );
    assert_eq!(h.state(&id).await.get("gf"), None, "outside: no membership");
    a.stop().await;
    b.stop().await;
}

/// Locations arriving out of order around the boundary: only the one that
/// becomes the newest decides, so older ones from either side change
/// nothing — no spurious exit/enter pair.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn out_of_order_locations_around_a_boundary_give_no_spurious_transition() {
    fieldcast_testkit::init_tracing();
    let h = Harness::private().await;
    let a = h.start().await;
    let fence = add_fence(&h, "yard").await;
    wait_loaded(&a.handles.metrics, 1).await;
    let dev = device(&h.mqtt_url).await;
    let id = unique("van");
    let t = now_ms() - 60_000;
    // Newest first (inside), then older fixes from both sides of the edge.
    locate(&dev, &id, t + 10_000, INSIDE).await;
    h.wait_field(&id, "ts", t + 10_000).await;
    for (dt, at) in [
        (8_000, OUTSIDE),
        (9_000, INSIDE),
        (7_000, OUTSIDE),
        (9_500, OUTSIDE),
    ] {
        locate(&dev, &id, t + dt, at).await;
    }
    // A newer one inside: still inside, nothing to say.
    locate(&dev, &id, t + 11_000, INSIDE).await;
    h.wait_field(&id, "ts", t + 11_000).await;
    // Wait for the older ones to be judged stale or coalesced away in the
    // queue (they were sent before the newest).
    let m = &a.handles.metrics;
    let r = wait_until(WAIT, "stale judged", || async move {
        let text = m.encode();
        metric(&text, "fieldcast_bridge_stale_total{kind=\"location\"}")
            + metric(&text, "fieldcast_bridge_coalesced_total")
            == 4.0
    })
    .await;
    assert!(r.is_ok(), "{}", m.encode());
    h.wait_transitions_drained().await;
    h.wait_count(
        &format!("SELECT count(*) FROM events WHERE device_id = '{id}'"),
        1,
    )
    .await;
    let events = stored(&h, &id).await;
    assert_eq!(events.len(), 1, "{events:?}");
    assert_eq!(
        events[0].1,
        format!("geofence-enter-{fence}-{}", t + 10_000)
    );
    assert_eq!(
        h.state(&id).await.get("gf").cloned(),
        Some(fence.to_string())
    );
    a.stop().await;
}

/// Fences follow the database without a restart: a fence added while the
/// device sits inside its area gives an enter at the next location, one
/// deleted gives the exit (with the deleted fence's name).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn fence_changes_are_loaded_without_a_restart() {
    fieldcast_testkit::init_tracing();
    let h = Harness::private().await;
    let a = h.start().await;
    let m = a.handles.metrics.clone();
    let dev = device(&h.mqtt_url).await;
    let id = unique("bus");
    let t = now_ms() - 60_000;
    locate(&dev, &id, t, INSIDE).await;
    h.wait_field(&id, "ts", t).await;
    let fence = add_fence(&h, "school").await;
    wait_loaded(&m, 1).await;
    locate(&dev, &id, t + 1000, INSIDE).await;
    h.wait_count(
        &format!(
            "SELECT count(*) FROM events WHERE device_id = '{id}' AND kind = 'geofence_enter'"
        ),
        1,
    )
    .await;
    let c = h.db.client().await.unwrap();
    c.execute(
        "UPDATE geofences SET deleted_at = now() WHERE id = $1",
        &[&(fence as i64)],
    )
    .await
    .unwrap();
    wait_loaded(&m, 0).await;
    locate(&dev, &id, t + 2000, INSIDE).await;
    h.wait_count(
        &format!("SELECT count(*) FROM events WHERE device_id = '{id}' AND kind = 'geofence_exit'"),
        1,
    )
    .await;
    h.wait_transitions_drained().await;
    let events = stored(&h, &id).await;
    assert_eq!(
        events.iter().map(|e| e.1.clone()).collect::<Vec<_>>(),
        vec![
            format!("geofence-enter-{fence}-{}", t + 1000),
            format!("geofence-exit-{fence}-{}", t + 2000)
        ]
    );
    assert_eq!(events[1].2, json!({"geofence": fence, "name": "school"}));
    a.stop().await;
}

fn fix(id: &str, ts: i64, (lat, lon): (f64, f64)) -> Batch {
    Batch {
        locations: vec![LiveLocation {
            device: DeviceId::parse(id).unwrap(),
            loc: Location::point(ts, lat, lon),
            rx: ts,
        }],
        ..Batch::default()
    }
}

/// The version rule, through the location step alone: a bridge still on
/// an older configuration cannot undo a membership a newer one decided,
/// and a bridge with none loaded leaves memberships alone.
#[tokio::test]
async fn an_older_configuration_never_overrides_a_newer_decision() {
    fieldcast_testkit::init_tracing();
    let h = Harness::with_redis("mqtt://127.0.0.1:1", &fieldcast_testkit::shared_redis_url()).await;
    let keys = h.keys();
    let fence = Fence::from_feature(FenceId(5), &square_feature("f")).unwrap();
    let sink_with = |version: i64, fences: Vec<Fence>| {
        let f = Arc::new(Fences::default());
        if version > 0 {
            f.replace(Snapshot::new(version, fences, [], Default::default()));
        }
        RedisSink::new(h.redis.clone(), keys.clone()).with_fences(f)
    };
    let new = sink_with(2, vec![fence]);
    let old = sink_with(1, vec![]);
    let none = sink_with(0, vec![]);
    let metrics = Metrics::new();
    let id = unique("d");
    let t = now_ms();
    let gf = || async { h.state(&id).await.get("gf").cloned() };

    let a = new.apply(&fix(&id, t, INSIDE), &metrics).await.unwrap();
    assert_eq!((a.published, a.membership_changes), (1, 1));
    assert_eq!(gf().await.as_deref(), Some("5"));
    // The old configuration has no fence: it would say "outside".
    let a = old.apply(&fix(&id, t + 1, INSIDE), &metrics).await.unwrap();
    assert_eq!((a.published, a.membership_changes), (1, 0));
    assert_eq!(gf().await.as_deref(), Some("5"), "older version ignored");
    let a = none
        .apply(&fix(&id, t + 2, OUTSIDE), &metrics)
        .await
        .unwrap();
    assert_eq!((a.published, a.membership_changes), (1, 0));
    assert_eq!(
        gf().await.as_deref(),
        Some("5"),
        "no configuration: left alone"
    );
    // A stale location with the newest configuration: nothing.
    let a = new
        .apply(&fix(&id, t - 1, OUTSIDE), &metrics)
        .await
        .unwrap();
    assert_eq!((a.published, a.stale_locations), (0, 1));
    let a = new
        .apply(&fix(&id, t + 3, OUTSIDE), &metrics)
        .await
        .unwrap();
    assert_eq!(a.membership_changes, 1);
    assert_eq!(gf().await, None);

    let (_, part) = keys.of(&id);
    let entries: Vec<(String, std::collections::HashMap<String, String>)> = h
        .redis
        .xrange(&part.transitions, "-", "+", None)
        .await
        .unwrap();
    let got: Vec<(String, String, String)> = entries
        .into_iter()
        .map(|(_, f)| (f["ts"].clone(), f["prev"].clone(), f["next"].clone()))
        .collect();
    assert_eq!(
        got,
        vec![
            (t.to_string(), String::new(), "5".to_string()),
            ((t + 3).to_string(), "5".to_string(), String::new()),
        ]
    );
}
