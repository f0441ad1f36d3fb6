//! The JetStream source against real nats-server: devices publish over MQTT
//! to NATS's MQTT listener, bridges consume the stream through one shared
//! durable consumer. Every test starts its own nats-server (or 3-node
//! cluster) on free ports; Redis and PostgreSQL are the shared ones, each
//! test with its own prefix and database.
//!
//! The rest of the bridge's suite runs on NATS as well with
//! `FIELDCAST_TEST_BROKER=nats` (scripts/test.sh does, for the tests that
//! are not about Mosquitto).

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::time::Duration;

use rumqttc::QoS;
use serde_json::json;

use fieldcast_testkit::{free_port, unique, wait_until, NatsCluster};
use support::*;

/// Pins the whole single-node path: a QoS 0 location reaches the hot state,
/// QoS 1 events are stored once (a duplicate id too), status and the Last
/// Will turn the device online then offline, a reject is dead-lettered,
/// and `/readyz` names the broker.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn devices_over_mqtt_reach_redis_and_postgres_through_jetstream() {
    let h = Harness::private_nats(&fieldcast_testkit::shared_redis_url()).await;
    let bridge = h.start().await;
    let (code, body) = http_get(bridge.handles.admin_addr, "/readyz").await;
    assert_eq!(code, 200, "{body}");
    let ready: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(ready["nats"], true, "{body}");
    assert!(ready.get("mqtt").is_none(), "{body}");

    let id = unique("nd");
    let status = format!("devices/{id}/status");
    let u = fieldcast_mqtt::BrokerUrl::parse(&h.mqtt_url).unwrap();
    let mut opts = rumqttc::MqttOptions::new(unique("dev"), u.host, u.port);
    opts.set_last_will(rumqttc::LastWill::new(
        &status,
        r#"{"online":false}"#,
        QoS::AtLeastOnce,
        true,
    ));
    let dev = device_with(opts).await;
    let ts = now_ms() - 1000;
    dev.publish(
        &format!("devices/{id}/location"),
        QoS::AtMostOnce,
        false,
        json!({"lat": 51.5, "lon": -0.12, "ts": ts}).to_string(),
    )
    .await;
    let events = format!("devices/{id}/events");
    for ev in ["a", "b", "a"] {
        dev.publish(
            &events,
            QoS::AtLeastOnce,
            false,
            json!({"id": ev, "kind": "k"}).to_string(),
        )
        .await;
    }
    dev.publish(&events, QoS::AtLeastOnce, false, "{not json")
        .await;
    dev.publish(
        &status,
        QoS::AtLeastOnce,
        true,
        json!({"online": true, "battery": 50, "ts": ts}).to_string(),
    )
    .await;

    let (hh, idr) = (&h, &id);
    wait_until(
        WAIT,
        "location and online in the hot state",
        || async move {
            let s = hh.state(idr).await;
            s.get("lat").map(String::as_str) == Some("51.5")
                && s.get("online").map(String::as_str) == Some("1")
        },
    )
    .await
    .unwrap();
    h.wait_count("SELECT count(*) FROM events", 2).await;
    // Die without DISCONNECT: the broker publishes the will, which
    // JetStream captures like any status.
    drop(dev);
    wait_until(WAIT, "offline by last will", || async move {
        hh.state(idr).await.get("online").map(String::as_str) == Some("0")
    })
    .await
    .unwrap();
    h.wait_count("SELECT count(*) FROM device_status", 2).await;
    h.wait_count("SELECT count(*) FROM locations", 1).await;
    let dead: Vec<String> =
        fred::interfaces::ListInterface::lrange(&h.redis, h.key("deadletter"), 0, -1)
            .await
            .unwrap();
    assert_eq!(dead.len(), 1, "{dead:?}");
    assert!(dead[0].contains(&events), "{dead:?}");
    // Two distinct events of three; should the QoS 1 lane bind in the
    // middle (docs/nats.md, the handoff), an event also comes through it,
    // as a duplicate (counted when taken, as a duplicate once its Redis
    // step is done).
    let distinct = |m: &str| {
        metric(m, "fieldcast_bridge_messages_total{kind=\"event\"}")
            - metric(m, "fieldcast_bridge_duplicate_events_total")
    };
    let metrics = &bridge.handles.metrics;
    let settled = wait_until(WAIT, "two distinct events", || async move {
        distinct(&metrics.encode()) == 2.0
    })
    .await;
    let m = bridge.handles.metrics.encode();
    assert!(settled.is_ok(), "{} distinct events", distinct(&m));
    assert!(metric(&m, "fieldcast_bridge_messages_total{kind=\"event\"}") >= 3.0);
    assert_eq!(metric(&m, "fieldcast_bridge_nats_connected"), 1.0);
    assert_eq!(metric(&m, "fieldcast_bridge_acks_pending"), 0.0);
    bridge.stop().await;
    assert_stream_empty(&h).await;
}

