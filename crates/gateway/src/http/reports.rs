//! History reports (issue #16): a device's trips and stops
//! (`/api/devices/{id}/trips`, `/stops`), the fleet summary
//! (`/api/reports/summary`) and where every device was at an instant
//! (`/api/devices?at=`, dispatched from [`api::devices`]).
//!
//! Each reads inside one history transaction (the slot, statement timeout
//! and read-only snapshot of [`api`]'s track) run by a tracked task of its
//! own, so a client that goes away mid-query never hands a connection back
//! to the pool inside an open transaction. Fixes stream from a portal into
//! the [`Detector`], so a month of 1 Hz data is never in memory; the
//! answers (a few trips or stops per day, one line per device) are small
//! and sent whole.

use axum::extract::rejection::QueryRejection;
use axum::extract::{Path, Query, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use chrono::NaiveDate;
use deadpool_postgres::Transaction;
use fieldcast_core::geo::BBox;
use fieldcast_core::{DeviceId, DeviceState};
use futures::future::BoxFuture;
use serde::{Deserialize, Serialize};

use crate::auth::{Authed, Scope};
use crate::http::api::{self, Format};
use crate::http::error::ApiError;
use crate::state::AppState;
use crate::store::history::{self, to_time, TrackQuery};
use crate::track::trips::{Detector, Rules, Segment, Stop, Trip};

/// Fixes per `Execute` when feeding the detector (they are not sent on).
const CHUNK: usize = 8192;

/// Longest threshold a parameter takes: a year.
const MAX_MS: i64 = 366 * 24 * 3600 * 1000;

/// What a report reads inside its transaction.
type Job<T> = Box<
    dyn for<'a> FnOnce(&'a AppState, &'a Transaction<'a>) -> BoxFuture<'a, Result<T, ApiError>>
        + Send,
>;

/// Boxes a closure as a [`Job`] (the bound gives the closure its
/// higher-ranked signature).
fn job<T, F>(f: F) -> Job<T>
where
    F: for<'a> FnOnce(&'a AppState, &'a Transaction<'a>) -> BoxFuture<'a, Result<T, ApiError>>
        + Send
        + 'static,
{
    Box::new(f)
}

/// Runs `job` in a history transaction on a tracked task, holding one of
/// the instance's history slots (429 past them).
async fn in_history<T: Send + 'static>(s: &AppState, job: Job<T>) -> Result<T, ApiError> {
    let permit = api::history_slot(s)?;
    let task = s.clone();
    let (tx, rx) = tokio::sync::oneshot::channel();
    s.tracker.spawn(async move {
        let r = async {
            let mut client = task.pg.get().await.map_err(ApiError::postgres)?;
            let txn = history::begin(&mut client, &task.history_limits)
                .await
                .map_err(api::history_error)?;
            let r = job(&task, &txn).await;
            if !history::end(txn).await {
                history::discard(client);
            }
            r
        }
        .await;
        drop(permit);
        let _ = tx.send(r);
    });
    rx.await
        .map_err(|_| ApiError::postgres("the history task ended without an answer"))?
}

#[derive(Deserialize)]
pub struct SegmentParams {
    from: Option<String>,
    to: Option<String>,
    format: Option<String>,
    min_trip_ms: Option<String>,
    min_trip_m: Option<String>,
    min_stop_ms: Option<String>,
    max_gap_ms: Option<String>,
    stop_radius_m: Option<String>,
}

fn ms_param(name: &str, v: Option<&str>, default: i64, min: i64) -> Result<i64, ApiError> {
    let Some(v) = v else { return Ok(default) };
    match v.parse::<i64>() {
        Ok(n) if (min..=MAX_MS).contains(&n) => Ok(n),
        _ => Err(ApiError::BadRequest(format!(
            "{name} must be milliseconds, {min} to {MAX_MS}"
        ))),
    }
}

fn m_param(name: &str, v: Option<&str>, default: f64, max: f64) -> Result<f64, ApiError> {
    let Some(v) = v else { return Ok(default) };
    match v.parse::<f64>() {
        Ok(m) if (0.0..=max).contains(&m) => Ok(m),
        _ => Err(ApiError::BadRequest(format!(
            "{name} must be metres, 0 to {max}"
        ))),
    }
}

