//! PostgreSQL history writer: locations by binary COPY in batches, events
//! and status reports in one transaction per sink batch (they are
//! acknowledged only once stored). Every insert ignores rows the table
//! already has — (`device_id`, `ts`) for locations and status, (`device_id`,
//! `event_id`) for events — so a retry, a spool replay or a redelivery
//! stores each row once.

use std::collections::HashSet;
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod, Runtime};
use futures::pin_mut;
use tokio_postgres::binary_copy::BinaryCopyInWriter;
use tokio_postgres::types::{ToSql, Type};
use tokio_postgres::NoTls;

use fieldcast_core::{DeviceId, Event, Status};

use crate::metrics::{Metrics, TableLabel};
use crate::queue::LocationRow;

/// A write that does not finish in this time is treated as failed (a
/// black-holed connection would otherwise hang a batch forever).
const WRITE_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Debug, Clone, PartialEq)]
pub struct StatusRow {
    pub device: DeviceId,
    pub status: Status,
    pub received_at: i64,
}

#[derive(Debug, Clone, PartialEq)]
pub struct EventRow {
    pub device: DeviceId,
    pub event: Event,
    pub received_at: i64,
}

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
}

/// A connection pool that fails fast while PostgreSQL is away.
pub fn pool(url: &str) -> Result<Pool, PgError> {
    let mut cfg: tokio_postgres::Config = url
        .parse()
        .map_err(|e: tokio_postgres::Error| PgError::Config(e.to_string()))?;
    cfg.connect_timeout(Duration::from_secs(3));
    cfg.application_name("fieldcast-bridge");
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
        let mut seen = HashSet::with_capacity(rows.len());
        let mut client = self.pool.get().await?;
        let tx = client.transaction().await?;
        tx.batch_execute(
            "CREATE TEMP TABLE IF NOT EXISTS fc_location_stage (LIKE locations) ON COMMIT DELETE ROWS",
        )
        .await?;
        let sink = tx
            .copy_in("COPY fc_location_stage FROM STDIN (FORMAT binary)")
            .await?;
        let types = [
            Type::TEXT,
            Type::TIMESTAMPTZ,
            Type::FLOAT8,
            Type::FLOAT8,
            Type::FLOAT8,
            Type::FLOAT8,
            Type::FLOAT8,
            Type::FLOAT8,
            Type::TIMESTAMPTZ,
        ];
        let writer = BinaryCopyInWriter::new(sink, &types);
        pin_mut!(writer);
        for r in rows {
            if !seen.insert((r.device.as_str(), r.loc.ts)) {
                continue;
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
            writer.as_mut().write(&vals).await?;
        }
        writer.finish().await?;
        let n = tx
            .execute(
                "INSERT INTO locations SELECT * FROM fc_location_stage WHERE ts >= $1 ON CONFLICT DO NOTHING",
                &[&ts(cutoff_ms)],
            )
            .await?;
        tx.commit().await?;
        Ok(n)
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
