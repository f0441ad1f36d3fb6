//! The gateway fed by the real bridge, in this process: device -> private
//! Mosquitto -> `fieldcast_bridge` -> Redis/PostgreSQL -> two gateway
//! instances -> WebSocket and HTTP clients. No hand-written Redis writes:
//! these tests pin that both sides agree on docs/redis-layout.md.
//!
//! The tests take turns (`SERIAL`). Each gateway counts its own metrics:
//! the churn test reads its gateway's connection and subscription gauges
//! back to zero.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::time::{Duration, Instant};

use futures::{SinkExt, StreamExt};
use rumqttc::{AsyncClient, EventLoop, MqttOptions, QoS};
use serde_json::{json, Value};
use tokio::task::JoinHandle;
use tokio_tungstenite::tungstenite::Message as WsMessage;
use tokio_util::sync::CancellationToken;

use fieldcast_core::time::now_ms;
use fieldcast_gateway::{AuthMode, Config};
use fieldcast_testkit::chain::Chain;
use fieldcast_testkit::{shared_redis_url, unique, wait_until};
use support::*;

static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// testkit's [`Chain`] (a private broker and a bridge on it), and two
/// gateways sharing its prefix.
struct World {
    chain: Chain,
    mqtt_url: String,
    prefix: String,
    a: Gateway,
    b: Gateway,
}

impl World {
    async fn start() -> World {
        let chain = Chain::start("gwb").await.expect("broker and bridge");
        let store = chain.store();
        let gateway_config = || {
            let mut c =
                Config::for_tests(&store.redis_url, &store.redis_prefix, &store.database_url);
            c.auth = AuthMode::Jwt;
            c.jwt_secret = Some(SECRET.into());
            c
        };
        let a = Gateway::start(gateway_config()).await;
        let b = Gateway::start(gateway_config()).await;
        World {
            mqtt_url: chain.broker.url.clone(),
            prefix: chain.prefix.clone(),
            chain,
            a,
            b,
        }
    }

    async fn stop(self) {
        self.a.stop().await;
        self.b.stop().await;
        self.chain.stop().await.expect("bridge shut down cleanly");
    }
}

/// A device-side MQTT client whose event loop runs in the background.
struct Device {
    client: AsyncClient,
    task: JoinHandle<()>,
}

impl Drop for Device {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Device {
    async fn connect(mqtt_url: &str) -> Device {
        let u = fieldcast_mqtt::BrokerUrl::parse(mqtt_url).unwrap();
        let mut opts = MqttOptions::new(unique("dev"), u.host, u.port);
        opts.set_keep_alive(Duration::from_secs(30));
        let (client, eventloop) = AsyncClient::new(opts, 1000);
        let (tx, rx) = tokio::sync::oneshot::channel();
        let task = tokio::spawn(drive(eventloop, tx));
        tokio::time::timeout(WAIT, rx)
            .await
            .expect("device connects")
            .ok();
        Device { client, task }
    }