impl SegmentParams {
    /// The thresholds, defaults from [`Rules::default`].
    fn rules(&self) -> Result<Rules, ApiError> {
        let d = Rules::default();
        Ok(Rules {
            min_trip_ms: ms_param("min_trip_ms", self.min_trip_ms.as_deref(), d.min_trip_ms, 0)?,
            min_trip_m: m_param("min_trip_m", self.min_trip_m.as_deref(), d.min_trip_m, 1e7)?,
            min_stop_ms: ms_param("min_stop_ms", self.min_stop_ms.as_deref(), d.min_stop_ms, 1)?,
            max_gap_ms: ms_param("max_gap_ms", self.max_gap_ms.as_deref(), d.max_gap_ms, 1)?,
            stop_radius_m: m_param(
                "stop_radius_m",
                self.stop_radius_m.as_deref(),
                d.stop_radius_m,
                10_000.0,
            )?,
        })
    }
}

/// Streams the device's fixes in `[from, to)` through a [`Detector`].
/// `None` when the window holds no fix.
async fn segments(
    txn: &Transaction<'_>,
    device: &DeviceId,
    from: i64,
    to: i64,
    rules: Rules,
) -> Result<Option<Vec<Segment>>, ApiError> {
    let q = TrackQuery {
        device: device.clone(),
        from,
        to,
        limit: i64::MAX - 1,
        bucket_ms: None,
    };
    let portal = history::track_portal(txn, &q)
        .await
        .map_err(api::history_error)?;
    let mut det = Detector::new(rules);
    let (mut out, mut any) = (Vec::new(), false);
    loop {
        let rows = history::fetch_points(txn, &portal, CHUNK)
            .await
            .map_err(api::history_error)?;
        any |= !rows.is_empty();
        for p in &rows {
            det.push(p, &mut out);
        }
        if rows.len() < CHUNK {
            break;
        }
    }
    det.finish(&mut out);
    Ok(any.then_some(out))
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Trips,
    Stops,
}

/// `GET /api/devices/{id}/trips`.
pub async fn trips(
    s: State<AppState>,
    a: Authed,
    id: Path<String>,
    q: Result<Query<SegmentParams>, QueryRejection>,
) -> Result<Response, ApiError> {
    device_segments(s, a, id, q, Kind::Trips).await
}

/// `GET /api/devices/{id}/stops`.
pub async fn stops(
    s: State<AppState>,
    a: Authed,
    id: Path<String>,
    q: Result<Query<SegmentParams>, QueryRejection>,
) -> Result<Response, ApiError> {
    device_segments(s, a, id, q, Kind::Stops).await
}

/// Trips or stops of one device, scope-checked like the track (404 for a
/// device outside the scope or never seen).
async fn device_segments(
    State(s): State<AppState>,
    Authed(scope): Authed,
    Path(id): Path<String>,
    q: Result<Query<SegmentParams>, QueryRejection>,
    kind: Kind,
) -> Result<Response, ApiError> {
    let p = api::query(q)?;
    let d = api::scoped_device(&s, &id, &scope)?;
    let (from, to) = api::window(p.from.as_deref(), p.to.as_deref())?;
    let format = api::format(p.format.as_deref())?;
    let rules = p.rules()?;
    let device = d.clone();
    let segs = in_history(
        &s,
        job(move |s, txn| {
            Box::pin(async move {
                match segments(txn, &device, from, to, rules).await? {
                    Some(segs) => Ok(segs),
                    None if api::seen(s, txn, device.as_str()).await? => Ok(Vec::new()),
                    None => Err(ApiError::NotFound(format!("no device {:?}", device))),
                }
            })
        }),
    )
    .await?;
    let body = match kind {
        Kind::Trips => encode_trips(
            format,
            d.as_str(),
            segs.iter().filter_map(|s| match s {
                Segment::Trip(t) => Some(t),
                Segment::Stop(_) => None,
            }),
        ),
        Kind::Stops => encode_stops(
            format,
            d.as_str(),
            segs.iter().filter_map(|s| match s {
                Segment::Stop(t) => Some(t),
                Segment::Trip(_) => None,
            }),
        ),
    };
    Ok((
        StatusCode::OK,
        [(header::CONTENT_TYPE, content_type(format))],
        body,
    )
        .into_response())
}

fn content_type(f: Format) -> &'static str {
    match f {
        Format::Json => "application/json",
        Format::GeoJson => "application/geo+json",
        Format::Csv => "text/csv; charset=utf-8",
    }
}

