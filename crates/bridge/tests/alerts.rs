//! Alert rules through the real bridge (docs/alerts.md): rules written to
//! PostgreSQL as `/api/rules` writes them, loaded without a restart, and
//! each alert an event (`alert.<kind>`) stored once in `events` and logged
//! once in Redis, however often its message is redelivered; a rule's
//! webhook gets the alert, signed, exactly once with a 2xx.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::time::Duration;

use axum::http::StatusCode;
use rumqttc::QoS;
use serde_json::json;

use fieldcast_bridge::metrics::Metrics;
use fieldcast_testkit::{unique, wait_until};
use support::endpoint::{expected_signature, Endpoint};
use support::*;

/// Stores a rule as the API does and returns its id.
async fn add_rule(h: &Harness, rule: serde_json::Value) -> u64 {
    let c = h.db.client().await.unwrap();
    let row = c
        .query_one(
            "INSERT INTO alert_rules (rule) VALUES ($1::text::jsonb) RETURNING id",
            &[&rule.to_string()],
        )
        .await
        .unwrap();
    row.get::<_, i64>(0) as u64
}

/// Waits until the bridge holds the configuration version of the database.
async fn wait_loaded(h: &Harness, m: &Metrics) {
    let c = h.db.client().await.unwrap();
    let v: i64 = c
        .query_one("SELECT version FROM config_version", &[])
        .await
        .unwrap()
        .get(0);
    let r = wait_until(WAIT, "configuration loaded", || async move {
        metric(&m.encode(), "fieldcast_bridge_config_version") == v as f64
    })
    .await;
    assert!(r.is_ok(), "{}", m.encode());
}

async fn send(dev: &Device, topic: String, payload: serde_json::Value) {
    dev.publish(&topic, QoS::AtLeastOnce, false, payload.to_string())
        .await;
}

/// The device's alerts in PostgreSQL, oldest first: (kind, id, severity, data).
async fn alerts(h: &Harness, id: &str) -> Vec<(String, String, String, serde_json::Value)> {
    let c = h.db.client().await.unwrap();
    c.query(
        "SELECT kind, event_id, severity, data FROM events
          WHERE device_id = $1 AND kind LIKE 'alert.%' ORDER BY ts, event_id",
        &[&id],
    )
    .await
    .unwrap()
    .iter()
    .map(|r| (r.get(0), r.get(1), r.get(2), r.get(3)))
    .collect()
}

