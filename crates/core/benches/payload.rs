#![allow(clippy::unwrap_used, clippy::expect_used)]
//! Parse + validate of one device message: what the bridge's MQTT source
//! does for every PUBLISH (`Message::parse`: the topic into a `Topic`, then
//! the payload into a `Location`, `Status` or `Event`, or a `Reject`).
//!
//! Payloads are the simulator's (`crates/sim/src/payload.rs`): every field
//! a device may send, numbers rounded as a GNSS module reports them.
//!
//! `cargo bench -p fieldcast-core --bench payload`

use std::hint::black_box;
use std::time::Duration;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use fieldcast_core::{Limits, Message, Topic};

/// The bridge's clock for every message; payload `ts` is 1.5 s before it.
const NOW: i64 = 1_763_800_000_000;

const LOCATION: &str = r#"{"lat":51.5073509,"lon":-0.1277583,"ts":1763799998500,"speed":12.46,"heading":87.5,"accuracy":4.8,"alt":31.2}"#;
const STATUS: &str = r#"{"online":true,"ts":1763799998500,"battery":81.4,"signal":-71.0}"#;
const EVENT: &str = r#"{"id":"veh-00042-k3x9-17","kind":"harsh_brake","severity":"warning","ts":1763799998500,"data":{"decel":6.3,"speed":12.5,"lat":51.5073509,"lon":-0.1277583}}"#;
/// A location a misbehaving device might flood: well-formed, lat out of range.
const BAD_LOCATION: &str = r#"{"lat":91.5,"lon":-0.1277583,"ts":1763799998500,"speed":12.46}"#;

fn parse(c: &mut Criterion) {
    let limits = Limits::default();
    let mut g = c.benchmark_group("parse");
    g.throughput(Throughput::Elements(1));
    for (name, topic, payload) in [
        ("location", "devices/veh-00042/location", LOCATION),
        ("status", "devices/veh-00042/status", STATUS),
        ("event", "devices/veh-00042/events", EVENT),
    ] {
        // The inputs are what they claim to be.
        let msg = Message::parse(topic, payload.as_bytes(), &limits, NOW).unwrap();
        assert_eq!(msg.kind().as_str(), name);
        g.bench_function(name, |b| {
            b.iter(|| {
                Message::parse(
                    black_box(topic),
                    black_box(payload.as_bytes()),
                    &limits,
                    NOW,
                )
            })
        });
    }
    let topic = "devices/veh-00042/location";
    assert!(Message::parse(topic, BAD_LOCATION.as_bytes(), &limits, NOW).is_err());
    g.bench_function("location_rejected", |b| {
        b.iter(|| {
            Message::parse(
                black_box(topic),
                black_box(BAD_LOCATION.as_bytes()),
                &limits,
                NOW,
            )
        })
    });
    // The topic alone (device id validated, copied into an `Arc<str>`).
    g.bench_function("topic_only", |b| b.iter(|| Topic::parse(black_box(topic))));
    g.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default()
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3));
    targets = parse
}
criterion_main!(benches);
