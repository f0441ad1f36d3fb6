//! Redis's CPU per location of the bridge's location step (`location.lua`
//! through [`RedisSink::apply`], the production code path: the same
//! grouping, argument building and script).
//!
//! Starts nothing: point it at a Redis that nothing else uses (its CPU is
//! read from `/proc/<pid>/stat` of the server's `process_id`, so it must
//! run on this machine), e.g.
//!
//! ```text
//! redis-server --port 17399 --save '' --appendonly no --daemonize yes
//! cargo run --release -p fieldcast-bridge --example lua_cost -- [redis://127.0.0.1:17399]
//! ```
//!
//! It resets `INFO commandstats` (`CONFIG RESETSTAT`), pushes
//! `LOCATIONS` (200 000) fixes of `DEVICES` (2 000) devices over
//! `PARTITIONS` (64) partitions in batches of `BATCH` (1 000, the sink's
//! default), round by round (each device's `ts` moves forward), and prints
//! the commandstats per location and the server's CPU time per location.
//! `PARKED_EVERY=n`: every n-th device never moves; `ABSENT_EVERY=n`:
//! every n-th location of a device omits `alt` and `accuracy`;
//! `STALE_EVERY=n`: every n-th location repeats an old `ts` (default 0:
//! off, as the simulator sends); `STEP_M=m`: how far a moving device
//! goes between its locations, in metres (default 1.6; 150 takes every
//! location out of its geo cell, the geo index's worst case). The run's
//! keys (a fresh prefix) are deleted at the end.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::print_stdout)]

use std::collections::BTreeMap;
use std::time::Instant;

use fieldcast_bridge::metrics::Metrics;
use fieldcast_bridge::queue::Batch;
use fieldcast_bridge::record::LiveLocation;
use fieldcast_bridge::store::redis::RedisSink;
use fieldcast_core::{DeviceId, Keys, Location, Partitions, Topology};
use fred::prelude::*;
use fred::types::scan::Scanner;
use fred::types::{ClusterHash, CustomCommand};
use futures::TryStreamExt;

fn env(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .map(|v| v.parse().expect(name))
        .unwrap_or(default)
}

/// utime + stime of a process, seconds.
fn cpu_seconds(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .expect("redis-server's /proc/<pid>/stat (is it on this machine?)");
    // The command name (2nd field) may hold spaces: count after its ')'.
    let rest = &stat[stat.rfind(')').unwrap() + 2..];
    let f: Vec<&str> = rest.split(' ').collect();
    // Fields 14 and 15 of stat, 12 and 13 after the state (3rd).
    let ticks: u64 = f[11].parse::<u64>().unwrap() + f[12].parse::<u64>().unwrap();
    // USER_HZ: 100 on Linux for user space (sysconf would take `unsafe`).
    ticks as f64 / 100.0
}

