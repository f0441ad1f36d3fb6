//! Webhook delivery against the real PostgreSQL: the outbox table of a
//! private database, the bridge's sender (`webhook::Sender`) in this
//! process, and an axum endpoint on 127.0.0.1:0 that fails, hangs or
//! answers as each test says. Backoffs are a few milliseconds; nothing
//! asserts a duration.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use axum::http::StatusCode;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use fieldcast_bridge::metrics::Metrics;
use fieldcast_bridge::store::postgres::{pool, Pg};
use fieldcast_bridge::webhook::{self, Owed, Sender, Settings};
use fieldcast_core::{Event, Severity};
use fieldcast_testkit::{wait_until, PgDb};
use support::endpoint::{expected_signature, Endpoint};

const WAIT: Duration = Duration::from_secs(20);

/// A private database with the bridge's schema.
async fn database() -> (PgDb, Arc<Pg>) {
    let db = PgDb::create().await.unwrap();
    let mut c = db.client().await.unwrap();
    fieldcast_bridge::store::schema::prepare(&mut c, Duration::from_secs(7 * 86400))
        .await
        .unwrap();
    let pg = Arc::new(Pg::new(pool(&db.url).unwrap()));
    (db, pg)
}

/// Quick settings: retries a few milliseconds apart.
fn quick(give_up: Duration) -> Settings {
    let mut s = Settings::new(
        Duration::from_secs(5),
        give_up,
        Duration::from_millis(20),
        Duration::from_millis(100),
    );
    s.poll = Duration::from_millis(50);
    s
}

struct Running {
    sender: Sender,
    metrics: Arc<Metrics>,
    stop: CancellationToken,
    task: JoinHandle<()>,
}

impl Running {
    fn start(pg: &Arc<Pg>, settings: Settings) -> Running {
        let metrics = Arc::new(Metrics::new());
        let sender = Sender::new(pg.clone(), settings, metrics.clone()).unwrap();
        let stop = CancellationToken::new();
        let task = tokio::spawn(sender.clone().run(stop.clone()));
        Running {
            sender,
            metrics,
            stop,
            task,
        }
    }

    fn count(&self, name: &str) -> u64 {
        let text = self.metrics.encode();
        let series = format!("fieldcast_bridge_webhook_{name}_total");
        text.lines()
            .find_map(|l| l.strip_prefix(&series).and_then(|r| r.strip_prefix(' ')))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(0)
    }

    /// Cancels the sender and waits for it to end.
    async fn stop(self) {
        self.stop.cancel();
        tokio::time::timeout(WAIT, self.task)
            .await
            .expect("the sender ends on shutdown")
            .unwrap();
    }
}

