//! Schema upkeep against the real PostgreSQL: migrations are idempotent and
//! safe when several bridges start at once; partitions exist ahead of time;
//! retention drops old partitions and rows.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use fieldcast_bridge::store::schema as db;
use fieldcast_testkit::PgDb;

async fn partitions(c: &tokio_postgres::Client) -> Vec<String> {
    let mut v: Vec<String> = c
        .query(
            "SELECT c.relname::text FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid
              JOIN pg_class p ON p.oid = i.inhparent WHERE p.relname = 'locations'",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    v.sort();
    v
}

/// Pins: four bridges preparing the same database at once all succeed,
/// the migration is recorded once, and today's and the next days'
/// partitions exist.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_prepare_is_safe_and_creates_partitions_ahead() {
    let pg = PgDb::create().await.unwrap();
    let retention = Duration::from_secs(7 * 86400);
    // Taken before: if midnight passes during the test, prepare's "today"
    // is later, never earlier.
    let today = chrono::Utc::now().date_naive();
    let mut tasks = Vec::new();
    for _ in 0..4 {
        let url = pg.url.clone();
        tasks.push(tokio::spawn(async move {
            let (mut c, conn) = tokio_postgres::connect(&url, tokio_postgres::NoTls)
                .await
                .unwrap();
            tokio::spawn(conn);
            db::prepare(&mut c, retention).await.unwrap()
        }));
    }
    let mut applied = 0;
    for t in tasks {
        applied += t.await.unwrap().applied;
    }
    assert_eq!(
        applied,
        db::MIGRATION_COUNT,
        "each migration runs exactly once"
    );
    let c = pg.client().await.unwrap();
    let parts = partitions(&c).await;
    for d in [today, today + chrono::Days::new(3)] {
        assert!(
            parts.contains(&db::partition_name(d)),
            "{d} missing from {parts:?}"
        );
    }
    // The retention window's days (from the cutoff's day) to today + 3.
    assert_eq!(parts.len(), 7 + 3 + 1);
}

/// Pins: retention drops partitions wholly older than the window and
/// deletes older events and status rows, keeping everything newer.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retention_drops_old_partitions_and_rows() {
    let pg = PgDb::create().await.unwrap();
    let mut c = pg.client().await.unwrap();
    db::prepare(&mut c, Duration::from_secs(30 * 86400))
        .await
        .unwrap();
    c.batch_execute(
        "INSERT INTO locations (device_id, ts, lat, lon, received_at)
              VALUES ('old', now() - interval '20 days', 1, 1, now()),
                     ('new', now() - interval '1 hour', 1, 1, now());
         INSERT INTO events (device_id, event_id, ts, kind, severity, received_at)
              VALUES ('old', 'e', now() - interval '20 days', 'k', 'info', now()),
                     ('new', 'e', now() - interval '1 hour', 'k', 'info', now());
         INSERT INTO device_status (device_id, ts, online, received_at)
              VALUES ('old', now() - interval '20 days', true, now()),
                     ('new', now() - interval '1 hour', true, now());",
    )
    .await
    .unwrap();
    let before = partitions(&c).await.len();
    let m = db::prepare(&mut c, Duration::from_secs(10 * 86400))
        .await
        .unwrap();
    assert!(m.dropped >= 19, "{m:?}");
    assert_eq!(partitions(&c).await.len(), before - m.dropped);
    for table in ["locations", "events", "device_status"] {
        let ids: Vec<String> = c
            .query(&format!("SELECT device_id FROM {table}"), &[])
            .await
            .unwrap()
            .iter()
            .map(|r| r.get(0))
            .collect();
        assert_eq!(ids, vec!["new".to_owned()], "{table}");
    }
}

/// Pins: every bridge session runs with a statement and a lock timeout, and
/// partition upkeep gives up a lock it cannot get instead of queueing
/// ingest behind it (its caller retries with backoff).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sessions_have_timeouts_and_upkeep_gives_up_a_held_lock() {
    let pg = PgDb::create().await.unwrap();
    let pool = fieldcast_bridge::store::postgres::pool(&pg.url).unwrap();
    let mut c = pool.get().await.unwrap();
    for (setting, want) in [("statement_timeout", "15s"), ("lock_timeout", "5s")] {
        let row = c.query_one(&format!("SHOW {setting}"), &[]).await.unwrap();
        assert_eq!(row.get::<_, String>(0), want, "{setting}");
    }
    db::prepare(&mut c, Duration::from_secs(7 * 86400))
        .await
        .unwrap();

    // An analyst (or a migration tool) holding the events table.
    let mut holder = pg.client().await.unwrap();
    let tx = holder.transaction().await.unwrap();
    tx.batch_execute("LOCK TABLE events IN ACCESS EXCLUSIVE MODE")
        .await
        .unwrap();
    let r = tokio::time::timeout(
        Duration::from_secs(20),
        db::prepare(&mut c, Duration::from_secs(7 * 86400)),
    )
    .await
    .expect("upkeep must give up, not wait for the lock");
    let e = r.expect_err("the lock is held");
    assert_eq!(
        e.code().map(|c| c.code()),
        Some("55P03"),
        "lock_not_available: {e}"
    );
    tx.rollback().await.unwrap();
    db::prepare(&mut c, Duration::from_secs(7 * 86400))
        .await
        .unwrap();
}
