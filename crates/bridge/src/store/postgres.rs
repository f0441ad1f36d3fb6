//! PostgreSQL history writer: locations by binary COPY in batches, events
//! and status reports in one transaction per sink batch (they are
//! acknowledged only once stored). Every insert ignores rows the table
//! already has — (`device_id`, `ts`) for locations and status, (`device_id`,
//! `event_id`) for events — so a retry, a spool replay or a redelivery
//! stores each row once.
//!
//! The COPY stream itself is built by [`LocationCopy`], which does no I/O, so
//! it can be tested and measured (`benches/copy.rs`) without a database.

use std::collections::HashSet;
use std::time::{Duration, Instant};

use bytes::{BufMut, Bytes, BytesMut};
use chrono::{DateTime, Utc};
use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod, Runtime};
use futures::{pin_mut, SinkExt};
use tokio_postgres::types::{IsNull, ToSql, Type};
use tokio_postgres::NoTls;

use crate::metrics::{Metrics, TableLabel};
use crate::record::{EventRow, LocationRow, StatusRow};

/// A write that does not finish in this time is treated as failed (a
/// black-holed connection would otherwise hang a batch forever).
const WRITE_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Debug, thiserror::Error)]
pub enum PgError {
    #[error("postgres pool: {0}")]
    Pool(#[from] deadpool_postgres::PoolError),
    #[error("postgres: {0}")]
    Db(#[from] tokio_postgres::Error),
    #[error("postgres write timed out after {0:?}")]
    Timeout(Duration),
    #[error("bad database url: {0}")]
    Config(String),
    #[error("cannot encode column {column} of a location row for COPY: {source}")]
    Encode {
        column: usize,
        source: Box<dyn std::error::Error + Sync + Send>,
    },
}

/// A PostgreSQL error with the server's message, where `Display` says only
/// "db error".
pub fn describe(e: &tokio_postgres::Error) -> String {
    match e.as_db_error() {
        Some(d) => format!("{} ({})", d.message(), d.code().code()),
        None => e.to_string(),
    }
}

impl PgError {
    /// The data is at fault, not the server: retrying the same rows can
    /// never succeed (SQLSTATE classes 22 data exception, 23 integrity
    /// constraint, 54 program limit; a row that cannot be encoded). Anything
    /// else — a lost connection, a timeout, a server shutting down, a
    /// serialization failure — is an outage and worth retrying.
    pub fn is_permanent(&self) -> bool {
        match self {
            PgError::Encode { .. } => true,
            PgError::Db(e) => e
                .code()
                .is_some_and(|c| matches!(&c.code()[..2], "22" | "23" | "54")),
            PgError::Pool(_) | PgError::Timeout(_) | PgError::Config(_) => false,
        }
    }
}

/// A history row PostgreSQL refused for its content, with the reason.
#[derive(Debug, Clone, PartialEq)]
pub enum Unstorable {
    Location(LocationRow, String),
    Status(StatusRow, String),
    Event(EventRow, String),
}

/// Statement and lock timeouts for every bridge session: a long analyst
/// query or a DDL lock never queues ingest indefinitely, and a black-holed
/// statement fails instead of hanging.
const SESSION_OPTIONS: &str = "-c statement_timeout=15s -c lock_timeout=5s";

/// A connection pool that fails fast while PostgreSQL is away.
pub fn pool(url: &str) -> Result<Pool, PgError> {
    let mut cfg: tokio_postgres::Config = url
        .parse()
        .map_err(|e: tokio_postgres::Error| PgError::Config(e.to_string()))?;
    cfg.connect_timeout(Duration::from_secs(3));
    cfg.application_name("fieldcast-bridge");
    cfg.options(SESSION_OPTIONS);
    let mgr = Manager::from_config(
        cfg,
        NoTls,
        ManagerConfig {
            recycling_method: RecyclingMethod::Fast,
        },
    );
    Pool::builder(mgr)
        .max_size(8)
        .runtime(Runtime::Tokio1)
        .wait_timeout(Some(Duration::from_secs(5)))
        .create_timeout(Some(Duration::from_secs(3)))
        .recycle_timeout(Some(Duration::from_secs(3)))
        .build()
        .map_err(|e| PgError::Config(e.to_string()))
}

fn ts(ms: i64) -> DateTime<Utc> {
    // Timestamps were validated at the edge (within retention, at most 10
    // minutes ahead), so they are always representable.
    DateTime::from_timestamp_millis(ms).unwrap_or_default()
}

/// While encoding, the bytes so far go to the connection once there are more
/// than this many (as `tokio_postgres`'s `BinaryCopyInWriter` does).
const COPY_CHUNK: usize = 4096;

/// The columns of `locations`, in table order, as the COPY sends them.
const LOCATION_COLUMNS: [Type; 9] = [
    Type::TEXT,        // device_id
    Type::TIMESTAMPTZ, // ts
    Type::FLOAT8,      // lat
    Type::FLOAT8,      // lon
    Type::FLOAT8,      // alt
    Type::FLOAT8,      // speed
    Type::FLOAT8,      // heading
    Type::FLOAT8,      // accuracy
    Type::TIMESTAMPTZ, // received_at
];

/// The signature that opens PostgreSQL's binary COPY format.
const COPY_SIGNATURE: &[u8] = b"PGCOPY\n\xff\r\n\0";

/// Location rows encoded in PostgreSQL's binary COPY format (`FORMAT
/// binary`: header, one tuple per row, trailer), with no I/O. The first row
/// of a (`device`, `ts`) wins; later ones in the same batch are skipped.
/// Each value is encoded by its `ToSql` impl, exactly as
/// `tokio_postgres::binary_copy::BinaryCopyInWriter` would.
pub struct LocationCopy<'a> {
    seen: HashSet<(&'a str, i64)>,
    buf: BytesMut,
}

impl<'a> LocationCopy<'a> {
    /// Starts a stream (the header); `rows` is the expected number of rows.
    pub fn new(rows: usize) -> Self {
        let mut buf = BytesMut::with_capacity(COPY_CHUNK * 2);
        buf.put_slice(COPY_SIGNATURE);
        buf.put_i32(0); // flags
        buf.put_i32(0); // header extension length
        LocationCopy {
            seen: HashSet::with_capacity(rows),
            buf,
        }
    }

    /// Appends one row, unless a row of the same device and `ts` came
    /// before it; returns whether it was appended.
    pub fn push(&mut self, r: &'a LocationRow) -> Result<bool, PgError> {
        if !self.seen.insert((r.device.as_str(), r.loc.ts)) {
            return Ok(false);
        }
        let t = ts(r.loc.ts);
        let rx = ts(r.received_at);
        let l = &r.loc;
        let vals: [&(dyn ToSql + Sync); 9] = [
            &r.device.as_str(),
            &t,
            &l.lat,
            &l.lon,
            &l.alt,
            &l.speed,
            &l.heading,
            &l.accuracy,
            &rx,
        ];
        // The column count; 9 always fits.
        self.buf.put_i16(LOCATION_COLUMNS.len() as i16);
        for (column, (value, ty)) in vals.iter().zip(&LOCATION_COLUMNS).enumerate() {
            let at = self.buf.len();
            self.buf.put_i32(0); // length, filled in below
            let len = match value
                .to_sql_checked(ty, &mut self.buf)
                .map_err(|source| PgError::Encode { column, source })?
            {
                IsNull::Yes => -1,
                IsNull::No => {
                    i32::try_from(self.buf.len() - at - 4).map_err(|e| PgError::Encode {
                        column,
                        source: Box::new(e),
                    })?
                }
            };
            self.buf[at..at + 4].copy_from_slice(&len.to_be_bytes());
        }
        Ok(true)
    }

    /// Bytes encoded and not yet taken.
    pub fn buffered(&self) -> usize {
        self.buf.len()
    }

    /// Takes the bytes encoded so far, to send them while encoding goes on.
    pub fn take(&mut self) -> Bytes {
        self.buf.split().freeze()
    }

    /// Ends the stream (the trailer) and returns the bytes not yet taken.
    pub fn finish(mut self) -> Bytes {
        self.buf.put_i16(-1);
        self.buf.freeze()
    }
}

/// A whole batch as one COPY stream (what [`Pg::write_locations`] sends,
/// in one piece).
pub fn encode_locations(rows: &[LocationRow]) -> Result<Bytes, PgError> {
    let mut copy = LocationCopy::new(rows.len());
    for r in rows {
        copy.push(r)?;
    }
    Ok(copy.finish())
}

/// The bridge's PostgreSQL client: a deadpool of sessions with statement
/// and lock timeouts, binary COPY of location batches ([`LocationCopy`]),
/// idempotent inserts of events and statuses, and the isolation of rows
/// PostgreSQL refuses for their content (`write_*_isolating`).
pub struct Pg {
    pool: Pool,
}

impl Pg {
    pub fn new(pool: Pool) -> Self {
        Pg { pool }
    }

    pub fn pool(&self) -> &Pool {
        &self.pool
    }

    /// Answers when PostgreSQL takes a query.
    pub async fn ping(&self) -> bool {
        let q = async {
            let c = self.pool.get().await.ok()?;
            c.simple_query("SELECT 1").await.ok()
        };
        matches!(
            tokio::time::timeout(Duration::from_secs(2), q).await,
            Ok(Some(_))
        )
    }

    /// Writes location rows; the first row of a (`device`, `ts`) wins, within
    /// the batch and against what is already stored.
    pub async fn write_locations(
        &self,
        rows: &[LocationRow],
        cutoff_ms: i64,
        metrics: &Metrics,
    ) -> Result<u64, PgError> {
        if rows.is_empty() {
            return Ok(0);
        }
        let started = Instant::now();
        let r = timed(self.copy_locations(rows, cutoff_ms)).await;
        observe(metrics, "locations", started, &r);
        r
    }

    async fn copy_locations(&self, rows: &[LocationRow], cutoff_ms: i64) -> Result<u64, PgError> {
        let mut copy = LocationCopy::new(rows.len());
        let mut client = self.pool.get().await?;
        let tx = client.transaction().await?;
        tx.batch_execute(
            "CREATE TEMP TABLE IF NOT EXISTS fc_location_stage (LIKE locations) ON COMMIT DELETE ROWS",
        )
        .await?;
        let sink = tx
            .copy_in::<_, Bytes>("COPY fc_location_stage FROM STDIN (FORMAT binary)")
            .await?;
        pin_mut!(sink);
        for r in rows {
            copy.push(r)?;
            if copy.buffered() > COPY_CHUNK {
                sink.send(copy.take()).await?;
            }
        }
        sink.send(copy.finish()).await?;
        sink.as_mut().finish().await?;
        let n = tx
            .execute(
                "INSERT INTO locations SELECT * FROM fc_location_stage WHERE ts >= $1 ON CONFLICT DO NOTHING",
                &[&ts(cutoff_ms)],
            )
            .await?;
        tx.commit().await?;
        Ok(n)
    }

    /// [`Self::write_locations`], but rows PostgreSQL refuses for their
    /// content are found by splitting the batch and returned instead of
    /// failing it; the rest is written. `Err` only for an outage.
    pub async fn write_locations_isolating(
        &self,
        rows: &[LocationRow],
        cutoff_ms: i64,
        metrics: &Metrics,
    ) -> Result<Vec<Unstorable>, PgError> {
        let mut bad = Vec::new();
        let mut work = vec![rows];
        while let Some(part) = work.pop() {
            match self.write_locations(part, cutoff_ms, metrics).await {
                Ok(_) => {}
                Err(e) if e.is_permanent() => {
                    if let [row] = part {
                        bad.push(Unstorable::Location(row.clone(), e.to_string()));
                    } else {
                        let (a, b) = part.split_at(part.len() / 2);
                        // Popped in order: the first half is written first.
                        work.extend([b, a]);
                    }
                }
                Err(e) => return Err(e),
            }
        }
        Ok(bad)
    }

    /// [`Self::write_durable`], isolating the rows PostgreSQL refuses for
    /// their content (see [`Self::write_locations_isolating`]).
    pub async fn write_durable_isolating(
        &self,
        statuses: &[StatusRow],
        events: &[EventRow],
        metrics: &Metrics,
    ) -> Result<Vec<Unstorable>, PgError> {
        let mut bad = Vec::new();
        let mut work = vec![(statuses, events)];
        while let Some((s, e)) = work.pop() {
            match self.write_durable(s, e, metrics).await {
                Ok(()) => {}
                Err(err) if err.is_permanent() => match (s, e) {
                    ([row], []) => bad.push(Unstorable::Status(row.clone(), err.to_string())),
                    ([], [row]) => bad.push(Unstorable::Event(row.clone(), err.to_string())),
                    (s, []) => {
                        let (a, b) = s.split_at(s.len() / 2);
                        work.extend([(b, &[][..]), (a, &[][..])]);
                    }
                    ([], e) => {
                        let (a, b) = e.split_at(e.len() / 2);
                        work.extend([(&[][..], b), (&[][..], a)]);
                    }
                    (s, e) => work.extend([(&[][..], e), (s, &[][..])]),
                },
                Err(err) => return Err(err),
            }
        }
        Ok(bad)
    }

    /// Stores events and status reports in one transaction.
    pub async fn write_durable(
        &self,
        statuses: &[StatusRow],
        events: &[EventRow],
        metrics: &Metrics,
    ) -> Result<(), PgError> {
        if statuses.is_empty() && events.is_empty() {
            return Ok(());
        }
        let started = Instant::now();
        let r = timed(self.insert_durable(statuses, events)).await;
        if let Err(e) = &r {
            metrics.pg_errors.inc();
            tracing::warn!(error = %e, "postgres write of events/status failed");
        } else {
            metrics
                .pg_write_seconds
                .observe(started.elapsed().as_secs_f64());
            metrics
                .history_rows
                .get_or_create(&TableLabel { table: "events" })
                .inc_by(events.len() as u64);
            metrics
                .history_rows
                .get_or_create(&TableLabel {
                    table: "device_status",
                })
                .inc_by(statuses.len() as u64);
        }
        r
    }

    async fn insert_durable(
        &self,
        statuses: &[StatusRow],
        events: &[EventRow],
    ) -> Result<(), PgError> {
        let mut client = self.pool.get().await?;
        let tx = client.transaction().await?;
        if !events.is_empty() {
            let dev: Vec<&str> = events.iter().map(|e| e.device.as_str()).collect();
            let id: Vec<&str> = events.iter().map(|e| e.event.id.as_str()).collect();
            let t: Vec<DateTime<Utc>> = events.iter().map(|e| ts(e.event.ts)).collect();
            let kind: Vec<&str> = events.iter().map(|e| e.event.kind.as_str()).collect();
            let sev: Vec<&str> = events.iter().map(|e| e.event.severity.as_str()).collect();
            let data: Vec<Option<&str>> = events
                .iter()
                .map(|e| e.event.data.as_deref().map(|d| d.get()))
                .collect();
            let rx: Vec<DateTime<Utc>> = events.iter().map(|e| ts(e.received_at)).collect();
            tx.execute(
                "INSERT INTO events (device_id, event_id, ts, kind, severity, data, received_at)
                 SELECT d, i, t, k, s, j::jsonb, r
                   FROM unnest($1::text[], $2::text[], $3::timestamptz[], $4::text[], $5::text[], $6::text[], $7::timestamptz[])
                     AS u(d, i, t, k, s, j, r)
                 ON CONFLICT DO NOTHING",
                &[&dev, &id, &t, &kind, &sev, &data, &rx],
            )
            .await?;
        }
        if !statuses.is_empty() {
            let dev: Vec<&str> = statuses.iter().map(|s| s.device.as_str()).collect();
            let t: Vec<DateTime<Utc>> = statuses.iter().map(|s| ts(s.status.ts)).collect();
            let online: Vec<bool> = statuses.iter().map(|s| s.status.online).collect();
            let battery: Vec<Option<f64>> = statuses.iter().map(|s| s.status.battery).collect();
            let signal: Vec<Option<f64>> = statuses.iter().map(|s| s.status.signal).collect();
            let rx: Vec<DateTime<Utc>> = statuses.iter().map(|s| ts(s.received_at)).collect();
            tx.execute(
                "INSERT INTO device_status (device_id, ts, online, battery, signal, received_at)
                 SELECT * FROM unnest($1::text[], $2::timestamptz[], $3::bool[], $4::float8[], $5::float8[], $6::timestamptz[])
                 ON CONFLICT DO NOTHING",
                &[&dev, &t, &online, &battery, &signal, &rx],
            )
            .await?;
        }
        tx.commit().await?;
        Ok(())
    }
}

async fn timed<T>(f: impl std::future::Future<Output = Result<T, PgError>>) -> Result<T, PgError> {
    tokio::time::timeout(WRITE_TIMEOUT, f)
        .await
        .unwrap_or(Err(PgError::Timeout(WRITE_TIMEOUT)))
}

fn observe(metrics: &Metrics, table: &'static str, started: Instant, r: &Result<u64, PgError>) {
    match r {
        Ok(n) => {
            metrics
                .pg_write_seconds
                .observe(started.elapsed().as_secs_f64());
            if table == "locations" {
                metrics
                    .history_rows
                    .get_or_create(&TableLabel { table })
                    .inc_by(*n);
            }
        }
        Err(e) => {
            metrics.pg_errors.inc();
            tracing::warn!(error = %e, table, "postgres write failed");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use fieldcast_core::{DeviceId, Location};

    fn row(device: &str, ts: i64, alt: Option<f64>) -> LocationRow {
        LocationRow {
            device: DeviceId::parse(device).unwrap(),
            loc: Location {
                ts,
                lat: 51.5073509,
                lon: -0.1277583,
                alt,
                speed: Some(12.5),
                heading: Some(87.5),
                accuracy: Some(4.8),
            },
            received_at: ts + 250,
        }
    }

    /// Reads one tuple's values (`None` for NULL) from the front of `b`.
    fn tuple<'b>(b: &mut &'b [u8]) -> Option<Vec<Option<&'b [u8]>>> {
        let (n, rest) = b.split_at(2);
        let n = i16::from_be_bytes(n.try_into().unwrap());
        *b = rest;
        if n == -1 {
            return None;
        }
        let mut vals = Vec::new();
        for _ in 0..n {
            let (len, rest) = b.split_at(4);
            let len = i32::from_be_bytes(len.try_into().unwrap());
            *b = rest;
            if len < 0 {
                vals.push(None);
            } else {
                let (v, rest) = b.split_at(len as usize);
                vals.push(Some(v));
                *b = rest;
            }
        }
        Some(vals)
    }

    /// Pins the location COPY stream: PostgreSQL's binary header, one
    /// 9-column tuple per first (device, ts) of the batch, NULL for what the
    /// device did not send, big-endian float8, timestamptz as µs since
    /// 2000-01-01, and the -1 trailer.
    #[test]
    fn copy_stream_is_the_binary_format() {
        let ts = 1_763_800_000_123;
        let rows = [
            row("veh-00042", ts, Some(31.2)),
            row("veh-00042", ts, Some(99.0)), // same device and ts: skipped
            row("veh-00043", ts, None),
        ];
        let bytes = encode_locations(&rows).unwrap();
        let mut b: &[u8] = &bytes;
        assert_eq!(&b[..11], COPY_SIGNATURE);
        assert_eq!(&b[11..19], &[0; 8], "flags and header extension");
        b = &b[19..];

        let first = tuple(&mut b).unwrap();
        assert_eq!(first.len(), 9);
        assert_eq!(first[0], Some(&b"veh-00042"[..]));
        let micros_2000 = (ts - 946_684_800_000) * 1000;
        assert_eq!(first[1], Some(&micros_2000.to_be_bytes()[..]));
        assert_eq!(first[2], Some(&51.5073509f64.to_be_bytes()[..]));
        assert_eq!(
            first[4],
            Some(&31.2f64.to_be_bytes()[..]),
            "the first row wins"
        );
        assert_eq!(first[8], Some(&(micros_2000 + 250_000).to_be_bytes()[..]));

        let second = tuple(&mut b).unwrap();
        assert_eq!(second[0], Some(&b"veh-00043"[..]));
        assert_eq!(second[4], None, "alt was not sent");
        assert_eq!(tuple(&mut b), None, "trailer");
        assert!(b.is_empty());
    }

    /// Pins that the chunks the writer sends while encoding add up to the
    /// same stream as one-piece encoding.
    #[test]
    fn chunked_copy_equals_one_piece() {
        let rows: Vec<_> = (0..500)
            .map(|i| row(&format!("veh-{:05}", i % 50), 1_763_800_000_000 + i, None))
            .collect();
        let mut copy = LocationCopy::new(rows.len());
        let mut sent = Vec::new();
        for r in &rows {
            assert!(copy.push(r).unwrap());
            if copy.buffered() > COPY_CHUNK {
                sent.extend_from_slice(&copy.take());
            }
        }
        sent.extend_from_slice(&copy.finish());
        assert_eq!(sent, encode_locations(&rows).unwrap());
    }
}
