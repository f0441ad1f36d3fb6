//! A connection's memory is bounded in bytes, snapshots included (README
//! "Slow consumers"): a client that subscribes again and again without
//! reading is closed, not fed.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::time::Duration;

use futures::stream::{self, StreamExt};
use futures::SinkExt;
use serde_json::json;
use support::*;
use tokio_tungstenite::tungstenite::Message as WsMessage;

fn rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap()
}

/// Pins: 500 unread fleet subscribes over 20 000 devices stay within the
/// connection's byte budget until it is closed with 4008; the process
/// (gateway in it) grows by far less than 500 snapshots would take.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unread_fleet_subscribes_are_bounded_then_closed() {
    const DEVICES: usize = 20_000;
    let env = Env::new().await;
    stream::iter(0..DEVICES)
        .for_each_concurrent(64, |i| {
            let env = &env;
            async move {
                let lat = -60.0 + (i % 1200) as f64 * 0.1;
                let lon = -170.0 + (i / 1200) as f64 * 1.7;
                env.location(&format!("veh-{i:05}"), 1_763_800_000_000, lat, lon)
                    .await;
            }
        })
        .await;
    let gw = env.gateway().await;
    let t = token(json!({}));

    // One normal fleet subscribe: the snapshot comes in parts.
    let mut ok = gw.ws(&t).await;
    ok.send(json!({"op":"subscribe","ref":"s","fleet":true}))
        .await;
    let mut parts = 0;
    let mut seen = 0;
    loop {
        let v = ok.recv().await;
        if v["type"] == "snapshot" {
            parts += 1;
            seen += v["devices"].as_array().unwrap().len();
            if v.get("more").is_none() {
                break;
            }
        }
    }
    assert_eq!(seen, DEVICES);
    assert!(parts > 1, "a 20 000-device snapshot is several frames");

    let before = rss_kib();
    let mut greedy = gw.ws(&t).await;
    let sender = async {
        for i in 0..500 {
            let cmd = json!({"op":"subscribe","ref":i,"fleet":true}).to_string();
            if greedy
                .stream
                .feed(WsMessage::Text(cmd.into()))
                .await
                .is_err()
            {
                break;
            }
        }
        let _ = greedy.stream.flush().await;
    };
    // The gateway stops reading once replies back up; the sends may block.
    let _ = tokio::time::timeout(Duration::from_secs(10), sender).await;
    // Unread for longer than REPLY_WAIT (5 s): the gateway closes it.
    // Watch memory meanwhile, then read what the gateway did send (the
    // close frame waits for room up to 10 s).
    let mut peak = rss_kib();
    for _ in 0..14 {
        tokio::time::sleep(Duration::from_millis(500)).await;
        peak = peak.max(rss_kib());
    }
    let grown_mib = peak.saturating_sub(before) / 1024;
    eprintln!("RSS before {before} KiB, peak {peak} KiB: +{grown_mib} MiB");
    assert!(grown_mib < 300, "grew by {grown_mib} MiB");
    // Closed, not fed: the gateway gave up on it (4008), counted.
    let mut closed = 0.0;
    for _ in 0..40 {
        closed = gw.metric("fieldcast_gateway_reply_wait_closed_total").await;
        if closed >= 1.0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    assert!(
        closed >= 1.0,
        "the unread client was closed as a slow consumer"
    );
    drop(greedy);

    // The reading client is unaffected.
    ok.send(json!({"op":"ping","ref":"p"})).await;
    loop {
        let v = ok.recv().await;
        if v["type"] == "pong" {
            break;
        }
    }
    gw.stop().await;
}
