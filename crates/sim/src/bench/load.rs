//! The benchmark's load: the fleet's devices ([`Device`]: routes, payloads)
//! publishing locations only, on a fixed grid per device, over the fleet's
//! connection layout (`--connections`), each send recorded in the
//! [`SendLog`] just before it is handed to the MQTT client.
//!
//! Not `fleet::run`, because the benchmark must know every message it sent
//! (the fleet only counts them) and keeps its traffic to locations (no
//! statuses, events or retained messages that would blur the numbers).
//! Pacing follows the fleet: a random phase per device, sends on a fixed
//! grid, and a device that falls more than a period behind skips the missed
//! fixes (counted) rather than bursting. With `--overspeed-every`, the
//! devices report overspeed bursts ([`Bursts`]).

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use rumqttc::{AsyncClient, Event, EventLoop, NetworkOptions, Packet, QoS};
use serde::Deserialize;
use tokio::sync::watch;
use tokio::time::{sleep, sleep_until, Instant};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{debug, warn};

use super::log::{SendLog, Sent};
use super::overspeed::Bursts;
use crate::device::Device;
use crate::fleet::FleetConfig;
use fieldcast_core::Backoff;

/// Counters of the load, over the whole run (warm-up included).
#[derive(Debug, Default)]
pub struct LoadStats {
    pub sent: AtomicU64,
    /// Grid slots skipped: the device was more than a period behind, or its
    /// connection was down.
    pub skipped: AtomicU64,
    pub publish_errors: AtomicU64,
    pub connection_errors: AtomicU64,
    /// Overspeed bursts whose tripping location (the second) was sent in
    /// the window: with a matching rule, one alert each.
    pub bursts: AtomicU64,
}

/// Starts one driver and one publisher per MQTT connection on `tracker`;
/// they run until `stop`.
pub fn spawn(
    tracker: &TaskTracker,
    config: &FleetConfig,
    bursts: Option<Bursts>,
    log: &Arc<SendLog>,
    stats: &Arc<LoadStats>,
    stop: &CancellationToken,
) {
    let Some(period) = config.location_every() else {
        return;
    };
    let seed = config.seed.unwrap_or_else(|| rand::rng().random());
    let nonce = format!("{:08x}", rand::rng().random::<u32>());
    let connections = config.connections();
    for c in 0..connections {
        let (from, to) = (
            c * config.devices / connections,
            (c + 1) * config.devices / connections,
        );
        let devices = (from..to)
            .map(|d| {
                let device = Device::new(config.device_id(d), config.area, mix(seed, d), &nonce);
                (d, device)
            })
            .collect();
        let mut options = config.broker(c).clone();
        options
            .set_client_id(format!("{}-bench-{c}-{nonce}", config.prefix))
            .set_keep_alive(Duration::from_secs(30))
            .set_clean_session(true);
        let capacity = ((to - from) * 4).clamp(16, 1024);
        let (client, mut eventloop) = AsyncClient::new(options, capacity);
        let mut network = NetworkOptions::new();
        network.set_tcp_nodelay(true);
        network.set_connection_timeout(10);
        eventloop.set_network_options(network);
        let (link_tx, link_rx) = watch::channel(false);
        let mut rng = SmallRng::seed_from_u64(mix(seed, c).rotate_left(29));
        let start_after = config.ramp_up.mul_f64(rng.random_range(0.0..1.0));
        tracker.spawn(drive(
            eventloop,
            link_tx,
            start_after,
            Arc::clone(stats),
            stop.clone(),
            SmallRng::seed_from_u64(rng.random()),
        ));
        let publisher = Publisher {
            client,
            devices,
            link: link_rx,
            qos: config.location_qos,
            period,
            bursts,
            log: Arc::clone(log),
            stats: Arc::clone(stats),
            stop: stop.clone(),
            rng,
        };
        tracker.spawn(publisher.run());
    }
}

/// Polls the event loop (keepalive, writes) until `stop`, reporting on
/// `link` whether the connection is up; backs off between failures.
async fn drive(
    mut eventloop: EventLoop,
    link: watch::Sender<bool>,
    start_after: Duration,
    stats: Arc<LoadStats>,
    stop: CancellationToken,
    mut rng: SmallRng,
) {
    tokio::select! {
        _ = stop.cancelled() => return,
        _ = sleep(start_after) => {}
    }
    let mut backoff = Backoff::new(Duration::from_millis(200), Duration::from_secs(10));
    loop {
        let polled = tokio::select! {
            _ = stop.cancelled() => break,
            polled = eventloop.poll() => polled,
        };
        match polled {
            Ok(Event::Incoming(Packet::ConnAck(_))) => {
                backoff.reset();
                link.send_replace(true);
            }
            Ok(_) => {}
            Err(error) => {
                link.send_replace(false);
                stats.connection_errors.fetch_add(1, Relaxed);
                let delay = backoff.next_delay_with(&mut rng);
                warn!(%error, retry_in = ?delay, "bench load: MQTT connection failed");
                tokio::select! {
                    _ = stop.cancelled() => break,
                    _ = sleep(delay) => {}
                }
            }
        }
    }
    link.send_replace(false);
}

