//! Operations: the binary's exit codes, health endpoints, metrics, and a
//! Redis outage (readiness, reconnect, fresh snapshot to every client).

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::process::Command;

use fieldcast_testkit::{wait_until, RedisServer};
use serde_json::{json, Value};
use support::*;

const BIN: &str = env!("CARGO_BIN_EXE_fieldcast-gateway");

/// Pins PROTOCOL.md §1: `--help` exits 0 listing the env names; a bad
/// configuration exits 2 with one stderr line naming the problem.
#[test]
fn binary_help_and_config_errors() {
    let out = Command::new(BIN).arg("--help").output().unwrap();
    assert_eq!(out.status.code(), Some(0));
    let help = String::from_utf8_lossy(&out.stdout);
    for name in [
        "FIELDCAST_LISTEN",
        "FIELDCAST_REDIS_URL",
        "FIELDCAST_REDIS_PREFIX",
        "FIELDCAST_DATABASE_URL",
        "FIELDCAST_JWT_SECRET",
    ] {
        assert!(help.contains(name), "--help lacks {name}");
    }
    let cases: [(&[&str], &str); 3] = [
        (&[], "FIELDCAST_JWT_SECRET"),
        (&["--auth", "none", "--listen", "nowhere"], "listen"),
        (&["--auth", "none", "--ws-ping-interval", "soon"], "ping"),
    ];
    for (args, needle) in cases {
        let out = Command::new(BIN)
            .args(args)
            .env_remove("FIELDCAST_JWT_SECRET")
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(2), "{args:?}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(err.trim_end().lines().count(), 1, "{args:?}: {err}");
        assert!(
            err.to_lowercase().contains(&needle.to_lowercase()),
            "{args:?}: {err}"
        );
    }
}

/// Pins: the binary stops on SIGTERM with status 0, closing its sockets
/// with 1001 at the end of its drain (short here).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn binary_stops_on_sigterm_with_status_0() {
    let env = Env::new().await;
    let port = fieldcast_testkit::free_port();
    let mut child = tokio::process::Command::new(BIN)
        .env("FIELDCAST_LISTEN", format!("127.0.0.1:{port}"))
        .env("FIELDCAST_REDIS_URL", &env.redis_url)
        .env("FIELDCAST_REDIS_PREFIX", &env.prefix)
        .env("FIELDCAST_DATABASE_URL", &env.db.url)
        .env("FIELDCAST_JWT_SECRET", SECRET)
        .env("FIELDCAST_DRAIN_GRACE", "1s")
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let addr: std::net::SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    wait_until(WAIT, "binary ready", || async move {
        tokio::net::TcpStream::connect(addr).await.is_ok()
            && http(addr, "GET", "/readyz", None, None).await.0 == 200
    })
    .await
    .unwrap();
    let mut ws = Ws::connect(&format!("ws://{addr}/ws?token={}", token(json!({})))).await;
    let pid = child.id().unwrap() as i32;
    Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status()
        .unwrap();
    let end = loop {
        match ws.try_recv().await {
            Ok(_) => {}
            Err(e) => break e,
        }
    };
    assert_eq!(end, Ended::Close(1001));
    let status = tokio::time::timeout(WAIT, child.wait())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(status.code(), Some(0));
}

