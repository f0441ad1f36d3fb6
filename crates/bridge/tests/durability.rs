//! Durability tests: what PostgreSQL cannot store, a spool left poisoned
//! and torn by an older bridge, a spool whose disk is full, Redis gone
//! behind a small broker queue, and a Last Will after a clock that ran
//! ahead. Black-box: MQTT in; PostgreSQL, Redis, `/metrics` and `/readyz`
//! out. Each test owns what it breaks (a private broker, a private Redis,
//! a TCP proxy in front of the shared PostgreSQL, a small tmpfs).

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::collections::{HashMap, HashSet};
use std::path::Path;
use std::time::{Duration, Instant};

use fred::prelude::*;
use rumqttc::QoS;
use serde_json::{json, Value};

use fieldcast_testkit::{shared_redis_url, unique, wait_until, Mosquitto, RedisServer, TcpProxy};
use support::*;

/// One test at a time, as in `flow.rs`: each starts its own broker, bridge
/// and database (and some a Redis or a proxy), and the machine has two
/// cores.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// Soft assertions: every failed check is printed and collected, and the
/// test fails at the end with the whole list, so one run shows every
/// property that does not hold. After one wait has timed out the others
/// get 2 s instead of [`WAIT`], so a broken build fails in reasonable time.
struct Checks {
    failed: Vec<String>,
    patience: Duration,
}

impl Checks {
    fn new() -> Checks {
        Checks {
            failed: Vec::new(),
            patience: WAIT,
        }
    }

    fn check(&mut self, ok: bool, what: impl Into<String>) {
        if !ok {
            let what = what.into();
            eprintln!("CHECK FAILED: {what}");
            self.failed.push(what);
        }
    }

    /// Waits for `f` to hold; `false` if it did not in time.
    async fn wait<F, Fut>(&mut self, what: &str, f: F) -> bool
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = bool>,
    {
        let ok = wait_until(self.patience, what, f).await.is_ok();
        if !ok {
            self.patience = Duration::from_secs(2);
        }
        ok
    }

    fn finish(self) {
        assert!(
            self.failed.is_empty(),
            "{} check(s) failed:\n- {}",
            self.failed.len(),
            self.failed.join("\n- ")
        );
    }
}

/// `wait_until` with [`WAIT`], as a bool.
async fn eventually<F, Fut>(what: &str, f: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    wait_until(WAIT, what, f).await.is_ok()
}

/// `/readyz`: status and parsed body (`Null` if it is not JSON).
async fn readyz(addr: std::net::SocketAddr) -> (u16, Value) {
    let (code, body) = http_get(addr, "/readyz").await;
    (code, serde_json::from_str(&body).unwrap_or(Value::Null))
}

/// The names of the `seg-*` files directly in `dir` (none if it is gone).
fn segments(dir: &Path) -> Vec<String> {
    let Ok(rd) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut v: Vec<String> = rd
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .filter(|n| n.starts_with("seg-"))
        .collect();
    v.sort();
    v
}

/// Every entry of `<prefix>deadletter`, parsed.
async fn dead_letters(redis: &Client, key: &str) -> Vec<Value> {
    let items: Vec<String> = redis.lrange(key, 0, -1).await.unwrap_or_default();
    items
        .iter()
        .filter_map(|s| serde_json::from_str(s).ok())
        .collect()
}

/// The event ids stored for `device`.
async fn stored_event_ids(h: &Harness, device: &str) -> Vec<String> {
    let c = h.db.client().await.unwrap();
    c.query(
        "SELECT event_id FROM events WHERE device_id = $1 ORDER BY event_id",
        &[&device],
    )
    .await
    .unwrap()
    .iter()
    .map(|r| r.get(0))
    .collect()
}

/// A spool segment file name, as the bridge makes them.
fn segment_name(ms: i64, seq: u32) -> String {
    format!("seg-{ms:013}-{seq:06}.jsonl")
}

