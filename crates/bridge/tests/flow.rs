//! The bridge end to end against the shared Mosquitto, Redis and
//! PostgreSQL: hot state, live publication, history, ordering, dedup.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use fred::prelude::*;
use rumqttc::QoS;
use serde_json::json;

use support::*;

/// One test at a time: each starts its own broker, bridge and database.
/// Six at once on a 2-core machine saturated it, and under that load a
/// live message was occasionally not seen within `WAIT` (cause not found
/// yet; it also happened, more rarely, with the tests serial and two busy
/// loops beside them). Serial costs ~10 s and takes most of the load away.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// Pins: a location reaches the hot state, the geo index, the live channel
/// (exact §4 shape, full double precision) and the history table.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn location_reaches_state_live_and_history() {
    let _serial = SERIAL.lock().await;
    let h = Harness::private().await;
    let bridge = h.start().await;
    let (_sub, mut live) = live_subscriber(&h.prefix).await;
    let dev = device(&h.mqtt_url).await;
    let id = fieldcast_testkit::unique("truck");
    let ts = now_ms() - 1000;
    let lat = 51.507_350_901_234_57_f64;
    let payload = json!({"lat": lat, "lon": -0.1277583, "ts": ts, "speed": 12.5, "heading": 90, "unknown": "x"});
    dev.publish(
        &format!("devices/{id}/location"),
        QoS::AtMostOnce,
        false,
        payload.to_string(),
    )
    .await;

    let env = next_msg(&mut live).await;
    assert!(env["rx"].as_i64().unwrap() >= ts);
    assert_eq!(
        env["msg"],
        json!({"type":"location","device":id,"ts":ts,"lat":lat,"lon":-0.1277583,"speed":12.5,"heading":90.0})
    );
    assert_eq!(env["msg"]["lat"].as_f64().unwrap().to_bits(), lat.to_bits());

    let state = h.state(&id).await;
    assert_eq!(
        state["lat"].parse::<f64>().unwrap().to_bits(),
        lat.to_bits()
    );
    assert_eq!(state["ts"], ts.to_string());
    assert_eq!(state["last_seen"], ts.to_string());
    assert!(!state.contains_key("alt"));
    let members: Vec<String> = h.redis.smembers(&h.keys().of(&id).1.devices).await.unwrap();
    assert_eq!(members, vec![id.clone()]);
    let pos: Vec<Option<fred::types::geo::GeoPosition>> = h
        .redis
        .geopos(&h.keys().of(&id).1.geo, id.clone())
        .await
        .unwrap();
    assert!(pos[0].is_some());

    h.wait_count("SELECT count(*) FROM locations", 1).await;
    let c = h.db.client().await.unwrap();
    let row = c
        .query_one("SELECT device_id, lat, lon, speed, alt, (extract(epoch from ts) * 1000)::int8 FROM locations", &[])
        .await
        .unwrap();
    assert_eq!(row.get::<_, String>(0), id);
    assert_eq!(row.get::<_, f64>(1).to_bits(), lat.to_bits());
    assert_eq!(row.get::<_, Option<f64>>(3), Some(12.5));
    assert_eq!(row.get::<_, Option<f64>>(4), None);
    assert_eq!(row.get::<_, i64>(5), ts);
    let m = bridge.handles.metrics.encode();
    assert_eq!(
        metric(&m, "fieldcast_bridge_messages_total{kind=\"location\"}"),
        1.0
    );
    bridge.stop().await;
}