fn alert_event(id: &str) -> Event {
    Event {
        id: id.to_owned(),
        ts: 1_763_800_000_000,
        kind: "alert.overspeed".to_owned(),
        severity: Severity::Warning,
        data: Some(
            serde_json::value::RawValue::from_string(r#"{"rule":7,"speed":41.5}"#.into()).unwrap(),
        ),
    }
}

fn alert(device: &str, id: &str, url: &str, secret: &str) -> Owed {
    Owed::event(device, &alert_event(id), url, secret)
}

/// Enqueues in a transaction, as the bridge does with the alert's event.
async fn enqueue(pg: &Pg, owed: &[Owed]) -> u64 {
    let mut c = pg.pool().get().await.unwrap();
    let tx = c.transaction().await.unwrap();
    let n = webhook::enqueue(&*tx, owed).await.unwrap();
    tx.commit().await.unwrap();
    n
}

async fn rows(pg: &Pg) -> i64 {
    let c = pg.pool().get().await.unwrap();
    c.query_one("SELECT count(*) FROM webhook_outbox", &[])
        .await
        .unwrap()
        .get(0)
}

/// Pins issue #15's webhook case: an endpoint that answers 500 three times
/// and then 200 gets the alert exactly once with a 2xx, each time the body
/// `/ws` sends for the event (without `cursor`) and a valid
/// `X-Fieldcast-Signature`; the row is gone; retried 3, sent 1, failed 0.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fails_three_times_then_delivers_once_signed() {
    let (_db, pg) = database().await;
    let (ep, url) = Endpoint::start(|n| {
        let status = if n < 3 {
            StatusCode::INTERNAL_SERVER_ERROR
        } else {
            StatusCode::OK
        };
        (status, Duration::ZERO)
    })
    .await;
    let run = Running::start(&pg, quick(Duration::from_secs(3600)));
    // As the bridge makes it: from the endpoint a rule names.
    let hook = fieldcast_core::webhook::Webhook::from_json(
        &serde_json::json!({"url": url, "secret": "s3cret"}),
    )
    .unwrap();
    let owed = Owed::for_webhook(
        "truck-7",
        &alert_event("alert.overspeed-7-1763800000000"),
        &hook,
    );
    assert_eq!(enqueue(&pg, std::slice::from_ref(&owed)).await, 1);
    run.sender.wake().owed();

    wait_until(WAIT, "the row delivered and deleted", || async {
        run.count("sent") == 1 && rows(&pg).await == 0
    })
    .await
    .unwrap();
    // Nothing more arrives once it is delivered (a few poll periods).
    tokio::time::sleep(Duration::from_millis(300)).await;
    let seen = ep.seen();
    assert_eq!(seen.len(), 4, "three failures, one success: {seen:?}");
    assert_eq!(seen.iter().filter(|r| r.status.is_success()).count(), 1);
    for r in &seen {
        assert_eq!(r.body, owed.body.as_bytes(), "the exact body each time");
        assert_eq!(
            r.signature.as_deref(),
            Some(expected_signature("s3cret", &r.body).as_str())
        );
        assert_eq!(r.content_type.as_deref(), Some("application/json"));
    }
    let body: serde_json::Value = serde_json::from_slice(&seen[3].body).unwrap();
    assert_eq!(
        body,
        serde_json::json!({
            "type": "event", "device": "truck-7", "id": "alert.overspeed-7-1763800000000",
            "ts": 1_763_800_000_000_i64, "kind": "alert.overspeed", "severity": "warning",
            "data": {"rule": 7, "speed": 41.5}
        })
    );
    assert_eq!(
        (run.count("retried"), run.count("sent"), run.count("failed")),
        (3, 1, 0)
    );
    run.stop().await;
}

/// Pins the give-up: an endpoint that always fails is retried until the row
/// is older than the give-up age, then the row is deleted and counted once
/// as failed, never as sent.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_endpoint_that_always_fails_is_given_up() {
    let (_db, pg) = database().await;
    let (ep, url) = Endpoint::start(|_| (StatusCode::INTERNAL_SERVER_ERROR, Duration::ZERO)).await;
    let run = Running::start(&pg, quick(Duration::from_millis(400)));
    enqueue(&pg, &[alert("truck-7", "ev-1", &url, "k")]).await;
    run.sender.wake().owed();

    wait_until(WAIT, "the row given up", || async {
        run.count("failed") == 1 && rows(&pg).await == 0
    })
    .await
    .unwrap();
    assert!(!ep.seen().is_empty(), "attempted before giving up");
    assert!(run.count("retried") >= 1);
    assert_eq!(run.count("sent"), 0);
    run.stop().await;
}

/// Pins: a url that is not http(s) is about the data, not an outage: the
/// row is given up at once (failed), not retried for a day.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_row_with_no_http_url_is_given_up_at_once() {
    let (_db, pg) = database().await;
    let run = Running::start(&pg, quick(Duration::from_secs(3600)));
    enqueue(
        &pg,
        &[alert("truck-7", "ev-1", "ftp://example.invalid/x", "k")],
    )
    .await;
    run.sender.wake().owed();
    wait_until(WAIT, "the row given up", || async {
        run.count("failed") == 1 && rows(&pg).await == 0
    })
    .await
    .unwrap();
    assert_eq!((run.count("retried"), run.count("sent")), (0, 0));
    run.stop().await;
}

