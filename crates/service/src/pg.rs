//! Reads of the history tables that both services make
//! (migrations/0001_history.sql).

use chrono::{DateTime, Utc};
use fieldcast_core::Location;
use tokio_postgres::Row;

/// The location in `row`'s columns from `first` on, in the order of the
/// `locations` table: `ts, lat, lon, alt, speed, heading, accuracy`
/// (`ts` not null).
pub fn location_at(row: &Row, first: usize) -> Result<Location, tokio_postgres::Error> {
    Ok(Location {
        ts: row.try_get::<_, DateTime<Utc>>(first)?.timestamp_millis(),
        lat: row.try_get(first + 1)?,
        lon: row.try_get(first + 2)?,
        alt: row.try_get(first + 3)?,
        speed: row.try_get(first + 4)?,
        heading: row.try_get(first + 5)?,
        accuracy: row.try_get(first + 6)?,
    })
}
