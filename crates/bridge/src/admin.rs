//! The operator's endpoints on `FIELDCAST_ADMIN_ADDR`: `/metrics`
//! (Prometheus text), `/healthz` (the process is alive) and `/readyz` (the
//! broker, Redis and PostgreSQL all answer).

use std::sync::Arc;

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::IntoResponse;
use axum::routing::get;
use axum::Router;
use tokio_util::sync::CancellationToken;

use crate::health::Health;
use crate::metrics::Metrics;

#[derive(Clone)]
struct AdminState {
    health: Arc<Health>,
    metrics: Arc<Metrics>,
}

pub fn router(health: Arc<Health>, metrics: Arc<Metrics>) -> Router {
    Router::new()
        .route("/metrics", get(metrics_text))
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .with_state(AdminState { health, metrics })
}

async fn metrics_text(State(s): State<AdminState>) -> impl IntoResponse {
    s.metrics.ready.set(i64::from(s.health.ready()));
    (
        [(
            header::CONTENT_TYPE,
            fieldcast_service::metrics::CONTENT_TYPE,
        )],
        s.metrics.encode(),
    )
}

async fn readyz(State(s): State<AdminState>) -> impl IntoResponse {
    let h = &s.health;
    let mut body = serde_json::json!({
        "ready": h.ready(),
        "redis": h.redis(),
        "redis_partitions_unreachable": h.partitions_down(),
        "postgres": h.pg(),
        "spool": h.spool(),
    });
    // `"mqtt": bool` or `"nats": bool`: the broker this bridge reads.
    body[h.broker_kind().as_str()] = h.broker().into();
    let body = body.to_string();
    let code = if h.ready() {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (code, [(header::CONTENT_TYPE, "application/json")], body)
}

/// Serves [`router`] on `listener` until `stop`.
pub async fn serve(listener: tokio::net::TcpListener, app: Router, stop: CancellationToken) {
    let r = axum::serve(listener, app)
        .with_graceful_shutdown(async move { stop.cancelled().await })
        .await;
    if let Err(e) = r {
        tracing::error!(error = %e, "admin server failed");
    }
}
