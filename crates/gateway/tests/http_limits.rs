//! `/api/*` under slow, greedy and confused clients, against the real
//! PostgreSQL and Redis (issue #11, points 3 and 5): 404 for the track of a
//! device never seen, history streamed with a statement timeout and a send
//! timeout, a cap on concurrent history requests (429), and a publish that
//! takes only bounded `application/json` bodies (415, 413).

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::net::SocketAddr;
use std::num::NonZeroUsize;
use std::time::{Duration, Instant};

use fieldcast_testkit::wait_until;
use http_body_util::BodyExt;
use serde_json::{json, Value};
use support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};

const T0: i64 = 1_763_800_000_000;
const HOUR: i64 = 3_600_000;

/// The `{"error":{"code","message"}}` of §5, with its code.
fn error_code(body: &str) -> String {
    let v: Value = serde_json::from_str(body).unwrap_or_else(|_| panic!("not JSON: {body}"));
    assert!(v["error"]["message"].is_string(), "{v}");
    v["error"]["code"].as_str().unwrap_or_default().to_owned()
}

/// A GET written by hand on a socket with a tiny receive buffer; reads the
/// status line (a few bytes) and returns the socket unread from there: a
/// client that stops reading, whose bytes back up to the server at once.
async fn stalled_get(addr: SocketAddr, path: &str, token: &str) -> (u16, TcpStream) {
    let sock = TcpSocket::new_v4().unwrap();
    sock.set_recv_buffer_size(4096).unwrap();
    let mut s = sock.connect(addr).await.unwrap();
    let req =
        format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nAuthorization: Bearer {token}\r\n\r\n");
    s.write_all(req.as_bytes()).await.unwrap();
    let mut got = Vec::new();
    let mut buf = [0u8; 64];
    while !got.windows(2).any(|w| w == b"\r\n") {
        let n = tokio::time::timeout(WAIT, s.read(&mut buf))
            .await
            .expect("no status line in time")
            .unwrap();
        assert!(n > 0, "closed before the status line");
        got.extend_from_slice(&buf[..n]);
    }
    let line = String::from_utf8_lossy(&got);
    let status = line
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or_else(|| panic!("no status in {line:?}"));
    (status, s)
}

/// Reads what is left on a stalled socket until the server ends it.
async fn drain(mut s: TcpStream) -> Vec<u8> {
    let mut out = Vec::new();
    let mut buf = vec![0u8; 1 << 16];
    loop {
        match tokio::time::timeout(WAIT, s.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => return out,
            Ok(Ok(n)) => out.extend_from_slice(&buf[..n]),
            Err(_) => panic!("the server kept the socket open without sending"),
        }
    }
}

/// Backends of the test database that are doing something or hold a
/// transaction open (the readiness probe's `SELECT 1` aside).
async fn busy_backends(env: &Env) -> i64 {
    env.pg
        .query_one(
            "SELECT count(*) FROM pg_stat_activity \
             WHERE datname = current_database() AND pid <> pg_backend_pid() \
               AND backend_type = 'client backend' AND state <> 'idle' \
               AND query <> 'SELECT 1'",
            &[],
        )
        .await
        .unwrap()
        .get(0)
}

/// Locks other sessions hold on the history tables.
async fn history_locks(env: &Env) -> i64 {
    env.pg
        .query_one(
            "SELECT count(*) FROM pg_locks l JOIN pg_class c ON c.oid = l.relation \
             WHERE l.database = (SELECT oid FROM pg_database WHERE datname = current_database()) \
               AND l.pid <> pg_backend_pid() \
               AND c.relname IN ('locations', 'locations_default', 'events', 'device_status')",
            &[],
        )
        .await
        .unwrap()
        .get(0)
}

