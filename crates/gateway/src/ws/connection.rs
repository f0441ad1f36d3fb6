//! One WebSocket connection: a reader that obeys the client's commands and
//! a writer that drains the connection's [`Outbox`] onto the socket, several
//! frames per flush.
//!
//! The writer owns the sink; everything sent (replies, snapshots, live
//! updates, pings, the close frame) goes through the outbox, so ordering is
//! one queue's order. The reader never blocks the hub: it awaits Redis and
//! room in its own outbox only.

use std::collections::{HashMap, HashSet};
use std::pin::pin;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::ws::{CloseFrame, Message, WebSocket};
use fieldcast_core::{DeviceId, DeviceState};
use futures::stream::SplitStream;
use futures::{SinkExt, StreamExt};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::protocol::{self, Command, Ref, Since, WsError};
use crate::auth::Scope;
use crate::cursor::{Cursor, EventPos, Mismatch, Position, StreamId};
use crate::live::hub::{Activation, ConnId, ConnSignals, Hub, Mode, Selection};
use crate::live::outbox::{Close, Item, Kind, Out, Outbox};
use crate::live::sent::EventKey;
use crate::metrics::{Metrics, Sent};
use crate::store::redis::{LogBounds, Snap, Store, StoreError, REPLAY_BATCH};

/// Per-connection limits, from the configuration.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub queue: usize,
    /// Bytes one connection may have queued (`FIELDCAST_WS_QUEUE_BYTES`).
    pub queue_bytes: usize,
    /// Devices per snapshot frame.
    pub snapshot_frame_devices: usize,
    pub rate_per_sec: u32,
    pub max_subscriptions: usize,
    pub ping_interval: Duration,
    /// `FIELDCAST_WS_WRITE_DELAY`: see [`write_loop`].
    pub write_delay: Duration,
}

/// What a connection needs from the rest of the gateway.
#[derive(Clone)]
pub struct Ctx {
    pub hub: Arc<Hub>,
    pub store: Store,
    /// A subscribe is answered only once the live feed is subscribed.
    pub health: Arc<crate::health::Health>,
    /// Snapshots built at once on this instance: a Redis blip makes every
    /// connection resync at the same moment, and each snapshot of a large
    /// fleet is megabytes while it is being built.
    pub snapshots: Arc<tokio::sync::Semaphore>,
    pub limits: Limits,
    /// The gateway's metrics (the connections gauge, the outbox's counts).
    pub metrics: Arc<Metrics>,
    /// What the writer counts per frame, resolved once per gateway.
    pub sent: Arc<Sent>,
    /// Cancelled on SIGTERM: the writer sends 1001 and the task ends.
    pub shutdown: CancellationToken,
}

const BATCH: usize = 256;
const CLOSE_TIMEOUT: Duration = Duration::from_secs(2);
/// How long the close frame may wait for room in the socket.
const CLOSE_SEND_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a subscribe waits for this instance's live feed (a gateway
/// that just started, or one whose Redis is reconnecting) before it is
/// answered `unavailable`.
const FEED_WAIT: Duration = Duration::from_secs(5);

