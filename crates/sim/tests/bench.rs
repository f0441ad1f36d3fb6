//! `fieldcast-sim bench` end to end, small: a few devices through the real
//! bridge and gateway (in this process) to two WebSocket clients, and the
//! same load to plain MQTT subscribers (the floor). Pins that every sent
//! location is matched to its delivery (ratio exactly 1 on an idle
//! machine), that the token is minted from the secret, that the JSON
//! line parses, and that overspeed bursts come back as alerts, each timed.
//! No timing is asserted: benchmarks are not tests.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use clap::Parser;
use fieldcast_sim::bench::{self, BenchArgs, Report};
use fieldcast_testkit::unique;
use serde_json::Value;
use tokio_util::sync::CancellationToken;

use support::{http_get, World, SECRET};

#[derive(Parser)]
struct Cli {
    #[command(flatten)]
    bench: BenchArgs,
}

async fn bench(world: &World, extra: &[&str]) -> Report {
    let prefix = unique("bn");
    let url = world.ws_url();
    let mut args = vec![
        "bench",
        "--mqtt-url",
        &world.chain.broker.url,
        "--gateway",
        &url,
        "--jwt-secret",
        SECRET,
        "--prefix",
        &prefix,
        "--devices",
        "6",
        "--rate",
        "5",
        "--clients",
        "2",
        "--warmup",
        "1s",
        "--duration",
        "3s",
        "--drain",
        "1s",
        "--ramp-up",
        "0s",
    ];
    args.extend_from_slice(extra);
    let config = Cli::try_parse_from(args)
        .unwrap()
        .bench
        .into_config()
        .unwrap();
    bench::run(config, CancellationToken::new())
        .await
        .expect("bench runs")
}

fn check(report: &Report) -> Value {
    assert!(report.accounting.expected > 0, "{report}");
    assert_eq!(report.delivery_ratio, Some(1.0), "{report}");
    assert_eq!(
        (report.accounting.superseded, report.accounting.missing),
        (0, 0),
        "{report}"
    );
    assert_eq!(
        (report.out_of_order, report.clients_failed),
        (0, 0),
        "{report}"
    );
    assert_eq!(report.latency_ms.count, report.accounting.delivered);
    let json: Value = serde_json::from_str(&report.json_line()).expect("one JSON line");
    assert!(!report.json_line().contains('\n'));
    assert_eq!(json["delivery_ratio"], 1.0);
    assert_eq!(json["expected"], report.accounting.expected);
    assert!(json["latency_ms"]["p99"].as_f64().is_some());
    json
}

/// Pins the alert measurement end to end: `--alert-rule overspeed:30`
/// creates the rule through the gateway's API with a minted admin token,
/// the bridge loads it, every burst trips it exactly once (the routes never
/// reach 30 m/s), each client receives one alert per burst of the devices
/// it watches, timed from its tripping location's send, none twice; the
/// rule is deleted when the run ends. A run without alerts has no
/// `alerts` in its JSON line (pinned above by `check` callers).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn overspeed_bursts_reach_every_client_as_alerts() {
    let world = World::start().await;
    let admin =
        fieldcast_sim::token::mint_admin(SECRET, "test", std::time::Duration::from_secs(600))
            .unwrap();
    let rules = format!("/api/rules?token={admin}");

    // 5 locations/s: a burst of 3 then 2 of the route's own every second.
    let report = bench(
        &world,
        &["--alert-rule", "overspeed:30", "--overspeed-every", "1s"],
    )
    .await;
    let json = check(&report);
    let alerts = report.alerts.expect("alerts measured");
    let bursts = alerts.bursts.expect("bursts counted");
    // 6 devices x 3 s window / 1 s.
    assert!((12..=24).contains(&bursts), "{report}");
    assert_eq!(
        alerts.count,
        2 * bursts,
        "every burst to both clients: {report}"
    );
    assert_eq!((alerts.unmatched, alerts.repeated), (0, 0), "{report}");
    assert_eq!(alerts.latency_ms.count, alerts.count);
    assert!(alerts.latency_ms.max > 0.0);
    assert_eq!(json["alerts"]["count"], alerts.count);
    assert!(json["alerts"]["latency_ms"]["p99"].as_f64().is_some());
    assert!(json.get("fence_events").is_none());
    assert!(report.to_string().contains("alerts: n="), "{report}");
    assert_eq!(http_get(world.gateway, &rules).await, (200, "[]".into()));

    // Without the rule the bursts trip nothing: measured, n=0.
    let quiet = bench(&world, &["--overspeed-every", "1s"]).await;
    let alerts = quiet.alerts.expect("bursts given: alerts measured");
    assert_eq!((alerts.count, alerts.unmatched), (0, 0), "{quiet}");
    assert!(alerts.bursts.is_some_and(|b| b > 0));

    world.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_location_reaches_every_client_through_the_gateway() {
    let world = World::start().await;

    // Whole fleet: each client expects every window send of every device.
    let fleet = bench(&world, &["--watch-pid", &std::process::id().to_string()]).await;
    let json = check(&fleet);
    assert!(
        json.get("alerts").is_none(),
        "no alerts measured, none in the line"
    );
    assert_eq!(json["mode"], "gateway");
    assert_eq!(json["selection"], "fleet");
    assert_eq!(fleet.accounting.expected, 2 * fleet.sent);
    assert!(fleet.sent > 0 && fleet.unmatched == 0, "{fleet}");
    // This process, twice: once as the bench itself, once as --watch-pid.
    assert_eq!(json["processes"].as_array().map(Vec::len), Some(2));

    // K devices each: client 0 watches devices 1-2, client 1 devices 3-4.
    let subset = bench(&world, &["--watch", "2"]).await;
    check(&subset);
    assert_eq!(subset.selection, "watch:2");
    assert!(
        subset.accounting.expected * 3 / 2 <= subset.sent,
        "{subset}"
    );

    world.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_floor_uses_plain_mqtt_subscribers() {
    let world = World::start().await;
    let floor = bench(&world, &["--floor", "--watch", "3"]).await;
    let json = check(&floor);
    assert_eq!(json["mode"], "floor");
    assert_eq!(
        floor.accounting.expected, floor.sent,
        "2 clients x half the fleet"
    );
    world.stop().await;
}
