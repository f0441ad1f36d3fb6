//! Event cursors carry the event logs' epochs (PROTOCOL.md §4; one log per
//! partition, the cursor a position in each): a cursor issued before Redis
//! lost a log gets `cursor_expired`, never a replay that silently skips
//! what was lost. Events are written through the
//! bridge's own `event.lua` (tests/support), so the epoch rule under test
//! is the bridge's and the gateway's together.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use fieldcast_testkit::{wait_until, RedisServer};
use fred::prelude::*;
use serde_json::{json, Value};
use support::*;

use fieldcast_gateway::cursor::{SentCursor, StreamId};

const T0: i64 = 1_763_800_000_000;

/// The epochs part of a cursor (the digest of every partition's epoch),
/// checking the whole cursor's shape: 16 lowercase hex digits, a colon,
/// the stream ids.
fn epoch(cursor: &str) -> &str {
    let (epoch, _) = cursor
        .split_once(':')
        .unwrap_or_else(|| panic!("no epoch in cursor {cursor:?}"));
    assert!(
        epoch.len() == 16
            && epoch
                .bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)),
        "epoch of {cursor:?}"
    );
    ids(cursor);
    epoch
}

/// The partitions of the tests' deployment (the default).
const PARTITIONS: usize = fieldcast_core::Partitions::DEFAULT as usize;

/// The stream id of every partition in a cursor.
fn ids(cursor: &str) -> Vec<StreamId> {
    let sent: SentCursor = cursor
        .parse()
        .unwrap_or_else(|_| panic!("not a cursor: {cursor:?}"));
    assert_eq!(sent.ids().len(), PARTITIONS, "{cursor:?}");
    sent.ids().to_vec()
}

/// Whether a cursor is at the start of every partition's log.
fn at_start(cursor: &str) -> bool {
    ids(cursor).iter().all(|id| *id == StreamId::ZERO)
}

fn cursor_of(v: &Value) -> String {
    v["cursor"]
        .as_str()
        .unwrap_or_else(|| panic!("no cursor in {v}"))
        .to_owned()
}

/// What a subscribe answered, up to and including `subscribed`.
struct Answer {
    snapshot: bool,
    errors: Vec<String>,
    events: Vec<Value>,
    cursor: String,
}

async fn subscribe(ws: &mut Ws, mut cmd: Value) -> Answer {
    cmd["op"] = json!("subscribe");
    cmd["ref"] = json!("r");
    ws.send(cmd).await;
    let mut a = Answer {
        snapshot: false,
        errors: Vec::new(),
        events: Vec::new(),
        cursor: String::new(),
    };
    loop {
        let v = ws.recv().await;
        match v["type"].as_str() {
            Some("snapshot") if v["ref"] == "r" => a.snapshot = true,
            Some("error") if v["ref"] == "r" => a.errors.push(v["code"].as_str().unwrap().into()),
            Some("event") => a.events.push(v),
            Some("subscribed") if v["ref"] == "r" => {
                a.cursor = cursor_of(&v);
                return a;
            }
            _ => panic!("unexpected frame during a subscribe: {v}"),
        }
    }
}

/// The next frame, which must be an event.
async fn next_event(ws: &mut Ws) -> Value {
    let v = ws.recv().await;
    assert_eq!(v["type"], "event", "{v}");
    v
}

