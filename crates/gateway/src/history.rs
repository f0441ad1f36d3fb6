//! SQL reads of the history tables (migrations/0001_history.sql): a
//! device's track, keyset-paginated and streamed row by row, and the event
//! list with an opaque `(ts, device, id)` cursor. Every value reaches SQL as
//! a parameter.

use std::pin::Pin;

use chrono::{DateTime, Utc};
use deadpool_postgres::{Object, Pool};
use futures::{Stream, StreamExt};
use serde::Serialize;
use serde_json::value::RawValue;
use tokio_postgres::types::ToSql;
use tokio_postgres::{Row, RowStream};

/// A history read failed: PostgreSQL is down or refused the query.
#[derive(Debug, thiserror::Error)]
pub enum HistoryError {
    #[error("postgresql pool: {0}")]
    Pool(#[from] deadpool_postgres::PoolError),
    #[error("postgresql: {0}")]
    Query(#[from] tokio_postgres::Error),
}

/// Builds the pool; connections are made on first use, so the gateway
/// starts (not ready) while PostgreSQL is away.
pub fn pool(url: &str, size: usize) -> anyhow::Result<Pool> {
    let pg: tokio_postgres::Config = url.parse()?;
    let mgr = deadpool_postgres::Manager::from_config(
        pg,
        tokio_postgres::NoTls,
        deadpool_postgres::ManagerConfig {
            recycling_method: deadpool_postgres::RecyclingMethod::Fast,
        },
    );
    Ok(Pool::builder(mgr)
        .max_size(size)
        .runtime(deadpool_postgres::Runtime::Tokio1)
        .wait_timeout(Some(std::time::Duration::from_secs(5)))
        .create_timeout(Some(std::time::Duration::from_secs(3)))
        .recycle_timeout(Some(std::time::Duration::from_secs(3)))
        .build()?)
}

pub fn to_time(ms: i64) -> DateTime<Utc> {
    DateTime::from_timestamp_millis(ms).unwrap_or(DateTime::<Utc>::MIN_UTC)
}

/// One stored location.
#[derive(Debug, Clone, Serialize)]
pub struct Point {
    pub ts: i64,
    pub lat: f64,
    pub lon: f64,
    pub alt: Option<f64>,
    pub speed: Option<f64>,
    pub heading: Option<f64>,
    pub accuracy: Option<f64>,
}

impl Point {
    fn from_row(r: &Row) -> Result<Self, tokio_postgres::Error> {
        Ok(Point {
            ts: r.try_get::<_, DateTime<Utc>>(0)?.timestamp_millis(),
            lat: r.try_get(1)?,
            lon: r.try_get(2)?,
            alt: r.try_get(3)?,
            speed: r.try_get(4)?,
            heading: r.try_get(5)?,
            accuracy: r.try_get(6)?,
        })
    }
}

const TRACK_SQL: &str = "SELECT ts, lat, lon, alt, speed, heading, accuracy FROM locations \
     WHERE device_id = $1 AND ts >= $2 AND ts < $3 ORDER BY ts LIMIT $4";

const TRACK_NEXT_SQL: &str = "SELECT ts FROM locations \
     WHERE device_id = $1 AND ts >= $2 AND ts < $3 ORDER BY ts OFFSET $4 LIMIT 1";

/// The points of `device` in `[from, to)`, oldest first: at most `limit`
/// of them, then (if there are more) the point that starts the next page,
/// which the caller turns into `next`. The pooled connection lives as long
/// as the stream.
pub async fn track(
    pool: &Pool,
    device: &str,
    from: i64,
    to: i64,
    limit: i64,
) -> Result<Pin<Box<dyn Stream<Item = Result<Point, HistoryError>> + Send>>, HistoryError> {
    let client = pool.get().await?;
    let stmt = client.prepare_cached(TRACK_SQL).await?;
    let (f, t, n) = (to_time(from), to_time(to), limit + 1);
    let params: [&(dyn ToSql + Sync); 4] = [&device, &f, &t, &n];
    let rows = client.query_raw(&stmt, params.iter().copied()).await?;
    Ok(Box::pin(futures::stream::unfold(
        (client, Box::pin(rows)),
        |(client, mut rows): (Object, Pin<Box<RowStream>>)| async move {
            let row = rows.next().await?;
            let point = row
                .and_then(|r| Point::from_row(&r))
                .map_err(HistoryError::from);
            Some((point, (client, rows)))
        },
    )))
}

/// The `ts` of the first point after the first `limit` ones (the next
/// page's `from`), for formats whose header is sent before the rows.
pub async fn track_next(
    pool: &Pool,
    device: &str,
    from: i64,
    to: i64,
    limit: i64,
) -> Result<Option<i64>, HistoryError> {
    let client = pool.get().await?;
    let stmt = client.prepare_cached(TRACK_NEXT_SQL).await?;
    let row = client
        .query_opt(&stmt, &[&device, &to_time(from), &to_time(to), &limit])
        .await?;
    Ok(match row {
        Some(r) => Some(r.try_get::<_, DateTime<Utc>>(0)?.timestamp_millis()),
        None => None,
    })
}

/// Where the previous events page ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EventCursor {
    /// Microseconds: the column's own precision, so no row is skipped or
    /// repeated when timestamps carry more than milliseconds.
    pub ts_us: i64,
    pub device: String,
    pub id: String,
}

impl EventCursor {
    /// Opaque to clients: hex of `ts|device|id` (a device id has no `|`).
    pub fn encode(&self) -> String {
        let s = format!("{}|{}|{}", self.ts_us, self.device, self.id);
        s.bytes().map(|b| format!("{b:02x}")).collect()
    }

