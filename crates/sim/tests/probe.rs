//! `fieldcast-sim probe` against the real chain (private Mosquitto, bridge
//! and gateway in this process): rounds succeed end to end for locations
//! and events and show up on its `/metrics`; a gateway that is not there
//! counts as failures with reason `disconnected`; shutdown stops it all.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::time::Duration;

use clap::Parser;
use fieldcast_sim::probe::{self, ProbeArgs};
use fieldcast_testkit::{free_port, unique, wait_until};
use tokio_util::sync::CancellationToken;

use support::{http_get, metric, World, SECRET, WAIT};

#[derive(Parser)]
struct Cli {
    #[command(flatten)]
    probe: ProbeArgs,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn probe_reports_end_to_end_success_and_failure() {
    let world = World::start().await;
    let good = world.ws_url();
    let dead = format!("ws://127.0.0.1:{}/ws", free_port());
    let device = unique("probe");
    let config = Cli::try_parse_from([
        "probe",
        "--mqtt-url",
        &world.chain.broker.url,
        "--gateway",
        &good,
        "--gateway",
        &dead,
        "--jwt-secret",
        SECRET,
        "--device",
        &device,
        "--interval",
        "300ms",
        "--timeout",
        "2s",
        "--events",
    ])
    .unwrap()
    .probe
    .into_config()
    .unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let shutdown = CancellationToken::new();
    let task = tokio::spawn(probe::run(config, listener, shutdown.clone()));

    let series = |kind: &str, target: &str| {
        format!(r#"fieldcast_probe_success_total{{kind="{kind}",target="{target}"}}"#)
    };
    let (loc, ev, echo) = (
        series("location", &good),
        series("event", &good),
        series("location", "mqtt"),
    );
    let dead_failures = format!(
        r#"fieldcast_probe_failure_total{{kind="location",target="{dead}",reason="disconnected"}}"#
    );
    wait_until(WAIT, "probe rounds succeed", || {
        let (loc, ev, echo, dead_failures) = (&loc, &ev, &echo, &dead_failures);
        async move {
            let text = http_get(addr, "/metrics").await.1;
            let at_least = |s: &str, n: f64| metric(&text, s).is_some_and(|v| v >= n);
            at_least(loc, 2.0)
                && at_least(ev, 2.0)
                && at_least(echo, 2.0)
                && at_least(dead_failures, 1.0)
        }
    })
    .await
    .expect("probe metrics");

    let text = http_get(addr, "/metrics").await.1;
    let good_connected = format!(r#"fieldcast_probe_connected{{target="{good}"}}"#);
    let dead_connected = format!(r#"fieldcast_probe_connected{{target="{dead}"}}"#);
    assert_eq!(metric(&text, &good_connected), Some(1.0), "{text}");
    assert_eq!(metric(&text, &dead_connected), Some(0.0), "{text}");
    let count =
        format!(r#"fieldcast_probe_latency_seconds_count{{kind="location",target="{good}"}}"#);
    assert!(metric(&text, &count).is_some_and(|n| n >= 2.0), "{text}");
    let last = format!(
        r#"fieldcast_probe_last_success_timestamp_seconds{{kind="location",target="{good}"}}"#
    );
    assert!(metric(&text, &last).is_some_and(|t| t > 1.7e9), "{text}");
    let timeouts = format!(
        r#"fieldcast_probe_failure_total{{kind="location",target="{good}",reason="timeout"}}"#
    );
    assert_eq!(metric(&text, &timeouts), Some(0.0), "{text}");
    assert_eq!(http_get(addr, "/healthz").await.0, 200);

    shutdown.cancel();
    tokio::time::timeout(Duration::from_secs(15), task)
        .await
        .expect("probe stops on shutdown")
        .expect("probe task")
        .expect("probe ends cleanly");
    assert_eq!(http_get(addr, "/healthz").await.0, 0, "server closed");
    world.stop().await;
}
