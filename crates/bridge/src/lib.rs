//! `fieldcast-bridge`: device MQTT in, Redis hot state and PostgreSQL
//! history out.
//!
//! ```text
//!  broker ──> source::mqtt ──> queue ──┬─ live ─────> sink::live (run_live) ──> Redis (Lua: state, geo, live)
//!  (QoS 0/1,   parse+validate           ├─ reliable ─> sink::live (run_reliable) ──> PostgreSQL (events,
//!   manual     reject -> DLQ            │              status) | spool, then Redis, then PUBACK in order
//!   acks)                               └─ history ──> sink::history ──> PostgreSQL COPY (locations) | spool
//! ```
//!
//! - [`config`]: flags and environment ([`Config`]).
//! - [`source::mqtt`]: the subscriber; never blocks keepalive.
//! - [`queue`]: the bounded, coalescing queue between them.
//! - [`sink`]: Redis and PostgreSQL writers, the location batcher, the
//!   spool replayer, schema upkeep ([`db`]).
//! - [`spool`]: the fsync'd local spool used while PostgreSQL is down.
//! - [`admin`], [`metrics`], [`health`]: what operators see.
//!
//! Shutdown: stop reading from the broker, drain the queue into the sinks,
//! flush the history batch, send the last acks, disconnect — all under
//! `--shutdown-timeout`.

pub mod admin;
pub mod backoff;
pub mod config;
pub mod db;
pub mod health;
pub mod metrics;
pub mod queue;
pub mod sink;
pub mod source;
pub mod spool;

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use fred::interfaces::ClientLike;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

pub use config::Config;

use health::Health;
use metrics::Metrics;
use queue::{Capacity, Queue};
use sink::history::{maintain_schema, Batcher, Replayer};
use sink::live::LiveSink;
use sink::outbox::Outbox;
use sink::postgres::Pg;
use sink::redis::RedisSink;
use source::mqtt::{Acker, Source};
use spool::Spool;

/// A running bridge's shared parts, for tests and the admin server.
pub struct Handles {
    pub metrics: Arc<Metrics>,
    pub health: Arc<Health>,
    pub admin_addr: std::net::SocketAddr,
}

/// Runs the bridge until `shutdown` is cancelled, then drains and exits.
pub async fn run(config: Config, shutdown: CancellationToken) -> anyhow::Result<()> {
    let (started, done) = start(config, shutdown).await?;
    drop(started);
    done.await
}