/// Drives one upgraded socket until either side ends it.
pub async fn run(socket: WebSocket, scope: Scope, ctx: Ctx) {
    ctx.metrics.connections.inc();
    let _gauge = scopeguard({
        let connections = ctx.metrics.connections.clone();
        move || {
            connections.dec();
        }
    });
    let outbox = Arc::new(Outbox::with_byte_cap(
        ctx.limits.queue,
        ctx.limits.queue_bytes,
        ctx.metrics.clone(),
    ));
    let signals = Arc::new(ConnSignals::default());
    let scope = Arc::new(scope);
    let reg = ctx
        .hub
        .register(scope.clone(), outbox.clone(), signals.clone());
    let (sink, mut stream) = socket.split();
    let mut writer = pin!(write_loop(
        sink,
        outbox.clone(),
        ctx.sent.clone(),
        ctx.limits.write_delay,
        ctx.shutdown.clone()
    ));
    let reader = Reader {
        id: reg.id,
        scope,
        outbox: outbox.clone(),
        signals,
        ctx: ctx.clone(),
    };
    let closed_by_us = tokio::select! {
        close = &mut writer => {
            if close == Close::SLOW_CONSUMER {
                tracing::info!(conn = reg.id, "closed a slow consumer (4008)");
            }
            true
        }
        () = reader.run(&mut stream) => {
            // The reader asked for a close (rate limit, token expiry): let
            // the writer deliver it, briefly.
            if outbox.is_closing() {
                let _ = tokio::time::timeout(CLOSE_SEND_TIMEOUT + CLOSE_TIMEOUT, writer).await;
                true
            } else {
                false
            }
        }
    };
    drop(reg);
    if closed_by_us {
        // Dropping a socket whose receive buffer still holds the client's
        // frames makes the kernel answer with a reset, and the client loses
        // our close frame with it (it sees 1006). Read and discard until the
        // client answers the close or goes, briefly.
        let _ = tokio::time::timeout(CLOSE_TIMEOUT, async {
            while let Some(Ok(m)) = stream.next().await {
                if matches!(m, Message::Close(_)) {
                    break;
                }
            }
        })
        .await;
    }
}

/// A snapshot as frames of at most `per_frame` devices, all but the last
/// with `"more":true` (PROTOCOL.md §4), so no single frame (and no single
/// write buffer) grows with the fleet. An empty snapshot is one frame.
fn snapshot_frames(r: &Ref, states: &[DeviceState], per_frame: usize) -> Vec<String> {
    let chunks: Vec<&[DeviceState]> = if states.is_empty() {
        vec![states]
    } else {
        states.chunks(per_frame.max(1)).collect()
    };
    let last = chunks.len() - 1;
    chunks
        .into_iter()
        .enumerate()
        .map(|(i, part)| protocol::snapshot_part(r, part, i != last))
        .collect()
}

/// Runs `f` when dropped.
fn scopeguard(f: impl FnOnce()) -> impl Drop {
    struct Guard<F: FnOnce()>(Option<F>);
    impl<F: FnOnce()> Drop for Guard<F> {
        fn drop(&mut self) {
            if let Some(f) = self.0.take() {
                f();
            }
        }
    }
    Guard(Some(f))
}

/// Sends queued frames, write-combined: every frame available is fed, then
/// one flush. With a `delay`, a frame that finds the connection idle waits
/// that long first, so that what comes meanwhile leaves in the same write;
/// frames that queue while a write is under way go at once with the next
/// (a busy connection is combined already). Returns the close it sent.
/// Generic over the sink (the socket's write half), so tests can drive it
/// with a channel.
async fn write_loop<S>(
    mut sink: S,
    outbox: Arc<Outbox>,
    sent: Arc<Sent>,
    delay: Duration,
    shutdown: CancellationToken,
) -> Close
where
    S: futures::Sink<Message> + Unpin,
{
    // Grows with the batches this connection actually gets: reserving
    // BATCH items up front cost 12 KiB on every idle connection.
    let mut buf: Vec<Item> = Vec::new();
    loop {
        let ready = outbox.ready();
        let close = match outbox.drain(&mut buf, BATCH) {
            Err(close) => close,
            Ok(()) if buf.is_empty() => {
                tokio::select! {
                    () = ready => {}
                    () = shutdown.cancelled() => outbox.close(Close::GOING_AWAY),
                }
                if !delay.is_zero() {
                    tokio::select! {
                        () = tokio::time::sleep(delay) => {}
                        () = outbox.closing_now() => {}
                        () = shutdown.cancelled() => outbox.close(Close::GOING_AWAY),
                    }
                }
                continue;
            }
            Ok(()) => {
                let write = async {
                    let now = fieldcast_core::time::now_ms();
                    for item in buf.drain(..) {
                        let msg = match item.out {
                            Out::Text(t) => {
                                sent.text(item.kind, t.len(), item.rx_ms, now);
                                Message::Text(t)
                            }
                            Out::Ping => Message::Ping(Default::default()),
                        };
                        sink.feed(msg).await?;
                    }
                    sink.flush().await
                };
                tokio::select! {
                    r = write => match r {
                        Ok(()) => continue,
                        Err(_) => return Close::GOING_AWAY,
                    },
                    () = outbox.closing_now() => {}
                    () = shutdown.cancelled() => outbox.close(Close::GOING_AWAY),
                }
                buf.clear();
                continue;
            }
        };
        let frame = CloseFrame {
            code: close.code,
            reason: close.reason.into(),
        };
        // A slow consumer's socket is full: its close frame leaves only
        // once the client reads again, so it gets longer than the others.
        let _ = tokio::time::timeout(CLOSE_SEND_TIMEOUT, async {
            sink.send(Message::Close(Some(frame))).await?;
            sink.close().await
        })
        .await;
        return close;
    }
}

