//! `fieldcast-sim fleet`: N simulated devices publishing locations, status
//! and events to the broker until stopped.
//!
//! [`FleetArgs`] (clap) is checked into a [`FleetConfig`]; [`run`] splits
//! the devices over MQTT connections and starts one [`connection`] (a
//! driver and a publisher task) per connection, all tracked, all stopped by
//! one `CancellationToken`. With one connection per device (the default up
//! to [`AUTO_CONNECTIONS`] devices) every device has its own Last Will; when
//! devices share a connection only the first of each has one, because MQTT
//! gives a connection exactly one will (the others keep their last retained
//! status if the simulator dies without a clean shutdown).

mod args;
mod connection;
mod schedule;
mod stats;

use std::sync::Arc;
use std::time::Duration;

use rand::Rng;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::info;

pub use args::{FleetArgs, FleetConfig, AUTO_CONNECTIONS};
pub use stats::{Stats, Summary};

use crate::device::Device;
use connection::{Plan, Shared};

/// How often the fleet logs its progress.
const PROGRESS_EVERY: Duration = Duration::from_secs(10);

/// Runs the fleet until `shutdown` is cancelled or `config.duration` has
/// passed, then brings every device offline cleanly and returns the counts.
pub async fn run(config: FleetConfig, shutdown: CancellationToken) -> Summary {
    let stop = shutdown.child_token();
    let stats = Arc::new(Stats::default());
    let seed = config.seed.unwrap_or_else(|| rand::rng().random());
    // Not derived from the seed: a rerun with the same seed must still give
    // new event ids, or the bridge would drop them as duplicates.
    let nonce = format!("{:08x}", rand::rng().random::<u32>());
    let connections = config.connections();
    info!(
        devices = config.devices,
        connections,
        prefix = %config.prefix,
        rate = config.rate,
        seed,
        nonce = %nonce,
        "starting fleet"
    );

    let shared = Arc::new(Shared {
        location_every: config.location_every(),
        location_qos: config.location_qos,
        status_every: config.status_every,
        event_every: config.event_every,
        ramp_up: config.ramp_up,
        stats: Arc::clone(&stats),
        stop: stop.clone(),
    });
    let tracker = TaskTracker::new();
    let per_device = connections == config.devices;
    for c in 0..connections {
        // Contiguous, near-equal slices of the device range.
        let (from, to) = (
            c * config.devices / connections,
            (c + 1) * config.devices / connections,
        );
        let devices: Vec<Device> = (from..to)
            .map(|n| {
                let id = config.device_id(n);
                Device::new(id, config.area, device_seed(seed, n), &nonce)
            })
            .collect();
        let client_id = if per_device {
            config.device_id(from)
        } else {
            format!("{}-conn-{c}", config.prefix)
        };
        let plan = Plan {
            brokers: config.brokers_from(c),
            client_id,
            devices,
            seed: device_seed(seed, c).rotate_left(29),
        };
        connection::spawn(&tracker, plan, Arc::clone(&shared));
    }
    tracker.close();

    if let Some(duration) = config.duration {
        let stop = stop.clone();
        tokio::spawn(async move {
            tokio::select! {
                _ = stop.cancelled() => {}
                _ = tokio::time::sleep(duration) => {
                    info!(?duration, "duration reached, stopping");
                    stop.cancel();
                }
            }
        });
    }
    tokio::select! {
        _ = tracker.wait() => {}
        _ = progress(&stats, connections, &stop) => {}
    }
    // `progress` ends on stop; the tasks are still saying goodbye.
    tracker.wait().await;
    stop.cancel();
    stats.summary()
}

/// Logs throughput and connection count every [`PROGRESS_EVERY`] until stop.
async fn progress(stats: &Stats, connections: usize, stop: &CancellationToken) {
    let mut tick = tokio::time::interval(PROGRESS_EVERY);
    tick.tick().await;
    let mut last = stats.summary();
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tick.tick() => {}
        }
        let now = stats.summary();
        let rate = (now.sent() - last.sent()) as f64 / PROGRESS_EVERY.as_secs_f64();
        info!(
            connected = stats.connected.load(std::sync::atomic::Ordering::Relaxed),
            connections,
            msg_per_s = format!("{rate:.0}"),
            locations = now.location,
            statuses = now.status,
            events = now.event,
            skipped = now.skipped,
            connection_errors = now.connection_errors,
            "fleet progress"
        );
        last = now;
    }
}

/// Independent per-device seeds from one fleet seed (SplitMix64 step).
fn device_seed(seed: u64, n: usize) -> u64 {
    let mut z = seed.wrapping_add(
        (n as u64)
            .wrapping_add(1)
            .wrapping_mul(0x9E37_79B9_7F4A_7C15),
    );
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}
