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
    let greedy = gw.ws(&t).await;
    let (mut tx, mut rx) = greedy.stream.split();
    // The gateway stops reading once replies back up, so the sends may
    // block: they run on their own while this side watches and then reads.
    let sender = tokio::spawn(async move {
        let send_all = async {
            for i in 0..500 {
                let cmd = json!({"op":"subscribe","ref":i,"fleet":true}).to_string();
                if tx.feed(WsMessage::Text(cmd.into())).await.is_err() {
                    return;
                }
            }
            let _ = tx.flush().await;
        };
        let _ = tokio::time::timeout(Duration::from_secs(30), send_all).await;
        tx
    });
    // Unread for longer than REPLY_WAIT (5 s): the gateway gives up on it
    // (counted). Memory is watched meanwhile.
    let mut peak = rss_kib();
    let mut closed = 0.0;
    for _ in 0..120 {
        tokio::time::sleep(Duration::from_millis(250)).await;
        peak = peak.max(rss_kib());
        closed = gw.metric("fieldcast_gateway_reply_wait_closed_total").await;
        if closed >= 1.0 {
            break;
        }
    }
    assert!(
        closed >= 1.0,
        "the unread client was closed as a slow consumer"
    );
    // Closed, not fed: reading now, the client gets what was queued within
    // the budget and then the close frame with 4008 (it waits for room in
    // the socket for up to 10 s).
    let mut frames = 0usize;
    let mut bytes = 0usize;
    let end = loop {
        match tokio::time::timeout(Duration::from_secs(15), rx.next()).await {
            Ok(Some(Ok(WsMessage::Close(f)))) => {
                break Ended::Close(f.map_or(1005, |f| u16::from(f.code)))
            }
            Ok(Some(Ok(WsMessage::Text(t)))) => {
                frames += 1;
                bytes += t.len();
                peak = peak.max(rss_kib());
            }
            Ok(Some(Ok(_))) => {}
            Ok(Some(Err(_)) | None) => break Ended::Dropped,
            Err(_) => panic!("no close frame within 15 s after {frames} frames"),
        }
    };
    let grown_mib = peak.saturating_sub(before) / 1024;
    eprintln!(
        "RSS before {before} KiB, peak {peak} KiB: +{grown_mib} MiB; \
         the unread client got {frames} frames ({} KiB) before its close",
        bytes / 1024
    );
    assert_eq!(end, Ended::Close(4008), "after {frames} frames");
    assert!(grown_mib < 300, "grew by {grown_mib} MiB");
    let _ = sender.await;

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