/// Pins the shared table: two senders (two bridges) on one outbox deliver
/// each of 24 rows exactly once to a slow endpoint — the claim's lease keeps
/// one sender off the rows the other is sending.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_senders_deliver_each_row_once() {
    let (_db, pg) = database().await;
    let (ep, url) = Endpoint::start(|_| (StatusCode::NO_CONTENT, Duration::from_millis(150))).await;
    let mut settings = quick(Duration::from_secs(3600));
    settings.concurrency = 4;
    let a = Running::start(&pg, settings.clone());
    let b = Running::start(&pg, settings);
    let owed: Vec<Owed> = (0..24)
        .map(|i| alert(&format!("dev-{}", i % 3), &format!("ev-{i}"), &url, "k"))
        .collect();
    assert_eq!(enqueue(&pg, &owed).await, 24);
    a.sender.wake().owed();
    b.sender.wake().owed();

    wait_until(WAIT, "every row delivered", || async {
        a.count("sent") + b.count("sent") == 24 && rows(&pg).await == 0
    })
    .await
    .unwrap();
    let mut per_event: HashMap<String, usize> = HashMap::new();
    for r in ep.seen() {
        let v: serde_json::Value = serde_json::from_slice(&r.body).unwrap();
        *per_event
            .entry(format!("{}/{}", v["device"], v["id"]))
            .or_default() += 1;
    }
    assert_eq!(per_event.len(), 24);
    assert!(per_event.values().all(|&n| n == 1), "{per_event:?}");
    assert_eq!(a.count("retried") + b.count("retried"), 0);
    a.stop().await;
    b.stop().await;
}

/// Pins idempotence: the same alert decided twice (two transactions, or
/// twice in one batch) is owed once; another endpoint of the same alert is
/// owed separately.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn enqueue_twice_owes_once() {
    let (_db, pg) = database().await;
    let owed = alert("truck-7", "ev-1", "http://127.0.0.1:9/a", "k");
    assert_eq!(enqueue(&pg, &[owed.clone(), owed.clone()]).await, 1);
    assert_eq!(enqueue(&pg, std::slice::from_ref(&owed)).await, 0);
    assert_eq!(rows(&pg).await, 1);
    let other = Owed {
        url: "http://127.0.0.1:9/b".into(),
        ..owed
    };
    assert_eq!(enqueue(&pg, &[other]).await, 1);
    assert_eq!(rows(&pg).await, 2);
    assert_eq!(enqueue(&pg, &[]).await, 0);
}

/// Pins shutdown: a sender whose POST hangs ends when cancelled, and the
/// row it was sending stays owed (sent again after its lease).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_mid_post_keeps_the_row() {
    let (_db, pg) = database().await;
    let (ep, url) = Endpoint::start(|_| (StatusCode::OK, Duration::from_secs(30))).await;
    let mut settings = quick(Duration::from_secs(3600));
    settings.timeout = Duration::from_secs(60);
    let run = Running::start(&pg, settings);
    enqueue(&pg, &[alert("truck-7", "ev-1", &url, "k")]).await;
    run.sender.wake().owed();
    wait_until(WAIT, "the POST in flight", || async {
        !ep.seen().is_empty()
    })
    .await
    .unwrap();
    let metrics = run.metrics.clone();
    run.stop().await;
    assert_eq!(rows(&pg).await, 1, "the interrupted row is still owed");
    assert!(!metrics
        .encode()
        .contains("fieldcast_bridge_webhook_sent_total 1"));
}

/// Pins the wiring: a whole bridge (`fieldcast_bridge::start`) runs a
/// sender with its `--webhook-*` settings on its own database, finds a row
/// owed by another bridge at its poll, and shows the counts on `/metrics`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_running_bridge_delivers_what_is_owed() {
    let mut h = support::Harness::private().await;
    h.extra
        .extend(["--webhook-retry-min", "20ms", "--webhook-retry-max", "50ms"].map(String::from));
    let bridge = h.start().await;
    let (ep, url) = Endpoint::start(|n| {
        let status = if n == 0 {
            StatusCode::SERVICE_UNAVAILABLE
        } else {
            StatusCode::ACCEPTED
        };
        (status, Duration::ZERO)
    })
    .await;
    let pg = Pg::new(pool(&h.db.url).unwrap());
    enqueue(&pg, &[alert("truck-7", "ev-1", &url, "k")]).await;
    let addr = bridge.handles.admin_addr;
    wait_until(WAIT, "delivered by the bridge", || async {
        let page = support::metrics_page(addr).await;
        support::metric(&page, "fieldcast_bridge_webhook_sent_total") == 1.0
    })
    .await
    .unwrap();
    let page = support::metrics_page(addr).await;
    assert_eq!(
        support::metric(&page, "fieldcast_bridge_webhook_retried_total"),
        1.0
    );
    assert_eq!(ep.seen().len(), 2);
    wait_until(WAIT, "the row deleted", || async { rows(&pg).await == 0 })
        .await
        .unwrap();
    bridge.stop().await;
}
