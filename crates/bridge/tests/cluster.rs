//! The bridge on a Redis Cluster (docs/redis-layout.md, issue #13): three
//! primaries from `fieldcast_testkit::RedisCluster` on free ports, the
//! bridge's own private broker and database, and the same code path as on
//! one Redis. What the layout promises there, through the real bridge
//! (MQTT in, Redis and PostgreSQL out):
//!
//! - each device's hot state, and its partition's device set and geo
//!   index, in its partition's slot; stale messages change nothing;
//! - every update that moved the state forward once on its partition's
//!   shard channel; events with their position in the partition's log;
//! - QoS 1 events logged once in their partition's log and stored once;
//! - two bridges in one `$share` group splitting the work, and one of them
//!   stopped mid-flow.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use fred::clients::SubscriberClient;
use fred::prelude::*;
use fred::types::geo::{GeoPosition, GeoUnit};
use fred::types::CustomCommand;
use rumqttc::QoS;
use serde_json::{json, Value};
use tokio::sync::mpsc;

use fieldcast_bridge::metrics::Metrics;
use fieldcast_core::geo::INDEX_CELL_DEG;
use fieldcast_core::partition::key_slot;
use fieldcast_core::{Keys, Partition, Topology};
use fieldcast_testkit::{unique, wait_until, RedisCluster};
use support::*;

/// One test at a time: each starts a cluster of three `redis-server`s, a
/// broker, a database and one or more bridges, which is load enough for a
/// 2-core machine.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// What every test here starts from, one test at a time ([`SERIAL`]): a
/// 3-primary cluster, a harness (broker, database, prefix) on it, its
/// keys, and the primary (port) of every partition.
async fn on_a_cluster() -> (
    tokio::sync::MutexGuard<'static, ()>,
    RedisCluster,
    Harness,
    Keys,
    Vec<u16>,
) {
    let serial = SERIAL.lock().await;
    fieldcast_testkit::init_tracing();
    let cluster = RedisCluster::start(3, 0).await.unwrap();
    let h = Harness::private_on(cluster.url()).await;
    let keys = h.keys();
    let owners = primaries(&cluster, &keys).await;
    (serial, cluster, h, keys, owners)
}

/// The primary (port) of every partition's slot, partitions in order.
async fn primaries(cluster: &RedisCluster, keys: &Keys) -> Vec<u16> {
    let mut out = Vec::with_capacity(keys.all().len());
    for part in keys.all() {
        out.push(cluster.primary_for_slot(key_slot(&part.geo)).await.unwrap());
    }
    out
}

/// `per_partition` device ids in every partition (`<tag>-<i>`, tried in
/// turn), in the order found. Asserts that each device's hash is in its
/// partition's slot and that the fleet spans every primary, or a test
/// would prove less than it says.
fn fleet(keys: &Keys, primaries: &[u16], tag: &str, per_partition: usize) -> Vec<String> {
    let parts = keys.all().len();
    let mut count = vec![0usize; parts];
    let mut ids = Vec::with_capacity(parts * per_partition);
    let mut i = 0;
    while ids.len() < parts * per_partition {
        let id = format!("{tag}-{i}");
        i += 1;
        let (p, part) = keys.of(&id);
        if count[p.index()] < per_partition {
            count[p.index()] += 1;
            assert_eq!(key_slot(&keys.device(&id)), key_slot(&part.geo), "{id}");
            ids.push(id);
        }
    }
    let spanned: BTreeSet<u16> = ids
        .iter()
        .map(|id| primaries[keys.of(id).0.index()])
        .collect();
    assert_eq!(spanned.len(), 3, "the fleet spans every primary");
    ids
}

/// The devices of each partition.
fn by_partition<'a>(keys: &Keys, ids: &'a [String]) -> BTreeMap<Partition, BTreeSet<&'a str>> {
    let mut out: BTreeMap<Partition, BTreeSet<&str>> = BTreeMap::new();
    for id in ids {
        out.entry(keys.of(id).0).or_default().insert(id);
    }
    out
}

/// Every live shard channel, each by its own `SSUBSCRIBE` (one naming
/// channels of several slots is `CROSSSLOT` on a cluster), and every item
/// received: one envelope each (a batch of locations split), with the
/// channel it came on.
struct Live {
    _sub: SubscriberClient,
    rx: mpsc::UnboundedReceiver<(String, Value)>,
    seen: Vec<(String, Value)>,
}