fn rfc(ms: i64) -> String {
    fieldcast_core::time::format_rfc3339_ms(ms)
}

/// Trips as json (`{"device","trips"}`), geojson (one feature per trip:
/// a MultiPoint of its two ends, the trip's numbers as properties) or csv.
fn encode_trips<'a>(f: Format, device: &str, trips: impl Iterator<Item = &'a Trip>) -> String {
    match f {
        Format::Json => {
            let trips: Vec<&Trip> = trips.collect();
            serde_json::json!({"device": device, "trips": trips}).to_string()
        }
        Format::GeoJson => {
            let features: Vec<serde_json::Value> = trips
                .map(|t| {
                    serde_json::json!({
                        "type": "Feature",
                        "geometry": {"type": "MultiPoint", "coordinates": [[t.start.lon, t.start.lat], [t.end.lon, t.end.lat]]},
                        "properties": {"device": device, "start": t.start.ts, "end": t.end.ts, "distance_m": t.distance_m, "duration_ms": t.duration_ms, "max_speed": t.max_speed, "avg_speed": t.avg_speed},
                    })
                })
                .collect();
            serde_json::json!({"type": "FeatureCollection", "features": features}).to_string()
        }
        Format::Csv => {
            let mut out = String::from("start_ts,start_lat,start_lon,end_ts,end_lat,end_lon,distance_m,duration_ms,max_speed,avg_speed\n");
            for t in trips {
                out.push_str(&format!(
                    "{},{},{},{},{},{},{},{},{},{}\n",
                    rfc(t.start.ts),
                    t.start.lat,
                    t.start.lon,
                    rfc(t.end.ts),
                    t.end.lat,
                    t.end.lon,
                    t.distance_m,
                    t.duration_ms,
                    t.max_speed,
                    t.avg_speed
                ));
            }
            out
        }
    }
}

/// Stops as json (`{"device","stops"}`), geojson (a Point per stop) or csv.
fn encode_stops<'a>(f: Format, device: &str, stops: impl Iterator<Item = &'a Stop>) -> String {
    match f {
        Format::Json => {
            let stops: Vec<&Stop> = stops.collect();
            serde_json::json!({"device": device, "stops": stops}).to_string()
        }
        Format::GeoJson => {
            let features: Vec<serde_json::Value> = stops
                .map(|s| {
                    serde_json::json!({
                        "type": "Feature",
                        "geometry": {"type": "Point", "coordinates": [s.lon, s.lat]},
                        "properties": {"device": device, "ts_arrival": s.ts_arrival, "ts_departure": s.ts_departure, "duration_ms": s.duration_ms},
                    })
                })
                .collect();
            serde_json::json!({"type": "FeatureCollection", "features": features}).to_string()
        }
        Format::Csv => {
            let mut out = String::from("ts_arrival,ts_departure,lat,lon,duration_ms\n");
            for s in stops {
                out.push_str(&format!(
                    "{},{},{},{},{}\n",
                    rfc(s.ts_arrival),
                    rfc(s.ts_departure),
                    s.lat,
                    s.lon,
                    s.duration_ms
                ));
            }
            out
        }
    }
}

#[derive(Deserialize)]
pub struct SummaryParams {
    from: Option<String>,
    to: Option<String>,
    group: Option<String>,
    #[serde(flatten)]
    rules: SegmentParams,
}

/// One device's line of the summary.
#[derive(Debug, Serialize)]
struct DeviceSummary {
    device: String,
    /// Sum over its trips, metres.
    distance_m: f64,
    /// Sum of its trips' durations.
    driving_ms: i64,
    trips: usize,
    stops: usize,
    /// Events of kind `alert.*` in the window.
    alerts: i64,
}

/// Devices with fixes on a day of the window, or an alert in it, in the
/// scope (and the group, when given).
const SUMMARY_DEVICES_SQL: &str = "SELECT device_id FROM ( \
       SELECT device_id FROM location_days WHERE day >= $1 AND day <= $2 \
       UNION SELECT device_id FROM events WHERE ts >= $3 AND ts < $4 AND kind LIKE 'alert.%') d \
     WHERE ($5::text[] IS NULL OR device_id LIKE ANY($5)) \
       AND ($6::text IS NULL OR device_id IN (SELECT device_id FROM device_groups WHERE group_name = $6)) \
     ORDER BY device_id";