struct Reader {
    id: ConnId,
    scope: Arc<Scope>,
    outbox: Arc<Outbox>,
    signals: Arc<ConnSignals>,
    ctx: Ctx,
}

/// Why a `since` gets `cursor_expired` instead of a replay.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Expired {
    /// Malformed, older than the retained window, or newer than the log.
    Unknown,
    /// Issued in an earlier life of the log: what Redis lost is unknown.
    EarlierLife,
}

impl Expired {
    fn message(self) -> &'static str {
        match self {
            Expired::Unknown => "the cursor is unknown or older than the retained event log; reload history over HTTP",
            Expired::EarlierLife => "the event log was lost and started over since this cursor was issued; reload history over HTTP",
        }
    }
}

/// A subscribe that failed before taking effect.
#[derive(Debug, thiserror::Error)]
enum SubscribeError {
    #[error("{0}")]
    Store(#[from] StoreError),
    #[error("connection closing")]
    Closing,
}

impl Reader {
    async fn run(self, stream: &mut SplitStream<WebSocket>) {
        let limits = self.ctx.limits;
        let mut last_rx = Instant::now();
        let mut window_start = Instant::now();
        let mut window_count: u32 = 0;
        let mut tick = tokio::time::interval(limits.ping_interval / 2);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let expiry = self.scope.expires_at_ms.map(|ms| {
            let left = (ms - fieldcast_core::time::now_ms()).max(0) as u64;
            Instant::now() + Duration::from_millis(left)
        });
        loop {
            let expiry_sleep = async {
                match expiry {
                    Some(at) => tokio::time::sleep_until(at).await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                frame = stream.next() => {
                    let Some(Ok(frame)) = frame else { return };
                    last_rx = Instant::now();
                    if last_rx.duration_since(window_start) >= Duration::from_secs(1) {
                        window_start = last_rx;
                        window_count = 0;
                    }
                    window_count += 1;
                    if window_count > limits.rate_per_sec {
                        tracing::info!(conn = self.id, "closing a client over the frame rate limit (1008)");
                        self.outbox.close(Close::RATE_LIMIT);
                        return;
                    }
                    match frame {
                        Message::Text(t) => self.command(t.as_str()).await,
                        Message::Binary(_) => self.reply(protocol::error(&None, WsError::BadRequest, "frames are JSON text")).await,
                        Message::Close(_) => return,
                        Message::Ping(_) | Message::Pong(_) => {}
                    }
                    if self.outbox.is_closing() {
                        return;
                    }
                }
                _ = tick.tick() => {
                    let idle = last_rx.elapsed();
                    if idle >= limits.ping_interval * 2 {
                        tracing::debug!(conn = self.id, "dropping a dead connection");
                        return;
                    }
                    if idle >= limits.ping_interval {
                        self.outbox.push(Item { out: Out::Ping, kind: Kind::Reply, rx_ms: 0 }, None);
                    }
                }
                () = expiry_sleep => {
                    self.outbox.push(Item::reply(protocol::error(&None, WsError::TokenExpired, "the token has expired")), None);
                    self.outbox.close(Close::TOKEN_EXPIRED);
                    return;
                }
                () = self.signals.resync.notified() => self.resync().await,
            }
        }
    }

    async fn reply(&self, text: String) {
        self.outbox.push_wait(Item::reply(text)).await;
    }

    async fn command(&self, text: &str) {
        match Command::parse(text) {
            Err(bad) => {
                self.reply(protocol::error(&bad.r, WsError::BadRequest, &bad.message))
                    .await
            }
            Ok(Command::Ping { r }) => self.reply(protocol::pong(&r)).await,
            Ok(Command::Unsubscribe { r, selection }) => {
                self.ctx.hub.unsubscribe(self.id, &selection);
                self.reply(protocol::unsubscribed(&r)).await;
            }
            Ok(Command::Subscribe {
                r,
                selection,
                since,
            }) => {
                if let Some(what) = self.forbidden(&selection) {
                    return self
                        .reply(protocol::error(&r, WsError::Forbidden, &what))
                        .await;
                }
                let count = self.ctx.hub.subscription_count(self.id)
                    + selection.devices.len()
                    + selection.channels.len();
                if count > self.ctx.limits.max_subscriptions {
                    let m = format!(
                        "at most {} devices and channels per connection",
                        self.ctx.limits.max_subscriptions
                    );
                    return self
                        .reply(protocol::error(&r, WsError::TooManySubscriptions, &m))
                        .await;
                }
                if !self.ctx.health.feed_up(FEED_WAIT).await {
                    let m = "the live feed is not subscribed yet; subscribe again shortly";
                    return self
                        .reply(protocol::error(&r, WsError::Unavailable, m))
                        .await;
                }
                if let Err(e) = self.subscribe(&r, selection, since, Mode::Subscribe).await {
                    self.ctx.hub.abort(self.id);
                    if let SubscribeError::Store(e) = e {
                        tracing::warn!(conn = self.id, error = %e, "subscribe failed");
                        self.reply(protocol::error(
                            &r,
                            WsError::Unavailable,
                            "live state is unavailable, try again",
                        ))
                        .await;
                    }
                }
            }
        }
    }

    /// The first explicit device or channel outside the token's scope.
    fn forbidden(&self, sel: &Selection) -> Option<String> {
        let members = self.ctx.hub.memberships();
        if let Some(d) = sel
            .devices
            .iter()
            .find(|d| !self.scope.allows_device(d.as_str(), members.of(d.as_str())))
        {
            return Some(format!("device {d} is outside the token's scope"));
        }
        if let Some(c) = sel.channels.iter().find(|c| !self.scope.allows_channel(c)) {
            return Some(format!("channel {c} is not allowed by the token"));
        }
        None
    }

    /// Redis came back or the feed lagged: a fresh snapshot of everything
    /// the connection watches, plus the events it may have missed. When
    /// those cannot be replayed (Redis lost the log meanwhile, or trimmed
    /// past them) the client gets `cursor_expired` without a `ref`, so it
    /// reloads history over HTTP instead of silently missing events.
    async fn resync(&self) {
        let selection = self.ctx.hub.selection(self.id);
        if !selection.has_device_selector() {
            return;
        }
        let since = self
            .ctx
            .hub
            .resume_cursor(self.id)
            .map(|c| Since::Cursor((&c).into()));
        if let Err(e) = self.subscribe(&None, selection, since, Mode::Resync).await {
            self.ctx.hub.abort(self.id);
            tracing::warn!(conn = self.id, error = %e, "resync failed; will retry on the next reconnect");
        }
    }

    /// snapshot -> replay -> subscribed -> live, race-free (see `hub`).
    async fn subscribe(
        &self,
        r: &Ref,
        sel: Selection,
        since: Option<Since>,
        mode: Mode,
    ) -> Result<(), SubscribeError> {
        let hub = &self.ctx.hub;
        let store = &self.ctx.store;
        hub.begin(self.id, sel.clone(), mode);

        let mut act = Activation::default();
        if sel.has_device_selector() {
            let frames = {
                // Held while reading and serialising, never while waiting
                // for the client to take the frames.
                let _turn = self
                    .ctx
                    .snapshots
                    .acquire()
                    .await
                    .map_err(|_| SubscribeError::Closing)?;
                let (states, in_box) = self.snapshot(&sel, &mut act).await?;
                act.in_box = in_box;
                snapshot_frames(r, &states, self.ctx.limits.snapshot_frame_devices)
            };
            for frame in frames {
                if !self.outbox.push_wait(Item::reply(frame)).await {
                    return Err(SubscribeError::Closing);
                }
            }
        }

        let bounds = store.stream_bounds().await?;
        let mut floor = bounds.last_cursor();
        let expired = match since {
            None => None,
            Some(Since::Malformed) => Some(Expired::Unknown),
            // Compared before the ids: ids of another life say nothing.
            Some(Since::Cursor(sent)) => match resume_point(&sent, &bounds) {
                Err(why) => Some(why),
                Ok(start) => match self.replay(start, &sel, &act.in_box).await? {
                    Some(last) => {
                        floor = last;
                        None
                    }
                    None => {
                        // A log started over during the replay: what was
                        // sent is good, the rest is gone.
                        floor = store.stream_bounds().await?.last_cursor();
                        Some(Expired::EarlierLife)
                    }
                },
            },
        };
        if let Some(why) = expired {
            if !self
                .outbox
                .push_wait(Item::reply(protocol::error(
                    r,
                    WsError::CursorExpired,
                    why.message(),
                )))
                .await
            {
                return Err(SubscribeError::Closing);
            }
        }
        if mode == Mode::Subscribe {
            act.before
                .push(Item::reply(protocol::subscribed(r, &floor)));
        }
        act.cursor_floor = Some(floor);
        hub.activate(self.id, act);
        Ok(())
    }

    /// Reads the states the selection matches, scope-filtered; fills the
    /// activation's per-device timestamps.
    async fn snapshot(
        &self,
        sel: &Selection,
        act: &mut Activation,
    ) -> Result<(Vec<DeviceState>, Vec<DeviceId>), StoreError> {
        let store = &self.ctx.store;
        // Read after `begin`: a membership change from here on is buffered
        // and sent after the snapshot.
        let members = self.ctx.hub.memberships();
        let allowed = |d: &str| self.scope.allows_device(d, members.of(d));
        let mut ids: Vec<String> = sel.devices.iter().map(|d| d.to_string()).collect();
        if sel.fleet {
            ids.extend(store.fleet().await?.into_iter().filter(|d| allowed(d)));
        }
        if let Some(b) = &sel.bbox {
            ids.extend(
                store
                    .bbox_candidates(b)
                    .await?
                    .into_iter()
                    .filter(|d| allowed(d)),
            );
        }
        for g in &sel.groups {
            ids.extend(members.members(g).filter(|d| allowed(d)).map(str::to_owned));
        }
        ids.sort();
        ids.dedup();
        let snaps: Vec<Snap> = store.states(&ids).await?;
        let explicit: HashSet<&str> = sel.devices.iter().map(DeviceId::as_str).collect();
        let mut states = Vec::with_capacity(snaps.len());
        let mut in_box = Vec::new();
        let mut ts: HashMap<DeviceId, (Option<i64>, Option<i64>)> =
            HashMap::with_capacity(snaps.len());
        for mut s in snaps {
            s.state.groups = members.names_of(&s.state.device);
            let inside = match (&sel.bbox, s.state.lon, s.state.lat) {
                (Some(b), Some(lon), Some(lat)) => b.contains(lon, lat),
                _ => false,
            };
            // The bridge writes only valid ids; an id that is not one can
            // never come through the live feed (it drops them), so it
            // needs no floor and no viewport entry.
            if let Ok(id) = DeviceId::parse(&s.state.device) {
                ts.insert(id.clone(), (s.state.ts, s.sts));
                if inside {
                    in_box.push(id);
                }
            }
            let device = s.state.device.as_str();
            let in_group = crate::live::groups::overlap(&sel.groups, &s.state.groups);
            let wanted =
                inside || explicit.contains(device) || ((sel.fleet || in_group) && allowed(device));
            if wanted {
                states.push(s.state);
            }
        }
        // Explicit devices without a hot state still get an (empty) entry:
        // the event floor applies to the devices in this map.
        for d in &sel.devices {
            ts.entry(d.clone()).or_insert((None, None));
        }
        act.snapshot_ts = ts;
        Ok((states, in_box))
    }

    /// Sends the retained events after `since` that `sel` and the scope
    /// match: every partition's log read after its position, merged in
    /// stream-id order (a device's events are in one partition, so each
    /// device's stay in their order). Each event goes out with the cursor
    /// right after it. Returns the cursor after everything read, or `None`
    /// if a log left `since`'s life during the replay.
    async fn replay(
        &self,
        since: Cursor,
        sel: &Selection,
        in_box: &[DeviceId],
    ) -> Result<Option<Cursor>, SubscribeError> {
        let in_box: HashSet<&str> = in_box.iter().map(DeviceId::as_str).collect();
        let devices: HashSet<&str> = sel.devices.iter().map(DeviceId::as_str).collect();
        let members = self.ctx.hub.memberships();
        let positions = since.positions().to_vec();
        let batch = (REPLAY_BATCH / positions.len().max(1)).max(16);
        let mut lanes: Vec<Lane> = positions
            .iter()
            .enumerate()
            .map(|(p, &after)| Lane {
                partition: p,
                after,
                read: std::collections::VecDeque::new(),
                done: false,
            })
            .collect();
        let mut cursor = since;
        loop {
            // Refill every lane that ran dry, all at once.
            let dry: Vec<usize> = (0..lanes.len())
                .filter(|&i| !lanes[i].done && lanes[i].read.is_empty())
                .collect();
            let store = &self.ctx.store;
            let reads = futures::future::try_join_all(
                dry.iter()
                    .map(|&i| store.events_after(lanes[i].partition, lanes[i].after, batch)),
            )
            .await?;
            for (i, read) in dry.into_iter().zip(reads) {
                let Some(read) = read else {
                    return Ok(None);
                };
                let lane = &mut lanes[i];
                match read.last() {
                    Some(&(last, _, _)) => lane.after = Position::new(lane.after.epoch, last),
                    None => lane.done = true,
                }
                lane.read.extend(read);
            }
            // The lanes not done now all hold entries: take in id order
            // until one runs dry again.
            loop {
                let next = lanes
                    .iter_mut()
                    .filter(|l| !l.done)
                    .min_by_key(|l| l.read.front().map(|(id, _, _)| (*id, l.partition)));
                let Some(lane) = next else {
                    return Ok(Some(cursor));
                };
                let Some((id, device, json)) = lane.read.pop_front() else {
                    break;
                };
                cursor.advanced_by(&EventPos {
                    partition: lane.partition,
                    at: Position::new(lane.after.epoch, id),
                });
                let groups = members.of(&device);
                let matches = devices.contains(device.as_str())
                    || (self.scope.allows_device(&device, groups)
                        && (sel.fleet
                            || in_box.contains(device.as_str())
                            || crate::live::groups::overlap(&sel.groups, groups)));
                if matches && self.first_send(&device, &json) {
                    let frame = fieldcast_core::live::with_cursor(&json, &cursor.encode());
                    let item = Item {
                        out: Out::Text(frame.into()),
                        kind: Kind::Event,
                        rx_ms: 0,
                    };
                    if !self.outbox.push_wait(item).await {
                        return Err(SubscribeError::Closing);
                    }
                }
            }
        }
    }

    /// Whether the logged event (`device`, its JSON) is one this
    /// connection was not sent yet, recording it (see [`crate::live::sent`]).
    /// An entry whose id does not read is sent: it cannot be matched.
    fn first_send(&self, device: &str, json: &str) -> bool {
        #[derive(serde::Deserialize)]
        struct Id<'a> {
            #[serde(borrow)]
            id: std::borrow::Cow<'a, str>,
        }
        match serde_json::from_str::<Id>(json) {
            Ok(e) => self
                .ctx
                .hub
                .first_send(self.id, EventKey::of(device, &e.id)),
            Err(_) => true,
        }
    }
}

/// One partition's part of a replay: entries read and not yet sent.
struct Lane {
    partition: usize,
    /// Position of the last entry read.
    after: Position,
    read: std::collections::VecDeque<(StreamId, String, String)>,
    /// Read to the end of the log.
    done: bool,
}

/// Where a replay of `sent` starts, if it can: issued in the logs' current
/// lives, and still in every partition's retained window.
fn resume_point(sent: &crate::cursor::SentCursor, bounds: &LogBounds) -> Result<Cursor, Expired> {
    let start = sent.resolve(&bounds.epochs()).map_err(|m| match m {
        Mismatch::Epochs => Expired::EarlierLife,
        Mismatch::Partitions => Expired::Unknown,
    })?;
    if bounds.retains(&start) {
        Ok(start)
    } else {
        Err(Expired::Unknown)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn state(i: usize) -> DeviceState {
        DeviceState {
            device: format!("d{i}"),
            ..DeviceState::default()
        }
    }

    /// Pins the close-frame wait: once the connection must close, a writer
    /// stuck on a socket that takes nothing more abandons the write, offers
    /// the close frame for [`CLOSE_SEND_TIMEOUT`] and not longer, and
    /// reports the close.
    #[tokio::test(start_paused = true)]
    async fn a_close_frame_waits_for_a_full_socket_at_most_its_timeout() {
        // Room for one frame, and nobody reads: a full socket.
        let (socket, _client) = futures::channel::mpsc::channel::<Message>(0);
        let metrics = Arc::new(Metrics::new());
        let outbox = Arc::new(Outbox::new(16, metrics.clone()));
        let writer = tokio::spawn(write_loop(
            socket,
            outbox.clone(),
            Arc::new(metrics.sent()),
            Duration::ZERO,
            CancellationToken::new(),
        ));
        outbox.push(Item::reply("a".to_owned()), None);
        outbox.push(Item::reply("b".to_owned()), None);
        // The writer sends "a", then waits for room for "b".
        tokio::task::yield_now().await;
        assert!(!writer.is_finished());
        outbox.close(Close::SLOW_CONSUMER);
        // It gives up on "b" and starts on the close frame.
        tokio::task::yield_now().await;
        tokio::time::advance(CLOSE_SEND_TIMEOUT - Duration::from_millis(1)).await;
        tokio::task::yield_now().await;
        assert!(!writer.is_finished(), "gave up before the close-frame wait");
        tokio::time::advance(Duration::from_millis(1)).await;
        tokio::task::yield_now().await;
        assert!(
            writer.is_finished(),
            "still waiting past the close-frame wait"
        );
        assert_eq!(writer.await.unwrap(), Close::SLOW_CONSUMER);
    }

    /// A sink that records what each flush wrote.
    #[derive(Clone, Default)]
    struct Writes(Arc<std::sync::Mutex<Written>>);

    /// Frames fed since the last flush, then those of each flush.
    type Written = (Vec<String>, Vec<Vec<String>>);

    impl futures::Sink<Message> for Writes {
        type Error = axum::Error;
        fn poll_ready(
            self: std::pin::Pin<&mut Self>,
            _: &mut std::task::Context<'_>,
        ) -> std::task::Poll<Result<(), Self::Error>> {
            std::task::Poll::Ready(Ok(()))
        }
        fn start_send(self: std::pin::Pin<&mut Self>, m: Message) -> Result<(), Self::Error> {
            if let Message::Text(t) = m {
                self.0.lock().unwrap().0.push(t.as_str().to_owned());
            }
            Ok(())
        }
        fn poll_flush(
            self: std::pin::Pin<&mut Self>,
            _: &mut std::task::Context<'_>,
        ) -> std::task::Poll<Result<(), Self::Error>> {
            let mut w = self.0.lock().unwrap();
            let pending = std::mem::take(&mut w.0);
            if !pending.is_empty() {
                w.1.push(pending);
            }
            std::task::Poll::Ready(Ok(()))
        }
        fn poll_close(
            self: std::pin::Pin<&mut Self>,
            cx: &mut std::task::Context<'_>,
        ) -> std::task::Poll<Result<(), Self::Error>> {
            self.poll_flush(cx)
        }
    }

    /// Pins `FIELDCAST_WS_WRITE_DELAY`: without it each frame that finds
    /// the connection idle is its own write; with it, what comes within the
    /// delay leaves in one write, and not before the delay.
    #[tokio::test(start_paused = true)]
    async fn a_write_delay_combines_the_frames_that_come_within_it() {
        for (delay, expected) in [
            (Duration::ZERO, vec![vec!["a"], vec!["b"], vec!["c"]]),
            (Duration::from_millis(5), vec![vec!["a", "b"], vec!["c"]]),
        ] {
            let metrics = Arc::new(Metrics::new());
            let outbox = Arc::new(Outbox::new(16, metrics.clone()));
            let writes = Writes::default();
            let shutdown = CancellationToken::new();
            let writer = tokio::spawn(write_loop(
                writes.clone(),
                outbox.clone(),
                Arc::new(metrics.sent()),
                delay,
                shutdown.clone(),
            ));
            let step = |ms| async move {
                tokio::time::sleep(Duration::from_millis(ms)).await;
                for _ in 0..10 {
                    tokio::task::yield_now().await;
                }
            };
            step(1).await;
            outbox.push(Item::reply("a".to_owned()), None);
            step(1).await;
            outbox.push(Item::reply("b".to_owned()), None);
            step(1).await;
            if !delay.is_zero() {
                assert!(
                    writes.0.lock().unwrap().1.is_empty(),
                    "written before the delay"
                );
            }
            step(10).await;
            outbox.push(Item::reply("c".to_owned()), None);
            step(10).await;
            assert_eq!(writes.0.lock().unwrap().1, expected, "delay {delay:?}");
            shutdown.cancel();
            writer.await.unwrap();
        }
    }

    #[test]
    fn large_snapshots_come_in_parts_marked_more() {
        let states: Vec<DeviceState> = (0..5).map(state).collect();
        let r: Ref = Some(serde_json::value::RawValue::from_string("\"7\"".into()).unwrap());
        let frames = snapshot_frames(&r, &states, 2);
        let parsed: Vec<serde_json::Value> = frames
            .iter()
            .map(|f| serde_json::from_str(f).unwrap())
            .collect();
        assert_eq!(parsed.len(), 3);
        for (i, v) in parsed.iter().enumerate() {
            assert_eq!(v["type"], "snapshot");
            assert_eq!(v["ref"], "7");
            assert_eq!(v.get("more").is_some(), i < 2, "{v}");
        }
        let devices: Vec<&str> = parsed
            .iter()
            .flat_map(|v| v["devices"].as_array().unwrap().iter())
            .map(|d| d["device"].as_str().unwrap())
            .collect();
        assert_eq!(devices, ["d0", "d1", "d2", "d3", "d4"]);
        let empty = snapshot_frames(&None, &[], 2);
        assert_eq!(empty.len(), 1);
        let v: serde_json::Value = serde_json::from_str(&empty[0]).unwrap();
        assert!(v.get("more").is_none() && v["devices"].as_array().unwrap().is_empty());
    }
}
