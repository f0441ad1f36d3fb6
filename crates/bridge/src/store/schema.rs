//! Schema upkeep: the SQL migrations in `migrations/`, daily `locations`
//! partitions created ahead, and retention (old partitions dropped, old
//! events and status rows deleted). Every step runs under one advisory
//! lock, so any number of bridges can start at once.

use std::time::Duration;

use chrono::{DateTime, Days, NaiveDate, Utc};
use tokio_postgres::GenericClient;

/// Arbitrary, fixed: the advisory lock every bridge takes for schema work.
const SCHEMA_LOCK: i64 = 0x6669_656c_6463_6173; // "fieldcas"

/// The migrations, in order. Applied once each, recorded in
/// `schema_migrations`.
const MIGRATIONS: &[(&str, &str)] = &[
    (
        "0001_history",
        include_str!("../../../../migrations/0001_history.sql"),
    ),
    (
        "0002_geofences",
        include_str!("../../../../migrations/0002_geofences.sql"),
    ),
    (
        "0003_history_speed",
        include_str!("../../../../migrations/0003_history_speed.sql"),
    ),
    (
        "0004_device_groups",
        include_str!("../../../../migrations/0004_device_groups.sql"),
    ),
];

/// How many migrations there are (a fresh database gets each once).
pub const MIGRATION_COUNT: usize = MIGRATIONS.len();

/// Partitions are made this many days ahead of today.
const DAYS_AHEAD: u64 = 3;

/// Applies pending migrations, creates the partitions that the retention
/// window and the next few days need, and drops partitions and rows older
/// than `retention`. Idempotent.
pub async fn prepare(
    client: &mut tokio_postgres::Client,
    retention: Duration,
) -> Result<Maintained, tokio_postgres::Error> {
    let tx = client.transaction().await?;
    // DDL on `locations` waits for every running query on it, and while it
    // waits every insert queues behind it: give up quickly (the hourly
    // upkeep retries with backoff) rather than stall ingest behind a long
    // analyst query. Retention deletes may legitimately take a while.
    tx.batch_execute("SET LOCAL lock_timeout = '2s'; SET LOCAL statement_timeout = '300s'")
        .await?;
    tx.execute("SELECT pg_advisory_xact_lock($1)", &[&SCHEMA_LOCK])
        .await?;
    tx.batch_execute(
        "CREATE TABLE IF NOT EXISTS schema_migrations (
             version    text PRIMARY KEY,
             applied_at timestamptz NOT NULL DEFAULT now())",
    )
    .await?;
    let mut applied = 0;
    for (version, sql) in MIGRATIONS {
        let done = tx
            .query_opt(
                "SELECT 1 FROM schema_migrations WHERE version = $1",
                &[version],
            )
            .await?
            .is_some();
        if !done {
            tx.batch_execute(sql).await?;
            tx.execute(
                "INSERT INTO schema_migrations (version) VALUES ($1)",
                &[version],
            )
            .await?;
            applied += 1;
        }
    }
    let m = partitions(&tx, Utc::now(), retention).await?;
    tx.commit().await?;
    Ok(Maintained { applied, ..m })
}

/// What one [`prepare`] run did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Maintained {
    pub applied: usize,
    pub created: usize,
    pub dropped: usize,
}

pub fn partition_name(day: NaiveDate) -> String {
    format!("locations_p{}", day.format("%Y%m%d"))
}

fn day_start(day: NaiveDate) -> DateTime<Utc> {
    day.and_hms_opt(0, 0, 0).unwrap_or_default().and_utc()
}

async fn partitions(
    tx: &impl GenericClient,
    now: DateTime<Utc>,
    retention: Duration,
) -> Result<Maintained, tokio_postgres::Error> {
    let existing: Vec<String> = tx
        .query(
            "SELECT c.relname::text FROM pg_inherits i
               JOIN pg_class c ON c.oid = i.inhrelid
               JOIN pg_class p ON p.oid = i.inhparent
              WHERE p.relname = 'locations'",
            &[],
        )
        .await?
        .into_iter()
        .map(|r| r.get(0))
        .collect();
    let cutoff = now - chrono::Duration::from_std(retention).unwrap_or(chrono::Duration::days(90));
    let first = cutoff.date_naive();
    let last = now.date_naive() + Days::new(DAYS_AHEAD);
    let mut m = Maintained::default();
    let mut day = first;
    while day <= last {
        let name = partition_name(day);
        if !existing.contains(&name) {
            let next = day + Days::new(1);
            tx.batch_execute(&format!(
                "CREATE TABLE IF NOT EXISTS {name} PARTITION OF locations FOR VALUES FROM ('{}') TO ('{}')",
                day_start(day).to_rfc3339(),
                day_start(next).to_rfc3339()
            ))
            .await?;
            m.created += 1;
        }
        day = day + Days::new(1);
    }
    for name in &existing {
        let Some(day) = name
            .strip_prefix("locations_p")
            .and_then(|d| NaiveDate::parse_from_str(d, "%Y%m%d").ok())
        else {
            continue;
        };
        // A partition goes once all of its day is past the window.
        if day_start(day + Days::new(1)) <= cutoff {
            tx.batch_execute(&format!("DROP TABLE IF EXISTS {name}"))
                .await?;
            m.dropped += 1;
        }
    }
    // The days of the partitions just dropped (the same rule: a day goes
    // with its partition), so `?at=` never looks for a day that is gone.
    tx.execute(
        "DELETE FROM location_days WHERE day < $1",
        &[&cutoff.date_naive()],
    )
    .await?;
    tx.execute("DELETE FROM events WHERE ts < $1", &[&cutoff])
        .await?;
    tx.execute("DELETE FROM device_status WHERE ts < $1", &[&cutoff])
        .await?;
    Ok(m)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn partition_names_sort_by_day() {
        let d = NaiveDate::from_ymd_opt(2026, 1, 9).unwrap();
        assert_eq!(partition_name(d), "locations_p20260109");
    }
}
