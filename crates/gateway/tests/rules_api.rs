//! `/api/rules` against a real PostgreSQL migrated by the bridge's own
//! `schema::prepare` (issue #15, points 3 and 6): admin tokens only, reads
//! included; the stored canonical rule answered with its id and without
//! the webhook secret; every bad rule a 400 naming its field with nothing
//! stored; `config_version` bumped once per write.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use serde_json::{json, Value};
use support::*;

const JSON: &[(&str, &str)] = &[("content-type", "application/json")];

async fn send(gw: &Gateway, method: &str, path: &str, token: &str, body: &str) -> (u16, Value) {
    let (s, _, b) = request(gw.addr, method, path, Some(token), JSON, body).await;
    (s, serde_json::from_str(&b).unwrap_or(Value::Null))
}

/// Pins: non-admin tokens get 403 for every rule endpoint and store
/// nothing; an admin's POST answers 201 with the canonical rule, its id
/// and `Location`, the webhook without its secret (stored whole); GET
/// lists and reads it; DELETE soft-deletes (404 after, row kept); each
/// write bumps `config_version` once, a 404 write none.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crud_is_for_admins_and_never_answers_the_secret() {
    let (env, gw) = Env::migrated_with_gateway().await;
    let admin = token(json!({"admin": true}));
    let reader = token(json!({"publish": true}));
    let v0 = env.config_version().await;
    let rule = json!({"kind": "overspeed", "devices": ["truck-*"], "speed": 27.5, "for": "30s",
                      "webhook": {"url": "https://hooks.example/r", "secret": "rule-secret"}});

    for (method, path, body) in [
        ("POST", "/api/rules", rule.to_string()),
        ("GET", "/api/rules", String::new()),
        ("GET", "/api/rules/1", String::new()),
        ("DELETE", "/api/rules/1", String::new()),
    ] {
        let (s, v) = send(&gw, method, path, &reader, &body).await;
        assert_eq!(
            (s, &v["error"]["code"]),
            (403, &json!("forbidden")),
            "{method} {path}"
        );
    }
    assert_eq!(
        (env.rows("alert_rules").await, env.config_version().await),
        (0, v0)
    );

    let (s, headers, body) = request(
        gw.addr,
        "POST",
        "/api/rules",
        Some(&admin),
        JSON,
        &rule.to_string(),
    )
    .await;
    assert_eq!(s, 201, "{body}");
    assert!(!body.contains("rule-secret"), "{body}");
    let created: Value = serde_json::from_str(&body).unwrap();
    let id = created["id"].as_i64().unwrap();
    assert_eq!(headers["location"], format!("/api/rules/{id}").as_str());
    assert_eq!(
        created,
        json!({"id": id, "kind": "overspeed", "devices": ["truck-*"], "severity": "warning",
               "speed": 27.5, "for": "30s", "webhook": {"url": "https://hooks.example/r"}})
    );
    let stored: Value = env
        .pg
        .query_one("SELECT rule FROM alert_rules WHERE id = $1", &[&id])
        .await
        .unwrap()
        .get(0);
    assert_eq!(stored["webhook"]["secret"], "rule-secret");
    assert_eq!(stored["id"], id);
    assert_eq!(
        (env.rows("alert_rules").await, env.config_version().await),
        (1, v0 + 1)
    );

    let (s, _, body) = request(gw.addr, "GET", "/api/rules", Some(&admin), &[], "").await;
    assert_eq!(s, 200);
    assert!(!body.contains("rule-secret"), "{body}");
    assert_eq!(
        serde_json::from_str::<Value>(&body).unwrap(),
        json!([created])
    );
    let path = format!("/api/rules/{id}");
    let (s, one) = get_json(gw.addr, &path, &admin).await;
    assert_eq!((s, &one), (200, &created));

    let (s, _, body) = request(gw.addr, "DELETE", &path, Some(&admin), &[], "").await;
    assert_eq!((s, body.as_str()), (204, ""));
    assert_eq!(
        (env.rows("alert_rules").await, env.config_version().await),
        (1, v0 + 2)
    );
    let (s, _) = get_json(gw.addr, &path, &admin).await;
    assert_eq!(s, 404);
    let (_, all) = get_json(gw.addr, "/api/rules", &admin).await;
    assert_eq!(all, json!([]));
    for p in [path.as_str(), "/api/rules/777", "/api/rules/x"] {
        let (s, _, _) = request(gw.addr, "DELETE", p, Some(&admin), &[], "").await;
        assert_eq!(s, 404, "{p}");
    }
    assert_eq!(env.config_version().await, v0 + 2);
    gw.stop().await;
}

/// Pins (issue #15, point 6): a zero duration, an unknown field, a field of
/// another kind, a missing one, values out of range, malformed JSON: 400
/// with the error shape, the message naming the field; a non-JSON type 415;
/// nothing stored and no version bump.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_rules_are_400_and_store_nothing() {
    let (env, gw) = Env::migrated_with_gateway().await;
    let admin = token(json!({"admin": true}));
    let (n0, v0) = (env.rows("alert_rules").await, env.config_version().await);
    for (body, names) in [
        (
            json!({"kind": "overspeed", "speed": 20, "for": "0s"}).to_string(),
            "for ",
        ),
        (
            json!({"kind": "inactive", "after": "0ms"}).to_string(),
            "after ",
        ),
        (
            json!({"kind": "offline", "colour": "red"}).to_string(),
            "colour ",
        ),
        (
            json!({"kind": "low_battery", "battery": 10, "speed": 3}).to_string(),
            "speed ",
        ),
        (
            json!({"kind": "overspeed", "for": "30s"}).to_string(),
            "speed ",
        ),
        (json!({"speed": 3}).to_string(), "kind "),
        (json!({"kind": "teleport"}).to_string(), "kind "),
        (
            json!({"kind": "low_battery", "battery": 150}).to_string(),
            "battery ",
        ),
        (
            json!({"kind": "event", "event_kind": ""}).to_string(),
            "event_kind ",
        ),
        (
            json!({"kind": "offline", "devices": ["a b"]}).to_string(),
            "devices[0] ",
        ),
        (
            json!({"kind": "offline", "webhook": {"url": "https://x"}}).to_string(),
            "webhook.secret ",
        ),
        ("[1, 2]".to_owned(), "the rule "),
        ("{\"kind\": ".to_owned(), "not valid JSON"),
    ] {
        let (s, v) = send(&gw, "POST", "/api/rules", &admin, &body).await;
        assert_eq!(
            (s, &v["error"]["code"]),
            (400, &json!("bad_request")),
            "{body}: {v}"
        );
        let message = v["error"]["message"].as_str().unwrap();
        assert!(message.contains(names), "{body}: {message}");
    }
    let (s, _, body) = request(
        gw.addr,
        "POST",
        "/api/rules",
        Some(&admin),
        &[("content-type", "text/plain")],
        &json!({"kind": "offline"}).to_string(),
    )
    .await;
    assert_eq!(s, 415, "{body}");
    assert_eq!(
        (env.rows("alert_rules").await, env.config_version().await),
        (n0, v0)
    );
    gw.stop().await;
}
