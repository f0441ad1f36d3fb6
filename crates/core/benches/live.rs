#![allow(clippy::unwrap_used, clippy::expect_used)]
//! The Rust side of the hot-state merge: the bytes the bridge builds for
//! each update before Redis merges it.
//!
//! The merge itself (forward-only `ts` check, `HSET` of the device hash,
//! `GEOADD`, `PUBLISH`) is a Lua script run inside Redis
//! (`crates/bridge/src/store/lua/location.lua`) and is not measured here. What the
//! bridge does per location in Rust is serialise the live message once
//! (`live::location_json`), wrap it in the `{"rx","msg"}` envelope
//! (`live::envelope`) and format the hash fields (`live::fmt_f64`); those are
//! measured below. fieldcast-core has no Rust-side `DeviceState` merge:
//! `DeviceState::from_hash` is the gateway's snapshot read of a device hash,
//! measured last.
//!
//! `cargo bench -p fieldcast-core --bench live`

use std::hint::black_box;
use std::time::Duration;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use fieldcast_core::live::{self, fmt_f64};
use fieldcast_core::{DeviceState, Event, Location, Severity, Status};
use serde_json::value::RawValue;

const RX: i64 = 1_763_800_000_000;

fn location() -> Location {
    Location {
        ts: RX - 1_500,
        lat: 51.5073509,
        lon: -0.1277583,
        alt: Some(31.2),
        speed: Some(12.46),
        heading: Some(87.5),
        accuracy: Some(4.8),
    }
}

fn serialise(c: &mut Criterion) {
    let device = "veh-00042";
    let loc = location();
    let status = Status {
        ts: RX - 1_500,
        device_ts: true,
        online: true,
        battery: Some(81.4),
        signal: Some(-71.0),
    };
    let event = Event {
        id: "veh-00042-k3x9-17".into(),
        ts: RX - 1_500,
        kind: "harsh_brake".into(),
        severity: Severity::Warning,
        data: Some(
            RawValue::from_string(
                r#"{"decel":6.3,"speed":12.5,"lat":51.5073509,"lon":-0.1277583}"#.into(),
            )
            .unwrap(),
        ),
    };

    let mut g = c.benchmark_group("live");
    g.throughput(Throughput::Elements(1));
    g.bench_function("location_envelope", |b| {
        b.iter(|| {
            let msg = live::location_json(black_box(device), black_box(&loc));
            live::envelope(RX, &msg)
        })
    });
    // The location's hash fields, formatted as the Redis sink's
    // `apply_once` (crates/bridge/src/store/redis.rs) passes them to the script.
    g.bench_function("location_hash_fields", |b| {
        b.iter(|| {
            let l = black_box(&loc);
            [
                l.ts.to_string(),
                fmt_f64(l.lat),
                fmt_f64(l.lon),
                l.alt.map(fmt_f64).unwrap_or_default(),
                l.speed.map(fmt_f64).unwrap_or_default(),
                l.heading.map(fmt_f64).unwrap_or_default(),
                l.accuracy.map(fmt_f64).unwrap_or_default(),
            ]
        })
    });
    g.bench_function("status_envelope", |b| {
        b.iter(|| {
            let msg = live::status_json(black_box(device), black_box(&status));
            live::envelope(RX, &msg)
        })
    });
    g.bench_function("event_json", |b| {
        b.iter(|| live::event_json(black_box(device), black_box(&event)))
    });
    g.finish();
}

fn device_state(c: &mut Criterion) {
    // A device hash as the location and status scripts leave it.
    let hash: Vec<(String, String)> = [
        ("lat", "51.5073509"),
        ("lon", "-0.1277583"),
        ("ts", "1763799998500"),
        ("speed", "12.46"),
        ("heading", "87.5"),
        ("accuracy", "4.8"),
        ("alt", "31.2"),
        ("online", "1"),
        ("battery", "81.4"),
        ("signal", "-71"),
        ("last_seen", "1763800000000"),
        ("sts", "1763799990000"),
    ]
    .iter()
    .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
    .collect();
    assert_eq!(
        DeviceState::from_hash(
            "veh-00042",
            hash.iter().map(|(k, v)| (k.as_str(), v.as_str()))
        )
        .battery,
        Some(81.4)
    );
    c.bench_function("device_state/from_hash", |b| {
        b.iter(|| {
            DeviceState::from_hash(
                black_box("veh-00042"),
                black_box(&hash)
                    .iter()
                    .map(|(k, v)| (k.as_str(), v.as_str())),
            )
        })
    });
}

criterion_group! {
    name = benches;
    config = Criterion::default()
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3));
    targets = serialise, device_state
}
criterion_main!(benches);
