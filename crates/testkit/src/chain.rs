//! The device half of the whole chain, once for every crate whose tests
//! need it (the gateway's and the simulator's): a private Mosquitto, and a
//! `fieldcast-bridge` on it with its own database, Redis prefix (on the
//! shared Redis) and spool, started in this process and ready. Each test
//! adds the gateways it needs on [`Chain::store`].

use std::time::Duration;

use anyhow::Context;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::{shared_redis_url, unique, wait_until, Mosquitto, PgDb};

/// How long the bridge may take to become ready.
const READY: Duration = Duration::from_secs(30);

pub struct Chain {
    pub broker: Mosquitto,
    pub db: PgDb,
    /// `<tag>-…:`, unique per chain.
    pub prefix: String,
    pub redis_url: String,
    pub spool: tempfile::TempDir,
    /// The bridge's metrics, health and admin address (`/readyz`).
    pub bridge: fieldcast_bridge::Handles,
    _keys: Option<crate::PrefixGuard>,
    bridge_stop: CancellationToken,
    bridge_done: JoinHandle<anyhow::Result<()>>,
}

/// Every default except where things are, with a 300 ms history flush
/// (so history is queryable soon after a message) and a 10 s shutdown
/// budget: a bridge on a private broker, its own Redis prefix, database
/// and spool.
pub fn bridge_config(
    mqtt_url: &str,
    client_id: &str,
    store: fieldcast_service::StoreArgs,
    spool_dir: &std::path::Path,
) -> fieldcast_bridge::Config {
    use clap::Parser;
    let mut c = fieldcast_bridge::Config::parse_from(["fieldcast-bridge"]);
    c.mqtt.url = mqtt_url.to_owned();
    c.mqtt_client_id = client_id.to_owned();
    c.store = store;
    c.admin_addr = std::net::SocketAddr::from(([127, 0, 0, 1], 0));
    c.flush_interval = Duration::from_millis(300);
    c.spool_dir = spool_dir.to_owned();
    c.shutdown_timeout = Duration::from_secs(10);
    c
}

impl Chain {
    /// Starts the broker and a ready bridge on the shared Redis; `tag`
    /// begins the prefix.
    pub async fn start(tag: &str) -> anyhow::Result<Chain> {
        Self::start_on(tag, &shared_redis_url()).await
    }

    /// [`Chain::start`] on the Redis (or Redis Cluster) at `redis_url`.
    pub async fn start_on(tag: &str, redis_url: &str) -> anyhow::Result<Chain> {
        crate::init_tracing();
        let broker = Mosquitto::start().await.context("private mosquitto")?;
        let db = PgDb::create().await.context("test database")?;
        let prefix = format!("{}:", unique(tag));
        let spool = tempfile::tempdir().context("spool directory")?;
        let redis_url = redis_url.to_owned();
        let store = fieldcast_service::StoreArgs::new(&redis_url, &prefix, &db.url);
        let config = bridge_config(&broker.url, &unique("bridge"), store, spool.path());
        let bridge_stop = CancellationToken::new();
        let (handles, done) = fieldcast_bridge::start(config, bridge_stop.clone())
            .await
            .context("bridge starts")?;
        let bridge_done = tokio::spawn(done);
        let h = &handles;
        wait_until(READY, "bridge ready", || async move { h.health.ready() }).await?;
        Ok(Chain {
            // A private Redis (a test's cluster) goes with its keys.
            _keys: (redis_url == shared_redis_url())
                .then(|| crate::PrefixGuard::new(&redis_url, &prefix)),
            broker,
            db,
            prefix,
            redis_url,
            spool,
            bridge: handles,
            bridge_stop,
            bridge_done,
        })
    }

    /// Where the bridge keeps the fleet's state, for the gateways.
    pub fn store(&self) -> fieldcast_service::StoreArgs {
        fieldcast_service::StoreArgs::new(&self.redis_url, &self.prefix, &self.db.url)
    }

    /// Stops the bridge (it drains and acks), then drops the broker.
    pub async fn stop(self) -> anyhow::Result<()> {
        self.bridge_stop.cancel();
        self.bridge_done.await.context("bridge task")??;
        Ok(())
    }
}
