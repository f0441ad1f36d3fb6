//! Device groups (issue #16, point 4) against a real PostgreSQL migrated by
//! the bridge's own `schema::prepare` and a real Redis: `PUT
//! /api/devices/{id}/groups` (admin only, every bad body a 400 with
//! nothing stored), `DeviceState.groups` in `/api/devices`, `?group=`,
//! `/ws` subscriptions by group that follow membership changes live, and
//! the `groups` token claim, including a device that joins one of the
//! token's groups after the holder connected.
//!
//! "Not sent" is shown without a timer: a device's update that must not
//! arrive is followed by one of a device that must, on the same live
//! channel, so the second arriving first proves the first was dropped.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use serde_json::{json, Value};
use support::*;

const JSON: &[(&str, &str)] = &[("content-type", "application/json")];

fn admin() -> String {
    token(json!({"admin": true}))
}

async fn put_groups(gw: &Gateway, device: &str, token: &str, body: &str) -> (u16, Value) {
    let path = format!("/api/devices/{device}/groups");
    let (s, _, b) = request(gw.addr, "PUT", &path, Some(token), JSON, body).await;
    (s, serde_json::from_str(&b).unwrap_or(Value::Null))
}

async fn stored_groups(env: &Env, device: &str) -> Vec<String> {
    env.pg
        .query(
            "SELECT group_name FROM device_groups WHERE device_id = $1 ORDER BY group_name",
            &[&device],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect()
}

/// Frames up to and including the next location of `device`.
async fn until_location(ws: &mut Ws, device: &str) -> Vec<Value> {
    let mut seen = Vec::new();
    loop {
        let v = ws.recv().await;
        let done = v["type"] == "location" && v["device"] == device;
        seen.push(v);
        if done {
            return seen;
        }
    }
}

/// Frames up to and including the `groups` frame of `device`.
async fn until_groups(ws: &mut Ws, device: &str) -> Vec<Value> {
    let mut seen = Vec::new();
    loop {
        let v = ws.recv().await;
        let done = v["type"] == "groups" && v["device"] == device;
        seen.push(v);
        if done {
            return seen;
        }
    }
}

fn locations_of<'a>(frames: &'a [Value], device: &'a str) -> impl Iterator<Item = &'a Value> {
    frames
        .iter()
        .filter(move |v| v["type"] == "location" && v["device"] == device)
}

fn devices_of(list: &Value) -> Vec<String> {
    let mut ids: Vec<String> = list
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["device"].as_str().unwrap().to_owned())
        .collect();
    ids.sort();
    ids
}