/// `n` points of `device`, one a second from `T0`, in one statement.
async fn insert_points(env: &Env, device: &str, n: i64) {
    env.pg
        .execute(
            "INSERT INTO locations (device_id, ts, lat, lon, alt, received_at) \
             SELECT $1, to_timestamp(($2::float8 + g * 1000) / 1000), 51 + g * 1e-6, -0.5, \
                    CASE WHEN g % 2 = 0 THEN 10.5 END, now() \
             FROM generate_series(0, $3::bigint - 1) g",
            &[&device, &(T0 as f64), &n],
        )
        .await
        .unwrap();
}

/// Pins (#11, 3): the track of a device never seen (no hot state, nothing
/// in history) is a 404 with the error shape, in every format, like one
/// outside the token's scope; a device with history but no hot state still
/// gets its track, and a known device without points in the window gets an
/// empty one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_track_of_a_device_never_seen_is_404() {
    let env = Env::new().await;
    let gw = env.gateway().await;
    let t = token(json!({}));
    insert_points(&env, "stored-only", 3).await; // history, no hot state
    env.location("hot-only", T0, 51.5, -0.1).await; // hot state, no history
    env.pg
        .execute(
            "INSERT INTO events (device_id, event_id, ts, kind, severity, received_at) \
             VALUES ('event-only', 'e1', to_timestamp($1::float8 / 1000), 'panic', 'info', now())",
            &[&(T0 as f64)],
        )
        .await
        .unwrap();
    let range = format!("from={T0}&to={}", T0 + HOUR);
    let empty = format!("from={}&to={}", T0 + 10 * HOUR, T0 + 11 * HOUR);

    for format in ["json", "geojson", "csv"] {
        let (s, _, body) = request(
            gw.addr,
            "GET",
            &format!("/api/devices/never-seen/track?{range}&format={format}"),
            Some(&t),
            &[],
            "",
        )
        .await;
        assert_eq!(s, 404, "{format}: {body}");
        assert_eq!(error_code(&body), "not_found");
    }
    // Also with the default window, and for an id that cannot be a device.
    let (s, v) = get_json(gw.addr, "/api/devices/never-seen/track", &t).await;
    assert_eq!((s, v["error"]["code"].as_str()), (404, Some("not_found")));
    let (s, _) = get_json(gw.addr, "/api/devices/no%20such/track", &t).await;
    assert_eq!(s, 404);

    let (s, v) = get_json(
        gw.addr,
        &format!("/api/devices/stored-only/track?{range}"),
        &t,
    )
    .await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["points"].as_array().unwrap().len(), 3);
    for device in ["stored-only", "hot-only", "event-only"] {
        let (s, v) = get_json(gw.addr, &format!("/api/devices/{device}/track?{empty}"), &t).await;
        assert_eq!(s, 200, "{device}: {v}");
        assert_eq!(v, json!({"device": device, "points": [], "next": null}));
    }
    let (s, _, body) = request(
        gw.addr,
        "GET",
        &format!("/api/devices/hot-only/track?{empty}&format=csv"),
        Some(&t),
        &[],
        "",
    )
    .await;
    assert_eq!(
        (s, body.as_str()),
        (200, "ts,lat,lon,alt,speed,heading,accuracy\n")
    );

    // Outside the token's scope: 404, whatever history holds.
    let scoped = token(json!({"devices": ["hot-*"]}));
    let (s, v) = get_json(
        gw.addr,
        &format!("/api/devices/stored-only/track?{range}"),
        &scoped,
    )
    .await;
    assert_eq!((s, v["error"]["code"].as_str()), (404, Some("not_found")));
    let (s, _) = get_json(
        gw.addr,
        &format!("/api/devices/hot-only/track?{empty}"),
        &scoped,
    )
    .await;
    assert_eq!(s, 200);
    gw.stop().await;
}

