//! Shared test support: a gateway on port 0 against the shared Redis and a
//! fresh PostgreSQL database, a Redis feeder that writes exactly what
//! docs/redis-layout.md says the bridge writes (events through the bridge's
//! own `event.lua`), a WebSocket client, a tiny HTTP client and token
//! minting.

#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::net::SocketAddr;
use std::time::Duration;

use fieldcast_gateway::{AuthMode, Config};
use fieldcast_testkit::{shared_redis_url, unique, wait_until, PgDb};
use fred::prelude::*;
use futures::{SinkExt, StreamExt};
use http_body_util::BodyExt;
use serde_json::{json, Value};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message as WsMessage;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};
use tokio_util::sync::CancellationToken;

pub const SECRET: &str = "test-secret-0123456789";
pub const WAIT: Duration = Duration::from_secs(15);

/// One test's private world: key prefix, database, Redis feeder.
pub struct Env {
    pub prefix: String,
    pub redis_url: String,
    pub db: PgDb,
    pub redis: Client,
    pub pg: tokio_postgres::Client,
    /// The keys under `prefix` go when the test ends (shared Redis only).
    pub prefix_guard: Option<fieldcast_testkit::PrefixGuard>,
}

impl Env {
    pub async fn new() -> Env {
        Self::with_redis(&shared_redis_url()).await
    }

    pub async fn with_redis(redis_url: &str) -> Env {
        fieldcast_testkit::init_tracing();
        let prefix = format!("{}:", unique("gw"));
        let db = PgDb::create().await.unwrap();
        let pg = db.client().await.unwrap();
        pg.batch_execute(include_str!("../../../../migrations/0001_history.sql"))
            .await
            .unwrap();
        pg.batch_execute(
            "CREATE TABLE IF NOT EXISTS locations_default PARTITION OF locations DEFAULT",
        )
        .await
        .unwrap();
        let redis = redis_client(redis_url).await;
        Env {
            prefix_guard: (redis_url == shared_redis_url())
                .then(|| fieldcast_testkit::PrefixGuard::new(redis_url, &prefix)),
            prefix,
            redis_url: redis_url.to_owned(),
            db,
            redis,
            pg,
        }
    }

    /// Applies every migration through the bridge's own `schema::prepare`
    /// (0002 included: geofences, rules, device groups), as a bridge at
    /// start would.
    pub async fn migrate(&self) {
        let mut c = self.db.client().await.unwrap();
        fieldcast_bridge::store::schema::prepare(&mut c, Duration::from_secs(90 * 86_400))
            .await
            .unwrap();
    }

    /// A private database with every migration, and a gateway on it.
    pub async fn migrated_with_gateway() -> (Env, Gateway) {
        let env = Env::new().await;
        env.migrate().await;
        let gw = env.gateway().await;
        (env, gw)
    }

    /// `config_version`: bumped once by every configuration write.
    pub async fn config_version(&self) -> i64 {
        self.pg
            .query_one("SELECT version FROM config_version", &[])
            .await
            .unwrap()
            .get(0)
    }

    /// Rows of `table`, deleted ones included.
    pub async fn rows(&self, table: &str) -> i64 {
        self.pg
            .query_one(&format!("SELECT count(*) FROM {table}"), &[])
            .await
            .unwrap()
            .get(0)
    }

    pub fn config(&self) -> Config {
        let mut c = Config::for_tests(&self.redis_url, &self.prefix, &self.db.url);
        c.auth = AuthMode::Jwt;
        c.jwt_secret = Some(SECRET.into());
        c
    }

    pub async fn gateway(&self) -> Gateway {
        Gateway::start(self.config()).await
    }

    /// The Redis layout the gateway reads (default partition count).
    pub fn keys(&self) -> fieldcast_core::Keys {
        fieldcast_core::Keys::new(
            &self.prefix,
            fieldcast_core::Partitions::default(),
            fieldcast_core::Topology::of_url(&self.redis_url),
        )
    }

    /// A location as the bridge writes it: hash forward-only, devices set,
    /// geo index, one SPUBLISH on the partition's live channel when the
    /// state moved.
    pub async fn location(&self, device: &str, ts: i64, lat: f64, lon: f64) -> bool {
        let msg =
            json!({"type":"location","device":device,"ts":ts,"lat":lat,"lon":lon}).to_string();
        let n: i64 = self
            .redis
            .eval(
                LOCATION_LUA,
                {
                    let keys = self.keys();
                    let (_, k) = keys.of(device);
                    vec![
                        k.device(device),
                        k.devices.clone(),
                        k.geo.clone(),
                        k.live.clone(),
                    ]
                },
                vec![
                    device.to_owned(),
                    ts.to_string(),
                    format!("{lat}"),
                    format!("{lon}"),
                    msg,
                ],
            )
            .await
            .unwrap();
        n == 1
    }

