//! The rebuild's PostgreSQL source: each device's newest location
//! (`locations`) and newest status (`device_status`), read in pages of
//! device ids (keyset pagination), so memory stays bounded whatever the
//! fleet and no transaction stays open across the run.

use std::time::Duration;

use anyhow::Context as _;
use chrono::{DateTime, Utc};
use tokio_postgres::NoTls;

use fieldcast_core::{DeviceId, Status};

use super::{DeviceState, Read, Source};

/// Server-side bound on one page's query; the client waits a little longer
/// so that the server's own error, which names the cause, comes first.
const STATEMENT_TIMEOUT: &str = "-c statement_timeout=120s";
const QUERY_TIMEOUT: Duration = Duration::from_secs(130);

/// The next page of device ids after `$1`, `$2` at most, from both tables.
/// Each table is walked as a loose index scan (a recursive CTE hopping
/// from one id to the next over the `(device_id, ts)` primary key), so a
/// page costs one index probe per id and per partition instead of a read
/// of every history row. Each walk stops after `$2` ids, because a
/// subquery's `LIMIT` stops pulling rows from a recursive CTE.
const NEXT_IDS: &str = "
WITH RECURSIVE
  l(id) AS (
    (SELECT device_id FROM locations WHERE device_id > $1 ORDER BY device_id LIMIT 1)
    UNION ALL
    SELECT (SELECT device_id FROM locations WHERE device_id > l.id ORDER BY device_id LIMIT 1)
      FROM l WHERE l.id IS NOT NULL
  ),
  s(id) AS (
    (SELECT device_id FROM device_status WHERE device_id > $1 ORDER BY device_id LIMIT 1)
    UNION ALL
    SELECT (SELECT device_id FROM device_status WHERE device_id > s.id ORDER BY device_id LIMIT 1)
      FROM s WHERE s.id IS NOT NULL
  )
SELECT id FROM (
  (SELECT id FROM l WHERE id IS NOT NULL LIMIT $2)
  UNION
  (SELECT id FROM s WHERE id IS NOT NULL LIMIT $2)
) ids
ORDER BY id
LIMIT $2";

/// Each listed device's newest location and newest status. `battery` and
/// `signal` are the newest reported ones, each on its own: a status that
/// leaves one out keeps the last known value in the hot state (status.lua),
/// so the newest row alone could lose it.
const STATES: &str = "
SELECT d.id,
       l.ts, l.lat, l.lon, l.alt, l.speed, l.heading, l.accuracy,
       s.ts, s.online,
       (SELECT b.battery FROM device_status b
         WHERE b.device_id = d.id AND b.battery IS NOT NULL ORDER BY b.ts DESC LIMIT 1),
       (SELECT g.signal FROM device_status g
         WHERE g.device_id = d.id AND g.signal IS NOT NULL ORDER BY g.ts DESC LIMIT 1)
  FROM unnest($1::text[]) AS d(id)
  LEFT JOIN LATERAL (
    SELECT ts, lat, lon, alt, speed, heading, accuracy FROM locations
     WHERE device_id = d.id ORDER BY ts DESC LIMIT 1) l ON true
  LEFT JOIN LATERAL (
    SELECT ts, online FROM device_status
     WHERE device_id = d.id ORDER BY ts DESC LIMIT 1) s ON true
 ORDER BY d.id";

/// Pages of device states from PostgreSQL, in device id order.
pub struct PgSource {
    client: tokio_postgres::Client,
    next_ids: tokio_postgres::Statement,
    states: tokio_postgres::Statement,
    /// The last id handed out; the next page starts after it.
    after: String,
    page: i64,
    done: bool,
}

impl PgSource {
    /// Connects and prepares the two queries (which fails at once, with
    /// PostgreSQL's reason, on a database without the bridge's tables).
    pub async fn open(url: &str, page: u32) -> anyhow::Result<PgSource> {
        let mut config: tokio_postgres::Config =
            url.parse().context("bad FIELDCAST_DATABASE_URL")?;
        config
            .connect_timeout(Duration::from_secs(5))
            .application_name("fieldcast-bridge rebuild-redis")
            .options(STATEMENT_TIMEOUT);
        let (client, connection) = config
            .connect(NoTls)
            .await
            .context("cannot connect to PostgreSQL (FIELDCAST_DATABASE_URL)")?;
        tokio::spawn(async move {
            if let Err(e) = connection.await {
                tracing::warn!(error = %e, "postgres connection ended");
            }
        });
        let next_ids = client
            .prepare(NEXT_IDS)
            .await
            .context("cannot read the history tables locations and device_status (does FIELDCAST_DATABASE_URL name the bridge's database?)")?;
        let states = client
            .prepare(STATES)
            .await
            .context("cannot read the devices' newest location and status")?;
        Ok(PgSource {
            client,
            next_ids,
            states,
            after: String::new(),
            page: i64::from(page),
            done: false,
        })
    }

    async fn page(&mut self) -> anyhow::Result<Vec<Read>> {
        let ids: Vec<String> = timed(
            self.client
                .query(&self.next_ids, &[&self.after.as_str(), &self.page]),
        )
        .await
        .context("reading the next device ids from PostgreSQL")?
        .iter()
        .map(|r| r.try_get(0))
        .collect::<Result<_, _>>()?;
        let Some(last) = ids.last() else {
            return Ok(Vec::new());
        };
        self.after.clone_from(last);
        let rows = timed(self.client.query(&self.states, &[&ids]))
            .await
            .context("reading the devices' newest location and status from PostgreSQL")?;
        rows.iter().map(read_row).collect()
    }
}

impl Source for PgSource {
    async fn next_batch(&mut self) -> anyhow::Result<Option<Vec<Read>>> {
        if self.done {
            return Ok(None);
        }
        let page = self.page().await?;
        if page.is_empty() {
            self.done = true;
            return Ok(None);
        }
        Ok(Some(page))
    }
}

async fn timed<T>(
    query: impl std::future::Future<Output = Result<T, tokio_postgres::Error>>,
) -> anyhow::Result<T> {
    match tokio::time::timeout(QUERY_TIMEOUT, query).await {
        Ok(r) => Ok(r?),
        Err(_) => anyhow::bail!("no answer from PostgreSQL in {QUERY_TIMEOUT:?}"),
    }
}

/// One row of [`STATES`]. A device id the bridge would refuse (it never
/// stores one) is reported, not written.
fn read_row(row: &tokio_postgres::Row) -> anyhow::Result<Read> {
    let id: String = row.try_get(0)?;
    let device = match DeviceId::parse(&id) {
        Ok(d) => d,
        Err(e) => {
            return Ok(Read::Unusable {
                device: id,
                reason: e.to_string(),
            })
        }
    };
    // No `ts`: the device has no location row (the join found none).
    let location = match row.try_get::<_, Option<DateTime<Utc>>>(1)? {
        Some(_) => Some(fieldcast_service::pg::location_at(row, 1)?),
        None => None,
    };
    let status = match row.try_get::<_, Option<DateTime<Utc>>>(8)? {
        // A Last Will is stored with its receive time as `ts`; applied as a
        // timed status it lands at that time, which is where the live
        // bridge put it unless an earlier status claimed a later time.
        Some(ts) => Some(Status {
            ts: ts.timestamp_millis(),
            device_ts: true,
            online: row.try_get(9)?,
            battery: row.try_get(10)?,
            signal: row.try_get(11)?,
        }),
        None => None,
    };
    Ok(Read::State(DeviceState {
        device,
        location,
        status,
    }))
}
