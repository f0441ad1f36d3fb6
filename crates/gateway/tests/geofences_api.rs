//! `/api/geofences` against a real PostgreSQL migrated by the bridge's own
//! `schema::prepare` (issue #15, points 1 and 6): CRUD with admin and
//! non-admin tokens, every bad input a 400 (or 413/415) with nothing
//! stored, `config_version` bumped once per write and never for a write
//! that changes nothing, the webhook secret never answered, reading
//! following the token's device scope, and a 503 before the tables exist.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use serde_json::{json, Value};
use support::*;

const JSON: &[(&str, &str)] = &[("content-type", "application/json")];

fn admin() -> String {
    token(json!({"admin": true}))
}

fn reader() -> String {
    token(json!({}))
}

fn square(name: &str) -> Value {
    json!({"type": "Feature",
           "geometry": {"type": "Polygon",
                        "coordinates": [[[2.0, 48.0], [2.1, 48.0], [2.1, 48.1], [2.0, 48.1], [2.0, 48.0]]]},
           "properties": {"name": name}})
}

fn circle(name: &str, groups: Option<Value>) -> Value {
    let mut props = json!({"name": name, "radius": 250});
    if let Some(g) = groups {
        props["groups"] = g;
    }
    json!({"type": "Feature", "geometry": {"type": "Point", "coordinates": [2.35, 48.85]},
           "properties": props})
}

async fn stored(env: &Env, id: i64) -> Value {
    env.pg
        .query_one("SELECT feature FROM geofences WHERE id = $1", &[&id])
        .await
        .unwrap()
        .get(0)
}

async fn send(gw: &Gateway, method: &str, path: &str, token: &str, body: &Value) -> (u16, Value) {
    let (s, _, b) = request(gw.addr, method, path, Some(token), JSON, &body.to_string()).await;
    (s, serde_json::from_str(&b).unwrap_or(Value::Null))
}

#[track_caller]
fn assert_error(status: u16, v: &Value, want: u16, code: &str) {
    assert_eq!(status, want, "{v}");
    assert_eq!(v["error"]["code"], code, "{v}");
    assert!(v["error"]["message"].is_string(), "{v}");
}

/// Pins: only admin tokens write (403, nothing stored, no version bump);
/// any token reads; POST answers 201 with the stored canonical Feature and
/// its id; PUT replaces; DELETE is a soft delete (row kept, 404 after);
/// each write bumps `config_version` exactly once, and a write to an
/// unknown or deleted fence (404) bumps nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crud_with_admin_and_reader_tokens() {
    let (env, gw) = Env::migrated_with_gateway().await;
    let (admin, reader) = (admin(), reader());
    let v0 = env.config_version().await;

    let (s, v) = send(&gw, "POST", "/api/geofences", &reader, &square("Depot")).await;
    assert_error(s, &v, 403, "forbidden");
    let (s, _, _) = request(
        gw.addr,
        "POST",
        "/api/geofences",
        None,
        JSON,
        &square("x").to_string(),
    )
    .await;
    assert_eq!(s, 401);
    assert_eq!(
        (env.rows("geofences").await, env.config_version().await),
        (0, v0)
    );

    let (s, headers, body) = request(
        gw.addr,
        "POST",
        "/api/geofences",
        Some(&admin),
        JSON,
        &square(" Depot ").to_string(),
    )
    .await;
    assert_eq!(s, 201, "{body}");
    let created: Value = serde_json::from_str(&body).unwrap();
    let id = created["id"].as_i64().unwrap();
    assert_eq!(headers["location"], format!("/api/geofences/{id}").as_str());
    assert_eq!(headers["content-type"], "application/geo+json");
    assert_eq!(created["type"], "Feature");
    assert_eq!(created["properties"]["name"], "Depot");
    assert_eq!(created["properties"]["severity"], "info");
    assert_eq!(
        stored(&env, id).await,
        created,
        "the answer is what is stored"
    );
    assert_eq!(
        (env.rows("geofences").await, env.config_version().await),
        (1, v0 + 1)
    );

    let (s, all) = get_json(gw.addr, "/api/geofences", &reader).await;
    assert_eq!(s, 200);
    assert_eq!(
        all,
        json!({"type": "FeatureCollection", "features": [created]})
    );
    let (s, one) = get_json(gw.addr, &format!("/api/geofences/{id}"), &reader).await;
    assert_eq!((s, &one), (200, &created));

    let path = format!("/api/geofences/{id}");
    let (s, v) = send(&gw, "PUT", &path, &reader, &circle("Yard", None)).await;
    assert_error(s, &v, 403, "forbidden");
    let (s, _, body) = request(gw.addr, "DELETE", &path, Some(&reader), &[], "").await;
    assert_error(s, &serde_json::from_str(&body).unwrap(), 403, "forbidden");
    assert_eq!(stored(&env, id).await, created);
    assert_eq!(env.config_version().await, v0 + 1);

    // The id in a PUT body is the path's, whatever the body says.
    let mut yard = circle("Yard", Some(json!(["vans"])));
    yard["id"] = json!(999);
    let (s, replaced) = send(&gw, "PUT", &path, &admin, &yard).await;
    assert_eq!(s, 200, "{replaced}");
    assert_eq!(replaced["id"], id);
    assert_eq!(replaced["geometry"]["type"], "Point");
    assert_eq!(replaced["properties"]["radius"], 250.0);
    assert_eq!(stored(&env, id).await, replaced);
    assert_eq!(
        (env.rows("geofences").await, env.config_version().await),
        (1, v0 + 2)
    );

    let (s, _, body) = request(gw.addr, "DELETE", &path, Some(&admin), &[], "").await;
    assert_eq!((s, body.as_str()), (204, ""));
    assert_eq!(
        (env.rows("geofences").await, env.config_version().await),
        (1, v0 + 3)
    );
    let deleted: bool = env
        .pg
        .query_one(
            "SELECT deleted_at IS NOT NULL FROM geofences WHERE id = $1",
            &[&id],
        )
        .await
        .unwrap()
        .get(0);
    assert!(deleted, "soft delete keeps the row");
    let (s, v) = get_json(gw.addr, &path, &reader).await;
    assert_error(s, &v, 404, "not_found");
    let (_, all) = get_json(gw.addr, "/api/geofences", &admin).await;
    assert_eq!(all["features"], json!([]));

    // Writes to a deleted or unknown fence: 404, and no version bump.
    let (s, v) = send(&gw, "PUT", &path, &admin, &square("again")).await;
    assert_error(s, &v, 404, "not_found");
    for p in [path.as_str(), "/api/geofences/424242", "/api/geofences/abc"] {
        let (s, _, body) = request(gw.addr, "DELETE", p, Some(&admin), &[], "").await;
        assert_eq!(s, 404, "{p}: {body}");
    }
    let (s, v) = get_json(gw.addr, "/api/geofences/abc", &reader).await;
    assert_error(s, &v, 404, "not_found");
    assert_eq!(env.config_version().await, v0 + 3);
    gw.stop().await;
}