/// The bridge's stream as the servers at `url` see it.
async fn stream_info(url: &str) -> async_nats::jetstream::stream::Info {
    let client = async_nats::connect(url).await.unwrap();
    let js = async_nats::jetstream::new(client);
    let mut stream = js.get_stream("FIELDCAST").await.unwrap();
    stream.info().await.unwrap().clone()
}

async fn replicas(url: &str) -> usize {
    stream_info(url).await.config.num_replicas
}

/// Every message was acknowledged (or terminated): the work-queue stream
/// keeps none.
async fn assert_stream_empty(h: &Harness) {
    let url = h.nats_url.as_deref().unwrap();
    let n = stream_info(url).await.state.messages;
    assert_eq!(n, 0, "messages left unacknowledged in the stream");
    assert_eq!(replicas(url).await, 1, "R1 on a single node");
}

/// Publishes `ids` as QoS 1 events of `device`, each waiting for its
/// PUBACK; `false` if one did not come.
async fn publish_events(mqtt_url: &str, device: &str, ids: std::ops::Range<usize>) -> bool {
    let (dev, mut acks) = device_with_acks(device_options(mqtt_url)).await;
    let topic = format!("devices/{device}/events");
    for i in ids {
        let p = json!({"id": format!("ev-{i}"), "kind": "tick"}).to_string();
        if !dev.publish_acked(&mut acks, &topic, p).await {
            return false;
        }
    }
    true
}

/// Pins: two bridges on one durable consumer split the stream and together
/// store every event exactly once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_bridges_share_the_consumer_and_store_every_event_once() {
    const N: usize = 400;
    let mut h = Harness::private_nats(&fieldcast_testkit::shared_redis_url()).await;
    // The same NATS, database and prefix; its own spool and client id.
    let mut second = Harness::with_redis(&h.mqtt_url, &fieldcast_testkit::shared_redis_url()).await;
    second.nats_url = h.nats_url.clone();
    second.prefix = h.prefix.clone();
    // Small pulls, so both get work while the events trickle in.
    let few = ["--nats-batch", "8"].map(String::from);
    h.extra.extend(few.clone());
    second.extra.extend(few);
    let a = h.start().await;
    let b = second.start_with_db(&h.db.url).await;
    let id = unique("share");
    assert!(
        publish_events(&h.mqtt_url, &id, 0..N).await,
        "every PUBACK came"
    );
    h.wait_count("SELECT count(*) FROM events", N as i64).await;
    assert_eq!(
        h.count("SELECT count(DISTINCT event_id) FROM events").await,
        N as i64
    );
    let hh = &h;
    wait_until(WAIT, "event log complete", || async move {
        hh.event_log_len(&hh.redis).await == N as i64
    })
    .await
    .unwrap();
    let took = |r: &Running| {
        metric(
            &r.handles.metrics.encode(),
            "fieldcast_bridge_messages_total{kind=\"event\"}",
        )
    };
    let (ta, tb) = (took(&a), took(&b));
    assert!(
        ta > 0.0 && tb > 0.0,
        "both bridges took events: {ta} + {tb}"
    );
    assert!(ta + tb >= N as f64);
    a.stop().await;
    b.stop().await;
    assert_stream_empty(&h).await;
}

/// Pins: a bridge killed while holding delivered, unacknowledged messages
/// leaves them to the other bridge, which gets them again after ack_wait
/// and stores every event once. The first bridge is stopped (SIGSTOP)
/// while its pull request is open, so the server delivers it a batch it
/// can never acknowledge, then SIGKILLed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_bridges_unacked_messages_go_to_the_other() {
    const N: usize = 200;
    let h = Harness::private_nats(&fieldcast_testkit::shared_redis_url()).await;
    let admin = free_port();
    let mut doomed = spawn_bridge(&h, admin, &[]);
    wait_ready(admin).await;
    let id = unique("doomed");
    assert!(publish_events(&h.mqtt_url, &id, 0..10).await);
    h.wait_count("SELECT count(*) FROM events", 10).await;
    let pid = doomed.id().to_string();
    let stopped = std::process::Command::new("kill")
        .args(["-STOP", &pid])
        .status()
        .unwrap();
    assert!(stopped.success());
    assert!(publish_events(&h.mqtt_url, &id, 10..N).await);
    // The stopped bridge's open pull took up to one batch.
    let other = h.start().await;
    doomed.kill().unwrap();
    doomed.wait().unwrap();
    h.wait_count("SELECT count(*) FROM events", N as i64).await;
    assert_eq!(
        h.count("SELECT count(DISTINCT event_id) FROM events").await,
        N as i64
    );
    let m = other.handles.metrics.encode();
    assert!(
        metric(&m, "fieldcast_bridge_nats_redelivered_total") > 0.0,
        "the other bridge got the dead one's messages again"
    );
    other.stop().await;
    assert_stream_empty(&h).await;
}