/// Pins: on one Redis, a burst of locations of every partition (script
/// calls that each name several partitions' shared keys once, with an
/// index per location) puts each device in its own partition's device set
/// and geo index and nowhere else, with its own position in its hash.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_over_every_partition_lands_in_each_devices_partition() {
    let _serial = SERIAL.lock().await;
    let h = Harness::private().await;
    let bridge = h.start().await;
    let keys = h.keys();
    let parts = keys.all().len();
    // Three devices in every partition, published in one burst.
    let tag = fieldcast_testkit::unique("burst");
    let mut count = vec![0usize; parts];
    let mut ids = Vec::new();
    let mut i = 0;
    while ids.len() < 3 * parts {
        let id = format!("{tag}-{i}");
        i += 1;
        let p = keys.of(&id).0.index();
        if count[p] < 3 {
            count[p] += 1;
            ids.push(id);
        }
    }
    let dev = device(&h.mqtt_url).await;
    let ts = now_ms() - 1000;
    let position = |n: usize| (-10.0 + n as f64 * 0.01, 40.0 + n as f64 * 0.001);
    for (n, id) in ids.iter().enumerate() {
        let (lon, lat) = position(n);
        dev.publish(
            &format!("devices/{id}/location"),
            QoS::AtMostOnce,
            false,
            json!({"ts": ts, "lat": lat, "lon": lon}).to_string(),
        )
        .await;
    }
    let want = ids.len() as i64;
    fieldcast_testkit::wait_until(WAIT, "every device in a partition's set", || async {
        h.fleet_size().await == want
    })
    .await
    .unwrap();

    for (n, id) in ids.iter().enumerate() {
        let (lon, lat) = position(n);
        let state = h.state(id).await;
        assert_eq!(state["lat"].parse::<f64>().unwrap(), lat, "{id}");
        assert_eq!(state["lon"].parse::<f64>().unwrap(), lon, "{id}");
    }
    for (p, part) in keys.all().iter().enumerate() {
        let mut expected: Vec<String> = ids
            .iter()
            .filter(|id| keys.of(id).0.index() == p)
            .cloned()
            .collect();
        expected.sort();
        let mut members: Vec<String> = h.redis.smembers(&part.devices).await.unwrap();
        members.sort();
        assert_eq!(members, expected, "device set of partition {p}");
        let mut located: Vec<String> = h
            .redis
            .zrange(&part.geo, 0, -1, None, false, None, false)
            .await
            .unwrap();
        located.sort();
        assert_eq!(located, expected, "geo index of partition {p}");
        for id in &expected {
            let pos: Vec<Option<fred::types::geo::GeoPosition>> =
                h.redis.geopos(&part.geo, id.clone()).await.unwrap();
            let (lon, lat) = position(ids.iter().position(|x| x == id).unwrap());
            let got = pos[0].as_ref().unwrap();
            assert!(
                (got.longitude - lon).abs() < 1e-5 && (got.latitude - lat).abs() < 1e-5,
                "{id}: {got:?}"
            );
        }
    }
    bridge.stop().await;
}

