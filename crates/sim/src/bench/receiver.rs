//! The receiving clients of a benchmark, one task each: a gateway WebSocket
//! client (what a dispatcher's browser does) or, with `--floor`, a plain
//! MQTT subscriber on the broker. Each connects, subscribes, says so on
//! `ready`, then feeds every location it receives into its [`Tally`] until
//! stopped, and returns the tally. A gateway client also feeds it the
//! derived events it receives (alerts, geofence transitions).

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use futures::StreamExt;
use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS, SubscribeFilter};
use serde::Deserialize;
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::Message;
use tokio_util::sync::CancellationToken;

use super::log::SendLog;
use super::tally::{Family, Tally};
use crate::ws::{self, Frame, Selector};

/// Topic filters per SUBSCRIBE packet of a floor client (keeps packets small).
const FILTERS_PER_SUBSCRIBE: usize = 100;

/// What every receiver needs besides its own selection.
#[derive(Debug, Clone)]
pub struct Common {
    pub log: Arc<SendLog>,
    /// Each receiver sends one `Ok` once subscribed, or the error that
    /// stopped it first; the coordinator holds the receiver and waits for
    /// all of them before starting the load.
    pub ready: mpsc::Sender<Result<(), String>>,
    pub connect_timeout: Duration,
    pub stop: CancellationToken,
}

/// Wall clock, epoch µs.
pub fn now_us() -> i64 {
    let t = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    i64::try_from(t.as_micros()).unwrap_or(i64::MAX)
}

/// A gateway client subscribed with `selector`.
pub async fn gateway(
    url: String,
    token: Option<String>,
    selector: Selector,
    mut tally: Tally,
    common: Common,
) -> Tally {
    let setup = async {
        let mut socket = ws::connect(&url, token.as_deref()).await?;
        ws::subscribe(&mut socket, &selector, "1", common.connect_timeout).await?;
        Ok::<_, ws::WsError>(socket)
    };
    let setup = tokio::select! {
        _ = common.stop.cancelled() => return tally,
        s = tokio::time::timeout(common.connect_timeout, setup) => s,
    };
    let mut socket = match setup {
        Ok(Ok(s)) => s,
        Ok(Err(e)) => return failed(tally, &common, e.to_string()).await,
        Err(_) => return failed(tally, &common, format!("{url}: connect timed out")).await,
    };
    let _ = common.ready.send(Ok(())).await;
    loop {
        let msg = tokio::select! {
            _ = common.stop.cancelled() => break,
            msg = socket.next() => msg,
        };
        match msg {
            Some(Ok(Message::Text(text))) => {
                let recv_us = now_us();
                if let Some(f) = Frame::parse(&text) {
                    match (f.kind.as_ref(), f.device, f.ts) {
                        ("location", Some(device), Some(ts)) => {
                            tally.location(&common.log, &device, ts, recv_us);
                        }
                        ("event", Some(device), Some(ts)) => {
                            let family = f.event_kind.as_deref().and_then(Family::of);
                            if let (Some(family), Some(id)) = (family, f.id.as_deref()) {
                                tally.event(&common.log, family, &device, id, ts, recv_us);
                            }
                        }
                        ("error", _, _) => {
                            tally.error = Some(format!(
                                "error frame {}: {}",
                                f.code.unwrap_or_default(),
                                f.message.unwrap_or_default()
                            ));
                        }
                        _ => {}
                    }
                }
            }
            Some(Ok(Message::Close(frame))) => {
                tally.error = Some(format!("closed by the gateway: {frame:?}"));
                break;
            }
            Some(Ok(_)) => {}
            Some(Err(e)) => {
                tally.error = Some(format!("socket error: {e}"));
                break;
            }
            None => {
                tally.error = Some("socket ended".into());
                break;
            }
        }
    }
    let _ = tokio::time::timeout(Duration::from_secs(1), socket.close(None)).await;
    tally
}

#[derive(Deserialize)]
struct Stamp {
    ts: i64,
}

/// A plain MQTT subscriber to `filters` (the floor).
pub async fn floor(
    mut options: MqttOptions,
    filters: Vec<String>,
    mut tally: Tally,
    common: Common,
) -> Tally {
    options
        .set_keep_alive(Duration::from_secs(30))
        .set_clean_session(true)
        .set_max_packet_size(1 << 20, 1 << 20);
    let (client, mut eventloop) = AsyncClient::new(options, 64);
    let packets = filters.chunks(FILTERS_PER_SUBSCRIBE).count();
    for chunk in filters.chunks(FILTERS_PER_SUBSCRIBE) {
        let chunk = chunk
            .iter()
            .map(|f| SubscribeFilter::new(f.clone(), QoS::AtMostOnce));
        if let Err(e) = client.try_subscribe_many(chunk) {
            return failed(tally, &common, format!("subscribe: {e}")).await;
        }
    }
    let mut acks = 0;
    let deadline = tokio::time::Instant::now() + common.connect_timeout;
    loop {
        let polled = tokio::select! {
            _ = common.stop.cancelled() => break,
            _ = tokio::time::sleep_until(deadline), if acks < packets => {
                return failed(tally, &common, "floor subscriber: no SUBACK in time".into()).await;
            }
            polled = eventloop.poll() => polled,
        };
        match polled {
            Ok(Event::Incoming(Packet::Publish(p))) => {
                let recv_us = now_us();
                let device = p
                    .topic
                    .strip_prefix("devices/")
                    .and_then(|t| t.strip_suffix("/location"));
                match (device, serde_json::from_slice::<Stamp>(&p.payload)) {
                    (Some(device), Ok(s)) => tally.location(&common.log, device, s.ts, recv_us),
                    _ => {
                        tally.frames += 1;
                        tally.unmatched += 1;
                    }
                }
            }
            Ok(Event::Incoming(Packet::SubAck(_))) => {
                acks += 1;
                if acks == packets {
                    let _ = common.ready.send(Ok(())).await;
                }
            }
            Ok(_) => {}
            Err(e) if acks < packets => {
                return failed(tally, &common, format!("floor subscriber: {e}")).await;
            }
            Err(e) => {
                tally.error = Some(format!("floor subscriber: {e}"));
                break;
            }
        }
    }
    let _ = client.try_disconnect();
    tally
}

async fn failed(mut tally: Tally, common: &Common, error: String) -> Tally {
    let _ = common.ready.send(Err(error.clone())).await;
    tally.error = Some(error);
    tally
}