/// A polygon ring of `n` positions (closed) around (2, 48).
fn ring(n: usize) -> Value {
    let mut pts: Vec<Value> = (0..n - 1)
        .map(|i| {
            let a = i as f64 / (n - 1) as f64 * std::f64::consts::TAU;
            json!([2.0 + 0.1 * a.cos(), 48.0 + 0.1 * a.sin()])
        })
        .collect();
    pts.push(pts[0].clone());
    Value::Array(pts)
}

fn polygon(rings: Value) -> Value {
    json!({"type": "Feature", "geometry": {"type": "Polygon", "coordinates": rings},
           "properties": {"name": "p"}})
}

/// Pins (issue #15, point 6): invalid geometry (self-intersecting,
/// unclosed, out of range, too many vertices), unknown fields, a bad
/// webhook, malformed JSON: 400 with the error shape and a message naming
/// the field; a body over 1 MiB 413, a non-JSON type 415; nothing stored,
/// no version bump, on POST and on PUT alike. The limit's edge (10 000
/// vertices) is accepted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_is_refused_and_nothing_is_stored() {
    let (env, gw) = Env::migrated_with_gateway().await;
    let admin = admin();
    let (s, kept) = send(&gw, "POST", "/api/geofences", &admin, &square("kept")).await;
    assert_eq!(s, 201, "{kept}");
    let id = kept["id"].as_i64().unwrap();
    let (n0, v0) = (env.rows("geofences").await, env.config_version().await);

    let bowtie = json!([[[0, 0], [1, 1], [1, 0], [0, 1], [0, 0]]]);
    let unclosed = json!([[[0, 0], [1, 0], [1, 1], [0, 1]]]);
    let out_of_range = json!([[[0, 0], [1, 0], [1, 91], [0, 0]]]);
    let mut unknown = square("u");
    unknown["properties"]["colour"] = json!("red");
    let mut zero_radius = circle("c", None);
    zero_radius["properties"]["radius"] = json!(0);
    let mut bad_hook = square("h");
    bad_hook["properties"]["webhook"] = json!({"url": "ftp://x", "secret": "s"});
    let cases: Vec<(&str, String, &str)> = vec![
        (
            "self-intersecting",
            polygon(bowtie).to_string(),
            "geometry.coordinates[0]",
        ),
        (
            "unclosed",
            polygon(unclosed).to_string(),
            "geometry.coordinates[0]",
        ),
        (
            "out of range",
            polygon(out_of_range).to_string(),
            "geometry.coordinates[0][2]",
        ),
        (
            "too many vertices",
            polygon(json!([ring(10_001)])).to_string(),
            "geometry.coordinates",
        ),
        ("unknown field", unknown.to_string(), "properties.colour"),
        ("zero radius", zero_radius.to_string(), "properties.radius"),
        (
            "bad webhook",
            bad_hook.to_string(),
            "properties.webhook.url",
        ),
        ("not a feature", json!({"type": "Point"}).to_string(), ""),
        (
            "malformed JSON",
            "{\"type\": \"Feature\",".to_owned(),
            "not valid JSON",
        ),
        ("not JSON at all", "hello".to_owned(), "not valid JSON"),
    ];
    let put = format!("/api/geofences/{id}");
    for (what, body, names) in &cases {
        for (method, path) in [("POST", "/api/geofences"), ("PUT", put.as_str())] {
            let (s, _, resp) = request(gw.addr, method, path, Some(&admin), JSON, body).await;
            let v: Value = serde_json::from_str(&resp).unwrap();
            assert_error(s, &v, 400, "bad_request");
            let message = v["error"]["message"].as_str().unwrap();
            assert!(message.contains(names), "{what} ({method}): {message}");
        }
    }
    // 1 MiB and a bit: refused by its declared length, before parsing.
    let big = format!(
        "{{\"type\":\"Feature\",\"properties\":{{\"name\":\"{}\"}}}}",
        "x".repeat(1 << 20)
    );
    let (s, _, resp) = request(gw.addr, "POST", "/api/geofences", Some(&admin), JSON, &big).await;
    assert_error(
        s,
        &serde_json::from_str(&resp).unwrap(),
        413,
        "payload_too_large",
    );
    let (s, _, resp) = request(
        gw.addr,
        "POST",
        "/api/geofences",
        Some(&admin),
        &[("content-type", "text/plain")],
        &square("t").to_string(),
    )
    .await;
    assert_error(
        s,
        &serde_json::from_str(&resp).unwrap(),
        415,
        "unsupported_media_type",
    );
    assert_eq!(
        (env.rows("geofences").await, env.config_version().await),
        (n0, v0)
    );
    assert_eq!(
        stored(&env, id).await,
        kept,
        "a refused PUT changes nothing"
    );

    // The edge of the limit fits the body limit and is stored, as
    // application/geo+json too.
    let (s, _, resp) = request(
        gw.addr,
        "POST",
        "/api/geofences",
        Some(&admin),
        &[("content-type", "application/geo+json")],
        &polygon(json!([ring(10_000)])).to_string(),
    )
    .await;
    assert_eq!(s, 201, "{resp}");
    assert_eq!(
        (env.rows("geofences").await, env.config_version().await),
        (n0 + 1, v0 + 1)
    );
    gw.stop().await;
}