/// Pins PROTOCOL.md §2 (a string holding U+0000 or an unpaired surrogate
/// is rejected as `bad_text`, `data` keys, `id` and `kind` included) and
/// that such a message cannot take good ones down with it: interleaved
/// with 40 good events (two of them with escapes that look hostile but are
/// fine: an escaped backslash before `u0000`, a proper surrogate pair) and
/// 60 locations, every good event and location is stored, every hostile
/// one is dead-lettered and counted, `/readyz` never turns not-ready and
/// nothing is left in the spool.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_text_events_are_dead_lettered_and_good_ones_stored() {
    let _serial = SERIAL.lock().await;
    let began = Instant::now();
    let h = Harness::private().await;
    let bridge = h.start().await;
    let admin = bridge.handles.admin_addr;
    let watch = ReadyWatch::start(admin);
    let dev = device(&h.mqtt_url).await;
    let id = unique("hostile");
    let ev_topic = format!("devices/{id}/events");
    let loc_topic = format!("devices/{id}/location");
    let t0 = now_ms() - 60_000;

    // JSON texts as a device sends them: `\u0000` etc. are escapes in the
    // payload, not characters in this Rust source.
    let hostile: Vec<String> = [
        r#"{"id":"bad-data-nul","kind":"k","data":{"v":"a\u0000b"}}"#,
        r#"{"id":"bad-kind-nul","kind":"k\u0000"}"#,
        r#"{"id":"bad-id-\u0000","kind":"k"}"#,
        r#"{"id":"bad-key-nul","kind":"k","data":{"k\u0000":1}}"#,
        r#"{"id":"bad-high-surrogate","kind":"k","data":{"v":"\ud800"}}"#,
        r#"{"id":"bad-low-surrogate","kind":"k","data":{"v":"x\udc00"}}"#,
        r#"{"id":"bad-nested-nul","kind":"k","data":{"a":[1,{"b":"\u0000"}]}}"#,
        r#"{"id":"bad-key-surrogate","kind":"k","data":{"\ud800x":1}}"#,
    ]
    .map(String::from)
    .to_vec();
    let good = |i: i64| -> String {
        match i {
            // A backslash (escaped) followed by the text `u0000`: valid.
            10 => json!({"id": "good-10", "kind": "k", "ts": t0 + i, "data": {"v": "\\u0000"}})
                .to_string(),
            // A surrogate pair is one character (U+1F69A): valid.
            20 => format!(
                r#"{{"id":"good-20","kind":"k","ts":{},"data":{{"v":"\ud83d\ude9a"}}}}"#,
                t0 + i
            ),
            _ => json!({"id": format!("good-{i}"), "kind": "tick", "ts": t0 + i, "data": {"i": i, "s": "naïve ✓"}})
                .to_string(),
        }
    };
    let mut next_hostile = hostile.iter();
    let mut locations = 0i64;
    for i in 0..40i64 {
        dev.publish(&ev_topic, QoS::AtLeastOnce, false, good(i))
            .await;
        if i % 5 == 2 {
            if let Some(p) = next_hostile.next() {
                dev.publish(&ev_topic, QoS::AtLeastOnce, false, p.clone())
                    .await;
            }
        }
        for _ in 0..(1 + i % 2) {
            let l =
                json!({"lat": 10.0 + locations as f64 / 1000.0, "lon": 20.0, "ts": t0 + locations});
            dev.publish(&loc_topic, QoS::AtMostOnce, false, l.to_string())
                .await;
            locations += 1;
        }
    }
    assert!(next_hostile.next().is_none(), "every hostile variant sent");
    assert_eq!(locations, 60);

    let mut checks = Checks::new();
    let want: HashSet<String> = (0..40).map(|i| format!("good-{i}")).collect();
    let sql = format!("SELECT count(*) FROM events WHERE device_id = '{id}'");
    let all_good = checks
        .wait("the 40 good events stored", || async {
            h.count(&sql).await >= 40
        })
        .await;
    let have: HashSet<String> = stored_event_ids(&h, &id).await.into_iter().collect();
    checks.check(
        all_good && have == want,
        format!(
            "events stored: want exactly the 40 good ones; missing {:?}, unexpected {:?}",
            want.difference(&have).collect::<Vec<_>>(),
            have.difference(&want).collect::<Vec<_>>()
        ),
    );
    checks.check(
        h.count(&format!(
            "SELECT count(*) FROM events WHERE device_id = '{id}' AND event_id = 'good-10' AND data->>'v' = '\\u0000'"
        ))
        .await
            == 1,
        "good-10 keeps its data: a backslash followed by the text u0000",
    );
    checks.check(
        h.count(&format!(
            "SELECT count(*) FROM events WHERE device_id = '{id}' AND event_id = 'good-20' AND data->>'v' = '🚚'"
        ))
        .await
            == 1,
        "good-20 keeps its data: the surrogate pair as one character",
    );

    let dl_key = h.key("deadletter");
    let hostile_ref = &hostile;
    let ev_topic_ref = &ev_topic;
    let missing_dead_letters = || async {
        let dl = dead_letters(&h.redis, &dl_key).await;
        hostile_ref
            .iter()
            .filter(|p| {
                !dl.iter().any(|d| {
                    d["reason"] == "bad_text"
                        && d["topic"] == ev_topic_ref.as_str()
                        && d["payload"] == p.as_str()
                })
            })
            .cloned()
            .collect::<Vec<String>>()
    };
    let dead_lettered = checks
        .wait("every hostile event dead-lettered as bad_text", || async {
            missing_dead_letters().await.is_empty()
        })
        .await;
    checks.check(
        dead_lettered,
        format!(
            "not dead-lettered with reason bad_text: {:?}",
            missing_dead_letters().await
        ),
    );

    let loc_sql = format!("SELECT count(*) FROM locations WHERE device_id = '{id}'");
    let locs = checks
        .wait("the 60 locations stored", || async {
            h.count(&loc_sql).await >= 60
        })
        .await;
    checks.check(
        locs && h.count(&loc_sql).await == 60,
        format!("locations stored: {} of 60", h.count(&loc_sql).await),
    );

    // QoS 1 rejected messages are acknowledged too.
    let acked = checks
        .wait("no acknowledgement pending", || async {
            metric(&metrics_page(admin).await, "fieldcast_bridge_acks_pending") == 0.0
        })
        .await;
    checks.check(acked, "every QoS 1 message acknowledged (acks_pending 0)");
    let page = metrics_page(admin).await;
    let bad_text = metric(
        &page,
        "fieldcast_bridge_rejected_total{reason=\"bad_text\"}",
    );
    checks.check(
        bad_text == hostile.len() as f64,
        format!(
            "rejected_total{{reason=\"bad_text\"}} = {bad_text}, want {}",
            hostile.len()
        ),
    );
    let spool = h.spool_dir();
    let spool_empty = wait_until(Duration::from_secs(5), "spool empty", || async {
        segments(&spool).is_empty()
    })
    .await
    .is_ok();
    checks.check(
        spool_empty,
        format!("spool segments left: {:?}", segments(&spool)),
    );
    watch.wait_polls(20).await;
    let seen = watch.seen();
    eprintln!(
        "hostile: {} good, {} hostile, 60 locations; readyz polled {} times ({} not ready, {} unanswered); \
         bad_text {bad_text}; pg_errors {}; spooled {}; {:?}",
        have.len(),
        hostile.len(),
        seen.polls,
        seen.not_ready,
        seen.failed,
        metric(&page, "fieldcast_bridge_pg_errors_total"),
        metric(&page, "fieldcast_bridge_spooled_records_total"),
        began.elapsed()
    );
    checks.check(
        seen.polls > 0 && seen.not_ready == 0,
        format!(
            "/readyz not ready {} of {} times; first: {:?}",
            seen.not_ready, seen.polls, seen.first_not_ready
        ),
    );
    drop(watch);
    bridge.stop().await;
    checks.finish();
}

