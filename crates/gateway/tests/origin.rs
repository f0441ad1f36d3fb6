//! The Origin rule (README "Safe defaults"): with `--auth none` only the
//! gateway's own origin may use `/ws` and `/api/*` from a browser, unless
//! `FIELDCAST_ALLOWED_ORIGINS` lists others; with tokens, any origin.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::net::SocketAddr;

use http_body_util::BodyExt;
use serde_json::json;
use support::*;
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;

/// The status of one request carrying `origin` (if any).
async fn status_with_origin(
    addr: SocketAddr,
    method: &str,
    path: &str,
    origin: Option<&str>,
    body: &str,
) -> u16 {
    let stream = TcpStream::connect(addr).await.unwrap();
    let io = hyper_util::rt::TokioIo::new(stream);
    let (mut sender, conn) = hyper::client::conn::http1::handshake(io).await.unwrap();
    tokio::spawn(conn);
    let mut req = hyper::Request::builder()
        .method(method)
        .uri(path)
        .header("host", addr.to_string())
        .header("content-type", "application/json");
    if let Some(o) = origin {
        req = req.header("origin", o);
    }
    let req = req
        .body(http_body_util::Full::new(bytes::Bytes::from(
            body.to_owned(),
        )))
        .unwrap();
    let resp = sender.send_request(req).await.unwrap();
    let status = resp.status().as_u16();
    let _ = resp.into_body().collect().await;
    status
}

async fn ws_status(gw: &Gateway, origin: Option<&str>) -> u16 {
    let mut req = gw.ws_url(&token(json!({}))).into_client_request().unwrap();
    if let Some(o) = origin {
        req.headers_mut().insert("origin", o.parse().unwrap());
    }
    match tokio_tungstenite::connect_async(req).await {
        Ok(_) => 101,
        Err(tokio_tungstenite::tungstenite::Error::Http(r)) => r.status().as_u16(),
        Err(e) => panic!("unexpected {e}"),
    }
}

/// Pins: an open gateway refuses other sites' pages on `/ws` and `/api/*`
/// (403), and accepts its own page and clients that send no Origin.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_open_gateway_serves_only_its_own_origin() {
    let env = Env::new().await;
    let open = || {
        let mut c = env.config();
        c.auth = fieldcast_gateway::config::AuthMode::None;
        c.jwt_secret = None;
        c
    };
    let gw = Gateway::start(open()).await;
    let own = format!("http://{}", gw.addr);
    let evil = Some("http://evil.example");
    assert_eq!(ws_status(&gw, evil).await, 403);
    assert_eq!(ws_status(&gw, Some("null")).await, 403);
    assert_eq!(ws_status(&gw, Some(&own)).await, 101);
    assert_eq!(ws_status(&gw, None).await, 101);
    let publish = r#"{"channel":"user:1","data":{}}"#;
    for (method, path, body) in [
        ("GET", "/api/devices", ""),
        ("GET", "/api/events", ""),
        ("POST", "/api/publish", publish),
    ] {
        assert_eq!(
            status_with_origin(gw.addr, method, path, evil, body).await,
            403,
            "{method} {path} from another origin"
        );
        let ok = status_with_origin(gw.addr, method, path, Some(&own), body).await;
        assert!(
            (200..300).contains(&ok),
            "{method} {path} from its own origin: {ok}"
        );
    }
    // The page itself and the operators' endpoints are not guarded.
    assert_eq!(status_with_origin(gw.addr, "GET", "/", evil, "").await, 200);
    assert_eq!(
        status_with_origin(gw.addr, "GET", "/healthz", evil, "").await,
        200
    );
    gw.stop().await;

    // An allow-list opens exactly those origins.
    let mut config = open();
    config.allowed_origins = vec!["https://dispatch.example".into()];
    let gw = Gateway::start(config).await;
    assert_eq!(ws_status(&gw, Some("https://dispatch.example")).await, 101);
    assert_eq!(ws_status(&gw, evil).await, 403);
    gw.stop().await;
}

/// Pins: with tokens and no allow-list, the token is the guard: any origin.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_tokens_any_origin_may_connect() {
    let env = Env::new().await;
    let gw = Gateway::start(env.config()).await;
    assert_eq!(ws_status(&gw, Some("http://elsewhere.example")).await, 101);
    gw.stop().await;
}
