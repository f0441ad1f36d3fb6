//! Operator endpoints and the map page: no token needed.

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::{Html, IntoResponse, Response};
use axum::Json;

use super::AppState;
use crate::error::ApiError;

pub async fn healthz() -> &'static str {
    "ok"
}

pub async fn readyz(State(s): State<AppState>) -> Response {
    let (redis, postgres, feed) = s.health.status();
    let status = if redis && postgres && feed {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    let body = serde_json::json!({"ready": status == StatusCode::OK, "redis": redis, "postgres": postgres, "live_feed": feed});
    (status, Json(body)).into_response()
}

pub async fn metrics(State(s): State<AppState>) -> Response {
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        s.prometheus.render(),
    )
        .into_response()
}

/// The live map page is a later issue; this placeholder says where things are.
pub async fn index() -> Html<&'static str> {
    Html(include_str!("index.html"))
}

pub async fn not_found() -> ApiError {
    ApiError::NotFound("no such endpoint".into())
}