impl Live {
    async fn on(url: &str, keys: &Keys) -> Live {
        // fred's broadcast channel drops the oldest for a receiver that lags.
        let sub = Builder::from_config(Config::from_url(url).unwrap())
            .with_performance_config(|p| p.broadcast_channel_capacity = 100_000)
            .build_subscriber_client()
            .unwrap();
        sub.init().await.unwrap();
        let mut messages = sub.message_rx();
        let (tx, rx) = mpsc::unbounded_channel();
        tokio::spawn(async move {
            loop {
                let m = match messages.recv().await {
                    Ok(m) => m,
                    Err(tokio::sync::broadcast::error::RecvError::Lagged(n)) => {
                        // Ends the stream: the test fails on what it misses.
                        eprintln!("live subscriber lagged: {n} messages lost in the client");
                        return;
                    }
                    Err(tokio::sync::broadcast::error::RecvError::Closed) => return,
                };
                let channel = m.channel.to_string();
                let text = m.value.as_string().unwrap();
                let items = match serde_json::from_str::<Value>(&text).unwrap() {
                    Value::Array(batch) => batch,
                    one => vec![one],
                };
                for item in items {
                    if tx.send((channel.clone(), item)).is_err() {
                        return;
                    }
                }
            }
        });
        assert_eq!(keys.topology(), Topology::Cluster);
        let channels = keys.live_channels();
        assert_eq!(channels.len(), keys.all().len(), "a channel per partition");
        futures::future::try_join_all(channels.iter().map(|ch| sub.ssubscribe(ch.as_str())))
            .await
            .unwrap();
        Live {
            _sub: sub,
            rx,
            seen: Vec::new(),
        }
    }

    /// Receives until `want` (type, device, ts or event id) have all come,
    /// within [`WAIT`].
    async fn until(&mut self, what: &str, want: &BTreeSet<Item>) {
        let deadline = tokio::time::Instant::now() + WAIT;
        let mut have: BTreeSet<Item> = self.seen.iter().map(|(_, v)| item(v)).collect();
        while !want.is_subset(&have) {
            match tokio::time::timeout_at(deadline, self.rx.recv()).await {
                Ok(Some((channel, v))) => {
                    have.insert(item(&v));
                    self.seen.push((channel, v));
                }
                Ok(None) => panic!("{what}: the live subscriber ended"),
                Err(_) => panic!(
                    "{what}: {} of {} live updates within {WAIT:?}",
                    want.intersection(&have).count(),
                    want.len()
                ),
            }
        }
    }

    /// How often each item came. Asserts that each came on its device's
    /// partition's channel, and that a device's locations and statuses went
    /// only forward in `ts` (a shard channel delivers in the order of
    /// publication, and all of a device's updates share one).
    fn counts(&self, keys: &Keys) -> BTreeMap<Item, usize> {
        let mut out = BTreeMap::new();
        let mut newest: HashMap<(String, String), i64> = HashMap::new();
        for (channel, v) in &self.seen {
            let it = item(v);
            assert_eq!(
                channel,
                &keys.of(&it.1).1.live,
                "{v} on its partition's channel"
            );
            if it.0 != "event" {
                let ts = v["msg"]["ts"].as_i64().unwrap();
                if let Some(before) = newest.insert((it.0.clone(), it.1.clone()), ts) {
                    assert!(ts > before, "{v} pushed after ts {before}");
                }
            }
            *out.entry(it).or_default() += 1;
        }
        out
    }

    /// The events received, by (device, event id): their `pos`.
    fn event_positions(&self) -> BTreeMap<(String, String), Vec<String>> {
        let mut out: BTreeMap<(String, String), Vec<String>> = BTreeMap::new();
        for (_, v) in &self.seen {
            if v["msg"]["type"] == "event" {
                let key = (str_of(&v["msg"]["device"]), str_of(&v["msg"]["id"]));
                out.entry(key)
                    .or_default()
                    .push(v["pos"].as_str().unwrap().to_owned());
            }
        }
        out
    }
}

/// A live update: (type, device, ts of a location or status, id of an
/// event).
type Item = (String, String, String);

fn item(v: &Value) -> Item {
    let msg = &v["msg"];
    let ty = str_of(&msg["type"]);
    let which = if ty == "event" {
        str_of(&msg["id"])
    } else {
        msg["ts"].as_i64().unwrap().to_string()
    };
    (ty, str_of(&msg["device"]), which)
}

fn str_of(v: &Value) -> String {
    v.as_str().unwrap().to_owned()
}

fn located(ty: &str, id: &str, which: impl ToString) -> Item {
    (ty.to_owned(), id.to_owned(), which.to_string())
}

/// Device `i`'s position in round `r`.
fn position(i: usize, r: i64) -> (f64, f64) {
    (
        -5.0 + i as f64 * 0.07 + r as f64 * 0.001,
        40.0 + i as f64 * 0.05 + r as f64 * 0.001,
    )
}

/// Device `i`'s status in round `r`: (online, battery, signal).
fn status_of(i: usize, r: i64) -> (bool, f64, f64) {
    (r % 2 == 1, ((i as i64 + r) % 100) as f64, -50.0 - r as f64)
}

async fn publish(dev: &Device, topic: String, payload: Value) {
    dev.publish(&topic, QoS::AtLeastOnce, false, payload.to_string())
        .await;
}

/// The non-zero samples of a bridge's metrics, for a failure message.
fn debug(metrics: &Metrics) -> String {
    metrics
        .encode()
        .lines()
        .filter(|l| !l.starts_with('#') && !l.contains("_bucket") && !l.ends_with(" 0"))
        .collect::<Vec<_>>()
        .join("\n")
}

fn m(metrics: &Metrics, series: &str) -> f64 {
    metric(&metrics.encode(), series)
}

const EVENTS: &str = "fieldcast_bridge_messages_total{kind=\"event\"}";
const STATUSES: &str = "fieldcast_bridge_messages_total{kind=\"status\"}";
const LOCATIONS: &str = "fieldcast_bridge_messages_total{kind=\"location\"}";
const DUPLICATES: &str = "fieldcast_bridge_duplicate_events_total";
const ACKS_PENDING: &str = "fieldcast_bridge_acks_pending";