/// Pins: the hot state and the live stream only move forward in `ts`; a
/// location not newer than the stored one is stored in history but neither
/// applied nor pushed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn older_location_never_overwrites_newer() {
    let _serial = SERIAL.lock().await;
    let h = Harness::private().await;
    let bridge = h.start().await;
    let (_sub, mut live) = live_subscriber(&h.prefix).await;
    let dev = device(&h.mqtt_url).await;
    let id = fieldcast_testkit::unique("van");
    let t = now_ms() - 10_000;
    let topic = format!("devices/{id}/location");
    dev.publish(
        &topic,
        QoS::AtLeastOnce,
        false,
        json!({"lat": 2.0, "lon": 2.0, "ts": t + 5}).to_string(),
    )
    .await;
    dev.publish(
        &topic,
        QoS::AtLeastOnce,
        false,
        json!({"lat": 1.0, "lon": 1.0, "ts": t}).to_string(),
    )
    .await;
    // Equal ts is not newer either.
    dev.publish(
        &topic,
        QoS::AtLeastOnce,
        false,
        json!({"lat": 3.0, "lon": 3.0, "ts": t + 5}).to_string(),
    )
    .await;
    // A newer marker location ends the stream. Several live workers run
    // scripts concurrently, so the three above may reach Redis in any
    // order (docs/redis-layout.md, "Order and atomicity"); what holds is
    // §2's rule: a location is applied and pushed only if newer than the
    // stored one, so what goes live moves strictly forward in `ts`.
    dev.publish(
        &topic,
        QoS::AtLeastOnce,
        false,
        json!({"lat": 4.0, "lon": 4.0, "ts": t + 10}).to_string(),
    )
    .await;
    let mut pushed: Vec<(i64, f64)> = Vec::new();
    loop {
        let m = tokio::time::timeout(WAIT, next_msg(&mut live))
            .await
            .unwrap_or_else(|_| panic!("no marker after {pushed:?}"));
        assert_eq!(m["msg"]["type"], "location", "{m}");
        let (ts, lat) = (
            m["msg"]["ts"].as_i64().unwrap(),
            m["msg"]["lat"].as_f64().unwrap(),
        );
        pushed.push((ts, lat));
        if ts == t + 10 {
            break;
        }
    }
    assert!(
        pushed.windows(2).all(|w| w[0].0 < w[1].0),
        "live went backwards or repeated a ts: {pushed:?}"
    );
    let state = h.state(&id).await;
    assert_eq!(state["lat"], "4");
    assert_eq!(state["ts"], (t + 10).to_string());
    // History: every accepted location, once per (device, ts), first kept.
    h.wait_count("SELECT count(*) FROM locations", 3).await;
    assert_eq!(
        h.count(&format!(
            "SELECT count(*) FROM locations WHERE lat = 2 AND ts = to_timestamp({}::float8/1000)",
            t + 5
        ))
        .await,
        1
    );
    let m = bridge.handles.metrics.encode();
    // Every location that did not go live was dropped as stale by Redis or
    // coalesced in the queue while pending beside a newer one.
    let dropped = metric(&m, "fieldcast_bridge_stale_total{kind=\"location\"}")
        + metric(&m, "fieldcast_bridge_coalesced_total");
    assert_eq!(dropped, (4 - pushed.len()) as f64, "{pushed:?}");
    bridge.stop().await;
}

