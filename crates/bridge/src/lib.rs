//! `fieldcast-bridge`: device MQTT in (directly, or through NATS
//! JetStream), Redis hot state and PostgreSQL history out.
//!
//! ```text
//!  broker ──> source::mqtt ──> queue ──┬─ live ─────> sink::live ─────> store::redis (Lua: state, geo, live)
//!  (QoS 0/1,  | source::nats            ├─ reliable ─> sink::reliable ─> store::postgres (events, status)
//!   or JetStream) source::intake:       │
//!             parse+validate            │
//!   manual     reject -> DLQ            │                                | store::spool, then store::redis
//!   acks)                               │                                (or sink::outbox), then ack
//!                                       └─ history ──> sink::history ──> store::postgres COPY (locations)
//!                                                                        | store::spool -> sink::replay
//! ```
//!
//! Roles, then adapters:
//! - [`source::mqtt`]: the subscriber; never blocks keepalive.
//!   [`source::nats`]: the JetStream pull consumer, used instead when
//!   `FIELDCAST_NATS_URL` is set. [`source::intake`]: what both do with a
//!   message. [`ack`]: the acknowledgements that leave only once a message
//!   is stored.
//! - [`queue`]: the bounded lanes between them; [`record`]: every row and
//!   record they carry.
//! - [`sink`]: the loops that drain the lanes ([`sink::live`],
//!   [`sink::reliable`], [`sink::history`]) and what they owe later
//!   ([`sink::outbox`], [`sink::replay`]).
//! - [`store`]: the clients — [`store::redis`], [`store::postgres`],
//!   [`store::spool`] (fsync'd, while PostgreSQL is down),
//!   [`store::schema`] (migrations, partitions).
//! - [`upkeep`]: schema upkeep, store probes, the event log's trim.
//! - [`webhook`]: alerts owed to HTTP endpoints, sent from the PostgreSQL
//!   outbox, signed, at least once (docs/webhooks.md).
//! - [`config`], [`admin`], [`metrics`], [`health`]: what operators set and see.
//! - [`fences`]: the geofences every bridge holds, kept current from
//!   PostgreSQL; the membership each location carries into `location.lua`
//!   and the drain that turns recorded changes into events.
//! - [`rebuild`]: `fieldcast-bridge rebuild-redis`, the one-shot rebuild of
//!   the Redis hot state from PostgreSQL or the pre-partition keys.
//!
//! [`start`] opens the stores (`Opened`), spawns the pipeline
//! (`Running`) and returns a future that drains it on shutdown
//! (`Running::drain`): stop reading from the broker, drain the queue
//! into the sinks, flush the history batch, send the last acks,
//! disconnect — all under `--shutdown-timeout`.

pub mod ack;
pub mod admin;
pub mod config;
pub mod fences;
pub mod health;
pub mod metrics;
pub mod queue;
pub mod rebuild;
pub mod record;
pub mod sink;
pub mod source;
pub mod store;
pub mod upkeep;
pub mod webhook;

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use fred::interfaces::ClientLike;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

pub use config::Config;

use ack::Acker;
use health::{BrokerKind, Health};
use metrics::Metrics;
use queue::{Capacity, Queue};
use sink::history::Batcher;
use sink::live::LiveSink;
use sink::outbox::Outbox;
use sink::reliable::ReliableSink;
use sink::replay::{ReplayTiming, Replayer};
use source::intake::{Intake, Settling};
use store::postgres::Pg;
use store::redis::RedisSink;
use store::spool::Spool;

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
    config.validate()?;
    let opened = Opened::open(&config).await?;
    let handles = Handles {
        metrics: opened.metrics.clone(),
        health: opened.health.clone(),
        admin_addr: opened.admin_addr,
    };
    let running = Running::spawn(&config, opened, shutdown);
    Ok((handles, running.drain()))
}

