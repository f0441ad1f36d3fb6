//! Fault tests: the bridge killed, PostgreSQL or Redis gone, TLS device
//! isolation, clean shutdown. Each test owns what it breaks: a private
//! broker or Redis, or a TCP proxy in front of the shared PostgreSQL.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::process::Command;
use std::time::Duration;

use fred::prelude::*;
use rumqttc::QoS;
use serde_json::json;

use fieldcast_testkit::{free_port, unique, wait_until, MosquittoTls, RedisServer, TcpProxy};
use support::*;

/// Pins: a bridge SIGKILLed in the middle of a stream of QoS 1 events loses
/// none and doubles none: after a restart every event is stored once and
/// pushed to the event log once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_mid_stream_loses_and_doubles_no_event() {
    const N: usize = 1500;
    let h = Harness::private().await;
    let admin = free_port();
    let mut bridge = spawn_bridge(&h, admin, &[]);
    wait_ready(admin).await;
    let dev = device(&h.mqtt_url).await;
    let id = unique("kill");
    let topic = format!("devices/{id}/events");
    let publisher = {
        let client = dev.client.clone();
        let topic = topic.clone();
        tokio::spawn(async move {
            for i in 0..N {
                let p =
                    json!({"id": format!("ev-{i}"), "kind": "tick", "data": {"i": i}}).to_string();
                client
                    .publish(&topic, QoS::AtLeastOnce, false, p)
                    .await
                    .unwrap();
                if i % 50 == 0 {
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
            }
        })
    };
    let hh = &h;
    wait_until(WAIT, "some events stored", || async move {
        hh.count("SELECT count(*) FROM events").await >= 200
    })
    .await
    .unwrap();
    bridge.kill().unwrap(); // SIGKILL
    bridge.wait().unwrap();
    let stored_at_kill = h.count("SELECT count(*) FROM events").await;
    assert!(stored_at_kill < N as i64, "the kill must land mid-stream");
    publisher.await.unwrap();

    let mut bridge = spawn_bridge(&h, admin, &[]);
    let all = wait_until(WAIT, "all events stored", || async move {
        hh.count("SELECT count(*) FROM events").await == N as i64
    })
    .await;
    if all.is_err() {
        let c = h.db.client().await.unwrap();
        let have: Vec<String> = c
            .query("SELECT event_id FROM events", &[])
            .await
            .unwrap()
            .iter()
            .map(|r| r.get(0))
            .collect();
        let missing: Vec<usize> = (0..N)
            .filter(|i| !have.contains(&format!("ev-{i}")))
            .collect();
        panic!(
            "stored at kill {stored_at_kill}; missing {} events: {missing:?}",
            missing.len()
        );
    }
    assert_eq!(
        h.count("SELECT count(DISTINCT event_id) FROM events").await,
        N as i64
    );
    wait_until(WAIT, "event log complete", || async move {
        hh.event_log_len(&hh.redis).await == N as i64
    })
    .await
    .unwrap();
    // Nothing more arrives later either.
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(h.event_log_len(&h.redis).await, N as i64);
    bridge.kill().unwrap();
    bridge.wait().unwrap();
}

/// Pins: with PostgreSQL unreachable the bridge keeps running, turns
/// not-ready, keeps acknowledged events in the spool and locations in
/// memory then spool, and writes all of it when PostgreSQL returns.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_outage_loses_nothing() {
    let mut h = Harness::private().await;
    h.extra = vec![
        "--history-memory-rows".into(),
        "50".into(),
        "--batch-rows".into(),
        "40".into(),
    ];
    let proxy = TcpProxy::start("127.0.0.1:5432".parse().unwrap())
        .await
        .unwrap();
    let via_proxy =
        h.db.url
            .replace("127.0.0.1:5432", &format!("127.0.0.1:{}", proxy.port));
    assert_ne!(via_proxy, h.db.url);
    let bridge = h.start_with_db(&via_proxy).await;
    let dev = device(&h.mqtt_url).await;
    let id = unique("pgout");

    proxy.cut();
    let health = bridge.handles.health.clone();
    wait_until(Duration::from_secs(5), "not ready within 5 s", || {
        let health = health.clone();
        async move { !health.ready() }
    })
    .await
    .unwrap();
    let t0 = now_ms() - 60_000;
    for i in 0..30 {
        let e =
            json!({"id": format!("e{i}"), "kind": "k", "ts": t0 + i, "data": {"i": i, "f": 0.25}})
                .to_string();
        dev.publish(&format!("devices/{id}/events"), QoS::AtLeastOnce, false, e)
            .await;
    }
    for i in 0..200 {
        let l = json!({"lat": 10.0 + i as f64 / 1000.0, "lon": 20.0, "ts": t0 + i}).to_string();
        dev.publish(&format!("devices/{id}/location"), QoS::AtMostOnce, false, l)
            .await;
    }
    let m = bridge.handles.metrics.clone();
    wait_until(WAIT, "events and locations spooled", || {
        let m = m.clone();
        async move { m.spooled_records.get() >= 30 + 150 }
    })
    .await
    .unwrap();
    // The live path keeps working without PostgreSQL.
    let hh = &h;
    let idr = &id;
    wait_until(WAIT, "hot state while postgres is down", || async move {
        hh.state(idr).await.get("ts").map(String::as_str) == Some(&*(t0 + 199).to_string())
    })
    .await
    .unwrap();
    assert_eq!(h.count("SELECT count(*) FROM events").await, 0);

    proxy.restore();
    h.wait_count("SELECT count(*) FROM events", 30).await;
    h.wait_count("SELECT count(*) FROM locations", 200).await;
    // Spooled events keep their data exactly.
    assert_eq!(
        h.count("SELECT count(*) FROM events WHERE data = jsonb_build_object('i', substr(event_id, 2)::int, 'f', 0.25)").await,
        30
    );
    let health = bridge.handles.health.clone();
    wait_until(Duration::from_secs(5), "ready again within 5 s", || {
        let health = health.clone();
        async move { health.ready() }
    })
    .await
    .unwrap();
    wait_until(WAIT, "spool emptied", || {
        let m = m.clone();
        async move { m.spool_bytes.get() == 0 }
    })
    .await
    .unwrap();
    bridge.stop().await;
}