/// The devices of one connection and their send grid.
struct Publisher {
    client: AsyncClient,
    /// (device index in the fleet, device).
    devices: Vec<(usize, Device)>,
    /// Whether the connection is up; the driver holds the sender.
    link: watch::Receiver<bool>,
    qos: QoS,
    period: Duration,
    bursts: Option<Bursts>,
    log: Arc<SendLog>,
    stats: Arc<LoadStats>,
    stop: CancellationToken,
    rng: SmallRng,
}

#[derive(Deserialize)]
struct Position {
    lat: f64,
    lon: f64,
}

impl Publisher {
    async fn run(mut self) {
        // The grid starts once connected, so no slot is skipped for a
        // connection that is still being set up.
        tokio::select! {
            _ = self.stop.cancelled() => return,
            up = self.link.wait_for(|up| *up) => if up.is_err() { return },
        }
        let t0 = Instant::now();
        // (due, slot in `devices`), earliest first.
        let mut queue = BinaryHeap::with_capacity(self.devices.len());
        for slot in 0..self.devices.len() {
            let phase = self.period.mul_f64(self.rng.random_range(0.0..1.0));
            queue.push(Reverse((t0 + phase, slot)));
        }
        let mut moved_at = vec![t0; self.devices.len()];
        let mut last_ts = vec![i64::MIN; self.devices.len()];
        // Locations sent per device: where it is in its burst period.
        let mut published = vec![0_u64; self.devices.len()];
        let topics: Vec<String> = self
            .devices
            .iter()
            .map(|(_, d)| d.topics().location.clone())
            .collect();
        while let Some(Reverse((due, slot))) = queue.pop() {
            tokio::select! {
                biased;
                _ = self.stop.cancelled() => return,
                _ = sleep_until(due) => {}
            }
            let now = Instant::now();
            // Next slot on the grid; skip those already more than a period past.
            let mut next = due + self.period;
            if next + self.period <= now {
                let behind = (now - next).as_nanos() / self.period.as_nanos().max(1);
                next += self.period * u32::try_from(behind).unwrap_or(u32::MAX);
                self.stats.skipped.fetch_add(behind as u64, Relaxed);
            }
            queue.push(Reverse((next, slot)));
            if !*self.link.borrow() {
                self.stats.skipped.fetch_add(1, Relaxed);
                continue;
            }

            let wall = SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .unwrap_or_default();
            let sent_us = i64::try_from(wall.as_micros()).unwrap_or(i64::MAX);
            // Strictly increasing per device: ts is the message's key.
            let ts = (sent_us / 1_000).max(last_ts[slot].saturating_add(1));
            last_ts[slot] = ts;
            let dt = now.saturating_duration_since(moved_at[slot]).as_secs_f64();
            moved_at[slot] = now;
            let (d, device) = &mut self.devices[slot];
            let d = *d;
            let k = published[slot];
            let payload = match self.bursts.and_then(|b| b.speed(d, k)) {
                Some(speed) => device.location_reporting(dt.min(600.0), ts, speed),
                None => device.location(dt.min(600.0), ts),
            };
            let trips = self.bursts.is_some_and(|b| b.trips(d, k));
            // The position as sent (rounded), for bbox expectations.
            let (lat, lon) = serde_json::from_slice::<Position>(&payload)
                .map_or((f64::NAN, f64::NAN), |p| (p.lat, p.lon));
            // Logged before it can possibly arrive anywhere.
            self.log.push(
                d,
                Sent {
                    ts,
                    sent_us,
                    lat,
                    lon,
                },
            );
            let topic = topics[slot].clone();
            tokio::select! {
                biased;
                _ = self.stop.cancelled() => {
                    self.log.pop(d);
                    return;
                }
                sent = self.client.publish(topic, self.qos, false, payload) => {
                    if sent.is_err() {
                        // The event loop is gone: only happens at shutdown.
                        self.log.pop(d);
                        self.stats.publish_errors.fetch_add(1, Relaxed);
                        debug!("bench load: MQTT client closed");
                        return;
                    }
                    self.stats.sent.fetch_add(1, Relaxed);
                    published[slot] += 1;
                    if trips && self.log.window().contains(ts) {
                        self.stats.bursts.fetch_add(1, Relaxed);
                    }
                }
            }
        }
    }
}

/// Independent per-device seeds from one run seed (SplitMix64 step).
fn mix(seed: u64, n: usize) -> u64 {
    let mut z = seed.wrapping_add((n as u64 + 1).wrapping_mul(0x9E37_79B9_7F4A_7C15));
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}