/// Every key on every node of the cluster.
async fn all_keys(cluster: &RedisCluster) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    for port in cluster.ports() {
        let node = redis_client(&format!("redis://127.0.0.1:{port}")).await;
        let keys: Vec<String> = node
            .custom(CustomCommand::new_static("KEYS", None, false), vec!["*"])
            .await
            .unwrap();
        let _ = node.quit().await;
        out.extend(keys);
    }
    out
}

/// One partition's event log: its epoch and its entries (stream id,
/// device, event id) in stream order.
type Log = (String, Vec<(String, String, String)>);

/// Every partition's event log that exists, by partition.
async fn event_logs(redis: &Client, keys: &Keys) -> BTreeMap<Partition, Log> {
    let mut out = BTreeMap::new();
    for p in keys.partitions().all() {
        let part = keys.partition(p);
        let entries: Vec<(String, HashMap<String, String>)> =
            redis.xrange(&part.events, "-", "+", None).await.unwrap();
        let epoch: Option<String> = redis.get(&part.epoch).await.unwrap();
        if entries.is_empty() && epoch.is_none() {
            continue;
        }
        let entries = entries
            .into_iter()
            .map(|(sid, f)| {
                let j: Value = serde_json::from_str(&f["j"]).unwrap();
                assert_eq!(j["device"], f["d"], "{j}");
                (sid, f["d"].clone(), str_of(&j["id"]))
            })
            .collect();
        out.insert(p, (epoch.expect("a log has its epoch"), entries));
    }
    out
}

/// Asserts that the logs hold exactly `want` (device, event id), each once
/// and in its device's partition, and that each was pushed live exactly
/// once, on its partition's channel, with `pos` = the log's
/// `<epoch>:<stream id>` of its entry.
fn assert_logged_and_pushed_once(
    keys: &Keys,
    logs: &BTreeMap<Partition, Log>,
    live: &Live,
    want: &BTreeSet<(String, String)>,
) {
    let mut logged: BTreeMap<(String, String), Vec<String>> = BTreeMap::new();
    for (p, (epoch, entries)) in logs {
        assert_eq!(epoch.len(), 16, "epoch {epoch:?}");
        for (sid, device, id) in entries {
            assert_eq!(
                keys.of(device).0,
                *p,
                "{device}/{id} in its partition's log"
            );
            logged
                .entry((device.clone(), id.clone()))
                .or_default()
                .push(format!("{epoch}:{sid}"));
        }
    }
    let twice: Vec<_> = logged.iter().filter(|(_, v)| v.len() != 1).collect();
    assert!(twice.is_empty(), "logged more than once: {twice:?}");
    let logged_keys: BTreeSet<_> = logged.keys().cloned().collect();
    assert_eq!(&logged_keys, want, "the logs hold exactly the events");

    let _channels_and_order_checked = live.counts(keys);
    let pushed = live.event_positions();
    let pushed_keys: BTreeSet<_> = pushed.keys().cloned().collect();
    assert_eq!(&pushed_keys, want, "the events pushed live");
    for (key, positions) in &pushed {
        assert_eq!(
            positions, &logged[key],
            "{key:?}: pushed once, pos = its entry"
        );
    }
}

/// Sends one location of `id` and waits for it live: on its first
/// `NOSCRIPT` the bridge loads its scripts on every primary, so the tests'
/// barriers start from a cluster that has the scripts. (A batch meeting
/// `NOSCRIPT` on some primaries sends only those calls again:
/// `a_primary_without_the_scripts_costs_no_miscount`.)
async fn warm_up(dev: &Device, live: &mut Live, id: &str, ts: i64) -> Item {
    publish(
        dev,
        format!("devices/{id}/location"),
        json!({"ts": ts, "lat": 0.5, "lon": 0.5}),
    )
    .await;
    let it = located("location", id, ts);
    live.until("the warm-up location", &BTreeSet::from([it.clone()]))
        .await;
    it
}

/// Asserts that every device's hash holds round `r`'s location and status,
/// its `last_seen` at `ts`, and that its partition's geo index has it at
/// round `r`'s position.
async fn assert_round_state(h: &Harness, ids: &[String], r: i64, ts: i64, speed: Option<&str>) {
    let keys = h.keys();
    for (i, id) in ids.iter().enumerate() {
        let state = h.state(id).await;
        let (lon, lat) = position(i, r);
        let (online, battery, signal) = status_of(i, r);
        let f = |k: &str| state[k].parse::<f64>().unwrap();
        assert_eq!((f("lon"), f("lat")), (lon, lat), "{id}: {state:?}");
        assert_eq!(state["ts"], ts.to_string(), "{id}: {state:?}");
        assert_eq!(state.get("speed").map(String::as_str), speed, "{id}");
        assert_eq!(state["sts"], ts.to_string(), "{id}: {state:?}");
        assert_eq!(state["online"], if online { "1" } else { "0" }, "{id}");
        assert_eq!((f("battery"), f("signal")), (battery, signal), "{id}");
        assert_eq!(state["last_seen"], ts.to_string(), "{id}");
        let pos: Vec<Option<GeoPosition>> = h
            .redis
            .geopos(&keys.of(id).1.geo, id.clone())
            .await
            .unwrap();
        let pos = pos[0].clone().expect("in its partition's geo index");
        // The index moves when a device leaves its cell, so it may hold a
        // position of this round's cell, not this very one; Redis keeps a
        // 52-bit geohash: well under a metre.
        let near = INDEX_CELL_DEG + 1e-5;
        assert!(
            (pos.longitude - lon).abs() < near && (pos.latitude - lat).abs() < near,
            "{id} at {pos:?}, not in the cell of ({lon}, {lat})"
        );
    }
}

