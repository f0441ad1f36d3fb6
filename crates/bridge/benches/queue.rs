#![allow(clippy::unwrap_used, clippy::expect_used)]
//! The bridge's in-memory merge per device: the queue's live lane keeps the
//! newest pending location of each device (latest wins by `ts`), while the
//! history lane keeps every one.
//!
//! One iteration = what happens to a burst of 10 000 accepted locations
//! inside the queue: `push_location` of each (as the MQTT source does),
//! then the live sink's `next_live(0, 1000)` (`FIELDCAST_SINK_BATCH`'s
//! default) until the live lane is empty, and the batcher's
//! `next_history`. Building the rows is not measured. The queue is created
//! once per benchmark with the production capacities (README defaults) and
//! its own Prometheus metrics, which it updates on every push and take.
//!
//! The hot-state merge in Redis (the Lua script) is not measured here.
//!
//! `cargo bench -p fieldcast-bridge --bench queue`

use std::sync::Arc;
use std::time::{Duration, Instant};

#[path = "support/rows.rs"]
mod rows;
use rows::rows;

use criterion::{criterion_group, criterion_main, BatchSize, Criterion, Throughput};
use fieldcast_bridge::metrics::Metrics;
use fieldcast_bridge::queue::{Capacity, Queue};
use fieldcast_bridge::record::LocationRow;

const BURST: usize = 10_000;
/// `FIELDCAST_SINK_BATCH`'s default.
const SINK_BATCH: usize = 1_000;

/// The capacities `fieldcast_bridge::start` gives the queue by default.
fn queue() -> Queue {
    Queue::new(
        Capacity {
            live: 100_000,
            reliable: 10_000,
            history: 40_000,
            deadletters: 10_000,
        },
        Arc::new(Metrics::new()),
    )
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap()
}

/// Pushes every row, then drains the live lane in sink batches until the
/// `devices` pending locations are out, and the history lane in one take.
async fn push_and_drain(q: &Queue, rows: Vec<LocationRow>, devices: usize) {
    let n = rows.len();
    for r in rows {
        q.push_location(r).await;
    }
    let mut live = 0;
    while live < devices {
        live += q.next_live(0, SINK_BATCH).await.unwrap().locations.len();
    }
    assert_eq!(q.next_history(n).await.unwrap().len(), n);
}

fn push_drain(c: &mut Criterion) {
    let rt = runtime();
    let mut g = c.benchmark_group("queue/push_drain");
    g.throughput(Throughput::Elements(BURST as u64));
    for (name, devices) in [("10000_devices", BURST), ("1000_devices_coalescing", 1_000)] {
        // One long-lived queue, as in the bridge: the live lane keeps its
        // table from one burst to the next (the history lane is handed
        // over whole and starts again empty, as in the bridge).
        let q = queue();
        rt.block_on(push_and_drain(&q, rows(BURST, devices, 0), devices));
        g.bench_function(name, |b| {
            b.iter_batched(
                || rows(BURST, devices, 0),
                |rows| rt.block_on(push_and_drain(&q, rows, devices)),
                BatchSize::LargeInput,
            )
        });
    }
    g.finish();
}

/// A live lane at its capacity (100 000 devices pending, e.g. while Redis is
/// slow): each location of a device not yet pending evicts the oldest
/// pending one. Measured: batches of `NEW` such pushes, per push; the lane
/// stays full throughout (the devices cycle through twice its capacity, so
/// each pushed one was evicted long ago). Building the rows and emptying the
/// history lane (the batcher's job) between batches are not measured.
fn push_full_lane(c: &mut Criterion) {
    const LIVE_CAP: usize = 100_000;
    const NEW: usize = 100;
    let rt = runtime();
    let q = queue();
    let ring = rows(2 * LIVE_CAP, 2 * LIVE_CAP, 0);
    rt.block_on(async {
        for (i, r) in ring[..LIVE_CAP].iter().enumerate() {
            q.push_location(r.clone()).await;
            if (i + 1) % BURST == 0 {
                // The history lane holds 40 000 rows: empty it as the batcher would.
                q.next_history(BURST).await;
            }
        }
    });
    let mut next = LIVE_CAP;
    let mut g = c.benchmark_group("queue/push_full_live_lane");
    g.throughput(Throughput::Elements(NEW as u64));
    // Each sample refills the lane's history side: fewer samples keep the
    // run short.
    g.sample_size(10);
    g.bench_function("100000_pending", |b| {
        b.iter_custom(|iters| {
            let mut total = Duration::ZERO;
            for _ in 0..iters {
                let batch: Vec<LocationRow> = (0..NEW)
                    .map(|k| ring[(next + k) % ring.len()].clone())
                    .collect();
                next = (next + NEW) % ring.len();
                let started = Instant::now();
                rt.block_on(async {
                    for r in batch {
                        q.push_location(r).await;
                    }
                });
                total += started.elapsed();
                rt.block_on(q.next_history(usize::MAX));
            }
            total
        })
    });
    g.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default()
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3));
    targets = push_drain, push_full_lane
}
criterion_main!(benches);
