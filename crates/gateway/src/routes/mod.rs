//! The HTTP surface: `/ws` (upgrade, in [`crate::ws`]), `/api/*`
//! ([`api`]), the unauthenticated `/healthz`, `/readyz`, `/metrics`
//! ([`ops`]) and the map page `/`, `/assets/*`, `/config.json` ([`assets`]).

pub mod api;
pub mod assets;
pub mod ops;

use std::sync::Arc;

use axum::extract::FromRef;
use axum::routing::{get, post};
use axum::Router;
use metrics_exporter_prometheus::PrometheusHandle;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::auth::Authenticator;
use crate::health::Health;
use crate::hub::Hub;
use crate::store::Store;
use crate::ws::connection::Limits;

/// Everything a handler may need; cheap to clone.
#[derive(Clone)]
pub struct AppState {
    pub auth: Authenticator,
    pub store: Store,
    pub pg: deadpool_postgres::Pool,
    pub hub: Arc<Hub>,
    pub health: Arc<Health>,
    pub prometheus: PrometheusHandle,
    pub limits: Limits,
    pub max_frame: usize,
    /// Origins allowed to open `/ws`; empty = any.
    pub allowed_origins: Arc<[String]>,
    /// Tracks every socket task, so shutdown can wait for their 1001.
    pub tracker: TaskTracker,
    /// Cancelled on SIGTERM/SIGINT.
    pub shutdown: CancellationToken,
    /// The map page's `/config.json`.
    pub page_config: Arc<serde_json::Value>,
}

impl FromRef<AppState> for Authenticator {
    fn from_ref(s: &AppState) -> Self {
        s.auth.clone()
    }
}

pub fn router(state: AppState) -> Router {
    Router::new()
        .route("/", get(assets::index))
        .route("/assets/{file}", get(assets::asset))
        .route("/config.json", get(assets::config))
        .route("/healthz", get(ops::healthz))
        .route("/readyz", get(ops::readyz))
        .route("/metrics", get(ops::metrics))
        .route("/ws", get(crate::ws::upgrade))
        .route("/api/devices", get(api::devices))
        .route("/api/devices/{id}", get(api::device))
        .route("/api/devices/{id}/track", get(api::track))
        .route("/api/events", get(api::events))
        .route("/api/publish", post(api::publish))
        .fallback(ops::not_found)
        .with_state(state)
}