/// Pins: a fence's webhook is stored whole (the bridge signs with the
/// secret) and no answer carries the secret: admins see the URL, other
/// tokens no webhook at all. A PUT of what GET answered (no secret, same
/// URL) keeps the stored secret; a new URL without a secret is a 400.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_webhook_secret_is_never_answered() {
    let (env, gw) = Env::migrated_with_gateway().await;
    let (admin, reader) = (admin(), reader());
    const SECRET_TEXT: &str = "very-secret-hmac-key";
    let mut hooked = square("Hooked");
    hooked["properties"]["webhook"] =
        json!({"url": "https://hooks.example/fence?k=1", "secret": SECRET_TEXT});
    let (s, _, body) = request(
        gw.addr,
        "POST",
        "/api/geofences",
        Some(&admin),
        JSON,
        &hooked.to_string(),
    )
    .await;
    assert_eq!(s, 201, "{body}");
    assert!(!body.contains(SECRET_TEXT), "{body}");
    let created: Value = serde_json::from_str(&body).unwrap();
    let id = created["id"].as_i64().unwrap();
    assert_eq!(
        created["properties"]["webhook"],
        json!({"url": "https://hooks.example/fence?k=1"})
    );
    assert_eq!(
        stored(&env, id).await["properties"]["webhook"]["secret"],
        SECRET_TEXT
    );

    let path = format!("/api/geofences/{id}");
    for (token, path) in [
        (&admin, "/api/geofences"),
        (&admin, path.as_str()),
        (&reader, "/api/geofences"),
        (&reader, path.as_str()),
    ] {
        let (s, _, body) = request(gw.addr, "GET", path, Some(token), &[], "").await;
        assert_eq!(s, 200, "{body}");
        assert!(!body.contains(SECRET_TEXT), "{path}: {body}");
        assert_eq!(
            body.contains("hooks.example"),
            token == &admin,
            "only admins see the URL: {body}"
        );
    }

    // GET, edit, PUT back: the secret stays.
    let (_, mut edited) = get_json(gw.addr, &path, &admin).await;
    edited["properties"]["name"] = json!("Renamed");
    let (s, _, body) = request(
        gw.addr,
        "PUT",
        &path,
        Some(&admin),
        JSON,
        &edited.to_string(),
    )
    .await;
    assert_eq!(s, 200, "{body}");
    assert!(!body.contains(SECRET_TEXT), "{body}");
    let now = stored(&env, id).await;
    assert_eq!(now["properties"]["name"], "Renamed");
    assert_eq!(now["properties"]["webhook"]["secret"], SECRET_TEXT);

    edited["properties"]["webhook"] = json!({"url": "https://elsewhere.example/"});
    let (s, v) = send(&gw, "PUT", &path, &admin, &edited).await;
    assert_error(s, &v, 400, "bad_request");
    assert!(
        v["error"]["message"]
            .as_str()
            .unwrap()
            .starts_with("properties.webhook.secret"),
        "{v}"
    );
    assert_eq!(stored(&env, id).await, now);
    gw.stop().await;
}

