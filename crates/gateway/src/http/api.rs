//! `/api/*` (PROTOCOL.md §5): query parameters parsed into types, scope
//! checked, then the hot state (Redis) or the history (PostgreSQL).
//!
//! History responses (track, events) are streamed: a task of their own
//! ([`stream`]) holds one slot of `FIELDCAST_HISTORY_CONCURRENCY` (429
//! past it) and one pooled connection, reads the rows chunk by chunk and
//! hands encoded chunks to the response body through a one-chunk channel.
//! A client that does not take the next chunk within the send timeout is
//! cut: the task ends the transaction and gives the connection back, and
//! the body ends with an error, so the client sees a truncated transfer,
//! never a short page that looks complete.

use axum::body::{Body, Bytes};
use axum::extract::rejection::QueryRejection;
use axum::extract::{Path, Query, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use deadpool_postgres::{Object, Transaction};
use fieldcast_core::{DeviceId, DeviceState, Location};
use futures::StreamExt;
use serde::Deserialize;
use serde_json::value::RawValue;
use tokio::sync::{mpsc, oneshot, OwnedSemaphorePermit};

use crate::auth::{Authed, Scope};
use crate::http::error::ApiError;
use crate::http::reports;
use crate::live::groups::Memberships;
use crate::state::AppState;
use crate::store::history::{
    self, EventCursor, EventRow, EventsQuery, HistoryError, TrackQuery, CHUNK_ROWS,
};
use crate::track::simplify::Simplifier;
use fieldcast_core::geo::BBox;

/// Default and most rows of one track or events page.
pub const DEFAULT_LIMIT: i64 = 10_000;
pub const MAX_LIMIT: i64 = 100_000;
const DAY_MS: i64 = 24 * 3600 * 1000;

pub(crate) fn query<T>(q: Result<Query<T>, QueryRejection>) -> Result<T, ApiError> {
    q.map(|Query(t)| t)
        .map_err(|e| ApiError::BadRequest(e.body_text()))
}

#[derive(Deserialize)]
pub struct DevicesParams {
    bbox: Option<String>,
    group: Option<String>,
    /// An instant: answer from history instead ([`reports::devices_at`]).
    at: Option<String>,
}

/// `GET /api/devices[?bbox=][&group=]`: the hot state, scope-filtered;
/// `group` keeps the devices in that group. With `?at=`, every device's
/// last position at that instant, from history.
pub async fn devices(
    State(s): State<AppState>,
    Authed(scope): Authed,
    q: Result<Query<DevicesParams>, QueryRejection>,
) -> Result<Json<Vec<DeviceState>>, ApiError> {
    let p = query(q)?;
    if let Some(at) = p.at.as_deref() {
        return reports::devices_at(&s, &scope, at, p.bbox.as_deref(), p.group.as_deref())
            .await
            .map(Json);
    }
    let bbox = p
        .bbox
        .map(|b| BBox::parse_query(&b))
        .transpose()
        .map_err(|e| ApiError::BadRequest(e.to_string()))?;
    let group = p
        .group
        .map(|g| crate::live::groups::parse_group(&g))
        .transpose()
        .map_err(|e| ApiError::BadRequest(e.to_string()))?;
    let members = s.hub.memberships();
    let ids = match &bbox {
        Some(b) => s.store.bbox_candidates(b).await,
        None => s.store.fleet().await,
    }
    .map_err(ApiError::redis)?;
    let mut ids: Vec<String> = ids
        .into_iter()
        .filter(|d| {
            let groups = members.of(d);
            scope.allows_device(d, groups) && group.as_ref().is_none_or(|g| groups.contains(g))
        })
        .collect();
    ids.sort();
    ids.dedup();
    let snaps = s.store.states(&ids).await.map_err(ApiError::redis)?;
    let states = snaps
        .into_iter()
        .map(|s| with_groups(s.state, &members))
        .filter(|st| match (&bbox, st.lon, st.lat) {
            (None, _, _) => true,
            (Some(b), Some(lon), Some(lat)) => b.contains(lon, lat),
            _ => false,
        })
        .collect();
    Ok(Json(states))
}

/// `state` with its groups as the hub holds them.
fn with_groups(mut state: DeviceState, members: &Memberships) -> DeviceState {
    state.groups = members.names_of(&state.device);
    state
}

/// Whether `device` is in `scope`, by name or by its groups now.
fn in_scope(s: &AppState, scope: &Scope, device: &DeviceId) -> bool {
    scope.allows_device(device.as_str(), s.hub.memberships().of(device.as_str()))
}

/// A device id from the path that is in the caller's scope, else 404.
pub(crate) fn scoped_device(s: &AppState, id: &str, scope: &Scope) -> Result<DeviceId, ApiError> {
    match DeviceId::parse(id) {
        Ok(d) if in_scope(s, scope, &d) => Ok(d),
        _ => Err(ApiError::NotFound(format!("no device {id:?}"))),
    }
}

/// `GET /api/devices/{id}`.
pub async fn device(
    State(s): State<AppState>,
    Authed(scope): Authed,
    Path(id): Path<String>,
) -> Result<Json<DeviceState>, ApiError> {
    let d = scoped_device(&s, &id, &scope)?;
    let snaps = s
        .store
        .states(&[d.to_string()])
        .await
        .map_err(ApiError::redis)?;
    snaps
        .into_iter()
        .next()
        .map(|st| Json(with_groups(st.state, &s.hub.memberships())))
        .ok_or_else(|| ApiError::NotFound(format!("no device {id:?}")))
}

#[derive(Deserialize)]
pub struct TrackParams {
    from: Option<String>,
    to: Option<String>,
    limit: Option<String>,
    format: Option<String>,
    /// Douglas–Peucker tolerance, metres.
    simplify: Option<String>,
    /// One fix per bucket: a humantime duration (`5m`) or milliseconds.
    bucket: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Format {
    Json,
    GeoJson,
    Csv,
}

/// The instants that both RFC 3339 and PostgreSQL's `timestamptz` hold
/// (years 1 to 9999, UTC): a time outside is the caller's mistake, a 400,
/// where PostgreSQL would fail the statement.
const MIN_MS: i64 = -62_135_596_800_000;
const MAX_MS: i64 = 253_402_300_799_999;

/// An instant of a query (`name=` epoch ms or RFC 3339), within
/// [`MIN_MS`]..=[`MAX_MS`].
pub(crate) fn instant(name: &str, v: &str) -> Result<i64, ApiError> {
    fieldcast_core::time::parse_ms_or_rfc3339(v)
        .filter(|ms| (MIN_MS..=MAX_MS).contains(ms))
        .ok_or_else(|| {
            ApiError::BadRequest(format!(
                "{name} must be epoch ms or RFC 3339, within the years 1 to 9999"
            ))
        })
}

/// `[from, to)` with the defaults of §5 (the last 24 h).
pub(crate) fn window(from: Option<&str>, to: Option<&str>) -> Result<(i64, i64), ApiError> {
    let to = match to {
        Some(v) => instant("to", v)?,
        None => fieldcast_core::time::now_ms(),
    };
    let from = match from {
        Some(v) => instant("from", v)?,
        None => (to - DAY_MS).max(MIN_MS),
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

/// `format=` of the history endpoints.
pub(crate) fn format(v: Option<&str>) -> Result<Format, ApiError> {
    match v {
        None | Some("json") => Ok(Format::Json),
        Some("geojson") => Ok(Format::GeoJson),
        Some("csv") => Ok(Format::Csv),
        Some(_) => Err(ApiError::BadRequest(
            "format must be json, geojson or csv".into(),
        )),
    }
}

/// Longest `bucket`: a year (`date_bin` takes no months, and a bigger
/// bucket is one point).
const MAX_BUCKET_MS: i64 = 366 * DAY_MS;

/// `bucket=`: a humantime duration (`30s`, `5m`) or whole milliseconds.
fn bucket(v: Option<&str>) -> Result<Option<i64>, ApiError> {
    let Some(v) = v else { return Ok(None) };
    let ms = match v.parse::<i64>() {
        Ok(n) => Some(n),
        Err(_) => humantime::parse_duration(v)
            .ok()
            .and_then(|d| i64::try_from(d.as_millis()).ok()),
    };
    match ms {
        Some(n) if (1..=MAX_BUCKET_MS).contains(&n) => Ok(Some(n)),
        _ => Err(ApiError::BadRequest(
            "bucket must be a duration (30s, 5m) or milliseconds, 1 ms to 366 days".into(),
        )),
    }
}

/// `simplify=`: a tolerance in metres, above 0 and at most 100 km.
fn simplify(v: Option<&str>) -> Result<Option<f64>, ApiError> {
    let Some(v) = v else { return Ok(None) };
    match v.parse::<f64>() {
        Ok(m) if m > 0.0 && m <= 100_000.0 => Ok(Some(m)),
        _ => Err(ApiError::BadRequest(
            "simplify must be a tolerance in metres, above 0 and at most 100000".into(),
        )),
    }
}

/// `GET /api/devices/{id}/track`: streamed from PostgreSQL, never whole
/// in memory (geojson keeps one timestamp per point until the end). A
/// device never seen (no hot state, nothing in history) is 404, like one
/// outside the token's scope; a known device without points in the window
/// gets an empty track.
///
/// `bucket` picks the first fix of each bucket in SQL (a skip scan: one
/// index probe per bucket, not a read of every row); `simplify` runs the
/// rows through [`Simplifier`] as they stream. With either, `limit` counts
/// the points answered, and `next` is the `from` that continues the same
/// thinned track.
pub async fn track(
    State(s): State<AppState>,
    Authed(scope): Authed,
    Path(id): Path<String>,
    q: Result<Query<TrackParams>, QueryRejection>,
) -> Result<Response, ApiError> {
    let p = query(q)?;
    let d = scoped_device(&s, &id, &scope)?;
    let (from, to) = window(p.from.as_deref(), p.to.as_deref())?;
    let limit = limit(p.limit.as_deref())?;
    let format = format(p.format.as_deref())?;
    let bucket_ms = bucket(p.bucket.as_deref())?;
    let simplify = simplify(p.simplify.as_deref())?;
    let permit = history_slot(&s)?;
    let enc = TrackEncoder {
        format,
        device: d.clone(),
        limit: limit as usize,
        n: 0,
        next: None,
        times: Vec::new(),
    };
    let job = Job::Track {
        q: TrackQuery {
            device: d,
            from,
            to,
            // Simplified, the rows read are not the points answered: read
            // on until the encoder has its `limit` (it stops the reading).
            limit: if simplify.is_some() {
                i64::MAX - 1
            } else {
                limit
            },
            bucket_ms,
        },
        enc,
        simplify,
    };
    let (head, body) = stream(&s, permit, job).await?;
    let content_type = match format {
        Format::Json => "application/json",
        Format::GeoJson => "application/geo+json",
        Format::Csv => "text/csv; charset=utf-8",
    };
    let mut resp = (StatusCode::OK, [(header::CONTENT_TYPE, content_type)], body).into_response();
    if format == Format::Csv {
        // Present and empty when there is no next page (docs/gateway.md).
        let next = head.next_header.map(|n| n.to_string()).unwrap_or_default();
        if let Ok(v) = HeaderValue::from_str(&next) {
            resp.headers_mut().insert("fieldcast-next", v);
        }
    }
    Ok(resp)
}

/// Writes a track as json, geojson or csv, one chunk of rows at a time.
struct TrackEncoder {
    format: Format,
    device: DeviceId,
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
        serde_json::to_string(&self.device).unwrap_or_default()
    }

    fn head(&self) -> String {
        match self.format {
            Format::Json => format!("{{\"device\":{},\"points\":[", self.device_json()),
            Format::GeoJson => "{\"type\":\"FeatureCollection\",\"features\":[{\"type\":\"Feature\",\"geometry\":{\"type\":\"LineString\",\"coordinates\":[".to_owned(),
            Format::Csv => "ts,lat,lon,alt,speed,heading,accuracy\n".to_owned(),
        }
    }

    /// Encodes `ps`; `false` once past `limit` (nothing more is needed).
    fn points(&mut self, ps: &[Location], out: &mut String) -> bool {
        for p in ps {
            self.point(p, out);
        }
        self.n <= self.limit
    }

    fn point(&mut self, p: &Location, out: &mut String) {
        use std::fmt::Write;
        self.n += 1;
        if self.n > self.limit {
            // The first point past the page starts the next one.
            self.next.get_or_insert(p.ts);
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

#[derive(Deserialize)]
pub struct EventsParams {
    device: Option<String>,
    kind: Option<String>,
    from: Option<String>,
    to: Option<String>,
    limit: Option<String>,
    cursor: Option<String>,
}

/// `GET /api/events`: oldest first, `next` an opaque cursor; streamed like
/// the track.
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
    let device = match p.device.as_deref().map(DeviceId::parse) {
        None => None,
        Some(Ok(d)) if in_scope(&s, &scope, &d) => Some(d),
        // Out of scope reads as "no events", exactly like an unknown device.
        Some(_) => {
            return Ok(Json(serde_json::json!({"events": [], "next": null})).into_response());
        }
    };
    let permit = history_slot(&s)?;
    let q = EventsQuery {
        device,
        kind: p.kind,
        from,
        to,
        limit,
        after,
        scope: scope.device_like_patterns(),
        scope_groups: scope.group_names(),
    };
    let enc = EventsEncoder {
        limit: limit as usize,
        n: 0,
        last: None,
        next: None,
    };
    let (_, body) = stream(&s, permit, Job::Events { q, enc }).await?;
    Ok((
        StatusCode::OK,
        [(header::CONTENT_TYPE, "application/json")],
        body,
    )
        .into_response())
}

/// Writes an events page, `{"events":[...],"next":...}`, a chunk at a time.
struct EventsEncoder {
    limit: usize,
    /// Rows seen so far (the one past `limit` only sets `next`).
    n: usize,
    /// The cursor of the `limit`-th event, `next` if another follows.
    last: Option<EventCursor>,
    next: Option<EventCursor>,
}

impl EventsEncoder {
    fn head(&self) -> &'static str {
        "{\"events\":["
    }

    fn rows(&mut self, rows: &[EventRow], out: &mut String) {
        for r in rows {
            self.n += 1;
            if self.n > self.limit {
                self.next = self.last.take();
                return;
            }
            if self.n > 1 {
                out.push(',');
            }
            // Strings, integers and raw JSON from jsonb: cannot fail.
            out.push_str(&serde_json::to_string(&r.event).unwrap_or_default());
            if self.n == self.limit {
                self.last = Some(r.cursor());
            }
        }
    }

    fn tail(&self) -> String {
        let next = self
            .next
            .as_ref()
            .map_or("null".to_owned(), |c| format!("\"{}\"", c.encode()));
        format!("],\"next\":{next}}}")
    }
}

/// One streamed history response: what to read and how to write it.
enum Job {
    Track {
        q: TrackQuery,
        enc: TrackEncoder,
        /// Tolerance of `simplify=`, metres.
        simplify: Option<f64>,
    },
    Events {
        q: EventsQuery,
        enc: EventsEncoder,
    },
}

/// What the response head needs from the task before the body starts.
#[derive(Debug, Default)]
struct Head {
    /// csv's `Fieldcast-Next`.
    next_header: Option<i64>,
}

/// A chunk of body; `Last` ends a complete response.
enum Frame {
    Data(Bytes),
    Last(Bytes),
}

/// Why a streamed response stopped before its end.
#[derive(Debug)]
enum Cut {
    /// The client did not take a chunk within the send timeout.
    Stalled,
    /// The client went away (the body was dropped).
    Gone,
    /// The gateway is shutting down.
    Shutdown,
    /// A later chunk's query failed (its statement timeout, PostgreSQL).
    Query(HistoryError),
}

impl Cut {
    fn reason(&self) -> &'static str {
        match self {
            Cut::Stalled => "stalled",
            Cut::Gone => "gone",
            Cut::Shutdown => "shutdown",
            Cut::Query(_) => "query",
        }
    }
}

/// A slot of the instance's history cap, or 429.
pub(crate) fn history_slot(s: &AppState) -> Result<OwnedSemaphorePermit, ApiError> {
    s.history_limits.try_acquire().ok_or_else(|| {
        s.metrics.history_rejected.inc();
        ApiError::TooManyRequests {
            message: format!(
                "{} history requests are already running on this gateway; retry shortly",
                s.history_limits.concurrency
            ),
            retry_after_secs: 1,
        }
    })
}

pub(crate) fn history_error(e: HistoryError) -> ApiError {
    if e.is_timeout() {
        ApiError::Timeout(
            "the history query took too long; ask for a shorter window or a smaller limit".into(),
        )
    } else {
        ApiError::postgres(e)
    }
}

/// Starts the task that serves `job`; returns once it has read the first
/// chunk (so a failure or a 404 is still an error response, not a broken
/// 200) with the head and the body that streams the rest.
async fn stream(
    s: &AppState,
    permit: OwnedSemaphorePermit,
    job: Job,
) -> Result<(Head, Body), ApiError> {
    let (head_tx, head_rx) = oneshot::channel();
    // One chunk waits in the channel while hyper writes the one before:
    // a response holds at most about two chunks in memory.
    let (body_tx, body_rx) = mpsc::channel(1);
    let task = s.clone();
    // Tracked, so shutdown waits for the transaction to end.
    s.tracker.spawn(async move {
        run(task, job, head_tx, body_tx).await;
        drop(permit);
    });
    let head = head_rx
        .await
        .map_err(|_| ApiError::postgres("the history task ended before its first chunk"))??;
    let body = futures::stream::unfold(Some(body_rx), |rx| async move {
        let mut rx = rx?;
        match rx.recv().await {
            Some(Frame::Data(b)) => Some((Ok(b), Some(rx))),
            Some(Frame::Last(b)) => Some((Ok(b), None)),
            // The task stopped before the end: fail the body so hyper
            // aborts the transfer instead of ending it as if complete.
            None => Some((Err(std::io::Error::other("history response cut")), None)),
        }
    });
    Ok((head, Body::from_stream(body)))
}

/// The task of one history response: a pooled connection, a transaction,
/// the rows, then the connection back clean (or discarded).
async fn run(
    s: AppState,
    job: Job,
    head_tx: oneshot::Sender<Result<Head, ApiError>>,
    body_tx: mpsc::Sender<Frame>,
) {
    let mut client: Object = match s.pg.get().await {
        Ok(c) => c,
        Err(e) => {
            let _ = head_tx.send(Err(ApiError::postgres(e)));
            return;
        }
    };
    let clean = match history::begin(&mut client, &s.history_limits).await {
        Ok(txn) => {
            if let Err(cut) = write(&s, &txn, job, head_tx, &body_tx).await {
                s.metrics.history_cut(cut.reason());
                match &cut {
                    Cut::Query(e) => tracing::warn!(error = %e, "history response failed midway"),
                    Cut::Stalled => tracing::info!(
                        timeout = ?s.history_limits.send_timeout,
                        "history client stopped reading; response cut"
                    ),
                    Cut::Gone | Cut::Shutdown => {
                        tracing::debug!(reason = cut.reason(), "history response cut")
                    }
                }
            }
            history::end(txn).await
        }
        Err(e) => {
            let _ = head_tx.send(Err(history_error(e)));
            false
        }
    };
    if !clean {
        history::discard(client);
    }
}

/// Reads and sends the whole response. Errors before the head go to the
/// handler through `head_tx` (and count as no cut).
async fn write(
    s: &AppState,
    txn: &Transaction<'_>,
    job: Job,
    head_tx: oneshot::Sender<Result<Head, ApiError>>,
    body_tx: &mpsc::Sender<Frame>,
) -> Result<(), Cut> {
    match job {
        Job::Track { q, enc, simplify } => {
            write_track(s, txn, q, enc, simplify, head_tx, body_tx).await
        }
        Job::Events { q, enc } => write_events(s, txn, q, enc, head_tx, body_tx).await,
    }
}

/// [`write`] for a track: csv's `next` first (its header goes out before
/// the rows), the first chunk and the "never seen" check, then the rest.
async fn write_track(
    s: &AppState,
    txn: &Transaction<'_>,
    q: TrackQuery,
    mut enc: TrackEncoder,
    simplify: Option<f64>,
    head_tx: oneshot::Sender<Result<Head, ApiError>>,
    body_tx: &mpsc::Sender<Frame>,
) -> Result<(), Cut> {
    let chunk = if simplify.is_some() {
        SIMPLIFY_CHUNK_ROWS
    } else {
        CHUNK_ROWS
    };
    let first = async {
        let next_header = match (enc.format, simplify) {
            (Format::Csv, None) => history::track_next(txn, &q).await.map_err(history_error)?,
            (Format::Csv, Some(m)) => simplified_next(txn, &q, m, enc.limit)
                .await
                .map_err(history_error)?,
            _ => None,
        };
        let portal = history::track_portal(txn, &q)
            .await
            .map_err(history_error)?;
        let rows = history::fetch_points(txn, &portal, chunk)
            .await
            .map_err(history_error)?;
        if rows.is_empty() && !seen(s, txn, q.device.as_str()).await? {
            return Err(ApiError::NotFound(format!("no device {:?}", q.device)));
        }
        Ok((Head { next_header }, (portal, rows)))
    }
    .await;
    let Some((portal, rows)) = answer(head_tx, first)? else {
        return Ok(());
    };
    let out = enc.head();
    let mut simp = simplify.map(Simplifier::new);
    let mut kept = Vec::new();
    let mut out = stream_rows(
        s,
        body_tx,
        out,
        rows,
        chunk,
        |r, out| match simp.as_mut() {
            None => enc.points(r, out),
            Some(simp) => {
                for p in r {
                    simp.push(p, &mut kept);
                }
                let more = enc.points(&kept, out);
                kept.clear();
                more
            }
        },
        || history::fetch_points(txn, &portal, chunk),
    )
    .await?;
    if let Some(simp) = simp {
        simp.finish(&mut kept);
        let _ = enc.points(&kept, &mut out);
    }
    out.push_str(&enc.tail());
    send(s, body_tx, Frame::Last(Bytes::from(out))).await
}

/// [`write`] for an events page: the first chunk, then the rest.
async fn write_events(
    s: &AppState,
    txn: &Transaction<'_>,
    q: EventsQuery,
    mut enc: EventsEncoder,
    head_tx: oneshot::Sender<Result<Head, ApiError>>,
    body_tx: &mpsc::Sender<Frame>,
) -> Result<(), Cut> {
    let first = async {
        let portal = history::events_portal(txn, &q)
            .await
            .map_err(history_error)?;
        let rows = history::fetch_events(txn, &portal, CHUNK_ROWS)
            .await
            .map_err(history_error)?;
        Ok::<_, ApiError>((portal, rows))
    }
    .await;
    let Some((portal, rows)) = answer(head_tx, first.map(|f| (Head::default(), f)))? else {
        return Ok(());
    };
    let out = enc.head().to_owned();
    let mut out = stream_rows(
        s,
        body_tx,
        out,
        rows,
        CHUNK_ROWS,
        |r, out| {
            enc.rows(r, out);
            true
        },
        || history::fetch_events(txn, &portal, CHUNK_ROWS),
    )
    .await?;
    out.push_str(&enc.tail());
    send(s, body_tx, Frame::Last(Bytes::from(out))).await
}

/// Rows per `Execute` when simplifying: the rows only pass through the
/// simplifier, so bigger chunks save round trips (a month is millions).
const SIMPLIFY_CHUNK_ROWS: usize = 8192;

/// csv's `Fieldcast-Next` for a simplified track: its header goes out
/// before the rows, so the track is simplified once ahead (in the same
/// snapshot, so both passes agree) up to the first point past `limit`.
async fn simplified_next(
    txn: &Transaction<'_>,
    q: &TrackQuery,
    tolerance: f64,
    limit: usize,
) -> Result<Option<i64>, HistoryError> {
    let portal = history::track_portal(txn, q).await?;
    let mut simp = Some(Simplifier::new(tolerance));
    // Points kept before this chunk's: always at most `limit`.
    let mut n = 0usize;
    let mut kept = Vec::new();
    loop {
        let rows = history::fetch_points(txn, &portal, SIMPLIFY_CHUNK_ROWS).await?;
        let done = rows.len() < SIMPLIFY_CHUNK_ROWS;
        if let Some(simp) = simp.as_mut() {
            for p in &rows {
                simp.push(p, &mut kept);
            }
        }
        if done {
            if let Some(simp) = simp.take() {
                simp.finish(&mut kept);
            }
        }
        if let Some(p) = kept.get(limit - n) {
            return Ok(Some(p.ts));
        }
        n += kept.len();
        kept.clear();
        if done {
            return Ok(None);
        }
    }
}

/// Hands the handler its head, or the error that came before it. `None`
/// when the response ends there (the handler answers the error; no cut).
fn answer<T>(
    head_tx: oneshot::Sender<Result<Head, ApiError>>,
    first: Result<(Head, T), ApiError>,
) -> Result<Option<T>, Cut> {
    match first {
        Ok((head, rest)) => {
            head_tx.send(Ok(head)).map_err(|_| Cut::Gone)?;
            Ok(Some(rest))
        }
        Err(e) => {
            let _ = head_tx.send(Err(e));
            Ok(None)
        }
    }
}

/// Encodes `rows` and every further chunk `next` fetches after `out`,
/// sending the text as each full chunk is encoded; returns what is left
/// for the last frame. A chunk shorter than `chunk` rows is the last; so
/// is one after which `encode` says it needs no more.
async fn stream_rows<R, Fut>(
    s: &AppState,
    body_tx: &mpsc::Sender<Frame>,
    mut out: String,
    mut rows: Vec<R>,
    chunk: usize,
    mut encode: impl FnMut(&[R], &mut String) -> bool,
    mut next: impl FnMut() -> Fut,
) -> Result<String, Cut>
where
    Fut: std::future::Future<Output = Result<Vec<R>, history::HistoryError>>,
{
    loop {
        let more = encode(&rows, &mut out);
        if rows.len() < chunk || !more {
            return Ok(out);
        }
        send(
            s,
            body_tx,
            Frame::Data(Bytes::from(std::mem::take(&mut out))),
        )
        .await?;
        rows = next().await.map_err(Cut::Query)?;
    }
}

/// Whether a device without points in the window was ever seen: a hot
/// state in Redis, or anything of it in history (a device whose hot state
/// is gone still has its track). Redis unreachable and nothing in history
/// is 503, not a 404 that may be wrong.
pub(crate) async fn seen(
    s: &AppState,
    txn: &Transaction<'_>,
    device: &str,
) -> Result<bool, ApiError> {
    let hot = s.store.has_state(device).await;
    if matches!(hot, Ok(true)) {
        return Ok(true);
    }
    if history::seen(txn, device).await.map_err(history_error)? {
        return Ok(true);
    }
    hot.map_err(ApiError::redis)
}

/// Hands one chunk to the body, waiting at most the send timeout for the
/// client to take the one before.
async fn send(s: &AppState, tx: &mpsc::Sender<Frame>, frame: Frame) -> Result<(), Cut> {
    tokio::select! {
        r = tokio::time::timeout(s.history_limits.send_timeout, tx.send(frame)) => match r {
            Ok(Ok(())) => Ok(()),
            Ok(Err(_)) => Err(Cut::Gone),
            Err(_) => Err(Cut::Stalled),
        },
        () = s.shutdown.cancelled() => Err(Cut::Shutdown),
    }
}

#[derive(Deserialize)]
struct PublishBody<'a> {
    channel: String,
    #[serde(borrow)]
    data: Option<&'a RawValue>,
}

/// `POST /api/publish`: needs the `publish` claim; fans out through Redis
/// so every gateway instance delivers it. Only `application/json` (415
/// otherwise: a browser page can send `text/plain` cross-origin without a
/// preflight, JSON it cannot), at most `FIELDCAST_PUBLISH_MAX_BYTES` (413).
pub async fn publish(
    State(s): State<AppState>,
    Authed(scope): Authed,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    if !scope.publish {
        return Err(ApiError::Forbidden("the token has no publish right".into()));
    }
    if !is_json(&headers) {
        return Err(ApiError::UnsupportedMediaType(
            "the body must be sent as Content-Type: application/json".into(),
        ));
    }
    let body = read_body(&headers, body, s.history_limits.publish_max_bytes).await?;
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

/// `Content-Type: application/json`, parameters (`; charset=utf-8`) allowed.
pub(crate) fn is_json(headers: &HeaderMap) -> bool {
    headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .is_some_and(|essence| essence.trim().eq_ignore_ascii_case("application/json"))
}

/// The whole body, at most `max` bytes: a declared `Content-Length` over it
/// is refused before reading, a body that grows past it while read too.
pub(crate) async fn read_body(
    headers: &HeaderMap,
    body: Body,
    max: usize,
) -> Result<Bytes, ApiError> {
    let too_large = || ApiError::PayloadTooLarge(format!("the body is larger than {max} bytes"));
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > max as u64) {
        return Err(too_large());
    }
    let mut data = body.into_data_stream();
    let mut buf = Vec::new();
    while let Some(chunk) = data.next().await {
        let chunk = chunk.map_err(|e| ApiError::BadRequest(format!("reading the body: {e}")))?;
        if buf.len() + chunk.len() > max {
            return Err(too_large());
        }
        buf.extend_from_slice(&chunk);
    }
    Ok(Bytes::from(buf))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn with_type(v: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(header::CONTENT_TYPE, HeaderValue::from_str(v).unwrap());
        h
    }

    #[test]
    fn only_json_bodies() {
        assert!(is_json(&with_type("application/json")));
        assert!(is_json(&with_type("Application/JSON; charset=utf-8")));
        assert!(!is_json(&with_type("text/plain")));
        assert!(!is_json(&with_type("application/jsonx")));
        assert!(!is_json(&with_type("application/x-www-form-urlencoded")));
        assert!(!is_json(&HeaderMap::new()));
    }

    fn encoded_track(format: Format, limit: usize) -> String {
        let fix = |ts: i64, alt: Option<f64>| Location {
            ts,
            lat: 51.5073509,
            lon: -0.1277583,
            alt,
            speed: Some(12.5),
            heading: None,
            accuracy: None,
        };
        let mut enc = TrackEncoder {
            format,
            device: DeviceId::parse("truck-7").unwrap(),
            limit,
            n: 0,
            next: None,
            times: Vec::new(),
        };
        let mut out = enc.head();
        let _ = enc.points(&[fix(1_763_800_000_000, Some(31.2))], &mut out);
        let _ = enc.points(
            &[fix(1_763_800_001_000, None), fix(1_763_800_002_000, None)],
            &mut out,
        );
        out.push_str(&enc.tail());
        out
    }

    /// Pins the track's bytes in each format, as the history `Point` wrote
    /// them before it became core's `Location`: field order, `null` for a
    /// missing value in json, an empty csv cell, shortest round-trip floats.
    #[test]
    fn track_pages_keep_their_bytes() {
        assert_eq!(
            encoded_track(Format::Json, 2),
            r#"{"device":"truck-7","points":[{"ts":1763800000000,"lat":51.5073509,"lon":-0.1277583,"alt":31.2,"speed":12.5,"heading":null,"accuracy":null},{"ts":1763800001000,"lat":51.5073509,"lon":-0.1277583,"alt":null,"speed":12.5,"heading":null,"accuracy":null}],"next":1763800002000}"#
        );
        assert_eq!(
            encoded_track(Format::GeoJson, 5),
            r#"{"type":"FeatureCollection","features":[{"type":"Feature","geometry":{"type":"LineString","coordinates":[[-0.1277583,51.5073509],[-0.1277583,51.5073509],[-0.1277583,51.5073509]]},"properties":{"device":"truck-7","times":[1763800000000,1763800001000,1763800002000]}}],"next":null}"#
        );
        assert_eq!(
            encoded_track(Format::Csv, 5),
            "ts,lat,lon,alt,speed,heading,accuracy\n\
             2025-11-22T08:26:40.000Z,51.5073509,-0.1277583,31.2,12.5,,\n\
             2025-11-22T08:26:41.000Z,51.5073509,-0.1277583,,12.5,,\n\
             2025-11-22T08:26:42.000Z,51.5073509,-0.1277583,,12.5,,\n"
        );
    }

    #[test]
    fn events_pages_end_with_the_cursor_of_their_last_event() {
        let row = |i: i64| EventRow {
            event: history::StoredEvent {
                device: "d".into(),
                id: format!("e{i}"),
                ts: i,
                kind: "k".into(),
                severity: "info".into(),
                data: None,
            },
            ts_us: i * 1000,
        };
        let mut enc = EventsEncoder {
            limit: 2,
            n: 0,
            last: None,
            next: None,
        };
        let mut out = enc.head().to_owned();
        enc.rows(&[row(1)], &mut out);
        enc.rows(&[row(2), row(3)], &mut out);
        out.push_str(&enc.tail());
        let v: serde_json::Value = serde_json::from_str(&out).unwrap();
        assert_eq!(v["events"].as_array().unwrap().len(), 2);
        let next = EventCursor::decode(v["next"].as_str().unwrap()).unwrap();
        assert_eq!(next, row(2).cursor());

        let mut enc = EventsEncoder {
            limit: 5,
            n: 0,
            last: None,
            next: None,
        };
        let mut out = enc.head().to_owned();
        enc.rows(&[], &mut out);
        out.push_str(&enc.tail());
        assert_eq!(out, r#"{"events":[],"next":null}"#);
    }
}
