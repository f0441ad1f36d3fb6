//! `/api/geofences`: GeoJSON Features in, the stored canonical Feature out
//! (README, "Geofences and alert rules").
//!
//! Who sees what ([`View`]): an admin token every fence, with its webhook
//! URL; any other token the fences naming no group, plus those with a group
//! holding a device in its scope (`device_groups`), and never a webhook. No
//! answer carries a webhook secret.

use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use fieldcast_geofence::{Fence, FenceId};
use serde_json::Value;

use super::{
    begin, commit, connection, created, json_body, json_text, not_found, path_id, require_admin,
    with_id, FENCE_MAX_BYTES,
};
use crate::auth::{Authed, Scope};
use crate::http::error::ApiError;
use crate::state::AppState;
use crate::store::config::{self, Table, View};

const GEOJSON: &str = "application/geo+json";
const WHAT: &str = "geofence";

fn view(scope: &Scope) -> View {
    if scope.admin {
        View::Admin
    } else {
        View::Reader {
            devices: scope.device_like_patterns(),
        }
    }
}

fn invalid(e: fieldcast_geofence::FenceError) -> ApiError {
    ApiError::BadRequest(e.to_string())
}

/// `GET /api/geofences`: a FeatureCollection of the live fences the token
/// may see, by id.
pub async fn list(State(s): State<AppState>, Authed(scope): Authed) -> Result<Response, ApiError> {
    let mut client = connection(&s).await?;
    let txn = begin(&s, &mut client).await?;
    let features = config::list(&txn, Table::Geofences, &view(&scope)).await?;
    let body = format!(
        "{{\"type\":\"FeatureCollection\",\"features\":{}}}",
        super::json_array(&features)
    );
    Ok(json_text(StatusCode::OK, GEOJSON, body))
}

/// `GET /api/geofences/{id}`: 404 when unknown, deleted or out of sight.
pub async fn get(
    State(s): State<AppState>,
    Authed(scope): Authed,
    Path(raw): Path<String>,
) -> Result<Response, ApiError> {
    let id = path_id(&raw, WHAT)?;
    let mut client = connection(&s).await?;
    let txn = begin(&s, &mut client).await?;
    let feature = config::get(&txn, Table::Geofences, id, &view(&scope))
        .await?
        .ok_or_else(|| not_found(WHAT, &raw))?;
    Ok(json_text(StatusCode::OK, GEOJSON, feature))
}

/// `POST /api/geofences`: 201 with the stored Feature, its `id` the new
/// fence's.
pub async fn create(
    State(s): State<AppState>,
    Authed(scope): Authed,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    require_admin(&scope, "creating a geofence")?;
    let input = json_body(&headers, body, FENCE_MAX_BYTES, true).await?;
    // Validated before any I/O: bad input is a 400 even while PostgreSQL
    // is away, and never touches the table. The id is set once known.
    let fence = Fence::from_feature(FenceId(0), &input).map_err(invalid)?;
    let mut client = connection(&s).await?;
    let txn = begin(&s, &mut client).await?;
    let id = config::next_id(&txn, Table::Geofences).await?;
    let doc = with_id(fence.to_feature(), id);
    let answer = config::insert(&txn, Table::Geofences, id, &doc).await?;
    commit(txn).await?;
    tracing::info!(fence = id, by = %scope.subject, "geofence created");
    Ok(created(GEOJSON, "/api/geofences", id, answer))
}

/// `PUT /api/geofences/{id}`: replaces the whole fence; 200 with it.
pub async fn replace(
    State(s): State<AppState>,
    Authed(scope): Authed,
    Path(raw): Path<String>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    require_admin(&scope, "replacing a geofence")?;
    let id = path_id(&raw, WHAT)?;
    let mut input = json_body(&headers, body, FENCE_MAX_BYTES, true).await?;
    let mut client = connection(&s).await?;
    let txn = begin(&s, &mut client).await?;
    // Locked until commit: two PUTs of one fence apply one after the other.
    let stored = config::lock(&txn, Table::Geofences, id)
        .await?
        .ok_or_else(|| not_found(WHAT, &raw))?;
    keep_secret(&mut input, &stored);
    // `id` > 0 from `path_id`, so the conversion holds; an error on it
    // would only answer 404 again.
    let fence_id = u64::try_from(id).map_err(|_| not_found(WHAT, &raw))?;
    // An invalid fence returns here; dropping the transaction rolls back.
    let fence = Fence::from_feature(FenceId(fence_id), &input).map_err(invalid)?;
    let answer = config::replace(&txn, Table::Geofences, id, &fence.to_feature()).await?;
    commit(txn).await?;
    tracing::info!(fence = id, by = %scope.subject, "geofence replaced");
    Ok(json_text(StatusCode::OK, GEOJSON, answer))
}

/// `DELETE /api/geofences/{id}`: 204; the row stays, marked deleted.
pub async fn delete(
    State(s): State<AppState>,
    Authed(scope): Authed,
    Path(raw): Path<String>,
) -> Result<Response, ApiError> {
    super::soft_delete(&s, &scope, Table::Geofences, &raw, WHAT).await
}

/// Answers never carry a webhook's secret, so a client that PUTs back what
/// it GOT sends `properties.webhook` without one. When the URL is the
/// stored one, the stored secret is kept; a changed URL needs its secret
/// (a 400 names `properties.webhook.secret`), so a secret is never carried
/// over to an endpoint it was not given for.
fn keep_secret(input: &mut Value, stored: &Value) {
    let Some(hook) = input
        .get_mut("properties")
        .and_then(|p| p.get_mut("webhook"))
        .and_then(Value::as_object_mut)
    else {
        return;
    };
    if hook.get("secret").is_some_and(|s| !s.is_null()) {
        return;
    }
    let old = &stored["properties"]["webhook"];
    if old.get("url").is_some() && old.get("url") == hook.get("url") {
        if let Some(secret) = old.get("secret") {
            hook.insert("secret".into(), secret.clone());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn a_put_without_the_secret_keeps_it_only_for_the_same_url() {
        let stored = json!({"properties": {"webhook": {"url": "https://a", "secret": "s"}}});
        let put = |hook: Value| {
            let mut v = json!({"properties": {"name": "n", "webhook": hook}});
            keep_secret(&mut v, &stored);
            v["properties"]["webhook"].clone()
        };
        assert_eq!(
            put(json!({"url": "https://a"})),
            json!({"url": "https://a", "secret": "s"})
        );
        assert_eq!(
            put(json!({"url": "https://a", "secret": null})),
            json!({"url": "https://a", "secret": "s"})
        );
        assert_eq!(
            put(json!({"url": "https://a", "secret": "new"})),
            json!({"url": "https://a", "secret": "new"})
        );
        assert_eq!(
            put(json!({"url": "https://b"})),
            json!({"url": "https://b"})
        );
        let mut none = json!({"properties": {"name": "n"}});
        keep_secret(&mut none, &stored);
        assert_eq!(none, json!({"properties": {"name": "n"}}));
        let mut v = json!({"properties": {"webhook": {"url": "https://a"}}});
        keep_secret(&mut v, &json!({"properties": {}}));
        assert_eq!(v["properties"]["webhook"], json!({"url": "https://a"}));
    }
}