/// Starts the bridge and returns its handles plus a future that completes
/// when it has shut down (after `shutdown` is cancelled).
pub async fn start(
    config: Config,
    shutdown: CancellationToken,
) -> anyhow::Result<(
    Handles,
    impl std::future::Future<Output = anyhow::Result<()>>,
)> {
    config.validate().map_err(anyhow::Error::msg)?;
    let metrics = Arc::new(Metrics::new());
    let health = Arc::new(Health::default());
    let retention_ms = i64::try_from(config.retention.as_millis()).unwrap_or(i64::MAX);

    let listener = tokio::net::TcpListener::bind(config.admin_addr)
        .await
        .with_context(|| {
            format!(
                "cannot listen on FIELDCAST_ADMIN_ADDR {}",
                config.admin_addr
            )
        })?;
    let admin_addr = listener.local_addr()?;

    let spool = Spool::open(&config.spool_dir).with_context(|| {
        format!(
            "cannot open the spool directory {}",
            config.spool_dir.display()
        )
    })?;
    let outbox = Arc::new(
        Outbox::open(&config.spool_dir.join("outbox"))
            .with_context(|| "cannot open the outbox in the spool directory")?,
    );
    tracing::info!(spool = %std::path::absolute(&config.spool_dir).unwrap_or_else(|_| config.spool_dir.clone()).display(), "spool directory");
    let pg = Arc::new(Pg::new(sink::postgres::pool(&config.store.database_url)?));
    let redis_client =
        sink::redis::client(&config.store.redis_url).context("bad FIELDCAST_REDIS_URL")?;
    // init() would fail while Redis is down; the client reconnects by itself,
    // so start it in the background and let health report the state.
    let _connection = redis_client.connect();
    let redis = RedisSink::new(redis_client.clone(), &config.store.redis_prefix);

    let queue = Arc::new(Queue::new(
        Capacity {
            live: config.live_capacity,
            reliable: config.queue_capacity,
            history: config.batch_rows.max(10_000) * 4,
            deadletters: 10_000,
        },
        metrics.clone(),
    ));
    let (client, eventloop) = source::mqtt::connect(&config)?;

    let tracker = TaskTracker::new();
    // Background loops stop on `background`; the pipeline stops in order.
    let background = CancellationToken::new();
    let stop_reading = shutdown.clone();
    let stop_polling = CancellationToken::new();
    let abandon = CancellationToken::new();

    tracker.spawn({
        let app = admin::router(health.clone(), metrics.clone());
        let stop = background.clone();
        async move {
            let r = axum::serve(listener, app)
                .with_graceful_shutdown(async move { stop.cancelled().await })
                .await;
            if let Err(e) = r {
                tracing::error!(error = %e, "admin server failed");
            }
        }
    });
    tracker.spawn(check_health(
        pg.clone(),
        redis_client.clone(),
        health.clone(),
        metrics.clone(),
        background.clone(),
    ));
    tracker.spawn(maintain_schema(
        pg.clone(),
        health.clone(),
        config.retention,
        background.clone(),
    ));
    tracker.spawn(trim_event_log(
        RedisSink::new(redis_client.clone(), &config.store.redis_prefix),
        background.clone(),
    ));
    tracker.spawn(
        Replayer {
            spool: spool.clone(),
            pg: pg.clone(),
            queue: queue.clone(),
            health: health.clone(),
            metrics: metrics.clone(),
            batch_rows: config.batch_rows,
            retention_ms,
            timing: sink::history::ReplayTiming::default(),
        }
        .run(background.clone()),
    );
    let source = tracker.spawn(
        Source {
            client: client.clone(),
            filters: source::mqtt::filters(config.mqtt_shared_group.as_deref()),
            queue: queue.clone(),
            metrics: metrics.clone(),
            health: health.clone(),
            limits: config.limits(),
        }
        .run(eventloop, stop_reading.clone(), stop_polling.clone()),
    );
    let redis = Arc::new(redis);
    tracker.spawn(sink::outbox::drain(
        outbox.clone(),
        redis.clone(),
        queue.clone(),
        health.clone(),
        metrics.clone(),
        config.sink_batch,
        background.clone(),
    ));
    let sink = LiveSink {
        queue: queue.clone(),
        redis,
        pg: pg.clone(),
        spool: spool.clone(),
        outbox,
        acker: Acker::new(client),
        health: health.clone(),
        metrics: metrics.clone(),
        batch_size: config.sink_batch,
    };
    let live: Vec<_> = (0..config.sink_workers)
        .map(|_| tracker.spawn(sink.clone().run_live(abandon.clone())))
        .collect();
    let reliable = tracker.spawn(sink.run_reliable(abandon.clone()));
    let history = tracker.spawn(
        Batcher {
            queue: queue.clone(),
            pg: pg.clone(),
            spool: spool.clone(),
            health: health.clone(),
            metrics: metrics.clone(),
            flush_interval: config.flush_interval,
            batch_rows: config.batch_rows,
            memory_rows: config.history_memory_rows,
            retention_ms,
        }
        .run(abandon.clone()),
    );
    tracker.close();

    let handles = Handles {
        metrics: metrics.clone(),
        health: health.clone(),
        admin_addr,
    };
    let timeout = config.shutdown_timeout;
    let done = async move {
        shutdown.cancelled().await;
        tracing::info!("shutting down: draining the queue and flushing history");
        queue.close();
        let deadline = tokio::time::sleep(timeout);
        tokio::pin!(deadline);
        let drained = async {
            for worker in live {
                let _ = worker.await;
            }
            let _ = reliable.await;
            let _ = history.await;
        };
        tokio::select! {
            _ = drained => {}
            _ = &mut deadline => {
                tracing::warn!(?timeout, "shutdown deadline reached; unacknowledged messages will be redelivered");
                abandon.cancel();
            }
        }
        // Give the last PUBACKs a moment to leave through the event loop.
        tokio::time::sleep(Duration::from_millis(100)).await;
        stop_polling.cancel();
        let _ = source.await;
        background.cancel();
        let _ = redis_client.quit().await;
        tracker.wait().await;
        tracing::info!("bridge stopped");
        Ok(())
    };
    Ok((handles, done))
}

/// Probes PostgreSQL and Redis every second, and checks what the bridge
/// needs of Redis once per connection (see [`check_redis`]).
async fn check_health(
    pg: Arc<Pg>,
    redis: fred::prelude::Client,
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
        let redis_ok = matches!(
            tokio::time::timeout(Duration::from_secs(2), redis.ping::<String>(None)).await,
            Ok(Ok(_))
        );
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

async fn trim_event_log(redis: RedisSink, stop: CancellationToken) {
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