/// Everything the bridge opens before a task starts, each step failing
/// with an error that names the setting at fault.
struct Opened {
    metrics: Arc<Metrics>,
    health: Arc<Health>,
    listener: tokio::net::TcpListener,
    admin_addr: std::net::SocketAddr,
    spool: Spool,
    outbox: Arc<Outbox>,
    pg: Arc<Pg>,
    redis_client: fred::prelude::Client,
    queue: Arc<Queue>,
    broker: Broker,
    /// Webhook delivery; `webhooks.wake()` is for whoever enqueues.
    webhooks: webhook::Sender,
}

/// The broker connection the source reads from.
enum Broker {
    Mqtt(rumqttc::AsyncClient, Box<rumqttc::EventLoop>),
    Nats(async_nats::Client, source::nats::NatsLink),
}

impl Opened {
    async fn open(config: &Config) -> anyhow::Result<Opened> {
        let metrics = Arc::new(Metrics::new());
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
        let pg = Arc::new(Pg::new(store::postgres::pool(&config.store.database_url)?));
        let webhooks =
            webhook::Sender::new(pg.clone(), config.webhook.settings(), metrics.clone())?;
        let redis_client = fieldcast_service::redis::builder(
            &config.store.redis_url,
            fieldcast_service::redis::WhileDown::Fail,
        )
        .and_then(|b| b.build())
        .context("bad FIELDCAST_REDIS_URL")?;
        // init() would fail while Redis is down; the client reconnects by
        // itself, so start it in the background and let health report it.
        let _connection = redis_client.connect();
        let queue = Arc::new(
            Queue::new(
                Capacity {
                    live: config.live_capacity,
                    reliable: config.queue_capacity,
                    history: config.batch_rows.max(10_000) * 4,
                    deadletters: 10_000,
                },
                metrics.clone(),
            )
            .wake_history_at(config.batch_rows)
            .with_live_shards(config.sink_workers),
        );
        let (health, broker) = match &config.nats.url {
            None => {
                let (client, eventloop) = source::mqtt::connect(config)?;
                (
                    Arc::new(Health::new(BrokerKind::Mqtt)),
                    Broker::Mqtt(client, Box::new(eventloop)),
                )
            }
            Some(url) => {
                let health = Arc::new(Health::new(BrokerKind::Nats));
                let (client, link) =
                    source::nats::connect(url, health.clone(), metrics.clone()).await?;
                (health, Broker::Nats(client, link))
            }
        };
        Ok(Opened {
            metrics,
            health,
            listener,
            admin_addr,
            spool,
            outbox,
            pg,
            redis_client,
            queue,
            broker,
            webhooks,
        })
    }
}

/// The tokens that stop a running bridge, in the order they are cancelled.
struct Stops {
    /// The caller's (SIGTERM): the source stops taking messages — QoS 1
    /// ones stay unacknowledged, for the broker to redeliver — and the
    /// queue is closed, so the sinks drain what it holds and end.
    shutdown: CancellationToken,
    /// The shutdown deadline: sinks give up on what they cannot write
    /// (nothing of it was acknowledged).
    abandon: CancellationToken,
    /// After the sinks ended and the last PUBACKs left: the source stops
    /// polling the broker and disconnects.
    stop_polling: CancellationToken,
    /// Last: the admin server, store probes, schema upkeep, the event-log
    /// trim, the spool replayer and the outbox drain.
    background: CancellationToken,
}

fn retention_ms(config: &Config) -> i64 {
    i64::try_from(config.retention.as_millis()).unwrap_or(i64::MAX)
}

