//! `/ws` against the real Redis: snapshot-then-live, fan-out across
//! instances, scopes, resume, slow consumers, channels, bbox.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::collections::HashSet;

use futures::SinkExt;

use serde_json::{json, Value};
use support::*;

const T0: i64 = 1_763_800_000_000;

/// Pins: an update written while a subscribe is in flight shows up exactly
/// once, either in the snapshot or live, and the live sequence has no gap.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn snapshot_then_live_has_no_gap_and_no_duplicate() {
    let env = Env::new().await;
    let gw = env.gateway().await;
    env.location("truck-1", T0, 51.5, -0.1).await;
    const N: i64 = 600;
    let writer = {
        async {
            for i in 1..=N {
                env.location("truck-1", T0 + i, 51.5 + i as f64 * 1e-6, -0.1)
                    .await;
                if i % 50 == 0 {
                    tokio::task::yield_now().await;
                }
            }
        }
    };
    let reader = async {
        let mut fleet = gw.ws(&token(json!({}))).await;
        let mut one = gw.ws(&token(json!({}))).await;
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
        let (snap_f, _) = fleet.subscribe(json!({"fleet": true})).await;
        let (snap_d, _) = one.subscribe(json!({"devices": ["truck-1"]})).await;
        (fleet, one, snap_f.unwrap(), snap_d.unwrap())
    };
    let ((), (mut fleet, mut one, snap_f, snap_d)) = tokio::join!(writer, reader);
    for (ws, snap) in [(&mut fleet, snap_f), (&mut one, snap_d)] {
        assert_eq!(snap.len(), 1);
        let mut expect = snap[0]["ts"].as_i64().unwrap() + 1;
        while expect <= T0 + N {
            let v = ws.recv().await;
            assert_eq!(v["type"], "location", "{v}");
            assert_eq!(v["ts"].as_i64().unwrap(), expect, "gap or duplicate: {v}");
            expect += 1;
        }
    }
    gw.stop().await;
}

/// Pins: each gateway instance consumes the live channel itself.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_instances_both_deliver_one_update() {
    let env = Env::new().await;
    let (a, b) = (env.gateway().await, env.gateway().await);
    let mut wa = a.ws(&token(json!({}))).await;
    let mut wb = b.ws(&token(json!({}))).await;
    wa.subscribe(json!({"devices": ["d1"]})).await;
    wb.subscribe(json!({"fleet": true})).await;
    env.location("d1", T0, 10.123456789012345, 20.5).await;
    for ws in [&mut wa, &mut wb] {
        let v = ws.recv().await;
        assert_eq!(v["device"], "d1");
        // Full double precision end to end.
        assert_eq!(v["lat"].as_f64().unwrap(), 10.123456789012345);
    }
    a.stop().await;
    b.stop().await;
}

/// Pins: a device outside the token's scope is never sent, and an explicit
/// out-of-scope subscribe is refused with nothing taking effect.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn token_scope_filters_everything() {
    let env = Env::new().await;
    let gw = env.gateway().await;
    env.location("truck-1", T0, 1.0, 1.0).await;
    env.location("van-1", T0, 1.0, 1.0).await;
    let t = token(json!({"devices": ["truck-*"]}));
    let mut ws = gw.ws(&t).await;
    let (snap, _) = ws.subscribe(json!({"fleet": true})).await;
    let ids: Vec<&str> = snap
        .as_ref()
        .unwrap()
        .iter()
        .map(|d| d["device"].as_str().unwrap())
        .collect();
    assert_eq!(ids, ["truck-1"]);

    ws.send(json!({"op":"subscribe","ref":"x","devices":["van-1"]}))
        .await;
    let v = ws.recv().await;
    assert_eq!(
        (v["type"].as_str(), v["code"].as_str(), v["ref"].as_str()),
        (Some("error"), Some("forbidden"), Some("x"))
    );
    ws.send(json!({"op":"subscribe","ref":"y","channels":["ops"]}))
        .await;
    let v = ws.recv().await;
    assert_eq!(v["code"], "forbidden");
    // Nothing else answered those subscribes.
    assert!(ws.sync().await.is_empty());

    env.location("van-1", T0 + 1, 1.0, 1.0).await;
    env.event("van-1", "e-van", T0 + 1, json!({})).await;
    env.location("truck-1", T0 + 1, 1.0, 1.0).await;
    let v = ws.recv().await;
    assert_eq!(v["device"], "truck-1", "van-1 leaked: {v}");

    // HTTP: same scope.
    let (s, list) = get_json(gw.addr, "/api/devices", &t).await;
    assert_eq!(s, 200);
    let ids = device_ids(&list);
    assert_eq!(ids, ["truck-1"]);
    assert_eq!(get_json(gw.addr, "/api/devices/van-1", &t).await.0, 404);
    assert_eq!(
        get_json(gw.addr, "/api/devices/van-1/track", &t).await.0,
        404
    );
    assert_eq!(get_json(gw.addr, "/api/devices/truck-1", &t).await.0, 200);
    gw.stop().await;
}