/// Pins, on 3 primaries, two devices in every one of the 64 partitions:
/// each device's hot state is the hash `P{n}:dev:<id>` of its partition,
/// with its newest location and status; each partition's device set and
/// geo index hold exactly its devices (GEOSEARCH finds them, GEOPOS where
/// they are); the cluster holds no other key; locations and statuses older
/// than the stored ones change nothing and are never pushed; every update
/// that moved the state is pushed exactly once, on its partition's shard
/// channel.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hot_state_geo_and_live_of_every_partition_on_a_cluster() {
    let (_serial, cluster, h, keys, owners) = on_a_cluster().await;
    let ids = fleet(&keys, &owners, &unique("s"), 2);
    let n = ids.len();
    let bridge = h.start().await;
    let metrics = bridge.handles.metrics.clone();
    let mut live = Live::on(cluster.url(), &keys).await;
    let dev = device(&h.mqtt_url).await;
    let t0 = now_ms() - 120_000;
    let ts = |r: i64| t0 + 10 * r;
    let mut want = BTreeSet::from([warm_up(&dev, &mut live, &ids[0], ts(0)).await]);

    // Rounds 1 and 2, each pushed live before the next is sent.
    for r in 1..=2 {
        let mut round = BTreeSet::new();
        for (i, id) in ids.iter().enumerate() {
            let (lon, lat) = position(i, r);
            let (online, battery, signal) = status_of(i, r);
            publish(
                &dev,
                format!("devices/{id}/location"),
                json!({"ts": ts(r), "lat": lat, "lon": lon}),
            )
            .await;
            publish(
                &dev,
                format!("devices/{id}/status"),
                json!({"ts": ts(r), "online": online, "battery": battery, "signal": signal}),
            )
            .await;
            round.insert(located("location", id, ts(r)));
            round.insert(located("status", id, ts(r)));
        }
        live.until(&format!("round {r}"), &round).await;
        want.extend(round);
    }

    // Older than round 2 (ts between rounds 1 and 2), far elsewhere: each
    // one reaches Redis (nothing else of its device is pending) and is
    // refused there.
    for id in &ids {
        publish(
            &dev,
            format!("devices/{id}/location"),
            json!({"ts": ts(1) + 5, "lat": -33.0, "lon": 151.0}),
        )
        .await;
        publish(
            &dev,
            format!("devices/{id}/status"),
            json!({"ts": ts(1) + 5, "online": true, "battery": 1.0}),
        )
        .await;
    }
    let mm = &metrics;
    wait_until(WAIT, "every stale message judged", || async move {
        m(mm, "fieldcast_bridge_stale_total{kind=\"location\"}") >= n as f64
            && m(mm, "fieldcast_bridge_stale_total{kind=\"status\"}") >= n as f64
            && m(mm, ACKS_PENDING) == 0.0
    })
    .await
    .unwrap();
    assert_round_state(&h, &ids, 2, ts(2), None).await;

    // Round 3: the newest, and the barrier: a shard channel delivers in
    // order, so anything the stale round had pushed came before it.
    let mut round = BTreeSet::new();
    for (i, id) in ids.iter().enumerate() {
        let (lon, lat) = position(i, 3);
        let (online, battery, signal) = status_of(i, 3);
        publish(
            &dev,
            format!("devices/{id}/location"),
            json!({"ts": ts(3), "lat": lat, "lon": lon, "speed": 3.5}),
        )
        .await;
        publish(
            &dev,
            format!("devices/{id}/status"),
            json!({"ts": ts(3), "online": online, "battery": battery, "signal": signal}),
        )
        .await;
        round.insert(located("location", id, ts(3)));
        round.insert(located("status", id, ts(3)));
    }
    live.until("round 3", &round).await;
    want.extend(round);

    let counts = live.counts(&keys);
    let got: BTreeSet<Item> = counts.keys().cloned().collect();
    assert_eq!(got, want, "exactly the updates that moved the state");
    let repeated: Vec<_> = counts.iter().filter(|(_, c)| **c != 1).collect();
    assert!(repeated.is_empty(), "pushed more than once: {repeated:?}");
    // Spot-check an envelope's content against what was sent.
    let (_, last) = live
        .seen
        .iter()
        .find(|(_, v)| item(v) == located("location", &ids[7], ts(3)))
        .unwrap();
    let (lon, lat) = position(7, 3);
    assert_eq!(
        last["msg"],
        json!({"type": "location", "device": ids[7], "ts": ts(3), "lat": lat, "lon": lon, "speed": 3.5})
    );

    // Each device's hash, in its partition: round 3's values.
    for id in &ids {
        let (p, _) = keys.of(id);
        assert_eq!(keys.device(id), format!("{}{{{p}}}:dev:{id}", h.prefix));
    }
    assert_round_state(&h, &ids, 3, ts(3), Some("3.5")).await;

    // Each partition's set and geo index: exactly its devices.
    let parts = by_partition(&keys, &ids);
    assert_eq!(parts.len(), keys.all().len(), "every partition has devices");
    for (p, devices) in &parts {
        let part = keys.partition(*p);
        let members: BTreeSet<String> = h.redis.smembers(&part.devices).await.unwrap();
        let found: Vec<String> = h
            .redis
            .geosearch(
                &part.geo,
                None,
                Some((0.0, 43.0).into()),
                None,
                Some((2000.0, 2000.0, GeoUnit::Kilometers)),
                None,
                None,
                false,
                false,
                false,
            )
            .await
            .unwrap();
        let found: BTreeSet<String> = found.into_iter().collect();
        let devices: BTreeSet<String> = devices.iter().map(|d| d.to_string()).collect();
        assert_eq!(members, devices, "partition {p}'s device set");
        assert_eq!(found, devices, "partition {p}'s geo index");
        let zcard: i64 = h.redis.zcard(&part.geo).await.unwrap();
        assert_eq!(zcard, devices.len() as i64, "partition {p}'s geo index");
    }

    // Nothing outside the partitions' keys.
    let mut expected: BTreeSet<String> = ids.iter().map(|id| keys.device(id)).collect();
    for p in parts.keys() {
        expected.insert(keys.partition(*p).devices.clone());
        expected.insert(keys.partition(*p).geo.clone());
    }
    // Every partition's transitions stream, made empty with its consumer
    // group when the bridge starts (docs/geofences.md).
    expected.extend(keys.all().iter().map(|p| p.transitions.clone()));
    assert_eq!(all_keys(&cluster).await, expected);

    // History keeps every message, the stale ones too.
    h.wait_count("SELECT count(*) FROM locations", (4 * n + 1) as i64)
        .await;
    h.wait_count("SELECT count(*) FROM device_status", (4 * n) as i64)
        .await;
    let text = metrics.encode();
    assert_eq!(metric(&text, LOCATIONS), (4 * n + 1) as f64);
    assert_eq!(metric(&text, STATUSES), (4 * n) as f64);
    assert_eq!(metric(&text, "fieldcast_bridge_coalesced_total"), 0.0);
    bridge.stop().await;
}

