//! Readiness: a background probe pings Redis and PostgreSQL every second
//! (each with a 1 s timeout), so `/readyz` turns within a few seconds of a
//! dependency leaving or returning, and never waits on one itself.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use crate::store::Store;

/// What the probe and the feed last saw.
#[derive(Debug, Default)]
pub struct Health {
    redis: AtomicBool,
    postgres: AtomicBool,
    feed: AtomicBool,
}

impl Health {
    pub fn set_feed(&self, up: bool) {
        self.feed.store(up, Ordering::Relaxed);
    }

    /// `(redis, postgres, live feed)`.
    pub fn status(&self) -> (bool, bool, bool) {
        (
            self.redis.load(Ordering::Relaxed),
            self.postgres.load(Ordering::Relaxed),
            self.feed.load(Ordering::Relaxed),
        )
    }

    pub fn ready(&self) -> bool {
        let (r, p, f) = self.status();
        r && p && f
    }
}

const PROBE_EVERY: Duration = Duration::from_secs(1);
const PROBE_TIMEOUT: Duration = Duration::from_secs(1);

/// Probes until `shutdown`.
pub async fn probe(
    health: Arc<Health>,
    store: Store,
    pg: deadpool_postgres::Pool,
    shutdown: CancellationToken,
) {
    let mut tick = tokio::time::interval(PROBE_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
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
                let client = pg.get().await.ok()?;
                client.simple_query("SELECT 1").await.ok()
            })
            .await
            .ok()
            .flatten()
            .is_some()
        };
        let (r, p) = tokio::join!(redis, postgres);
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
        metrics::gauge!("fieldcast_gateway_ready").set(if now { 1.0 } else { 0.0 });
    }
}
