//! `fieldcast-gateway`: the WebSocket push gateway and HTTP API of
//! PROTOCOL.md §4–5, fed by what `fieldcast-bridge` writes to Redis
//! (docs/redis-layout.md).
//!
//! The path of a live update, by folder:
//!
//! - [`live::feed`]: the instance's one Redis subscriber (`<prefix>live`,
//!   `<prefix>push`) parses each message once into a shared frame;
//! - [`live::hub`]: indexes (device, fleet, bbox R-tree, channel) find the
//!   local connections that want it;
//! - [`live::outbox`]: each connection's queue, bounded in bytes
//!   (locations coalesce, events never drop, overflow closes with 4008);
//! - [`ws::connection`]: the socket's writer drains the outbox, several
//!   frames per flush; its reader obeys [`ws::protocol`] commands, reading
//!   snapshots and replays through [`store::redis`].
//!
//! Around it: [`http`] (`/api/*` with [`store::history`] for SQL, the map
//! page and its tiles, `/healthz`, `/readyz` from [`health`], `/metrics`),
//! [`auth`] (JWT -> [`auth::Scope`]), [`state`] (what handlers and
//! connections share), [`config`].
//! [`serve`] wires them and owns shutdown.

// Tests may unwrap: a panic there is the failure report.
#![cfg_attr(test, allow(clippy::unwrap_used, clippy::expect_used))]

pub mod auth;
pub mod config;
pub mod cursor;
pub mod health;
pub mod http;
pub mod live;
pub mod state;
pub mod store;
pub mod ws;

use std::sync::{Arc, OnceLock};
use std::time::Duration;

use anyhow::Context;
use axum::serve::ListenerExt;
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

pub use config::{AuthMode, Config};

/// The process-wide Prometheus recorder (installed once: `metrics` has one
/// global recorder, and tests run several gateways in one process).
pub fn prometheus() -> PrometheusHandle {
    static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();
    HANDLE
        .get_or_init(|| {
            let builder = PrometheusBuilder::new()
                .set_buckets_for_metric(
                    Matcher::Full("fieldcast_gateway_broadcast_latency_seconds".into()),
                    &[0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0],
                )
                .unwrap_or_else(|_| PrometheusBuilder::new());
            let recorder = builder.build_recorder();
            let handle = recorder.handle();
            // Another recorder may already be global (a test process that
            // also runs the bridge); our /metrics then renders an empty set
            // rather than failing.
            if metrics::set_global_recorder(recorder).is_err() {
                tracing::warn!("a metrics recorder was already installed; /metrics will not show the gateway's metrics");
            }
            handle
        })
        .clone()
}

/// Every accepted socket: no Nagle delay (a live update is small and must
/// leave now; the writer already combines queued frames into one flush),
/// and a bounded kernel send buffer (see `Config::ws_send_buffer`).
fn tune_socket(tcp: &mut tokio::net::TcpStream, send_buffer: usize) {
    if let Err(e) = tcp.set_nodelay(true) {
        tracing::warn!(error = %e, "TCP_NODELAY not set");
    }
    if send_buffer > 0 {
        if let Err(e) = socket2::SockRef::from(&*tcp).set_send_buffer_size(send_buffer) {
            tracing::warn!(error = %e, "SO_SNDBUF not set");
        }
    }
}

/// The tile archive `FIELDCAST_MAP_TILES` names, opened and checked, or
/// `None` for an online URL template (or no tiles).
async fn open_tiles(config: &Config) -> anyhow::Result<Option<Arc<http::tiles::TileSource>>> {
    let Some(path) = config
        .map_tiles
        .as_deref()
        .and_then(http::tiles::archive_path)
    else {
        return Ok(None);
    };
    let source = tokio::task::spawn_blocking(move || http::tiles::TileSource::open(&path))
        .await
        .context("tile archive open task")?
        .context("FIELDCAST_MAP_TILES")?;
    tracing::info!(
        path = %source.path().display(),
        format = source.format_name(),
        kind = source.kind().as_str(),
        min_zoom = source.min_zoom(),
        max_zoom = source.max_zoom(),
        "serving map tiles at /tiles/{{z}}/{{x}}/{{y}}"
    );
    Ok(Some(Arc::new(source)))
}

/// The map page's `/config.json`: [`http::assets::page_config`], with
/// the tile fields pointing at `/tiles/*` when the gateway serves an
/// archive (its attribution unless `FIELDCAST_MAP_ATTRIBUTION` is set).
fn page_config(config: &Config, tiles: Option<&http::tiles::TileSource>) -> serde_json::Value {
    let mut page = http::assets::page_config(config);
    if let Some(t) = tiles {
        let operator_attribution = config
            .map_attribution
            .as_deref()
            .is_some_and(|a| !a.trim().is_empty());
        t.apply_to_page_config(&mut page, operator_attribution);
    }
    page
}