/// Pins, on 3 primaries: QoS 1 events of devices in partitions of every
/// primary, each sent three times (as a device's redeliveries would), are
/// logged once in their own partition's log (in the order a device sent
/// them), stored once in PostgreSQL, pushed live once on their partition's
/// channel with `pos` = `<epoch>:<stream id>` of their entry and the
/// partition's `P{n}:events:epoch`; `last_seen` moves to each device's
/// newest event; no other partition gets a log.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_are_logged_and_stored_once_per_partition_on_a_cluster() {
    let (_serial, cluster, h, keys, owners) = on_a_cluster().await;
    // Two devices in each of three partitions of every primary.
    let all = fleet(&keys, &owners, &unique("e"), 2);
    let mut chosen: BTreeMap<u16, BTreeSet<Partition>> = BTreeMap::new();
    for id in &all {
        let p = keys.of(id).0;
        let on = chosen.entry(owners[p.index()]).or_default();
        if on.len() < 3 {
            on.insert(p);
        }
    }
    assert_eq!(chosen.len(), 3);
    let wanted: BTreeSet<Partition> = chosen.values().flatten().copied().collect();
    let ids: Vec<String> = all
        .into_iter()
        .filter(|id| wanted.contains(&keys.of(id).0))
        .collect();
    assert_eq!(ids.len(), 18);

    let bridge = h.start().await;
    let mut live = Live::on(cluster.url(), &keys).await;
    let dev = device(&h.mqtt_url).await;
    let t0 = now_ms() - 60_000;
    warm_up(&dev, &mut live, &ids[0], t0 - 1000).await;
    let ts = |i: usize, e: usize| t0 + 10 * i as i64 + e as i64;
    let mut want = BTreeSet::new();
    let mut want_live = BTreeSet::new();
    for e in 0..2 {
        for _ in 0..3 {
            for (i, id) in ids.iter().enumerate() {
                publish(
                    &dev,
                    format!("devices/{id}/events"),
                    json!({"id": format!("ev-{e}"), "kind": "door", "severity": "warning", "ts": ts(i, e)}),
                )
                .await;
            }
        }
        for id in &ids {
            want.insert((id.clone(), format!("ev-{e}")));
            want_live.insert(located("event", id, format!("ev-{e}")));
        }
    }
    let n = want.len() as i64;
    live.until("every event live", &want_live).await;
    h.wait_count("SELECT count(*) FROM events", n).await;
    let metrics = bridge.handles.metrics.clone();
    let mm = &metrics;
    // Every copy taken, stored, and judged by Redis (more than once if a
    // slow Redis step sent it through the outbox as well).
    wait_until(WAIT, "every copy judged", || async move {
        m(mm, EVENTS) == (3 * n) as f64
            && m(mm, ACKS_PENDING) == 0.0
            && m(mm, DUPLICATES) >= (2 * n) as f64
    })
    .await
    .unwrap();

    let logs = event_logs(&h.redis, &keys).await;
    assert_eq!(
        logs.keys().copied().collect::<BTreeSet<_>>(),
        wanted,
        "a log in each partition with events, none elsewhere"
    );
    assert_logged_and_pushed_once(&keys, &logs, &live, &want);
    let parts = by_partition(&keys, &ids);
    for (p, (_, entries)) in &logs {
        // The reliable lane keeps a device's order: ev-0 before ev-1.
        for id in &parts[p] {
            let order: Vec<&str> = entries
                .iter()
                .filter(|(_, d, _)| d == id)
                .map(|(_, _, e)| e.as_str())
                .collect();
            assert_eq!(order, ["ev-0", "ev-1"], "{id}");
        }
    }
    // Once in PostgreSQL, as sent.
    assert_eq!(
        h.count("SELECT count(DISTINCT (device_id, event_id)) FROM events WHERE kind = 'door' AND severity = 'warning'")
            .await,
        n
    );
    for (i, id) in ids.iter().enumerate() {
        let state = h.state(id).await;
        assert_eq!(state["last_seen"], ts(i, 1).to_string(), "{id}: {state:?}");
        let members: BTreeSet<String> = h.redis.smembers(&keys.of(id).1.devices).await.unwrap();
        assert!(members.contains(id), "{id} in its partition's set");
    }
    bridge.stop().await;
}

