//! The partitioned Redis layout on a Redis Cluster (docs/redis-layout.md):
//! three primaries from Debian's `redis-server` on free ports
//! (`fieldcast_testkit::RedisCluster`), the same code path as on one Redis.
//!
//! - fed by the bridge's own scripts, two gateways read and follow every
//!   partition: `GET /api/devices`, bbox, snapshot then live, resume from a
//!   cursor;
//! - the whole chain (device -> broker -> bridge -> cluster -> gateway);
//! - a primary killed under load: its replica takes over, the bridge loses
//!   nothing it acknowledged, and the live flow of every partition resumes;
//! - readiness per partition: the bridge and the gateway are not ready
//!   exactly while some partition's primary is down, and keep serving the
//!   other partitions meanwhile.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::time::{Duration, Instant};

use fred::prelude::HashesInterface;
use rumqttc::{AsyncClient, MqttOptions, QoS};
use serde_json::{json, Value};

use fieldcast_core::partition::key_slot;
use fieldcast_core::time::now_ms;
use fieldcast_gateway::{AuthMode, Config};
use fieldcast_testkit::chain::Chain;
use fieldcast_testkit::{unique, wait_until, RedisCluster};
use support::*;

const T0: i64 = 1_763_800_000_000;
/// Devices per test: enough that every primary holds some.
const FLEET: usize = 48;

/// `FLEET` device ids and the primary (port) each one's keys live on;
/// asserts that they cover every primary, or the test would prove less.
async fn spread(cluster: &RedisCluster, keys: &fieldcast_core::Keys, tag: &str) -> Vec<String> {
    let ids: Vec<String> = (0..FLEET).map(|i| format!("{tag}-{i}")).collect();
    let mut primaries = BTreeSet::new();
    for id in &ids {
        let slot = key_slot(&keys.device(id));
        primaries.insert(cluster.primary_for_slot(slot).await.unwrap());
    }
    assert_eq!(primaries.len(), 3, "the fleet spans every primary");
    ids
}

/// A position per device, on a grid east of Greenwich: device `i` at
/// (0.1 + i/100, 51.0 + i/100).
fn position(i: usize) -> (f64, f64) {
    (0.1 + i as f64 / 100.0, 51.0 + i as f64 / 100.0)
}

fn ids_of(devices: &[Value]) -> BTreeSet<String> {
    devices
        .iter()
        .map(|d| d["device"].as_str().unwrap().to_owned())
        .collect()
}

/// Reads the next frames until one of each `want` location has come.
async fn locations_of(ws: &mut Ws, want: &BTreeSet<String>) -> BTreeSet<String> {
    let mut got = BTreeSet::new();
    while got != *want {
        let v = ws.recv().await;
        if v["type"] == "location" {
            got.insert(v["device"].as_str().unwrap().to_owned());
        }
    }
    got
}