/// Pins (#11, 5): 17 clients that ask for a large track, read a few bytes
/// and stop neither take the pool (`/readyz` stays ready, another client
/// is served) nor keep their PostgreSQL connections: the ones past the cap
/// get 429 at once, the others are cut within the send timeout, after
/// which no backend of the database is busy or holds a lock on the history
/// tables; a cut response never ends like a complete one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stalled_track_readers_are_cut_and_do_not_take_the_pool() {
    let env = Env::new().await;
    let mut config = env.config();
    let send_timeout = Duration::from_secs(5);
    config.history_send_timeout = send_timeout;
    let cap = config.history_concurrency.get();
    let gw = Gateway::start(config).await;
    insert_points(&env, "big", 200_000).await;
    let t = token(json!({}));
    let path = format!(
        "/api/devices/big/track?from={T0}&to={}&limit=100000",
        T0 + 1000 * HOUR
    );

    let readers = futures::future::join_all((0..17).map(|_| stalled_get(gw.addr, &path, &t))).await;
    let heads_at = Instant::now();
    let mut held = Vec::new();
    let mut refused = 0;
    for (status, socket) in readers {
        match status {
            200 => held.push(socket),
            429 => refused += 1,
            other => panic!("a stalled reader got {other}"),
        }
    }
    // All 17 arrive within the send timeout, so exactly `cap` are served.
    assert_eq!((held.len(), refused), (cap, 17 - cap));

    // The stall is real: the held requests' transactions are still open.
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(busy_backends(&env).await >= 1, "the readers did not stall");
    // While they stall, the gateway stays ready and serves others.
    while heads_at.elapsed() < send_timeout - Duration::from_millis(1500) {
        let (s, _, body) = http(gw.addr, "GET", "/readyz", None, None).await;
        assert_eq!(s, 200, "not ready while readers stall: {body}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let (s, v) = get_json(gw.addr, "/api/devices/big/track?from=0&limit=5", &t).await;
    assert_eq!(s, 429, "{v}");
    assert_eq!(v["error"]["code"], "too_many_requests");

    // Cut within the send timeout: connections back, no locks held.
    wait_until(
        send_timeout + Duration::from_secs(3),
        "the stalled readers' backends to go idle",
        || async { busy_backends(&env).await == 0 && history_locks(&env).await == 0 },
    )
    .await
    .unwrap();
    assert!(
        heads_at.elapsed() < send_timeout * 2,
        "cut after {:?}",
        heads_at.elapsed()
    );
    let (s, _, body) = http(gw.addr, "GET", "/readyz", None, None).await;
    assert_eq!(s, 200, "{body}");
    let (s, v) = get_json(
        gw.addr,
        &format!("/api/devices/big/track?from={T0}&to={}&limit=5", T0 + HOUR),
        &t,
    )
    .await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["points"].as_array().unwrap().len(), 5);
    assert_eq!(v["next"], json!(T0 + 5000));

    // A cut response, read now, ends without the chunked terminator.
    let rest = drain(held.pop().unwrap()).await;
    assert!(
        !rest.ends_with(b"0\r\n\r\n"),
        "a cut response looked complete"
    );
    drop(held);
    gw.stop().await;
}

/// Pins (#11, 5): past `FIELDCAST_HISTORY_CONCURRENCY` history requests at
/// once, the next gets 429 with the error shape and `Retry-After`; the
/// slot comes back when a request ends.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn history_requests_past_the_cap_get_429() {
    let env = Env::new().await;
    let mut config = env.config();
    config.history_concurrency = NonZeroUsize::new(2).unwrap();
    config.history_send_timeout = Duration::from_secs(2);
    let gw = Gateway::start(config).await;
    insert_points(&env, "big", 100_000).await;
    let t = token(json!({}));
    let to = T0 + 1000 * HOUR;
    let big = format!("/api/devices/big/track?from={T0}&to={to}&limit=100000");
    let (a, sa) = stalled_get(gw.addr, &big, &t).await;
    let (b, sb) = stalled_get(gw.addr, &format!("{big}&format=csv"), &t).await;
    assert_eq!((a, b), (200, 200));

    for path in [
        format!("/api/devices/big/track?from={T0}&to={to}&limit=1"),
        format!("/api/events?from={T0}&to={to}"),
    ] {
        let (s, headers, body) = request(gw.addr, "GET", &path, Some(&t), &[], "").await;
        assert_eq!(s, 429, "{path}: {body}");
        assert_eq!(error_code(&body), "too_many_requests");
        assert_eq!(headers["retry-after"], "1");
    }
    // Requests that need no history slot are not limited.
    let (s, _) = get_json(gw.addr, "/api/devices", &t).await;
    assert_eq!(s, 200);

    drop((sa, sb)); // the clients leave: their slots come back
    wait_until(WAIT, "a history slot to come back", || async {
        let path = format!("/api/devices/big/track?from={T0}&to={to}&limit=1");
        get_json(gw.addr, &path, &t).await.0 == 200
    })
    .await
    .unwrap();
    gw.stop().await;
}

