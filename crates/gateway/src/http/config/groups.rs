//! `PUT /api/devices/{id}/groups` (issue #16): an admin replaces a
//! device's groups. The body is a JSON list of group names,
//! `["north","night"]` (`[]` = none), each checked by
//! [`crate::live::groups::parse_groups`] before anything is stored.
//!
//! PostgreSQL (`device_groups`) is the authority; once the write commits,
//! this gateway's hub takes the new groups at once (so the answer and the
//! live `groups` frame come before any reload), and every gateway and
//! bridge reloads on the NOTIFY the write sends ([`crate::store::groups`]).

use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::HeaderMap;
use axum::Json;
use fieldcast_core::DeviceId;
use serde_json::{json, Value};

use super::{begin, commit, connection, json_body, require_admin};
use crate::auth::Authed;
use crate::http::error::ApiError;
use crate::live::groups::parse_groups;
use crate::state::AppState;
use crate::store::groups;

/// A list of 32 names of at most 64 bytes is far under this.
const GROUPS_MAX_BYTES: usize = 16 << 10;

/// `PUT /api/devices/{id}/groups`: 200 with `{"device","groups"}`, the
/// groups sorted.
pub async fn put(
    State(s): State<AppState>,
    Authed(scope): Authed,
    Path(id): Path<String>,
    headers: HeaderMap,
    body: Body,
) -> Result<Json<Value>, ApiError> {
    require_admin(&scope, "setting a device's groups")?;
    // A device needs no hot state to be grouped: groups may be set up
    // before it first reports.
    let device =
        DeviceId::parse(&id).map_err(|e| ApiError::BadRequest(format!("device {id:?}: {e}")))?;
    let input = json_body(&headers, body, GROUPS_MAX_BYTES, false).await?;
    let names: Vec<String> = serde_json::from_value(input)
        .map_err(|_| ApiError::BadRequest("the body must be a JSON list of group names".into()))?;
    let list = parse_groups(&names).map_err(|e| ApiError::BadRequest(e.to_string()))?;
    let mut client = connection(&s).await?;
    let txn = begin(&s, &mut client).await?;
    let changed = groups::replace(&txn, &device, &list).await?;
    commit(txn).await?;
    if changed {
        tracing::info!(device = %device, groups = ?list, by = %scope.subject, "device groups set");
    }
    s.hub.set_groups(&device, list.clone().into());
    Ok(Json(json!({"device": device.as_str(), "groups": list})))
}