/// Pins, on a 3-primary cluster, fed by the bridge's scripts: two gateways
/// list every partition's devices (`/api/devices`, plain and with a bbox),
/// give a fleet snapshot of all of them then every live update from every
/// partition, and resume events from a cursor.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_gateways_read_and_follow_every_partition_on_a_cluster() {
    let cluster = RedisCluster::start(3, 0).await.unwrap();
    let env = Env::with_redis(cluster.url()).await;
    let ids = spread(&cluster, &env.keys(), "c").await;
    for (i, id) in ids.iter().enumerate() {
        let (lon, lat) = position(i);
        assert!(env.location(id, T0, lat, lon).await);
    }
    let (a, b) = (env.gateway().await, env.gateway().await);
    let t = token(json!({}));
    let all: BTreeSet<String> = ids.iter().cloned().collect();

    let (s, list) = get_json(a.addr, "/api/devices", &t).await;
    assert_eq!(s, 200, "{list}");
    assert_eq!(ids_of(list.as_array().unwrap()), all);
    // The box holds devices 0..=9 (lon 0.1..0.19, lat 51.0..51.09).
    let (s, list) = get_json(b.addr, "/api/devices?bbox=0.05,50.95,0.195,51.095", &t).await;
    assert_eq!(s, 200, "{list}");
    let first_ten: BTreeSet<String> = ids[..10].iter().cloned().collect();
    assert_eq!(ids_of(list.as_array().unwrap()), first_ten);

    let mut on_a = a.ws(&t).await;
    let mut on_b = b.ws(&t).await;
    let (snap, c0) = on_a.subscribe(json!({"fleet": true})).await;
    assert_eq!(ids_of(&snap.unwrap()), all);
    let (snap, _) = on_b
        .subscribe(json!({"bbox": [0.05, 50.95, 0.195, 51.095]}))
        .await;
    assert_eq!(ids_of(&snap.unwrap()), first_ten);
    for (i, id) in ids.iter().enumerate() {
        let (lon, lat) = position(i);
        assert!(env.location(id, T0 + 1, lat, lon).await);
    }
    assert_eq!(locations_of(&mut on_a, &all).await, all);
    assert_eq!(locations_of(&mut on_b, &first_ten).await, first_ten);

    // Events from devices of every partition, then a resume after the
    // first one's cursor.
    let mut cursors = Vec::new();
    for (n, id) in ids.iter().step_by(12).enumerate() {
        assert!(env.event(id, &format!("e{n}"), T0 + 2, json!({})).await);
        let v = loop {
            let v = on_a.recv().await;
            if v["type"] == "event" {
                break v;
            }
        };
        assert_eq!(v["id"], format!("e{n}"));
        cursors.push(v["cursor"].as_str().unwrap().to_owned());
    }
    assert_eq!(cursors.len(), 4);
    assert_eq!(
        cursors[0].split(':').next(),
        c0.split(':').next(),
        "one life of the log"
    );
    let mut resumed = a.ws(&t).await;
    resumed
        .send(json!({"op":"subscribe","ref":"r","fleet":true,"since": cursors[0]}))
        .await;
    let mut replayed = Vec::new();
    loop {
        let v = resumed.recv().await;
        match v["type"].as_str().unwrap() {
            "event" => replayed.push(v["id"].as_str().unwrap().to_owned()),
            "subscribed" => break,
            _ => {}
        }
    }
    // Each in its own partition: merged by stream id, which two events
    // logged in the same millisecond on two nodes share (then partition
    // order decides), so only the set is the promise across partitions.
    replayed.sort();
    assert_eq!(replayed, ["e1", "e2", "e3"]);
    a.stop().await;
    b.stop().await;
}

