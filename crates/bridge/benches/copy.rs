#![allow(clippy::unwrap_used, clippy::expect_used)]
//! The location history's binary COPY encoding, without a database: a batch
//! of 10 000 rows (`FIELDCAST_BATCH_ROWS`'s default) over 1 000 devices,
//! every optional field present, encoded by `store::postgres::LocationCopy`
//! (header, per-row dedup on device + `ts`, tuples, trailer).
//!
//! - `encode_10000_locations`: `encode_locations`, the batch in one buffer.
//! - `encode_10000_locations_chunked`: as `Pg::write_locations` does it,
//!   taking a chunk whenever more than 4 KiB are encoded; here each chunk
//!   is dropped where the bridge hands it to the connection.
//!
//! Building the rows is not measured; the one-piece buffer is dropped
//! outside the measurement.
//!
//! `cargo bench -p fieldcast-bridge --bench copy`

use std::time::Duration;

#[path = "support/rows.rs"]
mod rows;
use rows::rows;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use fieldcast_bridge::store::postgres::{encode_locations, LocationCopy};

const ROWS: usize = 10_000;
const DEVICES: usize = 1_000;

fn copy(c: &mut Criterion) {
    let rows = rows(ROWS, DEVICES, 0);
    let bytes = encode_locations(&rows).unwrap();
    let mut g = c.benchmark_group("copy");
    g.throughput(Throughput::Elements(ROWS as u64));
    g.bench_function("encode_10000_locations", |b| {
        b.iter_with_large_drop(|| encode_locations(&rows).unwrap())
    });
    g.bench_function("encode_10000_locations_chunked", |b| {
        b.iter(|| {
            let mut copy = LocationCopy::new(rows.len());
            let mut sent = 0;
            for r in &rows {
                copy.push(r).unwrap();
                if copy.buffered() > 4096 {
                    sent += copy.take().len();
                }
            }
            sent + copy.finish().len()
        })
    });
    g.finish();
    println!(
        "copy/encode_10000_locations: {} bytes, {} per row",
        bytes.len(),
        bytes.len() / ROWS
    );
}

criterion_group! {
    name = benches;
    config = Criterion::default()
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3));
    targets = copy
}
criterion_main!(benches);
