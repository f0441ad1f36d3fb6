//! The feed: this instance's one Redis subscriber, on the live shard
//! channels (`SSUBSCRIBE`: one per partition on a cluster, `<prefix>live`
//! on one Redis, where the bridge's scripts publish) and on `<prefix>push` (classic `SUBSCRIBE`:
//! channel messages from any backend or gateway). Each message is parsed
//! once into a shared frame and handed to the [`Hub`].
//!
//! On a reconnect (or if this task ever falls behind the client's
//! broadcast buffer) messages may have been missed, so every channel is
//! subscribed again (on a cluster a failover moves shard channels to the
//! promoted replica, and fred does not follow them by itself) and every
//! connection is told to resync: a fresh snapshot plus the events since
//! the last cursor.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::ws::Utf8Bytes;
use bytes::Bytes;
use fieldcast_core::{DeviceId, LiveEnvelope, LiveHeader, Partitions};
use fred::prelude::*;
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use tokio::sync::broadcast::error::RecvError;
use tokio_util::sync::CancellationToken;

use crate::cursor::{EventPos, Position};
use crate::health::Health;
use crate::live::hub::{Hub, Update};
use crate::live::outbox::{Item, Kind, Out};
use crate::live::sent::EventKey;
use crate::metrics::Metrics;
use fieldcast_core::Backoff;

use crate::store::redis::{builder, Keys, StoreError};

/// How long one subscribe may take before it is tried again.
const SUBSCRIBE_TIMEOUT: Duration = Duration::from_secs(5);

/// Quiet time after a reconnect before the feed resubscribes and resyncs
/// every connection: a cluster client reports a reconnect per node, a
/// failover several in a row, and each resync costs every client a fresh
/// snapshot. One resync after they settle serves them all.
const RECONNECT_SETTLE: Duration = Duration::from_millis(500);
/// Longest a run of reconnects may hold the resync back.
const RECONNECT_SETTLE_MAX: Duration = Duration::from_secs(3);

/// Runs until `shutdown`; reconnects by itself (fred's policy: exponential
/// backoff with jitter).
pub async fn run(
    url: String,
    buffer: usize,
    keys: Keys,
    hub: Arc<Hub>,
    health: Arc<Health>,
    metrics: Arc<Metrics>,
    shutdown: CancellationToken,
) -> Result<(), StoreError> {
    let client = subscriber(&url, buffer)?;
    let mut messages = client.message_rx();
    let mut reconnects = client.reconnect_rx();
    let mut errors = client.error_rx();
    let _task = client.connect();
    let channels = Channels {
        live: keys.live_channels(),
        push: keys.push.clone(),
    };
    let live: HashSet<String> = channels.live.iter().cloned().collect();
    let mut first = true;
    let mut need_subscribe = true;
    let mut backoff = Backoff::new(Duration::from_millis(100), Duration::from_secs(5));
    loop {
        if need_subscribe {
            if !first {
                let settled = settle(
                    &mut reconnects,
                    &mut errors,
                    &mut messages,
                    &shutdown,
                    |m| route(&live, &keys.push, keys.partitions(), &hub, m),
                )
                .await;
                let Some(more) = settled else {
                    break;
                };
                metrics.redis_reconnects.inc_by(more);
            }
            match subscribe(&client, &channels, &mut backoff, &shutdown).await {
                Attempt::Stopped => break,
                Attempt::Failed => {}
                Attempt::Subscribed => {
                    need_subscribe = false;
                    health.set_feed(true);
                    // Errors of connections that failed before this
                    // subscribe worked (fred retrying a dead node) say
                    // nothing new; a connection lost after it comes back
                    // as a reconnect, which is kept.
                    while errors.try_recv().is_ok() {}
                    if first {
                        // fred reports the first connection to each node
                        // (every primary of a cluster) as a reconnect too;
                        // answered as one, it resynced every client of a
                        // fresh instance.
                        while reconnects.try_recv().is_ok() {}
                    } else {
                        tracing::info!("live feed resubscribed; asking every connection to resync");
                        metrics.feed_resyncs.inc();
                        hub.resync_all();
                    }
                    first = false;
                }
            }
            continue;
        }
        tokio::select! {
            _ = shutdown.cancelled() => break,
            m = messages.recv() => match m {
                Ok(m) => route(&live, &keys.push, keys.partitions(), &hub, &m),
                Err(RecvError::Lagged(n)) => {
                    tracing::warn!(missed = n, "live feed fell behind; resyncing connections");
                    metrics.feed_lagged.inc_by(n);
                    metrics.feed_resyncs.inc();
                    hub.resync_all();
                }
                Err(RecvError::Closed) => break,
            },
            r = reconnects.recv() => {
                if r.is_ok() {
                    metrics.redis_reconnects.inc();
                    need_subscribe = true;
                }
            }
            e = errors.recv() => {
                if let Ok((e, _)) = e {
                    tracing::warn!(error = %e, "live feed connection error");
                    health.set_feed(false);
                    need_subscribe = true;
                }
            }
        }
    }
    health.set_feed(false);
    let _ = tokio::time::timeout(Duration::from_secs(1), client.quit()).await;
    Ok(())
}