/// A device-side client publishing at QoS 1; `acked` counts PUBACKs.
struct Device {
    client: AsyncClient,
    acked: std::sync::Arc<std::sync::atomic::AtomicU64>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Device {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Device {
    async fn connect(mqtt_url: &str) -> Device {
        use std::sync::atomic::Ordering;
        let u = fieldcast_mqtt::BrokerUrl::parse(mqtt_url).unwrap();
        let mut opts = MqttOptions::new(unique("dev"), u.host, u.port);
        opts.set_keep_alive(Duration::from_secs(30));
        let (client, mut el) = AsyncClient::new(opts, 10_000);
        let acked = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
        let (tx, rx) = tokio::sync::oneshot::channel();
        let count = acked.clone();
        let task = tokio::spawn(async move {
            let mut tx = Some(tx);
            loop {
                match el.poll().await {
                    Ok(rumqttc::Event::Incoming(rumqttc::Packet::ConnAck(_))) => {
                        if let Some(tx) = tx.take() {
                            let _ = tx.send(());
                        }
                    }
                    Ok(rumqttc::Event::Incoming(rumqttc::Packet::PubAck(_))) => {
                        count.fetch_add(1, Ordering::Relaxed);
                    }
                    Ok(_) => {}
                    Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
                }
            }
        });
        tokio::time::timeout(WAIT, rx).await.unwrap().ok();
        Device {
            client,
            acked,
            task,
        }
    }

    async fn publish(&self, topic: String, payload: Value) {
        self.client
            .publish(topic, QoS::AtLeastOnce, false, payload.to_string())
            .await
            .unwrap();
    }

    fn acked(&self) -> u64 {
        self.acked.load(std::sync::atomic::Ordering::Relaxed)
    }
}

fn gateway_config(chain: &Chain) -> Config {
    let store = chain.store();
    let mut c = Config::for_tests(&store.redis_url, &store.redis_prefix, &store.database_url);
    c.auth = AuthMode::Jwt;
    c.jwt_secret = Some(SECRET.into());
    c
}

/// The whole chain on `cluster`: a bridge (its prefix tagged `tag`), a
/// gateway, and a fleet spread over every primary whose first locations
/// every partition lists.
struct ChainWorld {
    chain: Chain,
    keys: fieldcast_core::Keys,
    ids: Vec<String>,
    gw: Gateway,
    token: String,
    dev: Device,
    /// The first locations' `ts`.
    ts: i64,
}

impl ChainWorld {
    async fn start(cluster: &RedisCluster, tag: &str, fleet: &str) -> ChainWorld {
        let chain = Chain::start_on(tag, cluster.url()).await.unwrap();
        let keys = fieldcast_core::Keys::new(
            &chain.prefix,
            fieldcast_core::Partitions::default(),
            fieldcast_core::Topology::Cluster,
        );
        let ids = spread(cluster, &keys, &unique(fleet)).await;
        let gw = Gateway::start(gateway_config(&chain)).await;
        let token = token(json!({}));
        let dev = Device::connect(&chain.broker.url).await;
        let ts = now_ms();
        for (i, id) in ids.iter().enumerate() {
            let (lon, lat) = position(i);
            dev.publish(
                format!("devices/{id}/location"),
                json!({"ts": ts, "lat": lat, "lon": lon}),
            )
            .await;
        }
        let all: BTreeSet<String> = ids.iter().cloned().collect();
        let (addr, t) = (gw.addr, token.clone());
        wait_until(WAIT, "every device listed", || {
            let (t, all) = (t.clone(), all.clone());
            async move {
                let (_, v) = get_json(addr, "/api/devices", &t).await;
                v.as_array().is_some_and(|a| ids_of(a) == all)
            }
        })
        .await
        .unwrap();
        ChainWorld {
            chain,
            keys,
            ids,
            gw,
            token,
            dev,
            ts,
        }
    }

    async fn stop(self) {
        self.gw.stop().await;
        self.chain.stop().await.unwrap();
    }
}

/// Pins the whole chain on a cluster: the bridge's scripts run there (one
/// slot each) and a gateway's fleet snapshot and live feed see every
/// partition's devices, with their exact positions.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_whole_chain_runs_on_a_cluster() {
    let cluster = RedisCluster::start(3, 0).await.unwrap();
    let w = ChainWorld::start(&cluster, "gwc", "w").await;
    let (ids, gw, t, dev, ts) = (&w.ids, &w.gw, &w.token, &w.dev, w.ts);
    let all: BTreeSet<String> = ids.iter().cloned().collect();
    let mut ws = gw.ws(t).await;
    let (snap, _) = ws.subscribe(json!({"fleet": true})).await;
    let snap = snap.unwrap();
    for d in &snap {
        let i: usize = d["device"]
            .as_str()
            .unwrap()
            .rsplit('-')
            .next()
            .unwrap()
            .parse()
            .unwrap();
        assert_eq!(
            (d["lon"].as_f64(), d["lat"].as_f64()),
            (Some(position(i).0), Some(position(i).1))
        );
    }
    for (i, id) in ids.iter().enumerate() {
        let (lon, lat) = position(i);
        dev.publish(
            format!("devices/{id}/location"),
            json!({"ts": ts + 1, "lat": lat, "lon": lon}),
        )
        .await;
    }
    assert_eq!(locations_of(&mut ws, &all).await, all);
    dev.publish(
        format!("devices/{}/events", ids[5]),
        json!({"id": "ev-1", "kind": "panic", "severity": "critical"}),
    )
    .await;
    let v = loop {
        let v = ws.recv().await;
        if v["type"] == "event" {
            break v;
        }
    };
    assert_eq!(v["id"], "ev-1");
    w.stop().await;
}

/// How long the live flow of a killed primary's partitions may take to
/// come back: the failover (2-3 s with a 1 s node timeout), the clients'
/// reconnect backoff (up to 5 s) and the feed's resubscribe, with room for
/// a loaded 2-core CI machine.
const RESUME_WITHIN: Duration = Duration::from_secs(30);

/// Pins, on 3 primaries x 1 replica under a steady load of locations
/// (every partition) and QoS 1 events: SIGKILL the primary holding the
/// most of the fleet. Its replica takes over; the gateway turns ready
/// again; every partition's live flow resumes within [`RESUME_WITHIN`];
/// every event the bridge acknowledged is in PostgreSQL; the hot state
/// ends at each device's last location. (The event log in Redis may lose
/// what the old primary had not replicated yet: docs/redis-layout.md.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_primary_under_load_loses_nothing_acknowledged() {
    let mut cluster = RedisCluster::start(3, 1).await.unwrap();
    let chain = Chain::start_on("gwf", cluster.url()).await.unwrap();
    let keys = fieldcast_core::Keys::new(
        &chain.prefix,
        fieldcast_core::Partitions::default(),
        fieldcast_core::Topology::Cluster,
    );
    let ids = spread(&cluster, &keys, &unique("f")).await;
    // The primary with the most of the fleet, and one slot of it.
    let mut by_primary: BTreeMap<u16, Vec<u16>> = BTreeMap::new();
    for id in &ids {
        let slot = key_slot(&keys.device(id));
        by_primary
            .entry(cluster.primary_for_slot(slot).await.unwrap())
            .or_default()
            .push(slot);
    }
    let victim_slot = by_primary.values().max_by_key(|s| s.len()).unwrap()[0];
    let gw = Gateway::start(gateway_config(&chain)).await;
    let t = token(json!({}));
    let mut ws = gw.ws(&t).await;
    ws.subscribe(json!({"fleet": true})).await;