/// Pins: 401 before the upgrade for missing, expired, forged and `alg:none`
/// tokens.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_tokens_get_401_before_upgrade() {
    let env = Env::new().await;
    let gw = env.gateway().await;
    let bad = [
        String::new(),
        token_with(SECRET, json!({}), -3600),
        token_with("another-secret", json!({}), 3600),
        token_alg_none(),
        "not.a.token".to_owned(),
    ];
    for t in &bad {
        let url = format!("ws://{}/ws?token={t}", gw.addr);
        match tokio_tungstenite::connect_async(url).await {
            Err(tokio_tungstenite::tungstenite::Error::Http(resp)) => {
                assert_eq!(resp.status().as_u16(), 401, "{t}")
            }
            other => panic!("token {t:?} was not refused: {:?}", other.map(|_| ())),
        }
        let (status, _, body) = http(gw.addr, "GET", "/api/devices", Some(t), None).await;
        assert_eq!(status, 401, "{t}");
        let v: Value = serde_json::from_str(&body).unwrap();
        assert_eq!(v["error"]["code"], "unauthorized");
    }
    // Expired within the 30 s leeway is still good.
    let t = token_with(SECRET, json!({}), -10);
    assert_eq!(get_json(gw.addr, "/api/devices", &t).await.0, 200);
    gw.stop().await;
}

/// Pins: `since` replays exactly the events missed, in order, then live;
/// a malformed cursor gets `cursor_expired` and the subscription goes on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resume_with_since_delivers_exactly_the_missed_events() {
    let env = Env::new().await;
    let gw = env.gateway().await;
    let t = token(json!({}));
    let mut ws = gw.ws(&t).await;
    ws.subscribe(json!({"fleet": true})).await;
    env.event("d1", "e1", T0, json!({"n": 1})).await;
    env.event("d1", "e2", T0 + 1, json!({"n": 2})).await;
    let e1 = ws.recv().await;
    let e2 = ws.recv().await;
    assert_eq!(
        (e1["id"].as_str(), e2["id"].as_str()),
        (Some("e1"), Some("e2"))
    );
    let cursor = e2["cursor"].as_str().unwrap().to_owned();
    drop(ws);

    for i in 3..=5 {
        env.event("d1", &format!("e{i}"), T0 + i, json!({"n": i}))
            .await;
    }
    env.event("other", "x", T0, json!({})).await;

    let mut ws = gw.ws(&t).await;
    ws.send(json!({"op":"subscribe","ref":"r","devices":["d1"],"since": cursor}))
        .await;
    let mut got = Vec::new();
    loop {
        let v = ws.recv().await;
        match v["type"].as_str().unwrap() {
            "snapshot" => {}
            "event" => got.push(v["id"].as_str().unwrap().to_owned()),
            "subscribed" => break,
            other => panic!("unexpected {other}: {v}"),
        }
    }
    assert_eq!(got, ["e3", "e4", "e5"]);
    env.event("d1", "e6", T0 + 6, json!({})).await;
    assert_eq!(ws.recv().await["id"], "e6");

    ws.send(json!({"op":"subscribe","ref":"m","devices":["d1"],"since":"garbage"}))
        .await;
    let mut codes = Vec::new();
    loop {
        let v = ws.recv().await;
        if v["type"] == "error" {
            codes.push(v["code"].as_str().unwrap().to_owned());
        }
        if v["type"] == "subscribed" {
            break;
        }
    }
    assert_eq!(codes, ["cursor_expired"]);
    gw.stop().await;
}

