//! `fieldcast-sim probe`: a synthetic device that checks the whole chain.
//!
//! Every `--interval` a round publishes one location (current `ts`) and,
//! with `--events`, one event as the probe device, then waits up to
//! `--timeout` for each to come back: from the broker (the device's own
//! subscription: the device -> broker hop) and from every gateway's
//! WebSocket (device -> bridge -> Redis -> gateway -> browser). Each arrival
//! is a success with its latency, each absence a failure with a reason, on
//! the probe's own `/metrics` ([`metrics`]); `/healthz` says the probe
//! itself runs. Latency is measured on one monotonic clock, in this process.
//!
//! Tasks, all stopped by the shutdown token: the MQTT driver and one
//! watcher per gateway ([`watch`]) feed one bounded channel of [`Seen`]
//! that the round loop reads; the HTTP server serves the metrics.

pub mod args;
pub mod metrics;
pub mod watch;

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use axum::extract::State;
use axum::http::header;
use axum::response::IntoResponse;
use axum::routing::get;
use axum::Router;
use rand::Rng;
use rumqttc::{AsyncClient, NetworkOptions, QoS};
use tokio::net::TcpListener;
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{info, warn};

pub use args::{ProbeArgs, ProbeConfig};
use fieldcast_core::{Kind, Topic};
use metrics::{Metrics, MQTT};
use watch::{Key, Seen};

/// How many arrivals may wait for the round loop.
const SEEN_CAPACITY: usize = 256;

/// Runs the probe until `shutdown`, serving metrics on `listener`.
pub async fn run(
    config: ProbeConfig,
    listener: TcpListener,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let mut targets = vec![MQTT.to_owned()];
    targets.extend(config.gateways.iter().cloned());
    let kinds: &[&'static str] = if config.events {
        &["location", "event"]
    } else {
        &["location"]
    };
    let metrics = Arc::new(Metrics::new(&targets, kinds));
    let tracker = TaskTracker::new();
    let nonce = format!("{:08x}", rand::rng().random::<u32>());

    let mut options = config.mqtt_options.clone();
    options
        .set_client_id(format!("{}-probe-{nonce}", config.device))
        .set_keep_alive(Duration::from_secs(30))
        .set_clean_session(true);
    let (client, mut eventloop) = AsyncClient::new(options, 64);
    let mut network = NetworkOptions::new();
    network.set_tcp_nodelay(true);
    network.set_connection_timeout(10);
    eventloop.set_network_options(network);

    let topics = [
        Topic::format(&config.device, Kind::Location),
        Topic::format(&config.device, Kind::Event),
    ];
    // The round loop holds the receiver; every listener a sender.
    let (seen_tx, seen_rx) = mpsc::channel(SEEN_CAPACITY);
    tracker.spawn(watch::mqtt(
        eventloop,
        client.clone(),
        topics.clone(),
        seen_tx.clone(),
        Arc::clone(&metrics),
        shutdown.clone(),
    ));
    for url in &config.gateways {
        tracker.spawn(watch::gateway(
            url.clone(),
            config.auth.clone(),
            config.device.clone(),
            seen_tx.clone(),
            Arc::clone(&metrics),
            shutdown.clone(),
        ));
    }
    drop(seen_tx);

    let app = Router::new()
        .route("/metrics", get(metrics_text))
        .route("/healthz", get(|| async { "ok\n" }))
        .with_state(Arc::clone(&metrics));
    let addr = listener.local_addr().context("listener address")?;
    let stop = shutdown.clone();
    tracker.spawn(async move {
        let served = axum::serve(listener, app)
            .with_graceful_shutdown(stop.cancelled_owned())
            .await;
        if let Err(error) = served {
            warn!(%error, "probe: metrics server failed");
        }
    });
    tracker.close();
    info!(%addr, device = %config.device, interval = ?config.interval, "probe running");

    let rounds = Rounds {
        client,
        topics,
        targets,
        seen: seen_rx,
        metrics,
        nonce,
        n: 0,
        last_ts: 0,
        config,
    };
    rounds.run(&shutdown).await;
    shutdown.cancel();
    tracker.wait().await;
    Ok(())
}