/// Overspeed: above the limit for at least `for`, once per episode (a fix
/// under the limit ends one), every fix sent twice; the rule's webhook
/// fails three times, then takes each alert once, signed.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn overspeed_trips_once_per_episode_and_its_webhook_gets_it_once() {
    fieldcast_testkit::init_tracing();
    let (ep, url) = Endpoint::start(|n| {
        let status = if n < 3 {
            StatusCode::INTERNAL_SERVER_ERROR
        } else {
            StatusCode::OK
        };
        (status, Duration::ZERO)
    })
    .await;
    let mut h = Harness::private().await;
    h.extra = [
        "--webhook-retry-min",
        "20ms",
        "--webhook-retry-max",
        "100ms",
    ]
    .map(String::from)
    .to_vec();
    let b = h.start().await;
    let id = unique("truck");
    let rule = add_rule(
        &h,
        json!({"kind": "overspeed", "devices": [format!("{id}*")], "speed": 20.0, "for": "2s",
               "severity": "critical", "webhook": {"url": url, "secret": "s3cret"}}),
    )
    .await;
    wait_loaded(&h, &b.handles.metrics).await;
    let dev = device(&h.mqtt_url).await;
    let t = now_ms() - 60_000;
    // (offset s, speed): an episode from 0 s, tripping at 2 s; a fix under
    // the limit at 4 s; a second episode from 5 s, tripping at 8 s.
    let fixes = [
        (0, 25.0),
        (1, 26.0),
        (2, 27.0),
        (3, 28.0),
        (4, 10.0),
        (5, 30.0),
        (6, 30.0),
        (8, 31.0),
        (9, 31.0),
    ];
    for (s, speed) in fixes {
        let ts = t + 1000 * s;
        for _ in 0..2 {
            send(
                &dev,
                format!("devices/{id}/location"),
                json!({"ts": ts, "lat": 51.5, "lon": -0.1, "speed": speed}),
            )
            .await;
        }
        h.wait_field(&id, "ts", ts).await;
    }
    h.wait_count(
        &format!("SELECT count(*) FROM events WHERE device_id = '{id}'"),
        2,
    )
    .await;
    h.wait_transitions_drained().await;
    let got = alerts(&h, &id).await;
    assert_eq!(
        got,
        vec![
            (
                "alert.overspeed".to_string(),
                format!("alert-overspeed-{rule}-{t}"),
                "critical".to_string(),
                json!({"rule": rule, "speed": 27.0, "limit": 20.0, "since": t})
            ),
            (
                "alert.overspeed".to_string(),
                format!("alert-overspeed-{rule}-{}", t + 5000),
                "critical".to_string(),
                json!({"rule": rule, "speed": 31.0, "limit": 20.0, "since": t + 5000})
            ),
        ]
    );
    assert_eq!(
        h.logged_events(&id, "\"alert.").await.len(),
        2,
        "each logged once in Redis"
    );

    // The webhook: 3 failures, then each alert once with a 2xx.
    let e = &ep;
    let r = wait_until(WAIT, "both alerts delivered", || async move {
        e.seen().iter().filter(|r| r.status.is_success()).count() == 2
    })
    .await;
    assert!(r.is_ok(), "{:?}", ep.seen().len());
    let seen = ep.seen();
    let ok: Vec<_> = seen.iter().filter(|r| r.status.is_success()).collect();
    let mut ids = Vec::new();
    for r in &ok {
        assert_eq!(
            r.signature.as_deref(),
            Some(expected_signature("s3cret", &r.body).as_str())
        );
        let body: serde_json::Value = serde_json::from_slice(&r.body).unwrap();
        assert_eq!(body["type"], "event");
        assert_eq!(body["device"], json!(id));
        assert_eq!(body["kind"], "alert.overspeed");
        ids.push(body["id"].as_str().unwrap().to_owned());
    }
    ids.sort();
    let mut want = vec![
        format!("alert-overspeed-{rule}-{t}"),
        format!("alert-overspeed-{rule}-{}", t + 5000),
    ];
    want.sort();
    assert_eq!(ids, want, "each alert delivered once");
    assert_eq!(seen.len(), 5, "3 failures, then 2 deliveries");
    b.stop().await;
}

/// Low battery trips on the way down through the level only; a Last Will
/// trips `offline`; a device event of a named kind is re-raised with the
/// rule's severity; redeliveries change nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn low_battery_offline_and_event_rules_trip_once() {
    fieldcast_testkit::init_tracing();
    let h = Harness::private().await;
    let b = h.start().await;
    let id = unique("cam");
    let low = add_rule(&h, json!({"kind": "low_battery", "battery": 20})).await;
    let off = add_rule(&h, json!({"kind": "offline", "severity": "critical"})).await;
    let panic = add_rule(
        &h,
        json!({"kind": "event", "event_kind": "panic", "severity": "critical"}),
    )
    .await;
    // A rule for other devices only.
    add_rule(
        &h,
        json!({"kind": "low_battery", "battery": 90, "devices": ["nobody-*"]}),
    )
    .await;
    wait_loaded(&h, &b.handles.metrics).await;
    let dev = device(&h.mqtt_url).await;
    let t = now_ms() - 60_000;
    for (s, battery) in [(0, 50.0), (1, 15.0), (2, 10.0), (3, 30.0), (4, 12.0)] {
        let ts = t + 1000 * s;
        for _ in 0..2 {
            send(
                &dev,
                format!("devices/{id}/status"),
                json!({"ts": ts, "online": true, "battery": battery}),
            )
            .await;
        }
        h.wait_field(&id, "sts", ts).await;
    }
    for _ in 0..2 {
        send(
            &dev,
            format!("devices/{id}/events"),
            json!({"id": "e1", "ts": t + 5000, "kind": "panic", "severity": "info"}),
        )
        .await;
        send(
            &dev,
            format!("devices/{id}/events"),
            json!({"id": "e2", "ts": t + 5000, "kind": "door"}),
        )
        .await;
    }
    // The Last Will: a status without ts.
    send(
        &dev,
        format!("devices/{id}/status"),
        json!({"online": false}),
    )
    .await;
    h.wait_count(
        &format!("SELECT count(*) FROM events WHERE device_id = '{id}' AND kind LIKE 'alert.%'"),
        4,
    )
    .await;
    h.wait_transitions_drained().await;
    let got = alerts(&h, &id).await;
    let c = h.db.client().await.unwrap();
    let will_ts: i64 = c
        .query_one(
            "SELECT (extract(epoch FROM ts) * 1000)::bigint FROM device_status
              WHERE device_id = $1 AND NOT online",
            &[&id],
        )
        .await
        .unwrap()
        .get(0);
    let mut want = vec![
        (
            "alert.low_battery".to_string(),
            format!("alert-low_battery-{low}-{}", t + 1000),
            "warning".to_string(),
            json!({"rule": low, "battery": 15.0, "limit": 20.0}),
        ),
        (
            "alert.low_battery".to_string(),
            format!("alert-low_battery-{low}-{}", t + 4000),
            "warning".to_string(),
            json!({"rule": low, "battery": 12.0, "limit": 20.0}),
        ),
        (
            "alert.event".to_string(),
            format!("alert-event-{panic}-e1"),
            "critical".to_string(),
            json!({"rule": panic, "event": "e1", "event_kind": "panic"}),
        ),
    ];
    let offline = got
        .iter()
        .find(|a| a.0 == "alert.offline")
        .cloned()
        .expect("an offline alert");
    assert!(
        offline.1.starts_with(&format!("alert-offline-{off}-")),
        "{offline:?}"
    );
    assert_eq!(offline.2, "critical");
    let offline_ts: i64 = offline.1.rsplit('-').next().unwrap().parse().unwrap();
    assert!(
        (offline_ts - will_ts).abs() <= 1,
        "the Last Will's ts: {offline_ts} vs {will_ts}"
    );
    want.push(offline);
    let mut got = got;
    got.sort_by(|a, b| a.1.cmp(&b.1));
    want.sort_by(|a, b| a.1.cmp(&b.1));
    assert_eq!(got, want);
    assert_eq!(
        h.logged_events(&id, "\"alert.").await.len(),
        4,
        "each logged once in Redis"
    );
    b.stop().await;
}