/// The flow of phase 2 of the two-bridge test: tick `k` (from 1) sends
/// device `ids[k % len]` a status and a location with ts `t1 + k`, and an
/// event `f-<k>`.
fn flow_device(ids: &[String], k: i64) -> &str {
    &ids[(k as usize) % ids.len()]
}

/// Pins, on 3 primaries, two bridges in one `$share` group, a device in
/// every partition:
///
/// 1. sharing: every message is taken by exactly one bridge (their
///    counters add up to what was sent, kind by kind), both take part, the
///    hot state ends at every device's newest messages, every event is
///    logged once in its partition, stored once and pushed live once;
/// 2. one bridge stopped gracefully under a steady flow of statuses,
///    locations and events: it leaves nothing it took unacknowledged, the
///    other keeps taking and storing; once the stopped one is back (its
///    persistent session held its share of the QoS 1 messages meanwhile:
///    Mosquitto keeps a stopped member in the group), every event sent is
///    stored, logged and pushed exactly once over the three bridge lives,
///    every status stored, and every device's status is its newest (the
///    late, older ones changed nothing).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_bridges_share_the_work_and_one_stops_mid_flow_on_a_cluster() {
    let (_serial, cluster, mut h, keys, owners) = on_a_cluster().await;
    let ids = fleet(&keys, &owners, &unique("b"), 1);
    let n = ids.len();
    h.extra = vec!["--mqtt-shared-group".into(), unique("grp")];
    let a_id = h.client_id.clone();
    let a = h.start().await;
    let mut live = Live::on(cluster.url(), &keys).await;
    let dev = device(&h.mqtt_url).await;
    let t0 = now_ms() - 120_000;
    let ts = |r: i64| t0 + 10 * r;
    // Through A alone, so that B meets a cluster with the scripts loaded.
    warm_up(&dev, &mut live, &ids[0], ts(0)).await;
    h.client_id = unique("bridge-b");
    let b = h.start().await;
    let (a_m, b_m) = (a.handles.metrics.clone(), b.handles.metrics.clone());

    // 1. Three rounds, each pushed live before the next is sent.
    let mut events = BTreeSet::new();
    for r in 1..=3 {
        let mut round = BTreeSet::new();
        for (i, id) in ids.iter().enumerate() {
            let (lon, lat) = position(i, r);
            let (online, battery, signal) = status_of(i, r);
            publish(
                &dev,
                format!("devices/{id}/location"),
                json!({"ts": ts(r), "lat": lat, "lon": lon}),
            )
            .await;
            publish(
                &dev,
                format!("devices/{id}/status"),
                json!({"ts": ts(r), "online": online, "battery": battery, "signal": signal}),
            )
            .await;
            // Twice: the group hands consecutive copies to different
            // bridges, so the two race to log it.
            for _ in 0..2 {
                publish(
                    &dev,
                    format!("devices/{id}/events"),
                    json!({"id": format!("r-{r}"), "kind": "k", "ts": ts(r)}),
                )
                .await;
            }
            round.insert(located("location", id, ts(r)));
            round.insert(located("status", id, ts(r)));
            round.insert(located("event", id, format!("r-{r}")));
            events.insert((id.clone(), format!("r-{r}")));
        }
        live.until(&format!("round {r}"), &round).await;
    }
    h.wait_count("SELECT count(*) FROM events", (3 * n) as i64)
        .await;
    // Every copy taken, stored and judged by Redis (more than once if a
    // slow Redis step sent it through the outbox as well).
    let (aa, bb) = (&a_m, &b_m);
    if wait_until(WAIT, "every copy of an event judged", || async move {
        m(aa, EVENTS) + m(bb, EVENTS) == (6 * n) as f64
            && m(aa, ACKS_PENDING) + m(bb, ACKS_PENDING) == 0.0
            && m(aa, DUPLICATES) + m(bb, DUPLICATES) >= (3 * n) as f64
    })
    .await
    .is_err()
    {
        panic!("A: {}\nB: {}", debug(aa), debug(bb));
    }
    // The warm-up location was A's alone.
    for (series, sent) in [(LOCATIONS, 3 * n + 1), (STATUSES, 3 * n), (EVENTS, 6 * n)] {
        let (ta, tb) = (m(&a_m, series), m(&b_m, series));
        assert_eq!(ta + tb, sent as f64, "{series}: each to exactly one bridge");
        assert!(
            ta > 0.0 && tb > 0.0,
            "{series}: both take part: {ta} / {tb}"
        );
    }
    let counts = live.counts(&keys);
    let repeated: Vec<_> = counts.iter().filter(|(_, c)| **c != 1).collect();
    assert!(repeated.is_empty(), "pushed more than once: {repeated:?}");
    assert_eq!(counts.len(), 3 * 3 * n + 1, "every update pushed");
    assert_round_state(&h, &ids, 3, ts(3), None).await;
    assert_logged_and_pushed_once(&keys, &event_logs(&h.redis, &keys).await, &live, &events);

    // 2. A steady flow; bridge A stops while both are taking it.
    let t1 = ts(3) + 1000;
    let stop = tokio_util::sync::CancellationToken::new();
    let ticks = Arc::new(AtomicI64::new(0));
    let flow = tokio::spawn({
        let (ids, stop, ticks) = (ids.clone(), stop.clone(), ticks.clone());
        let client = dev.client.clone();
        async move {
            let mut tick = tokio::time::interval(Duration::from_millis(10));
            let mut k = 0;
            while !stop.is_cancelled() {
                tick.tick().await;
                k += 1;
                let id = flow_device(&ids, k);
                let sends = [
                    (
                        "status",
                        json!({"ts": t1 + k, "online": k % 2 == 0, "battery": (k % 100) as f64}),
                    ),
                    ("location", json!({"ts": t1 + k, "lat": 10.0, "lon": 10.0})),
                    (
                        "events",
                        json!({"id": format!("f-{k}"), "kind": "k", "ts": t1 + k}),
                    ),
                ];
                for (what, body) in sends {
                    client
                        .publish(
                            format!("devices/{id}/{what}"),
                            QoS::AtLeastOnce,
                            false,
                            body.to_string(),
                        )
                        .await
                        .unwrap();
                }
                ticks.store(k, Ordering::Relaxed);
            }
        }
    });
    let both_take = (m(aa, EVENTS), m(bb, EVENTS));
    wait_until(WAIT, "both bridges take the flow", || async move {
        m(aa, EVENTS) >= both_take.0 + 10.0 && m(bb, EVENTS) >= both_take.1 + 10.0
    })
    .await
    .unwrap();
    a.stop().await;
    assert_eq!(
        m(&a_m, ACKS_PENDING),
        0.0,
        "A acknowledged everything it took (after storing it)"
    );
    let a_taken = m(&a_m, EVENTS);
    let stored_at_stop = h.count("SELECT count(*) FROM events").await;
    let b_at_stop = m(&b_m, EVENTS);
    // The survivor keeps taking, and storing.
    let hh = &h;
    wait_until(WAIT, "B takes and stores on its own", || async move {
        m(bb, EVENTS) >= b_at_stop + 20.0
            && hh.count("SELECT count(*) FROM events").await >= stored_at_stop + 20
    })
    .await
    .unwrap();
    stop.cancel();
    flow.await.unwrap();
    let last = ticks.load(Ordering::Relaxed);

    // A comes back under its client id: its session kept its share.
    h.client_id = a_id;
    let a2 = h.start().await;
    let a2_m = a2.handles.metrics.clone();
    let total = 3 * n as i64 + last;
    h.wait_count("SELECT count(*) FROM events", total).await;
    for k in 1..=last {
        events.insert((flow_device(&ids, k).to_owned(), format!("f-{k}")));
    }
    let flow_events: BTreeSet<Item> = (1..=last)
        .map(|k| located("event", flow_device(&ids, k), format!("f-{k}")))
        .collect();
    live.until("every flow event live", &flow_events).await;
    h.wait_count("SELECT count(*) FROM device_status", 3 * n as i64 + last)
        .await;

    // Whatever the broker delivered twice (a PUBACK lost at A's stop) is
    // through Redis too once nothing is left unacknowledged.
    let (bb, aa2) = (&b_m, &a2_m);
    wait_until(WAIT, "B and A again acknowledged all", || async move {
        m(bb, ACKS_PENDING) + m(aa2, ACKS_PENDING) == 0.0
    })
    .await
    .unwrap();
    assert_logged_and_pushed_once(&keys, &event_logs(&h.redis, &keys).await, &live, &events);

    // Every device's status is its newest (older ones that A's session
    // delivered late changed nothing), and a last location after the
    // restart reaches every device.
    let t2 = t1 + last + 1000;
    for id in &ids {
        publish(
            &dev,
            format!("devices/{id}/location"),
            json!({"ts": t2, "lat": 1.5, "lon": 2.5}),
        )
        .await;
    }
    let finals: BTreeSet<Item> = ids.iter().map(|id| located("location", id, t2)).collect();
    live.until("the last locations", &finals).await;
    let expected: Vec<(String, HashMap<&str, String>)> = ids
        .iter()
        .enumerate()
        .map(|(i, id)| {
            let newest = (1..=last).rev().find(|k| flow_device(&ids, *k) == id);
            let (sts, online, battery) = match newest {
                Some(k) => (t1 + k, k % 2 == 0, (k % 100) as f64),
                None => {
                    let (online, battery, _) = status_of(i, 3);
                    (ts(3), online, battery)
                }
            };
            let fields = HashMap::from([
                ("sts", sts.to_string()),
                ("online", if online { "1" } else { "0" }.to_owned()),
                ("battery", fieldcast_core::live::fmt_f64(battery)),
                ("ts", t2.to_string()),
                ("lat", "1.5".to_owned()),
                ("lon", "2.5".to_owned()),
                ("last_seen", t2.to_string()),
            ]);
            (id.clone(), fields)
        })
        .collect();
    // The Redis side of a status may trail its row in PostgreSQL (the
    // outbox, under load): wait for it, then name any device still wrong.
    let (hh, ex) = (&h, &expected);
    let wrong = || async move {
        let mut wrong = Vec::new();
        for (id, fields) in ex {
            let state = hh.state(id).await;
            if fields.iter().any(|(k, v)| state.get(*k) != Some(v)) {
                wrong.push(format!("{id}: {state:?}, want {fields:?}"));
            }
        }
        wrong
    };
    if wait_until(WAIT, "every device's newest state", || async {
        wrong().await.is_empty()
    })
    .await
    .is_err()
    {
        panic!("hot state not the newest: {:#?}", wrong().await);
    }
    // Statuses and locations went live only forward, never twice.
    let counts = live.counts(&keys);
    let repeated: Vec<_> = counts.iter().filter(|(_, c)| **c != 1).collect();
    assert!(repeated.is_empty(), "pushed more than once: {repeated:?}");
    eprintln!(
        "flow: {last} ticks; events taken: A {a_taken}, B {}, A again {}",
        m(&b_m, EVENTS),
        m(&a2_m, EVENTS)
    );
    a2.stop().await;
    b.stop().await;
}

