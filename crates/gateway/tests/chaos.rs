//! The chaos test of issue 14: the whole clustered topology on loopback,
//! under load, loses one node of every tier in turn — and nothing that was
//! acknowledged.
//!
//! **Topology** (every process the test's own, on free ports; only the
//! shared PostgreSQL server is used, with a private database): 3 NATS
//! nodes with JetStream and MQTT (testkit [`NatsCluster`]), a Redis
//! Cluster of 3 primaries with 1 replica each ([`RedisCluster`]), 2
//! `fieldcast-bridge` processes on the JetStream source
//! (`FIELDCAST_NATS_URL` listing all three nodes), 2 `fieldcast-gateway`
//! processes behind HAProxy running the shipped `deploy/haproxy.cfg`
//! ([`HaProxy`]). Bridges and gateways are real processes, so a kill is a
//! real SIGKILL.
//!
//! **Load.** [`DEVICES`] devices, spread over the three MQTT listeners,
//! each every [`TICK`]: a QoS 0 location, a QoS 1 event (`ev-<n>`), and
//! every fifth tick a QoS 1 status. A device has at most one QoS 1
//! message in flight and waits for its PUBACK: that event is then
//! *acknowledged*. On a lost connection or a PUBACK that does not come
//! within [`PUBACK_WITHIN`], it does what a device in the field does:
//! connects to the next listener and publishes the same message again
//! (same event id: the bridge's dedup makes that safe). When the load
//! stops, every device publishes a final location and status at QoS 1,
//! newer than anything before, and waits for their PUBACKs: the state its
//! hot state must end at. (No Last Will: the broker publishes it without
//! `ts`, so it would be the newest status by design and the end state
//! would depend on when a killed node's clients are noticed.)
//!
//! **Viewers.** Two, each through HAProxy (leastconn puts one on each
//! gateway), subscribed to the whole fleet. A viewer whose socket ends
//! reconnects through HAProxy and subscribes with `since` = the last
//! cursor it got, as PROTOCOL.md §4 tells clients to. Any `error` frame
//! (`cursor_expired` included: a replay that cannot be made) is a failure.
//!
//! **Kills**, one after another, each followed by a recovery check and a
//! restart: (1) the NATS node that leads the `FIELDCAST` stream (a
//! follower with `FIELDCAST_CHAOS_NATS_VICTIM=follower`, see below), (2) the
//! Redis primary holding most of the fleet (its replica takes over; the
//! old primary comes back as a replica), (3) a bridge (restarted with its
//! own spool, whose outbox it replays), (4) the gateway of one viewer
//! (that viewer resumes on the other; the other viewer, when leastconn
//! put it on the other gateway, as it mostly does, stays connected).
//! After each kill, the flow is *back* when both viewers have received,
//! from every device, an event the device published after the kill;
//! that must happen within [`FLOW_BACK`] (30 s). What it covers: a
//! device's reconnect to another listener and a stream leader election
//! (a few seconds); a failover (2–3 s at a 1 s node timeout) plus the
//! clients' reconnect backoff (up to 5 s) and the gateway feed's settle
//! (up to 3 s); what the dead bridge held, redelivered after the
//! consumer's `ack_wait` (5 s here, [`ACK_WAIT`], instead of the default
//! 30 s, to keep the test short); HAProxy's redispatch and a resume.
//! Measured over 34 runs on a 2-core machine running other work: NATS
//! 0.1–12.6 s (all devices stall, not only the killed node's, when that
//! node led one of nats-server's own MQTT streams: their PUBACKs wait for
//! its re-election), Redis 3.6–4.1 s, bridge 0.1–0.3 s (once 27.5 s,
//! not seen again, cause unknown), gateway 0.2–1.5 s. 30 s leaves room
//! for a loaded CI machine while still catching a tier that does not
//! come back by itself. The times are printed, and a recovery slower
//! than 5 s prints every 5 s which devices it still waits for.
//!
//! **Invariants checked at the end**: every acknowledged event is in
//! PostgreSQL exactly once, and nothing else is; each viewer received
//! every acknowledged event exactly once (none missing, none twice, none
//! unknown); each device's Redis hash (read through a cluster client)
//! holds its final location (`ts`, `lat`, `lon`) and final status (`sts`,
//! `online`, `battery`); no process died by itself (every NATS node,
//! Redis node, bridge, gateway and HAProxy still runs, restarted ones
//! included); and SIGTERM then stops every bridge and gateway with status
//! 0.
//!
//! **The bridge binary.** This test runs this crate's `fieldcast-gateway`
//! (`CARGO_BIN_EXE_`) and the `fieldcast-bridge` binary next to it in the
//! target directory. `cargo test --workspace` (scripts/test.sh, CI) builds
//! both; run alone, build the bridge first:
//! `cargo build -p fieldcast-bridge && cargo test -p fieldcast-gateway --test chaos`.
//!
//! 20–50 s on a 2-core machine when it passes; about 60 s when events
//! are lost (it waits 30 s for them before it reports).
//!
//! **The NATS kill is the stream leader's.** Killing the node that leads
//! the `FIELDCAST` stream leaves the stream without a leader until the
//! survivors elect one (about 5 s here); meanwhile nats-server still
//! PUBACKs the devices' QoS 1 PUBLISHes on the surviving nodes (the
//! PUBACK waits for its own `$MQTT_msgs` stream, not for `FIELDCAST`).
//! Reading `FIELDCAST` alone, 32 to 536 PUBACKed events were lost in 13
//! of 19 runs, every one PUBACKed inside that window (the failure report
//! lists each lost event with the node and time of its PUBACK, and the
//! nodes' leader elections). The bridge now also reads `$MQTT_msgs`
//! (docs/nats.md, "The QoS 1 lane"), and the test waits for both bridges'
//! lanes before the first kill. `FIELDCAST_CHAOS_NATS_VICTIM=follower`
//! kills a follower instead. One other failure, seen in 3 of about 40
//! runs: a viewer got one event twice, live, before and after the resync
//! that followed the Redis kill. The promoted replica lacked the event's
//! dedup key, so the bridge's outbox replay published it again; each
//! connection now drops an event it was already sent (docs/gateway.md,
//! "Redis outage"). The report says how each copy came (connection,
//! replay or live, resyncs, cursor), should it happen again.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use fred::prelude::HashesInterface;
use futures::{SinkExt, StreamExt};
use rumqttc::{AsyncClient, Event, EventLoop, MqttOptions, Packet, QoS};
use serde_json::{json, Value};
use tokio::task::JoinHandle;
use tokio_tungstenite::tungstenite::Message as WsMessage;
use tokio_util::sync::CancellationToken;