    // The load: every device moves every 100 ms; one event every 100 ms.
    let dev = Device::connect(&chain.broker.url).await;
    let stop = tokio_util::sync::CancellationToken::new();
    // Device time: now, so that the bridge keeps it (T0 is past retention).
    let t0 = now_ms();
    // The round the load is in: round n's locations carry ts t0 + n.
    let round = std::sync::Arc::new(std::sync::atomic::AtomicI64::new(0));
    let load = tokio::spawn({
        let (ids, stop, client) = (ids.clone(), stop.clone(), dev.client.clone());
        let round = round.clone();
        async move {
            let mut n = 0i64;
            let mut tick = tokio::time::interval(Duration::from_millis(100));
            while !stop.is_cancelled() {
                tick.tick().await;
                n += 1;
                round.store(n, std::sync::atomic::Ordering::Relaxed);
                for (i, id) in ids.iter().enumerate() {
                    let (lon, lat) = position(i);
                    let body = json!({"ts": t0 + n, "lat": lat, "lon": lon}).to_string();
                    let _ = client
                        .publish(
                            format!("devices/{id}/location"),
                            QoS::AtLeastOnce,
                            false,
                            body,
                        )
                        .await;
                }
                let body =
                    json!({"id": format!("ev-{n}"), "kind": "k", "severity": "info"}).to_string();
                let _ = client
                    .publish(
                        format!("devices/{}/events", ids[n as usize % FLEET]),
                        QoS::AtLeastOnce,
                        false,
                        body,
                    )
                    .await;
            }
            n
        }
    });
    // Live from every device before the kill.
    let all: BTreeSet<String> = ids.iter().cloned().collect();
    assert_eq!(locations_of(&mut ws, &all).await, all);

    let killed_at = Instant::now();
    let round_at_kill = round.load(std::sync::atomic::Ordering::Relaxed);
    let old = cluster.kill_primary(victim_slot).await.unwrap();
    let new = cluster.wait_failover(victim_slot).await.unwrap();
    assert_ne!(old, new);
    // Locations published after the kill, until every device has been
    // heard again.
    let mut heard = HashSet::new();
    let resumed = loop {
        let v = match tokio::time::timeout(Duration::from_secs(1), ws.try_recv()).await {
            Ok(Ok(v)) => v,
            Ok(Err(e)) => panic!("socket ended: {e:?}"),
            Err(_) => {
                assert!(
                    killed_at.elapsed() < RESUME_WITHIN,
                    "live flow not back after {RESUME_WITHIN:?}: heard {} of {FLEET}",
                    heard.len()
                );
                continue;
            }
        };
        if v["type"] == "location" && v["ts"].as_i64().unwrap() > t0 + round_at_kill {
            heard.insert(v["device"].as_str().unwrap().to_owned());
        }
        if heard.len() == FLEET {
            break killed_at.elapsed();
        }
        assert!(
            killed_at.elapsed() < RESUME_WITHIN,
            "live flow not back after {RESUME_WITHIN:?}: heard {} of {FLEET}",
            heard.len()
        );
    };
    let addr = gw.addr;
    wait_until(WAIT, "gateway ready again", || async move {
        http(addr, "GET", "/readyz", None, None).await.0 == 200
    })
    .await
    .unwrap();
    let (_, _, text) = http(addr, "GET", "/metrics", None, None).await;
    let metric = |name: &str| -> f64 {
        text.lines()
            .find_map(|l| l.strip_prefix(name)?.trim().parse().ok())
            .unwrap_or_else(|| panic!("{name} missing from /metrics"))
    };
    let (reconnects, resyncs) = (
        metric("fieldcast_gateway_redis_reconnects_total"),
        metric("fieldcast_gateway_feed_resyncs_total"),
    );
    eprintln!(
        "failover: primary {old} -> {new}; every device live again {resumed:?} after the kill; \
         feed: {reconnects} reconnects, {resyncs} resyncs"
    );
    // The node reconnects of one failover come in a burst: the feed
    // resubscribes (and every client resyncs) once they settle, not once
    // per node. A second resync is allowed for a subscribe that failed
    // while the replica was still being promoted.
    assert!(
        (1.0..=2.0).contains(&resyncs),
        "{resyncs} resyncs for one failover ({reconnects} reconnects)"
    );