/// Pins `location.lua`'s rules within one script call and across calls,
/// through the sink's own argument building: a field sent once and not the
/// next time leaves the hash; a location not newer than the stored one
/// (older or the same `ts`, even in the same call as newer ones) changes
/// nothing and answers 0; `last_seen` never moves back; each device joins
/// its partition's set; the geo set holds a position in the cell of the
/// last applied one (moved only when the device leaves its cell, `gc`),
/// the latitude clamped near the poles while the hash keeps it exact; the
/// applied envelopes go live in order; a hash from before the position
/// was packed loses its separate fields with its next location.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn location_script_rules_hold_within_and_across_calls() {
    use fieldcast_bridge::metrics::Metrics;
    use fieldcast_bridge::queue::Batch;
    use fieldcast_bridge::record::LiveLocation;
    use fieldcast_bridge::store::redis::{Applied, RedisSink};
    use fieldcast_core::{DeviceId, Location};

    let _serial = SERIAL.lock().await;
    let h = Harness::private().await;
    let keys = h.keys();
    let sink = RedisSink::new(h.redis.clone(), keys.clone());
    let metrics = Metrics::new();
    let (_sub, mut live) = live_subscriber(&h.prefix).await;
    let tag = fieldcast_testkit::unique("rules");
    // Four devices in four different partitions.
    let mut ids: Vec<String> = Vec::new();
    let mut i = 0;
    while ids.len() < 4 {
        let id = format!("{tag}-{i}");
        i += 1;
        if ids.iter().all(|o| keys.of(o).0 != keys.of(&id).0) {
            ids.push(id);
        }
    }
    let (a, b, c, d) = (&ids[0], &ids[1], &ids[2], &ids[3]);
    let t = now_ms() - 60_000;
    let fix = |id: &str, ts: i64, lat: f64, lon: f64, opt: [Option<f64>; 4]| LiveLocation {
        device: DeviceId::parse(id).unwrap(),
        loc: Location {
            ts,
            lat,
            lon,
            alt: opt[0],
            speed: opt[1],
            heading: opt[2],
            accuracy: opt[3],
        },
        rx: ts + 7,
    };
    let all = [Some(30.5), Some(12.25), Some(90.0), Some(4.0)];
    let none = [None; 4];
    let apply = |locations: Vec<LiveLocation>| {
        let batch = Batch {
            locations,
            ..Batch::default()
        };
        let (sink, metrics) = (&sink, &metrics);
        async move { sink.apply(&batch, metrics).await.unwrap() }
    };
    let geo = |id: &str| {
        let (redis, key) = (h.redis.clone(), keys.of(id).1.geo.clone());
        let id = id.to_owned();
        async move {
            let pos: Vec<Option<fred::types::geo::GeoPosition>> =
                redis.geopos(key, id).await.unwrap();
            pos[0].clone().map(|p| (p.longitude, p.latitude))
        }
    };
    let near = |got: Option<(f64, f64)>, lon: f64, lat: f64| {
        let (glon, glat) = got.expect("in the geo set");
        assert!(
            (glon - lon).abs() < 1e-5 && (glat - lat).abs() < 1e-5,
            "{got:?} against ({lon}, {lat})"
        );
    };

    // d has a later last_seen than its first location (a status, say).
    let _: () = h
        .redis
        .hset(keys.device(d), [("last_seen", (t + 500).to_string())])
        .await
        .unwrap();
    let first = vec![
        fix(a, t, 10.0, 20.0, all),
        fix(b, t, 89.9, 1.5, [None, Some(3.0), None, None]),
        fix(c, t, -90.0, -1.5, none),
        fix(d, t, 1.0, 2.0, all),
    ];
    assert_eq!(
        apply(first.clone()).await,
        Applied {
            published: 4,
            ..Applied::default()
        }
    );
    let sa = h.state(a).await;
    let cell = |lat: f64, lon: f64| fieldcast_core::geo::index_cell(lat, lon).to_string();
    assert_eq!(
        sa,
        [
            ("ts", t.to_string()),
            ("last_seen", t.to_string()),
            ("loc", "10,20,30.5,12.25,90,4".into()),
            ("gc", cell(10.0, 20.0)),
            ("lat", "10".into()),
            ("lon", "20".into()),
            ("alt", "30.5".into()),
            ("speed", "12.25".into()),
            ("heading", "90".into()),
            ("accuracy", "4".into()),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v))
        .collect()
    );
    let sb = h.state(b).await;
    assert_eq!(sb["loc"], "89.9,1.5,,3,,");
    assert_eq!(sb["gc"], cell(85.05112878, 1.5));
    assert_eq!(sb["lat"], "89.9");
    assert_eq!(sb["speed"], "3");
    assert!(!sb.contains_key("alt") && !sb.contains_key("heading") && !sb.contains_key("accuracy"));
    near(geo(b).await, 1.5, 85.05112878);
    let sc = h.state(c).await;
    assert_eq!(sc["lat"], "-90");
    assert_eq!(sc.len(), 6, "ts, last_seen, loc, gc, lat, lon: {sc:?}");
    near(geo(c).await, -1.5, -85.05112878);
    assert_eq!(h.state(d).await["last_seen"], (t + 500).to_string());
    for id in [a, b, c] {
        let members: Vec<String> = h.redis.smembers(&keys.of(id).1.devices).await.unwrap();
        assert_eq!(members, vec![id.clone()], "{id}");
    }
    // Live: the applied ones (the call sorts them by partition, each
    // device's in their order).
    async fn pushed(
        n: usize,
        live: &mut tokio::sync::mpsc::Receiver<String>,
    ) -> Vec<(String, i64)> {
        let mut got = Vec::new();
        for _ in 0..n {
            let m = next_msg(live).await;
            let ts = m["msg"]["ts"].as_i64().unwrap();
            assert_eq!(m["rx"].as_i64().unwrap(), ts + 7);
            got.push((m["msg"]["device"].as_str().unwrap().to_owned(), ts));
        }
        got
    }
    let mut got = pushed(4, &mut live).await;
    got.sort();
    let mut want: Vec<_> = first
        .iter()
        .map(|l| (l.device.to_string(), l.loc.ts))
        .collect();
    want.sort();
    assert_eq!(got, want);

    // One call: a newer location of a without alt and accuracy, an older
    // one, one with the same ts, then a newer one with alt only, moved; b
    // again with its ts (not newer); d newer than its location but not
    // than its last_seen.
    let second = vec![
        fix(a, t + 1, 11.0, 21.0, [None, Some(5.0), Some(180.5), None]),
        fix(a, t - 5, 12.0, 22.0, all),
        fix(a, t + 1, 13.0, 23.0, all),
        fix(a, t + 2, 14.0, 24.0, [Some(31.0), None, None, None]),
        fix(b, t, 0.0, 0.0, all),
        fix(d, t + 3, 1.5, 2.5, none),
    ];
    assert_eq!(
        apply(second.clone()).await,
        Applied {
            published: 3,
            stale_locations: 3,
            ..Applied::default()
        }
    );
    let sa = h.state(a).await;
    assert_eq!(sa["ts"], (t + 2).to_string());
    assert_eq!(sa["last_seen"], (t + 2).to_string());
    assert_eq!((sa["lat"].as_str(), sa["lon"].as_str()), ("14", "24"));
    assert_eq!(sa["alt"], "31");
    assert_eq!(sa["loc"], "14,24,31,,,", "speed, heading, accuracy removed");
    assert_eq!(sa.len(), 7, "{sa:?}");
    near(geo(a).await, 24.0, 14.0);
    assert_eq!(
        h.state(b).await,
        sb,
        "a location with the same ts changes nothing"
    );
    near(geo(b).await, 1.5, 85.05112878);
    let sd = h.state(d).await;
    assert_eq!(sd["ts"], (t + 3).to_string());
    assert_eq!(sd["last_seen"], (t + 500).to_string());
    assert_eq!(sd.len(), 6, "{sd:?}");
    let got = pushed(3, &mut live).await;
    let of_a: Vec<_> = got
        .iter()
        .filter(|(id, _)| id == a)
        .map(|(_, ts)| *ts)
        .collect();
    assert_eq!(of_a, vec![t + 1, t + 2]);
    assert!(got.contains(&(d.clone(), t + 3)), "{got:?}");

    // A later call with only stale locations changes nothing, publishes
    // nothing, and the next applied one still goes live.
    let before: Vec<_> = futures::future::join_all(ids.iter().map(|id| h.state(id))).await;
    assert_eq!(
        apply(vec![
            fix(a, t + 2, 50.0, 50.0, none),
            fix(c, t - 1, 0.0, 0.0, all)
        ])
        .await,
        Applied {
            stale_locations: 2,
            ..Applied::default()
        }
    );
    let after: Vec<_> = futures::future::join_all(ids.iter().map(|id| h.state(id))).await;
    assert_eq!(before, after);
    near(geo(a).await, 24.0, 14.0);
    near(geo(c).await, -1.5, -85.05112878);
    apply(vec![fix(c, t + 9, -10.0, -20.0, all)]).await;
    let m = next_msg(&mut live).await;
    assert_eq!(
        (m["msg"]["device"].as_str(), m["msg"]["ts"].as_i64()),
        (Some(c.as_str()), Some(t + 9))
    );
    near(geo(c).await, -20.0, -10.0);
    assert_eq!(h.state(c).await.len(), 10);

    // Within its cell a device's geo position stays; out of it, it moves.
    // On the way, the hash of a, written as before `loc` (one field per
    // value), loses those fields with its next location.
    let _: () = h
        .redis
        .hset(
            keys.device(a),
            [("lat", "14"), ("lon", "24"), ("alt", "31"), ("speed", "2")],
        )
        .await
        .unwrap();
    let _: () = h
        .redis
        .hdel(keys.device(a), vec!["loc", "gc"])
        .await
        .unwrap();
    apply(vec![fix(a, t + 20, 14.0003, 24.0004, none)]).await;
    let sa = h.state(a).await;
    assert_eq!(sa["loc"], "14.0003,24.0004,,,,");
    assert_eq!(sa.len(), 6, "the separate fields are gone: {sa:?}");
    near(geo(a).await, 24.0004, 14.0003);
    apply(vec![fix(a, t + 21, 14.0006, 24.0007, none)]).await;
    assert_eq!(h.state(a).await["loc"], "14.0006,24.0007,,,,");
    near(geo(a).await, 24.0004, 14.0003);
    apply(vec![fix(a, t + 22, 14.0012, 24.0007, none)]).await;
    assert_eq!(h.state(a).await["gc"], cell(14.0012, 24.0007));
    near(geo(a).await, 24.0007, 14.0012);
    for ts in [t + 20, t + 21, t + 22] {
        let m = next_msg(&mut live).await;
        assert_eq!(m["msg"]["ts"].as_i64(), Some(ts));
    }
}