    pub fn decode(s: &str) -> Option<Self> {
        if s.len() % 2 != 0 || s.len() > 1024 {
            return None;
        }
        let bytes: Option<Vec<u8>> = (0..s.len())
            .step_by(2)
            .map(|i| s.get(i..i + 2).and_then(|h| u8::from_str_radix(h, 16).ok()))
            .collect();
        let text = String::from_utf8(bytes?).ok()?;
        let mut parts = text.splitn(3, '|');
        let ts_us = parts.next()?.parse().ok()?;
        let device = parts.next()?.to_owned();
        let id = parts.next()?.to_owned();
        Some(EventCursor { ts_us, device, id })
    }
}

/// An events query, already validated.
#[derive(Debug, Clone)]
pub struct EventsQuery {
    pub device: Option<String>,
    pub kind: Option<String>,
    pub from: i64,
    pub to: i64,
    pub limit: i64,
    pub after: Option<EventCursor>,
    /// `LIKE` patterns of the token's device scope; `None` = all.
    pub scope: Option<Vec<String>>,
}

/// One stored event as `/api/events` returns it.
#[derive(Debug, Serialize)]
pub struct StoredEvent {
    pub device: String,
    pub id: String,
    pub ts: i64,
    pub kind: String,
    pub severity: String,
    pub data: Option<Box<RawValue>>,
}

const EVENTS_SQL: &str = "SELECT device_id, event_id, ts, kind, severity, data::text FROM events \
     WHERE ts >= $1 AND ts < $2 \
       AND ($3::text IS NULL OR device_id = $3) \
       AND ($4::text IS NULL OR kind = $4) \
       AND ($5::text[] IS NULL OR device_id LIKE ANY($5)) \
       AND ($6::timestamptz IS NULL OR (ts, device_id, event_id) > ($6, $7::text, $8::text)) \
     ORDER BY ts, device_id, event_id LIMIT $9";

/// One page of events and the cursor of the next (if any).
pub async fn events(
    pool: &Pool,
    q: &EventsQuery,
) -> Result<(Vec<StoredEvent>, Option<EventCursor>), HistoryError> {
    let client = pool.get().await?;
    let stmt = client.prepare_cached(EVENTS_SQL).await?;
    let after_ts = q
        .after
        .as_ref()
        .map(|c| DateTime::from_timestamp_micros(c.ts_us).unwrap_or(DateTime::<Utc>::MIN_UTC));
    let after_dev = q.after.as_ref().map(|c| c.device.clone());
    let after_id = q.after.as_ref().map(|c| c.id.clone());
    let n = q.limit + 1;
    let rows = client
        .query(
            &stmt,
            &[
                &to_time(q.from),
                &to_time(q.to),
                &q.device,
                &q.kind,
                &q.scope,
                &after_ts,
                &after_dev,
                &after_id,
                &n,
            ],
        )
        .await?;
    let mut out = Vec::with_capacity(rows.len().min(q.limit as usize));
    let mut last_us = 0;
    for r in rows.iter().take(q.limit as usize) {
        let data: Option<String> = r.try_get(5)?;
        let ts: DateTime<Utc> = r.try_get(2)?;
        last_us = ts.timestamp_micros();
        out.push(StoredEvent {
            device: r.try_get(0)?,
            id: r.try_get(1)?,
            ts: ts.timestamp_millis(),
            kind: r.try_get(3)?,
            severity: r.try_get(4)?,
            data: data.and_then(|d| RawValue::from_string(d).ok()),
        });
    }
    let next = if rows.len() as i64 > q.limit {
        out.last().map(|e| EventCursor {
            ts_us: last_us,
            device: e.device.clone(),
            id: e.id.clone(),
        })
    } else {
        None
    };
    Ok((out, next))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn event_cursor_round_trips() {
        let c = EventCursor {
            ts_us: 1763800000000123,
            device: "truck-7".into(),
            id: "ev|1 ü".into(),
        };
        assert_eq!(EventCursor::decode(&c.encode()), Some(c));
        assert_eq!(EventCursor::decode("zz"), None);
        assert_eq!(EventCursor::decode("abc"), None);
    }
}