    stop.cancel();
    let last = load.await.unwrap();
    let published = last as u64 * (FLEET as u64 + 1);
    let d = &dev;
    wait_until(
        Duration::from_secs(30),
        "every publish acknowledged",
        || async move { d.acked() >= published },
    )
    .await
    .unwrap();
    // Acknowledged means stored: every event reaches PostgreSQL. The
    // device's PUBACK is the broker's, so the bridge's last batch (flushed
    // every 300 ms here) may still be on its way.
    let pg = chain.db.client().await.unwrap();
    let count = || async {
        let n: i64 = pg
            .query_one("SELECT count(DISTINCT event_id) FROM events", &[])
            .await
            .unwrap()
            .get(0);
        n
    };
    let _ = wait_until(WAIT, "every event stored", || async {
        count().await >= last
    })
    .await;
    assert_eq!(count().await, last, "events acknowledged but not stored");
    // The hot state of every device ends at its last location.
    let redis = redis_client(cluster.url()).await;
    let hh = &redis;
    let keys = &keys;
    let ids = &ids;
    wait_until(
        Duration::from_secs(30),
        "hot state at the last location",
        || async move {
            let mut ok = true;
            for id in ids {
                let ts: Option<String> = hh.hget(keys.device(id), "ts").await.unwrap_or(None);
                ok &= ts == Some((t0 + last).to_string());
            }
            ok
        },
    )
    .await
    .unwrap();
    gw.stop().await;
    chain.stop().await.unwrap();
}

/// `/readyz` of the gateway at `gw` or the bridge's admin server at
/// `admin`: `(status, unreachable partitions)`.
async fn readyz(addr: std::net::SocketAddr) -> (u16, u64) {
    let (status, _, body) = http(addr, "GET", "/readyz", None, None).await;
    let v: Value = serde_json::from_str(&body).unwrap_or(Value::Null);
    (
        status,
        v["redis_partitions_unreachable"]
            .as_u64()
            .unwrap_or(u64::MAX),
    )
}

/// Pins readiness per partition, on 3 primaries x 1 replica: a replica
/// lost leaves every partition reachable, so the gateway and the bridge
/// stay ready; its primary lost too (nothing can take over), its
/// partitions are unreachable and both turn not ready, naming them in
/// `/readyz`. (fred reconnects a cluster client as a whole, so while one
/// node is gone every partition reads as unreachable through it: the
/// count is at least the dead node's partitions. fred.rs issue #145.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readiness_follows_the_partitions_of_a_killed_primary() {
    let mut cluster = RedisCluster::start(3, 1).await.unwrap();
    let w = ChainWorld::start(&cluster, "gwr", "r").await;
    let (keys, ids, t) = (&w.keys, &w.ids, &w.token);
    let (addr, admin) = (w.gw.addr, w.chain.bridge.admin_addr);
    for at in [addr, admin] {
        wait_until(WAIT, "ready, every partition reachable", || async move {
            readyz(at).await == (200, 0)
        })
        .await
        .unwrap();
    }

    // The node serving the first device's partition, and how many of the
    // partitions it serves.
    let slot = key_slot(&keys.device(&ids[0]));
    let victim = cluster.primary_for_slot(slot).await.unwrap();
    let mut on_victim = 0u64;
    for part in keys.all() {
        if cluster.primary_for_slot(key_slot(&part.geo)).await.unwrap() == victim {
            on_victim += 1;
        }
    }
    assert!(on_victim > 0 && on_victim < keys.all().len() as u64);

    // A replica gone: every partition still answers. Watched for longer
    // than the node timeout (the cluster marks the replica failed) and
    // several probes.
    cluster.kill_replica_of(slot).await.unwrap();
    let until = Instant::now() + Duration::from_secs(5);
    while Instant::now() < until {
        for at in [addr, admin] {
            assert_eq!(
                readyz(at).await,
                (200, 0),
                "a lost replica costs no partition"
            );
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let (status, _) = get_json(addr, &format!("/api/devices/{}", ids[0]), t).await;
    assert_eq!(status, 200);

    // Its primary gone too: nothing takes over.
    cluster.kill_primary(slot).await.unwrap();
    for (at, who) in [(addr, "gateway"), (admin, "bridge")] {
        wait_until(WAIT, &format!("{who} not ready"), || async move {
            let (status, down) = readyz(at).await;
            status == 503 && down >= on_victim && down != u64::MAX
        })
        .await
        .unwrap();
    }
    w.stop().await;
}
