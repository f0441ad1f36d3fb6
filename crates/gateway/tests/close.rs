//! Server-initiated closes reach the client with their code, even when the
//! client still has frames in flight (PROTOCOL.md §4: a flood is closed with
//! 1008, a slow consumer with 4008, shutdown with 1001).

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use futures::SinkExt;
use serde_json::json;
use support::*;
use tokio_tungstenite::tungstenite::Message as WsMessage;

/// Pins: a client that sends a burst far over the frame rate — frames still
/// unread by the gateway when it closes — gets the close frame with 1008,
/// not a reset (1006 at the client).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_is_closed_with_1008_even_with_frames_in_flight() {
    let env = Env::new().await;
    let gw = env.gateway().await;
    let t = token(json!({}));
    for round in 0..3 {
        let mut flood = gw.ws(&t).await;
        // 400 frames of 4 KiB in one burst: far more than the gateway
        // reads before it decides to close, so they are still in its
        // socket's receive buffer then.
        let frame = json!({"op": "ping", "ref": "p".repeat(4096)}).to_string();
        let burst = async {
            for _ in 0..400 {
                if flood
                    .stream
                    .feed(WsMessage::Text(frame.clone().into()))
                    .await
                    .is_err()
                {
                    break;
                }
            }
            let _ = flood.stream.flush().await;
        };
        let _ = tokio::time::timeout(std::time::Duration::from_secs(5), burst).await;
        let end = loop {
            match flood.try_recv().await {
                Ok(_) => {}
                Err(e) => break e,
            }
        };
        assert_eq!(end, Ended::Close(1008), "round {round}");
    }
    gw.stop().await;
}

/// Pins §4's "live from here" from a gateway's first second: a viewer that
/// subscribes the moment a fresh gateway accepts connections gets every
/// update published after its `subscribed` (the subscribe waits for the
/// instance's live feed), and `/readyz` is not ready before the feed is.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fresh_gateway_is_live_before_it_says_subscribed() {
    let env = Env::new().await;
    let t = token(json!({}));
    for round in 0..4 {
        let dev = format!("fresh-{round}");
        let gw = Gateway::start_unready(env.config()).await;
        // Connect as soon as the listener takes connections.
        let mut ws = loop {
            match tokio_tungstenite::connect_async(gw.ws_url(&t)).await {
                Ok((stream, _)) => break Ws { stream },
                Err(_) => tokio::time::sleep(std::time::Duration::from_millis(5)).await,
            }
        };
        let (_snap, _cursor) = ws.subscribe(json!({"devices": [dev]})).await;
        let (status, _, body) = http(gw.addr, "GET", "/readyz", None, None).await;
        let ready: serde_json::Value = serde_json::from_str(&body).unwrap();
        assert_eq!(
            ready["live_feed"], true,
            "round {round}: subscribed before the feed ({status} {body})"
        );
        let ts = 1_763_800_000_000 + round;
        assert!(env.location(&dev, ts, 51.5, -0.1).await);
        let v = ws.recv().await;
        assert_eq!(v["type"], "location", "round {round}: {v}");
        assert_eq!(v["device"], dev.as_str());
        assert_eq!(v["ts"], ts);
        gw.stop().await;
    }
}
