//! `/api/rules`: alert rules (`fieldcast_core::rule`) in, the stored
//! canonical rule out (README, "Geofences and alert rules").
//!
//! Admin tokens only, reads included: a rule names webhook URLs and says
//! which devices are watched how, which is configuration, not fleet data.
//! No answer carries a webhook secret. There is no PUT: a rule is replaced
//! by creating the new one and deleting the old.

use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use fieldcast_core::rule::Rule;

use super::{
    begin, commit, connection, created, json_array, json_body, json_text, not_found, path_id,
    require_admin, with_id, RULE_MAX_BYTES,
};
use crate::auth::Authed;
use crate::http::error::ApiError;
use crate::state::AppState;
use crate::store::config::{self, Table, View};

const JSON: &str = "application/json";
const WHAT: &str = "rule";

/// `GET /api/rules`: every live rule, by id.
pub async fn list(State(s): State<AppState>, Authed(scope): Authed) -> Result<Response, ApiError> {
    require_admin(&scope, "reading rules")?;
    let mut client = connection(&s).await?;
    let txn = begin(&s, &mut client).await?;
    let rules = config::list(&txn, Table::Rules, &View::Admin).await?;
    Ok(json_text(StatusCode::OK, JSON, json_array(&rules)))
}

/// `GET /api/rules/{id}`: 404 when unknown or deleted.
pub async fn get(
    State(s): State<AppState>,
    Authed(scope): Authed,
    Path(raw): Path<String>,
) -> Result<Response, ApiError> {
    require_admin(&scope, "reading rules")?;
    let id = path_id(&raw, WHAT)?;
    let mut client = connection(&s).await?;
    let txn = begin(&s, &mut client).await?;
    let rule = config::get(&txn, Table::Rules, id, &View::Admin)
        .await?
        .ok_or_else(|| not_found(WHAT, &raw))?;
    Ok(json_text(StatusCode::OK, JSON, rule))
}

/// `POST /api/rules`: 201 with the stored rule and its `id`.
pub async fn create(
    State(s): State<AppState>,
    Authed(scope): Authed,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    require_admin(&scope, "creating a rule")?;
    let input = json_body(&headers, body, RULE_MAX_BYTES, false).await?;
    // Validated before any I/O; the id is set once known.
    let rule = Rule::from_json(0, &input).map_err(|e| ApiError::BadRequest(e.to_string()))?;
    let mut client = connection(&s).await?;
    let txn = begin(&s, &mut client).await?;
    let id = config::next_id(&txn, Table::Rules).await?;
    let answer = config::insert(&txn, Table::Rules, id, &with_id(rule.to_json(), id)).await?;
    commit(txn).await?;
    tracing::info!(rule = id, kind = %rule.kind(), by = %scope.subject, "rule created");
    Ok(created(JSON, "/api/rules", id, answer))
}

/// `DELETE /api/rules/{id}`: 204; the row stays, marked deleted.
pub async fn delete(
    State(s): State<AppState>,
    Authed(scope): Authed,
    Path(raw): Path<String>,
) -> Result<Response, ApiError> {
    super::soft_delete(&s, &scope, Table::Rules, &raw, WHAT).await
}
