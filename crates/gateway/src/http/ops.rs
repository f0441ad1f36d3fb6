//! Operator endpoints: no token needed.

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;

use crate::http::error::ApiError;
use crate::state::AppState;

pub async fn healthz() -> &'static str {
    "ok"
}

pub async fn readyz(State(s): State<AppState>) -> Response {
    let (redis, postgres, feed) = s.health.status();
    let draining = s.health.draining();
    let token_keys = s.health.token_keys();
    let status = if redis && postgres && feed && token_keys && !draining {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    let body = serde_json::json!({
        "ready": status == StatusCode::OK,
        "redis": redis,
        "redis_partitions_unreachable": s.health.partitions_down(),
        "postgres": postgres,
        "live_feed": feed,
        "draining": draining,
        "token_keys": token_keys,
    });
    (status, Json(body)).into_response()
}

/// Prometheus' scrape: the OpenMetrics text prometheus-client writes (it
/// ends with `# EOF`), labelled as such; Prometheus prefers it among the
/// text formats.
pub async fn metrics(State(s): State<AppState>) -> Response {
    // Read at scrape time, like the bridge's: always the current answer.
    s.metrics.ready.set(i64::from(s.health.ready()));
    (
        [(
            header::CONTENT_TYPE,
            fieldcast_service::metrics::CONTENT_TYPE,
        )],
        s.metrics.encode(),
    )
        .into_response()
}

/// The OpenAPI 3.1 description of `/api/*` and these endpoints, embedded
/// from `docs/openapi.json` so that a binary always serves the description
/// of itself; `scripts/api-test.sh` checks it against a running gateway
/// with schemathesis. Public like `/`: it describes the API, not the fleet.
const OPENAPI: &str = include_str!(concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../../docs/openapi.json"
));

pub async fn openapi() -> Response {
    (
        [
            (header::CONTENT_TYPE, "application/json"),
            (header::CACHE_CONTROL, "no-cache"),
        ],
        OPENAPI,
    )
        .into_response()
}

pub async fn not_found() -> ApiError {
    ApiError::NotFound("no such endpoint".into())
}
