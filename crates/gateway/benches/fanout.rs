#![allow(clippy::unwrap_used, clippy::expect_used)]
//! Fan-out of one live location to 10 000 local subscribers: `Hub::dispatch`
//! finds the receivers in its indexes and offers the shared frame to each
//! one's `Outbox` (no copy of the bytes, no blocking).
//!
//! Setup (not measured): a hub as `serve` builds it, 10 000 connections
//! registered with their own `Outbox` (`FIELDCAST_WS_QUEUE`'s default, 1024)
//! and an unrestricted scope, each subscribed through `begin` + `activate`
//! as a connection does once its snapshot is read. Either every connection
//! names the device (`device`) or every one watches the whole fleet
//! (`fleet`). The update is what the feed makes of the bridge's envelope
//! (`feed::parse_live`).
//!
//! Measured: one `hub.dispatch(update)` per iteration, i.e. 10 000 outbox
//! pushes; divide by 10 000 for the cost per receiver. Between iterations
//! (not measured) every outbox is drained, as its connection's writer would,
//! so each dispatch finds empty queues: no coalescing, no slow-consumer
//! close. Cloning the update (two reference counts) is not measured either.
//! The hub and the outboxes count in one `Metrics`, as in a gateway;
//! nothing is counted on this path anyway (only on overflow or coalescing).
//!
//! `cargo bench -p fieldcast-gateway --bench fanout`

use std::sync::Arc;
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use fieldcast_core::{live, DeviceId, Location};
use fieldcast_gateway::auth::Scope;
use fieldcast_gateway::live::feed::parse_live;
use fieldcast_gateway::live::hub::{
    Activation, ConnSignals, Hub, Mode, Registration, Selection, Update,
};
use fieldcast_gateway::live::outbox::{Item, Outbox};
use fieldcast_gateway::metrics::Metrics;

const RECEIVERS: usize = 10_000;
/// `FIELDCAST_WS_QUEUE`'s default.
const WS_QUEUE: usize = 1024;
const DEVICE: &str = "veh-00042";
const RX: i64 = 1_763_800_000_000;

/// The update the feed hands the hub for one location from the bridge.
fn update() -> Update {
    let loc = Location {
        ts: RX - 1_500,
        lat: 51.5073509,
        lon: -0.1277583,
        alt: Some(31.2),
        speed: Some(12.46),
        heading: Some(87.5),
        accuracy: Some(4.8),
    };
    let envelope = live::envelope(RX, &live::location_json(DEVICE, &loc));
    parse_live(&envelope, fieldcast_core::Partitions::default()).expect("a valid live envelope")
}

struct Fanout {
    hub: Arc<Hub>,
    outboxes: Vec<Arc<Outbox>>,
    /// Dropping a registration unregisters its connection.
    _registrations: Vec<Registration>,
}

impl Fanout {
    fn new(selection: &Selection) -> Self {
        // What `serve` passes for the default queue size.
        let metrics = Arc::new(Metrics::new());
        let hub = Hub::new((WS_QUEUE * 16).max(65_536), &metrics);
        let scope = Arc::new(Scope::unrestricted());
        let mut outboxes = Vec::with_capacity(RECEIVERS);
        let mut registrations = Vec::with_capacity(RECEIVERS);
        for _ in 0..RECEIVERS {
            let outbox = Arc::new(Outbox::new(WS_QUEUE, metrics.clone()));
            let reg = hub.register(
                scope.clone(),
                outbox.clone(),
                Arc::new(ConnSignals::default()),
            );
            hub.begin(reg.id, selection.clone(), Mode::Subscribe);
            hub.activate(reg.id, Activation::default());
            outboxes.push(outbox);
            registrations.push(reg);
        }
        Fanout {
            hub,
            outboxes,
            _registrations: registrations,
        }
    }

    /// Empties every outbox; returns how many frames there were.
    fn drain(&self, buf: &mut Vec<Item>) -> usize {
        let mut n = 0;
        for o in &self.outboxes {
            o.drain(buf, usize::MAX).unwrap();
            n += buf.len();
            buf.clear();
        }
        n
    }
}

fn fanout(c: &mut Criterion) {
    let update = update();
    let mut g = c.benchmark_group("fanout");
    g.throughput(Throughput::Elements(RECEIVERS as u64));
    let by_device = Selection {
        devices: vec![DeviceId::parse(DEVICE).unwrap()],
        ..Default::default()
    };
    let fleet = Selection {
        fleet: true,
        ..Default::default()
    };
    for (name, selection) in [("device_10000", by_device), ("fleet_10000", fleet)] {
        let f = Fanout::new(&selection);
        let mut buf = Vec::with_capacity(16);
        f.hub.dispatch(update.clone());
        assert_eq!(f.drain(&mut buf), RECEIVERS, "every connection gets it");
        g.bench_function(name, |b| {
            b.iter_custom(|iters| {
                let mut total = Duration::ZERO;
                for _ in 0..iters {
                    let u = update.clone();
                    let started = Instant::now();
                    f.hub.dispatch(u);
                    total += started.elapsed();
                    f.drain(&mut buf);
                }
                total
            })
        });
    }
    g.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default()
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3));
    targets = fanout
}
criterion_main!(benches);
