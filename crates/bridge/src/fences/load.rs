//! Keeps [`Fences`] current: loads fences and device groups with their
//! `config_version` in one snapshot, then reloads on each NOTIFY
//! `fieldcast_config` (migration 0002's trigger sends it in the writing
//! transaction), and checks the version every 30 s besides, in case a
//! notification was missed while the listening connection was down.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use fieldcast_service::pg::{ConfigListener, ConfigWake};
use tokio_util::sync::CancellationToken;

use fieldcast_core::rule::Rule;
use fieldcast_core::{Backoff, LogLimiter, Severity};
use fieldcast_geofence::{Fence, FenceId};

use super::{FenceInfo, Fences, Snapshot};
use crate::metrics::Metrics;

#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error("PostgreSQL: {}", crate::store::postgres::describe(.0))]
    Pg(#[from] tokio_postgres::Error),
    #[error("bad FIELDCAST_DATABASE_URL: {0}")]
    Config(String),
}

impl LoadError {
    /// The tables do not exist yet (SQLSTATE 42P01).
    fn is_schema_pending(&self) -> bool {
        matches!(self, LoadError::Pg(e) if e.code() == Some(&tokio_postgres::error::SqlState::UNDEFINED_TABLE))
    }
}

/// Reads one consistent snapshot. A stored fence that no longer validates
/// (written by another version) is left out and logged, not fatal.
pub async fn read(client: &mut tokio_postgres::Client) -> Result<Snapshot, LoadError> {
    let tx = client
        .build_transaction()
        .isolation_level(tokio_postgres::IsolationLevel::RepeatableRead)
        .read_only(true)
        .start()
        .await?;
    let version: i64 = tx
        .query_one("SELECT version FROM config_version", &[])
        .await?
        .get(0);
    let rows = tx
        .query(
            "SELECT id, feature::text, deleted_at IS NOT NULL FROM geofences",
            &[],
        )
        .await?;
    let mut live = Vec::new();
    let mut deleted = Vec::new();
    for row in rows {
        let id = FenceId(u64::try_from(row.get::<_, i64>(0)).unwrap_or_default());
        let text: String = row.get(1);
        let gone: bool = row.get(2);
        match Fence::from_json(id, &text) {
            Ok(f) if !gone => live.push(f),
            Ok(f) => deleted.push((
                id,
                FenceInfo {
                    name: f.name().to_owned(),
                    severity: Severity::parse(f.severity().as_str()).unwrap_or_default(),
                },
            )),
            Err(e) => {
                tracing::error!(fence = %id, error = %e, "a stored geofence does not validate; left out")
            }
        }
    }
    let mut groups: HashMap<Box<str>, Vec<Box<str>>> = HashMap::new();
    for row in tx
        .query(
            "SELECT device_id, group_name FROM device_groups ORDER BY device_id, group_name",
            &[],
        )
        .await?
    {
        let d: String = row.get(0);
        let g: String = row.get(1);
        groups.entry(d.into()).or_default().push(g.into());
    }
    let mut rules = Vec::new();
    for row in tx
        .query(
            "SELECT id, rule::text FROM alert_rules WHERE deleted_at IS NULL",
            &[],
        )
        .await?
    {
        let id = u64::try_from(row.get::<_, i64>(0)).unwrap_or_default();
        let text: String = row.get(1);
        let parsed = serde_json::from_str(&text)
            .map_err(|e| e.to_string())
            .and_then(|v| Rule::from_json(id, &v).map_err(|e| e.to_string()));
        match parsed {
            Ok(r) => rules.push(r),
            Err(e) => {
                tracing::error!(rule = id, error = %e, "a stored alert rule does not validate; left out")
            }
        }
    }
    tx.commit().await?;
    Ok(Snapshot::new(version, live, deleted, groups).with_rules(rules))
}

/// Runs until `stop`: connects, LISTENs, loads, and reloads on each
/// notification or version change; reconnects with backoff.
pub async fn keep_current(
    url: String,
    fences: Arc<Fences>,
    metrics: Arc<Metrics>,
    stop: CancellationToken,
) {
    let mut backoff = Backoff::new(Duration::from_millis(500), Duration::from_secs(30));
    let mut log = LogLimiter::new(3, Duration::from_secs(60));
    loop {
        let outcome = tokio::select! {
            _ = stop.cancelled() => return,
            r = listen(&url, &fences, &metrics, &mut backoff, &stop) => r,
        };
        if let Err(e) = outcome {
            metrics.config_reload_errors.inc();
            if e.is_schema_pending() {
                // The bridge's own schema upkeep creates the tables at start.
                tracing::debug!(error = %e, "geofence tables not there yet");
            } else if let Some(suppressed) = log.allow() {
                tracing::warn!(error = %e, suppressed, "geofence configuration not loaded; retrying");
            }
        }
        if stop.is_cancelled() {
            return;
        }
        let wait = backoff.next_delay();
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(wait) => {}
        }
    }
}

/// One connection's life: returns when it fails.
async fn listen(
    url: &str,
    fences: &Fences,
    metrics: &Metrics,
    backoff: &mut Backoff,
    stop: &CancellationToken,
) -> Result<(), LoadError> {
    let mut cfg: tokio_postgres::Config = url
        .parse()
        .map_err(|e: tokio_postgres::Error| LoadError::Config(e.to_string()))?;
    cfg.connect_timeout(Duration::from_secs(3));
    cfg.application_name("fieldcast-bridge-config");
    cfg.options("-c statement_timeout=30s");
    let mut listener = ConfigListener::connect(&cfg).await?;
    let mut held = reload(&mut listener.client, fences, metrics).await?;
    backoff.reset();
    loop {
        let wake = tokio::select! {
            _ = stop.cancelled() => return Ok(()),
            w = listener.wait() => w,
        };
        match wake {
            ConfigWake::Closed => {
                return Err(LoadError::Config(
                    "the configuration listener's connection closed".into(),
                ))
            }
            ConfigWake::Notified => held = reload(&mut listener.client, fences, metrics).await?,
            ConfigWake::Poll => {
                if listener.version().await? != held {
                    held = reload(&mut listener.client, fences, metrics).await?;
                }
            }
        }
    }
}

async fn reload(
    client: &mut tokio_postgres::Client,
    fences: &Fences,
    metrics: &Metrics,
) -> Result<i64, LoadError> {
    let s = read(client).await?;
    let version = s.version;
    if version != fences.current().version {
        tracing::info!(
            version,
            fences = s.fences(),
            rules = s.rule_count(),
            "geofences and alert rules loaded"
        );
    }
    metrics.config_version.set(version);
    metrics.geofences.set(s.fences() as i64);
    fences.replace(s);
    Ok(version)
}
