//! `/api/*` (PROTOCOL.md §5): query parameters parsed into types, scope
//! checked, then the hot state (Redis) or the history (PostgreSQL).

use std::sync::Arc;

use axum::body::{Body, Bytes};
use axum::extract::rejection::QueryRejection;
use axum::extract::{Path, Query, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use fieldcast_core::{DeviceId, DeviceState};
use futures::StreamExt;
use serde::Deserialize;
use serde_json::value::RawValue;

use super::AppState;
use crate::auth::{Authed, Scope};
use crate::error::ApiError;
use crate::geo::BBox;
use crate::history::{self, EventCursor, EventsQuery, Point};

/// Default and most rows of one track or events page.
pub const DEFAULT_LIMIT: i64 = 10_000;
pub const MAX_LIMIT: i64 = 100_000;
const DAY_MS: i64 = 24 * 3600 * 1000;

fn query<T>(q: Result<Query<T>, QueryRejection>) -> Result<T, ApiError> {
    q.map(|Query(t)| t)
        .map_err(|e| ApiError::BadRequest(e.body_text()))
}

#[derive(Deserialize)]
pub struct DevicesParams {
    bbox: Option<String>,
}

/// `GET /api/devices[?bbox=]`: the hot state, scope-filtered.
pub async fn devices(
    State(s): State<AppState>,
    Authed(scope): Authed,
    q: Result<Query<DevicesParams>, QueryRejection>,
) -> Result<Json<Vec<DeviceState>>, ApiError> {
    let p = query(q)?;
    let bbox = p
        .bbox
        .map(|b| BBox::parse_query(&b))
        .transpose()
        .map_err(|e| ApiError::BadRequest(e.to_string()))?;
    let ids = match &bbox {
        Some(b) => s.store.bbox_candidates(b).await,
        None => s.store.fleet().await,
    }
    .map_err(ApiError::redis)?;
    let mut ids: Vec<String> = ids.into_iter().filter(|d| scope.allows_device(d)).collect();
    ids.sort();
    ids.dedup();
    let snaps = s.store.states(&ids).await.map_err(ApiError::redis)?;
    let states = snaps
        .into_iter()
        .map(|s| s.state)
        .filter(|st| match (&bbox, st.lon, st.lat) {
            (None, _, _) => true,
            (Some(b), Some(lon), Some(lat)) => b.contains(lon, lat),
            _ => false,
        })
        .collect();
    Ok(Json(states))
}

/// A device id from the path that is in the caller's scope, else 404.
fn scoped_device(id: &str, scope: &Scope) -> Result<DeviceId, ApiError> {
    match DeviceId::parse(id) {
        Ok(d) if scope.allows_device(d.as_str()) => Ok(d),
        _ => Err(ApiError::NotFound(format!("no device {id:?}"))),
    }
}

/// `GET /api/devices/{id}`.
pub async fn device(
    State(s): State<AppState>,
    Authed(scope): Authed,
    Path(id): Path<String>,
) -> Result<Json<DeviceState>, ApiError> {
    let d = scoped_device(&id, &scope)?;
    let snaps = s
        .store
        .states(&[d.to_string()])
        .await
        .map_err(ApiError::redis)?;
    snaps
        .into_iter()
        .next()
        .map(|s| Json(s.state))
        .ok_or_else(|| ApiError::NotFound(format!("no device {id:?}")))
}

#[derive(Deserialize)]
pub struct TrackParams {
    from: Option<String>,
    to: Option<String>,
    limit: Option<String>,
    format: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Format {
    Json,
    GeoJson,
    Csv,
}

/// `[from, to)` with the defaults of §5 (the last 24 h).
fn window(from: Option<&str>, to: Option<&str>) -> Result<(i64, i64), ApiError> {
    let parse = |name: &str, v: &str| {
        fieldcast_core::time::parse_ms_or_rfc3339(v)
            .ok_or_else(|| ApiError::BadRequest(format!("{name} must be epoch ms or RFC 3339")))
    };
    let to = match to {
        Some(v) => parse("to", v)?,
        None => fieldcast_core::time::now_ms(),
    };
    let from = match from {
        Some(v) => parse("from", v)?,
        None => to - DAY_MS,
    };
    if from > to {
        return Err(ApiError::BadRequest("from must not be after to".into()));
    }
    Ok((from, to))
}

fn limit(v: Option<&str>) -> Result<i64, ApiError> {
    let Some(v) = v else { return Ok(DEFAULT_LIMIT) };
    match v.parse::<i64>() {
        Ok(n) if (1..=MAX_LIMIT).contains(&n) => Ok(n),
        _ => Err(ApiError::BadRequest(format!(
            "limit must be 1..{MAX_LIMIT}"
        ))),
    }
}

/// `GET /api/devices/{id}/track`: streamed from PostgreSQL, never whole
/// in memory (geojson keeps one timestamp per point until the end).
pub async fn track(
    State(s): State<AppState>,
    Authed(scope): Authed,
    Path(id): Path<String>,
    q: Result<Query<TrackParams>, QueryRejection>,
) -> Result<Response, ApiError> {
    let p = query(q)?;
    let d = scoped_device(&id, &scope)?;
    let (from, to) = window(p.from.as_deref(), p.to.as_deref())?;
    let limit = limit(p.limit.as_deref())?;
    let format = match p.format.as_deref() {
        None | Some("json") => Format::Json,
        Some("geojson") => Format::GeoJson,
        Some("csv") => Format::Csv,
        Some(_) => {
            return Err(ApiError::BadRequest(
                "format must be json, geojson or csv".into(),
            ))
        }
    };
    let next_header = if format == Format::Csv {
        history::track_next(&s.pg, d.as_str(), from, to, limit)
            .await
            .map_err(ApiError::postgres)?
    } else {
        None
    };
    let rows = history::track(&s.pg, d.as_str(), from, to, limit)
        .await
        .map_err(ApiError::postgres)?;
    let enc = TrackEncoder {
        format,
        device: Arc::from(d.as_str()),
        limit: limit as usize,
        n: 0,
        next: None,
        times: Vec::new(),
    };
    let stream = track_body(enc, rows);
    let content_type = match format {
        Format::Json => "application/json",
        Format::GeoJson => "application/geo+json",
        Format::Csv => "text/csv; charset=utf-8",
    };
    let mut resp = (
        StatusCode::OK,
        [(header::CONTENT_TYPE, content_type)],
        Body::from_stream(stream),
    )
        .into_response();
    if let Some(next) = next_header.and_then(|n| HeaderValue::from_str(&n.to_string()).ok()) {
        resp.headers_mut().insert("fieldcast-next", next);
    }
    Ok(resp)
}

/// Writes a track as json, geojson or csv, one chunk of rows at a time.
struct TrackEncoder {
    format: Format,
    device: Arc<str>,
    limit: usize,
    /// Rows seen so far (the one past `limit` only sets `next`).
    n: usize,
    next: Option<i64>,
    /// geojson's `properties.times`, written after the coordinates.
    times: Vec<i64>,
}

fn opt(v: Option<f64>) -> String {
    v.map(|v| v.to_string()).unwrap_or_default()
}

impl TrackEncoder {
    fn device_json(&self) -> String {
        serde_json::to_string(&*self.device).unwrap_or_default()
    }

    fn head(&self) -> String {
        match self.format {
            Format::Json => format!("{{\"device\":{},\"points\":[", self.device_json()),
            Format::GeoJson => "{\"type\":\"FeatureCollection\",\"features\":[{\"type\":\"Feature\",\"geometry\":{\"type\":\"LineString\",\"coordinates\":[".to_owned(),
            Format::Csv => "ts,lat,lon,alt,speed,heading,accuracy\n".to_owned(),
        }
    }

    fn point(&mut self, p: &Point, out: &mut String) {
        use std::fmt::Write;
        self.n += 1;
        if self.n > self.limit {
            self.next = Some(p.ts);
            return;
        }
        let sep = if self.n > 1 { "," } else { "" };
        match self.format {
            Format::Json => {
                out.push_str(sep);
                out.push_str(&serde_json::to_string(p).unwrap_or_default());
            }
            Format::GeoJson => {
                // serde_json writes the shortest text that parses back exactly.
                out.push_str(sep);
                out.push_str(&serde_json::to_string(&[p.lon, p.lat]).unwrap_or_default());
                self.times.push(p.ts);
            }
            Format::Csv => {
                let _ = writeln!(
                    out,
                    "{},{},{},{},{},{},{}",
                    fieldcast_core::time::format_rfc3339_ms(p.ts),
                    p.lat,
                    p.lon,
                    opt(p.alt),
                    opt(p.speed),
                    opt(p.heading),
                    opt(p.accuracy)
                );
            }
        }
    }

    fn tail(&mut self) -> String {
        let next = self.next.map_or("null".to_owned(), |n| n.to_string());
        match self.format {
            Format::Json => format!("],\"next\":{next}}}"),
            Format::GeoJson => {
                let times: Vec<String> = self.times.iter().map(|t| t.to_string()).collect();
                format!(
                    "]}},\"properties\":{{\"device\":{},\"times\":[{}]}}}}],\"next\":{next}}}",
                    self.device_json(),
                    times.join(",")
                )
            }
            Format::Csv => String::new(),
        }
    }
}

enum Phase {
    Head,
    Rows,
    Done,
}

fn track_body(
    enc: TrackEncoder,
    rows: std::pin::Pin<
        Box<dyn futures::Stream<Item = Result<Point, history::HistoryError>> + Send>,
    >,
) -> impl futures::Stream<Item = Result<Bytes, std::io::Error>> + Send {
    let chunks = rows.ready_chunks(512);
    futures::stream::unfold(
        (enc, chunks, Phase::Head),
        |(mut enc, mut chunks, phase)| async move {
            match phase {
                Phase::Head => {
                    let head = enc.head();
                    Some((Ok(Bytes::from(head)), (enc, chunks, Phase::Rows)))
                }
                Phase::Rows => match chunks.next().await {
                    Some(batch) => {
                        let mut out = String::with_capacity(batch.len() * 96);
                        for row in batch {
                            match row {
                                Ok(p) => enc.point(&p, &mut out),
                                Err(e) => {
                                    tracing::warn!(error = %e, "track stream failed");
                                    return Some((
                                        Err(std::io::Error::other(e)),
                                        (enc, chunks, Phase::Done),
                                    ));
                                }
                            }
                        }
                        Some((Ok(Bytes::from(out)), (enc, chunks, Phase::Rows)))
                    }
                    None => {
                        let tail = enc.tail();
                        Some((Ok(Bytes::from(tail)), (enc, chunks, Phase::Done)))
                    }
                },
                Phase::Done => None,
            }
        },
    )
}

#[derive(Deserialize)]
pub struct EventsParams {
    device: Option<String>,
    kind: Option<String>,
    from: Option<String>,
    to: Option<String>,
    limit: Option<String>,
    cursor: Option<String>,
}

/// `GET /api/events`: oldest first, `next` an opaque cursor.
pub async fn events(
    State(s): State<AppState>,
    Authed(scope): Authed,
    q: Result<Query<EventsParams>, QueryRejection>,
) -> Result<Response, ApiError> {
    let p = query(q)?;
    let (from, to) = window(p.from.as_deref(), p.to.as_deref())?;
    let limit = limit(p.limit.as_deref())?;
    let after = p
        .cursor
        .as_deref()
        .filter(|c| !c.is_empty())
        .map(|c| {
            EventCursor::decode(c).ok_or_else(|| ApiError::BadRequest("malformed cursor".into()))
        })
        .transpose()?;
    if let Some(d) = &p.device {
        if DeviceId::validate(d).is_err() || !scope.allows_device(d) {
            // Out of scope reads as "no events", exactly like an unknown device.
            return Ok(Json(serde_json::json!({"events": [], "next": null})).into_response());
        }
    }
    let q = EventsQuery {
        device: p.device,
        kind: p.kind,
        from,
        to,
        limit,
        after,
        scope: scope.device_like_patterns(),
    };
    let (events, next) = history::events(&s.pg, &q)
        .await
        .map_err(ApiError::postgres)?;
    #[derive(serde::Serialize)]
    struct Page {
        events: Vec<history::StoredEvent>,
        next: Option<String>,
    }
    Ok(Json(Page {
        events,
        next: next.map(|c| c.encode()),
    })
    .into_response())
}

#[derive(Deserialize)]
struct PublishBody<'a> {
    channel: String,
    #[serde(borrow)]
    data: Option<&'a RawValue>,
}

/// `POST /api/publish`: needs the `publish` claim; fans out through Redis
/// so every gateway instance delivers it.
pub async fn publish(
    State(s): State<AppState>,
    Authed(scope): Authed,
    body: Bytes,
) -> Result<Response, ApiError> {
    if !scope.publish {
        return Err(ApiError::Forbidden("the token has no publish right".into()));
    }
    let b: PublishBody = serde_json::from_slice(&body)
        .map_err(|e| ApiError::BadRequest(format!("body must be {{\"channel\",\"data\"}}: {e}")))?;
    if b.channel.is_empty() || b.channel.len() > 256 {
        return Err(ApiError::BadRequest("channel must be 1..256 bytes".into()));
    }
    #[derive(serde::Serialize)]
    struct PushOut<'a> {
        channel: &'a str,
        data: &'a RawValue,
    }
    let payload = serde_json::to_string(&PushOut {
        channel: &b.channel,
        data: b.data.unwrap_or(RawValue::NULL),
    })
    .map_err(|e| ApiError::BadRequest(e.to_string()))?;
    s.store
        .publish_push(payload)
        .await
        .map_err(ApiError::redis)?;
    Ok((
        StatusCode::ACCEPTED,
        Json(serde_json::json!({"accepted": true})),
    )
        .into_response())
}