    async fn publish(&self, topic: String, retain: bool, payload: &Value) {
        self.client
            .publish(topic, QoS::AtLeastOnce, retain, payload.to_string())
            .await
            .unwrap();
    }
}

async fn drive(mut el: EventLoop, connected: tokio::sync::oneshot::Sender<()>) {
    let mut connected = Some(connected);
    loop {
        match el.poll().await {
            Ok(rumqttc::Event::Incoming(rumqttc::Packet::ConnAck(_))) => {
                if let Some(tx) = connected.take() {
                    let _ = tx.send(());
                }
            }
            Ok(_) => {}
            Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    }
}

/// JSON equality where numbers compare as `f64` (`81` == `81.0`): exact for
/// the doubles the device sent, indifferent to integer-vs-float spelling.
fn same(a: &Value, b: &Value) -> bool {
    match (a, b) {
        (Value::Number(x), Value::Number(y)) => x.as_f64() == y.as_f64(),
        (Value::Object(x), Value::Object(y)) => {
            x.len() == y.len() && x.iter().all(|(k, v)| y.get(k).is_some_and(|w| same(v, w)))
        }
        (Value::Array(x), Value::Array(y)) => {
            x.len() == y.len() && x.iter().zip(y).all(|(v, w)| same(v, w))
        }
        _ => a == b,
    }
}

#[track_caller]
fn assert_same(got: &Value, want: &Value) {
    assert!(same(got, want), "got  {got}\nwant {want}");
}

/// Pins: one device's location, status and event travel MQTT -> bridge ->
/// Redis -> both gateway instances in the exact §4 shapes, with full double
/// precision, and reach the HTTP history after the bridge's flush.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn device_updates_reach_both_gateways_and_history() {
    let _serial = SERIAL.lock().await;
    let started = Instant::now();
    let w = World::start().await;
    let dev_id = unique("truck");
    let device = Device::connect(&w.mqtt_url).await;
    let tok = token(json!({}));
    let t0 = now_ms() - 60_000;
    // Doubles whose shortest round-trip form has 16-17 significant digits.
    let lat0 = 51.507_350_912_345_68_f64;
    let lon0 = -0.127_758_312_345_678_9_f64;
    let lat1 = 51.507_351_234_567_89_f64;
    let lon1 = -0.127_759_876_543_210_9_f64;

    // A first fix, so the snapshot has something to show.
    device
        .publish(
            format!("devices/{dev_id}/location"),
            false,
            &json!({"ts": t0, "lat": lat0, "lon": lon0, "speed": 3.25, "heading": 45.5, "accuracy": 4.0, "alt": 12.75}),
        )
        .await;
    let path = format!("/api/devices/{dev_id}");
    let (addr, tk) = (w.a.addr, tok.clone());
    wait_until(WAIT, "the first fix in the hot state", || {
        let (path, tk) = (path.clone(), tk.clone());
        async move { get_json(addr, &path, &tk).await.0 == 200 }
    })
    .await
    .unwrap();

    let mut clients = [w.a.ws(&tok).await, w.b.ws(&tok).await];
    for ws in &mut clients {
        let (snapshot, cursor) = ws.subscribe(json!({"fleet": true})).await;
        assert!(!cursor.is_empty());
        let snapshot = snapshot.expect("a fleet subscribe has a snapshot");
        assert_eq!(snapshot.len(), 1, "{snapshot:?}");
        assert_same(
            &snapshot[0],
            &json!({"device": dev_id, "lat": lat0, "lon": lon0, "ts": t0,
                    "speed": 3.25, "heading": 45.5, "accuracy": 4.0, "alt": 12.75,
                    "online": null, "battery": null, "signal": null, "last_seen": t0, "groups": []}),
        );
        // Exact bits, not just `==` through a lossy path.
        assert_eq!(
            snapshot[0]["lat"].as_f64().unwrap().to_bits(),
            lat0.to_bits()
        );
    }

    let (t1, t2, t3) = (t0 + 1_000, t0 + 2_000, t0 + 3_000);
    device
        .publish(
            format!("devices/{dev_id}/location"),
            false,
            &json!({"ts": t1, "lat": lat1, "lon": lon1, "speed": 12.5, "heading": 90, "accuracy": 5, "alt": 30}),
        )
        .await;
    device
        .publish(
            format!("devices/{dev_id}/status"),
            true,
            &json!({"ts": t2, "online": true, "battery": 81, "signal": -70}),
        )
        .await;
    device
        .publish(
            format!("devices/{dev_id}/events"),
            false,
            &json!({"id": "ev-1", "ts": t3, "kind": "panic", "severity": "critical",
                    "data": {"note": "help", "n": 1.000_000_000_000_000_2}}),
        )
        .await;

    let want_location = json!({"type": "location", "device": dev_id, "ts": t1, "lat": lat1,
        "lon": lon1, "speed": 12.5, "heading": 90, "accuracy": 5, "alt": 30});
    let want_status = json!({"type": "status", "device": dev_id, "ts": t2, "online": true,
        "battery": 81, "signal": -70});
    let want_event = json!({"type": "event", "device": dev_id, "id": "ev-1", "ts": t3,
        "kind": "panic", "severity": "critical",
        "data": {"note": "help", "n": 1.000_000_000_000_000_2}});
    let mut cursors = Vec::new();
    for ws in &mut clients {
        // Locations ride the bridge's live lane, status and events its
        // reliable lane: their relative order is not promised.
        let mut got: Vec<Value> = Vec::new();
        for _ in 0..3 {
            got.push(ws.recv().await);
        }
        got.sort_by_key(|v| v["ts"].as_i64());
        assert_same(&got[0], &want_location);
        assert_eq!(got[0]["lat"].as_f64().unwrap().to_bits(), lat1.to_bits());
        assert_eq!(got[0]["lon"].as_f64().unwrap().to_bits(), lon1.to_bits());
        assert_same(&got[1], &want_status);
        let mut event = got[2].clone();
        let cursor = event
            .as_object_mut()
            .unwrap()
            .remove("cursor")
            .and_then(|c| c.as_str().map(str::to_owned))
            .expect("an event carries a string cursor");
        assert!(!cursor.is_empty());
        cursors.push(cursor);
        assert_same(&event, &want_event);
        // Nothing else (no duplicate) is queued.
        let rest = ws.sync().await;
        assert!(rest.is_empty(), "unexpected frames: {rest:?}");
    }
    assert_eq!(
        cursors[0], cursors[1],
        "both instances carry the same cursor"
    );

    // History, after the bridge's 300 ms flush.
    let track_path = format!("/api/devices/{dev_id}/track");
    let track = {
        let deadline = Instant::now() + WAIT;
        loop {
            let (code, v) = get_json(w.b.addr, &track_path, &tok).await;
            if code == 200 && v["points"].as_array().is_some_and(|p| p.len() == 2) {
                break v;
            }
            assert!(Instant::now() < deadline, "track: {code} {v}");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    };
    assert_same(
        &track,
        &json!({"device": dev_id, "next": null, "points": [
            {"ts": t0, "lat": lat0, "lon": lon0, "alt": 12.75, "speed": 3.25, "heading": 45.5, "accuracy": 4.0},
            {"ts": t1, "lat": lat1, "lon": lon1, "alt": 30, "speed": 12.5, "heading": 90, "accuracy": 5},
        ]}),
    );
    assert_eq!(
        track["points"][1]["lat"].as_f64().unwrap().to_bits(),
        lat1.to_bits()
    );

    let (code, events) = get_json(w.a.addr, &format!("/api/events?device={dev_id}"), &tok).await;
    assert_eq!(code, 200, "{events}");
    assert_same(
        &events,
        &json!({"next": null, "events": [
            {"device": dev_id, "id": "ev-1", "ts": t3, "kind": "panic", "severity": "critical",
             "data": {"note": "help", "n": 1.000_000_000_000_000_2}},
        ]}),
    );

    let (code, state) = get_json(w.a.addr, &format!("/api/devices/{dev_id}"), &tok).await;
    assert_eq!(code, 200);
    assert_same(
        &state,
        &json!({"device": dev_id, "lat": lat1, "lon": lon1, "ts": t1,
                "speed": 12.5, "heading": 90, "accuracy": 5, "alt": 30,
                "online": true, "battery": 81, "signal": -70, "last_seen": t3, "groups": []}),
    );

    drop(clients);
    drop(device);
    w.stop().await;
    eprintln!(
        "device_updates_reach_both_gateways_and_history took {:?}",
        started.elapsed()
    );
}

/// Pins: a client that resumes with its cursor gets exactly the events it
/// missed, in order, then `subscribed`, then live ones, with no duplicate.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resume_replays_exactly_the_missed_events() {
    let _serial = SERIAL.lock().await;
    let started = Instant::now();
    let w = World::start().await;
    let dev_id = unique("van");
    let device = Device::connect(&w.mqtt_url).await;
    let tok = token(json!({}));
    let t0 = now_ms() - 60_000;
    let event =
        |i: i64| json!({"id": format!("ev-{i}"), "ts": t0 + i, "kind": "door", "data": {"i": i}});

    // One event before the client's first visit.
    let mut observer = w.b.ws(&tok).await;
    observer.subscribe(json!({"fleet": true})).await;
    device
        .publish(format!("devices/{dev_id}/events"), false, &event(0))
        .await;
    assert_eq!(observer.recv().await["id"], "ev-0");

    let mut client = w.a.ws(&tok).await;
    let (_, cursor) = client.subscribe(json!({"fleet": true})).await;
    client.stream.close(None).await.unwrap();
    drop(client);

    // Five events while the client is away; the observer shows when the
    // bridge has put them in the event log.
    for i in 1..=5 {
        device
            .publish(format!("devices/{dev_id}/events"), false, &event(i))
            .await;
    }
    let mut seen = Vec::new();
    for i in 1..=5 {
        let v = observer.recv().await;
        assert_eq!(v["id"], format!("ev-{i}"), "{v}");
        seen.push(v);
    }

    let mut client = w.a.ws(&tok).await;
    client
        .send(json!({"op": "subscribe", "ref": "r", "fleet": true, "since": cursor}))
        .await;
    let snapshot = client.recv().await;
    assert_eq!(snapshot["type"], "snapshot", "{snapshot}");
    assert_eq!(snapshot["ref"], "r");
    let mut replayed = Vec::new();
    let subscribed = loop {
        let v = client.recv().await;
        match v["type"].as_str() {
            Some("event") => replayed.push(v),
            Some("subscribed") => break v,
            _ => panic!("unexpected frame during replay: {v}"),
        }
    };
    assert_eq!(subscribed["ref"], "r");
    let ids: Vec<&str> = replayed.iter().map(|v| v["id"].as_str().unwrap()).collect();
    assert_eq!(ids, ["ev-1", "ev-2", "ev-3", "ev-4", "ev-5"]);
    // The replay is the very frames the live path carried, cursors included.
    for (r, s) in replayed.iter().zip(&seen) {
        assert_same(r, s);
    }
    assert_eq!(
        subscribed["cursor"], seen[4]["cursor"],
        "subscribed carries the last replayed cursor"
    );

    device
        .publish(format!("devices/{dev_id}/events"), false, &event(6))
        .await;
    let v = client.recv().await;
    assert_eq!(v["type"], "event");
    assert_eq!(v["id"], "ev-6", "{v}");
    let rest = client.sync().await;
    assert!(rest.is_empty(), "unexpected frames: {rest:?}");

    drop((client, observer, device));
    w.stop().await;
    eprintln!(
        "resume_replays_exactly_the_missed_events took {:?}",
        started.elapsed()
    );
}

/// How many connect/subscribe/close cycles the churn test runs, and how
/// many at once. Debug build, 2 cores: about 25 s for 10 000 cycles on a
/// quiet machine, 37-55 s with other builds running (about 3 ms of CPU a
/// cycle, client and server together).
const CHURN_CYCLES: usize = 10_000;
const CHURN_CONCURRENCY: usize = 50;

/// One churn cycle; `mode` picks how the client leaves.
async fn churn_cycle(url: &str, mode: usize, bbox: [f64; 4]) {
    let (mut ws, _) = tokio_tungstenite::connect_async(url).await.unwrap();
    let sub = json!({"op": "subscribe", "ref": "c", "fleet": true, "devices": ["churn-x"],
                     "bbox": bbox, "channels": ["user:churn"]});
    ws.send(WsMessage::Text(sub.to_string().into()))
        .await
        .unwrap();
    if mode == 2 {
        // Leave mid-subscribe, without a close frame.
        drop(ws);
        return;
    }
    loop {
        let m = tokio::time::timeout(WAIT, ws.next())
            .await
            .expect("a reply to subscribe");
        match m {
            Some(Ok(WsMessage::Text(t))) => {
                let v: Value = serde_json::from_str(t.as_str()).unwrap();
                if v["type"] == "subscribed" {
                    break;
                }
                assert_ne!(v["type"], "error", "{v}");
            }
            Some(Ok(_)) => {}
            other => panic!("socket ended before subscribed: {other:?}"),
        }
    }
    if mode == 0 {
        // A clean close handshake.
        ws.close(None).await.unwrap();
        while let Ok(Some(Ok(_))) = tokio::time::timeout(WAIT, ws.next()).await {}
    }
    // mode 1: drop the TCP connection without a close frame.
}

async fn gauges(gw: &Gateway) -> Vec<(String, f64)> {
    let mut out = vec![(
        "connections".to_owned(),
        gw.metric("fieldcast_gateway_connections").await,
    )];
    for kind in ["device", "fleet", "bbox", "channel"] {
        let series = format!("fieldcast_gateway_subscriptions{{kind=\"{kind}\"}}");
        out.push((kind.to_owned(), gw.metric(&series).await));
    }
    out
}

/// Pins: thousands of connect/subscribe/close cycles (clean closes, dropped
/// sockets, sockets dropped mid-subscribe) while updates flow leave no
/// connection and no subscription behind, and the gateway still serves.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connect_disconnect_churn_leaves_nothing_behind() {
    let _serial = SERIAL.lock().await;
    let started = Instant::now();
    let w = World::start().await;
    let dev_id = unique("churn");
    let device = Device::connect(&w.mqtt_url).await;
    let tok = token(json!({"channels": ["user:*"]}));
    let t0 = now_ms() - 120_000;
    let (lat, lon) = (48.858_37, 2.294_48);
    let bbox = [lon - 0.01, lat - 0.01, lon + 0.01, lat + 0.01];
    device
        .publish(
            format!("devices/{dev_id}/location"),
            false,
            &json!({"ts": t0, "lat": lat, "lon": lon}),
        )
        .await;
    let path = format!("/api/devices/{dev_id}");
    let (addr, tk) = (w.a.addr, tok.clone());
    wait_until(WAIT, "the first fix in the hot state", || {
        let (path, tk) = (path.clone(), tk.clone());
        async move { get_json(addr, &path, &tk).await.0 == 200 }
    })
    .await
    .unwrap();
    let baseline = gauges(&w.a).await;
    assert!(
        baseline.iter().all(|(_, v)| *v == 0.0),
        "gauges before the churn: {baseline:?}"
    );
    // One client stays through the churn: its subscriptions must survive,
    // and it shows the gauges are really reported (an absent series reads 0).
    let mut held = w.a.ws(&tok).await;
    held.subscribe(json!({"fleet": true, "devices": ["churn-x"], "bbox": bbox,
                          "channels": ["user:churn"]}))
        .await;
    let one = gauges(&w.a).await;
    assert!(
        one.iter().all(|(_, v)| *v == 1.0),
        "gauges with one client: {one:?}"
    );