/// Waits until no reconnect or connection error was reported for
/// [`RECONNECT_SETTLE`] (at most [`RECONNECT_SETTLE_MAX`]), routing the
/// messages that still come; the number of reconnects absorbed, or `None`
/// on shutdown.
async fn settle(
    reconnects: &mut tokio::sync::broadcast::Receiver<fred::types::config::Server>,
    errors: &mut tokio::sync::broadcast::Receiver<(
        fred::error::Error,
        Option<fred::types::config::Server>,
    )>,
    messages: &mut tokio::sync::broadcast::Receiver<fred::types::Message>,
    shutdown: &CancellationToken,
    mut route: impl FnMut(&fred::types::Message),
) -> Option<u64> {
    let start = tokio::time::Instant::now();
    let mut quiet_until = start + RECONNECT_SETTLE;
    let cap = start + RECONNECT_SETTLE_MAX;
    let mut absorbed = 0;
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return None,
            _ = tokio::time::sleep_until(quiet_until.min(cap)) => return Some(absorbed),
            r = reconnects.recv() => {
                if r.is_ok() {
                    absorbed += 1;
                    quiet_until = tokio::time::Instant::now() + RECONNECT_SETTLE;
                }
            }
            e = errors.recv() => {
                if e.is_ok() {
                    quiet_until = tokio::time::Instant::now() + RECONNECT_SETTLE;
                }
            }
            m = messages.recv() => {
                if let Ok(m) = m {
                    route(&m);
                }
            }
        }
    }
}

/// The feed's own Redis client (a subscriber holds its connection).
fn subscriber(url: &str, buffer: usize) -> Result<Client, StoreError> {
    Ok(builder(url)?
        .with_performance_config(|p| {
            // Pub/sub messages reach the feed through a broadcast channel
            // of this capacity (--feed-buffer); a lag there is detected and
            // repaired by a resync of every client, which is expensive.
            p.broadcast_channel_capacity = buffer;
        })
        .build()?)
}

/// How one subscribe attempt ended.
enum Attempt {
    Subscribed,
    /// Failed or timed out (after a backoff pause on an error): try again.
    Failed,
    /// Shutdown came first.
    Stopped,
}

/// What the feed listens to.
struct Channels {
    /// Shard channels, each in its own slot.
    live: Vec<String>,
    push: String,
}

/// Waits for the connection and subscribes to every channel, within
/// [`SUBSCRIBE_TIMEOUT`]. One `SSUBSCRIBE` per channel, all at once: on a
/// cluster one naming channels of several slots fails with `CROSSSLOT`.
async fn subscribe(
    client: &Client,
    channels: &Channels,
    backoff: &mut Backoff,
    shutdown: &CancellationToken,
) -> Attempt {
    let sub = async {
        client.wait_for_connect().await?;
        futures::future::try_join_all(
            channels
                .live
                .iter()
                .map(|ch| client.ssubscribe(ch.as_str())),
        )
        .await?;
        client.subscribe(channels.push.as_str()).await
    };
    let res = tokio::select! {
        _ = shutdown.cancelled() => return Attempt::Stopped,
        r = tokio::time::timeout(SUBSCRIBE_TIMEOUT, sub) => r,
    };
    match res {
        Ok(Ok(())) => {
            backoff.reset();
            Attempt::Subscribed
        }
        Ok(Err(e)) => {
            tracing::warn!(error = %e, "live feed subscribe failed");
            tokio::select! {
                _ = shutdown.cancelled() => Attempt::Stopped,
                _ = tokio::time::sleep(backoff.next_delay()) => Attempt::Failed,
            }
        }
        Err(_) => Attempt::Failed,
    }
}