/// Pins: a client that stops reading is bounded and closed with 4008 while
/// another client keeps receiving every event.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_consumer_is_closed_and_others_keep_receiving() {
    let env = Env::new().await;
    let mut config = env.config();
    config.ws_queue = std::num::NonZeroUsize::new(256).unwrap();
    let gw = Gateway::start(config).await;
    let t = token(json!({}));
    let mut slow = gw.ws(&t).await;
    let mut fast = gw.ws(&t).await;
    slow.subscribe(json!({"fleet": true})).await;
    fast.subscribe(json!({"fleet": true})).await;
    let before = gw
        .metric("fieldcast_gateway_slow_consumer_closes_total")
        .await;
    let blob = "x".repeat(8 * 1024);
    const N: usize = 3000;
    let writer = async {
        for i in 0..N {
            env.event("d1", &format!("e{i}"), T0, json!({ "blob": blob }))
                .await;
        }
    };
    let reader = async {
        let mut ids = Vec::with_capacity(N);
        while ids.len() < N {
            let v = fast.recv().await;
            assert_eq!(v["type"], "event");
            ids.push(v["id"].as_str().unwrap().to_owned());
        }
        ids
    };
    let ((), ids) = tokio::join!(writer, reader);
    let want: Vec<String> = (0..N).map(|i| format!("e{i}")).collect();
    assert_eq!(ids, want);
    fieldcast_testkit::wait_until(WAIT, "a slow-consumer close", || async {
        gw.metric("fieldcast_gateway_slow_consumer_closes_total")
            .await
            > before
    })
    .await
    .unwrap();
    // The slow client now drains what was buffered and finds the end.
    let mut events = 0usize;
    let end = loop {
        match slow.try_recv().await {
            Ok(_) => events += 1,
            Err(e) => break e,
        }
    };
    assert!(events < N, "the slow client was not cut off");
    if let Ended::Close(code) = end {
        assert_eq!(code, 4008);
    }
    gw.stop().await;
}

/// Pins: `POST /api/publish` and a raw Redis PUBLISH on `<prefix>push`
/// both reach channel subscribers on every instance.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn channel_messages_reach_every_instance() {
    let env = Env::new().await;
    let (a, b) = (env.gateway().await, env.gateway().await);
    let t = token(json!({"channels": ["user:*"]}));
    let mut wa = a.ws(&t).await;
    let mut wb = b.ws(&t).await;
    let (snap, _) = wa.subscribe(json!({"channels": ["user:42"]})).await;
    assert!(snap.is_none());
    wb.subscribe(json!({"channels": ["user:42"]})).await;

    let publisher = token(json!({"publish": true}));
    let body = r#"{"channel":"user:42","data":{"text":"hi","n":1.5}}"#;
    let (status, _, _) = http(a.addr, "POST", "/api/publish", Some(&publisher), Some(body)).await;
    assert_eq!(status, 202);
    for ws in [&mut wa, &mut wb] {
        let v = ws.recv().await;
        assert_eq!(
            v,
            json!({"type":"message","channel":"user:42","data":{"text":"hi","n":1.5}})
        );
    }
    env.raw_publish(
        &format!("{}push", env.prefix),
        r#"{"channel":"user:42","data":{"raw":true}}"#,
    )
    .await;
    env.raw_publish(
        &format!("{}push", env.prefix),
        r#"{"channel":"user:43","data":{}}"#,
    )
    .await;
    for ws in [&mut wa, &mut wb] {
        let v = ws.recv().await;
        assert_eq!(v["data"], json!({"raw": true}));
        assert!(ws.sync().await.is_empty(), "user:43 leaked");
    }
    // No publish right: 403. Bad body: 400.
    let (status, _, _) = http(a.addr, "POST", "/api/publish", Some(&t), Some(body)).await;
    assert_eq!(status, 403);
    let (status, _, _) = http(a.addr, "POST", "/api/publish", Some(&publisher), Some("{")).await;
    assert_eq!(status, 400);
    a.stop().await;
    b.stop().await;
}

