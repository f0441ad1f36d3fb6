//! The bridge's broker session: resubscribing after the broker forgets it,
//! a reconnect storm of retained status against a small queue (both on
//! either broker), and two bridges sharing the load through a Mosquitto
//! `$share` group.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::time::Duration;

use rumqttc::QoS;
use serde_json::json;

use fieldcast_testkit::{unique, wait_until};
use support::*;

/// Pins: when the broker restarts without its sessions (persistence off),
/// the bridge reconnects with backoff, sees `session_present=false`,
/// subscribes again, and takes new messages without manual action. On
/// NATS: the bridge turns not-ready, reconnects and pulls again from the
/// stream the restarted server kept on disk.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resubscribes_after_broker_loses_the_session() {
    let mut h = Harness::private().await;
    let bridge = h.start().await;
    h.kill_broker();
    let health = bridge.handles.health.clone();
    wait_until(
        Duration::from_secs(5),
        "not ready without the broker",
        || {
            let health = health.clone();
            async move { !health.ready() }
        },
    )
    .await
    .unwrap();
    h.restart_broker().await;
    let health = bridge.handles.health.clone();
    wait_until(WAIT, "ready after the broker returns", || {
        let health = health.clone();
        async move { health.ready() }
    })
    .await
    .unwrap();
    let dev = device(&h.mqtt_url).await;
    let id = unique("back");
    dev.publish(
        &format!("devices/{id}/status"),
        QoS::AtLeastOnce,
        false,
        json!({"online": true}).to_string(),
    )
    .await;
    let hh = &h;
    let idr = &id;
    wait_until(WAIT, "message after resubscribe", || async move {
        hh.state(idr).await.contains_key("online")
    })
    .await
    .unwrap();
    let m = bridge.handles.metrics.encode();
    assert!(metric(&m, h.reconnects_metric()) >= 1.0);
    bridge.stop().await;
}

/// Pins: thousands of devices' retained statuses arriving at once (a
/// reconnect storm) go through a reliable lane of 50 without loss or
/// deadlock: the broker's inflight window (on NATS: the consumer's
/// max_ack_pending, 50 with the queue) holds the rest back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retained_status_storm_through_a_small_queue() {
    const N: usize = 3000;
    let mut h = Harness::private().await;
    h.extra = vec![
        "--queue-capacity".into(),
        "50".into(),
        "--sink-batch".into(),
        "20".into(),
    ];
    // JetStream keeps only what is published once its stream exists (the
    // bridge makes it; retained messages are for MQTT subscribers): on
    // NATS the storm comes while the bridge runs.
    let bridge = if h.on_nats() {
        Some(h.start().await)
    } else {
        None
    };
    let dev = device(&h.mqtt_url).await;
    let prefix = unique("storm");
    let ts = now_ms() - 1000;
    for i in 0..N {
        dev.publish(
            &format!("devices/{prefix}-{i}/status"),
            QoS::AtLeastOnce,
            true,
            json!({"online": true, "battery": (i % 100) as f64, "ts": ts}).to_string(),
        )
        .await;
    }
    // Everything retained is on the broker before the bridge subscribes.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let bridge = match bridge {
        Some(running) => running,
        None => h.start().await,
    };
    h.wait_count("SELECT count(*) FROM device_status", N as i64)
        .await;
    let hh = &h;
    wait_until(WAIT, "every device in the hot state", || async move {
        hh.fleet_size().await == N as i64
    })
    .await
    .unwrap();
    // Each status applied once. On NATS a status may also come a second
    // time, through the QoS 1 lane bound during the storm (docs/nats.md,
    // the handoff): not newer than itself, so counted stale, not applied.
    // Such a copy is counted when taken and stale when its Redis step
    // is done: wait for the last one (a status applied twice would keep
    // the difference above N for good).
    let applied = |m: &str| {
        metric(m, "fieldcast_bridge_messages_total{kind=\"status\"}")
            - metric_opt(m, "fieldcast_bridge_stale_total{kind=\"status\"}").unwrap_or(0.0)
    };
    let metrics = &bridge.handles.metrics;
    let settled = wait_until(WAIT, "every status applied once", || async move {
        let m = metrics.encode();
        applied(&m) == N as f64 && metric(&m, "fieldcast_bridge_acks_pending") == 0.0
    })
    .await;
    let m = bridge.handles.metrics.encode();
    assert!(settled.is_ok(), "applied {} of {N}", applied(&m));
    if !h.on_nats() {
        assert_eq!(
            metric_opt(&m, "fieldcast_bridge_stale_total{kind=\"status\"}"),
            Some(0.0)
        );
    }
    bridge.stop().await;
}

/// Pins: two bridges in one `$share` group split the stream: each event is
/// stored and pushed exactly once, and both bridges take part.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shared_group_splits_the_load() {
    const N: usize = 400;
    let mut h = Harness::private().await;
    let group = unique("grp");
    h.extra = vec!["--mqtt-shared-group".into(), group];
    let a = h.start().await;
    h.client_id = unique("bridge-b");
    let b = h.start().await;
    let dev = device(&h.mqtt_url).await;
    let id = unique("shared");
    for i in 0..N {
        dev.publish(
            &format!("devices/{id}/events"),
            QoS::AtLeastOnce,
            false,
            json!({"id": format!("e{i}"), "kind": "k"}).to_string(),
        )
        .await;
    }
    h.wait_count("SELECT count(*) FROM events", N as i64).await;
    let hh = &h;
    wait_until(WAIT, "event log", || async move {
        hh.event_log_len(&hh.redis).await == N as i64
    })
    .await
    .unwrap();
    let taken = |r: &Running| {
        metric(
            &r.handles.metrics.encode(),
            "fieldcast_bridge_messages_total{kind=\"event\"}",
        )
    };
    let (ta, tb) = (taken(&a), taken(&b));
    assert_eq!(ta + tb, N as f64, "each message to exactly one bridge");
    assert!(ta > 0.0 && tb > 0.0, "both bridges take part: {ta} / {tb}");
    a.stop().await;
    b.stop().await;
}
