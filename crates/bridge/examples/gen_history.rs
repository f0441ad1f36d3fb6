//! Fills a database with a fleet's month of history for the "History at
//! 100 M rows" benchmark (docs/benchmarks.md, issue #16); run it through
//! `scripts/gen-history.sh`.
//!
//! Applies the migrations with the bridge's own `schema::prepare` (so the
//! daily partitions and the `location_days` trigger are the production
//! ones), then writes `DEVICES` devices' tracks straight into `locations`
//! by binary COPY with the bridge's own encoder ([`LocationCopy`]), one
//! COPY per device (so the trigger aggregates 50 000 rows at a time, not
//! 100 million), `JOBS` devices at once.
//!
//! Each device lives near its own home in central Europe and, each of
//! `DAYS` days, makes `TRIPS` drives of about `DRIVE_SECS` seconds at 1 Hz
//! (speed 8..25 m/s, heading wandering), parked in between with a
//! heartbeat fix every 15 minutes, about 1 600 fixes a day: 2 000 devices
//! x 31 days is about 100 million rows (`FULL_DEVICES`, `LIGHT_TRIPS`,
//! `LIGHT_SECS`: a scaled-down fleet, see `main`). The month ends at today's 00:00
//! UTC. Seeded per device: two runs write the same rows.
//!
//! ```text
//! cargo run --release -p fieldcast-bridge --example gen_history -- \
//!     postgres://postgres@127.0.0.1:5432/fieldcast_hist100m
//! ```

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::print_stdout)]

use std::time::{Duration, Instant};

use bytes::Bytes;
use fieldcast_bridge::record::LocationRow;
use fieldcast_bridge::store::postgres::LocationCopy;
use fieldcast_core::{DeviceId, Location};
use futures::{pin_mut, SinkExt};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

fn env(name: &str, default: i64) -> i64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

const DAY_MS: i64 = 86_400_000;
const M_PER_DEG: f64 = 111_195.08;

/// One device's month, oldest first.
fn track(device: usize, days: i64, trips: i64, drive_secs: i64, end: i64) -> Vec<Location> {
    let mut rng = StdRng::seed_from_u64(device as u64 * 7919 + 1);
    let (mut lat, mut lon) = (
        rng.random_range(47.0..54.0f64),
        rng.random_range(6.0..15.0f64),
    );
    let mut out = Vec::with_capacity((days * (trips * drive_secs + 100)) as usize);
    let start = end - days * DAY_MS;
    for d in 0..days {
        let day = start + d * DAY_MS;
        // Drives spread over 06:00..20:00, the rest parked.
        let mut t = day;
        let slot = 14 * 3_600_000 / trips;
        for k in 0..trips {
            let leave = day + 6 * 3_600_000 + k * slot + rng.random_range(0..slot / 2);
            let fix = |t: i64, lat: f64, lon: f64, speed: f64, heading: f64| Location {
                ts: t,
                lat,
                lon,
                alt: Some(120.0),
                speed: Some(speed),
                heading: Some(heading),
                accuracy: Some(5.0),
            };
            while t + 900_000 < leave {
                t += 900_000;
                out.push(fix(t, lat, lon, 0.0, 0.0));
            }
            t = leave;
            let secs = drive_secs + rng.random_range(-drive_secs / 3..=drive_secs / 3);
            let mut heading: f64 = rng.random_range(0.0..360.0);
            let mut speed: f64 = rng.random_range(8.0..25.0);
            for _ in 0..secs {
                t += 1000;
                heading = (heading + rng.random_range(-4.0..4.0) + 360.0) % 360.0;
                speed = (speed + rng.random_range(-0.8..0.8)).clamp(3.0, 33.0);
                let h = heading.to_radians();
                lat += speed * h.cos() / M_PER_DEG;
                lon += speed * h.sin() / (M_PER_DEG * lat.to_radians().cos());
                // Drift back towards home so the fleet stays in its region.
                lat = lat.clamp(45.0, 56.0);
                lon = lon.clamp(3.0, 18.0);
                out.push(fix(t, lat, lon, speed, heading));
            }
        }
        while t + 900_000 < day + DAY_MS {
            t += 900_000;
            out.push(Location {
                ts: t,
                lat,
                lon,
                alt: Some(120.0),
                speed: Some(0.0),
                heading: Some(0.0),
                accuracy: Some(5.0),
            });
        }
    }
    out
}