/// Pins: a private Redis without persistence restarts and loses the event
/// log; the bridge's next event starts a new life, and a cursor handed out
/// before gets `cursor_expired` (the subscription still goes ahead) instead
/// of replaying from a stream id that now means something else. A client
/// connected throughout gets a fresh snapshot and `cursor_expired` (no
/// `ref`) from its resync.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cursor_from_before_redis_lost_the_log_gets_cursor_expired() {
    let mut redis = RedisServer::start().await.unwrap();
    let mut env = Env::with_redis(&redis.url).await;
    let gw = env.gateway().await;
    let t = token(json!({}));

    let mut watcher = gw.ws(&t).await;
    let (_, first) = watcher.subscribe(json!({"fleet": true})).await;
    assert!(env.event("d1", "e1", T0, json!({"n": 1})).await);
    assert!(env.event("d1", "e2", T0 + 1, json!({"n": 2})).await);
    assert_eq!(next_event(&mut watcher).await["id"], "e1");
    let e2 = next_event(&mut watcher).await;
    assert_eq!(e2["id"], "e2");
    let live = cursor_of(&e2);
    let old_epoch = epoch(&live).to_owned();
    assert_eq!(
        epoch(&first),
        old_epoch,
        "the bridge kept the epoch the gateway started"
    );

    // The cursor a client holds when it goes away: the gateway's own.
    let mut client = gw.ws(&t).await;
    let held = subscribe(&mut client, json!({"devices": ["d1"]})).await;
    assert!(held.errors.is_empty() && held.events.is_empty());
    assert_eq!(
        held.cursor, live,
        "subscribed carries the newest event's cursor"
    );
    drop(client);

    redis.kill();
    let addr = gw.addr;
    wait_until(WAIT, "not ready", || async move {
        http(addr, "GET", "/readyz", None, None).await.0 == 503
    })
    .await
    .unwrap();
    redis.restart().await.unwrap();
    wait_until(WAIT, "ready again", || async move {
        http(addr, "GET", "/readyz", None, None).await.0 == 200
    })
    .await
    .unwrap();

    // The watcher's resync: no replay from its cursor of the lost log.
    let v = watcher.recv().await;
    assert_eq!(v["type"], "snapshot", "{v}");
    assert!(v.get("ref").is_none(), "{v}");
    let v = watcher.recv().await;
    assert_eq!(
        (v["type"].as_str(), v["code"].as_str()),
        (Some("error"), Some("cursor_expired")),
        "{v}"
    );
    assert!(v.get("ref").is_none(), "{v}");

    // The bridge logs an event into the new, empty log. Its stream id is
    // larger than the held cursor's, which is what let a bare stream id
    // pass for a valid cursor.
    env.reconnect_redis().await;
    assert!(env.event("d1", "e3", T0 + 3, json!({"n": 3})).await);
    let e3 = loop {
        let v = watcher.recv().await;
        match v["type"].as_str() {
            // One more fresh snapshot per reconnect the feed noticed.
            Some("snapshot") if v.get("ref").is_none() => {}
            Some("event") => break v,
            _ => panic!("unexpected {v}"),
        }
    };
    assert_eq!(e3["id"], "e3");
    let new_life = cursor_of(&e3);
    assert_ne!(
        epoch(&new_life),
        old_epoch,
        "the lost log's epoch came back"
    );

    let mut late = gw.ws(&t).await;
    let a = subscribe(&mut late, json!({"fleet": true, "since": held.cursor})).await;
    assert!(a.snapshot);
    assert_eq!(a.errors, ["cursor_expired"]);
    assert!(
        a.events.is_empty(),
        "replayed from a stale cursor: {:?}",
        a.events
    );
    assert_eq!(a.cursor, new_life);
    // The live event's own cursor resumes normally.
    let mut resumed = gw.ws(&t).await;
    let r = subscribe(&mut resumed, json!({"fleet": true, "since": new_life})).await;
    assert!(r.errors.is_empty() && r.events.is_empty());

    // The subscription went ahead: live events arrive, in the new life.
    assert!(env.event("d1", "e4", T0 + 4, json!({"n": 4})).await);
    for ws in [&mut late, &mut watcher, &mut resumed] {
        let e4 = next_event(ws).await;
        assert_eq!(e4["id"], "e4");
        assert_eq!(epoch(&cursor_of(&e4)), epoch(&new_life));
    }
    assert!(late.sync().await.is_empty());
    gw.stop().await;
}

