//! `GET /ws`: token and Origin checked before the upgrade, then one tracked
//! task per socket ([`connection`]) speaking the frames of [`protocol`].

pub mod connection;
pub mod protocol;

use axum::extract::{State, WebSocketUpgrade};
use axum::http::{header, HeaderMap};
use axum::response::{IntoResponse, Response};

use crate::auth::Authed;
use crate::error::ApiError;
use crate::routes::AppState;

pub async fn upgrade(
    State(s): State<AppState>,
    Authed(scope): Authed,
    headers: HeaderMap,
    ws: WebSocketUpgrade,
) -> Result<Response, ApiError> {
    if !s.allowed_origins.is_empty() {
        let origin = headers.get(header::ORIGIN).and_then(|o| o.to_str().ok());
        if !origin.is_some_and(|o| s.allowed_origins.iter().any(|a| a == o)) {
            return Err(ApiError::Forbidden("origin not allowed".into()));
        }
    }
    let ctx = connection::Ctx {
        hub: s.hub.clone(),
        store: s.store.clone(),
        limits: s.limits,
        shutdown: s.shutdown.clone(),
    };
    let tracker = s.tracker.clone();
    Ok(ws
        .max_message_size(s.max_frame)
        .max_frame_size(s.max_frame)
        .on_upgrade(move |socket| tracker.track_future(connection::run(socket, scope, ctx)))
        .into_response())
}