    pub async fn status(&self, device: &str, ts: i64, online: bool) -> bool {
        let msg = json!({"type":"status","device":device,"ts":ts,"online":online}).to_string();
        let n: i64 = self
            .redis
            .eval(
                STATUS_LUA,
                {
                    let keys = self.keys();
                    let (_, k) = keys.of(device);
                    vec![k.device(device), k.devices.clone(), k.live.clone()]
                },
                vec![
                    device.to_owned(),
                    ts.to_string(),
                    if online { "1" } else { "0" }.to_owned(),
                    msg,
                ],
            )
            .await
            .unwrap();
        n == 1
    }

    /// An event, through the bridge's own script, `event.lua`, in the
    /// device's partition: `last_seen`, the dedup key, XADD to the
    /// partition's event log (starting a new life of the log, with a new
    /// epoch, when it has none), SPUBLISH with its `<epoch>:<id>`
    /// position. Returns whether it was logged (not a duplicate).
    pub async fn event(&self, device: &str, id: &str, ts: i64, data: Value) -> bool {
        let msg = json!({"type":"event","device":device,"id":id,"ts":ts,"kind":"panic","severity":"critical","data":data})
            .to_string();
        let keys = self.keys();
        let (_, k) = keys.of(device);
        let n: i64 = self
            .redis
            .eval(
                EVENT_LUA,
                vec![
                    k.device(device),
                    k.devices.clone(),
                    k.event_seen(device, id),
                    k.events.clone(),
                    k.epoch.clone(),
                    k.transitions.clone(),
                ],
                vec![
                    device.to_owned(),
                    msg,
                    "0".to_owned(),
                    k.live.clone(),
                    "100000".to_owned(),
                    "86400".to_owned(),
                    format!("{:016x}", rand::random::<u64>()),
                    ts.to_string(),
                    // No alert rules, the event's id and kind, not derived.
                    String::new(),
                    id.to_owned(),
                    "panic".to_owned(),
                    "0".to_owned(),
                ],
            )
            .await
            .unwrap();
        n == 1
    }

    /// A new feeder connection, for after a private Redis restarted (the
    /// feeder's client does not reconnect by itself).
    pub async fn reconnect_redis(&mut self) {
        self.redis = redis_client(&self.redis_url).await;
    }

    pub async fn raw_publish(&self, channel: &str, payload: &str) {
        let _: i64 = self.redis.publish(channel, payload).await.unwrap();
    }
}

pub async fn redis_client(url: &str) -> Client {
    let config = fred::types::config::Config::from_url(url).unwrap();
    let c = Builder::from_config(config).build().unwrap();
    c.init().await.unwrap();
    c
}

const LOCATION_LUA: &str = r#"
local ts = tonumber(ARGV[2])
local cur = tonumber(redis.call('HGET', KEYS[1], 'ts') or '-1')
if ts <= cur then return 0 end
redis.call('HSET', KEYS[1], 'ts', ARGV[2], 'loc', ARGV[3] .. ',' .. ARGV[4] .. ',,,,')
local seen = tonumber(redis.call('HGET', KEYS[1], 'last_seen') or '-1')
if ts > seen then redis.call('HSET', KEYS[1], 'last_seen', ARGV[2]) end
redis.call('SADD', KEYS[2], ARGV[1])
local lat = tonumber(ARGV[3])
if lat > 85.05112878 then lat = 85.05112878 end
if lat < -85.05112878 then lat = -85.05112878 end
redis.call('GEOADD', KEYS[3], ARGV[4], lat, ARGV[1])
redis.call('SPUBLISH', KEYS[4], '{"rx":' .. ARGV[2] .. ',"msg":' .. ARGV[5] .. '}')
return 1
"#;

const STATUS_LUA: &str = r#"
local ts = tonumber(ARGV[2])
local cur = tonumber(redis.call('HGET', KEYS[1], 'sts') or '-1')
if ts <= cur then return 0 end
redis.call('HSET', KEYS[1], 'sts', ARGV[2], 'online', ARGV[3])
local seen = tonumber(redis.call('HGET', KEYS[1], 'last_seen') or '-1')
if ts > seen then redis.call('HSET', KEYS[1], 'last_seen', ARGV[2]) end
redis.call('SADD', KEYS[2], ARGV[1])
redis.call('SPUBLISH', KEYS[3], '{"rx":' .. ARGV[2] .. ',"msg":' .. ARGV[4] .. '}')
return 1
"#;

/// The bridge's script itself, so the feeder and the bridge cannot drift
/// apart on the event log's epoch rule.
const EVENT_LUA: &str = include_str!("../../../bridge/src/store/lua/event.lua");