/// Pins: the gateway and the bridge apply one rule (a log without its
/// epoch or without its stream starts a new life) and never rotate an
/// epoch the other just made: an evicted stream, then an evicted epoch,
/// each expire the cursors before them, and only those.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_log_or_epoch_gone_starts_a_new_life_on_either_side() {
    let env = Env::new().await;
    let gw = env.gateway().await;
    let t = token(json!({}));
    // d1's partition's log (the only one these events go to).
    let keys = env.keys();
    let (_, part) = keys.of("d1");
    let (stream, epoch_key) = (part.events.clone(), part.epoch.clone());

    // A fresh deployment: the gateway starts the log, the bridge keeps it.
    let mut watcher = gw.ws(&t).await;
    let (_, c0) = watcher.subscribe(json!({"fleet": true})).await;
    assert!(at_start(&c0), "{c0}");
    assert!(env.event("d1", "e1", T0, json!({})).await);
    let c1 = cursor_of(&next_event(&mut watcher).await);
    assert_eq!(epoch(&c1), epoch(&c0));

    // The stream is evicted; the gateway notices first and starts a new
    // life with an empty stream, which the bridge then keeps.
    let _: i64 = env.redis.del(&stream).await.unwrap();
    let mut ws = gw.ws(&t).await;
    let a = subscribe(&mut ws, json!({"fleet": true, "since": c1})).await;
    assert_eq!(a.errors, ["cursor_expired"]);
    assert!(at_start(&a.cursor), "{}", a.cursor);
    assert_ne!(epoch(&a.cursor), epoch(&c1));
    assert!(env.event("d1", "e2", T0 + 2, json!({})).await);
    let c2 = cursor_of(&next_event(&mut watcher).await);
    assert_eq!(epoch(&c2), epoch(&a.cursor));
    assert_eq!(next_event(&mut ws).await["cursor"], c2.as_str());

    // The epoch is evicted, the stream kept: its ids can no longer be
    // vouched for, so the same id in the new life is a new cursor.
    let _: i64 = env.redis.del(&epoch_key).await.unwrap();
    let mut ws = gw.ws(&t).await;
    let a = subscribe(&mut ws, json!({"fleet": true, "since": c2})).await;
    assert_eq!(a.errors, ["cursor_expired"]);
    assert_ne!(epoch(&a.cursor), epoch(&c2));
    assert_eq!(
        a.cursor.split_once(':').unwrap().1,
        c2.split_once(':').unwrap().1
    );
    let c3_from = a.cursor;

    // Within one life, resuming is exact as ever.
    assert!(env.event("d1", "e3", T0 + 3, json!({})).await);
    let c3 = cursor_of(&next_event(&mut watcher).await);
    assert_eq!(epoch(&c3), epoch(&c3_from));
    let mut ws = gw.ws(&t).await;
    let a = subscribe(&mut ws, json!({"fleet": true, "since": c3_from})).await;
    assert!(a.errors.is_empty(), "{:?}", a.errors);
    let ids: Vec<&str> = a.events.iter().map(|e| e["id"].as_str().unwrap()).collect();
    assert_eq!(ids, ["e3"]);
    assert_eq!(cursor_of(&a.events[0]), c3);
    assert_eq!(a.cursor, c3);

    // Bare stream ids (the format before epochs) are not cursors.
    let bare = c3.split_once(':').unwrap().1.to_owned();
    let a = subscribe(&mut ws, json!({"fleet": true, "since": bare})).await;
    assert_eq!(a.errors, ["cursor_expired"]);
    assert!(a.events.is_empty());
    gw.stop().await;
}

