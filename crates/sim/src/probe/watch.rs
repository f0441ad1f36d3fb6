//! The probe's listeners: the MQTT driver (keeps the device's connection,
//! and hears its own messages echoed by the broker) and one WebSocket
//! watcher per gateway (subscribed to the probe device). Each reports what
//! it hears as a [`Seen`] and reconnects with backoff until shutdown.

use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use rand::rngs::SmallRng;
use rand::SeedableRng;
use rumqttc::{AsyncClient, Event, EventLoop, Packet, QoS, SubscribeFilter};
use serde::Deserialize;
use tokio::sync::mpsc;
use tokio::time::{sleep, Instant};
use tokio_tungstenite::tungstenite::Message;
use tokio_util::sync::CancellationToken;
use tracing::{debug, warn};

use super::args::Auth;
use super::metrics::{Metrics, MQTT};
use crate::ws::{self, Frame, Selector};
use fieldcast_core::Backoff;

/// What a probe message is recognised by.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Key {
    /// A location, by its `ts`.
    Location(i64),
    /// An event, by its id.
    Event(String),
}

/// A probe message heard by a listener.
#[derive(Debug, Clone)]
pub struct Seen {
    /// `mqtt` or a gateway URL.
    pub target: Arc<str>,
    pub key: Key,
    pub at: Instant,
}

fn backoff() -> Backoff {
    Backoff::new(Duration::from_millis(200), Duration::from_secs(10))
}

#[derive(Deserialize)]
struct Echo {
    #[serde(default)]
    ts: Option<i64>,
    #[serde(default)]
    id: Option<String>,
}

/// Polls the probe's MQTT event loop until `stop`; (re)subscribes to the
/// device's own location and events topics on every connect and reports
/// their echoes on `seen` (dropped when the round loop is behind: a probe
/// message is then simply late, which is what it measures).
pub async fn mqtt(
    mut eventloop: EventLoop,
    client: AsyncClient,
    topics: [String; 2],
    seen: mpsc::Sender<Seen>,
    metrics: Arc<Metrics>,
    stop: CancellationToken,
) {
    let target: Arc<str> = Arc::from(MQTT);
    let mut backoff = backoff();
    let mut rng = SmallRng::from_os_rng();
    loop {
        let polled = tokio::select! {
            _ = stop.cancelled() => break,
            polled = eventloop.poll() => polled,
        };
        match polled {
            Ok(Event::Incoming(Packet::ConnAck(_))) => {
                backoff.reset();
                let filters = topics
                    .iter()
                    .map(|t| SubscribeFilter::new(t.clone(), QoS::AtLeastOnce));
                if let Err(error) = client.try_subscribe_many(filters) {
                    warn!(%error, "probe: cannot subscribe to its own topics");
                }
            }
            // Connected for the probe once its echo subscription holds:
            // a round published before the SUBACK could not echo.
            Ok(Event::Incoming(Packet::SubAck(_))) => metrics.set_connected(MQTT, true),
            Ok(Event::Incoming(Packet::Publish(p))) => {
                let at = Instant::now();
                let key = match serde_json::from_slice::<Echo>(&p.payload) {
                    Ok(Echo { id: Some(id), .. }) if p.topic == topics[1] => Key::Event(id),
                    Ok(Echo { ts: Some(ts), .. }) if p.topic == topics[0] => Key::Location(ts),
                    _ => continue,
                };
                let _ = seen.try_send(Seen {
                    target: Arc::clone(&target),
                    key,
                    at,
                });
            }
            Ok(_) => {}
            Err(error) => {
                metrics.set_connected(MQTT, false);
                let delay = backoff.next_delay_with(&mut rng);
                warn!(%error, retry_in = ?delay, "probe: MQTT connection failed");
                tokio::select! {
                    _ = stop.cancelled() => break,
                    _ = sleep(delay) => {}
                }
            }
        }
    }
    metrics.set_connected(MQTT, false);
    let _ = client.try_disconnect();
}

/// Keeps a socket to `url` subscribed to `device` until `stop`, reporting
/// the device's locations and events on `seen`.
pub async fn gateway(
    url: String,
    auth: Auth,
    device: String,
    seen: mpsc::Sender<Seen>,
    metrics: Arc<Metrics>,
    stop: CancellationToken,
) {
    let target: Arc<str> = Arc::from(url.as_str());
    let selector = Selector::Devices(vec![device.clone()]);
    let mut backoff = backoff();
    let mut rng = SmallRng::from_os_rng();
    while !stop.is_cancelled() {
        let connected = async {
            let token = auth.token().map_err(|e| e.to_string())?;
            let mut socket = ws::connect(&url, token.as_deref())
                .await
                .map_err(|e| e.to_string())?;
            ws::subscribe(&mut socket, &selector, "probe", Duration::from_secs(10))
                .await
                .map_err(|e| e.to_string())?;
            Ok::<_, String>(socket)
        };
        let connected = tokio::select! {
            _ = stop.cancelled() => break,
            c = connected => c,
        };
        match connected {
            Ok(mut socket) => {
                backoff.reset();
                metrics.set_connected(&url, true);
                debug!(%url, "probe: watching");
                let why = loop {
                    let msg = tokio::select! {
                        _ = stop.cancelled() => break None,
                        msg = socket.next() => msg,
                    };
                    let text = match msg {
                        Some(Ok(Message::Text(t))) => t,
                        Some(Ok(Message::Close(frame))) => {
                            break Some(format!("closed: {frame:?}"))
                        }
                        Some(Ok(_)) => continue,
                        Some(Err(e)) => break Some(e.to_string()),
                        None => break Some("socket ended".to_owned()),
                    };
                    let at = Instant::now();
                    let Some(f) = Frame::parse(&text) else {
                        continue;
                    };
                    if f.device.as_deref() != Some(device.as_str()) {
                        continue;
                    }
                    let key = match (f.kind.as_ref(), f.ts, f.id) {
                        ("location", Some(ts), _) => Key::Location(ts),
                        ("event", _, Some(id)) => Key::Event(id.into_owned()),
                        _ => continue,
                    };
                    let _ = seen.try_send(Seen {
                        target: Arc::clone(&target),
                        key,
                        at,
                    });
                };
                metrics.set_connected(&url, false);
                let Some(why) = why else {
                    let _ = tokio::time::timeout(Duration::from_secs(1), socket.close(None)).await;
                    break;
                };
                warn!(%url, error = %why, "probe: gateway socket lost");
            }
            Err(error) => warn!(%url, %error, "probe: cannot watch the gateway"),
        }
        let delay = backoff.next_delay_with(&mut rng);
        tokio::select! {
            _ = stop.cancelled() => break,
            _ = sleep(delay) => {}
        }
    }
    metrics.set_connected(&url, false);
}