fn route(
    live: &HashSet<String>,
    push: &str,
    partitions: Partitions,
    hub: &Hub,
    m: &fred::types::Message,
) {
    let Some(text) = m.value.as_str() else {
        return;
    };
    if live.contains(&*m.channel) {
        // Each frame is a slice of the message's own buffer, not a copy.
        let whole = match &m.value {
            Value::String(s) => Some(s.inner()),
            Value::Bytes(b) => Some(b),
            _ => None,
        };
        let frame = |msg: &str| frame_in(whole, msg);
        // The bridge publishes one update, or a batch of them as a JSON array.
        if text.trim_start().starts_with('[') {
            // One pass over the batch; should an element not be an
            // envelope, each is read on its own and only that one skipped.
            match serde_json::from_str::<Vec<LiveEnvelope>>(&text) {
                Ok(batch) => {
                    for env in batch {
                        match from_envelope(env, partitions, frame) {
                            Some(u) => hub.dispatch(u),
                            None => tracing::debug!("ignoring a malformed live message"),
                        }
                    }
                }
                Err(_) => match serde_json::from_str::<Vec<&RawValue>>(&text) {
                    Ok(batch) => {
                        for one in batch {
                            match serde_json::from_str(one.get())
                                .ok()
                                .and_then(|env| from_envelope(env, partitions, frame))
                            {
                                Some(u) => hub.dispatch(u),
                                None => tracing::debug!("ignoring a malformed live message"),
                            }
                        }
                    }
                    Err(_) => tracing::debug!("ignoring a malformed live batch"),
                },
            }
        } else {
            match serde_json::from_str(&text)
                .ok()
                .and_then(|env| from_envelope(env, partitions, frame))
            {
                Some(u) => hub.dispatch(u),
                None => tracing::debug!("ignoring a malformed live message"),
            }
        }
    } else if *m.channel == *push {
        match parse_push(&text) {
            Some((channel, item)) => hub.dispatch_message(&channel, item),
            None => tracing::debug!("ignoring a malformed push message"),
        }
    }
}

/// `msg` as a frame: a slice of `whole` when it lies inside it (it was
/// parsed out of it), else a copy.
fn frame_in(whole: Option<&Bytes>, msg: &str) -> Utf8Bytes {
    if let Some(whole) = whole {
        let (base, at) = (whole.as_ptr() as usize, msg.as_ptr() as usize);
        if at >= base && at + msg.len() <= base + whole.len() {
            let start = at - base;
            if let Ok(frame) = Utf8Bytes::try_from(whole.slice(start..start + msg.len())) {
                return frame;
            }
        }
    }
    Utf8Bytes::from(msg)
}

/// Parses the bridge's `{"rx","msg"}` envelope; the frame is `msg`'s bytes.
/// The device id is checked here, once: inside, the live path carries a
/// [`DeviceId`].
pub fn parse_live(text: &str, partitions: Partitions) -> Option<Update> {
    let env: LiveEnvelope = serde_json::from_str(text).ok()?;
    from_envelope(env, partitions, |msg: &str| Utf8Bytes::from(msg))
}

/// [`parse_live`] of an envelope already read, `frame` making the frame
/// of its `msg`.
fn from_envelope(
    env: LiveEnvelope,
    partitions: Partitions,
    frame: impl FnOnce(&str) -> Utf8Bytes,
) -> Option<Update> {
    let h: LiveHeader = serde_json::from_str(env.msg.get()).ok()?;
    let device = DeviceId::parse(h.device).ok()?;
    let kind = match h.ty {
        "location" => Kind::Location,
        "status" => Kind::Status,
        "event" => Kind::Event,
        _ => return None,
    };
    let pos = match (h.lat, h.lon) {
        (Some(lat), Some(lon)) => Some((lon, lat)),
        _ => None,
    };
    if kind == Kind::Location && pos.is_none() {
        return None;
    }
    // An event without a position that parses (a bridge from before
    // partitioned logs) is still delivered, without a cursor: it cannot
    // move the resume point or be filtered by a snapshot's floor.
    let event = env
        .pos
        .filter(|_| kind == Kind::Event)
        .and_then(|p| p.parse::<Position>().ok())
        .map(|at| EventPos {
            partition: partitions.of(device.as_str()).index(),
            at,
        });
    let event_key =
        h.id.filter(|_| kind == Kind::Event)
            .map(|id| EventKey::of(device.as_str(), &id));
    Some(Update {
        kind,
        device,
        ts: h.ts,
        pos,
        event,
        event_key,
        prev_groups: None,
        item: Item {
            out: Out::Text(frame(env.msg.get())),
            kind,
            rx_ms: env.rx,
        },
    })
}

#[derive(Deserialize)]
struct PushIn<'a> {
    channel: String,
    #[serde(borrow)]
    data: Option<&'a RawValue>,
}

#[derive(Serialize)]
struct MessageOut<'a> {
    #[serde(rename = "type")]
    ty: &'static str,
    channel: &'a str,
    data: &'a RawValue,
}