const SUMMARY_ALERTS_SQL: &str = "SELECT device_id, count(*) FROM events \
     WHERE ts >= $1 AND ts < $2 AND kind LIKE 'alert.%' AND device_id = ANY($3) GROUP BY device_id";

fn day(ms: i64) -> NaiveDate {
    to_time(ms).date_naive()
}

/// `GET /api/reports/summary?from&to[&group]`: per device in scope (and
/// in `group`), its distance and driving time over its trips, its trips
/// and stops, and its alerts, by the same rules and parameters as
/// `/trips`. The whole fleet's fixes in the window are read, one device at
/// a time: a month of a large fleet is a heavy request, bounded by the
/// statement timeout of each chunk like any history read.
pub async fn summary(
    State(s): State<AppState>,
    Authed(scope): Authed,
    q: Result<Query<SummaryParams>, QueryRejection>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let p = api::query(q)?;
    let (from, to) = api::window(p.from.as_deref(), p.to.as_deref())?;
    let rules = p.rules.rules()?;
    // The names PUT /api/devices/{id}/groups takes: any other matches none.
    let group = p
        .group
        .as_deref()
        .map(crate::live::groups::parse_group)
        .transpose()
        .map_err(|e| ApiError::BadRequest(e.to_string()))?
        .map(String::from);
    let members = s.hub.memberships();
    let lines = in_history(
        &s,
        job(move |_, txn| {
            Box::pin(async move {
                let last_day = day(to.saturating_sub(1).max(from));
                let rows = txn
                    .query(
                        SUMMARY_DEVICES_SQL,
                        &[
                            &day(from),
                            &last_day,
                            &to_time(from),
                            &to_time(to),
                            &like_patterns(&scope),
                            &group,
                        ],
                    )
                    .await
                    .map_err(|e| api::history_error(e.into()))?;
                let mut ids = Vec::with_capacity(rows.len());
                for r in &rows {
                    let id: String = r.try_get(0).map_err(|e| api::history_error(e.into()))?;
                    if scope.allows_device(&id, members.of(&id)) {
                        ids.push(id);
                    }
                }
                let alerts = txn
                    .query(SUMMARY_ALERTS_SQL, &[&to_time(from), &to_time(to), &ids])
                    .await
                    .map_err(|e| api::history_error(e.into()))?;
                let mut counts = std::collections::HashMap::new();
                for r in &alerts {
                    let (d, n): (String, i64) = (
                        r.try_get(0).map_err(|e| api::history_error(e.into()))?,
                        r.try_get(1).map_err(|e| api::history_error(e.into()))?,
                    );
                    counts.insert(d, n);
                }
                let mut lines = Vec::with_capacity(ids.len());
                for id in ids {
                    // Ids come from stored rows, which the bridge validated.
                    let Ok(d) = DeviceId::parse(&id) else {
                        continue;
                    };
                    let segs = segments(txn, &d, from, to, rules)
                        .await?
                        .unwrap_or_default();
                    let mut line = DeviceSummary {
                        alerts: counts.get(&id).copied().unwrap_or(0),
                        device: id,
                        distance_m: 0.0,
                        driving_ms: 0,
                        trips: 0,
                        stops: 0,
                    };
                    for s in &segs {
                        match s {
                            Segment::Trip(t) => {
                                line.trips += 1;
                                line.distance_m += t.distance_m;
                                line.driving_ms += t.duration_ms;
                            }
                            Segment::Stop(_) => line.stops += 1,
                        }
                    }
                    lines.push(line);
                }
                Ok(lines)
            })
        }),
    )
    .await?;
    Ok(Json(
        serde_json::json!({"from": from, "to": to, "devices": lines}),
    ))
}