/// Pins (#11, 5): every history statement runs under the statement
/// timeout: a query stuck behind a lock is answered 503 `timeout` within
/// about that time (not left waiting), and the connection is usable again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn history_queries_stop_at_the_statement_timeout() {
    let env = Env::new().await;
    let mut config = env.config();
    config.history_timeout = Duration::from_millis(500);
    let gw = Gateway::start(config).await;
    insert_points(&env, "t1", 10).await;
    let t = token(json!({}));
    let range = format!("from={T0}&to={}", T0 + HOUR);

    let locker = env.db.client().await.unwrap();
    locker
        .batch_execute(
            "BEGIN; LOCK TABLE locations IN ACCESS EXCLUSIVE MODE; \
             LOCK TABLE events IN ACCESS EXCLUSIVE MODE",
        )
        .await
        .unwrap();
    for path in [
        format!("/api/devices/t1/track?{range}"),
        format!("/api/devices/t1/track?{range}&format=csv"),
        format!("/api/events?{range}"),
    ] {
        let started = Instant::now();
        let (s, _, body) = request(gw.addr, "GET", &path, Some(&t), &[], "").await;
        assert_eq!(s, 503, "{path}: {body}");
        assert_eq!(error_code(&body), "timeout", "{path}");
        assert!(started.elapsed() < Duration::from_secs(5), "{path}");
    }
    locker.batch_execute("ROLLBACK").await.unwrap();
    // Every pooled connection is clean again: no aborted transaction left.
    for _ in 0..20 {
        let (s, v) = get_json(gw.addr, &format!("/api/devices/t1/track?{range}"), &t).await;
        assert_eq!(s, 200, "{v}");
        assert_eq!(v["points"].as_array().unwrap().len(), 10);
    }
    gw.stop().await;
}

/// Pins (#11, 5): the statement timeout bounds PostgreSQL's work, not the
/// download: a client that takes a large track slowly but steadily (longer
/// in all than the statement timeout, each chunk within the send timeout)
/// gets all of it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_steady_reader_gets_the_whole_track() {
    let env = Env::new().await;
    let mut config = env.config();
    config.history_timeout = Duration::from_millis(1000);
    config.history_send_timeout = Duration::from_secs(5);
    let gw = Gateway::start(config).await;
    insert_points(&env, "big", 100_000).await;
    let t = token(json!({}));
    let stream = TcpStream::connect(gw.addr).await.unwrap();
    let io = hyper_util::rt::TokioIo::new(stream);
    let (mut sender, conn) = hyper::client::conn::http1::handshake(io).await.unwrap();
    tokio::spawn(conn);
    let req = hyper::Request::builder()
        .uri(format!(
            "/api/devices/big/track?from={T0}&to={}&limit=100000",
            T0 + 1000 * HOUR
        ))
        .header("host", gw.addr.to_string())
        .header("authorization", format!("Bearer {t}"))
        .body(http_body_util::Empty::<bytes::Bytes>::new())
        .unwrap();
    let resp = sender.send_request(req).await.unwrap();
    assert_eq!(resp.status(), 200);
    let started = Instant::now();
    let mut body = resp.into_body();
    let mut data = Vec::new();
    while let Some(frame) = tokio::time::timeout(WAIT, body.frame()).await.unwrap() {
        let frame = frame.expect("the response was cut");
        if let Ok(chunk) = frame.into_data() {
            data.extend_from_slice(&chunk);
            // About 3 MB/s: the 11 MB take several statement timeouts.
            tokio::time::sleep(Duration::from_micros(chunk.len() as u64 / 3)).await;
        }
    }
    assert!(
        started.elapsed() > Duration::from_millis(2500),
        "read too fast to prove anything: {:?}",
        started.elapsed()
    );
    let v: Value = serde_json::from_slice(&data).unwrap();
    assert_eq!(v["points"].as_array().unwrap().len(), 100_000);
    assert_eq!(v["next"], Value::Null);
    gw.stop().await;
}

