//! The HTTP surface: `/ws` (upgrade, in [`crate::ws`]), `/api/*`
//! ([`api`]; trips, stops, the summary and `?at=` in [`reports`];
//! geofences, alert rules and device groups in [`config`]), the
//! unauthenticated `/healthz`, `/readyz`, `/metrics` and `/api/openapi.json`
//! ([`ops`]), the map page `/`, `/assets/*`, `/config.json` ([`assets`]) and
//! its map tiles `/tiles/{z}/{x}/{y}` ([`tiles`]); errors in one shape
//! ([`error`]).

pub mod api;
pub mod assets;
pub mod config;
pub mod error;
pub mod ops;
pub mod reports;
pub mod tiles;

use axum::extract::{Request, State};
use axum::http::{header, HeaderMap};
use axum::middleware::Next;
use axum::response::Response;
use axum::routing::{get, post, put};

use self::config::{fences, groups, rules};
use axum::Router;

use crate::http::error::ApiError;
use crate::state::AppState;

pub fn router(state: AppState) -> Router {
    // What a browser page of another site could use with the operator's
    // network position: guarded by the Origin rule.
    let guarded = Router::new()
        .route("/ws", get(crate::ws::upgrade))
        .route("/api/devices", get(api::devices))
        .route("/api/devices/{id}", get(api::device))
        .route("/api/devices/{id}/track", get(api::track))
        .route("/api/devices/{id}/trips", get(reports::trips))
        .route("/api/devices/{id}/stops", get(reports::stops))
        .route("/api/reports/summary", get(reports::summary))
        .route("/api/devices/{id}/groups", put(groups::put))
        .route("/api/events", get(api::events))
        .route("/api/publish", post(api::publish))
        .route("/api/geofences", get(fences::list).post(fences::create))
        .route(
            "/api/geofences/{id}",
            get(fences::get).put(fences::replace).delete(fences::delete),
        )
        .route("/api/rules", get(rules::list).post(rules::create))
        .route("/api/rules/{id}", get(rules::get).delete(rules::delete))
        .route_layer(axum::middleware::from_fn_with_state(
            state.clone(),
            check_origin,
        ));
    Router::new()
        .route("/", get(assets::index))
        .route("/assets/{file}", get(assets::asset))
        .route("/config.json", get(assets::config))
        // Public like the page: the street map says nothing about the
        // fleet, and the map loads tiles as plain <img>/fetch GETs that
        // carry no token, so neither a token nor the Origin rule can guard
        // them (another site showing the same street map costs nothing).
        .route("/tiles/{z}/{x}/{y}", get(crate::http::tiles::tile))
        .route("/healthz", get(ops::healthz))
        .route("/readyz", get(ops::readyz))
        .route("/metrics", get(ops::metrics))
        .route("/api/openapi.json", get(ops::openapi))
        .merge(guarded)
        .fallback(ops::not_found)
        .with_state(state)
}

/// The Origin rule for `/ws` and `/api/*`. A request without `Origin` is
/// not from a browser page (or is a same-origin GET) and passes; the token
/// is its guard. With `FIELDCAST_ALLOWED_ORIGINS` only those origins pass.
/// Without it, tokens guard everything, except under `--auth none`, where
/// only the gateway's own origin passes: any page the operator visits could
/// otherwise open `ws://127.0.0.1:8080/ws` and read the fleet.
async fn check_origin(
    State(s): State<AppState>,
    headers: HeaderMap,
    req: Request,
    next: Next,
) -> Result<Response, ApiError> {
    let Some(origin) = headers.get(header::ORIGIN) else {
        return Ok(next.run(req).await);
    };
    let origin = origin.to_str().unwrap_or_default();
    let allowed = if !s.allowed_origins.is_empty() {
        s.allowed_origins.iter().any(|a| a == origin)
    } else if s.open {
        let host = headers
            .get(header::HOST)
            .and_then(|h| h.to_str().ok())
            .unwrap_or_default();
        same_origin(origin, host)
    } else {
        true
    };
    if allowed {
        Ok(next.run(req).await)
    } else {
        Err(ApiError::Forbidden(format!(
            "origin {origin} is not allowed (FIELDCAST_ALLOWED_ORIGINS)"
        )))
    }
}

/// `origin` (`scheme://host[:port]`) names the host the request was sent to.
fn same_origin(origin: &str, host: &str) -> bool {
    let rest = origin
        .strip_prefix("http://")
        .or_else(|| origin.strip_prefix("https://"));
    !host.is_empty() && rest.is_some_and(|r| r.eq_ignore_ascii_case(host))
}

#[cfg(test)]
mod tests {
    use super::same_origin;

    #[test]
    fn own_origin_is_scheme_plus_the_host_header() {
        assert!(same_origin("http://127.0.0.1:8080", "127.0.0.1:8080"));
        assert!(same_origin("https://Map.Example", "map.example"));
        assert!(!same_origin("http://evil.example", "127.0.0.1:8080"));
        assert!(!same_origin("http://127.0.0.1:8080.evil", "127.0.0.1:8080"));
        assert!(!same_origin("null", "127.0.0.1:8080"));
        assert!(!same_origin("http://127.0.0.1:8080", ""));
    }
}
