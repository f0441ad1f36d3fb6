//! `GET /ws`: token (and, in `routes`, Origin) checked before the upgrade, then one tracked
//! task per socket ([`connection`]) speaking the frames of [`protocol`].

pub mod connection;
pub mod protocol;

use axum::extract::{State, WebSocketUpgrade};

use axum::response::{IntoResponse, Response};

use crate::auth::Authed;
use crate::http::error::ApiError;
use crate::state::AppState;

/// Initial read buffer of a socket (bytes); it grows for larger frames.
/// Client commands are a few hundred bytes; every idle connection pays it.
const READ_BUFFER: usize = 1024;
/// Bytes buffered before tungstenite writes to the socket.
const WRITE_BUFFER: usize = 16 * 1024;

pub async fn upgrade(
    State(s): State<AppState>,
    Authed(scope): Authed,
    ws: WebSocketUpgrade,
) -> Result<Response, ApiError> {
    let ctx = connection::Ctx {
        hub: s.hub.clone(),
        store: s.store.clone(),
        health: s.health.clone(),
        snapshots: s.snapshots.clone(),
        limits: s.limits,
        metrics: s.metrics.clone(),
        sent: s.sent.clone(),
        shutdown: s.shutdown.clone(),
    };
    let tracker = s.tracker.clone();
    // tungstenite allocates its read buffer (128 KiB by default) and write
    // buffer per socket up front: ~150 KiB for each idle connection. Client
    // frames are small; outgoing frames are batched by our writer and grow
    // the write buffer on demand.
    Ok(ws
        .read_buffer_size(READ_BUFFER)
        .write_buffer_size(WRITE_BUFFER)
        .max_message_size(s.max_frame)
        .max_frame_size(s.max_frame)
        .on_upgrade(move |socket| tracker.track_future(connection::run(socket, scope, ctx)))
        .into_response())
}