    // Updates keep flowing through the bridge while clients come and go.
    let stop_moving = CancellationToken::new();
    let mover = {
        let (client, stop, dev_id) = (device.client.clone(), stop_moving.clone(), dev_id.clone());
        tokio::spawn(async move {
            let mut i = 0_i64;
            let mut tick = tokio::time::interval(Duration::from_millis(5));
            while !stop.is_cancelled() {
                tick.tick().await;
                i += 1;
                let p = json!({"ts": t0 + i, "lat": lat + (i % 100) as f64 * 1e-5, "lon": lon});
                let _ = client
                    .publish(
                        format!("devices/{dev_id}/location"),
                        QoS::AtMostOnce,
                        false,
                        p.to_string(),
                    )
                    .await;
            }
            i
        })
    };

    let url = w.a.ws_url(&tok);
    let churn_started = Instant::now();
    let churn =
        futures::stream::iter(0..CHURN_CYCLES).for_each_concurrent(CHURN_CONCURRENCY, |i| {
            let url = url.clone();
            async move { churn_cycle(&url, i % 3, bbox).await }
        });
    tokio::pin!(churn);
    // The held client keeps reading meanwhile, as a live map would: an
    // unread socket would (rightly) be dropped once it misses the server's
    // pings, which a slow machine reaches before the churn ends.
    loop {
        tokio::select! {
            _ = &mut churn => break,
            v = held.recv() => assert_eq!(v["type"], "location", "{v}"),
        }
    }
    let churn_took = churn_started.elapsed();
    stop_moving.cancel();
    let moved = mover.await.unwrap();
    assert!(moved > 0);