/// The tasks beside the pipeline but the admin server, all stopped last
/// (`bg`): the geofence loader and transition drain, store probes, schema
/// upkeep, the event-log trim, the spool replayer and the outbox drain.
fn spawn_background(
    config: &Config,
    o: &Opened,
    redis: &Arc<RedisSink>,
    fences: &Arc<fences::Fences>,
    tracker: &TaskTracker,
    bg: &CancellationToken,
) {
    tracker.spawn(fences::load::keep_current(
        config.store.database_url.clone(),
        fences.clone(),
        o.metrics.clone(),
        bg.clone(),
    ));
    tracker.spawn(
        fences::alerts::Sweep {
            redis: redis.clone(),
            pg: o.pg.clone(),
            fences: fences.clone(),
            metrics: o.metrics.clone(),
            consumer: fences::drain::Drain::consumer_name(),
            webhooks: o.webhooks.wake(),
        }
        .run(bg.clone()),
    );
    tracker.spawn(
        fences::drain::Drain {
            redis: redis.clone(),
            pg: o.pg.clone(),
            fences: fences.clone(),
            metrics: o.metrics.clone(),
            consumer: fences::drain::Drain::consumer_name(),
            webhooks: o.webhooks.wake(),
        }
        .run(bg.clone()),
    );
    tracker.spawn(upkeep::check_health(
        o.pg.clone(),
        o.redis_client.clone(),
        redis.keys().clone(),
        o.health.clone(),
        o.metrics.clone(),
        bg.clone(),
    ));
    tracker.spawn(upkeep::maintain_schema(
        o.pg.clone(),
        o.health.clone(),
        config.retention,
        bg.clone(),
    ));
    tracker.spawn(upkeep::trim_event_log(
        RedisSink::new(o.redis_client.clone(), config.store.keys()),
        bg.clone(),
    ));
    tracker.spawn(
        Replayer {
            spool: o.spool.clone(),
            pg: o.pg.clone(),
            queue: o.queue.clone(),
            health: o.health.clone(),
            metrics: o.metrics.clone(),
            batch_rows: config.batch_rows,
            retention_ms: retention_ms(config),
            timing: ReplayTiming::default(),
        }
        .run(bg.clone()),
    );
    tracker.spawn(sink::outbox::drain(
        o.outbox.clone(),
        redis.clone(),
        o.queue.clone(),
        o.health.clone(),
        o.metrics.clone(),
        config.sink_batch,
        bg.clone(),
    ));
    tracker.spawn(o.webhooks.clone().run(bg.clone()));
}

impl Stops {
    /// The caller's token first, the bridge's own after it.
    fn after(shutdown: CancellationToken) -> Stops {
        Stops {
            shutdown,
            abandon: CancellationToken::new(),
            stop_polling: CancellationToken::new(),
            background: CancellationToken::new(),
        }
    }
}

/// Spawns the source of the configured broker; returns it and the acker
/// the reliable sink settles its messages with.
fn spawn_source(
    config: &Config,
    broker: Broker,
    o: &Pipes,
    stops: &Stops,
    tracker: &TaskTracker,
) -> (JoinHandle<()>, Acker) {
    let intake = |settling| {
        Intake::new(
            o.queue.clone(),
            o.metrics.clone(),
            config.limits(),
            settling,
        )
    };
    match broker {
        Broker::Mqtt(client, eventloop) => {
            let source = source::mqtt::Source {
                client: client.clone(),
                filters: source::mqtt::filters(config.mqtt_shared_group.as_deref()),
                intake: intake(Settling::InOrder),
                metrics: o.metrics.clone(),
                health: o.health.clone(),
            };
            let run = source.run(
                *eventloop,
                stops.shutdown.clone(),
                stops.stop_polling.clone(),
            );
            (tracker.spawn(run), Acker::Mqtt(client))
        }
        Broker::Nats(client, link) => {
            let source = source::nats::Source {
                client: client.clone(),
                link,
                settings: source::nats::Settings::of(config),
                intake: intake(Settling::Independent),
                metrics: o.metrics.clone(),
                health: o.health.clone(),
            };
            let run = source.run(stops.shutdown.clone(), stops.stop_polling.clone());
            (tracker.spawn(run), Acker::Nats(client))
        }
    }
}

/// What a source shares with the rest of the pipeline.
struct Pipes {
    queue: Arc<Queue>,
    metrics: Arc<Metrics>,
    health: Arc<Health>,
}