/// Pins: status and the Last Will reach the hot state and history; the
/// LWT's missing battery keeps the last known value.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_and_last_will() {
    let _serial = SERIAL.lock().await;
    let h = Harness::private().await;
    let bridge = h.start().await;
    let id = fieldcast_testkit::unique("cam");
    let topic = format!("devices/{id}/status");
    let u = fieldcast_mqtt::BrokerUrl::parse(&h.mqtt_url).unwrap();
    let mut opts = rumqttc::MqttOptions::new(fieldcast_testkit::unique("dev"), u.host, u.port);
    opts.set_last_will(rumqttc::LastWill::new(
        &topic,
        r#"{"online":false}"#,
        QoS::AtLeastOnce,
        true,
    ));
    opts.set_keep_alive(std::time::Duration::from_secs(5));
    let dev = device_with(opts).await;
    dev.publish(
        &topic,
        QoS::AtLeastOnce,
        true,
        json!({"online": true, "battery": 81, "signal": -70.5, "ts": now_ms() - 5000}).to_string(),
    )
    .await;
    let hh = &h;
    let idr = &id;
    fieldcast_testkit::wait_until(WAIT, "online", || async move {
        hh.state(idr).await.get("online").map(String::as_str) == Some("1")
    })
    .await
    .unwrap();
    // Die without DISCONNECT: the broker publishes the will.
    drop(dev);
    fieldcast_testkit::wait_until(WAIT, "offline by last will", || async move {
        hh.state(idr).await.get("online").map(String::as_str) == Some("0")
    })
    .await
    .unwrap();
    let state = h.state(&id).await;
    assert_eq!(state["battery"], "81");
    assert_eq!(state["signal"], "-70.5");
    h.wait_count("SELECT count(*) FROM device_status", 2).await;
    assert_eq!(
        h.count("SELECT count(*) FROM device_status WHERE NOT online")
            .await,
        1
    );
    bridge.stop().await;
}