/// What `/jsz` says about the stream: the name of the node leading it.
async fn stream_leader(cluster: &NatsCluster) -> Option<String> {
    leader_of(cluster, "FIELDCAST").await
}

/// The name of the node leading the stream `stream`, as `/jsz` says.
async fn leader_of(cluster: &NatsCluster, stream: &str) -> Option<String> {
    for i in 0..3 {
        let Ok(text) = cluster.jsz(i, "streams=true").await else {
            continue;
        };
        let v: serde_json::Value = serde_json::from_str(&text).ok()?;
        for account in v["account_details"].as_array().into_iter().flatten() {
            for s in account["stream_detail"].as_array().into_iter().flatten() {
                if s["name"] == stream {
                    if let Some(l) = s["cluster"]["leader"].as_str() {
                        return Some(l.to_owned());
                    }
                }
            }
        }
    }
    None
}

/// Pins where a device's PUBACK stands relative to JetStream replication
/// (docs/nats.md): QoS 1 events PUBACKed by a node that is SIGKILLed right
/// after the last PUBACK are all stored — once with the node a follower of
/// the stream, once with it the stream's leader.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_puback_survives_the_node_that_sent_it_on_a_cluster() {
    const BURST: usize = 50;
    let mut cluster = NatsCluster::start().await.unwrap();
    let mut h = Harness::with_redis(
        &cluster.mqtt_url(0).unwrap(),
        &fieldcast_testkit::shared_redis_url(),
    )
    .await;
    h.nats_url = Some(cluster.url());
    let bridge = h.start().await;
    let leader = wait_until(WAIT, "stream leader known", || async {
        stream_leader(&cluster).await.is_some()
    })
    .await;
    assert!(leader.is_ok(), "the stream has a leader");
    assert_eq!(
        replicas(&cluster.node_url(0).unwrap()).await,
        3,
        "R3 on a cluster"
    );
    let id = unique("pub");
    let mut stored = 0;
    for (round, on_leader) in [false, true].into_iter().enumerate() {
        let leader = stream_leader(&cluster).await.unwrap();
        let node = (0..3)
            .find(|&i| (cluster.name(i).unwrap() == leader) == on_leader)
            .unwrap();
        let from = round * BURST;
        assert!(
            publish_events(&cluster.mqtt_url(node).unwrap(), &id, from..from + BURST).await,
            "round {round}: every PUBACK came"
        );
        cluster.kill(node).unwrap();
        stored += BURST as i64;
        let have = wait_until(
            Duration::from_secs(30),
            "acknowledged events stored",
            || async { h.count("SELECT count(*) FROM events").await == stored },
        )
        .await;
        assert!(
            have.is_ok(),
            "round {round} (PUBACK node {} the stream leader): {} of {stored} PUBACKed events stored",
            if on_leader { "was" } else { "was not" },
            h.count("SELECT count(*) FROM events").await
        );
        cluster.restart(node).await.unwrap();
    }
    bridge.stop().await;
}

/// The bridge's metric `series` of `r`, once it reads `want`.
async fn wait_metric(r: &Running, series: &str, want: f64) {
    let m = &r.handles.metrics;
    let seen = wait_until(WAIT, series, || async move {
        metric_opt(&m.encode(), series) == Some(want)
    })
    .await;
    assert!(seen.is_ok(), "{series} never read {want}");
}

/// The durable consumer `name` of the stream `stream` at `url`.
async fn consumer_info(
    url: &str,
    stream: &str,
    name: &str,
) -> async_nats::jetstream::consumer::Info {
    let client = async_nats::connect(url).await.unwrap();
    let js = async_nats::jetstream::new(client);
    let stream = js.get_stream(stream).await.unwrap();
    let mut c: async_nats::jetstream::consumer::PullConsumer =
        stream.get_consumer(name).await.unwrap();
    c.info().await.unwrap().clone()
}

