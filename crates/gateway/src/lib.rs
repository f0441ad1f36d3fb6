//! `fieldcast-gateway`: the WebSocket push gateway and HTTP API of
//! PROTOCOL.md §4–5, fed by what `fieldcast-bridge` writes to Redis
//! (docs/redis-layout.md).
//!
//! The path of a live update, by folder:
//!
//! - [`live::feed`]: the instance's one Redis subscriber (`<prefix>live`,
//!   `<prefix>push`) parses each message once into a shared frame;
//! - [`live::hub`]: indexes find the local connections that want it (by
//!   device, fleet, group, bbox R-tree, channel), with every device's
//!   groups ([`live::groups`], copied from PostgreSQL by [`store::groups`]);
//! - [`live::outbox`]: each connection's queue, bounded in bytes
//!   (locations coalesce, events never drop, overflow closes with 4008);
//! - [`ws::connection`]: the socket's writer drains the outbox, several
//!   frames per flush; its reader obeys [`ws::protocol`] commands, reading
//!   snapshots and replays through [`store::redis`].
//!
//! Around it: [`http`] (`/api/*` with [`store::history`] for SQL and
//! [`track`] for trips, stops and simplification, the map
//! page and its tiles, `/healthz`, `/readyz` from [`health`], `/metrics`
//! from [`metrics`]),
//! [`auth`] (JWT -> [`auth::Scope`], with the keys of [`keys`]: the
//! secret, a PEM public key, a refreshed JWKS), [`state`] (what handlers
//! and connections share), [`config`], and [`token`] (the `token`
//! command that mints HS256 tokens).
//! [`serve`] wires them and owns shutdown, after a [`drain`].

// Tests may unwrap: a panic there is the failure report.
#![cfg_attr(test, allow(clippy::unwrap_used, clippy::expect_used))]

pub mod auth;
pub mod config;
pub mod cursor;
pub mod drain;
pub mod health;
pub mod http;
pub mod keys;
pub mod live;
pub mod metrics;
pub mod state;
pub mod store;
pub mod token;
pub mod track;
pub mod ws;

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use axum::serve::ListenerExt;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