async fn write_device(client: &tokio_postgres::Client, device: usize, rows: &[LocationRow]) {
    let sink = client
        .copy_in::<_, Bytes>("COPY locations FROM STDIN (FORMAT binary)")
        .await
        .unwrap();
    pin_mut!(sink);
    let mut copy = LocationCopy::new(rows.len());
    for r in rows {
        copy.push(r).unwrap();
        if copy.buffered() > 1 << 20 {
            sink.send(copy.take()).await.unwrap();
        }
    }
    sink.send(copy.finish()).await.unwrap();
    let n = sink.as_mut().finish().await.unwrap();
    assert_eq!(n as usize, rows.len(), "device {device}");
}

#[tokio::main]
async fn main() {
    let url = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "postgres://postgres@127.0.0.1:5432/fieldcast_hist100m".into());
    let devices = env("DEVICES", 2000) as usize;
    let days = env("DAYS", 31);
    let trips = env("TRIPS", 3);
    let drive_secs = env("DRIVE_SECS", 500);
    // Devices from FULL_DEVICES on get LIGHT_TRIPS drives of LIGHT_SECS a
    // day: a scaled-down run where the disk cannot hold 100 M rows keeps
    // the whole fleet (for `?at=`) with full months for some devices.
    let full = env("FULL_DEVICES", devices as i64) as usize;
    let (light_trips, light_secs) = (env("LIGHT_TRIPS", 1), env("LIGHT_SECS", 60));
    let jobs = env("JOBS", 2).max(1) as usize;
    // A drive is at most 4/3 DRIVE_SECS and starts in the first half of its
    // slot of 14 h / TRIPS: longer, it would run into the next one (fixes
    // out of order, repeated timestamps) and COPY would fail.
    for (t, s) in [(trips, drive_secs), (light_trips, light_secs)] {
        if t < 1 || s < 3 || s * 4 / 3 * 1000 > 14 * 3_600_000 / t / 2 {
            eprintln!("gen_history: {t} drives of ~{s} s do not fit in a day's 14 h (each at most half of 14 h / TRIPS, 4/3 DRIVE_SECS long)");
            std::process::exit(2);
        }
    }
    let now = fieldcast_core::time::now_ms();
    let end = now - now.rem_euclid(DAY_MS);

    let (mut client, conn) = tokio_postgres::connect(&url, tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::spawn(conn);
    let m = fieldcast_bridge::store::schema::prepare(&mut client, Duration::from_secs(90 * 86_400))
        .await
        .unwrap();
    println!("schema: {m:?}");

    let started = Instant::now();
    let mut tasks = Vec::new();
    for j in 0..jobs {
        let url = url.clone();
        tasks.push(tokio::spawn(async move {
            let (client, conn) = tokio_postgres::connect(&url, tokio_postgres::NoTls)
                .await
                .unwrap();
            tokio::spawn(conn);
            // Bulk load: no WAL flush per COPY.
            client
                .batch_execute("SET synchronous_commit = off")
                .await
                .unwrap();
            let mut n = 0usize;
            for d in (j..devices).step_by(jobs) {
                let id = DeviceId::parse(&format!("dev-{d:05}")).unwrap();
                let (t, secs) = if d < full {
                    (trips, drive_secs)
                } else {
                    (light_trips, light_secs)
                };
                let rows: Vec<LocationRow> = track(d, days, t, secs, end)
                    .into_iter()
                    .map(|loc| LocationRow {
                        device: id.clone(),
                        received_at: loc.ts,
                        loc,
                    })
                    .collect();
                write_device(&client, d, &rows).await;
                n += rows.len();
                if d % 100 == 0 {
                    println!("device {d}: {n} rows by job {j}");
                }
            }
            n
        }));
    }
    let mut total = 0;
    for t in tasks {
        total += t.await.unwrap();
    }
    let secs = started.elapsed().as_secs_f64();
    println!(
        "{total} rows in {secs:.0} s ({:.0} rows/s); month ends {}",
        total as f64 / secs,
        fieldcast_core::time::format_rfc3339_ms(end)
    );
    client.batch_execute("ANALYZE").await.unwrap();
    println!("analyzed");
}