    let settle = |want: f64, what: &'static str| {
        let gw = &w.a;
        async move {
            let deadline = Instant::now() + WAIT;
            loop {
                let now = gauges(gw).await;
                if now.iter().all(|(_, v)| *v == want) {
                    break;
                }
                assert!(Instant::now() < deadline, "{what}: {now:?}");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    };
    settle(1.0, "after the churn, only the held client").await;
    // The held client was not disturbed: it still gets channel messages.
    let (code, _, body) = http(
        w.a.addr,
        "POST",
        "/api/publish",
        Some(&token(json!({"publish": true}))),
        Some(r#"{"channel":"user:churn","data":{"k":1}}"#),
    )
    .await;
    assert_eq!(code, 202, "{body}");
    loop {
        let v = held.recv().await;
        if v["type"] == "message" {
            assert_same(
                &v,
                &json!({"type":"message","channel":"user:churn","data":{"k":1}}),
            );
            break;
        }
        assert_eq!(v["type"], "location", "{v}");
    }
    held.stream.close(None).await.unwrap();
    drop(held);
    settle(0.0, "after every client left").await;
    assert_eq!(
        w.a.metric("fieldcast_gateway_slow_consumer_closes_total")
            .await,
        0.0
    );

    // Still serving: a new client gets a snapshot and live updates.
    let mut ws = w.a.ws(&tok).await;
    let (snapshot, _) = ws.subscribe(json!({"devices": [dev_id.clone()]})).await;
    let snapshot = snapshot.unwrap();
    assert_eq!(snapshot.len(), 1);
    assert!(snapshot[0]["ts"].as_i64().unwrap() > t0);
    let ts = now_ms();
    device
        .publish(
            format!("devices/{dev_id}/location"),
            false,
            &json!({"ts": ts, "lat": lat, "lon": lon}),
        )
        .await;
    let v = ws.recv().await;
    assert_eq!(v["type"], "location");
    assert_eq!(v["ts"].as_i64().unwrap(), ts);
    drop(ws);

    drop(device);
    w.stop().await;
    eprintln!(
        "connect_disconnect_churn_leaves_nothing_behind: {CHURN_CYCLES} cycles in {churn_took:?} ({moved} locations published meanwhile); test took {:?}",
        started.elapsed()
    );
}

/// A plain Redis subscriber on the bridge's live shard channels: the
/// reference for what the bridge published, in the order every gateway
/// receives it.
struct LiveChannel {
    _client: fred::clients::SubscriberClient,
    rx: tokio::sync::broadcast::Receiver<fred::types::Message>,
}

impl LiveChannel {
    async fn open(prefix: &str) -> LiveChannel {
        use fred::prelude::{ClientLike, EventInterface, PubsubInterface};
        // fred's message channel holds 32 messages by default; the bridge
        // publishes one per script call, so give the reader room to lag.
        let client = fred::prelude::Builder::from_config(
            fred::prelude::Config::from_url(&shared_redis_url()).unwrap(),
        )
        .with_performance_config(|p| p.broadcast_channel_capacity = 1 << 16)
        .build_subscriber_client()
        .unwrap();
        client.init().await.unwrap();
        let rx = client.message_rx();
        let keys = fieldcast_core::Keys::new(
            prefix,
            fieldcast_core::Partitions::default(),
            fieldcast_core::Topology::Single,
        );
        client.ssubscribe(keys.live_channels()).await.unwrap();
        LiveChannel {
            _client: client,
            rx,
        }
    }

    /// The envelopes of the next message (an array of locations, or one
    /// status or event).
    async fn next(&mut self) -> Vec<Value> {
        let m = tokio::time::timeout(Duration::from_secs(60), self.rx.recv())
            .await
            .expect("live channel went quiet")
            .expect("the counting subscriber lagged behind the live channel");
        match serde_json::from_str(&m.value.as_string().unwrap()).unwrap() {
            Value::Array(a) => a,
            one => vec![one],
        }
    }
}

/// Pins, through the real bridge: a subscribe made while a device's
/// locations flow gets a snapshot, then exactly the locations the bridge
/// published after the snapshot's one — no gap, no duplicate — on both
/// gateway instances, for a fleet and a device subscription.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn snapshot_then_live_through_the_bridge_has_no_gap_and_no_duplicate() {
    let _serial = SERIAL.lock().await;
    let w = World::start().await;
    let tok = token(json!({}));
    let dev = unique("snap");
    let mut live = LiveChannel::open(&w.prefix).await;
    let device = Device::connect(&w.mqtt_url).await;
    let t0 = now_ms() - 60_000;
    const N: i64 = 600;
    let topic = format!("devices/{dev}/location");
    device
        .publish(
            topic.clone(),
            false,
            &json!({"ts": t0, "lat": 10.0, "lon": 20.0}),
        )
        .await;
    let published = async {
        let mut ts = Vec::new();
        while ts.last() != Some(&(t0 + N)) {
            for e in live.next().await {
                if e["msg"]["type"] == "location" && e["msg"]["device"] == dev.as_str() {
                    ts.push(e["msg"]["ts"].as_i64().unwrap());
                }
            }
        }
        ts
    };
    let writer = async {
        for i in 1..=N {
            let p = json!({"ts": t0 + i, "lat": 10.0 + i as f64 * 1e-5, "lon": 20.0});
            device.publish(topic.clone(), false, &p).await;
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    };
    let subscribers = async {
        // Subscribe while the flow is under way.
        tokio::time::sleep(Duration::from_millis(300)).await;
        let mut fleet = w.a.ws(&tok).await;
        let mut one = w.b.ws(&tok).await;
        let (snap_f, _) = fleet.subscribe(json!({"fleet": true})).await;
        let (snap_d, _) = one.subscribe(json!({"devices": [dev.clone()]})).await;
        [(fleet, snap_f.unwrap()), (one, snap_d.unwrap())]
    };
    let (published, (), clients) = tokio::join!(published, writer, subscribers);
    for (mut ws, snap) in clients {
        let snap: Vec<&Value> = snap
            .iter()
            .filter(|d| d["device"] == dev.as_str())
            .collect();
        assert_eq!(snap.len(), 1, "the device is in the snapshot: {snap:?}");
        let from = snap[0]["ts"].as_i64().unwrap();
        assert!(from < t0 + N, "the subscribe raced past the whole flow");
        let want: Vec<i64> = published.iter().copied().filter(|&t| t > from).collect();
        let mut got = Vec::new();
        while got.last() != Some(&(t0 + N)) {
            let v = ws.recv().await;
            if v["type"] == "location" && v["device"] == dev.as_str() {
                got.push(v["ts"].as_i64().unwrap());
            }
        }
        assert_eq!(got, want, "live after a snapshot at ts {from}");
    }
    drop(device);
    w.stop().await;
}

/// A WebSocket client whose socket takes almost nothing into the kernel's
/// receive buffer, so that a client that stops reading backs up into the
/// gateway's queue after a few kilobytes rather than megabytes.
async fn tight_client(gw: &Gateway, token: &str) -> Ws {
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    let stream = socket.connect(gw.addr).await.unwrap();
    let (stream, _) = tokio_tungstenite::client_async(
        gw.ws_url(token),
        tokio_tungstenite::MaybeTlsStream::Plain(stream),
    )
    .await
    .unwrap();
    Ws { stream }
}

/// Reads locations until every device's `last` ts has arrived; returns how
/// many arrived and the receive-minus-send latencies in ms. Fails on a
/// location that does not move its device forward.
async fn read_until_last(ws: &mut Ws, devices: &[String], last: i64) -> (usize, Vec<i64>) {
    let mut seen: std::collections::HashMap<String, i64> = std::collections::HashMap::new();
    let mut done = 0;
    let mut n = 0;
    let mut lat = Vec::new();
    while done < devices.len() {
        let v = ws.recv().await;
        if v["type"] != "location" {
            continue;
        }
        n += 1;
        let (d, ts) = (v["device"].as_str().unwrap(), v["ts"].as_i64().unwrap());
        if ts != last {
            lat.push(now_ms() - ts);
        }
        let prev = seen.insert(d.to_owned(), ts);
        assert!(prev.is_none_or(|p| p < ts), "{d}: {ts} after {prev:?}");
        if ts == last {
            done += 1;
        }
    }
    (n, lat)
}

fn percentile(v: &mut [i64], p: f64) -> i64 {
    v.sort_unstable();
    v.get(((v.len() as f64 * p) as usize).min(v.len().saturating_sub(1)))
        .copied()
        .unwrap_or(0)
}

/// Pins (issue 3, "slow consumers"): 20 000 locations flow through the
/// bridge while one fleet client reads nothing. Its queue stays bounded:
/// every location published for it was either sent or coalesced into a
/// newer one of the same device (latest wins), and after the flow it gets
/// each device's last position. A second client on the same gateway
/// receives every single location the bridge published, in order — the
/// stalled one never held it back. Its latency is printed, not asserted
/// (benchmarks measure speed; `fieldcast-sim bench`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_client_stays_bounded_and_does_not_hold_back_others() {
    let _serial = SERIAL.lock().await;
    let w = World::start().await;
    let tok = token(json!({}));
    const DEVICES: usize = 100;
    const PER_DEVICE: usize = 200;
    let run = unique("stall");
    let devices: Vec<String> = (0..DEVICES).map(|i| format!("{run}-{i:03}")).collect();

    // What the bridge publishes is the reference: a plain Redis subscriber
    // counts the locations of this run on the live channel.
    let mut live = LiveChannel::open(&w.prefix).await;

    let mut stalled = tight_client(&w.a, &tok).await;
    stalled.subscribe(json!({"fleet": true})).await;
    let mut fast = w.a.ws(&tok).await;
    fast.subscribe(json!({"fleet": true})).await;
    let coalesced_before = w.a.metric("fieldcast_gateway_coalesced_total").await;

    // Each device's ts is its send time (strictly increasing), so the
    // fast client's receive time minus ts is the device-to-client latency.
    let device = Device::connect(&w.mqtt_url).await;
    // The last round carries a ts known in advance (5 min ahead, within
    // the bridge's allowed skew) so that readers know when they are done.
    let last = now_ms() + 300_000;
    let publisher = {
        let (client, devices) = (device.client.clone(), devices.clone());
        tokio::spawn(async move {
            let mut prev = 0;
            for k in 1..=PER_DEVICE {
                let round = if k == PER_DEVICE {
                    last
                } else {
                    now_ms().max(prev + 1)
                };
                prev = round;
                for d in &devices {
                    let ts = round;
                    let p = json!({"ts": ts, "lat": 10.0 + k as f64 * 1e-4, "lon": 20.0});
                    client
                        .publish(
                            format!("devices/{d}/location"),
                            QoS::AtLeastOnce,
                            false,
                            p.to_string(),
                        )
                        .await
                        .unwrap();
                }
                // ~5 000 locations/s: a steady flow, not one burst.
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
    };
    let published = async {
        let (mut n, mut done) = (0usize, 0usize);
        while done < DEVICES {
            let envelopes = live.next().await;
            for e in envelopes {
                if e["msg"]["type"] == "location"
                    && e["msg"]["device"]
                        .as_str()
                        .is_some_and(|d| d.starts_with(&run))
                {
                    n += 1;
                    if e["msg"]["ts"] == last {
                        done += 1;
                    }
                }
            }
        }
        n
    };
    let (published, (fast_n, mut fast_lat)) =
        tokio::join!(published, read_until_last(&mut fast, &devices, last));
    publisher.await.unwrap();
    assert!(
        published >= DEVICES * PER_DEVICE / 2,
        "only {published} published"
    );
    assert_eq!(
        fast_n, published,
        "the reading client must get every location the bridge published"
    );

    // Now the stalled client reads what its bounded queue kept.
    let (stalled_n, _) = read_until_last(&mut stalled, &devices, last).await;
    let coalesced = w.a.metric("fieldcast_gateway_coalesced_total").await - coalesced_before;
    eprintln!(
        "published {published}; fast client got {fast_n}, latency p50 {} ms, p99 {} ms, max {} ms; \
         stalled client got {stalled_n}, {coalesced} coalesced",
        percentile(&mut fast_lat, 0.5),
        percentile(&mut fast_lat, 0.99),
        percentile(&mut fast_lat, 1.0),
    );
    assert!(
        coalesced > 0.0,
        "the stalled client's queue never coalesced"
    );
    assert!(
        stalled_n < published / 2,
        "the stalled client got {stalled_n}"
    );
    assert_eq!(
        stalled_n + coalesced as usize,
        published,
        "every location for the stalled client was either sent or superseded"
    );
    assert_eq!(
        w.a.metric("fieldcast_gateway_slow_consumer_closes_total")
            .await,
        0.0,
        "locations alone never close a client"
    );
    drop(device);
    w.stop().await;
}