/// Pins: an event redelivered with the same (device, id) is stored and
/// pushed once; the live message carries the event-log cursor.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_are_stored_and_pushed_once() {
    let _serial = SERIAL.lock().await;
    let h = Harness::private().await;
    let bridge = h.start().await;
    let (_sub, mut live) = live_subscriber(&h.prefix).await;
    let dev = device(&h.mqtt_url).await;
    let id = fieldcast_testkit::unique("unit");
    let topic = format!("devices/{id}/events");
    let ev = json!({"id": "ev-1", "kind": "panic", "severity": "critical", "data": {"btn": 2, "x": 0.1}, "ts": now_ms() - 100});
    for _ in 0..3 {
        dev.publish(&topic, QoS::AtLeastOnce, false, ev.to_string())
            .await;
    }
    dev.publish(
        &topic,
        QoS::AtLeastOnce,
        false,
        json!({"id": "ev-2", "kind": "door_open"}).to_string(),
    )
    .await;
    let a = next_msg(&mut live).await;
    let b = next_msg(&mut live).await;
    assert_eq!(a["msg"]["id"], "ev-1");
    assert_eq!(a["msg"]["severity"], "critical");
    assert_eq!(a["msg"]["data"], json!({"btn": 2, "x": 0.1}));
    assert_eq!(b["msg"]["id"], "ev-2");
    assert_eq!(b["msg"]["severity"], "info");
    assert!(b["msg"].get("data").is_none());
    // The cursor is the gateway's to compose from every partition's
    // position; the bridge publishes the event's own.
    assert!(a["msg"].get("cursor").is_none(), "{a}");
    let pos = a["pos"].as_str().unwrap().to_owned();
    let keys = h.keys();
    let (_, part) = keys.of(&id);
    let entries: Vec<(String, std::collections::HashMap<String, String>)> =
        h.redis.xrange(&part.events, "-", "+", None).await.unwrap();
    assert_eq!(entries.len(), 2, "both in the device's partition's log");
    let epoch: String = h.redis.get(&part.epoch).await.unwrap();
    assert_eq!(
        pos,
        format!("{epoch}:{}", entries[0].0),
        "pos = the partition log's epoch:stream id"
    );
    assert_eq!(entries[0].1["d"], id);
    h.wait_count("SELECT count(*) FROM events", 2).await;
    let c = h.db.client().await.unwrap();
    let row = c
        .query_one(
            "SELECT kind, severity, data FROM events WHERE event_id = 'ev-1'",
            &[],
        )
        .await
        .unwrap();
    assert_eq!(row.get::<_, String>(0), "panic");
    assert_eq!(
        row.get::<_, serde_json::Value>(2),
        json!({"btn": 2, "x": 0.1})
    );
    let m = bridge.handles.metrics.encode();
    assert_eq!(
        metric(&m, "fieldcast_bridge_messages_total{kind=\"event\"}"),
        4.0
    );
    assert_eq!(metric(&m, "fieldcast_bridge_duplicate_events_total"), 2.0);
    bridge.stop().await;
}

