//! [`AppState`]: what every HTTP handler and WebSocket connection shares.
//! Its own module, so `http` (which routes to `ws`) and `ws` (which reads
//! the state) both depend on it and not on each other.

use std::sync::Arc;

use axum::extract::FromRef;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::auth::Authenticator;
use crate::health::Health;
use crate::live::hub::Hub;
use crate::metrics::{Metrics, Sent};
use crate::store::redis::Store;
use crate::ws::connection::Limits;

/// Everything a handler may need; cheap to clone.
#[derive(Clone)]
pub struct AppState {
    pub auth: Authenticator,
    pub store: Store,
    pub pg: deadpool_postgres::Pool,
    pub hub: Arc<Hub>,
    pub health: Arc<Health>,
    /// This gateway's metrics, rendered by `/metrics`.
    pub metrics: Arc<Metrics>,
    /// The socket writers' handles on [`AppState::metrics`].
    pub sent: Arc<Sent>,
    pub limits: Limits,
    pub max_frame: usize,
    /// Origins allowed to use `/ws` and `/api/*` from a browser; empty =
    /// any with tokens, only the gateway's own with `--auth none`.
    pub allowed_origins: Arc<[String]>,
    /// `--auth none`: no token protects the fleet, so the Origin does.
    pub open: bool,
    /// Snapshots built at once (`FIELDCAST_SNAPSHOT_CONCURRENCY`).
    pub snapshots: Arc<tokio::sync::Semaphore>,
    /// Timeouts and the concurrency cap of the history API.
    pub history_limits: crate::store::history::HistoryLimits,
    /// Tracks every socket task, so shutdown can wait for their 1001.
    pub tracker: TaskTracker,
    /// Cancelled on SIGTERM/SIGINT.
    pub shutdown: CancellationToken,
    /// The map page's `/config.json`.
    pub page_config: Arc<serde_json::Value>,
    /// The local tile archive behind `/tiles/*`, when `FIELDCAST_MAP_TILES`
    /// names one.
    pub tiles: Option<Arc<crate::store::tiles::TileSource>>,
}

impl FromRef<AppState> for Authenticator {
    fn from_ref(s: &AppState) -> Self {
        s.auth.clone()
    }
}