/// Pins: `/`, `/healthz`, `/readyz`, `/metrics` need no token; the fixed
/// metric name is there.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ops_endpoints() {
    let env = Env::new().await;
    let gw = env.gateway().await;
    assert_eq!(http(gw.addr, "GET", "/healthz", None, None).await.0, 200);
    assert_eq!(http(gw.addr, "GET", "/readyz", None, None).await.0, 200);
    let (s, _, page) = http(gw.addr, "GET", "/", None, None).await;
    assert_eq!(s, 200);
    assert!(page.contains("<html"));
    let _ws = gw.ws(&token(json!({}))).await;
    wait_until(WAIT, "connections gauge", || async {
        gw.metric("fieldcast_gateway_connections").await >= 1.0
    })
    .await
    .unwrap();
    let (_, _, metrics) = http(gw.addr, "GET", "/metrics", None, None).await;
    assert!(metrics.contains("fieldcast_gateway_connections"));
    assert_eq!(http(gw.addr, "GET", "/nope", None, None).await.0, 404);
    // The description needs no token either, and is the repo's own file.
    let (s, _, spec) = http(gw.addr, "GET", "/api/openapi.json", None, None).await;
    assert_eq!(s, 200);
    let spec: Value = serde_json::from_str(&spec).unwrap();
    assert!(spec["openapi"].as_str().unwrap().starts_with("3."));
    assert!(spec["paths"]["/api/devices/{id}/track"]["get"].is_object());
    gw.stop().await;
}

/// Pins: with Redis gone the gateway stays up and turns not-ready; when it
/// returns, the feed resubscribes and every client gets a fresh snapshot
/// (and `cursor_expired`, this Redis having lost the event log), then live
/// updates again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_outage_resyncs_clients() {
    let mut redis = RedisServer::start().await.unwrap();
    let env = Env::with_redis(&redis.url).await;
    env.location("d1", 1_763_800_000_000, 1.0, 1.0).await;
    let gw = env.gateway().await;
    let mut ws = gw.ws(&token(json!({}))).await;
    let (snap, _) = ws.subscribe(json!({"fleet": true})).await;
    assert_eq!(snap.unwrap().len(), 1);

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
    // The restarted Redis is empty: the fresh snapshot says so.
    let v = ws.recv().await;
    assert_eq!(v["type"], "snapshot", "{v}");
    assert!(v.get("ref").is_none());
    assert_eq!(v["devices"], json!([]));
    // It lost the event log too: events may have been missed, so the
    // client is told to reload them (no replay from a cursor of the lost
    // log).
    let v = ws.recv().await;
    assert_eq!(
        (v["type"].as_str(), v["code"].as_str()),
        (Some("error"), Some("cursor_expired")),
        "{v}"
    );
    assert!(v.get("ref").is_none(), "{v}");

    let env2 = Env::with_redis(&redis.url).await;
    let feeder = Env {
        prefix: env.prefix.clone(),
        ..env2
    };
    feeder.location("d2", 1_763_800_000_001, 2.0, 2.0).await;
    // Each reconnect the feed sees brings one more fresh snapshot; d2
    // arrives live or, if written during one, inside the next snapshot.
    loop {
        let v = ws.recv().await;
        match v["type"].as_str() {
            Some("location") => {
                assert_eq!(v["device"], "d2");
                break;
            }
            Some("snapshot")
                if v["devices"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .any(|d| d["device"] == "d2") =>
            {
                break
            }
            Some("snapshot") => {}
            _ => panic!("unexpected {v}"),
        }
    }
    gw.stop().await;
}

/// Pins: with an Origin allow-list, `/ws` refuses other origins (403)
/// before the upgrade and accepts the listed one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn origin_allow_list() {
    use tokio_tungstenite::tungstenite::client::IntoClientRequest;
    let env = Env::new().await;
    let mut config = env.config();
    config.allowed_origins = vec!["https://dispatch.example".into()];
    let gw = Gateway::start(config).await;
    let t = token(json!({}));
    for (origin, ok) in [
        ("https://dispatch.example", true),
        ("https://evil.example", false),
    ] {
        let mut req = gw.ws_url(&t).into_client_request().unwrap();
        req.headers_mut().insert("origin", origin.parse().unwrap());
        match tokio_tungstenite::connect_async(req).await {
            Ok(_) => assert!(ok, "{origin} was let in"),
            Err(tokio_tungstenite::tungstenite::Error::Http(resp)) => {
                assert!(!ok, "{origin} was refused");
                assert_eq!(resp.status().as_u16(), 403);
            }
            Err(e) => panic!("{e}"),
        }
    }
    gw.stop().await;
}