/// Pins: Redis going away and coming back (empty, scripts forgotten) needs
/// no manual action; readiness follows it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_outage_recovers() {
    let mut redis = RedisServer::start().await.unwrap();
    let h = Harness::private_with_redis(&redis.url).await;
    let bridge = h.start().await;
    let dev = device(&h.mqtt_url).await;
    let id = unique("rdout");
    redis.kill();
    let health = bridge.handles.health.clone();
    wait_until(Duration::from_secs(5), "not ready within 5 s", || {
        let health = health.clone();
        async move { !health.ready() }
    })
    .await
    .unwrap();
    let ts = now_ms() - 1000;
    dev.publish(
        &format!("devices/{id}/status"),
        QoS::AtLeastOnce,
        true,
        json!({"online": true, "ts": ts}).to_string(),
    )
    .await;
    dev.publish(
        &format!("devices/{id}/events"),
        QoS::AtLeastOnce,
        false,
        json!({"id": "x", "kind": "k"}).to_string(),
    )
    .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    redis.restart().await.unwrap();
    let client = Builder::from_config(fred::types::config::Config::from_url(&redis.url).unwrap())
        .build()
        .unwrap();
    client.init().await.unwrap();
    let key = h.keys().device(&id);
    let c = &client;
    wait_until(WAIT, "state written after redis returns", || {
        let key = key.clone();
        async move {
            c.hget::<Option<String>, _, _>(key, "online")
                .await
                .ok()
                .flatten()
                .as_deref()
                == Some("1")
        }
    })
    .await
    .unwrap();
    let hh = &h;
    wait_until(WAIT, "event logged after redis returns", || async move {
        hh.event_log_len(c).await == 1
    })
    .await
    .unwrap();
    let health = bridge.handles.health.clone();
    wait_until(Duration::from_secs(5), "ready again", || {
        let health = health.clone();
        async move { health.ready() }
    })
    .await
    .unwrap();
    h.wait_count("SELECT count(*) FROM events", 1).await;
    bridge.stop().await;
}

/// Pins: over TLS with client certificates, a device can publish only as
/// itself (the broker's ACL); the bridge reads with its own certificate.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_device_cannot_publish_as_another() {
    let broker = MosquittoTls::start(&["dev-a", "dev-b", "fieldcast-bridge"])
        .await
        .unwrap();
    let mut h = Harness::with_redis(&broker.url, &fieldcast_testkit::shared_redis_url()).await;
    let ca = broker.ca();
    let cert = broker.cert("fieldcast-bridge");
    let key = broker.key("fieldcast-bridge");
    h.extra = vec![
        "--mqtt-ca".into(),
        ca.to_str().unwrap().into(),
        "--mqtt-cert".into(),
        cert.to_str().unwrap().into(),
        "--mqtt-key".into(),
        key.to_str().unwrap().into(),
    ];
    let bridge = h.start().await;
    let dev = device_with(broker.mqtt_options("dev-a", &unique("dev-a")).unwrap()).await;
    let t = now_ms() - 1000;
    dev.publish(
        "devices/dev-b/location",
        QoS::AtLeastOnce,
        false,
        json!({"lat": 1, "lon": 1, "ts": t}).to_string(),
    )
    .await;
    dev.publish(
        "devices/dev-a/location",
        QoS::AtLeastOnce,
        false,
        json!({"lat": 2, "lon": 2, "ts": t}).to_string(),
    )
    .await;
    let hh = &h;
    wait_until(WAIT, "dev-a's own location arrives", || async move {
        hh.state("dev-a").await.contains_key("lat")
    })
    .await
    .unwrap();
    assert!(
        h.state("dev-b").await.is_empty(),
        "dev-a must not publish as dev-b"
    );
    let m = bridge.handles.metrics.encode();
    assert_eq!(
        metric(&m, "fieldcast_bridge_messages_total{kind=\"location\"}"),
        1.0
    );
    bridge.stop().await;
}