/// Each device's last fix at or before `$1`, and its last status then.
/// Per device, `location_days` names the newest day with fixes on or
/// before that instant's day, and the day before it (the instant may fall
/// before that day's first fix); only those two partitions are probed.
const AT_SQL: &str = "WITH d AS ( \
       SELECT DISTINCT device_id FROM location_days \
        WHERE day <= $2 AND ($3::text[] IS NULL OR device_id LIKE ANY($3))) \
     SELECT d.device_id, p.ts, p.lat, p.lon, p.alt, p.speed, p.heading, p.accuracy, \
            st.ts, st.online, st.battery, st.signal \
       FROM d \
       CROSS JOIN LATERAL ( \
         SELECT l.* FROM ( \
           SELECT day FROM location_days k \
            WHERE k.device_id = d.device_id AND k.day <= $2 ORDER BY k.day DESC LIMIT 2) k \
         CROSS JOIN LATERAL ( \
           SELECT ts, lat, lon, alt, speed, heading, accuracy FROM locations \
            WHERE device_id = d.device_id AND ts <= $1 \
              AND ts >= (k.day::timestamp AT TIME ZONE 'UTC') \
              AND ts < ((k.day + 1)::timestamp AT TIME ZONE 'UTC') \
            ORDER BY ts DESC LIMIT 1) l \
         ORDER BY l.ts DESC LIMIT 1) p \
       LEFT JOIN LATERAL ( \
         SELECT ts, online, battery, signal FROM device_status \
          WHERE device_id = d.device_id AND ts <= $1 ORDER BY ts DESC LIMIT 1) st ON true \
      ORDER BY d.device_id";

/// The SQL pre-filter of a scope. A token with a `groups` claim can see
/// devices that no pattern names, so its rows come unfiltered and are
/// checked here against the groups the hub holds.
fn like_patterns(scope: &Scope) -> Option<Vec<String>> {
    if scope.has_groups() {
        None
    } else {
        scope.device_like_patterns()
    }
}

/// `GET /api/devices?at=<epoch ms or RFC 3339>[&bbox=]`: every device in
/// scope with history, as a `DeviceState` of its last fix at or before
/// that instant (and its last status then); `last_seen` is the newer of
/// the two. A device without a fix by then is left out. Groups (scope,
/// `group`, `DeviceState.groups`) are today's: membership has no history.
pub async fn devices_at(
    s: &AppState,
    scope: &Scope,
    at: &str,
    bbox: Option<&str>,
    group: Option<&str>,
) -> Result<Vec<DeviceState>, ApiError> {
    let at = api::instant("at", at)?;
    let group = group
        .map(crate::live::groups::parse_group)
        .transpose()
        .map_err(|e| ApiError::BadRequest(e.to_string()))?;
    let bbox = bbox
        .map(BBox::parse_query)
        .transpose()
        .map_err(|e| ApiError::BadRequest(e.to_string()))?;
    let scope = scope.clone();
    let members = s.hub.memberships();
    in_history(
        s,
        job(move |_, txn| {
            Box::pin(async move {
                let stmt = txn
                    .prepare_cached(AT_SQL)
                    .await
                    .map_err(|e| api::history_error(e.into()))?;
                let rows = txn
                    .query(&stmt, &[&to_time(at), &day(at), &like_patterns(&scope)])
                    .await
                    .map_err(|e| api::history_error(e.into()))?;
                let mut out = Vec::with_capacity(rows.len());
                for r in &rows {
                    let device: String = r.try_get(0).map_err(|e| api::history_error(e.into()))?;
                    let groups = members.of(&device);
                    if !scope.allows_device(&device, groups)
                        || group.as_ref().is_some_and(|g| !groups.contains(g))
                    {
                        continue;
                    }
                    let groups = members.names_of(&device);
                    let fix = fieldcast_service::pg::location_at(r, 1)
                        .map_err(|e| api::history_error(e.into()))?;
                    if bbox.as_ref().is_some_and(|b| !b.contains(fix.lon, fix.lat)) {
                        continue;
                    }
                    let status_ts: Option<chrono::DateTime<chrono::Utc>> =
                        r.try_get(8).map_err(|e| api::history_error(e.into()))?;
                    let status_ts = status_ts.map(|t| t.timestamp_millis());
                    out.push(DeviceState {
                        device,
                        lat: Some(fix.lat),
                        lon: Some(fix.lon),
                        ts: Some(fix.ts),
                        speed: fix.speed,
                        heading: fix.heading,
                        accuracy: fix.accuracy,
                        alt: fix.alt,
                        online: r.try_get(9).map_err(|e| api::history_error(e.into()))?,
                        battery: r.try_get(10).map_err(|e| api::history_error(e.into()))?,
                        signal: r.try_get(11).map_err(|e| api::history_error(e.into()))?,
                        last_seen: Some(status_ts.map_or(fix.ts, |t| t.max(fix.ts))),
                        groups,
                    });
                }
                Ok(out)
            })
        }),
    )
    .await
}
