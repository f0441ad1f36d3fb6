//! Server-initiated closes reach the client with their code, even when the
//! client still has frames in flight (PROTOCOL.md §4: a flood is closed with
//! 1008, a slow consumer with 4008, shutdown with 1001).

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use futures::SinkExt;
use serde_json::json;
use support::*;
use tokio_tungstenite::tungstenite::Message as WsMessage;

/// Pins: a client that floods far over the frame rate and keeps sending
/// while it is slow to read gets the close frame with 1008, not a reset
/// (1006 at the client). A gateway that tore the socket down at once would
/// answer the client's further frames with a TCP reset, and the client's
/// kernel drops the close frame still waiting in its receive buffer.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_is_closed_with_1008_even_with_frames_in_flight() {
    use futures::StreamExt;
    let env = Env::new().await;
    let gw = env.gateway().await;
    let t = token(json!({}));
    for round in 0..3 {
        let (stream, _) = tokio_tungstenite::connect_async(gw.ws_url(&t))
            .await
            .unwrap();
        let (mut tx, mut rx) = stream.split();
        let frame = json!({"op": "ping", "ref": "p".repeat(1024)}).to_string();
        // A burst of 1000 frames, five times the rate limit however slowly
        // this machine runs, then more for 1.5 s (until the socket
        // refuses): long after the gateway decided to close, well inside
        // its 2 s drain.
        let sender = tokio::spawn(async move {
            let until = tokio::time::Instant::now() + std::time::Duration::from_millis(1500);
            for _ in 0..1000 {
                if tx
                    .feed(WsMessage::Text(frame.clone().into()))
                    .await
                    .is_err()
                {
                    return tx;
                }
            }
            let _ = tx.flush().await;
            while tokio::time::Instant::now() < until {
                if tx
                    .send(WsMessage::Text(frame.clone().into()))
                    .await
                    .is_err()
                {
                    break;
                }
                tokio::time::sleep(std::time::Duration::from_millis(2)).await;
            }
            tx
        });
        // Reads nothing for the first second: the close frame waits in
        // this side's receive buffer while the frames keep going out.
        tokio::time::sleep(std::time::Duration::from_secs(1)).await;
        let end = loop {
            match tokio::time::timeout(std::time::Duration::from_secs(10), rx.next()).await {
                Ok(Some(Ok(WsMessage::Close(f)))) => {
                    break Ended::Close(f.map_or(1005, |f| u16::from(f.code)))
                }
                Ok(Some(Ok(_))) => {}
                Ok(Some(Err(_)) | None) => break Ended::Dropped,
                Err(_) => panic!("round {round}: no close within 10 s"),
            }
        };
        let _ = sender.await;
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