/// Parses `{"channel","data"}` into the `message` frame.
pub fn parse_push(text: &str) -> Option<(String, Item)> {
    let p: PushIn = serde_json::from_str(text).ok()?;
    let null = RawValue::NULL;
    let frame = serde_json::to_string(&MessageOut {
        ty: "message",
        channel: &p.channel,
        data: p.data.unwrap_or(null),
    })
    .ok()?;
    Some((
        p.channel,
        Item {
            out: Out::Text(frame.into()),
            kind: Kind::Message,
            rx_ms: 0,
        },
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn live_frames_are_the_message_bytes() {
        let msg = r#"{"type":"location","device":"t","ts":5,"lat":51.50735090123456,"lon":-0.12}"#;
        let u = parse_live(&fieldcast_core::live::envelope(42, msg), parts()).unwrap();
        assert_eq!(u.kind, Kind::Location);
        assert_eq!(u.pos, Some((-0.12, 51.50735090123456)));
        assert_eq!(u.item.rx_ms, 42);
        match u.item.out {
            Out::Text(t) => assert_eq!(t.as_str(), msg),
            Out::Ping => panic!(),
        }
        assert!(parse_live("{}", parts()).is_none());
    }

    fn parts() -> Partitions {
        Partitions::new(8).unwrap()
    }

    #[test]
    fn events_carry_their_position_in_their_partition() {
        let msg = r#"{"type":"event","device":"t","id":"e","ts":5,"kind":"k","severity":"info"}"#;
        let env = format!(r#"{{"rx":42,"msg":{msg},"pos":"00c0ffee0000beef:1763800000000-3"}}"#);
        let u = parse_live(&env, parts()).unwrap();
        assert_eq!(u.kind, Kind::Event);
        let e = u.event.unwrap();
        assert_eq!(e.partition, parts().of("t").index());
        assert_eq!(e.at.to_string(), "00c0ffee0000beef:1763800000000-3");
        match u.item.out {
            Out::Text(t) => assert_eq!(t.as_str(), msg, "the cursor is the hub's to add"),
            Out::Ping => panic!(),
        }
        // A bare stream id is forwarded, but is no position.
        let old = format!(r#"{{"rx":42,"msg":{msg},"pos":"1763800000000-3"}}"#);
        let u = parse_live(&old, parts()).unwrap();
        assert_eq!(u.event, None);
    }

    /// A batch is read in one pass, each frame a slice of the message's
    /// buffer; an element that is no envelope is skipped alone.
    #[test]
    fn a_batch_shares_its_buffer_and_skips_a_bad_element_alone() {
        use crate::auth::Scope;
        use crate::live::hub::{Activation, Mode, Selection};
        use crate::live::outbox::Outbox;
        let hub = Hub::new(1000, &Default::default());
        let o = Arc::new(Outbox::new(100, Arc::default()));
        let r = hub.register(Arc::new(Scope::unrestricted()), o.clone(), Arc::default());
        let fleet = Selection {
            fleet: true,
            ..Default::default()
        };
        hub.begin(r.id, fleet, Mode::Subscribe);
        hub.activate(r.id, Activation::default());
        let loc = |d: &str, ts: i64| {
            let msg =
                format!(r#"{{"type":"location","device":"{d}","ts":{ts},"lat":1.5,"lon":2.5}}"#);
            fieldcast_core::live::envelope(ts, &msg)
        };
        let good = format!("[{},{}]", loc("a", 1), loc("b", 2));
        let bad = format!(r#"[{},{{"rx":1}},{}]"#, loc("a", 3), loc("b", 4));
        let live: HashSet<String> = ["live".to_owned()].into();
        let mut frames = Vec::new();
        for text in [good, bad] {
            let value = Value::from(text);
            let Value::String(s) = &value else { panic!() };
            let whole: Bytes = s.inner().clone();
            let m = fred::types::Message {
                channel: "live".into(),
                value,
                kind: fred::types::MessageKind::SMessage,
                server: fred::types::config::Server::new("127.0.0.1", 6379),
            };
            route(&live, "push", parts(), &hub, &m);
            let mut buf = Vec::new();
            o.drain(&mut buf, usize::MAX).unwrap();
            for item in buf {
                let Out::Text(t) = item.out else { panic!() };
                let (base, at) = (whole.as_ptr() as usize, t.as_str().as_ptr() as usize);
                assert!(
                    at >= base && at < base + whole.len(),
                    "a slice of the message"
                );
                frames.push(t.as_str().to_owned());
            }
        }
        let ts: Vec<i64> = frames
            .iter()
            .map(|f| serde_json::from_str::<LiveHeader>(f).unwrap().ts)
            .collect();
        assert_eq!(ts, [1, 2, 3, 4]);
    }

    #[test]
    fn push_becomes_a_message_frame() {
        let (ch, item) = parse_push(r#"{"channel":"user:42","data":{"a":1.5}}"#).unwrap();
        assert_eq!(ch, "user:42");
        match item.out {
            Out::Text(t) => assert_eq!(
                t.as_str(),
                r#"{"type":"message","channel":"user:42","data":{"a":1.5}}"#
            ),
            Out::Ping => panic!(),
        }
    }
}