/// Pins the replayer against a spool written by an older bridge: a
/// segment with good records, two rows PostgreSQL refuses (event data
/// holding `\u0000`, which jsonb cannot store; a kind holding U+0000, which
/// text cannot) and a last line torn inside a multi-byte character, then a
/// later good segment with an undecodable line in the middle. Every good
/// record is stored, each refused row is dead-lettered as `store_rejected`
/// and counted, no segment is left or quarantined, `/readyz` stays ready
/// and the bridge goes on storing new events.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_poisoned_and_torn_spool_segment_is_replayed_without_wedging() {
    let _serial = SERIAL.lock().await;
    let began = Instant::now();
    let h = Harness::private().await;
    let dir = h.spool_dir();
    std::fs::create_dir_all(&dir).unwrap();
    let d = unique("spooled");
    let now = now_ms();
    let t0 = now - 120_000;
    let text = "naïve ✓ 🚚";

    let loc = |i: i64| {
        json!({"t": "l", "d": d, "ts": t0 + i, "lat": 10.0 + i as f64 / 100.0, "lon": 20.0,
               "alt": null, "speed": 1.5, "heading": null, "accuracy": null, "rx": t0 + i + 5})
    };
    let status = |i: i64| {
        json!({"t": "s", "d": d, "ts": t0 + 1000 + i, "online": i % 2 == 0,
               "battery": 50.0 + i as f64, "signal": null, "rx": t0 + 1000 + i + 5})
    };
    let event = |id: &str, i: i64, kind: &str, data: Option<String>| {
        json!({"t": "e", "d": d, "id": id, "ts": t0 + 2000 + i, "kind": kind,
               "severity": "warning", "data": data, "rx": t0 + 2000 + i + 5})
    };
    let good_data = |i: i64| Some(json!({"i": i, "s": text}).to_string());
    let line = |v: Value| format!("{v}\n");

    // Segment 1: good records, two poisoned rows among them, a torn tail.
    let mut seg1 = String::new();
    for i in 0..20 {
        seg1 += &line(loc(i));
    }
    for i in 0..5 {
        seg1 += &line(status(i));
    }
    for i in 0..10 {
        seg1 += &line(event(&format!("e{i}"), i, "tick", good_data(i)));
        if i == 4 {
            // jsonb refuses the escape (SQLSTATE 22P05).
            seg1 += &line(event(
                "poison-data",
                100,
                "tick",
                Some(r#"{"v":"\u0000"}"#.to_owned()),
            ));
        }
        if i == 7 {
            // text refuses the character (SQLSTATE 22021).
            seg1 += &line(event("poison-kind", 101, "bad\u{0}kind", good_data(101)));
        }
    }
    let mut seg1 = seg1.into_bytes();
    let torn = event("torn", 102, "tick", Some(r#"{"s":"café"}"#.to_owned())).to_string();
    let cut = torn.find('é').unwrap() + 1; // inside the two bytes of é
    seg1.extend_from_slice(&torn.as_bytes()[..cut]);
    assert!(
        std::str::from_utf8(&seg1).is_err(),
        "the tail is torn mid-character"
    );
    std::fs::write(dir.join(segment_name(now - 120_000, 0)), &seg1).unwrap();

    // Segment 2, later: good records around an undecodable line.
    let mut seg2 = String::new();
    for i in 100..110 {
        seg2 += &line(loc(i));
    }
    seg2 += &line(status(10));
    seg2 += "this line is not a spool record\n";
    seg2 += &line(status(11));
    for i in 0..5 {
        seg2 += &line(event(&format!("f{i}"), 10 + i, "tick", good_data(10 + i)));
    }
    std::fs::write(dir.join(segment_name(now - 60_000, 1)), seg2).unwrap();

    let bridge = h.start().await;
    let admin = bridge.handles.admin_addr;
    let watch = ReadyWatch::start(admin);
    let mut checks = Checks::new();

    let want: HashSet<String> = (0..10)
        .map(|i| format!("e{i}"))
        .chain((0..5).map(|i| format!("f{i}")))
        .collect();
    let ev_sql = format!("SELECT count(*) FROM events WHERE device_id = '{d}'");
    let events_in = checks
        .wait("the 15 good spooled events stored", || async {
            h.count(&ev_sql).await >= 15
        })
        .await;
    let have: HashSet<String> = stored_event_ids(&h, &d).await.into_iter().collect();
    checks.check(
        events_in && have == want,
        format!(
            "spooled events: missing {:?}, unexpected {:?}",
            want.difference(&have).collect::<Vec<_>>(),
            have.difference(&want).collect::<Vec<_>>()
        ),
    );
    checks.check(
        h.count(&format!(
            "SELECT count(*) FROM events WHERE device_id = '{d}' AND data->>'s' = '{text}' AND severity = 'warning'"
        ))
        .await
            == have.len() as i64,
        "spooled events keep their multi-byte data and severity",
    );
    let loc_sql = format!("SELECT count(*) FROM locations WHERE device_id = '{d}'");
    let locs = checks
        .wait("the 30 spooled locations stored", || async {
            h.count(&loc_sql).await >= 30
        })
        .await;
    checks.check(
        locs && h.count(&loc_sql).await == 30,
        format!(
            "spooled locations stored: {} of 30",
            h.count(&loc_sql).await
        ),
    );
    let st_sql = format!("SELECT count(*) FROM device_status WHERE device_id = '{d}'");
    let sts = checks
        .wait("the 7 spooled statuses stored", || async {
            h.count(&st_sql).await >= 7
        })
        .await;
    checks.check(
        sts && h.count(&st_sql).await == 7,
        format!("spooled statuses stored: {} of 7", h.count(&st_sql).await),
    );

    let dl_key = h.key("deadletter");
    let topic = format!("devices/{d}/events");
    let rejected_rows = || async {
        dead_letters(&h.redis, &dl_key)
            .await
            .into_iter()
            .filter(|v| v["reason"] == "store_rejected" && v["topic"] == topic.as_str())
            .filter_map(|v| v["payload"].as_str().map(str::to_owned))
            .collect::<Vec<String>>()
    };
    let both = checks
        .wait("both refused rows dead-lettered", || async {
            let rows = rejected_rows().await;
            rows.iter().any(|p| p.contains("poison-data"))
                && rows.iter().any(|p| p.contains("poison-kind"))
        })
        .await;
    let rows = rejected_rows().await;
    checks.check(
        both && rows.len() == 2,
        format!("store_rejected dead letters on {topic}: {rows:?}"),
    );

    let spool_clear = checks
        .wait("no segment left in the spool", || async {
            segments(&dir).is_empty()
        })
        .await;
    checks.check(spool_clear, format!("segments left: {:?}", segments(&dir)));
    checks.check(
        segments(&dir.join("quarantine")).is_empty(),
        format!(
            "a replayable segment was quarantined: {:?}",
            segments(&dir.join("quarantine"))
        ),
    );

    // Not wedged: a new event goes through.
    let dev = device(&h.mqtt_url).await;
    dev.publish(
        &topic,
        QoS::AtLeastOnce,
        false,
        json!({"id": "after", "kind": "k"}).to_string(),
    )
    .await;
    let after = checks
        .wait("a new event stored after the replay", || async {
            h.count(&format!(
                "SELECT count(*) FROM events WHERE device_id = '{d}' AND event_id = 'after'"
            ))
            .await
                == 1
        })
        .await;
    checks.check(after, "an event published after the replay is stored");

    let page = metrics_page(admin).await;
    let store_rejected = metric(
        &page,
        "fieldcast_bridge_store_rejected_total{table=\"events\"}",
    );
    checks.check(
        store_rejected == 2.0,
        format!("store_rejected_total{{table=\"events\"}} = {store_rejected}, want 2"),
    );
    let torn_records = metric(&page, "fieldcast_bridge_spool_torn_records_total");
    checks.check(
        torn_records >= 1.0,
        format!(
            "spool_torn_records_total = {torn_records}, want >= 1 (the undecodable middle line)"
        ),
    );
    let quarantined = metric(&page, "fieldcast_bridge_spool_quarantined_total");
    checks.check(
        quarantined == 0.0,
        format!("spool_quarantined_total = {quarantined}, want 0"),
    );
    watch.wait_polls(20).await;
    let seen = watch.seen();
    eprintln!(
        "spool replay: {} events, {} locations, {} statuses stored; dead letters {rows:?}; \
         store_rejected {store_rejected}, torn {torn_records}, quarantined {quarantined}; \
         readyz polled {} times ({} not ready); {:?}",
        have.len(),
        h.count(&loc_sql).await,
        h.count(&st_sql).await,
        seen.polls,
        seen.not_ready,
        began.elapsed()
    );
    checks.check(
        seen.polls > 0 && seen.not_ready == 0,
        format!(
            "/readyz not ready {} of {} times; first: {:?}",
            seen.not_ready, seen.polls, seen.first_not_ready
        ),
    );
    drop(watch);
    bridge.stop().await;
    checks.finish();
}

/// Pins §3 when the spool's disk is full while PostgreSQL is down: the
/// bridge stops acknowledging (the broker keeps the messages), says so on
/// `/readyz` (`"spool": false`) and in `fieldcast_bridge_spool_writable`,
/// and keeps its MQTT connection: the broker never times out its 2 s
/// keepalive during a stall of three keepalives, and the reconnect count
/// does not move, even with a reliable lane (5) smaller than the broker's
/// inflight window (20). When PostgreSQL returns, every event the device
/// got a PUBACK for is stored, and pushed to the event log, exactly once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn disk_full_spool_backpressures_without_losing_acked_events_or_the_connection() {
    const N: usize = 120;
    let _serial = SERIAL.lock().await;
    let began = Instant::now();
    let broker = Mosquitto::start_with("max_inflight_messages 20")
        .await
        .unwrap();
    let mut h = Harness::with_redis(&broker.url, &shared_redis_url()).await;
    h.broker = Some(broker);
    h.extra = ["--mqtt-keepalive", "2s", "--queue-capacity", "5"]
        .map(String::from)
        .to_vec();
    // ~50 spooled events fill it.
    let _disk = Tmpfs::mount(&h.spool_dir(), "48k");
    let proxy = TcpProxy::start("127.0.0.1:5432".parse().unwrap())
        .await
        .unwrap();
    let via_proxy =
        h.db.url
            .replace("127.0.0.1:5432", &format!("127.0.0.1:{}", proxy.port));
    assert_ne!(via_proxy, h.db.url);
    let bridge = h.start_with_db(&via_proxy).await;
    let admin = bridge.handles.admin_addr;
    let reconnects_before = metric(
        &metrics_page(admin).await,
        "fieldcast_bridge_mqtt_reconnects_total",
    );
    let (dev, mut acks) = device_with_acks(device_options(&h.mqtt_url)).await;
    let id = unique("diskfull");
    let topic = format!("devices/{id}/events");
    let mut checks = Checks::new();

    proxy.cut();
    let pg_down = eventually("/readyz reports PostgreSQL down", || async {
        readyz(admin).await.1["postgres"] == false
    })
    .await;
    assert!(pg_down, "the bridge must notice PostgreSQL is gone");

    // Multi-byte data, as devices send: ~0.9 KiB per spooled event.
    let note = "ü".repeat(400);
    let t0 = now_ms() - 60_000;
    let mut acked = Vec::new();
    for i in 0..N {
        let p = json!({"id": format!("ev-{i}"), "kind": "tick", "ts": t0 + i as i64,
                       "data": {"i": i, "note": note}})
        .to_string();
        if dev.publish_acked(&mut acks, &topic, p).await {
            acked.push(format!("ev-{i}"));
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    checks.check(
        acked.len() == N,
        format!("the broker acknowledged {} of {N} events", acked.len()),
    );
    // QoS 0 locations during the stall: queued, or shed and counted.
    let loc_topic = format!("devices/{id}/location");
    for j in 0..50 {
        let l = json!({"lat": 1.0, "lon": 2.0, "ts": t0 + j});
        dev.publish(&loc_topic, QoS::AtMostOnce, false, l.to_string())
            .await;
    }

    // Not a `checks.wait`: a failure here must leave the storage checks
    // below their full patience.
    let full = eventually("/readyz says the spool is not writable", || async {
        let (code, v) = readyz(admin).await;
        code == 503 && v["spool"] == false
    })
    .await;
    checks.check(
        full,
        format!("/readyz while the spool is full: {:?}", readyz(admin).await),
    );
    let full_at = Instant::now();
    // Three keepalives (2 s): the broker drops a client silent for 1.5.
    tokio::time::sleep(Duration::from_secs(6)).await;
    let (code, body) = readyz(admin).await;
    checks.check(
        code == 503 && body["ready"] == false && body["spool"] == false,
        format!("/readyz after a 6 s stall: {code} {body}"),
    );
    let page = metrics_page(admin).await;
    let writable = metric_opt(&page, "fieldcast_bridge_spool_writable");
    checks.check(
        writable == Some(0.0),
        format!("fieldcast_bridge_spool_writable = {writable:?}, want 0"),
    );
    let reconnects = metric(&page, "fieldcast_bridge_mqtt_reconnects_total");
    checks.check(
        reconnects == reconnects_before,
        format!("mqtt_reconnects_total went {reconnects_before} -> {reconnects} during the stall"),
    );
    checks.check(
        metric(&page, "fieldcast_bridge_mqtt_connected") == 1.0,
        "mqtt_connected is 1 during the stall",
    );
    let stored_in_stall = h.count("SELECT count(*) FROM events").await;
    eprintln!(
        "disk full: stall held {:?}; spool files {:?}; acks_pending {}; shed {}; accepted locations {}",
        full_at.elapsed(),
        segments(&h.spool_dir()),
        metric(&page, "fieldcast_bridge_acks_pending"),
        metric(&page, "fieldcast_bridge_shed_total{kind=\"location\"}"),
        metric(&page, "fieldcast_bridge_messages_total{kind=\"location\"}"),
    );

    proxy.restore();
    let sql = format!("SELECT count(*) FROM events WHERE device_id = '{id}'");
    let all = checks
        .wait("every published event stored", || async {
            h.count(&sql).await >= N as i64
        })
        .await;
    let have = stored_event_ids(&h, &id).await;
    let have_set: HashSet<&String> = have.iter().collect();
    let lost: Vec<&String> = acked.iter().filter(|e| !have_set.contains(e)).collect();
    checks.check(
        lost.is_empty(),
        format!("{} acknowledged events lost: {lost:?}", lost.len()),
    );
    checks.check(
        all && have.len() == N,
        format!("{} of {N} published events stored", have.len()),
    );
    let (hh, redis) = (&h, &h.redis);
    let logged = checks
        .wait("every event in the event log", || async {
            hh.event_log_len(redis).await >= N as i64
        })
        .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let xlen: i64 = h.event_log_len(redis).await;
    checks.check(
        logged && xlen == N as i64,
        format!("event log holds {xlen} entries, want {N} (each event pushed once)"),
    );
    let ready = checks
        .wait("ready again", || async { readyz(admin).await.0 == 200 })
        .await;
    checks.check(
        ready,
        format!(
            "/readyz after PostgreSQL returned: {:?}",
            readyz(admin).await
        ),
    );
    let page = metrics_page(admin).await;
    // The whole test: the broker never dropped the bridge for silence.
    let log = h.broker.as_ref().unwrap().log();
    let timeouts: Vec<&str> = log
        .lines()
        .filter(|l| l.contains(&h.client_id) && l.contains("exceeded timeout"))
        .collect();
    checks.check(
        timeouts.is_empty(),
        format!("the broker timed out the bridge's keepalive: {timeouts:?}"),
    );
    eprintln!(
        "disk full: {} acked, {stored_in_stall} stored during the stall, {} stored after; \
         xlen {xlen}; reconnects {reconnects_before} -> {}; locations stored {}, shed {}; {:?}",
        acked.len(),
        have.len(),
        metric(&page, "fieldcast_bridge_mqtt_reconnects_total"),
        h.count(&format!(
            "SELECT count(*) FROM locations WHERE device_id = '{id}'"
        ))
        .await,
        metric(&page, "fieldcast_bridge_shed_total{kind=\"location\"}"),
        began.elapsed()
    );
    bridge.stop().await;
    checks.finish();
}

/// Pins §3 "durability does not depend on Redis": with a broker that
/// queues at most 50 messages for the bridge (20 in flight) and a private
/// Redis killed, 300 QoS 1 events at ~50/s, each PUBACKed, are all in
/// PostgreSQL while Redis is still down; once Redis is back (empty), the
/// event log gets all 300, the device's `last_seen` catches up, and a
/// subscriber of `<prefix>live` that was there from Redis's first moment
/// sees each event exactly once.
///
/// Redis sits behind a proxy, kept cut until the subscriber is in, so the
/// bridge cannot push anything before the subscriber can see it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_outage_with_a_small_broker_queue_loses_no_acked_event() {
    const N: i64 = 300;
    let _serial = SERIAL.lock().await;
    let began = Instant::now();
    let mut redis = RedisServer::start().await.unwrap();
    let proxy = TcpProxy::start(format!("127.0.0.1:{}", redis.port).parse().unwrap())
        .await
        .unwrap();
    let broker = Mosquitto::start_with("max_queued_messages 50\nmax_inflight_messages 20")
        .await
        .unwrap();
    let mut h =
        Harness::with_redis(&broker.url, &format!("redis://127.0.0.1:{}", proxy.port)).await;
    h.broker = Some(broker);
    let bridge = h.start().await;
    let admin = bridge.handles.admin_addr;
    let (dev, mut acks) = device_with_acks(device_options(&h.mqtt_url)).await;
    let id = unique("rdq");
    let topic = format!("devices/{id}/events");

    redis.kill();
    proxy.cut();
    let down = eventually("/readyz reports Redis down", || async {
        readyz(admin).await.1["redis"] == false
    })
    .await;
    assert!(down, "the bridge must notice Redis is gone");

    let t0 = now_ms() - 60_000;
    let publish_started = Instant::now();
    let mut acked = 0;
    for i in 0..N {
        let p = json!({"id": format!("ev-{i}"), "kind": "tick", "ts": t0 + i, "data": {"i": i}})
            .to_string();
        if dev.publish_acked(&mut acks, &topic, p).await {
            acked += 1;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    eprintln!(
        "redis outage: {acked} of {N} events PUBACKed in {:?}",
        publish_started.elapsed()
    );
    assert_eq!(acked, N, "the broker acknowledges every event");

    let mut checks = Checks::new();
    let sql = format!("SELECT count(*) FROM events WHERE device_id = '{id}'");
    let stored = checks
        .wait("all 300 events stored while Redis is down", || async {
            h.count(&sql).await >= N
        })
        .await;
    let stored_while_down = h.count(&sql).await;
    checks.check(
        stored && stored_while_down == N,
        format!(
            "only {stored_while_down} of {N} acknowledged events reached PostgreSQL while Redis \
             was down; acks_pending {}",
            metric(&metrics_page(admin).await, "fieldcast_bridge_acks_pending")
        ),
    );
    let outbox = h.spool_dir().join("outbox");
    eprintln!(
        "redis outage: {stored_while_down} stored with Redis down after {:?}; outbox entries {:?}",
        began.elapsed(),
        std::fs::read_dir(&outbox).map(|d| d.count()).ok()
    );

    redis.restart().await.unwrap();
    let (_sub, mut live) = live_subscriber_at(&redis.url, &h.prefix).await;
    let client = redis_client(&redis.url).await;
    proxy.restore();
    let back_at = Instant::now();

    // Every event is the one device's: its partition's log.
    let log_key = h.keys().of(&id).1.events.clone();
    let c = &client;
    let logged = checks
        .wait("the event log has every event", || async {
            c.xlen::<i64, _>(&log_key).await.unwrap_or(0) >= N
        })
        .await;
    let dev_key = h.keys().device(&id);
    let caught_up = checks
        .wait("last_seen catches up", || async {
            c.hget::<Option<String>, _, _>(&dev_key, "last_seen")
                .await
                .ok()
                .flatten()
                == Some((t0 + N - 1).to_string())
        })
        .await;
    let state: HashMap<String, String> = c.hgetall(&dev_key).await.unwrap_or_default();
    checks.check(
        caught_up,
        format!(
            "device hash after Redis returned: {state:?}, want last_seen {}",
            t0 + N - 1
        ),
    );

    // Every live event, until each id has come once, then a moment more
    // for any double.
    let mut counts: HashMap<String, usize> = HashMap::new();
    let deadline = tokio::time::Instant::now() + checks.patience;
    let mut settle: Option<tokio::time::Instant> = None;
    loop {
        let until = settle.unwrap_or(deadline);
        let Ok(Some(s)) = tokio::time::timeout_at(until, live.recv()).await else {
            break;
        };
        let v: Value = serde_json::from_str(&s).unwrap_or(Value::Null);
        if v["msg"]["type"] == "event" && v["msg"]["device"] == id.as_str() {
            let eid = v["msg"]["id"].as_str().unwrap_or_default().to_owned();
            *counts.entry(eid).or_default() += 1;
        }
        if settle.is_none() && counts.len() as i64 >= N {
            settle = Some(tokio::time::Instant::now() + Duration::from_secs(1));
        }
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let xlen: i64 = c.xlen(&log_key).await.unwrap_or(0);
    let entries: Vec<(String, HashMap<String, String>)> =
        c.xrange(&log_key, "-", "+", None).await.unwrap_or_default();
    let logged_ids: HashSet<String> = entries
        .iter()
        .filter_map(|(_, f)| {
            let j: Value = serde_json::from_str(f.get("j")?).ok()?;
            j["id"].as_str().map(str::to_owned)
        })
        .collect();
    checks.check(
        logged && xlen == N && logged_ids.len() as i64 == N,
        format!(
            "event log: {xlen} entries, {} distinct events, want {N} of each",
            logged_ids.len()
        ),
    );
    let missing: Vec<i64> = (0..N)
        .filter(|i| !counts.contains_key(&format!("ev-{i}")))
        .collect();
    let doubled: Vec<(&String, &usize)> = counts.iter().filter(|(_, n)| **n > 1).collect();
    checks.check(
        missing.is_empty(),
        format!("{} events never pushed live: {missing:?}", missing.len()),
    );
    checks.check(
        doubled.is_empty(),
        format!("events pushed live twice: {doubled:?}"),
    );
    let ready = checks
        .wait("ready again", || async { readyz(admin).await.0 == 200 })
        .await;
    checks.check(
        ready,
        format!("/readyz after Redis returned: {:?}", readyz(admin).await),
    );
    eprintln!(
        "redis outage: after Redis returned, {} distinct live events in {:?}; xlen {xlen}; \
         {} distinct ids logged; {} events in PostgreSQL; outbox entries {:?}; {:?} in all",
        counts.len(),
        back_at.elapsed(),
        logged_ids.len(),
        h.count(&sql).await,
        std::fs::read_dir(&outbox).map(|d| d.count()).ok(),
        began.elapsed()
    );
    bridge.stop().await;
    checks.finish();
}

/// Pins §3's exception to the order rule: the Last Will `{"online":false}`
/// (no `ts`) of a device whose clock ran 5 minutes ahead still takes it
/// offline: the hot state's `online` becomes 0 with `sts` 1 ms after the
/// stored one, and the offline status is pushed live with that later
/// `ts`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn last_will_after_a_status_stamped_ahead_marks_the_device_offline() {
    let _serial = SERIAL.lock().await;
    let began = Instant::now();
    let h = Harness::private().await;
    let bridge = h.start().await;
    let (_sub, mut live) = live_subscriber(&h.prefix).await;
    let id = unique("ahead");
    let topic = format!("devices/{id}/status");
    // The device reaches the broker through a proxy, so the test can kill
    // its TCP connection without a DISCONNECT: the broker then publishes
    // the will.
    let broker_port = fieldcast_mqtt::BrokerUrl::parse(&h.mqtt_url).unwrap().port;
    let link = TcpProxy::start(format!("127.0.0.1:{broker_port}").parse().unwrap())
        .await
        .unwrap();
    let mut opts = rumqttc::MqttOptions::new(unique("dev"), "127.0.0.1", link.port);
    opts.set_keep_alive(Duration::from_secs(30));
    opts.set_last_will(rumqttc::LastWill::new(
        &topic,
        r#"{"online":false}"#,
        QoS::AtLeastOnce,
        true,
    ));
    let dev = device_with(opts).await;
    let ahead = now_ms() + 5 * 60_000;
    dev.publish(
        &topic,
        QoS::AtLeastOnce,
        true,
        json!({"online": true, "ts": ahead, "battery": 80}).to_string(),
    )
    .await;
    let online = eventually("online with the ts ahead", || async {
        let s = h.state(&id).await;
        s.get("online").map(String::as_str) == Some("1") && s.get("sts") == Some(&ahead.to_string())
    })
    .await;
    assert!(
        online,
        "hot state after the first status: {:?}",
        h.state(&id).await
    );
    let first = next_msg(&mut live).await;
    assert_eq!(first["msg"]["online"], true, "{first}");

    link.cut();
    drop(dev);
    let offline = eventually("offline after the will", || async {
        h.state(&id).await.get("online").map(String::as_str) == Some("0")
    })
    .await;
    let state = h.state(&id).await;
    let stale = metric(
        &metrics_page(bridge.handles.admin_addr).await,
        "fieldcast_bridge_stale_total{kind=\"status\"}",
    );
    eprintln!(
        "last will: hot state {state:?}, stale statuses {stale}, after {:?}",
        began.elapsed()
    );
    assert!(
        offline,
        "the will did not take the device offline (stale statuses: {stale}); hot state {state:?}"
    );
    assert_eq!(
        state.get("sts"),
        Some(&(ahead + 1).to_string()),
        "sts 1 ms after the stored one"
    );
    let will = loop {
        let m = next_msg(&mut live).await;
        if m["msg"]["type"] == "status" && m["msg"]["device"] == id.as_str() {
            break m;
        }
    };
    assert_eq!(will["msg"]["online"], false, "{will}");
    assert!(
        will["msg"]["ts"].as_i64().unwrap_or(0) > ahead,
        "the pushed will's ts must be after the stored {ahead}: {will}"
    );
    assert!(will["rx"].as_i64().is_some(), "{will}");
    h.wait_count(
        &format!("SELECT count(*) FROM device_status WHERE device_id = '{id}' AND NOT online"),
        1,
    )
    .await;
    bridge.stop().await;
}

/// Pins: Redis work owed for acknowledged events survives a bridge restart.
/// A bridge acknowledges events while Redis is down (outbox), stops; a new
/// bridge on the same spool directory replays the outbox once Redis is
/// back, each event logged once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_outbox_is_replayed_by_the_next_bridge_after_a_restart() {
    const N: i64 = 20;
    let _serial = SERIAL.lock().await;
    let mut redis = RedisServer::start().await.unwrap();
    let h = Harness::private_with_redis(&redis.url).await;
    let bridge = h.start().await;
    let health = bridge.handles.health.clone();
    let (dev, mut acks) = device_with_acks(device_options(&h.mqtt_url)).await;
    let id = unique("obx");
    let topic = format!("devices/{id}/events");
    redis.kill();
    wait_until(WAIT, "the bridge sees Redis down", || {
        let health = health.clone();
        async move { !health.redis() }
    })
    .await
    .unwrap();
    let t0 = now_ms() - 60_000;
    for i in 0..N {
        let p = json!({"id": format!("ev-{i}"), "kind": "tick", "ts": t0 + i}).to_string();
        assert!(
            dev.publish_acked(&mut acks, &topic, p).await,
            "event {i} acknowledged"
        );
    }
    h.wait_count(
        &format!("SELECT count(*) FROM events WHERE device_id = '{id}'"),
        N,
    )
    .await;
    bridge.stop().await;
    let outbox = h.spool_dir().join("outbox");
    let owed = std::fs::read_dir(&outbox)
        .unwrap()
        .filter_map(|e| e.ok())
        .filter(|e| e.file_name().to_string_lossy().starts_with("seg-"))
        .count();
    assert!(
        owed > 0,
        "the stopped bridge left its Redis work in {outbox:?}"
    );

    redis.restart().await.unwrap();
    let bridge = h.start().await;
    let client = redis_client(&redis.url).await;
    let (hh, c) = (&h, &client);
    wait_until(WAIT, "the new bridge replays the outbox", || async move {
        hh.event_log_len(c).await == N
    })
    .await
    .unwrap();
    let last_seen: Option<String> = client
        .hget(h.keys().device(&id), "last_seen")
        .await
        .unwrap();
    assert_eq!(last_seen, Some((t0 + N - 1).to_string()));
    wait_until(WAIT, "the outbox is empty", || {
        let outbox = outbox.clone();
        async move {
            std::fs::read_dir(&outbox)
                .map(|rd| {
                    rd.filter_map(|e| e.ok())
                        .all(|e| !e.file_name().to_string_lossy().starts_with("seg-"))
                })
                .unwrap_or(false)
        }
    })
    .await
    .unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(h.event_log_len(&client).await, N, "each event logged once");
    bridge.stop().await;
}