use fieldcast_core::partition::key_slot;
use fieldcast_core::time::now_ms;
use fieldcast_testkit::{free_port, unique, wait_until, HaProxy, NatsCluster, PgDb, RedisCluster};
use support::{get, tail, token, SECRET};

const GATEWAY_BIN: &str = env!("CARGO_BIN_EXE_fieldcast-gateway");
const DEVICES: usize = 12;
const TICK: Duration = Duration::from_millis(200);
/// A PUBACK not here by then: the device tries the next listener.
const PUBACK_WITHIN: Duration = Duration::from_secs(5);
/// The bound on the flow coming back after each kill (module doc).
const FLOW_BACK: Duration = Duration::from_secs(30);
/// The consumer's `ack_wait`: how long a dead bridge's messages wait
/// before they are delivered to the other.
const ACK_WAIT: &str = "5s";
/// Bound on a process or service becoming ready, and on the end checks.
const LONG: Duration = Duration::from_secs(30);

/// Which NATS node step 1 kills: the leader of the `FIELDCAST` stream by
/// default (the hard case, see the module doc), a follower with
/// `FIELDCAST_CHAOS_NATS_VICTIM=follower`.
fn nats_victim_is_leader() -> bool {
    std::env::var("FIELDCAST_CHAOS_NATS_VICTIM").map_or(true, |v| v != "follower")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn losing_a_node_of_every_tier_loses_nothing_acknowledged() {
    fieldcast_testkit::init_tracing();
    let started = Instant::now();
    let mut world = World::start().await;
    let viewers = [
        Viewer::start(world.haproxy.addr, "a"),
        Viewer::start(world.haproxy.addr, "b"),
    ];
    for v in &viewers {
        v.wait_subscribed().await;
    }
    let fleet = Fleet::start(&world.nats);
    // Flowing before any kill.
    let t0 = now_ms();
    let warm = flow_back(&viewers, t0, &fleet.ids).await;
    eprintln!("chaos: flowing {warm:?} after the fleet started");

    let mut recovered = Vec::new();
    let mut kills: Vec<(&str, i64)> = Vec::new();

    // Both bridges read the QoS 1 copies nats-server PUBACKs for before
    // anything is killed (it makes their stream at the first MQTT
    // connection; the bridges look for it every few seconds).
    world.wait_qos1_lanes().await;

    // 1. A NATS node: the stream's leader (or a follower, on request).
    let leader = world.stream_leader().await;
    let (victim, what) = if nats_victim_is_leader() {
        (leader, "NATS node (stream leader)")
    } else {
        ((leader + 1) % 3, "NATS node (stream follower)")
    };
    let k = now_ms();
    world.nats.kill(victim).unwrap();
    kills.push((what, k));
    eprintln!("chaos: killed the {what} at {k}");
    recovered.push((what, flow_back(&viewers, k, &fleet.ids).await));
    world.nats.restart(victim).await.unwrap();

    // 2. The Redis primary holding most of the fleet.
    let slot = world.busiest_slot(&fleet.ids).await;
    let k = now_ms();
    let old = world.redis.kill_primary(slot).await.unwrap();
    kills.push(("Redis primary", k));
    eprintln!("chaos: killed the Redis primary at {}", k);
    recovered.push(("Redis primary", flow_back(&viewers, k, &fleet.ids).await));
    let new = world.redis.wait_failover(slot).await.unwrap();
    assert_ne!(old, new, "a replica took over");
    world.redis.restart(old).await.unwrap();

    // 3. A bridge.
    let k = now_ms();
    world.bridges[0].kill().await;
    kills.push(("bridge", k));
    eprintln!("chaos: killed the bridge at {}", k);
    recovered.push(("bridge", flow_back(&viewers, k, &fleet.ids).await));
    world.bridges[0].restart().await;

    // 4. The gateway of viewer a (viewer b is on the other one).
    let home = world.home_of_viewer().await;
    let k = now_ms();
    world.gateways[home].kill().await;
    kills.push(("gateway", k));
    eprintln!("chaos: killed the gateway at {}", k);
    recovered.push(("gateway", flow_back(&viewers, k, &fleet.ids).await));
    world.gateways[home].restart().await;
    world
        .haproxy
        .wait_state(&format!("gw{}", home + 1), "UP", LONG)
        .await
        .unwrap();

    // The load stops; every device's final location and status.
    let reports = fleet.finish().await;

    // No process died by itself.
    world.assert_none_crashed();

    // Every acknowledged event in PostgreSQL exactly once, nothing else.
    let acked: BTreeSet<(String, String)> = reports
        .iter()
        .flat_map(|r| r.acked.iter().map(|id| (r.device.clone(), id.clone())))
        .collect();
    let total: usize = reports.iter().map(|r| r.acked.len()).sum();
    assert_eq!(acked.len(), total, "a device acknowledged an id twice");
    let pg = world.db.client().await.unwrap();
    let want = acked.len() as i64;
    let pg_ref = &pg;
    let count = || async move {
        let n: i64 = pg_ref
            .query_one("SELECT count(*) FROM events", &[])
            .await
            .unwrap()
            .get(0);
        n
    };
    let _ = wait_until(LONG, "every acknowledged event stored", || async {
        count().await >= want
    })
    .await;
    let rows = pg
        .query(
            "SELECT device_id, event_id, count(*) FROM events GROUP BY 1, 2",
            &[],
        )
        .await
        .unwrap();
    // Every broken invariant is collected, so one run reports them all.
    let mut failures: Vec<String> = Vec::new();
    let mut stored = BTreeSet::new();
    for r in &rows {
        let (d, e, n): (String, String, i64) = (r.get(0), r.get(1), r.get(2));
        if n != 1 {
            failures.push(format!("event {d}/{e} stored {n} times"));
        }
        stored.insert((d, e));
    }
    let missing: BTreeSet<_> = acked.difference(&stored).cloned().collect();
    let unknown: Vec<_> = stored.difference(&acked).take(10).collect();
    if !missing.is_empty() || !unknown.is_empty() {
        eprintln!("chaos: kills at {kills:?}");
        eprintln!("chaos: stream: {}", world.stream_state().await);
        for r in &reports {
            for (id, (node, at)) in r.acked.iter().zip(&r.pubacks) {
                if missing.contains(&(r.device.clone(), id.clone())) {
                    eprintln!(
                        "chaos: lost {}/{id}: PUBACK from node {node} at {at}",
                        r.device
                    );
                }
            }
        }
        for i in 0..3 {
            for line in world.nats.log(i).lines() {
                if line.contains("leader") || line.contains("ERR") || line.contains("WRN") {
                    eprintln!("chaos: nats node {i}: {line}");
                }
            }
        }
    }
    if !missing.is_empty() || !unknown.is_empty() {
        failures.push(format!(
            "{} acknowledged events not stored ({}); stored but never acknowledged: {unknown:?}",
            missing.len(),
            ranges(&missing)
        ));
    }

    // Every viewer: every acknowledged event exactly once (waiting only
    // for those PostgreSQL has: the others cannot come).
    for v in &viewers {
        failures.extend(v.check_every_event_once(&acked, &stored).await);
    }

    // Hot state: each device at its final location and status.
    failures.extend(world.check_hot_state(&reports).await);
    world.assert_none_crashed();

    let reconnects: Vec<String> = viewers.iter().map(Viewer::reconnects).collect();
    for v in viewers {
        v.stop().await;
    }
    world.stop().await;
    for (what, took) in &recovered {
        eprintln!("chaos: flow back {took:?} after killing the {what}");
    }
    assert!(
        failures.is_empty(),
        "{} invariants broken:\n{}",
        failures.len(),
        failures.join("\n")
    );
    eprintln!(
        "chaos: {} events acknowledged, stored once, delivered once to each viewer \
         (reconnects {reconnects:?}); {:?} in all",
        acked.len(),
        started.elapsed()
    );
}

/// Missing events as `device: first..=last` runs of ids.
fn ranges(events: &BTreeSet<(String, String)>) -> String {
    let mut by_device: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
    for (d, e) in events {
        by_device.entry(d).or_default().push(e);
    }
    by_device
        .iter()
        .map(|(d, ids)| format!("{d}: {} ids {}..={}", ids.len(), ids[0], ids[ids.len() - 1]))
        .collect::<Vec<_>>()
        .join("; ")
}

/// Time from `since_ms` (a kill) until both viewers have received, from
/// every device, an event it published after `since_ms`; panics past
/// [`FLOW_BACK`].
async fn flow_back(viewers: &[Viewer], since_ms: i64, ids: &[String]) -> Duration {
    let from = Instant::now();
    let silent = || -> Vec<String> {
        viewers
            .iter()
            .map(|v| format!("{}: {:?}", v.name, v.silent_since(ids, since_ms)))
            .collect()
    };
    let mut next_report = from + Duration::from_secs(5);
    while !viewers.iter().all(|v| v.heard_all_after(ids, since_ms)) {
        assert!(
            from.elapsed() < FLOW_BACK,
            "the flow was not back {FLOW_BACK:?} after the kill; devices not heard since: {:?}",
            silent()
        );
        if Instant::now() >= next_report {
            // A slow recovery says who it waits for.
            eprintln!(
                "chaos: {:?} after the kill, not heard since: {:?}",
                from.elapsed(),
                silent()
            );
            next_report += Duration::from_secs(5);
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    for v in viewers {
        v.assert_no_error();
    }
    from.elapsed()
}

/// Every service of the topology.
struct World {
    nats: NatsCluster,
    redis: RedisCluster,
    db: PgDb,
    keys: fieldcast_core::Keys,
    bridges: Vec<Proc>,
    gateways: Vec<Proc>,
    haproxy: HaProxy,
    _dir: tempfile::TempDir,
}

impl World {
    async fn start() -> World {
        let bridge_bin = Path::new(GATEWAY_BIN).with_file_name("fieldcast-bridge");
        assert!(
            bridge_bin.is_file(),
            "{} is missing: this test runs the bridge binary next to the gateway's; \
             build it first (`cargo build -p fieldcast-bridge`; `cargo test --workspace` does)",
            bridge_bin.display()
        );
        let dir = tempfile::tempdir().unwrap();
        let nats = NatsCluster::start().await.unwrap();
        let redis = RedisCluster::start(3, 1).await.unwrap();
        let db = PgDb::create().await.unwrap();
        let prefix = format!("{}:", unique("chaos"));
        let keys = fieldcast_core::Keys::new(
            &prefix,
            fieldcast_core::Partitions::default(),
            fieldcast_core::Topology::Cluster,
        );
        let common = |p: &mut Proc| {
            p.env("FIELDCAST_REDIS_URL", redis.url())
                .env("FIELDCAST_REDIS_PREFIX", &prefix)
                .env("FIELDCAST_DATABASE_URL", &db.url)
                .env("RUST_LOG", "info");
        };
        let mut bridges = Vec::new();
        for i in 0..2 {
            let spool = dir.path().join(format!("spool-{i}"));
            let mut p = Proc::new(
                &format!("bridge-{i}"),
                &bridge_bin,
                dir.path(),
                "FIELDCAST_ADMIN_ADDR",
            );
            common(&mut p);
            p.env("FIELDCAST_NATS_URL", &nats.url())
                .env("FIELDCAST_NATS_ACK_WAIT", ACK_WAIT)
                .env("FIELDCAST_SPOOL_DIR", &spool.display().to_string())
                .env("FIELDCAST_FLUSH_INTERVAL", "1s");
            // One at a time: the first creates the stream and the consumer,
            // and applies the migrations the gateways need.
            p.start().await;
            bridges.push(p);
        }
        let mut gateways = Vec::new();
        for i in 0..2 {
            let mut p = Proc::new(
                &format!("gateway-{i}"),
                Path::new(GATEWAY_BIN),
                dir.path(),
                "FIELDCAST_LISTEN",
            );
            common(&mut p);
            p.env("FIELDCAST_JWT_SECRET", SECRET)
                .env("FIELDCAST_DRAIN_GRACE", "5s");
            p.start().await;
            gateways.push(p);
        }
        let addrs: Vec<SocketAddr> = gateways.iter().map(|g| g.addr).collect();
        let haproxy = HaProxy::start(&addrs).await.unwrap();
        World {
            nats,
            redis,
            db,
            keys,
            bridges,
            gateways,
            haproxy,
            _dir: dir,
        }
    }

    /// What the live NATS nodes say of the stream and its consumer.
    async fn stream_state(&self) -> String {
        let mut out = String::new();
        for i in 0..3 {
            if let Ok(text) = self.nats.jsz(i, "streams=true&consumers=true").await {
                let v: Value = serde_json::from_str(&text).unwrap_or_default();
                for account in v["account_details"].as_array().into_iter().flatten() {
                    for s in account["stream_detail"].as_array().into_iter().flatten() {
                        if s["name"] == "FIELDCAST" {
                            out.push_str(&format!(
                                "\n node {i}: state {} cluster {} consumers {}",
                                s["state"], s["cluster"], s["consumer_detail"]
                            ));
                        }
                    }
                }
            }
        }
        out
    }

    /// The index of the NATS node leading the `FIELDCAST` stream.
    /// Until every bridge's QoS 1 lane is bound (its metric says 1).
    async fn wait_qos1_lanes(&self) {
        for b in &self.bridges {
            let addr = b.addr;
            let bound = wait_until(LONG, "QoS 1 lane bound", || async move {
                get(addr, "/metrics").await.is_some_and(|(_, m)| {
                    m.lines().any(|l| l == "fieldcast_bridge_nats_qos1_lane 1")
                })
            })
            .await;
            assert!(bound.is_ok(), "{}: QoS 1 lane not bound", b.name);
        }
    }

    async fn stream_leader(&self) -> usize {
        let deadline = Instant::now() + LONG;
        loop {
            if let Some(i) = self.stream_leader_now().await {
                return i;
            }
            assert!(Instant::now() < deadline, "no leader of the stream");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    async fn stream_leader_now(&self) -> Option<usize> {
        for i in 0..3 {
            let Ok(text) = self.nats.jsz(i, "streams=true").await else {
                continue;
            };
            let Ok(v) = serde_json::from_str::<Value>(&text) else {
                continue;
            };
            for account in v["account_details"].as_array().into_iter().flatten() {
                for s in account["stream_detail"].as_array().into_iter().flatten() {
                    if s["name"] == "FIELDCAST" {
                        if let Some(l) = s["cluster"]["leader"].as_str() {
                            return (0..3).find(|&n| self.nats.name(n).unwrap() == l);
                        }
                    }
                }
            }
        }
        None
    }

    /// A slot of the Redis primary that holds the most devices.
    async fn busiest_slot(&self, ids: &[String]) -> u16 {
        let mut by_primary: BTreeMap<u16, Vec<u16>> = BTreeMap::new();
        for id in ids {
            let slot = key_slot(&self.keys.device(id));
            by_primary
                .entry(self.redis.primary_for_slot(slot).await.unwrap())
                .or_default()
                .push(slot);
        }
        by_primary.values().max_by_key(|s| s.len()).unwrap()[0]
    }

    /// A gateway that serves a viewer: the first with one when leastconn
    /// put one on each (the other viewer then stays connected), the one
    /// with both when they are on one (both resume).
    async fn home_of_viewer(&self) -> usize {
        let mut best = (0, 0.0);
        let mut counts = Vec::new();
        for (i, g) in self.gateways.iter().enumerate() {
            let n = g.connections().await.unwrap_or(0.0);
            counts.push(n);
            if n > best.1 {
                best = (i, n);
            }
        }
        eprintln!("chaos: viewers per gateway before the gateway kill: {counts:?}");
        assert!(best.1 >= 1.0, "no gateway has a viewer");
        best.0
    }

    fn assert_none_crashed(&mut self) {
        let nats = self.nats.crashed();
        let redis = self.redis.crashed();
        assert!(nats.is_empty(), "NATS nodes died: {nats:?}");
        assert!(redis.is_empty(), "Redis nodes died: {redis:?}");
        assert!(
            !self.haproxy.crashed(),
            "HAProxy died:\n{}",
            self.haproxy.log_tail()
        );
        for p in self.bridges.iter_mut().chain(self.gateways.iter_mut()) {
            p.assert_running();
        }
    }

    /// Waits (up to [`LONG`]) until every device's hash holds its final
    /// location and status; what is still wrong then.
    async fn check_hot_state(&self, reports: &[DeviceReport]) -> Option<String> {
        let redis = support::redis_client(self.redis.url()).await;
        let deadline = Instant::now() + LONG;
        loop {
            let wrong = self.hot_state_mismatch(&redis, reports).await?;
            if Instant::now() >= deadline {
                return Some(format!("hot state: {wrong}"));
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// The first field of a device's hash that is not what it must end
    /// at, or `None`.
    async fn hot_state_mismatch(
        &self,
        redis: &fred::prelude::Client,
        reports: &[DeviceReport],
    ) -> Option<String> {
        for d in reports {
            let mut h: HashMap<String, String> = redis
                .hgetall(self.keys.device(&d.device))
                .await
                .unwrap_or_default();
            fieldcast_core::live::add_location_fields(&mut h);
            let want = [
                ("ts", d.location.0.to_string()),
                ("lat", d.location.1.to_string()),
                ("lon", d.location.2.to_string()),
                ("sts", d.status.0.to_string()),
                ("online", "1".to_owned()),
                ("battery", d.status.1.to_string()),
            ];
            for (field, value) in want {
                if h.get(field) != Some(&value) {
                    return Some(format!(
                        "{}: {field} = {:?}, want {value}",
                        d.device,
                        h.get(field)
                    ));
                }
            }
        }
        None
    }

    /// SIGTERM to every bridge and gateway at once; each exits 0.
    async fn stop(mut self) {
        for p in self.bridges.iter().chain(self.gateways.iter()) {
            p.signal("TERM");
        }
        for p in self.bridges.iter_mut().chain(self.gateways.iter_mut()) {
            p.assert_exits_zero().await;
        }
    }
}

/// A bridge or gateway process: its command, its port, its log.
struct Proc {
    name: String,
    program: PathBuf,
    envs: Vec<(String, String)>,
    /// The variable that takes its listen address.
    addr_var: &'static str,
    addr: SocketAddr,
    child: Option<tokio::process::Child>,
    log: PathBuf,
}

impl Proc {
    fn new(name: &str, program: &Path, dir: &Path, addr_var: &'static str) -> Proc {
        Proc {
            name: name.to_owned(),
            program: program.to_owned(),
            envs: Vec::new(),
            addr_var,
            addr: SocketAddr::from(([127, 0, 0, 1], 0)),
            child: None,
            log: dir.join(format!("{name}.log")),
        }
    }

    fn env(&mut self, k: &str, v: &str) -> &mut Proc {
        self.envs.push((k.to_owned(), v.to_owned()));
        self
    }

    /// Starts on a fresh port (another if it is taken before the bind).
    async fn start(&mut self) {
        for _ in 0..5 {
            self.addr = SocketAddr::from(([127, 0, 0, 1], free_port()));
            if self.spawn_ready().await {
                return;
            }
        }
        panic!("{} did not start; log:\n{}", self.name, tail(&self.log));
    }

    /// Starts again on the same port (briefly retried: the old sockets may
    /// hold it for a moment).
    async fn restart(&mut self) {
        for _ in 0..10 {
            if self.spawn_ready().await {
                return;
            }
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
        panic!("{} did not restart; log:\n{}", self.name, tail(&self.log));
    }

    /// Spawns it and waits for `/readyz` 200: `false` if it exited first.
    async fn spawn_ready(&mut self) -> bool {
        let out = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .unwrap();
        let mut cmd = tokio::process::Command::new(&self.program);
        cmd.envs(self.envs.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .env(self.addr_var, self.addr.to_string())
            .stdin(Stdio::null())
            .stdout(Stdio::from(out.try_clone().unwrap()))
            .stderr(Stdio::from(out))
            .kill_on_drop(true);
        let mut child = cmd.spawn().unwrap();
        let addr = self.addr;
        let mut exited = false;
        let ready = wait_until(LONG, &format!("{} ready", self.name), || {
            exited = !matches!(child.try_wait(), Ok(None));
            let exited = exited;
            async move { exited || get(addr, "/readyz").await.is_some_and(|(s, _)| s == 200) }
        })
        .await;
        if exited {
            return false;
        }
        if let Err(e) = ready {
            panic!("{e:#}; log:\n{}", tail(&self.log));
        }
        self.child = Some(child);
        true
    }

    /// SIGKILL and reap.
    async fn kill(&mut self) {
        let mut child = self.child.take().expect("running");
        child.kill().await.unwrap();
    }

    fn signal(&self, name: &str) {
        let pid = self.child.as_ref().and_then(|c| c.id()).expect("running");
        let ok = std::process::Command::new("kill")
            .args([format!("-{name}"), pid.to_string()])
            .status()
            .unwrap()
            .success();
        assert!(ok, "kill -{name} {pid}");
    }

    fn assert_running(&mut self) {
        let child = self.child.as_mut().expect("started");
        let status = child.try_wait().unwrap();
        assert!(
            status.is_none(),
            "{} died ({status:?}); log:\n{}",
            self.name,
            tail(&self.log)
        );
    }

    async fn assert_exits_zero(&mut self) {
        let child = self.child.as_mut().expect("running");
        let status = tokio::time::timeout(LONG, child.wait())
            .await
            .unwrap_or_else(|_| panic!("{} did not exit on SIGTERM", self.name))
            .unwrap();
        assert_eq!(
            status.code(),
            Some(0),
            "{} exit; log:\n{}",
            self.name,
            tail(&self.log)
        );
        self.child = None;
    }

    /// Open WebSockets of a gateway (`fieldcast_gateway_connections`).
    async fn connections(&self) -> Option<f64> {
        let (_, body) = get(self.addr, "/metrics").await?;
        body.lines()
            .find(|l| l.starts_with("fieldcast_gateway_connections "))
            .and_then(|l| l.rsplit(' ').next()?.parse().ok())
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("--- {} log:\n{}", self.name, tail(&self.log));
        }
    }
}
/// What a device ends with: every event id it got a PUBACK for, and its
/// final location `(ts, lat, lon)` and status `(ts, battery)`.
struct DeviceReport {
    device: String,
    acked: Vec<String>,
    /// For each of `acked`: the listener that sent its PUBACK, and when
    /// (epoch ms): what a failure report needs.
    pubacks: Vec<(usize, i64)>,
    location: (i64, f64, f64),
    status: (i64, f64),
}

/// The devices, each its own task.
struct Fleet {
    ids: Vec<String>,
    stop: CancellationToken,
    tasks: Vec<JoinHandle<DeviceReport>>,
}

impl Fleet {
    fn start(nats: &NatsCluster) -> Fleet {
        let listeners: Vec<(String, u16)> = (0..3)
            .map(|i| {
                let u = fieldcast_mqtt::BrokerUrl::parse(&nats.mqtt_url(i).unwrap()).unwrap();
                (u.host, u.port)
            })
            .collect();
        let tag = unique("cd");
        let ids: Vec<String> = (0..DEVICES).map(|i| format!("{tag}-{i}")).collect();
        let stop = CancellationToken::new();
        let tasks = ids
            .iter()
            .enumerate()
            .map(|(i, id)| {
                let device = Device {
                    id: id.clone(),
                    listeners: listeners.clone(),
                    at: i % listeners.len(),
                    conn: None,
                    reconnects: 0,
                };
                tokio::spawn(device.run(i, stop.clone()))
            })
            .collect();
        Fleet { ids, stop, tasks }
    }

    async fn finish(self) -> Vec<DeviceReport> {
        self.stop.cancel();
        let mut out = Vec::new();
        for t in self.tasks {
            out.push(t.await.unwrap());
        }
        out
    }
}

/// One device: a connection to one of the listeners at a time.
struct Device {
    id: String,
    listeners: Vec<(String, u16)>,
    /// The listener it uses (or tries next).
    at: usize,
    conn: Option<(AsyncClient, EventLoop)>,
    reconnects: usize,
}

/// Bound on a device's whole publish of one message, retries included.
const DELIVER_WITHIN: Duration = Duration::from_secs(60);

impl Device {
    async fn run(mut self, i: usize, stop: CancellationToken) -> DeviceReport {
        let mut acked = Vec::new();
        let mut pubacks = Vec::new();
        let mut tick = tokio::time::interval(TICK);
        let mut last_ts = 0i64;
        let mut next_ts = || {
            last_ts = now_ms().max(last_ts + 1);
            last_ts
        };
        let position = |n: u64| {
            (
                10.0 + i as f64 * 0.5 + n as f64 * 1e-4,
                20.0 + n as f64 * 1e-4,
            )
        };
        let mut n: u64 = 0;
        let location = |ts: i64, n: u64| {
            let (lat, lon) = position(n);
            json!({"ts": ts, "lat": lat, "lon": lon}).to_string()
        };
        let status = |ts: i64, n: u64| {
            json!({"ts": ts, "online": true, "battery": (n % 100) as f64}).to_string()
        };
        while !stop.is_cancelled() {
            tick.tick().await;
            let ts = next_ts();
            self.send(
                &format!("devices/{}/location", self.id),
                QoS::AtMostOnce,
                location(ts, n),
            )
            .await;
            let ev = format!("ev-{n:05}");
            let ts = next_ts();
            let body = json!({"id": ev, "kind": "chaos", "ts": ts, "data": {"n": n}}).to_string();
            self.send(
                &format!("devices/{}/events", self.id),
                QoS::AtLeastOnce,
                body,
            )
            .await;
            acked.push(ev);
            pubacks.push((self.at, now_ms()));
            if n.is_multiple_of(5) {
                let ts = next_ts();
                self.send(
                    &format!("devices/{}/status", self.id),
                    QoS::AtLeastOnce,
                    status(ts, n),
                )
                .await;
            }
            n += 1;
        }
        // The final, acknowledged location and status.
        let lts = next_ts();
        self.send(
            &format!("devices/{}/location", self.id),
            QoS::AtLeastOnce,
            location(lts, n),
        )
        .await;
        let sts = next_ts();
        self.send(
            &format!("devices/{}/status", self.id),
            QoS::AtLeastOnce,
            status(sts, n),
        )
        .await;
        if let Some((client, mut el)) = self.conn.take() {
            let _ = client.disconnect().await;
            let _ = tokio::time::timeout(Duration::from_secs(1), el.poll()).await;
        }
        let (lat, lon) = position(n);
        DeviceReport {
            device: self.id,
            acked,
            pubacks,
            location: (lts, lat, lon),
            status: (sts, (n % 100) as f64),
        }
    }

    /// Publishes until it is sent (QoS 0) or PUBACKed (QoS 1), moving to
    /// the next listener whenever that fails.
    async fn send(&mut self, topic: &str, qos: QoS, body: String) {
        let deadline = Instant::now() + DELIVER_WITHIN;
        loop {
            assert!(
                Instant::now() < deadline,
                "{}: {topic} not delivered within {DELIVER_WITHIN:?} ({} reconnects)",
                self.id,
                self.reconnects
            );
            if self.conn.is_none() {
                let (host, port) = self.listeners[self.at].clone();
                match connect(&self.id, host, port).await {
                    Some(c) => self.conn = Some(c),
                    None => {
                        self.at = (self.at + 1) % self.listeners.len();
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        continue;
                    }
                }
            }
            let (client, el) = self.conn.as_mut().unwrap();
            let attempt = async {
                client.publish(topic, qos, false, body.clone()).await.ok()?;
                loop {
                    match el.poll().await.ok()? {
                        Event::Incoming(Packet::PubAck(_)) if qos == QoS::AtLeastOnce => {
                            return Some(())
                        }
                        Event::Outgoing(rumqttc::Outgoing::Publish(_))
                            if qos == QoS::AtMostOnce =>
                        {
                            return Some(())
                        }
                        _ => {}
                    }
                }
            };
            if let Ok(Some(())) = tokio::time::timeout(PUBACK_WITHIN, attempt).await {
                return;
            }
            // Lost: the next listener, and the same message again.
            self.conn = None;
            self.reconnects += 1;
            self.at = (self.at + 1) % self.listeners.len();
        }
    }
}

/// A device's MQTT connection: the CONNACK within 5 s.
async fn connect(id: &str, host: String, port: u16) -> Option<(AsyncClient, EventLoop)> {
    let mut opts = MqttOptions::new(id, host, port);
    opts.set_keep_alive(Duration::from_secs(5));
    opts.set_clean_session(true);
    let (client, mut el) = AsyncClient::new(opts, 10);
    let connack = async {
        loop {
            match el.poll().await {
                Ok(Event::Incoming(Packet::ConnAck(_))) => return true,
                Ok(_) => {}
                Err(_) => return false,
            }
        }
    };
    match tokio::time::timeout(Duration::from_secs(5), connack).await {
        Ok(true) => Some((client, el)),
        _ => None,
    }
}

/// What a viewer has received so far.
#[derive(Default)]
struct Seen {
    /// Times each `(device, event id)` arrived.
    events: HashMap<(String, String), u32>,
    /// The newest event `ts` per device.
    newest: HashMap<String, i64>,
    cursor: Option<String>,
    subscribed: bool,
    reconnects: usize,
    /// Past this connection's `subscribed` (else: replaying).
    live: bool,
    /// Snapshots without `ref`: the gateway's resyncs.
    resyncs: usize,
    /// How each event arrived, each time: for a failure's report.
    how: HashMap<(String, String), Vec<String>>,
    /// How each connection ended: a close frame, an error, or EOF.
    ends: Vec<String>,
    errors: Vec<String>,
    /// Answer to the last `ping` with this ref.
    pong: Option<String>,
}

/// A viewer of the whole fleet through HAProxy, resuming with `since`.
struct Viewer {
    name: &'static str,
    seen: Arc<Mutex<Seen>>,
    ping: tokio::sync::mpsc::Sender<String>,
    stop: CancellationToken,
    task: JoinHandle<()>,
}

impl Viewer {
    fn start(haproxy: SocketAddr, name: &'static str) -> Viewer {
        let seen = Arc::new(Mutex::new(Seen::default()));
        let stop = CancellationToken::new();
        let (ping, pings) = tokio::sync::mpsc::channel(4);
        let task = tokio::spawn(view(haproxy, seen.clone(), stop.clone(), pings));
        Viewer {
            name,
            seen,
            ping,
            stop,
            task,
        }
    }

    async fn wait_subscribed(&self) {
        wait_until(LONG, "viewer subscribed", || {
            let ok = self.seen.lock().unwrap().subscribed;
            async move { ok }
        })
        .await
        .unwrap();
    }

    fn heard_all_after(&self, ids: &[String], since_ms: i64) -> bool {
        self.silent_since(ids, since_ms).is_empty()
    }

    fn silent_since(&self, ids: &[String], since_ms: i64) -> Vec<String> {
        let seen = self.seen.lock().unwrap();
        ids.iter()
            .filter(|d| seen.newest.get(*d).is_none_or(|&ts| ts <= since_ms))
            .cloned()
            .collect()
    }

    /// `<reconnects> (<how each connection ended>)`.
    fn reconnects(&self) -> String {
        let s = self.seen.lock().unwrap();
        format!("{}: {} {:?}", self.name, s.reconnects, s.ends)
    }

    fn assert_no_error(&self) {
        let errors = self.seen.lock().unwrap().errors.clone();
        assert!(
            errors.is_empty(),
            "viewer {} got errors: {errors:?}",
            self.name
        );
    }

    /// Waits until every acknowledged event that PostgreSQL has arrived,
    /// then (after a ping's pong, so anything still on its way is
    /// counted) checks each acknowledged event came exactly once and
    /// nothing else did; what is wrong.
    async fn check_every_event_once(
        &self,
        acked: &BTreeSet<(String, String)>,
        stored: &BTreeSet<(String, String)>,
    ) -> Vec<String> {
        let _ = wait_until(LONG, "every stored event at the viewer", || {
            let seen = self.seen.lock().unwrap();
            let ok = stored.iter().all(|k| seen.events.contains_key(k));
            async move { ok }
        })
        .await;
        let r = format!("end-{}", unique("p"));
        self.ping.send(r.clone()).await.unwrap();
        wait_until(LONG, "the pong", || {
            let ok = self.seen.lock().unwrap().pong.as_deref() == Some(r.as_str());
            async move { ok }
        })
        .await
        .unwrap();
        let seen = self.seen.lock().unwrap();
        let mut failures = Vec::new();
        if !seen.errors.is_empty() {
            failures.push(format!(
                "viewer {} got errors: {:?}",
                self.name, seen.errors
            ));
        }
        let missing: BTreeSet<(String, String)> = acked
            .iter()
            .filter(|k| !seen.events.contains_key(*k))
            .cloned()
            .collect();
        if !missing.is_empty() {
            failures.push(format!(
                "viewer {}: {} acknowledged events never arrived ({})",
                self.name,
                missing.len(),
                ranges(&missing)
            ));
        }
        let twice: Vec<String> = seen
            .events
            .iter()
            .filter(|(_, &n)| n != 1)
            .map(|(k, n)| format!("{k:?} {n} times: {:?}", seen.how.get(k)))
            .collect();
        if !twice.is_empty() {
            failures.push(format!(
                "viewer {}: {} events not received once: {twice:?}; its connections ended: {:?}",
                self.name,
                twice.len(),
                seen.ends
            ));
        }
        let unknown: Vec<_> = seen
            .events
            .keys()
            .filter(|k| !acked.contains(*k))
            .take(10)
            .collect();
        if !unknown.is_empty() {
            failures.push(format!(
                "viewer {}: events never acknowledged: {unknown:?}",
                self.name
            ));
        }
        failures
    }

    async fn stop(self) {
        self.stop.cancel();
        self.task.await.unwrap();
    }
}

/// A cursor's first characters, for a report.
fn short(cursor: &str) -> String {
    cursor.chars().take(40).collect()
}

/// The viewer's loop: connect through HAProxy, subscribe (with `since`
/// after the first time), read until the socket ends, again.
async fn view(
    haproxy: SocketAddr,
    seen: Arc<Mutex<Seen>>,
    stop: CancellationToken,
    mut pings: tokio::sync::mpsc::Receiver<String>,
) {
    let url = format!("ws://{haproxy}/ws?token={}", token(json!({})));
    let mut first = true;
    while !stop.is_cancelled() {
        let ws = match tokio_tungstenite::connect_async(&url).await {
            Ok((ws, _)) => ws,
            Err(_) => {
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let (mut tx, mut rx) = ws.split();
        let mut sub = json!({"op": "subscribe", "ref": "s", "fleet": true});
        {
            let mut s = seen.lock().unwrap();
            if !first {
                s.reconnects += 1;
            }
            s.live = false;
            if let Some(c) = &s.cursor {
                sub["since"] = json!(c);
            }
        }
        first = false;
        if tx.send(WsMessage::text(sub.to_string())).await.is_err() {
            continue;
        }
        loop {
            let msg = tokio::select! {
                _ = stop.cancelled() => return,
                Some(r) = pings.recv() => {
                    let ping = json!({"op": "ping", "ref": r}).to_string();
                    if tx.send(WsMessage::text(ping)).await.is_err() {
                        break;
                    }
                    continue;
                }
                m = rx.next() => m,
            };
            let text = match msg {
                Some(Ok(WsMessage::Text(t))) => t,
                Some(Ok(WsMessage::Close(f))) => {
                    seen.lock().unwrap().ends.push(format!("close {f:?}"));
                    break;
                }
                Some(Err(e)) => {
                    seen.lock().unwrap().ends.push(format!("error {e}"));
                    break;
                }
                None => {
                    seen.lock().unwrap().ends.push("end of stream".to_owned());
                    break;
                }
                Some(Ok(_)) => continue,
            };
            let v: Value = serde_json::from_str(&text).unwrap();
            let mut s = seen.lock().unwrap();
            match v["type"].as_str() {
                Some("event") => {
                    let device = v["device"].as_str().unwrap().to_owned();
                    let id = v["id"].as_str().unwrap().to_owned();
                    let ts = v["ts"].as_i64().unwrap();
                    let newest = s.newest.entry(device.clone()).or_default();
                    *newest = (*newest).max(ts);
                    let how = format!(
                        "connection {} {} after {} resyncs, at {}, cursor before {}",
                        s.reconnects,
                        if s.live { "live" } else { "replay" },
                        s.resyncs,
                        now_ms(),
                        s.cursor.as_deref().map(short).unwrap_or_default()
                    );
                    s.how
                        .entry((device.clone(), id.clone()))
                        .or_default()
                        .push(how);
                    *s.events.entry((device, id)).or_default() += 1;
                    s.cursor = Some(v["cursor"].as_str().unwrap().to_owned());
                }
                Some("snapshot") if v.get("ref").is_none() => s.resyncs += 1,
                Some("subscribed") => {
                    s.live = true;
                    s.subscribed = true;
                    s.cursor = Some(v["cursor"].as_str().unwrap().to_owned());
                }
                Some("pong") => s.pong = v["ref"].as_str().map(str::to_owned),
                Some("error") => s.errors.push(v.to_string()),
                _ => {}
            }
        }
    }
}