pub use config::{AuthMode, Config};

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
async fn open_tiles(config: &Config) -> anyhow::Result<Option<Arc<store::tiles::TileSource>>> {
    let Some(path) = config
        .map_tiles
        .as_deref()
        .and_then(store::tiles::archive_path)
    else {
        return Ok(None);
    };
    let source = tokio::task::spawn_blocking(move || store::tiles::TileSource::open(&path))
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
fn page_config(config: &Config, tiles: Option<&store::tiles::TileSource>) -> serde_json::Value {
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

/// Runs the gateway on `listener` until `shutdown` is cancelled and the
/// drain (`FIELDCAST_DRAIN_GRACE`) is over, then closes every WebSocket
/// with 1001 and returns.
///
/// Starts while Redis or PostgreSQL are down (not ready until they answer).
pub async fn serve(
    config: Config,
    listener: TcpListener,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let drain = drain::Drain {
        requested: shutdown,
        now: CancellationToken::new(),
    };
    serve_draining(config, listener, drain).await
}

/// [`serve`], with a drain the caller can also cut short ([`drain::Drain::now`]).
pub async fn serve_draining(
    config: Config,
    listener: TcpListener,
    drain: drain::Drain,
) -> anyhow::Result<()> {
    config.validate()?;
    let tiles = open_tiles(&config).await?;
    let tracker = TaskTracker::new();
    // What the server, the feed, the probe and every socket stop on: the
    // end of the drain, or the server failing.
    let stop = CancellationToken::new();
    let _stop_on_return = stop.clone().drop_guard();
    let state = app_state(&config, tiles, tracker.clone(), stop.clone())?;
    tracker.spawn(drain::run(
        drain,
        stop.clone(),
        state.health.clone(),
        config.drain_grace,
    ));
    spawn_live_feed(&config, &state);
    spawn_probe(&config, &state)?;
    spawn_jwks_refresh(&config, &state)?;
    spawn_groups(&config, &state)?;
    let store = state.store.clone();
    let served = listen(&config, listener, state).await;
    // Ends what is left when the server failed; a no-op after a drain.
    stop.cancel();

    // Sockets saw the same token and are sending their 1001.
    tracker.close();
    if tokio::time::timeout(config.shutdown_grace, tracker.wait())
        .await
        .is_err()
    {
        tracing::warn!("some tasks did not finish within the shutdown grace period");
    }
    store.quit().await;
    served?;
    tracing::info!("gateway stopped");
    Ok(())
}

/// What every handler and connection shares: the store clients (which
/// connect in the background), the hub, health, metrics and limits.
fn app_state(
    config: &Config,
    tiles: Option<Arc<store::tiles::TileSource>>,
    tracker: TaskTracker,
    shutdown: CancellationToken,
) -> anyhow::Result<state::AppState> {
    let metrics = Arc::new(metrics::Metrics::new());
    let store = store::redis::Store::connect(&config.store.redis_url, config.store.keys())
        .context("redis client")?;
    let pg = store::history::pool(&config.store.database_url, config.database_pool.get())
        .context("postgresql pool")?;
    let queue = config.ws_queue.get();
    let auth = auth::Authenticator::from_config(config)?;
    let health = Arc::new(health::Health::default());
    if auth.jwks().is_some() {
        health.set_token_keys(false);
    }
    Ok(state::AppState {
        page_config: Arc::new(page_config(config, tiles.as_deref())),
        tiles,
        auth,
        store,
        pg,
        hub: live::hub::Hub::new((queue * 16).max(65_536), &metrics),
        health,
        sent: Arc::new(metrics.sent()),
        metrics,
        limits: ws::connection::Limits {
            queue,
            queue_bytes: config.ws_queue_bytes.get(),
            snapshot_frame_devices: config.snapshot_frame_devices.get(),
            rate_per_sec: config.ws_rate_limit.get(),
            max_subscriptions: config.ws_max_subscriptions.get(),
            ping_interval: config.ws_ping_interval,
            write_delay: config.ws_write_delay,
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
        history_limits: store::history::HistoryLimits::from_config(config),
        tracker,
        shutdown,
    })
}

/// The instance's one Redis subscriber, feeding the hub until shutdown.
fn spawn_live_feed(config: &Config, s: &state::AppState) {
    let feed = live::feed::run(
        config.store.redis_url.clone(),
        config.feed_buffer.get(),
        s.store.keys.clone(),
        s.hub.clone(),
        s.health.clone(),
        s.metrics.clone(),
        s.shutdown.clone(),
    );
    s.tracker.spawn(async move {
        if let Err(e) = feed.await {
            tracing::error!(error = %e, "live feed stopped");
        }
    });
}

/// The JWKS refresh task, when `FIELDCAST_JWT_JWKS_URL` is set.
fn spawn_jwks_refresh(config: &Config, s: &state::AppState) -> anyhow::Result<()> {
    let Some(jwks) = s.auth.jwks() else {
        return Ok(());
    };
    tracing::info!(url = jwks.url(), "verifying tokens with the JWKS");
    s.tracker.spawn(keys::jwks::refresh(
        jwks,
        keys::jwks::client()?,
        keys::jwks::Schedule {
            every: config.jwt_jwks_refresh,
            min_interval: config.jwt_jwks_min_interval,
        },
        s.health.clone(),
        s.shutdown.clone(),
    ));
    Ok(())
}

/// The readiness probe, with a PostgreSQL connection of its own.
fn spawn_probe(config: &Config, s: &state::AppState) -> anyhow::Result<()> {
    let mut probe_pg: tokio_postgres::Config = config
        .store
        .database_url
        .parse()
        .context("FIELDCAST_DATABASE_URL")?;
    probe_pg
        .connect_timeout(Duration::from_secs(1))
        .application_name("fieldcast-gateway-probe");
    s.tracker.spawn(health::probe(
        s.health.clone(),
        s.store.clone(),
        probe_pg,
        s.shutdown.clone(),
    ));
    Ok(())
}

/// The copy of `device_groups` in the hub, with a PostgreSQL connection
/// of its own (it LISTENs).
fn spawn_groups(config: &Config, s: &state::AppState) -> anyhow::Result<()> {
    let mut pg: tokio_postgres::Config = config
        .store
        .database_url
        .parse()
        .context("FIELDCAST_DATABASE_URL")?;
    pg.connect_timeout(Duration::from_secs(3))
        .application_name("fieldcast-gateway-groups")
        .options("-c statement_timeout=30s");
    s.tracker.spawn(store::groups::keep_current(
        pg,
        s.hub.clone(),
        s.shutdown.clone(),
    ));
    Ok(())
}

/// Serves HTTP and WebSocket on `listener` until the shutdown token is
/// cancelled (axum's graceful shutdown: no new connections, requests in
/// flight finish).
async fn listen(
    config: &Config,
    listener: TcpListener,
    state: state::AppState,
) -> anyhow::Result<()> {
    let addr = listener.local_addr().ok();
    tracing::info!(?addr, "gateway listening");
    if config.auth == config::AuthMode::None {
        tracing::warn!(
            ?addr,
            "--auth none: the gateway is open — anyone who can reach it sees the whole fleet and may publish; browsers may use it only from its own origin (or FIELDCAST_ALLOWED_ORIGINS). Set FIELDCAST_JWT_SECRET for anything but a local demo"
        );
    }
    let shutdown = state.shutdown.clone();
    let send_buffer = config.ws_send_buffer;
    let listener = listener.tap_io(move |tcp| tune_socket(tcp, send_buffer));
    axum::serve(listener, http::router(state))
        .with_graceful_shutdown(shutdown.cancelled_owned())
        .await
        .context("http server")
}