fn info_field<'a>(info: &'a str, name: &str) -> Option<&'a str> {
    info.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(':'))
        .map(str::trim)
}

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let url = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "redis://127.0.0.1:17399".into());
    if url.contains(":6379") && std::env::var("LUA_COST_ANY_REDIS").is_err() {
        panic!("{url} looks like the shared Redis; measure on a private one (LUA_COST_ANY_REDIS=1 to insist)");
    }
    let locations = env("LOCATIONS", 200_000) as usize;
    let devices = env("DEVICES", 2_000) as usize;
    let partitions = env("PARTITIONS", 64);
    let batch_len = env("BATCH", 1_000) as usize;
    let parked_every = env("PARKED_EVERY", 0) as usize;
    let absent_every = env("ABSENT_EVERY", 0) as usize;
    let stale_every = env("STALE_EVERY", 0) as usize;
    // The steps below are ~1.6 m (0.000 011 7° of latitude, 0.000 013 1°
    // of longitude at 48°N).
    let step_scale = std::env::var("STEP_M")
        .ok()
        .map_or(1.0, |v| v.parse::<f64>().expect("STEP_M") / 1.6);

    let client = Builder::from_config(Config::from_url(&url).unwrap())
        .build()
        .unwrap();
    client.init().await.unwrap();
    let prefix = format!("luacost{}:", std::process::id());
    let keys = Keys::new(
        &prefix,
        Partitions::new(partitions).unwrap(),
        Topology::Single,
    );
    let sink = RedisSink::new(client.clone(), keys);
    let metrics = Metrics::new();

    let info: String = client
        .info(Some(fred::types::InfoKind::Server))
        .await
        .unwrap();
    let pid: u32 = info_field(&info, "process_id").unwrap().parse().unwrap();

    let ids: Vec<DeviceId> = (0..devices)
        .map(|d| DeviceId::parse(&format!("veh-{d:05}")).unwrap())
        .collect();
    let t0 = 1_765_000_000_000_i64;
    let fix = |n: usize| -> LiveLocation {
        let d = n % devices;
        let round = n / devices;
        let moves = parked_every == 0 || !d.is_multiple_of(parked_every);
        let step = if moves {
            round as f64 * step_scale
        } else {
            0.0
        };
        let stale = stale_every != 0 && n % stale_every == stale_every - 1 && round > 0;
        let absent = absent_every != 0 && round % absent_every == absent_every - 1;
        let ts = t0 + if stale { 0 } else { round as i64 * 1000 };
        let lat = 48.0 + (d as f64) * 0.001_3 + step * 0.000_011_7;
        let lon = 2.0 + (d as f64) * 0.000_7 - step * 0.000_013_1;
        let r = |v: f64, s: f64| (v * s).round() / s;
        LiveLocation {
            device: ids[d].clone(),
            loc: Location {
                ts,
                lat: r(lat, 1e7),
                lon: r(lon, 1e7),
                alt: (!absent).then(|| r(35.0 + (round % 17) as f64 * 0.3, 10.0)),
                speed: Some(if moves {
                    r(13.89 + (round % 7) as f64 * 0.11, 100.0)
                } else {
                    0.0
                }),
                heading: Some(r(((d * 7 + round) % 360) as f64 + 0.5, 10.0)),
                accuracy: (!absent).then(|| r(4.0 + (round % 5) as f64 * 0.5, 10.0)),
            },
            rx: ts + 150,
        }
    };

    let resetstat = CustomCommand::new_static("CONFIG", ClusterHash::Random, false);
    let _: () = client.custom(resetstat, vec!["RESETSTAT"]).await.unwrap();
    let cpu0 = cpu_seconds(pid);
    let started = Instant::now();
    let mut n = 0;
    while n < locations {
        let end = (n + batch_len).min(locations);
        let batch = Batch {
            locations: (n..end).map(fix).collect(),
            ..Batch::default()
        };
        sink.apply(&batch, &metrics).await.unwrap();
        n = end;
    }
    let wall = started.elapsed().as_secs_f64();
    let cpu = cpu_seconds(pid) - cpu0;
    let stats: String = client
        .info(Some(fred::types::InfoKind::CommandStats))
        .await
        .unwrap();

    let mut cmds = BTreeMap::new();
    for line in stats.lines() {
        let Some((name, rest)) = line
            .strip_prefix("cmdstat_")
            .and_then(|l| l.split_once(':'))
        else {
            continue;
        };
        let field = |f: &str| -> f64 {
            rest.split(',')
                .find_map(|kv| kv.strip_prefix(f)?.strip_prefix('='))
                .unwrap()
                .parse()
                .unwrap()
        };
        cmds.insert(name.to_owned(), (field("calls"), field("usec")));
    }
    let per = |usec: f64| usec / locations as f64;
    println!(
        "{locations} locations, {devices} devices, {partitions} partitions, batch {batch_len}, parked_every {parked_every}, absent_every {absent_every}, stale_every {stale_every}: {wall:.2} s"
    );
    for (name, (calls, usec)) in &cmds {
        println!(
            "  {name:<12} calls {calls:>9} usec {usec:>11} per call {:>7.2} per location {:>6.3} µs",
            usec / calls,
            per(*usec)
        );
    }
    let evalsha = cmds.get("evalsha").map(|c| c.1).unwrap_or(0.0);
    let data: f64 = cmds
        .iter()
        .filter(|(k, _)| {
            !["evalsha", "config", "info", "script"]
                .iter()
                .any(|c| k.starts_with(c))
        })
        .map(|(_, c)| c.1)
        .sum();
    println!(
        "evalsha {:.2} µs/location (data commands {:.2}, Lua {:.2}); redis-server CPU {:.2} s = {:.2} µs/location",
        per(evalsha),
        per(data),
        per(evalsha - data),
        cpu,
        cpu * 1e6 / locations as f64
    );

    // The run's keys go.
    let mut scan = client.scan(format!("{prefix}*"), Some(1000), None);
    while let Some(mut page) = scan.try_next().await.unwrap() {
        if let Some(keys) = page.take_results() {
            if !keys.is_empty() {
                let _: () = client.unlink(keys).await.unwrap();
            }
        }
    }
}