/// A device silent for `after` is reported once, however many sweeps and
/// bridges see it; a message ends the silence, and the next one is
/// reported again.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_inactive_device_is_reported_once_per_silence() {
    fieldcast_testkit::init_tracing();
    let mut h = Harness::private().await;
    h.extra = vec!["--mqtt-shared-group".into(), unique("grp")];
    let a = h.start().await;
    h.client_id = unique("bridge-b");
    let b = h.start().await;
    let id = unique("sensor");
    let rule = add_rule(
        &h,
        json!({"kind": "inactive", "after": "2s", "devices": [id]}),
    )
    .await;
    wait_loaded(&h, &a.handles.metrics).await;
    wait_loaded(&h, &b.handles.metrics).await;
    let dev = device(&h.mqtt_url).await;
    let t = now_ms();
    send(
        &dev,
        format!("devices/{id}/location"),
        json!({"ts": t, "lat": 51.5, "lon": -0.1}),
    )
    .await;
    h.wait_field(&id, "ts", t).await;
    let sql = format!("SELECT count(*) FROM events WHERE device_id = '{id}'");
    h.wait_count(&sql, 1).await;
    // Several more sweeps (every second with a 2 s rule) by either bridge:
    // still one. Waited for through the sweeps' own count, not a clock.
    let (ma, mb) = (a.handles.metrics.clone(), b.handles.metrics.clone());
    let sweeps = || {
        metric(&ma.encode(), "fieldcast_bridge_inactive_sweeps_total")
            + metric(&mb.encode(), "fieldcast_bridge_inactive_sweeps_total")
    };
    let after_first = sweeps();
    let r = wait_until(WAIT, "three more sweeps", || async {
        sweeps() >= after_first + 3.0
    })
    .await;
    assert!(r.is_ok());
    assert_eq!(h.count(&sql).await, 1, "reported once");
    let got = alerts(&h, &id).await;
    assert_eq!(got[0].1, format!("alert-inactive-{rule}-{t}"));
    assert_eq!(
        got[0].3,
        json!({"rule": rule, "last_seen": t, "after_ms": 2000})
    );
    // Heard from again, then silent again: a second report.
    let t2 = now_ms();
    send(
        &dev,
        format!("devices/{id}/location"),
        json!({"ts": t2, "lat": 51.5, "lon": -0.1}),
    )
    .await;
    h.wait_field(&id, "ts", t2).await;
    h.wait_count(&sql, 2).await;
    assert_eq!(h.logged_events(&id, "\"alert.").await.len(), 2);
    a.stop().await;
    b.stop().await;
}
