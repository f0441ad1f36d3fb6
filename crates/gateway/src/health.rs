//! Readiness: a background probe checks Redis and PostgreSQL every second
//! (each with a 1 s timeout), so `/readyz` turns within a few seconds of a
//! dependency leaving or returning, and never waits on one itself. Redis
//! is ready when every connection of the pool answers and every
//! partition's keys answer: on a cluster, not ready exactly while a
//! primary is down and not yet replaced, whatever happens to replicas or
//! to nodes serving no partition. The
//! PostgreSQL probe has a connection of its own: history readers holding
//! every pooled connection must not make a healthy database look down.
//!
//! A draining gateway ([`crate::drain`]) is not ready whatever the probe
//! sees: the load balancer must stop sending it viewers. Nor is one with
//! `FIELDCAST_JWT_JWKS_URL` before its first successful fetch of the
//! provider's keys ([`crate::keys::jwks`]): it could verify none of their
//! tokens. A later failed refresh keeps the keys held, and readiness.
//!
//! The live feed's state is also what a subscribe waits for: `subscribed`
//! promises "live from here", which holds only once this instance's Redis
//! subscription is confirmed.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::store::redis::Store;

/// What the probe and the feed last saw.
#[derive(Debug)]
pub struct Health {
    redis: AtomicBool,
    /// Partitions whose keys did not answer the last probe.
    partitions_down: AtomicUsize,
    postgres: AtomicBool,
    feed: watch::Sender<bool>,
    /// Set once, when a stop was requested; never cleared.
    draining: AtomicBool,
    /// The token keys are loaded: false only while a configured JWKS has
    /// never been fetched.
    token_keys: AtomicBool,
}

impl Default for Health {
    fn default() -> Self {
        Health {
            redis: AtomicBool::new(false),
            partitions_down: AtomicUsize::new(0),
            postgres: AtomicBool::new(false),
            feed: watch::channel(false).0,
            draining: AtomicBool::new(false),
            token_keys: AtomicBool::new(true),
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

    /// Partitions whose keys did not answer the last probe.
    pub fn partitions_down(&self) -> usize {
        self.partitions_down.load(Ordering::Relaxed)
    }

    /// The instance is leaving: `/readyz` says not ready from now on.
    pub fn set_draining(&self) {
        self.draining.store(true, Ordering::Relaxed);
    }

    pub fn draining(&self) -> bool {
        self.draining.load(Ordering::Relaxed)
    }

    pub fn set_token_keys(&self, loaded: bool) {
        self.token_keys.store(loaded, Ordering::Relaxed);
    }

    /// Whether the token keys are loaded (see the module doc).
    pub fn token_keys(&self) -> bool {
        self.token_keys.load(Ordering::Relaxed)
    }

    /// Ready for new viewers: the stores and the feed are up, the token
    /// keys are loaded and the instance is not draining.
    pub fn ready(&self) -> bool {
        let (r, p, f) = self.status();
        r && p && f && self.token_keys() && !self.draining()
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
            let (pinged, down) = tokio::join!(
                tokio::time::timeout(PROBE_TIMEOUT, store.ping()),
                store.unreachable_partitions(PROBE_TIMEOUT)
            );
            (pinged.is_ok_and(|r| r.is_ok()), down)
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
        let ((pinged, down), p) = tokio::join!(redis, postgres);
        if !p {
            // A timed-out or broken probe connection is not reused.
            conn = None;
        }
        let r = pinged && down.is_empty();
        let was = health.ready();
        if health.partitions_down.swap(down.len(), Ordering::Relaxed) != down.len()
            && !down.is_empty()
        {
            tracing::warn!(partitions = ?down, "Redis partitions unreachable (their keys do not answer)");
        }
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