/// Pins the QoS 1 lane (docs/nats.md): once its consumer on nats-server's
/// `$MQTT_msgs` has been there for the handoff margin, QoS 1 messages
/// (events, a status, the Last Will) are handled from that stream — the
/// one the device's PUBACK waited for — and their copies in the main
/// stream are acknowledged unhandled; each is stored once and both
/// consumers end with nothing pending.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn qos1_messages_come_from_the_stream_their_puback_waited_for() {
    let h = Harness::private_nats(&fieldcast_testkit::shared_redis_url()).await;
    let id = unique("q1");
    let status = format!("devices/{id}/status");
    let mut opts = device_options(&h.mqtt_url);
    opts.set_last_will(rumqttc::LastWill::new(
        &status,
        r#"{"online":false}"#,
        QoS::AtLeastOnce,
        false,
    ));
    // nats-server makes `$MQTT_msgs` at the first MQTT connection.
    let (dev, mut acks) = device_with_acks(opts).await;
    let bridge = h.start().await;
    wait_metric(&bridge, "fieldcast_bridge_nats_qos1_lane", 1.0).await;
    let url = h.nats_url.clone().unwrap();
    let created = consumer_info(&url, "$MQTT_msgs", "fieldcast-bridge-qos1")
        .await
        .created;
    let handoff = (created.unix_timestamp_nanos() / 1_000_000) as i64 + 11_000;
    let wait = handoff - now_ms();
    if wait > 0 {
        tokio::time::sleep(Duration::from_millis(wait as u64)).await;
    }

    let events = format!("devices/{id}/events");
    for ev in ["a", "b", "a"] {
        let p = json!({"id": ev, "kind": "k"}).to_string();
        assert!(dev.publish_acked(&mut acks, &events, p).await);
    }
    let p = json!({"online": true, "ts": now_ms() - 500}).to_string();
    assert!(dev.publish_acked(&mut acks, &status, p).await);
    h.wait_count("SELECT count(*) FROM events", 2).await;
    drop(dev);
    let (hh, idr) = (&h, &id);
    wait_until(WAIT, "offline by last will", || async move {
        hh.state(idr).await.get("online").map(String::as_str) == Some("0")
    })
    .await
    .unwrap();
    h.wait_count("SELECT count(*) FROM device_status", 2).await;
    // 3 events, the status, the will: each once from each stream (the
    // main stream's copy of the will may come a moment after the lane's).
    wait_metric(&bridge, "fieldcast_bridge_nats_qos1_copies_total", 5.0).await;
    let m = bridge.handles.metrics.encode();
    assert_eq!(
        metric(&m, "fieldcast_bridge_messages_total{kind=\"event\"}"),
        3.0
    );
    assert_eq!(metric(&m, "fieldcast_bridge_duplicate_events_total"), 1.0);
    bridge.stop().await;
    assert_eq!(h.count("SELECT count(*) FROM device_status").await, 2);
    assert_stream_empty(&h).await;
    let lane = consumer_info(&url, "$MQTT_msgs", "fieldcast-bridge-qos1").await;
    assert_eq!(
        (lane.num_pending, lane.num_ack_pending),
        (0, 0),
        "the QoS 1 lane acknowledged all"
    );
}