/// Pins: bbox snapshot from the geo index; a device entering is sent, one
/// leaving is sent once (its outside position), then no more.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bbox_enter_and_leave() {
    let env = Env::new().await;
    let gw = env.gateway().await;
    env.location("in", T0, 51.5, -0.1).await;
    env.location("out", T0, 48.85, 2.35).await;
    let mut ws = gw.ws(&token(json!({}))).await;
    let (snap, _) = ws.subscribe(json!({"bbox": [-1.0, 51.0, 1.0, 52.0]})).await;
    let ids: HashSet<String> = snap
        .unwrap()
        .iter()
        .map(|d| d["device"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(ids, HashSet::from(["in".to_owned()]));

    env.location("out", T0 + 1, 48.9, 2.3).await; // still outside: not sent
    env.location("out", T0 + 2, 51.6, 0.5).await; // enters
    let v = ws.recv().await;
    assert_eq!(
        (v["device"].as_str(), v["ts"].as_i64()),
        (Some("out"), Some(T0 + 2))
    );
    env.location("in", T0 + 1, 40.0, -3.7).await; // leaves: sent once
    let v = ws.recv().await;
    assert_eq!(
        (v["device"].as_str(), v["lat"].as_f64()),
        (Some("in"), Some(40.0))
    );
    env.location("in", T0 + 2, 40.1, -3.7).await; // outside: not sent
    env.status("in", T0 + 3, false).await; // status of an outside device: not sent
    env.status("out", T0 + 3, true).await; // status of an inside device: sent
    let v = ws.recv().await;
    assert_eq!(
        (v["type"].as_str(), v["device"].as_str()),
        (Some("status"), Some("out"))
    );
    assert!(ws.sync().await.is_empty());

    let (s, list) = get_json(gw.addr, "/api/devices?bbox=-1,51,1,52", &token(json!({}))).await;
    assert_eq!(s, 200);
    let ids = device_ids(&list);
    assert_eq!(ids, ["out"]);
    assert_eq!(
        get_json(gw.addr, "/api/devices?bbox=1,2,3", &token(json!({})))
            .await
            .0,
        400
    );
    gw.stop().await;
}

/// Pins: the geo index may lag behind a device by up to a cell's diagonal
/// (the bridge re-indexes a device only when it leaves its cell,
/// docs/redis-layout.md): a device whose indexed position is that far
/// outside a box while its newest is inside is in the box's snapshot and
/// `/api/devices?bbox=`, at its newest position; one whose newest is
/// outside is not, however near its indexed position.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bbox_finds_a_device_the_geo_index_lags_behind() {
    use fieldcast_core::geo::INDEX_STALE_KM;
    use fred::prelude::*;
    let env = Env::new().await;
    let gw = env.gateway().await;
    // A box 20 m across; the devices' indexed positions a cell's diagonal
    // (less a metre) south-west of their newest, well outside the box.
    let (lat, lon) = (51.5, -0.1);
    let deg = (INDEX_STALE_KM - 0.001) / std::f64::consts::SQRT_2 / 111.319_49;
    let lag = |device: &'static str, lat: f64, lon: f64| {
        let (redis, key) = (env.redis.clone(), env.keys().of(device).1.geo.clone());
        let at = (lon - deg / lat.to_radians().cos(), lat - deg);
        async move {
            let _: i64 = redis
                .eval(
                    "return redis.call('GEOADD', KEYS[1], ARGV[1], ARGV[2], ARGV[3])",
                    vec![key],
                    vec![at.0.to_string(), at.1.to_string(), device.to_owned()],
                )
                .await
                .unwrap();
        }
    };
    env.location("lagging", T0, lat, lon).await;
    lag("lagging", lat, lon).await;
    env.location("outside", T0, lat + 0.0005, lon).await;
    lag("outside", lat + 0.0005, lon).await;
    let bbox = [lon - 0.0001, lat - 0.0001, lon + 0.0001, lat + 0.0001];
    let mut ws = gw.ws(&token(json!({}))).await;
    let (snap, _) = ws.subscribe(json!({ "bbox": bbox })).await;
    let snap = snap.unwrap();
    assert_eq!(snap.len(), 1, "{snap:?}");
    assert_eq!(
        (
            snap[0]["device"].as_str(),
            snap[0]["lat"].as_f64(),
            snap[0]["lon"].as_f64()
        ),
        (Some("lagging"), Some(lat), Some(lon))
    );
    let query = bbox.map(|v| v.to_string()).join(",");
    let (s, list) = get_json(
        gw.addr,
        &format!("/api/devices?bbox={query}"),
        &token(json!({})),
    )
    .await;
    assert_eq!(s, 200);
    let ids = device_ids(&list);
    assert_eq!(ids, ["lagging"]);
    gw.stop().await;
}