/// A gateway running `serve` on a port-0 listener.
pub struct Gateway {
    pub addr: SocketAddr,
    pub shutdown: CancellationToken,
    pub task: tokio::task::JoinHandle<anyhow::Result<()>>,
}

impl Gateway {
    pub async fn start(config: Config) -> Gateway {
        Self::start_unready(config).await.ready().await
    }

    pub async fn start_unready(config: Config) -> Gateway {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let shutdown = CancellationToken::new();
        let task = tokio::spawn(fieldcast_gateway::serve(config, listener, shutdown.clone()));
        Gateway {
            addr,
            shutdown,
            task,
        }
    }

    pub async fn ready(self) -> Self {
        let addr = self.addr;
        wait_until(WAIT, "gateway ready", || async move {
            http(addr, "GET", "/readyz", None, None).await.0 == 200
        })
        .await
        .unwrap();
        self
    }

    pub fn ws_url(&self, token: &str) -> String {
        format!("ws://{}/ws?token={token}", self.addr)
    }

    pub async fn ws(&self, token: &str) -> Ws {
        Ws::connect(&self.ws_url(token)).await
    }

    pub async fn stop(self) {
        self.shutdown.cancel();
        self.task.await.unwrap().unwrap();
    }

    pub async fn metric(&self, name: &str) -> f64 {
        let (_, _, body) = http(self.addr, "GET", "/metrics", None, None).await;
        body.lines()
            .filter(|l| l.starts_with(name) && !l.starts_with('#'))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum()
    }
}

/// A token for `SECRET` with these extra claims, valid for an hour.
pub fn token(extra: Value) -> String {
    token_with(SECRET, extra, 3600)
}

pub fn token_with(secret: &str, extra: Value, valid_for_secs: i64) -> String {
    let now = chrono::Utc::now().timestamp();
    let mut claims = json!({"sub": "tester", "exp": now + valid_for_secs});
    if let (Some(c), Some(e)) = (claims.as_object_mut(), extra.as_object()) {
        for (k, v) in e {
            c.insert(k.clone(), v.clone());
        }
    }
    jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
        &claims,
        &jsonwebtoken::EncodingKey::from_secret(secret.as_bytes()).unwrap(),
    )
    .unwrap()
}

