//! Device groups in PostgreSQL (`device_groups`, the authority; issue
//! #16): the write of `PUT /api/devices/{id}/groups`, and the task that
//! keeps the hub's copy ([`crate::live::groups::Memberships`]) current on
//! every gateway.
//!
//! Every write to `device_groups` bumps `config_version` and sends NOTIFY
//! `fieldcast_config` at commit (migration 0002's statement trigger, which
//! also makes the bridges reload the groups their fences and rules use).
//! [`keep_current`] LISTENs on its own connection, reads the whole table
//! again after each notification (100 ms settle) and checks the version
//! every 30 s in case a notification was lost with the connection; the hub
//! announces each device whose groups changed to its subscribers.

use std::sync::Arc;
use std::time::Duration;

use fieldcast_service::pg::{ConfigListener, ConfigWake};
use tokio_postgres::GenericClient;
use tokio_util::sync::CancellationToken;

use fieldcast_core::{Backoff, DeviceId, LogLimiter};

use crate::live::groups::Memberships;
use crate::live::hub::Hub;
use crate::store::config::ConfigError;

/// Every device's groups.
pub async fn load<C: GenericClient>(client: &C) -> Result<Memberships, tokio_postgres::Error> {
    let rows = client
        .query("SELECT device_id, group_name FROM device_groups", &[])
        .await?;
    let mut pairs = Vec::with_capacity(rows.len());
    for r in rows {
        pairs.push((r.try_get::<_, String>(0)?, r.try_get::<_, String>(1)?));
    }
    Ok(Memberships::from_rows(pairs))
}

/// Gives `device` exactly `groups` (sorted, checked) in the transaction
/// `txn`; `false` when it already had them (then nothing is written, so no
/// bridge or gateway is woken for nothing). Concurrent writers of one
/// device queue on a transaction lock of its own.
pub async fn replace(
    txn: &deadpool_postgres::Transaction<'_>,
    device: &DeviceId,
    groups: &[Box<str>],
) -> Result<bool, ConfigError> {
    txn.execute(
        "SELECT pg_advisory_xact_lock(hashtextextended('fieldcast-device-groups:' || $1, 0))",
        &[&device.as_str()],
    )
    .await?;
    let mut now: Vec<String> = txn
        .query(
            "SELECT group_name FROM device_groups WHERE device_id = $1",
            &[&device.as_str()],
        )
        .await?
        .iter()
        .map(|r| r.try_get(0))
        .collect::<Result<_, _>>()?;
    now.sort();
    if now
        .iter()
        .map(String::as_str)
        .eq(groups.iter().map(|g| &**g))
    {
        return Ok(false);
    }
    let names: Vec<&str> = groups.iter().map(|g| &**g).collect();
    txn.execute(
        "DELETE FROM device_groups WHERE device_id = $1 AND NOT (group_name = ANY($2::text[]))",
        &[&device.as_str(), &names],
    )
    .await?;
    txn.execute(
        "INSERT INTO device_groups (device_id, group_name) \
         SELECT $1, unnest($2::text[]) ON CONFLICT DO NOTHING",
        &[&device.as_str(), &names],
    )
    .await?;
    Ok(true)
}

/// Runs until `stop`: connects, LISTENs, loads the groups into `hub`, and
/// loads them again on each notification or version change; reconnects
/// with backoff and jitter.
pub async fn keep_current(config: tokio_postgres::Config, hub: Arc<Hub>, stop: CancellationToken) {
    let mut backoff = Backoff::new(Duration::from_millis(500), Duration::from_secs(30));
    let mut log = LogLimiter::new(3, Duration::from_secs(60));
    loop {
        let outcome = tokio::select! {
            _ = stop.cancelled() => return,
            r = listen(&config, &hub, &mut backoff, &stop) => r,
        };
        if let Err(e) = outcome {
            if e.code() == Some(&tokio_postgres::error::SqlState::UNDEFINED_TABLE) {
                // A bridge creates the table when it first migrates.
                tracing::debug!(error = %e, "device_groups not there yet");
            } else if let Some(suppressed) = log.allow() {
                tracing::warn!(error = %e, suppressed, "device groups not loaded; retrying");
            }
        }
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(backoff.next_delay()) => {}
        }
    }
}

/// One connection's life: returns when it fails (`Ok` on shutdown or
/// when the connection ended without an error).
async fn listen(
    config: &tokio_postgres::Config,
    hub: &Hub,
    backoff: &mut Backoff,
    stop: &CancellationToken,
) -> Result<(), tokio_postgres::Error> {
    let mut listener = ConfigListener::connect(config).await?;
    let mut held = reload(&listener.client, hub).await?;
    backoff.reset();
    loop {
        let wake = tokio::select! {
            _ = stop.cancelled() => return Ok(()),
            w = listener.wait() => w,
        };
        match wake {
            ConfigWake::Closed => return Ok(()),
            ConfigWake::Notified => held = reload(&listener.client, hub).await?,
            ConfigWake::Poll => {
                if listener.version().await? != held {
                    held = reload(&listener.client, hub).await?;
                }
            }
        }
    }
}

/// Loads the groups with the version they were read at, in one snapshot,
/// and hands them to the hub.
async fn reload(client: &tokio_postgres::Client, hub: &Hub) -> Result<i64, tokio_postgres::Error> {
    client
        .batch_execute("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY")
        .await?;
    let read = async {
        let v: i64 = client
            .query_one("SELECT version FROM config_version", &[])
            .await?
            .try_get(0)?;
        Ok::<_, tokio_postgres::Error>((v, load(client).await?))
    }
    .await;
    let _ = client.batch_execute("COMMIT").await;
    let (version, members) = read?;
    hub.replace_memberships(members);
    Ok(version)
}