/// Publishes QoS 1 events `ev-0..` of `device` at `mqtt_url`, each
/// waiting (a bounded time) for its PUBACK and starting a new connection
/// when one did not come, until `done` says enough (given the PUBACKs so
/// far); answers the PUBACKed ids with when their PUBACK came.
async fn publish_until(
    mqtt_url: &str,
    device: &str,
    done: impl Fn(&[(String, tokio::time::Instant)]) -> bool,
) -> Vec<(String, tokio::time::Instant)> {
    let topic = format!("devices/{device}/events");
    let mut acked = Vec::new();
    let mut dev = device_with_acks(device_options(mqtt_url)).await;
    for i in 0.. {
        if done(&acked) {
            break;
        }
        let ev = format!("ev-{i}");
        let p = json!({"id": ev, "kind": "tick"}).to_string();
        dev.0.publish(&topic, QoS::AtLeastOnce, false, p).await;
        match tokio::time::timeout(Duration::from_secs(3), dev.1.recv()).await {
            Ok(Some(_)) => acked.push((ev, tokio::time::Instant::now())),
            _ => dev = device_with_acks(device_options(mqtt_url)).await,
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    acked
}

/// Pins the loss found by the chaos test (docs/nats.md): SIGKILL the node
/// leading the main stream while a device publishes QoS 1 events on
/// another node. Until a new stream leader is elected the main stream
/// captures nothing, yet nats-server goes on PUBACKing (the PUBACK waits
/// for its own `$MQTT_msgs`); every event PUBACKed in that window must
/// still be stored, so the bridge reads them from `$MQTT_msgs`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_pubacked_while_the_stream_has_no_leader_are_stored() {
    let mut cluster = NatsCluster::start().await.unwrap();
    let leader = wait_until(WAIT, "cluster up", || async {
        cluster.jsz(0, "").await.is_ok()
    })
    .await;
    assert!(leader.is_ok());
    let mut h = Harness::with_redis(
        &cluster.mqtt_url(0).unwrap(),
        &fieldcast_testkit::shared_redis_url(),
    )
    .await;
    h.nats_url = Some(cluster.url());
    // An MQTT connection first, so `$MQTT_msgs` exists when the bridge
    // starts and its QoS 1 lane binds at once.
    let first = device(&cluster.mqtt_url(1).unwrap()).await;
    let bridge = h.start().await;
    wait_until(WAIT, "stream leader known", || async {
        stream_leader(&cluster).await.is_some()
    })
    .await
    .unwrap();
    wait_metric(&bridge, "fieldcast_bridge_nats_qos1_lane", 1.0).await;
    drop(first);
    let leader = stream_leader(&cluster).await.unwrap();
    let victim = (0..3)
        .find(|&i| cluster.name(i).unwrap() == leader)
        .unwrap();
    // The PUBACKs in the window need `$MQTT_msgs` led by a survivor.
    let admin = async_nats::connect(cluster.node_url((victim + 1) % 3).unwrap())
        .await
        .unwrap();
    for _ in 0..20 {
        let l = wait_until(WAIT, "$MQTT_msgs leader", || async {
            leader_of(&cluster, "$MQTT_msgs").await.is_some()
        })
        .await;
        assert!(l.is_ok());
        if leader_of(&cluster, "$MQTT_msgs").await.as_deref() != Some(leader.as_str()) {
            break;
        }
        let _ = admin
            .request("$JS.API.STREAM.LEADER.STEPDOWN.$MQTT_msgs", "".into())
            .await;
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let msgs_leader = leader_of(&cluster, "$MQTT_msgs").await;
    assert_ne!(msgs_leader.as_deref(), Some(leader.as_str()));
    let on = (victim + 1) % 3;
    let id = unique("nolead");
    let mqtt = cluster.mqtt_url(on).unwrap();
    // Through the election and until the flow is back: 15 s after the
    // kill and 50 PUBACKs after it at least, 45 s at most.
    let start = tokio::time::Instant::now();
    let killed_at = start + Duration::from_secs(1);
    let publishing = {
        let (mqtt, id) = (mqtt.clone(), id.clone());
        tokio::spawn(async move {
            publish_until(&mqtt, &id, |acked| {
                let now = tokio::time::Instant::now();
                let after = acked.iter().filter(|(_, t)| *t > killed_at).count();
                now > start + Duration::from_secs(45)
                    || (now > killed_at + Duration::from_secs(15) && after >= 50)
            })
            .await
        })
    };
    tokio::time::sleep_until(killed_at).await;
    cluster.kill(victim).unwrap();
    let acked = publishing.await.unwrap();
    let after = acked.iter().filter(|(_, t)| *t > killed_at).count();
    assert!(after >= 50, "{after} events PUBACKed after the kill");
    let acked: Vec<String> = acked.into_iter().map(|(e, _)| e).collect();
    let list = acked
        .iter()
        .map(|e| format!("'{e}'"))
        .collect::<Vec<_>>()
        .join(",");
    let sql = format!("SELECT count(*) FROM events WHERE event_id IN ({list})");
    let want = acked.len() as i64;
    let stored = wait_until(
        Duration::from_secs(30),
        "PUBACKed events stored",
        || async { h.count(&sql).await == want },
    )
    .await;
    let have = h.count(&sql).await;
    let mut missing = Vec::new();
    if stored.is_err() {
        for e in &acked {
            let q = format!("SELECT count(*) FROM events WHERE event_id = '{e}'");
            if h.count(&q).await == 0 {
                missing.push(e.clone());
            }
        }
    }
    assert!(
        stored.is_ok(),
        "{have} of {want} PUBACKed events stored; missing {missing:?}"
    );
    cluster.restart(victim).await.unwrap();
    bridge.stop().await;
}