/// Pins: SIGTERM flushes the pending history batch (here: an interval of
/// an hour) and the process exits 0.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_flushes_pending_batch_and_exits_zero() {
    let h = Harness::private().await;
    let admin = free_port();
    let bridge = spawn_bridge(&h, admin, &[("--flush-interval", "1h")]);
    wait_ready(admin).await;
    let dev = device(&h.mqtt_url).await;
    let id = unique("term");
    let t0 = now_ms() - 10_000;
    for i in 0..100 {
        dev.publish(
            &format!("devices/{id}/location"),
            QoS::AtLeastOnce,
            false,
            json!({"lat": 1, "lon": 1, "ts": t0 + i}).to_string(),
        )
        .await;
    }
    let hh = &h;
    let idr = &id;
    wait_until(WAIT, "all locations taken", || async move {
        hh.state(idr).await.get("ts").map(String::as_str) == Some(&*(t0 + 99).to_string())
    })
    .await
    .unwrap();
    assert_eq!(
        h.count("SELECT count(*) FROM locations").await,
        0,
        "not flushed before the interval"
    );
    // SAFETY-free SIGTERM: the `kill` command, to stay clear of unsafe code.
    let st = Command::new("kill")
        .args(["-TERM", &bridge.id().to_string()])
        .status()
        .unwrap();
    assert!(st.success());
    let status = tokio::task::spawn_blocking(move || {
        let mut bridge = bridge;
        bridge.wait()
    })
    .await
    .unwrap()
    .unwrap();
    assert_eq!(status.code(), Some(0));
    assert_eq!(h.count("SELECT count(*) FROM locations").await, 100);
}

/// Pins: `--help` exits 0 and lists the environment variables; a bad value
/// exits 2 with one line naming the problem.
#[test]
fn help_and_config_errors() {
    let out = Command::new(BIN).arg("--help").output().unwrap();
    assert_eq!(out.status.code(), Some(0));
    let help = String::from_utf8_lossy(&out.stdout);
    for var in [
        "FIELDCAST_MQTT_URL",
        "FIELDCAST_REDIS_PREFIX",
        "FIELDCAST_FLUSH_INTERVAL",
        "FIELDCAST_ADMIN_ADDR",
        "FIELDCAST_MQTT_SHARED_GROUP",
    ] {
        assert!(help.contains(var), "--help lacks {var}");
    }
    let out = Command::new(BIN)
        .env("FIELDCAST_FLUSH_INTERVAL", "often")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("often"), "{err}");
    let out = Command::new(BIN)
        .env("FIELDCAST_MQTT_URL", "http://broker")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(err.trim().lines().count(), 1, "{err}");
    assert!(err.contains("FIELDCAST_MQTT_URL"), "{err}");
}

/// Pins PROTOCOL-side preconditions: a Redis whose eviction policy may drop
/// the bridge's keys is reported (metric), and the bridge still runs; the
/// shared Redis (noeviction) is not.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_evicting_redis_policy_is_reported() {
    let redis = RedisServer::start().await.unwrap();
    let client = Builder::from_config(fred::types::config::Config::from_url(&redis.url).unwrap())
        .build()
        .unwrap();
    client.init().await.unwrap();
    let _: fred::types::Value = client
        .custom(
            fred::types::CustomCommand::new_static("CONFIG", None, false),
            vec!["SET", "maxmemory-policy", "allkeys-lru"],
        )
        .await
        .unwrap();
    let broker = fieldcast_testkit::Mosquitto::start().await.unwrap();
    let mut h = Harness::with_redis(&broker.url, &redis.url).await;
    h.broker = Some(broker);
    let bridge = h.start().await;
    let m = bridge.handles.metrics.clone();
    wait_until(WAIT, "eviction risk reported", || {
        let m = m.clone();
        async move { m.redis_eviction_risk.get() == 1 && m.redis_version_ok.get() == 1 }
    })
    .await
    .unwrap();
    assert!(bridge.handles.health.ready(), "a warning, not an outage");
    bridge.stop().await;

    let shared = Harness::private().await;
    let bridge = shared.start().await;
    let m = bridge.handles.metrics.clone();
    wait_until(WAIT, "version checked on the shared redis", || {
        let m = m.clone();
        async move { m.redis_version_ok.get() == 1 }
    })
    .await
    .unwrap();
    assert_eq!(m.redis_eviction_risk.get(), 0, "noeviction is safe");
    bridge.stop().await;
}