/// Pins the retry after a partial `NOSCRIPT` (a promoted replica, a
/// flushed node: the other primaries still have the scripts): only the
/// calls that got it are sent again, so nothing the other primaries
/// applied the first time is counted as a duplicate or stale, and every
/// event is logged and pushed once. Sending the whole batch again counted
/// ~2/3 of the events as duplicates here.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_primary_without_the_scripts_costs_no_miscount() {
    let (_serial, cluster, h, keys, owners) = on_a_cluster().await;
    let ids = fleet(&keys, &owners, &unique("n"), 1);
    let bridge = h.start().await;
    let mut live = Live::on(cluster.url(), &keys).await;
    let dev = device(&h.mqtt_url).await;
    let t0 = now_ms() - 60_000;
    warm_up(&dev, &mut live, &ids[0], t0 - 1000).await;

    // One primary forgets the scripts; the others keep them.
    let node = fred::prelude::Builder::from_config(
        fred::prelude::Config::from_url(&format!("redis://127.0.0.1:{}", owners[0])).unwrap(),
    )
    .build()
    .unwrap();
    node.init().await.unwrap();
    let _: fred::types::Value = node
        .custom(
            fred::types::CustomCommand::new_static("SCRIPT", None, false),
            vec!["FLUSH"],
        )
        .await
        .unwrap();

    let mut want = BTreeSet::new();
    let mut want_live = BTreeSet::new();
    for (i, id) in ids.iter().enumerate() {
        publish(
            &dev,
            format!("devices/{id}/events"),
            json!({"id": "ev-n", "kind": "door", "ts": t0 + i as i64}),
        )
        .await;
        want.insert((id.clone(), "ev-n".to_owned()));
        want_live.insert(located("event", id, "ev-n"));
    }
    let n = want.len() as i64;
    live.until("every event live", &want_live).await;
    h.wait_count("SELECT count(*) FROM events WHERE event_id = 'ev-n'", n)
        .await;
    let metrics = bridge.handles.metrics.clone();
    let mm = &metrics;
    wait_until(WAIT, "every event taken and acknowledged", || async move {
        m(mm, EVENTS) == n as f64 && m(mm, ACKS_PENDING) == 0.0
    })
    .await
    .unwrap();
    let logs = event_logs(&h.redis, &keys).await;
    assert_logged_and_pushed_once(&keys, &logs, &live, &want);
    // A Redis step slower than its timeout goes through the outbox and is
    // judged twice, which says nothing of this retry; it does not happen
    // on a machine that is not starved.
    let outbox = m(mm, "fieldcast_bridge_outbox_records_total");
    if outbox == 0.0 {
        assert_eq!(m(mm, DUPLICATES), 0.0, "{}", debug(mm));
    } else {
        eprintln!("{outbox} records went through the outbox: duplicates not judged");
    }
    bridge.stop().await;
}