/// Pins the composite cursor: events of devices in several partitions,
/// each logged in its own partition's log; the cursor of any event
/// resumes with exactly the events after it, in every partition, each
/// device's in order, and ends where the live client's cursor is.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cursor_resumes_every_partition_exactly() {
    let env = Env::new().await;
    let gw = env.gateway().await;
    let t = token(json!({}));
    let keys = env.keys();
    // Five devices in five different partitions.
    let mut devices: Vec<String> = Vec::new();
    let mut seen = std::collections::HashSet::new();
    for i in 0.. {
        let d = format!("p{i}");
        if seen.insert(keys.of(&d).0) {
            devices.push(d);
        }
        if devices.len() == 5 {
            break;
        }
    }

    let mut watcher = gw.ws(&t).await;
    watcher.subscribe(json!({"fleet": true})).await;
    let mut live = Vec::new();
    for n in 0..15 {
        let d = &devices[n % devices.len()];
        assert!(
            env.event(d, &format!("e{n}"), T0 + n as i64, json!({}))
                .await
        );
        live.push(next_event(&mut watcher).await);
    }
    for (n, e) in live.iter().enumerate() {
        assert_eq!(e["id"], format!("e{n}"), "live in the order logged");
    }
    let last = cursor_of(&live[14]);

    for k in [0usize, 3, 7, 13, 14] {
        let mut ws = gw.ws(&t).await;
        let a = subscribe(
            &mut ws,
            json!({"fleet": true, "since": cursor_of(&live[k])}),
        )
        .await;
        assert!(a.errors.is_empty(), "from e{k}: {:?}", a.errors);
        let mut got: Vec<&str> = a.events.iter().map(|e| e["id"].as_str().unwrap()).collect();
        // The replay merges the partitions by stream id; each device's
        // events (one partition) keep their order.
        for d in &devices {
            let mine: Vec<u64> = a
                .events
                .iter()
                .filter(|e| e["device"] == d.as_str())
                .map(|e| e["id"].as_str().unwrap()[1..].parse().unwrap())
                .collect();
            assert!(mine.windows(2).all(|w| w[0] < w[1]), "{d}: {mine:?}");
        }
        got.sort_by_key(|id| id[1..].parse::<usize>().unwrap());
        let want: Vec<String> = (k + 1..15).map(|n| format!("e{n}")).collect();
        assert_eq!(got, want, "resumed from e{k}");
        assert_eq!(
            a.cursor, last,
            "from e{k}: subscribed where the live client is"
        );
        // The last replayed event's cursor is that same point.
        if let Some(e) = a.events.last() {
            assert_eq!(cursor_of(e), last);
        }
    }
    // A device subscribe resumes only its device's events.
    let mut ws = gw.ws(&t).await;
    let a = subscribe(
        &mut ws,
        json!({"devices": [devices[1].clone()], "since": cursor_of(&live[0])}),
    )
    .await;
    let ids: Vec<&str> = a.events.iter().map(|e| e["id"].as_str().unwrap()).collect();
    assert_eq!(ids, ["e1", "e6", "e11"]);
    gw.stop().await;
}

/// Pins: an event logged and published twice reaches a client watching
/// throughout once (PROTOCOL.md §3), live and in a resync's replay. The
/// second copy is what a Redis failover to a replica that had not yet
/// received the event's dedup key leaves: the bridge, replaying its
/// outbox on the new primary, logs the event again at a later position
/// (docs/redis-layout.md). Here the key is deleted instead.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_event_logged_twice_reaches_a_watcher_once() {
    let redis = RedisServer::start().await.unwrap();
    let env = Env::with_redis(&redis.url).await;
    let gw = env.gateway().await;
    let mut watcher = gw.ws(&token(json!({}))).await;
    watcher.subscribe(json!({"fleet": true})).await;
    let seen = env.keys().of("d1").1.event_seen("d1", "e1");
    assert!(env.event("d1", "e1", T0, json!({})).await);
    assert_eq!(next_event(&mut watcher).await["id"], "e1");

    // Live: the copy comes between e1 and e2.
    let _: i64 = env.redis.del(&seen).await.unwrap();
    assert!(
        env.event("d1", "e1", T0, json!({})).await,
        "not logged again"
    );
    assert!(env.event("d1", "e2", T0 + 1, json!({})).await);
    let e2 = next_event(&mut watcher).await;
    assert_eq!(e2["id"], "e2");

    // In a replay: the feed's connection dropped (as in a failover), the
    // copy logged while it is away; the resync replays from e2's cursor.
    let _: fred::types::Value = env
        .redis
        .custom(
            fred::types::CustomCommand::new_static("CLIENT", None, false),
            vec!["KILL", "TYPE", "pubsub"],
        )
        .await
        .unwrap();
    let _: i64 = env.redis.del(&seen).await.unwrap();
    assert!(
        env.event("d1", "e1", T0, json!({})).await,
        "not logged again"
    );
    assert!(env.event("d1", "e3", T0 + 3, json!({})).await);
    let mut events = Vec::new();
    while events.last() != Some(&json!("e3")) {
        let v = watcher.recv().await;
        match v["type"].as_str() {
            Some("snapshot") if v.get("ref").is_none() => {}
            Some("event") => events.push(v["id"].clone()),
            _ => panic!("unexpected {v}"),
        }
    }
    assert_eq!(events, ["e3"], "events after e2");
    assert_eq!(
        gw.metric("fieldcast_gateway_duplicate_events_dropped_total")
            .await,
        2.0
    );
    gw.stop().await;
}
