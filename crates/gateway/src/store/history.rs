//! SQL reads of the history tables (migrations/0001_history.sql): a
//! device's track, keyset-paginated, and the event list with an opaque
//! `(ts, device, id)` cursor. Every value reaches SQL as a parameter.
//!
//! A history request holds one pooled connection inside one read-only
//! transaction ([`begin`]) whose `SET LOCAL statement_timeout` bounds every
//! statement of it. Its rows are read through a portal in chunks
//! ([`CHUNK_ROWS`] per `Execute`), so PostgreSQL's work is bounded per
//! chunk and nothing runs on the server while the gateway waits for a slow
//! client: the backend sits idle in the transaction, which the caller
//! bounds with its send timeout, then [`end`]s (or [`discard`]s the
//! connection), so a connection goes back to the pool with no portal,
//! transaction or lock left open.

use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use deadpool_postgres::{Object, Pool, Transaction};
use fieldcast_core::{DeviceId, Location};
use serde::Serialize;
use serde_json::value::RawValue;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_postgres::error::SqlState;
use tokio_postgres::types::ToSql;
use tokio_postgres::{IsolationLevel, Portal, Row};

use crate::config::Config;

/// A history read failed: PostgreSQL is down, refused the query, or the
/// query ran past its statement timeout.
#[derive(Debug, thiserror::Error)]
pub enum HistoryError {
    #[error("postgresql pool: {0}")]
    Pool(#[from] deadpool_postgres::PoolError),
    #[error("postgresql: {0}")]
    Query(#[from] tokio_postgres::Error),
}

impl HistoryError {
    /// The statement timeout (`statement_timeout`) cancelled the query.
    pub fn is_timeout(&self) -> bool {
        matches!(self, HistoryError::Query(e) if e.code() == Some(&SqlState::QUERY_CANCELED))
    }
}

/// Rows per `Execute` of a portal: one chunk of a streamed response.
pub const CHUNK_ROWS: usize = 1000;

/// How long [`end`] waits for `ROLLBACK` before discarding the connection.
const END_TIMEOUT: Duration = Duration::from_secs(2);

/// Server-side backstop past the gateway's own limits: PostgreSQL ends a
/// session idle in its transaction this much longer than the send timeout,
/// so even a wedged gateway task cannot hold a snapshot and locks forever.
const IDLE_IN_TXN_MARGIN: Duration = Duration::from_secs(10);

/// Limits of the HTTP history endpoints (and of the publish body), taken
/// from [`Config`]: see `FIELDCAST_HISTORY_TIMEOUT`,
/// `FIELDCAST_HISTORY_SEND_TIMEOUT`, `FIELDCAST_HISTORY_CONCURRENCY` and
/// `FIELDCAST_PUBLISH_MAX_BYTES`. Cheap to clone; clones share the slots.
#[derive(Debug, Clone)]
pub struct HistoryLimits {
    /// `statement_timeout` of every statement of a history request (each
    /// chunk of a streamed page is one statement).
    pub statement_timeout: Duration,
    /// Longest a history response waits for its client to take the next
    /// chunk; a reader that stalls longer is cut and its connection freed.
    pub send_timeout: Duration,
    /// Largest `POST /api/publish` body, in bytes.
    pub publish_max_bytes: usize,
    /// History requests served at once; past it, 429.
    pub concurrency: usize,
    slots: Arc<Semaphore>,
}

impl HistoryLimits {
    pub fn new(
        statement_timeout: Duration,
        send_timeout: Duration,
        concurrency: usize,
        publish_max_bytes: usize,
    ) -> Self {
        HistoryLimits {
            statement_timeout,
            send_timeout,
            publish_max_bytes,
            concurrency,
            slots: Arc::new(Semaphore::new(concurrency)),
        }
    }

    pub fn from_config(c: &Config) -> Self {
        Self::new(
            c.history_timeout,
            c.history_send_timeout,
            c.history_concurrency.get(),
            c.publish_max_bytes.get(),
        )
    }

    /// A slot for one history request, held until its response is done;
    /// `None` when all are taken (the caller answers 429, never queues:
    /// a queue would only hold more sockets for longer).
    pub fn try_acquire(&self) -> Option<OwnedSemaphorePermit> {
        self.slots.clone().try_acquire_owned().ok()
    }
}

impl Default for HistoryLimits {
    /// The configuration's defaults.
    fn default() -> Self {
        Self::new(Duration::from_secs(30), Duration::from_secs(10), 12, 65_536)
    }
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

/// Milliseconds for a `SET`, at least 1 (0 would mean "no limit").
fn ms(d: Duration) -> u128 {
    d.as_millis().max(1)
}

/// Starts the read-only transaction of one history request, its
/// statements bounded by the statement timeout. Repeatable read: the
/// `Fieldcast-Next` header, the rows and the "was this device ever seen"
/// check all see the same snapshot.
pub async fn begin<'a>(
    client: &'a mut Object,
    limits: &HistoryLimits,
) -> Result<Transaction<'a>, HistoryError> {
    let txn = client
        .build_transaction()
        .isolation_level(IsolationLevel::RepeatableRead)
        .read_only(true)
        .start()
        .await?;
    // SET LOCAL: the values end with the transaction, so a connection back
    // in the pool carries none of them. Integers only: nothing to quote.
    txn.batch_execute(&format!(
        "SET LOCAL statement_timeout = {}; SET LOCAL idle_in_transaction_session_timeout = {}",
        ms(limits.statement_timeout),
        ms(limits.send_timeout + IDLE_IN_TXN_MARGIN),
    ))
    .await?;
    Ok(txn)
}

/// Ends a history transaction. `ROLLBACK` (the transaction only read)
/// also closes its portals and releases its locks; `true` when that
/// succeeded in time, so the connection is clean and may go back to the
/// pool. `false`: [`discard`] it.
pub async fn end(txn: Transaction<'_>) -> bool {
    match tokio::time::timeout(END_TIMEOUT, txn.rollback()).await {
        Ok(Ok(())) => true,
        Ok(Err(e)) => {
            tracing::debug!(error = %e, "history transaction did not end cleanly");
            false
        }
        Err(_) => {
            tracing::debug!("history transaction did not end within {END_TIMEOUT:?}");
            false
        }
    }
}

/// Takes a connection of unknown state out of the pool and closes it:
/// its socket closes at once (the connection task is aborted), so the
/// server ends the backend, rolling back whatever it still held.
pub fn discard(client: Object) {
    drop(Object::take(client));
}

pub fn to_time(ms: i64) -> DateTime<Utc> {
    DateTime::from_timestamp_millis(ms).unwrap_or(DateTime::<Utc>::MIN_UTC)
}

/// One stored location, a row of `locations` (the columns of
/// [`TRACK_SQL`], in order).
fn location_from_row(r: &Row) -> Result<Location, tokio_postgres::Error> {
    fieldcast_service::pg::location_at(r, 0)
}

/// A track query, already validated: `[from, to)`, at most `limit` points.
#[derive(Debug, Clone)]
pub struct TrackQuery {
    pub device: DeviceId,
    pub from: i64,
    pub to: i64,
    pub limit: i64,
    /// `bucket=`: the first fix of each bucket of this many ms (buckets
    /// aligned on the epoch, so a page that starts at `next` cuts the
    /// same buckets).
    pub bucket_ms: Option<i64>,
}

const TRACK_SQL: &str = "SELECT ts, lat, lon, alt, speed, heading, accuracy FROM locations \
     WHERE device_id = $1 AND ts >= $2 AND ts < $3 ORDER BY ts LIMIT $4";

const TRACK_NEXT_SQL: &str = "SELECT ts FROM locations \
     WHERE device_id = $1 AND ts >= $2 AND ts < $3 ORDER BY ts OFFSET $4 LIMIT 1";

/// The first fix of each bucket, as a skip scan: each step is one probe of
/// the primary key for the first fix at or after the next bucket's start,
/// so a month in hourly buckets reads 720 rows, not millions. PostgreSQL
/// evaluates the recursion lazily, so `LIMIT` (and a portal) stop it.
const TRACK_BUCKET_SQL: &str = "WITH RECURSIVE b AS ( \
       (SELECT ts, lat, lon, alt, speed, heading, accuracy FROM locations \
         WHERE device_id = $1 AND ts >= $2 AND ts < $3 ORDER BY ts LIMIT 1) \
       UNION ALL \
       SELECT n.* FROM b CROSS JOIN LATERAL ( \
         SELECT ts, lat, lon, alt, speed, heading, accuracy FROM locations \
          WHERE device_id = $1 AND ts < $3 \
            AND ts >= date_bin($5::bigint * interval '1 millisecond', b.ts, timestamptz 'epoch') \
                      + $5::bigint * interval '1 millisecond' \
          ORDER BY ts LIMIT 1) n) \
     SELECT ts, lat, lon, alt, speed, heading, accuracy FROM b LIMIT $4";

const TRACK_BUCKET_NEXT_SQL: &str = "WITH RECURSIVE b AS ( \
       (SELECT ts FROM locations \
         WHERE device_id = $1 AND ts >= $2 AND ts < $3 ORDER BY ts LIMIT 1) \
       UNION ALL \
       SELECT n.* FROM b CROSS JOIN LATERAL ( \
         SELECT ts FROM locations \
          WHERE device_id = $1 AND ts < $3 \
            AND ts >= date_bin($5::bigint * interval '1 millisecond', b.ts, timestamptz 'epoch') \
                      + $5::bigint * interval '1 millisecond' \
          ORDER BY ts LIMIT 1) n) \
     SELECT ts FROM b OFFSET $4 LIMIT 1";

/// Any trace of the device in history: a location, a status or an event.
const SEEN_SQL: &str = "SELECT EXISTS (SELECT 1 FROM locations WHERE device_id = $1) \
     OR EXISTS (SELECT 1 FROM device_status WHERE device_id = $1) \
     OR EXISTS (SELECT 1 FROM events WHERE device_id = $1)";

/// A portal over the points of the track, oldest first: at most `limit`
/// of them, then (if there are more) the point that starts the next page,
/// which the caller turns into `next`. Read it with [`fetch_points`].
pub async fn track_portal(txn: &Transaction<'_>, q: &TrackQuery) -> Result<Portal, HistoryError> {
    let (d, f, t, n) = (
        q.device.as_str(),
        to_time(q.from),
        to_time(q.to),
        q.limit.saturating_add(1),
    );
    match q.bucket_ms {
        None => {
            let stmt = txn.prepare_cached(TRACK_SQL).await?;
            let params: [&(dyn ToSql + Sync); 4] = [&d, &f, &t, &n];
            Ok(txn.bind(&stmt, &params).await?)
        }
        Some(b) => {
            let stmt = txn.prepare_cached(TRACK_BUCKET_SQL).await?;
            let params: [&(dyn ToSql + Sync); 5] = [&d, &f, &t, &n, &b];
            Ok(txn.bind(&stmt, &params).await?)
        }
    }
}

/// The next chunk of a track portal: fewer than `max` points means it is
/// exhausted.
pub async fn fetch_points(
    txn: &Transaction<'_>,
    portal: &Portal,
    max: usize,
) -> Result<Vec<Location>, HistoryError> {
    let rows = txn.query_portal(portal, max_rows(max)).await?;
    Ok(rows
        .iter()
        .map(location_from_row)
        .collect::<Result<_, _>>()?)
}

fn max_rows(n: usize) -> i32 {
    i32::try_from(n).unwrap_or(i32::MAX).max(1)
}

/// The `ts` of the first point after the first `limit` ones (the next
/// page's `from`), for formats whose header is sent before the rows.
pub async fn track_next(
    txn: &Transaction<'_>,
    q: &TrackQuery,
) -> Result<Option<i64>, HistoryError> {
    let (d, f, t) = (q.device.as_str(), to_time(q.from), to_time(q.to));
    let row = match q.bucket_ms {
        None => {
            let stmt = txn.prepare_cached(TRACK_NEXT_SQL).await?;
            txn.query_opt(&stmt, &[&d, &f, &t, &q.limit]).await?
        }
        Some(b) => {
            let stmt = txn.prepare_cached(TRACK_BUCKET_NEXT_SQL).await?;
            txn.query_opt(&stmt, &[&d, &f, &t, &q.limit, &b]).await?
        }
    };
    Ok(match row {
        Some(r) => Some(r.try_get::<_, DateTime<Utc>>(0)?.timestamp_millis()),
        None => None,
    })
}

/// Whether history holds anything of `device` (any time, any table).
pub async fn seen(txn: &Transaction<'_>, device: &str) -> Result<bool, HistoryError> {
    let stmt = txn.prepare_cached(SEEN_SQL).await?;
    Ok(txn.query_one(&stmt, &[&device]).await?.try_get(0)?)
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
        if !s.len().is_multiple_of(2) || s.len() > 1024 {
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
    pub device: Option<DeviceId>,
    pub kind: Option<String>,
    pub from: i64,
    pub to: i64,
    pub limit: i64,
    pub after: Option<EventCursor>,
    /// `LIKE` patterns of the token's device scope; `None` = all.
    pub scope: Option<Vec<String>>,
    /// The token's groups: their devices (as `device_groups` holds them
    /// now) are in scope too; `None` = no group claim.
    pub scope_groups: Option<Vec<String>>,
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

/// The events page query; `{groups}` is empty, or, for a token with a
/// `groups` claim, the condition that adds its groups' devices.
macro_rules! events_sql {
    ($groups:literal) => {
        concat!(
            "SELECT device_id, event_id, ts, kind, severity, data::text FROM events \
             WHERE ts >= $1 AND ts < $2 \
               AND ($3::text IS NULL OR device_id = $3) \
               AND ($4::text IS NULL OR kind = $4) \
               AND ($5::text[] IS NULL OR device_id LIKE ANY($5)",
            $groups,
            ") AND ($6::timestamptz IS NULL OR (ts, device_id, event_id) > ($6, $7::text, $8::text)) \
             ORDER BY ts, device_id, event_id LIMIT $9"
        )
    };
}

const EVENTS_SQL: &str = events_sql!("");

/// Only tokens with `groups` read `device_groups` (migration 0002), so the
/// events of every other token do not depend on that table existing.
const EVENTS_GROUPS_SQL: &str = events_sql!(
    " OR device_id IN (SELECT device_id FROM device_groups WHERE group_name = ANY($10::text[]))"
);

/// One stored event and its `ts` at the column's precision (for the cursor).
#[derive(Debug)]
pub struct EventRow {
    pub event: StoredEvent,
    pub ts_us: i64,
}

impl EventRow {
    fn from_row(r: &Row) -> Result<Self, tokio_postgres::Error> {
        let data: Option<String> = r.try_get(5)?;
        let ts: DateTime<Utc> = r.try_get(2)?;
        Ok(EventRow {
            event: StoredEvent {
                device: r.try_get(0)?,
                id: r.try_get(1)?,
                ts: ts.timestamp_millis(),
                kind: r.try_get(3)?,
                severity: r.try_get(4)?,
                data: data.and_then(|d| RawValue::from_string(d).ok()),
            },
            ts_us: ts.timestamp_micros(),
        })
    }

    /// The cursor of a page that ends with this event.
    pub fn cursor(&self) -> EventCursor {
        EventCursor {
            ts_us: self.ts_us,
            device: self.event.device.clone(),
            id: self.event.id.clone(),
        }
    }
}

/// A portal over one page of events, oldest first: at most `limit`, then
/// (if there are more) one extra, which tells the caller to write `next`.
/// Read it with [`fetch_events`].
pub async fn events_portal(txn: &Transaction<'_>, q: &EventsQuery) -> Result<Portal, HistoryError> {
    let sql = if q.scope_groups.is_some() {
        EVENTS_GROUPS_SQL
    } else {
        EVENTS_SQL
    };
    let stmt = txn.prepare_cached(sql).await?;
    let after_ts = q
        .after
        .as_ref()
        .map(|c| DateTime::from_timestamp_micros(c.ts_us).unwrap_or(DateTime::<Utc>::MIN_UTC));
    let after_dev = q.after.as_ref().map(|c| c.device.clone());
    let after_id = q.after.as_ref().map(|c| c.id.clone());
    let device = q.device.as_ref().map(DeviceId::as_str);
    let (f, t, n) = (to_time(q.from), to_time(q.to), q.limit + 1);
    let params: [&(dyn ToSql + Sync); 10] = [
        &f,
        &t,
        &device,
        &q.kind,
        &q.scope,
        &after_ts,
        &after_dev,
        &after_id,
        &n,
        &q.scope_groups,
    ];
    let used = if q.scope_groups.is_some() { 10 } else { 9 };
    Ok(txn.bind(&stmt, &params[..used]).await?)
}

/// The next chunk of an events portal: fewer than `max` rows means it is
/// exhausted.
pub async fn fetch_events(
    txn: &Transaction<'_>,
    portal: &Portal,
    max: usize,
) -> Result<Vec<EventRow>, HistoryError> {
    let rows = txn.query_portal(portal, max_rows(max)).await?;
    Ok(rows
        .iter()
        .map(EventRow::from_row)
        .collect::<Result<_, _>>()?)
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

    #[test]
    fn default_limits_are_the_configuration_defaults() {
        use clap::Parser;
        let c = Config::try_parse_from(["g", "--auth", "none"]).unwrap();
        let (a, b) = (HistoryLimits::from_config(&c), HistoryLimits::default());
        assert_eq!(a.statement_timeout, b.statement_timeout);
        assert_eq!(a.send_timeout, b.send_timeout);
        assert_eq!(a.concurrency, b.concurrency);
        assert_eq!(a.publish_max_bytes, b.publish_max_bytes);
    }

    #[test]
    fn slots_are_capped_and_given_back() {
        let l = HistoryLimits::new(Duration::from_secs(1), Duration::from_secs(1), 2, 10);
        let (a, b) = (l.try_acquire().unwrap(), l.clone().try_acquire().unwrap());
        assert!(l.try_acquire().is_none(), "a clone shares the slots");
        drop(a);
        assert!(l.try_acquire().is_some());
        drop(b);
    }
}