/// `{"alg":"none"}` with no signature.
pub fn token_alg_none() -> String {
    let now = chrono::Utc::now().timestamp();
    let h = b64url(br#"{"alg":"none","typ":"JWT"}"#);
    let c = b64url(json!({"sub":"x","exp": now + 3600}).to_string().as_bytes());
    format!("{h}.{c}.")
}

fn b64url(data: &[u8]) -> String {
    const A: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let mut out = String::new();
    for chunk in data.chunks(3) {
        let b = [
            chunk[0],
            *chunk.get(1).unwrap_or(&0),
            *chunk.get(2).unwrap_or(&0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..=chunk.len() {
            out.push(A[((n >> (18 - 6 * i)) & 63) as usize] as char);
        }
    }
    out
}

/// A minimal HTTP/1.1 client: `(status, content-type/extra header, body)`.
pub async fn http(
    addr: SocketAddr,
    method: &str,
    path: &str,
    token: Option<&str>,
    body: Option<&str>,
) -> (u16, String, String) {
    let stream = TcpStream::connect(addr).await.unwrap();
    let io = hyper_util::rt::TokioIo::new(stream);
    let (mut sender, conn) = hyper::client::conn::http1::handshake(io).await.unwrap();
    tokio::spawn(conn);
    let mut req = hyper::Request::builder()
        .method(method)
        .uri(path)
        .header("host", addr.to_string());
    if let Some(t) = token {
        req = req.header("authorization", format!("Bearer {t}"));
    }
    if body.is_some() {
        // /api/publish takes JSON only (415 otherwise).
        req = req.header("content-type", "application/json");
    }
    let req = req
        .body(http_body_util::Full::new(bytes::Bytes::from(
            body.unwrap_or("").to_owned(),
        )))
        .unwrap();
    let resp = sender.send_request(req).await.unwrap();
    let status = resp.status().as_u16();
    let next = resp
        .headers()
        .get("fieldcast-next")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_owned();
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    (status, next, String::from_utf8(body.to_vec()).unwrap())
}

/// Any request with these headers and body: `(status, headers, body)`.
pub async fn request(
    addr: SocketAddr,
    method: &str,
    path: &str,
    token: Option<&str>,
    headers: &[(&str, &str)],
    body: &str,
) -> (u16, hyper::HeaderMap, String) {
    let stream = TcpStream::connect(addr).await.unwrap();
    let io = hyper_util::rt::TokioIo::new(stream);
    let (mut sender, conn) = hyper::client::conn::http1::handshake(io).await.unwrap();
    tokio::spawn(conn);
    let mut req = hyper::Request::builder()
        .method(method)
        .uri(path)
        .header("host", addr.to_string());
    if let Some(t) = token {
        req = req.header("authorization", format!("Bearer {t}"));
    }
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let req = req
        .body(http_body_util::Full::new(bytes::Bytes::from(
            body.to_owned(),
        )))
        .unwrap();
    let resp = tokio::time::timeout(WAIT, sender.send_request(req))
        .await
        .expect("no answer in time")
        .unwrap();
    let status = resp.status().as_u16();
    let headers = resp.headers().clone();
    let body = tokio::time::timeout(WAIT, resp.into_body().collect())
        .await
        .expect("body not complete in time")
        .unwrap()
        .to_bytes();
    (status, headers, String::from_utf8(body.to_vec()).unwrap())
}

pub async fn get_json(addr: SocketAddr, path: &str, token: &str) -> (u16, Value) {
    let (status, _, body) = http(addr, "GET", path, Some(token), None).await;
    (status, serde_json::from_str(&body).unwrap_or(Value::Null))
}

/// A WebSocket client speaking §4.
pub struct Ws {
    pub stream: WebSocketStream<MaybeTlsStream<TcpStream>>,
}

/// How a socket ended.
#[derive(Debug, PartialEq)]
pub enum Ended {
    Close(u16),
    Dropped,
}

impl Ws {
    pub async fn connect(url: &str) -> Ws {
        let (stream, _) = tokio_tungstenite::connect_async(url).await.unwrap();
        Ws { stream }
    }

    pub async fn send(&mut self, v: Value) {
        self.stream
            .send(WsMessage::Text(v.to_string().into()))
            .await
            .unwrap();
    }

    /// The next JSON frame, or `None` if the socket ended.
    pub async fn try_recv(&mut self) -> Result<Value, Ended> {
        loop {
            let m = tokio::time::timeout(WAIT, self.stream.next())
                .await
                .expect("timed out waiting for a frame");
            match m {
                Some(Ok(WsMessage::Text(t))) => {
                    return Ok(serde_json::from_str(t.as_str()).unwrap())
                }
                Some(Ok(WsMessage::Close(f))) => {
                    return Err(Ended::Close(f.map_or(1005, |f| u16::from(f.code))))
                }
                Some(Ok(_)) => continue,
                Some(Err(_)) | None => return Err(Ended::Dropped),
            }
        }
    }

    pub async fn recv(&mut self) -> Value {
        match self.try_recv().await {
            Ok(v) => v,
            Err(e) => panic!("socket ended: {e:?}"),
        }
    }

    /// Subscribes and returns `(snapshot devices or None, subscribed cursor)`.
    pub async fn subscribe(&mut self, mut cmd: Value) -> (Option<Vec<Value>>, String) {
        cmd["op"] = json!("subscribe");
        cmd["ref"] = json!("s");
        self.send(cmd).await;
        let mut snapshot = None;
        loop {
            let v = self.recv().await;
            match v["type"].as_str() {
                Some("snapshot") if v["ref"] == "s" => {
                    snapshot = Some(v["devices"].as_array().cloned().unwrap_or_default())
                }
                Some("subscribed") if v["ref"] == "s" => {
                    return (snapshot, v["cursor"].as_str().unwrap().to_owned())
                }
                Some("error") if v["ref"] == "s" => panic!("subscribe failed: {v}"),
                _ => {}
            }
        }
    }

    /// A ping round trip: everything sent before it has been processed.
    pub async fn sync(&mut self) -> Vec<Value> {
        self.send(json!({"op":"ping","ref":"sync"})).await;
        let mut before = Vec::new();
        loop {
            let v = self.recv().await;
            if v["type"] == "pong" && v["ref"] == "sync" {
                return before;
            }
            before.push(v);
        }
    }
}

/// The last 30 lines of the log at `path` (for a failure message).
pub fn tail(path: &std::path::Path) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(30)..].join("\n")
}

/// `GET path` with `Connection: close` within 5 s: `(status, body)`, or
/// `None` when nothing answers (a killed or stopped process).
pub async fn get(addr: SocketAddr, path: &str) -> Option<(u16, String)> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let io = async {
        let mut s = TcpStream::connect(addr).await.ok()?;
        s.write_all(
            format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n").as_bytes(),
        )
        .await
        .ok()?;
        let mut raw = Vec::new();
        s.read_to_end(&mut raw).await.ok()?;
        let text = String::from_utf8_lossy(&raw).into_owned();
        let status = text.split_whitespace().nth(1)?.parse().ok()?;
        let body = text.split_once("\r\n\r\n").map(|(_, b)| b.to_owned())?;
        Some((status, body))
    };
    tokio::time::timeout(Duration::from_secs(5), io)
        .await
        .ok()
        .flatten()
}
