//! The bridge's background upkeep, beside the pipeline: schema migrations,
//! partitions and retention ([`maintain_schema`]), the store probes behind
//! `/readyz` ([`check_health`]) and the event log's time trim
//! ([`trim_event_log`]). Each loop ends when its token is cancelled.

use std::sync::Arc;
use std::time::Duration;

use fred::interfaces::ClientLike;
use tokio_util::sync::CancellationToken;

use crate::health::Health;
use crate::metrics::Metrics;
use crate::store::postgres::Pg;
use crate::store::redis::RedisSink;
use fieldcast_core::Backoff;

/// Applies migrations and keeps partitions and retention up to date: at
/// start (retrying with backoff until PostgreSQL answers) and hourly.
pub async fn maintain_schema(
    pg: Arc<Pg>,
    health: Arc<Health>,
    retention: Duration,
    shutdown: CancellationToken,
) {
    let mut backoff = Backoff::new(Duration::from_millis(500), Duration::from_secs(30));
    loop {
        let outcome = async {
            let mut client = pg.pool().get().await.map_err(|e| e.to_string())?;
            crate::store::schema::prepare(&mut client, retention)
                .await
                .map_err(|e| e.to_string())
        }
        .await;
        let wait = match outcome {
            Ok(m) => {
                if m.applied + m.created + m.dropped > 0 {
                    tracing::info!(
                        migrations = m.applied,
                        partitions_created = m.created,
                        partitions_dropped = m.dropped,
                        "schema up to date"
                    );
                }
                health.set_schema(true);
                backoff.reset();
                Duration::from_secs(3600)
            }
            Err(e) => {
                let d = backoff.next_delay();
                tracing::warn!(error = %e, retry_in = ?d, "schema upkeep failed");
                d
            }
        };
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(wait) => {}
        }
    }
}

/// Probes PostgreSQL and Redis every second, and checks what the bridge
/// needs of Redis once per connection (see `check_redis`). Redis is ready
/// when it answers and every partition's keys answer: on a cluster, not
/// ready exactly while a primary is down and not yet replaced.
pub async fn check_health(
    pg: Arc<Pg>,
    redis: fred::prelude::Client,
    keys: fieldcast_core::Keys,
    health: Arc<Health>,
    metrics: Arc<Metrics>,
    stop: CancellationToken,
) {
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    // Checked again after every reconnect: the Redis that answers may not
    // be the one checked before (a restart, a failover).
    let mut checked: Option<RedisFit> = None;
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tick.tick() => {}
        }
        health.set_pg(pg.ping().await);
        let (pinged, down) = tokio::join!(
            tokio::time::timeout(Duration::from_secs(2), redis.ping::<String>(None)),
            fieldcast_service::redis::unreachable_partitions(&redis, &keys, Duration::from_secs(2))
        );
        if health.set_partitions_down(down.len()) != down.len() && !down.is_empty() {
            tracing::warn!(partitions = ?down, "Redis partitions unreachable (their keys do not answer)");
        }
        let redis_ok = matches!(pinged, Ok(Ok(_))) && down.is_empty();
        if !redis_ok {
            checked = None;
        } else if checked.is_none() {
            checked = check_redis(&redis, &metrics).await;
        }
        let fit = checked.as_ref().is_some_and(|f| f.version_ok);
        health.set_redis(redis_ok && fit);
        metrics.spool_writable.set(i64::from(health.spool()));
        metrics.ready.set(i64::from(health.ready()));
    }
}

/// What was learnt about the Redis server.
struct RedisFit {
    version_ok: bool,
}

/// Redis 7.0 or newer is required (the event log's `XINFO` fields and
/// `XTRIM MINID`); an eviction policy that may remove the bridge's keys
/// (hot state, dedup keys, the event log) is a warning: under memory
/// pressure it would lose live state or push an event twice. `None` when
/// Redis could not be asked.
async fn check_redis(redis: &fred::prelude::Client, metrics: &Metrics) -> Option<RedisFit> {
    use fred::types::InfoKind;
    let info: String =
        tokio::time::timeout(Duration::from_secs(2), redis.info(Some(InfoKind::All)))
            .await
            .ok()?
            .ok()?;
    let field = |name: &str| {
        info.lines()
            .find_map(|l| l.strip_prefix(name)?.strip_prefix(':'))
            .map(str::trim)
    };
    let version = field("redis_version").unwrap_or("unknown");
    let major = version
        .split('.')
        .next()
        .and_then(|m| m.parse::<u32>().ok())
        .unwrap_or(0);
    let version_ok = major >= 7;
    metrics.redis_version_ok.set(i64::from(version_ok));
    if !version_ok {
        tracing::error!(
            version,
            "Redis 7.0 or newer is required; the bridge stays not-ready"
        );
    }
    let policy = field("maxmemory_policy").unwrap_or("unknown");
    let risky = policy != "noeviction";
    metrics.redis_eviction_risk.set(i64::from(risky));
    if risky {
        tracing::warn!(policy, "Redis maxmemory-policy may evict the bridge's keys (hot state, event log, dedup); set it to noeviction");
    }
    Some(RedisFit { version_ok })
}

pub async fn trim_event_log(redis: RedisSink, stop: CancellationToken) {
    let mut tick = tokio::time::interval(Duration::from_secs(60));
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tick.tick() => {}
        }
        if let Err(e) = redis.trim_events(fieldcast_core::time::now_ms()).await {
            tracing::debug!(error = %e, "event log trim failed");
        }
    }
}
