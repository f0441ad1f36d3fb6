//! The configuration API of issue #15: `/api/geofences` ([`fences`]) and
//! `/api/rules` ([`rules`]), over the tables of
//! `migrations/0002_geofences.sql` ([`crate::store::config`]); and of
//! issue #16, `PUT /api/devices/{id}/groups` ([`groups`]).
//!
//! Writes need the `admin: true` claim (403 otherwise). A write's body is
//! checked in this order, each step before anything is stored: the type
//! (`application/json`, 415), the size (413), JSON (400), the model's own
//! validation (`fieldcast_geofence::Fence`, `fieldcast_core::rule::Rule`;
//! 400 naming the field). Tables missing (no bridge has migrated this
//! database yet) are a 503 saying so.

pub mod fences;
pub mod groups;
pub mod rules;

use axum::body::Body;
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use deadpool_postgres::{Object, Transaction};
use serde_json::Value;

use crate::auth::Scope;
use crate::http::api::{is_json, read_body};
use crate::http::error::ApiError;
use crate::state::AppState;
use crate::store::config::{self, ConfigError};

/// Largest fence body: a polygon at `fieldcast_geofence::MAX_VERTICES`
/// (10 000 positions) with full-precision coordinates is ~450 KB.
pub const FENCE_MAX_BYTES: usize = 1 << 20;
/// Largest rule body: a rule at its limits (1 000 device patterns) is
/// well under this.
pub const RULE_MAX_BYTES: usize = 256 << 10;

/// 403 unless the token has `admin: true`.
fn require_admin(scope: &Scope, action: &str) -> Result<(), ApiError> {
    if scope.admin {
        Ok(())
    } else {
        Err(ApiError::Forbidden(format!(
            "{action} needs a token with the claim admin: true"
        )))
    }
}

/// The body as JSON: only `application/json` (or, with `geo`,
/// `application/geo+json`) is taken, for the reason `/api/publish` gives
/// (a page of another site can send `text/plain` without a preflight, with
/// a `?token=` it found), at most `max` bytes.
async fn json_body(
    headers: &HeaderMap,
    body: Body,
    max: usize,
    geo: bool,
) -> Result<Value, ApiError> {
    let geo_json = || {
        headers
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.split(';').next())
            .is_some_and(|e| e.trim().eq_ignore_ascii_case("application/geo+json"))
    };
    if !(is_json(headers) || (geo && geo_json())) {
        return Err(ApiError::UnsupportedMediaType(if geo {
            "the body must be sent as Content-Type: application/json or application/geo+json".into()
        } else {
            "the body must be sent as Content-Type: application/json".into()
        }));
    }
    let bytes = read_body(headers, body, max).await?;
    serde_json::from_slice(&bytes)
        .map_err(|e| ApiError::BadRequest(format!("the body is not valid JSON: {e}")))
}

/// The id of `/{id}`; anything but a positive integer names nothing (404,
/// as an unknown id).
fn path_id(raw: &str, what: &str) -> Result<i64, ApiError> {
    raw.parse::<i64>()
        .ok()
        .filter(|id| *id > 0)
        .ok_or_else(|| not_found(what, raw))
}

fn not_found(what: &str, raw: &str) -> ApiError {
    ApiError::NotFound(format!("no {what} {raw:?}"))
}

/// `doc` (an object, as `to_feature`/`to_json` make it) with its `id`.
fn with_id(mut doc: Value, id: i64) -> Value {
    if let Some(m) = doc.as_object_mut() {
        m.insert("id".into(), id.into());
    }
    doc
}

impl From<ConfigError> for ApiError {
    fn from(e: ConfigError) -> Self {
        if e.is_schema_missing() {
            ApiError::SchemaMissing(
                "the geofence and rule tables do not exist in this database yet: start \
                 fieldcast-bridge once against it (it applies migrations/), then retry"
                    .into(),
            )
        } else if e.is_timeout() {
            ApiError::Timeout("the configuration query took too long; retry".into())
        } else {
            ApiError::postgres(e)
        }
    }
}

/// A pooled connection for one request.
async fn connection(s: &AppState) -> Result<Object, ApiError> {
    Ok(s.pg.get().await.map_err(ConfigError::from)?)
}

/// Its transaction; dropped without [`commit`], it rolls back.
async fn begin<'a>(s: &AppState, client: &'a mut Object) -> Result<Transaction<'a>, ApiError> {
    Ok(config::begin(client, &s.history_limits).await?)
}

async fn commit(txn: Transaction<'_>) -> Result<(), ApiError> {
    Ok(txn.commit().await.map_err(ConfigError::from)?)
}

/// A JSON answer already encoded (PostgreSQL wrote the text).
fn json_text(status: StatusCode, content_type: &'static str, body: String) -> Response {
    (status, [(header::CONTENT_TYPE, content_type)], body).into_response()
}

/// 201 with the stored document and `Location: <collection>/<id>`.
fn created(content_type: &'static str, collection: &str, id: i64, body: String) -> Response {
    let mut resp = json_text(StatusCode::CREATED, content_type, body);
    if let Ok(v) = HeaderValue::from_str(&format!("{collection}/{id}")) {
        resp.headers_mut().insert(header::LOCATION, v);
    }
    resp
}

/// `[a,b,...]` from encoded elements.
/// `DELETE` of a fence or a rule (`what`, in `table`): admin only, 404 for
/// an unknown or deleted id (nothing written), else the row is marked
/// deleted and kept; 204.
async fn soft_delete(
    s: &AppState,
    scope: &Scope,
    table: config::Table,
    raw: &str,
    what: &str,
) -> Result<Response, ApiError> {
    require_admin(scope, &format!("deleting a {what}"))?;
    let id = path_id(raw, what)?;
    let mut client = connection(s).await?;
    let txn = begin(s, &mut client).await?;
    config::lock(&txn, table, id)
        .await?
        .ok_or_else(|| not_found(what, raw))?;
    config::soft_delete(&txn, table, id).await?;
    commit(txn).await?;
    tracing::info!(id, by = %scope.subject, "{what} deleted");
    Ok(StatusCode::NO_CONTENT.into_response())
}

fn json_array(items: &[String]) -> String {
    let mut out = String::with_capacity(items.iter().map(|i| i.len() + 1).sum::<usize>() + 2);
    out.push('[');
    out.push_str(&items.join(","));
    out.push(']');
    out
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use serde_json::json;

    #[test]
    fn path_ids_are_positive_integers() {
        assert_eq!(path_id("42", "geofence").unwrap(), 42);
        for bad in ["0", "-1", "x", "1.5", "99999999999999999999", ""] {
            assert_eq!(path_id(bad, "geofence").unwrap_err().status(), 404, "{bad}");
        }
    }

    #[test]
    fn ids_and_arrays() {
        assert_eq!(
            with_id(json!({"id": 0, "a": 1}), 7),
            json!({"id": 7, "a": 1})
        );
        assert_eq!(json_array(&[]), "[]");
        assert_eq!(json_array(&["{}".into(), "1".into()]), "[{},1]");
    }
}