/// Pins: bad frames get an error and never end the connection; a flood of
/// frames closes it with 1008; shutdown closes sockets with 1001.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_frames_rate_limit_and_shutdown() {
    let env = Env::new().await;
    let gw = env.gateway().await;
    let t = token(json!({}));
    let mut ws = gw.ws(&t).await;
    for bad in [
        "nope",
        "[]",
        r#"{"op":"fly"}"#,
        r#"{"op":"subscribe","ref":1}"#,
    ] {
        ws.stream
            .send(tokio_tungstenite::tungstenite::Message::Text(bad.into()))
            .await
            .unwrap();
        let v = ws.recv().await;
        assert_eq!(v["code"], "bad_request", "{bad}");
    }
    assert!(gw.metric("fieldcast_gateway_connections").await >= 1.0);

    let mut flood = gw.ws(&t).await;
    for _ in 0..300 {
        if flood
            .stream
            .send(tokio_tungstenite::tungstenite::Message::Text(
                r#"{"op":"ping"}"#.into(),
            ))
            .await
            .is_err()
        {
            break;
        }
    }
    let end = loop {
        match flood.try_recv().await {
            Ok(_) => {}
            Err(e) => break e,
        }
    };
    assert_eq!(end, Ended::Close(1008));

    gw.shutdown.cancel();
    let end = loop {
        match ws.try_recv().await {
            Ok(_) => {}
            Err(e) => break e,
        }
    };
    assert_eq!(end, Ended::Close(1001));
    gw.task.await.unwrap().unwrap();
}

/// Pins: a connection closes (4001, after a `token_expired` error) when
/// its token expires, leeway included.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connection_closes_when_its_token_expires() {
    let env = Env::new().await;
    let gw = env.gateway().await;
    // Expired 28 s ago: still valid for ~2 s thanks to the 30 s leeway.
    let mut ws = gw.ws(&token_with(SECRET, json!({}), -28)).await;
    let mut codes = Vec::new();
    let end = loop {
        match ws.try_recv().await {
            Ok(v) => codes.push(v["code"].as_str().unwrap_or("").to_owned()),
            Err(e) => break e,
        }
    };
    assert_eq!(codes, ["token_expired"]);
    assert_eq!(end, Ended::Close(4001));
    gw.stop().await;
}

/// The device ids of a `GET /api/devices` answer, in its order.
fn device_ids(list: &Value) -> Vec<&str> {
    list.as_array()
        .unwrap()
        .iter()
        .map(|d| d["device"].as_str().unwrap())
        .collect()
}