/// Pins (#11, 5): `/api/events` is streamed (chunked, never built whole)
/// with the same JSON and the same pages as before: a 100 000-event page
/// holds exactly the first 100 000 events in `(ts, device, id)` order and
/// its `next` gives the rest; smaller pages concatenate to the same list;
/// a reader that stalls on it is cut within the send timeout.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_are_streamed_and_paged_as_before() {
    let env = Env::new().await;
    let mut config = env.config();
    let send_timeout = Duration::from_secs(3);
    config.history_send_timeout = send_timeout;
    let gw = Gateway::start(config).await;
    // Three events per timestamp, two devices.
    env.pg
        .execute(
            "INSERT INTO events (device_id, event_id, ts, kind, severity, data, received_at) \
             SELECT CASE WHEN g % 2 = 0 THEN 'ev-a' ELSE 'ev-b' END, 'e' || g, \
                    to_timestamp(($1::float8 + (g / 3) * 1000) / 1000), 'panic', 'info', \
                    jsonb_build_object('i', g), now() \
             FROM generate_series(0, 100000) g",
            &[&(T0 as f64)],
        )
        .await
        .unwrap();
    let want: Vec<(String, String)> = env
        .pg
        .query(
            "SELECT device_id, event_id FROM events ORDER BY ts, device_id, event_id",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    assert_eq!(want.len(), 100_001);
    let t = token(json!({}));
    let range = format!("from={T0}&to={}", T0 + 1000 * HOUR);

    let pages = |limit: usize| {
        let (range, t) = (range.clone(), t.clone());
        async move {
            let mut cursor = String::new();
            let mut got = Vec::new();
            let mut sizes = Vec::new();
            loop {
                let (s, headers, body) = request(
                    gw.addr,
                    "GET",
                    &format!("/api/events?{range}&limit={limit}&cursor={cursor}"),
                    Some(&t),
                    &[],
                    "",
                )
                .await;
                assert_eq!(s, 200, "{body}");
                assert_eq!(headers["content-type"], "application/json");
                assert!(
                    headers.get("content-length").is_none(),
                    "the page was built whole"
                );
                let v: Value = serde_json::from_str(&body).unwrap();
                let events = v["events"].as_array().unwrap();
                sizes.push(events.len());
                for e in events {
                    got.push((
                        e["device"].as_str().unwrap().to_owned(),
                        e["id"].as_str().unwrap().to_owned(),
                    ));
                }
                match v["next"].as_str() {
                    Some(n) => cursor = n.to_owned(),
                    None => break,
                }
            }
            (got, sizes)
        }
    };
    let (got, sizes) = pages(100_000).await;
    assert_eq!(sizes, [100_000, 1]);
    assert!(
        got == want,
        "the 100 000-event pages differ from SQL's order"
    );
    let (got, sizes) = pages(33_334).await;
    assert_eq!(sizes, [33_334, 33_334, 33_333]);
    assert!(got == want, "smaller pages differ");

    // One event's JSON is as before.
    let (_, v) = get_json(gw.addr, &format!("/api/events?{range}&limit=1"), &t).await;
    let e = &v["events"][0];
    assert_eq!(
        (e["device"].as_str(), e["id"].as_str(), e["ts"].as_i64()),
        (Some("ev-a"), Some("e0"), Some(T0))
    );
    assert_eq!(
        (e["kind"].as_str(), e["severity"].as_str(), &e["data"]),
        (Some("panic"), Some("info"), &json!({"i": 0}))
    );

    let (s, socket) = stalled_get(gw.addr, &format!("/api/events?{range}&limit=100000"), &t).await;
    assert_eq!(s, 200);
    let at = Instant::now();
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(busy_backends(&env).await >= 1, "the reader did not stall");
    wait_until(
        send_timeout + Duration::from_secs(3),
        "the stalled events reader's backend to go idle",
        || async { busy_backends(&env).await == 0 && history_locks(&env).await == 0 },
    )
    .await
    .unwrap();
    assert!(at.elapsed() < send_timeout * 2);
    drop(socket);
    gw.stop().await;
}