/// Pins the reading scope (README): a fence naming no group is seen by
/// every token; one with groups by tokens without a device restriction,
/// and by restricted ones when a device of one of its groups
/// (`device_groups`) is in their scope; admins see every fence. A fence
/// out of sight is a 404, like an unknown one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reading_follows_the_device_scope() {
    let (env, gw) = Env::migrated_with_gateway().await;
    env.pg
        .batch_execute(
            "INSERT INTO device_groups (device_id, group_name) VALUES \
             ('truck-1', 'north'), ('van-1', 'south'), ('van-x', 'south'), ('van_x', 'wild')",
        )
        .await
        .unwrap();
    let admin = admin();
    let mut ids = std::collections::BTreeMap::new();
    for (name, groups) in [
        ("all", None),
        ("north", Some(json!(["north"]))),
        ("south", Some(json!(["south", "east"]))),
        ("nobody", Some(json!(["empty"]))),
        ("wild", Some(json!(["wild"]))),
    ] {
        let (s, v) = send(&gw, "POST", "/api/geofences", &admin, &circle(name, groups)).await;
        assert_eq!(s, 201, "{v}");
        ids.insert(name, v["id"].as_i64().unwrap());
    }
    let names = |v: &Value| -> Vec<String> {
        v["features"]
            .as_array()
            .unwrap()
            .iter()
            .map(|f| f["properties"]["name"].as_str().unwrap().to_owned())
            .collect()
    };
    for (claims, want) in [
        (json!({}), vec!["all", "north", "south", "nobody", "wild"]),
        (json!({"devices": ["truck-*"]}), vec!["all", "north"]),
        (json!({"devices": ["van-?"]}), vec!["all", "south"]),
        // `_` is a LIKE wildcard: unescaped, `van_x` would also match
        // `van-x` (south).
        (json!({"devices": ["van_x"]}), vec!["all", "wild"]),
        (json!({"devices": []}), vec!["all"]),
        (
            json!({"devices": ["truck-*"], "admin": true}),
            vec!["all", "north", "south", "nobody", "wild"],
        ),
    ] {
        let t = token(claims.clone());
        let (s, v) = get_json(gw.addr, "/api/geofences", &t).await;
        assert_eq!(s, 200, "{v}");
        assert_eq!(names(&v), want, "{claims}");
        for (name, id) in &ids {
            let (s, _) = get_json(gw.addr, &format!("/api/geofences/{id}"), &t).await;
            let visible = want.contains(name);
            assert_eq!(s, if visible { 200 } else { 404 }, "{claims} {name}");
        }
    }
    gw.stop().await;
}

/// Pins: a database no bridge has migrated (no 0002 tables) gets 503
/// `unavailable` saying what to do, for reads and writes, not a 500.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn missing_tables_are_503_with_a_clear_message() {
    let env = Env::new().await; // 0001 only, as the other gateway tests
    let gw = env.gateway().await;
    let admin = admin();
    for (method, path, body) in [
        ("GET", "/api/geofences", None),
        ("GET", "/api/geofences/1", None),
        ("POST", "/api/geofences", Some(square("x"))),
        ("DELETE", "/api/geofences/1", None),
        ("GET", "/api/rules", None),
        ("POST", "/api/rules", Some(json!({"kind": "offline"}))),
    ] {
        let body = body.map(|b| b.to_string()).unwrap_or_default();
        let (s, _, resp) = request(gw.addr, method, path, Some(&admin), JSON, &body).await;
        let v: Value = serde_json::from_str(&resp).unwrap();
        assert_error(s, &v, 503, "unavailable");
        assert!(
            v["error"]["message"]
                .as_str()
                .unwrap()
                .contains("migrations"),
            "{method} {path}: {v}"
        );
    }
    gw.stop().await;
}
