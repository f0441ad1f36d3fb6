//! Readiness: a background probe pings Redis and PostgreSQL every second
//! (each with a 1 s timeout), so `/readyz` turns within a few seconds of a
//! dependency leaving or returning, and never waits on one itself. The
//! PostgreSQL probe has a connection of its own: history readers holding
//! every pooled connection must not make a healthy database look down.
//!
//! The live feed's state is also what a subscribe waits for: `subscribed`
//! promises "live from here", which holds only once this instance's Redis
//! subscription is confirmed.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::store::redis::Store;

/// What the probe and the feed last saw.
#[derive(Debug)]
pub struct Health {
    redis: AtomicBool,
    postgres: AtomicBool,
    feed: watch::Sender<bool>,
}

impl Default for Health {
    fn default() -> Self {
        Health {
            redis: AtomicBool::new(false),
            postgres: AtomicBool::new(false),
            feed: watch::channel(false).0,
        }
    }
}

impl Health {
    pub fn set_feed(&self, up: bool) {
        self.feed.send_replace(up);
    }

    /// Waits until the live feed is subscribed, at most `within`; whether it
    /// is.
    pub async fn feed_up(&self, within: Duration) -> bool {
        let mut rx = self.feed.subscribe();
        let up = tokio::time::timeout(within, async { rx.wait_for(|up| *up).await.is_ok() }).await;
        up.unwrap_or(false)
    }

    /// `(redis, postgres, live feed)`.
    pub fn status(&self) -> (bool, bool, bool) {
        (
            self.redis.load(Ordering::Relaxed),
            self.postgres.load(Ordering::Relaxed),
            *self.feed.borrow(),
        )
    }

    pub fn ready(&self) -> bool {
        let (r, p, f) = self.status();
        r && p && f
    }
}

const PROBE_EVERY: Duration = Duration::from_secs(1);
const PROBE_TIMEOUT: Duration = Duration::from_secs(1);

/// Probes until `shutdown`. `pg` is the configuration of the probe's own
/// PostgreSQL connection (opened, and reopened after a failure, here).
pub async fn probe(
    health: Arc<Health>,
    store: Store,
    pg: tokio_postgres::Config,
    shutdown: CancellationToken,
) {
    let mut tick = tokio::time::interval(PROBE_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut conn: Option<tokio_postgres::Client> = None;
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tick.tick() => {}
        }
        let redis = async {
            tokio::time::timeout(PROBE_TIMEOUT, store.ping())
                .await
                .is_ok_and(|r| r.is_ok())
        };
        let postgres = async {
            tokio::time::timeout(PROBE_TIMEOUT, async {
                if conn.as_ref().is_none_or(|c| c.is_closed()) {
                    let (client, connection) = pg.connect(tokio_postgres::NoTls).await.ok()?;
                    // Ends when the client is dropped or the server goes.
                    tokio::spawn(async move {
                        let _ = connection.await;
                    });
                    conn = Some(client);
                }
                conn.as_ref()?.simple_query("SELECT 1").await.ok()
            })
            .await
            .ok()
            .flatten()
            .is_some()
        };
        let (r, p) = tokio::join!(redis, postgres);
        if !p {
            // A timed-out or broken probe connection is not reused.
            conn = None;
        }
        let was = health.ready();
        health.redis.store(r, Ordering::Relaxed);
        health.postgres.store(p, Ordering::Relaxed);
        let now = health.ready();
        if was != now {
            let (_, _, feed) = health.status();
            tracing::info!(
                ready = now,
                redis = r,
                postgres = p,
                feed,
                "readiness changed"
            );
        }
    }
}