/// Pins: every kind of bad input is rejected with its reason, counted,
/// dead-lettered (newest first), and the bridge goes on — including a
/// payload above the 16 KiB limit that must not cost the connection.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_corpus_is_rejected_counted_and_dead_lettered() {
    let _serial = SERIAL.lock().await;
    let h = Harness::private().await;
    let bridge = h.start().await;
    let dev = device(&h.mqtt_url).await;
    let id = fieldcast_testkit::unique("bad");
    let loc = format!("devices/{id}/location");
    let corpus: Vec<(String, Vec<u8>, &str)> = vec![
        (loc.clone(), b"{not json".to_vec(), "bad_json"),
        (loc.clone(), b"[1,2,3]".to_vec(), "not_object"),
        (loc.clone(), vec![0xff, 0xfe, 0x00, 0x9f], "bad_utf8"),
        (
            loc.clone(),
            br#"{"lat":NaN,"lon":1}"#.to_vec(),
            "non_finite",
        ),
        (loc.clone(), br#"{"lon":1}"#.to_vec(), "missing_field"),
        (loc.clone(), br#"{"lat":"x","lon":1}"#.to_vec(), "bad_type"),
        (
            loc.clone(),
            br#"{"lat":95,"lon":1}"#.to_vec(),
            "out_of_range",
        ),
        (
            loc.clone(),
            format!(r#"{{"lat":1,"lon":1,"ts":{}}}"#, now_ms() + 3_600_000).into_bytes(),
            "ts_future",
        ),
        (
            loc.clone(),
            br#"{"lat":1,"lon":1,"ts":1000}"#.to_vec(),
            "ts_too_old",
        ),
        (
            loc.clone(),
            br#"{"lat":1,"lon":1,"ts":"noon"}"#.to_vec(),
            "bad_ts",
        ),
        (
            // nats-server refuses a topic with a space at the broker (and
            // drops the device's connection): it never reaches a bridge
            // there, so on NATS the bad id is one it lets through.
            if h.on_nats() {
                "devices/bad!id/location".into()
            } else {
                "devices/bad id!/location".into()
            },
            br#"{"lat":1,"lon":1}"#.to_vec(),
            "bad_device_id",
        ),
        (
            format!("devices/{id}/status"),
            br#"{"online":"yes"}"#.to_vec(),
            "bad_type",
        ),
        (
            format!("devices/{id}/events"),
            br#"{"id":"","kind":"x"}"#.to_vec(),
            "out_of_range",
        ),
        (
            loc.clone(),
            format!(r#"{{"lat":1,"lon":1,"pad":"{}"}}"#, "x".repeat(100 * 1024)).into_bytes(),
            "oversize",
        ),
    ];
    for (topic, payload, _) in &corpus {
        dev.publish(topic, QoS::AtLeastOnce, false, payload.clone())
            .await;
    }
    // Then a good one: the bridge is still there and still connected.
    dev.publish(
        &loc,
        QoS::AtLeastOnce,
        false,
        json!({"lat": 1.5, "lon": 1.5}).to_string(),
    )
    .await;
    let hh = &h;
    let idr = &id;
    fieldcast_testkit::wait_until(WAIT, "good message after the bad ones", || async move {
        hh.state(idr).await.contains_key("lat")
    })
    .await
    .unwrap();
    let dl_key = h.key("deadletter");
    fieldcast_testkit::wait_until(WAIT, "dead letters", || {
        let r = hh.redis.llen::<i64, _>(dl_key.clone());
        async move { r.await.unwrap_or(0) == corpus_len() }
    })
    .await
    .unwrap();
    let dls: Vec<String> = h.redis.lrange(h.key("deadletter"), 0, -1).await.unwrap();
    let dls: Vec<serde_json::Value> = dls
        .iter()
        .map(|s| serde_json::from_str(s).unwrap())
        .collect();
    let mut reasons: Vec<&str> = dls.iter().map(|d| d["reason"].as_str().unwrap()).collect();
    reasons.reverse(); // newest first in the list
    let want: Vec<&str> = corpus.iter().map(|c| c.2).collect();
    assert_eq!(reasons, want);
    let oversize = &dls[0];
    assert_eq!(oversize["topic"], loc);
    assert_eq!(oversize["payload"].as_str().unwrap().len(), 1024);
    assert!(oversize["received_at"].as_i64().unwrap() > 0);
    assert!(dls
        .iter()
        .any(|d| d["payload"].as_str().unwrap().contains('\u{fffd}')));

    let (code, text) = http_get(bridge.handles.admin_addr, "/metrics").await;
    assert_eq!(code, 200);
    assert_eq!(
        metric(
            &text,
            "fieldcast_bridge_rejected_total{reason=\"bad_type\"}"
        ),
        2.0
    );
    assert_eq!(
        metric(
            &text,
            "fieldcast_bridge_rejected_total{reason=\"oversize\"}"
        ),
        1.0
    );
    assert_eq!(
        metric(
            &text,
            "fieldcast_bridge_rejected_total{reason=\"ts_future\"}"
        ),
        1.0
    );
    assert_eq!(metric(&text, "fieldcast_bridge_mqtt_reconnects_total"), 0.0);
    assert_eq!(
        metric(&text, "fieldcast_bridge_messages_total{kind=\"location\"}"),
        1.0
    );
    assert_eq!(h.count("SELECT count(*) FROM events").await, 0);
    bridge.stop().await;
}

fn corpus_len() -> i64 {
    14
}

/// Pins: /healthz, /readyz and --help-level basics of the admin server.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_endpoints_answer() {
    let _serial = SERIAL.lock().await;
    let h = Harness::private().await;
    let bridge = h.start().await;
    let (code, _) = http_get(bridge.handles.admin_addr, "/healthz").await;
    assert_eq!(code, 200);
    let (code, body) = http_get(bridge.handles.admin_addr, "/readyz").await;
    assert_eq!(code, 200, "{body}");
    assert_eq!(
        serde_json::from_str::<serde_json::Value>(&body).unwrap()["ready"],
        true
    );
    bridge.stop().await;
}