async fn metrics_text(State(m): State<Arc<Metrics>>) -> impl IntoResponse {
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        m.encode(),
    )
}

/// The round loop's state.
struct Rounds {
    client: AsyncClient,
    /// The device's location and events topics.
    topics: [String; 2],
    /// `mqtt`, then the gateway URLs.
    targets: Vec<String>,
    /// Arrivals from every listener; they hold the senders.
    seen: mpsc::Receiver<Seen>,
    metrics: Arc<Metrics>,
    nonce: String,
    n: u64,
    last_ts: i64,
    config: ProbeConfig,
}

/// One message of a round still on its way to one target.
struct Pending {
    kind: &'static str,
    key: Key,
    target: String,
    /// The target's socket was up and subscribed when the message left: a
    /// target that (re)connects during the round cannot have seen it, and
    /// that is `disconnected`, not `timeout`.
    was_up: bool,
}

impl Rounds {
    async fn run(mut self, stop: &CancellationToken) {
        let mut tick = tokio::time::interval(self.config.interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = tick.tick() => {}
            }
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = self.round() => {}
            }
        }
    }

    async fn round(&mut self) {
        // Whatever arrived since the last round is too late to count.
        while self.seen.try_recv().is_ok() {}
        self.n += 1;
        let ts = fieldcast_core::time::now_ms().max(self.last_ts + 1);
        self.last_ts = ts;
        let (lat, lon) = self.config.position;
        let location = serde_json::json!({"lat": lat, "lon": lon, "ts": ts, "accuracy": 1.0});
        let id = format!("{}-{}-{}", self.config.device, self.nonce, self.n);
        let event = serde_json::json!({"id": id, "kind": "probe", "severity": "info", "ts": ts});

        let mut pending = Vec::new();
        let t0 = Instant::now();
        let mut sends = vec![(
            "location",
            Key::Location(ts),
            self.topics[0].clone(),
            QoS::AtMostOnce,
            location,
        )];
        if self.config.events {
            sends.push((
                "event",
                Key::Event(id),
                self.topics[1].clone(),
                QoS::AtLeastOnce,
                event,
            ));
        }
        for (kind, key, topic, qos, payload) in sends {
            // Taken before the publish: a watcher that subscribes after it
            // may have missed the message.
            let up: Vec<bool> = self
                .targets
                .iter()
                .map(|t| self.metrics.is_connected(t))
                .collect();
            let published = tokio::time::timeout(
                self.config.timeout,
                self.client.publish(topic, qos, false, payload.to_string()),
            )
            .await;
            if !matches!(published, Ok(Ok(()))) || !self.metrics.is_connected(MQTT) {
                for target in &self.targets {
                    self.metrics.failed(kind, target, "publish");
                }
                warn!(kind, "probe: could not publish");
                continue;
            }
            pending.extend(self.targets.iter().zip(up).map(|(target, was_up)| Pending {
                kind,
                key: key.clone(),
                target: target.clone(),
                was_up,
            }));
        }

        let deadline = t0 + self.config.timeout;
        while !pending.is_empty() {
            let seen = tokio::select! {
                _ = tokio::time::sleep_until(deadline) => break,
                seen = self.seen.recv() => seen,
            };
            let Some(seen) = seen else { break };
            if let Some(i) = pending
                .iter()
                .position(|p| p.key == seen.key && *p.target == *seen.target)
            {
                let p = pending.swap_remove(i);
                let secs = seen.at.saturating_duration_since(t0).as_secs_f64();
                self.metrics.succeeded(p.kind, &p.target, secs);
            }
        }
        for p in pending {
            let reason = if p.was_up && self.metrics.is_connected(&p.target) {
                "timeout"
            } else {
                "disconnected"
            };
            warn!(kind = p.kind, target = %p.target, reason, "probe: message did not arrive");
            self.metrics.failed(p.kind, &p.target, reason);
        }
        self.metrics.rounds.inc();
    }
}