/// A spawned pipeline: what [`Running::drain`] waits for, in order.
struct Running {
    stops: Stops,
    tracker: TaskTracker,
    live: Vec<JoinHandle<()>>,
    reliable: JoinHandle<()>,
    history: JoinHandle<()>,
    source: JoinHandle<()>,
    queue: Arc<Queue>,
    redis_client: fred::prelude::Client,
    timeout: Duration,
}

impl Running {
    fn spawn(config: &Config, o: Opened, shutdown: CancellationToken) -> Running {
        let stops = Stops::after(shutdown);
        let tracker = TaskTracker::new();
        let fences = Arc::new(fences::Fences::default());
        let redis = Arc::new(
            RedisSink::new(o.redis_client.clone(), config.store.keys()).with_fences(fences.clone()),
        );
        let bg = &stops.background;
        spawn_background(config, &o, &redis, &fences, &tracker, bg);
        tracker.spawn(admin::serve(
            o.listener,
            admin::router(o.health.clone(), o.metrics.clone()),
            bg.clone(),
        ));
        let pipes = Pipes {
            queue: o.queue.clone(),
            metrics: o.metrics.clone(),
            health: o.health.clone(),
        };
        let (source, acker) = spawn_source(config, o.broker, &pipes, &stops, &tracker);
        let live = (0..config.sink_workers)
            .map(|shard| {
                let sink = LiveSink {
                    queue: o.queue.clone(),
                    shard,
                    redis: redis.clone(),
                    health: o.health.clone(),
                    metrics: o.metrics.clone(),
                    batch_size: config.sink_batch,
                };
                tracker.spawn(sink.run(stops.abandon.clone()))
            })
            .collect();
        let reliable = tracker.spawn(
            ReliableSink {
                queue: o.queue.clone(),
                redis,
                pg: o.pg.clone(),
                spool: o.spool.clone(),
                outbox: o.outbox,
                acker,
                health: o.health.clone(),
                metrics: o.metrics.clone(),
                batch_size: config.sink_batch,
            }
            .run(stops.abandon.clone()),
        );
        let history = tracker.spawn(
            Batcher {
                queue: o.queue.clone(),
                pg: o.pg,
                spool: o.spool,
                health: o.health,
                metrics: o.metrics,
                flush_interval: config.flush_interval,
                batch_rows: config.batch_rows,
                memory_rows: config.history_memory_rows,
                retention_ms: retention_ms(config),
            }
            .run(stops.abandon.clone()),
        );
        tracker.close();
        Running {
            stops,
            tracker,
            live,
            reliable,
            history,
            source,
            queue: o.queue,
            redis_client: o.redis_client,
            timeout: config.shutdown_timeout,
        }
    }

    /// Waits for `shutdown`, then stops the bridge in the order of [`Stops`].
    async fn drain(self) -> anyhow::Result<()> {
        let Running {
            stops,
            tracker,
            live,
            reliable,
            history,
            source,
            queue,
            redis_client,
            timeout,
        } = self;
        stops.shutdown.cancelled().await;
        tracing::info!("shutting down: draining the queue and flushing history");
        queue.close();
        let drained = async {
            for worker in live {
                let _ = worker.await;
            }
            let _ = reliable.await;
            let _ = history.await;
        };
        tokio::select! {
            _ = drained => {}
            _ = tokio::time::sleep(timeout) => {
                tracing::warn!(?timeout, "shutdown deadline reached; unacknowledged messages will be redelivered");
                stops.abandon.cancel();
            }
        }
        // Give the last PUBACKs a moment to leave through the event loop.
        tokio::time::sleep(Duration::from_millis(100)).await;
        stops.stop_polling.cancel();
        let _ = source.await;
        stops.background.cancel();
        let _ = redis_client.quit().await;
        tracker.wait().await;
        tracing::info!("bridge stopped");
        Ok(())
    }
}
