//! Location rows shared by the bridge's benches (included with `#[path]`).

use fieldcast_bridge::record::LocationRow;
use fieldcast_core::{DeviceId, Location};

/// The benches' "now", epoch ms.
const NOW: i64 = 1_763_800_000_000;

/// `n` locations round robin over `devices` devices (`veh-<first_device>`
/// on), every optional field present, `ts` rising by 1 s per device from a
/// minute ago, each device drifting a little.
pub fn rows(n: usize, devices: usize, first_device: usize) -> Vec<LocationRow> {
    let ids: Vec<DeviceId> = (0..devices)
        .map(|d| DeviceId::parse(&format!("veh-{:05}", first_device + d)).unwrap())
        .collect();
    (0..n)
        .map(|i| {
            let ts = NOW - 60_000 + (i / devices) as i64 * 1_000;
            LocationRow {
                device: ids[i % devices].clone(),
                loc: Location {
                    ts,
                    lat: 51.5073509 + (i % devices) as f64 * 1e-4,
                    lon: -0.1277583 - (i / devices) as f64 * 1e-5,
                    alt: Some(31.2),
                    speed: Some(12.46),
                    heading: Some(87.5),
                    accuracy: Some(4.8),
                },
                received_at: ts + 250,
            }
        })
        .collect()
}