#[tokio::test]
async fn put_groups_is_for_admins_and_refuses_bad_lists() {
    let (env, gw) = Env::migrated_with_gateway().await;
    let before = env.config_version().await;

    let (s, v) = put_groups(&gw, "truck-1", &token(json!({})), r#"["north"]"#).await;
    assert_eq!(s, 403, "{v}");
    assert_eq!(v["error"]["code"], "forbidden", "{v}");
    let (s, _) = put_groups(&gw, "truck-1", "garbage", r#"["north"]"#).await;
    assert_eq!(s, 401);

    let too_many =
        serde_json::to_string(&(0..33).map(|i| format!("g{i}")).collect::<Vec<_>>()).unwrap();
    let long = format!(r#"["{}"]"#, "a".repeat(65));
    for bad in [
        "not json",
        r#"{"groups":["north"]}"#,
        r#""north""#,
        r#"[1]"#,
        r#"[""]"#,
        r#"["a b"]"#,
        r#"["nörd"]"#,
        r#"["x,y"]"#,
        &long,
        &too_many,
    ] {
        let (s, v) = put_groups(&gw, "truck-1", &admin(), bad).await;
        assert_eq!(s, 400, "{bad}: {v}");
        assert_eq!(v["error"]["code"], "bad_request", "{bad}: {v}");
        assert!(v["error"]["message"].is_string(), "{v}");
    }
    let (s, v) = put_groups(&gw, "bad%20id", &admin(), r#"["north"]"#).await;
    assert_eq!(s, 400, "{v}");
    assert!(stored_groups(&env, "truck-1").await.is_empty());
    assert_eq!(
        env.config_version().await,
        before,
        "a refused write stores nothing"
    );

    // Sorted, repeats dropped; a device needs no hot state to be grouped.
    let (s, v) = put_groups(&gw, "truck-1", &admin(), r#"["north","night","north"]"#).await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(
        v,
        json!({"device": "truck-1", "groups": ["night", "north"]})
    );
    assert_eq!(stored_groups(&env, "truck-1").await, ["night", "north"]);
    let after = env.config_version().await;
    assert!(after > before, "the write notifies bridges and gateways");

    // The same list again writes nothing (nobody is woken for nothing).
    let (s, _) = put_groups(&gw, "truck-1", &admin(), r#"["night","north"]"#).await;
    assert_eq!(s, 200);
    assert_eq!(env.config_version().await, after);

    // Replaced, not merged; `[]` clears.
    let (s, _) = put_groups(&gw, "truck-1", &admin(), r#"["south"]"#).await;
    assert_eq!(s, 200);
    assert_eq!(stored_groups(&env, "truck-1").await, ["south"]);
    let (s, v) = put_groups(&gw, "truck-1", &admin(), "[]").await;
    assert_eq!(s, 200);
    assert_eq!(v["groups"], json!([]));
    assert!(stored_groups(&env, "truck-1").await.is_empty());
    gw.stop().await;
}

#[tokio::test]
async fn device_state_carries_groups_and_devices_filter_by_group() {
    let (env, gw) = Env::migrated_with_gateway().await;
    let all = token(json!({}));
    assert!(env.location("g-a", 1_000, 51.0, 0.1).await);
    assert!(env.location("g-b", 1_000, 51.0, 0.2).await);
    let (s, _) = put_groups(&gw, "g-a", &admin(), r#"["north","night"]"#).await;
    assert_eq!(s, 200);

    let (s, v) = get_json(gw.addr, "/api/devices", &all).await;
    assert_eq!(s, 200, "{v}");
    for d in v.as_array().unwrap() {
        let want = if d["device"] == "g-a" {
            json!(["night", "north"])
        } else {
            json!([])
        };
        assert_eq!(d["groups"], want, "{d}");
    }
    let (s, v) = get_json(gw.addr, "/api/devices/g-a", &all).await;
    assert_eq!(s, 200);
    assert_eq!(v["groups"], json!(["night", "north"]));
    let (_, v) = get_json(gw.addr, "/api/devices/g-b", &all).await;
    assert_eq!(v["groups"], json!([]));

    let (s, v) = get_json(gw.addr, "/api/devices?group=north", &all).await;
    assert_eq!(s, 200);
    assert_eq!(devices_of(&v), ["g-a"]);
    let (_, v) = get_json(gw.addr, "/api/devices?group=south", &all).await;
    assert_eq!(devices_of(&v), Vec::<String>::new());
    let (s, v) = get_json(gw.addr, "/api/devices?group=a%20b", &all).await;
    assert_eq!(s, 400, "{v}");
    assert_eq!(v["error"]["code"], "bad_request");

    // The /ws snapshot carries them too.
    let mut ws = gw.ws(&all).await;
    let (snap, _) = ws.subscribe(json!({"fleet": true})).await;
    let snap = snap.unwrap();
    let a = snap.iter().find(|d| d["device"] == "g-a").unwrap();
    assert_eq!(a["groups"], json!(["night", "north"]));
    let b = snap.iter().find(|d| d["device"] == "g-b").unwrap();
    assert_eq!(b["groups"], json!([]));

    // A change reaches a fleet subscriber at once, as a `groups` frame.
    let (s, _) = put_groups(&gw, "g-b", &admin(), r#"["south"]"#).await;
    assert_eq!(s, 200);
    let frames = until_groups(&mut ws, "g-b").await;
    assert_eq!(
        frames.last().unwrap(),
        &json!({"type": "groups", "device": "g-b", "groups": ["south"]})
    );
    gw.stop().await;
}

#[tokio::test]
async fn a_group_subscription_follows_devices_in_and_out() {
    let (env, gw) = Env::migrated_with_gateway().await;
    assert!(env.location("in-1", 1_000, 51.0, 0.1).await);
    assert!(env.location("out-1", 1_000, 51.0, 0.2).await);
    let (s, _) = put_groups(&gw, "in-1", &admin(), r#"["north"]"#).await;
    assert_eq!(s, 200);

    let mut ws = gw.ws(&token(json!({}))).await;
    let (snap, _) = ws.subscribe(json!({"groups": ["north"]})).await;
    let snap = snap.unwrap();
    assert_eq!(snap.len(), 1, "{snap:?}");
    assert_eq!(snap[0]["device"], "in-1");
    assert_eq!(snap[0]["groups"], json!(["north"]));

    // Not in the group: not sent (in-1's later location arrives first).
    assert!(env.location("out-1", 2_000, 51.0, 0.2).await);
    assert!(env.location("in-1", 2_000, 51.0, 0.1).await);
    let frames = until_location(&mut ws, "in-1").await;
    assert_eq!(locations_of(&frames, "out-1").count(), 0, "{frames:?}");

    // out-1 joins: the subscriber is told, then gets its updates.
    let (s, _) = put_groups(&gw, "out-1", &admin(), r#"["north","south"]"#).await;
    assert_eq!(s, 200);
    let frames = until_groups(&mut ws, "out-1").await;
    assert_eq!(frames.last().unwrap()["groups"], json!(["north", "south"]));
    assert!(env.location("out-1", 3_000, 51.0, 0.2).await);
    let frames = until_location(&mut ws, "out-1").await;
    assert_eq!(locations_of(&frames, "out-1").next().unwrap()["ts"], 3_000);

    // in-1 leaves: its `groups` frame is the last the subscriber gets of it.
    let (s, _) = put_groups(&gw, "in-1", &admin(), r#"["south"]"#).await;
    assert_eq!(s, 200);
    let frames = until_groups(&mut ws, "in-1").await;
    assert_eq!(frames.last().unwrap()["groups"], json!(["south"]));
    assert!(env.location("in-1", 4_000, 51.0, 0.1).await);
    assert!(env.location("out-1", 4_000, 51.0, 0.2).await);
    let frames = until_location(&mut ws, "out-1").await;
    assert_eq!(locations_of(&frames, "in-1").count(), 0, "{frames:?}");

    // A new subscriber's snapshot follows the change.
    let mut late = gw.ws(&token(json!({}))).await;
    let (snap, _) = late.subscribe(json!({"groups": ["north"]})).await;
    assert_eq!(devices_of(&Value::Array(snap.unwrap())), ["out-1"]);

    // Unsubscribing the group stops it.
    ws.send(json!({"op": "unsubscribe", "ref": "u", "groups": ["north"]}))
        .await;
    loop {
        let v = ws.recv().await;
        if v["type"] == "unsubscribed" {
            break;
        }
    }
    assert!(env.location("out-1", 5_000, 51.0, 0.2).await);
    let (snap, _) = ws.subscribe(json!({"devices": ["in-1"]})).await;
    assert_eq!(snap.unwrap().len(), 1);
    assert!(env.location("in-1", 5_000, 51.0, 0.1).await);
    let frames = until_location(&mut ws, "in-1").await;
    assert_eq!(locations_of(&frames, "out-1").count(), 0, "{frames:?}");
    gw.stop().await;
}

/// The done-criterion of issue #16: a token whose groups exclude a device
/// that then joins one of them — the holder starts seeing it, live and
/// over HTTP, and stops when it leaves.
#[tokio::test]
async fn a_group_scoped_token_sees_a_device_that_joins_its_group() {
    let (env, gw) = Env::migrated_with_gateway().await;
    assert!(env.location("member", 1_000, 51.0, 0.1).await);
    assert!(env.location("joiner", 1_000, 51.0, 0.2).await);
    assert!(env.location("named", 1_000, 51.0, 0.3).await);
    let (s, _) = put_groups(&gw, "member", &admin(), r#"["north"]"#).await;
    assert_eq!(s, 200);
    let now = fieldcast_core::time::now_ms();
    for d in ["member", "joiner", "named"] {
        env.pg
            .execute(
                "INSERT INTO events (device_id, event_id, ts, kind, severity, data, received_at) \
                 VALUES ($1, 'e1', to_timestamp($2::float8 / 1000), 'panic', 'info', NULL, now())",
                &[&d, &((now - 60_000) as f64)],
            )
            .await
            .unwrap();
    }
    let north = token(json!({"groups": ["north"]}));
    // Union: `devices` or `groups`.
    let both = token(json!({"groups": ["north"], "devices": ["named"]}));

    let (_, v) = get_json(gw.addr, "/api/devices", &north).await;
    assert_eq!(devices_of(&v), ["member"]);
    let (_, v) = get_json(gw.addr, "/api/devices", &both).await;
    assert_eq!(devices_of(&v), ["member", "named"]);
    let (s, _) = get_json(gw.addr, "/api/devices/joiner", &north).await;
    assert_eq!(s, 404);
    let (s, _) = get_json(gw.addr, "/api/devices/joiner/track", &north).await;
    assert_eq!(s, 404);
    let events = |v: &Value| -> Vec<String> {
        let mut d: Vec<String> = v["events"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| e["device"].as_str().unwrap().to_owned())
            .collect();
        d.sort();
        d
    };
    let (s, v) = get_json(gw.addr, "/api/events", &north).await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(events(&v), ["member"]);
    let (_, v) = get_json(gw.addr, "/api/events", &both).await;
    assert_eq!(events(&v), ["member", "named"]);
    let (_, v) = get_json(gw.addr, "/api/events?device=joiner", &north).await;
    assert_eq!(events(&v), Vec::<String>::new());

    let mut ws = gw.ws(&north).await;
    let (snap, _) = ws.subscribe(json!({"fleet": true})).await;
    assert_eq!(devices_of(&Value::Array(snap.unwrap())), ["member"]);
    // An explicit device outside the scope is forbidden, as with `devices`.
    ws.send(json!({"op": "subscribe", "ref": "x", "devices": ["joiner"]}))
        .await;
    loop {
        let v = ws.recv().await;
        if v["ref"] == "x" {
            assert_eq!(v["code"], "forbidden", "{v}");
            break;
        }
    }
    assert!(env.location("joiner", 2_000, 51.0, 0.2).await);
    assert!(env.location("member", 2_000, 51.0, 0.1).await);
    let frames = until_location(&mut ws, "member").await;
    assert_eq!(locations_of(&frames, "joiner").count(), 0, "{frames:?}");

    // joiner joins north: the holder starts seeing it at once.
    let (s, _) = put_groups(&gw, "joiner", &admin(), r#"["north"]"#).await;
    assert_eq!(s, 200);
    let frames = until_groups(&mut ws, "joiner").await;
    assert_eq!(frames.last().unwrap()["groups"], json!(["north"]));
    assert!(env.location("joiner", 3_000, 51.0, 0.2).await);
    let frames = until_location(&mut ws, "joiner").await;
    assert_eq!(locations_of(&frames, "joiner").next().unwrap()["ts"], 3_000);
    let (s, v) = get_json(gw.addr, "/api/devices/joiner", &north).await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["groups"], json!(["north"]));
    let (s, _) = get_json(gw.addr, "/api/devices/joiner/track", &north).await;
    assert_eq!(s, 200);
    let (_, v) = get_json(gw.addr, "/api/events", &north).await;
    assert_eq!(events(&v), ["joiner", "member"]);

    // And a second gateway, which learns of the change from PostgreSQL's
    // NOTIFY, not from the write it served.
    let other = env.gateway().await;
    fieldcast_testkit::wait_until(WAIT, "the other gateway loads the groups", || {
        let north = north.clone();
        async move { get_json(other.addr, "/api/devices/joiner", &north).await.0 == 200 }
    })
    .await
    .unwrap();
    let mut remote = other.ws(&north).await;
    let (snap, _) = remote.subscribe(json!({"fleet": true})).await;
    assert_eq!(
        devices_of(&Value::Array(snap.unwrap())),
        ["joiner", "member"]
    );

    // It leaves again: out of scope everywhere.
    let (s, _) = put_groups(&gw, "joiner", &admin(), "[]").await;
    assert_eq!(s, 200);
    let frames = until_groups(&mut ws, "joiner").await;
    assert_eq!(frames.last().unwrap()["groups"], json!([]));
    let frames = until_groups(&mut remote, "joiner").await;
    assert_eq!(frames.last().unwrap()["groups"], json!([]));
    assert!(env.location("joiner", 4_000, 51.0, 0.2).await);
    assert!(env.location("member", 4_000, 51.0, 0.1).await);
    let frames = until_location(&mut ws, "member").await;
    assert_eq!(locations_of(&frames, "joiner").count(), 0, "{frames:?}");
    let frames = until_location(&mut remote, "member").await;
    assert_eq!(locations_of(&frames, "joiner").count(), 0, "{frames:?}");
    let (s, _) = get_json(gw.addr, "/api/devices/joiner", &north).await;
    assert_eq!(s, 404);
    other.stop().await;
    gw.stop().await;
}