/// Pins (#11, 5 and 6): `POST /api/publish` takes only `application/json`
/// (415 otherwise, so a page cannot send it `text/plain` cross-origin) and
/// at most `FIELDCAST_PUBLISH_MAX_BYTES` (413, declared or chunked), both
/// with the error shape; a right JSON body is still 202.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publish_takes_only_bounded_json() {
    let env = Env::new().await;
    let mut config = env.config();
    config.publish_max_bytes = NonZeroUsize::new(1024).unwrap();
    let gw = Gateway::start(config).await;
    let publisher = token(json!({"publish": true}));
    let body = r#"{"channel":"user:42","data":{"k":1}}"#;

    for content_type in [
        None,
        Some("text/plain"),
        Some("application/x-www-form-urlencoded"),
        Some("multipart/form-data; boundary=x"),
        Some("application/jsonp"),
    ] {
        let headers: Vec<(&str, &str)> =
            content_type.iter().map(|c| ("content-type", *c)).collect();
        let (s, _, resp) = request(
            gw.addr,
            "POST",
            "/api/publish",
            Some(&publisher),
            &headers,
            body,
        )
        .await;
        assert_eq!(s, 415, "{content_type:?}: {resp}");
        assert_eq!(error_code(&resp), "unsupported_media_type");
    }
    for content_type in ["application/json", "application/json; charset=utf-8"] {
        let (s, _, resp) = request(
            gw.addr,
            "POST",
            "/api/publish",
            Some(&publisher),
            &[("content-type", content_type)],
            body,
        )
        .await;
        assert_eq!(s, 202, "{content_type}: {resp}");
    }

    let big = json!({"channel": "user:42", "data": {"pad": "x".repeat(2000)}}).to_string();
    let (s, _, resp) = request(
        gw.addr,
        "POST",
        "/api/publish",
        Some(&publisher),
        &[("content-type", "application/json")],
        &big,
    )
    .await;
    assert_eq!(s, 413, "{resp}");
    assert_eq!(error_code(&resp), "payload_too_large");
    // Chunked, so no Content-Length tells in advance.
    let mut sock = TcpStream::connect(gw.addr).await.unwrap();
    let head = format!(
        "POST /api/publish HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {publisher}\r\n\
         Content-Type: application/json\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n"
    );
    let mut req = head;
    for _ in 0..3 {
        req.push_str(&format!("190\r\n{}\r\n", "y".repeat(400)));
    }
    req.push_str("0\r\n\r\n");
    // One write: the whole request is in before the server answers.
    sock.write_all(req.as_bytes()).await.unwrap();
    let mut resp = Vec::new();
    let _ = tokio::time::timeout(WAIT, sock.read_to_end(&mut resp)).await;
    let resp = String::from_utf8_lossy(&resp);
    assert!(resp.starts_with("HTTP/1.1 413"), "{resp}");
    assert!(resp.contains("payload_too_large"), "{resp}");

    // The right is still checked first: no publish claim, 403.
    let (s, _, resp) = request(
        gw.addr,
        "POST",
        "/api/publish",
        Some(&token(json!({}))),
        &[("content-type", "text/plain")],
        body,
    )
    .await;
    assert_eq!((s, error_code(&resp).as_str()), (403, "forbidden"));
    gw.stop().await;
}