/// Runs the gateway on `listener` until `shutdown` is cancelled, then
/// closes every WebSocket with 1001 and returns.
///
/// Starts while Redis or PostgreSQL are down (not ready until they answer).
pub async fn serve(
    config: Config,
    listener: TcpListener,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    config.validate()?;
    let tiles = open_tiles(&config).await?;
    let prometheus = prometheus();
    metrics::gauge!("fieldcast_gateway_connections").increment(0.0);

    let store = store::redis::Store::connect(&config.store.redis_url, &config.store.redis_prefix)
        .context("redis client")?;
    let pg = store::history::pool(&config.store.database_url, config.database_pool.get())
        .context("postgresql pool")?;
    let queue = config.ws_queue.get();
    let hub = live::hub::Hub::new((queue * 16).max(65_536));
    let health = Arc::new(health::Health::default());
    let tracker = TaskTracker::new();

    tracker.spawn({
        let feed_buffer = config.feed_buffer.get();
        let (url, keys, hub, health, shutdown) = (
            config.store.redis_url.clone(),
            store.keys.clone(),
            hub.clone(),
            health.clone(),
            shutdown.clone(),
        );
        async move {
            if let Err(e) = live::feed::run(url, feed_buffer, keys, hub, health, shutdown).await {
                tracing::error!(error = %e, "live feed stopped");
            }
        }
    });
    let mut probe_pg: tokio_postgres::Config = config
        .store
        .database_url
        .parse()
        .context("FIELDCAST_DATABASE_URL")?;
    probe_pg
        .connect_timeout(Duration::from_secs(1))
        .application_name("fieldcast-gateway-probe");
    tracker.spawn(health::probe(
        health.clone(),
        store.clone(),
        probe_pg,
        shutdown.clone(),
    ));
    tracker.spawn({
        let (prometheus, shutdown) = (prometheus.clone(), shutdown.clone());
        async move {
            let mut tick = tokio::time::interval(Duration::from_secs(5));
            loop {
                tokio::select! {
                    _ = shutdown.cancelled() => return,
                    _ = tick.tick() => prometheus.run_upkeep(),
                }
            }
        }
    });

    let state = state::AppState {
        page_config: Arc::new(page_config(&config, tiles.as_deref())),
        tiles,
        auth: auth::Authenticator::from_config(&config),
        store: store.clone(),
        pg,
        hub,
        health,
        prometheus,
        limits: ws::connection::Limits {
            queue,
            queue_bytes: config.ws_queue_bytes.get(),
            snapshot_frame_devices: config.snapshot_frame_devices.get(),
            rate_per_sec: config.ws_rate_limit.get(),
            max_subscriptions: config.ws_max_subscriptions.get(),
            ping_interval: config.ws_ping_interval,
        },
        max_frame: config.ws_max_frame.get(),
        allowed_origins: config
            .allowed_origins
            .iter()
            .filter(|o| !o.is_empty())
            .cloned()
            .collect(),
        open: config.auth == config::AuthMode::None,
        snapshots: Arc::new(tokio::sync::Semaphore::new(
            config.snapshot_concurrency.get(),
        )),
        history_limits: store::history::HistoryLimits::from_config(&config),
        tracker: tracker.clone(),
        shutdown: shutdown.clone(),
    };
    let addr = listener.local_addr().ok();
    tracing::info!(?addr, "gateway listening");
    if config.auth == config::AuthMode::None {
        tracing::warn!(
            ?addr,
            "--auth none: the gateway is open — anyone who can reach it sees the whole fleet and may publish; browsers may use it only from its own origin (or FIELDCAST_ALLOWED_ORIGINS). Set FIELDCAST_JWT_SECRET for anything but a local demo"
        );
    }
    let send_buffer = config.ws_send_buffer;
    let listener = listener.tap_io(move |tcp| tune_socket(tcp, send_buffer));
    axum::serve(listener, http::router(state))
        .with_graceful_shutdown(shutdown.clone().cancelled_owned())
        .await
        .context("http server")?;

    // Sockets saw the same token and are sending their 1001.
    tracker.close();
    if tokio::time::timeout(config.shutdown_grace, tracker.wait())
        .await
        .is_err()
    {
        tracing::warn!("some tasks did not finish within the shutdown grace period");
    }
    store.quit().await;
    tracing::info!("gateway stopped");
    Ok(())
}
