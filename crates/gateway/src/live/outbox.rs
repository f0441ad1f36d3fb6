//! One connection's bounded send queue, filled by the hub (never blocking
//! it) and drained by the connection's writer.
//!
//! Policy (PROTOCOL.md §4, "slow consumers"): below `cap` entries every
//! message is queued. At `cap`, a location for a device that already has
//! one queued replaces it in place (latest wins, counted). Events, statuses,
//! channel messages and replies are never dropped: when `cap` of them are
//! waiting, or the queue reaches twice `cap` in all, the connection is
//! marked for closing with 4008 `slow_consumer` and its writer stops
//! sending. The same policy holds in bytes: once half of `byte_cap` is
//! queued, locations coalesce; a frame that would take the queue past
//! `byte_cap` closes it. Memory per connection is therefore bounded by
//! `2 * cap` frames and by `byte_cap` bytes (plus one frame: a frame larger
//! than the budget still goes to an empty queue).
//!
//! Replies (snapshots, replayed events, pongs) wait for room instead
//! ([`Outbox::push_wait`]), which holds back the connection's reader; a
//! client that leaves them unread for [`REPLY_WAIT`] is closed with 4008
//! too, so one that subscribes again and again without reading is closed,
//! not fed.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use axum::extract::ws::Utf8Bytes;
use fieldcast_core::DeviceId;
use tokio::sync::Notify;

pub use crate::live::kind::Kind;
use crate::metrics::Metrics;

/// What the writer puts on the socket.
#[derive(Debug, Clone)]
pub enum Out {
    /// A text frame, shared by every receiver of the same update.
    Text(Utf8Bytes),
    /// A WebSocket ping (idle check).
    Ping,
}

/// One queued frame.
#[derive(Debug, Clone)]
pub struct Item {
    pub out: Out,
    pub kind: Kind,
    /// Bridge receive time of a live update (epoch ms) for the latency
    /// histogram; 0 for anything else.
    pub rx_ms: i64,
}

/// How long a reply waits for room before the connection is closed as a
/// slow consumer.
pub const REPLY_WAIT: Duration = Duration::from_secs(5);

/// Bytes the writer takes from the queue at a time (one flush).
pub const DRAIN_BYTES: usize = 64 * 1024;

/// Default per-connection byte budget (`FIELDCAST_WS_QUEUE_BYTES`).
pub const DEFAULT_BYTE_CAP: usize = 16 << 20;

impl Item {
    /// Bytes this frame holds while queued.
    fn bytes(&self) -> usize {
        match &self.out {
            Out::Text(t) => t.len(),
            Out::Ping => 0,
        }
    }

    pub fn reply(text: impl Into<Utf8Bytes>) -> Self {
        Item {
            out: Out::Text(text.into()),
            kind: Kind::Reply,
            rx_ms: 0,
        }
    }
}

/// Why and how a connection is to be closed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Close {
    pub code: u16,
    pub reason: &'static str,
    /// Send what is already queued before the close frame.
    pub flush_first: bool,
}

impl Close {
    pub const SLOW_CONSUMER: Close = Close {
        code: 4008,
        reason: "slow_consumer",
        flush_first: false,
    };
    pub const GOING_AWAY: Close = Close {
        code: 1001,
        reason: "server shutting down",
        flush_first: false,
    };
    pub const RATE_LIMIT: Close = Close {
        code: 1008,
        reason: "too many frames",
        flush_first: false,
    };
    pub const TOKEN_EXPIRED: Close = Close {
        code: 4001,
        reason: "token_expired",
        flush_first: true,
    };
}

/// The result of offering a frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Push {
    Queued,
    /// Replaced the device's queued location.
    Coalesced,
    /// Did not fit: the connection is now closing with 4008.
    Overflow,
    /// The connection is already closing; the frame was dropped.
    Closed,
}

struct Slot {
    item: Item,
    /// The device of a queued location (for coalescing).
    device: Option<DeviceId>,
}

struct Inner {
    queue: VecDeque<Slot>,
    /// Sequence number of `queue[0]`.
    head: u64,
    /// Device -> sequence number of its newest queued location, kept only
    /// while `indexed`: built when the queue first needs to coalesce and
    /// dropped once it is empty again, so a connection that keeps up pays
    /// no map update per frame.
    latest_location: HashMap<DeviceId, u64, foldhash::fast::RandomState>,
    indexed: bool,
    /// Queued frames that may never be dropped.
    strict: usize,
    /// Bytes of every queued frame.
    bytes: usize,
    closing: Option<Close>,
}

impl Inner {
    /// Indexes the queued locations by device (the newest of each wins).
    fn index_locations(&mut self) {
        let head = self.head;
        let Inner {
            queue,
            latest_location,
            ..
        } = self;
        latest_location.clear();
        for (i, slot) in queue.iter().enumerate() {
            if let Some(dev) = &slot.device {
                latest_location.insert(dev.clone(), head + i as u64);
            }
        }
        self.indexed = true;
    }
}

/// One connection's queue of frames, bounded in frames and bytes (module
/// doc): the hub pushes without waiting (under pressure a location replaces
/// the same device's queued one; past the bounds the connection is marked
/// for a 4008 close), replies wait for room at most [`REPLY_WAIT`], and the
/// connection's writer drains it.
pub struct Outbox {
    cap: usize,
    byte_cap: usize,
    reply_wait: Duration,
    /// Counts coalesced locations and replies that waited too long.
    metrics: Arc<Metrics>,
    inner: Mutex<Inner>,
    /// Wakes the writer: something was queued, or the connection must close.
    ready: Notify,
    /// Wakes a producer waiting in [`Outbox::push_wait`] for room.
    room: Notify,
    /// Wakes every waiter in [`Outbox::closing`] once the connection must close.
    closed: Notify,
}

impl Outbox {
    pub fn new(cap: usize, metrics: Arc<Metrics>) -> Self {
        Self::with_byte_cap(cap, DEFAULT_BYTE_CAP, metrics)
    }

    /// An outbox bounded by `cap` frames and `byte_cap` bytes.
    pub fn with_byte_cap(cap: usize, byte_cap: usize, metrics: Arc<Metrics>) -> Self {
        Outbox {
            cap: cap.max(1),
            byte_cap: byte_cap.max(1),
            reply_wait: REPLY_WAIT,
            metrics,
            inner: Mutex::new(Inner {
                queue: VecDeque::new(),
                head: 0,
                latest_location: HashMap::default(),
                indexed: false,
                strict: 0,
                bytes: 0,
                closing: None,
            }),
            ready: Notify::new(),
            room: Notify::new(),
            closed: Notify::new(),
        }
    }

    /// How long [`Outbox::push_wait`] waits for room (tests shorten it).
    pub fn with_reply_wait(mut self, wait: Duration) -> Self {
        self.reply_wait = wait;
        self
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // The lock guards plain data and no code panics while holding it; a
        // poisoned lock still holds a consistent queue, so keep using it.
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Offers a frame without waiting (the hub's path). `device` is the
    /// device of a location, which makes it coalescible.
    pub fn push(&self, item: Item, device: Option<&DeviceId>) -> Push {
        let mut g = self.lock();
        if g.closing.is_some() {
            return Push::Closed;
        }
        let len = g.queue.len();
        let size = item.bytes();
        let full = len >= self.cap || g.bytes >= self.byte_cap / 2;
        if let Some(dev) = device.filter(|_| full) {
            if !g.indexed {
                g.index_locations();
            }
            if let Some(&seq) = g.latest_location.get(dev) {
                let idx = (seq - g.head) as usize;
                if let Some(slot) = g.queue.get_mut(idx) {
                    let old = slot.item.bytes();
                    slot.item = item;
                    g.bytes = g.bytes - old + size;
                    self.metrics.coalesced.inc();
                    return Push::Coalesced;
                }
            }
        }
        let over_bytes = len > 0 && g.bytes + size > self.byte_cap;
        if (device.is_none() && g.strict >= self.cap) || len >= 2 * self.cap || over_bytes {
            g.closing = Some(Close::SLOW_CONSUMER);
            drop(g);
            self.ready.notify_one();
            self.closed.notify_waiters();
            self.room.notify_one();
            return Push::Overflow;
        }
        let seq = g.head + len as u64;
        match device {
            Some(dev) if g.indexed => {
                g.latest_location.insert(dev.clone(), seq);
            }
            Some(_) => {}
            None => g.strict += 1,
        }
        g.bytes += size;
        g.queue.push_back(Slot {
            item,
            device: device.cloned(),
        });
        drop(g);
        self.ready.notify_one();
        Push::Queued
    }

    /// Queues a frame that must not be dropped (snapshot, replayed events,
    /// replies), waiting while the queue is full, in frames or in bytes.
    /// Returns `false` if the connection is closing — also when the client
    /// left the queue full for [`REPLY_WAIT`], which closes it with 4008.
    pub async fn push_wait(&self, item: Item) -> bool {
        let size = item.bytes();
        let mut item = Some(item);
        let deadline = tokio::time::Instant::now() + self.reply_wait;
        loop {
            let room = self.room.notified();
            {
                let g = self.lock();
                if g.closing.is_some() {
                    return false;
                }
                let fits = g.queue.is_empty()
                    || (g.queue.len() < self.cap && g.bytes + size <= self.byte_cap / 2);
                if fits {
                    drop(g);
                    if let Some(item) = item.take() {
                        return self.push(item, None) == Push::Queued;
                    }
                    return false;
                }
            }
            tokio::select! {
                () = room => {}
                () = tokio::time::sleep_until(deadline) => {
                    self.metrics.reply_wait_closed.inc();
                    self.close(Close::SLOW_CONSUMER);
                    return false;
                }
            }
        }
    }

    /// Asks the writer to close the connection (the first reason wins).
    pub fn close(&self, close: Close) {
        let mut g = self.lock();
        if g.closing.is_none() {
            g.closing = Some(close);
        }
        drop(g);
        self.ready.notify_one();
        self.closed.notify_waiters();
        self.room.notify_one();
    }

    /// Resolves once the connection must close without sending what is
    /// queued (slow consumer, shutdown, rate limit): the writer abandons a
    /// write that may never finish. A close that flushes first does not
    /// interrupt the write.
    pub async fn closing_now(&self) {
        loop {
            // Created before the check: `notify_waiters` reaches a
            // `Notified` from its creation on, so no close is missed.
            let closed = self.closed.notified();
            if self.lock().closing.is_some_and(|c| !c.flush_first) {
                return;
            }
            closed.await;
        }
    }

    pub fn is_closing(&self) -> bool {
        self.lock().closing.is_some()
    }

    /// Moves up to `max` frames, and about [`DRAIN_BYTES`] (at least one
    /// frame), into `buf`. `Err(close)` when the writer must close now
    /// (queued frames are first drained if the close asks for it). The byte
    /// bound keeps the budget honest: what the writer holds while the
    /// socket is full is out of the queue but still this connection's.
    pub fn drain(&self, buf: &mut Vec<Item>, max: usize) -> Result<(), Close> {
        let mut g = self.lock();
        if let Some(close) = g.closing {
            if !close.flush_first || g.queue.is_empty() {
                return Err(close);
            }
        }
        let mut taken = 0;
        for _ in 0..max {
            if taken >= DRAIN_BYTES {
                break;
            }
            let Some(slot) = g.queue.pop_front() else {
                break;
            };
            taken += slot.item.bytes();
            let seq = g.head;
            g.head += 1;
            match slot.device {
                Some(dev) => {
                    if g.indexed && g.latest_location.get(&dev) == Some(&seq) {
                        g.latest_location.remove(&dev);
                    }
                }
                None => g.strict -= 1,
            }
            g.bytes -= slot.item.bytes();
            buf.push(slot.item);
        }
        // A burst may have grown the queue to 2 * cap slots; give the
        // memory back once it is drained, so idle connections stay small.
        if g.queue.is_empty() {
            g.indexed = false;
            g.latest_location.clear();
            if g.queue.capacity() > 64 {
                g.queue.shrink_to(16);
                g.latest_location.shrink_to(16);
            }
        }
        drop(g);
        self.room.notify_one();
        Ok(())
    }

    /// Waits until [`Outbox::drain`] has something to do.
    pub async fn ready(&self) {
        self.ready.notified().await;
    }

    pub fn len(&self) -> usize {
        self.lock().queue.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Bytes queued.
    pub fn bytes(&self) -> usize {
        self.lock().bytes
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(s: &str) -> DeviceId {
        DeviceId::parse(s).unwrap()
    }

    fn text(s: &str, kind: Kind) -> Item {
        Item {
            out: Out::Text(s.to_owned().into()),
            kind,
            rx_ms: 0,
        }
    }

    fn drained(o: &Outbox) -> Vec<String> {
        let mut buf = Vec::new();
        let _ = o.drain(&mut buf, usize::MAX);
        buf.into_iter()
            .map(|i| match i.out {
                Out::Text(t) => t.as_str().to_owned(),
                Out::Ping => "ping".into(),
            })
            .collect()
    }

    #[test]
    fn locations_coalesce_only_when_full() {
        let o = Outbox::new(2, Arc::default());
        let a = id("a");
        assert_eq!(o.push(text("a1", Kind::Location), Some(&a)), Push::Queued);
        assert_eq!(o.push(text("a2", Kind::Location), Some(&a)), Push::Queued);
        assert_eq!(
            o.push(text("a3", Kind::Location), Some(&a)),
            Push::Coalesced
        );
        assert_eq!(drained(&o), ["a1", "a3"]);
        // The coalescing index follows the queue as it drains.
        assert_eq!(o.push(text("a4", Kind::Location), Some(&a)), Push::Queued);
        assert_eq!(o.push(text("a5", Kind::Location), Some(&a)), Push::Queued);
        assert_eq!(
            o.push(text("a6", Kind::Location), Some(&a)),
            Push::Coalesced
        );
        assert_eq!(drained(&o), ["a4", "a6"]);
    }

    /// The index is built only once the queue is full; built, it must
    /// follow a partial drain and the pushes after it.
    #[test]
    fn the_index_built_when_full_follows_a_partial_drain() {
        let o = Outbox::new(2, Arc::default());
        let (a, b) = (id("a"), id("b"));
        assert_eq!(o.push(text("a1", Kind::Location), Some(&a)), Push::Queued);
        assert_eq!(o.push(text("b1", Kind::Location), Some(&b)), Push::Queued);
        assert_eq!(
            o.push(text("a2", Kind::Location), Some(&a)),
            Push::Coalesced
        );
        let mut buf = Vec::new();
        assert!(o.drain(&mut buf, 1).is_ok());
        assert!(matches!(&buf[0].out, Out::Text(t) if t.as_str() == "a2"));
        assert_eq!(o.push(text("a3", Kind::Location), Some(&a)), Push::Queued);
        assert_eq!(
            o.push(text("b2", Kind::Location), Some(&b)),
            Push::Coalesced
        );
        assert_eq!(
            o.push(text("a4", Kind::Location), Some(&a)),
            Push::Coalesced
        );
        assert_eq!(drained(&o), ["b2", "a4"]);
    }

    #[test]
    fn events_never_drop_they_close() {
        let o = Outbox::new(2, Arc::default());
        assert_eq!(o.push(text("e1", Kind::Event), None), Push::Queued);
        assert_eq!(o.push(text("e2", Kind::Event), None), Push::Queued);
        assert_eq!(o.push(text("e3", Kind::Event), None), Push::Overflow);
        assert_eq!(o.push(text("e4", Kind::Event), None), Push::Closed);
        let mut buf = Vec::new();
        assert_eq!(o.drain(&mut buf, 10), Err(Close::SLOW_CONSUMER));
    }

    #[test]
    fn many_devices_are_bounded_too() {
        let o = Outbox::new(2, Arc::default());
        let ids: Vec<DeviceId> = (0..5).map(|i| id(&format!("d{i}"))).collect();
        let results: Vec<Push> = ids
            .iter()
            .map(|d| o.push(text("x", Kind::Location), Some(d)))
            .collect();
        assert_eq!(results[..4], [Push::Queued; 4]);
        assert_eq!(results[4], Push::Overflow);
    }

    #[test]
    fn bytes_bound_the_queue_like_frames_do() {
        let o = Outbox::with_byte_cap(1000, 100, Arc::default());
        let a = id("a");
        let b = id("b");
        let x40 = "x".repeat(40);
        assert_eq!(o.push(text(&x40, Kind::Location), Some(&a)), Push::Queued);
        assert_eq!(o.push(text(&x40, Kind::Location), Some(&b)), Push::Queued);
        // Half the budget is queued: a location coalesces.
        assert_eq!(
            o.push(text("a2", Kind::Location), Some(&a)),
            Push::Coalesced
        );
        assert_eq!(o.bytes(), 42);
        // An event past the budget closes.
        assert_eq!(
            o.push(text(&"e".repeat(60), Kind::Event), None),
            Push::Overflow
        );
        let mut buf = Vec::new();
        assert_eq!(o.drain(&mut buf, 10), Err(Close::SLOW_CONSUMER));
        // A frame larger than the whole budget still goes to an empty queue.
        let o = Outbox::with_byte_cap(10, 100, Arc::default());
        assert_eq!(
            o.push(text(&"s".repeat(500), Kind::Reply), None),
            Push::Queued
        );
        assert_eq!(drained(&o).len(), 1);
        assert_eq!(o.bytes(), 0);
    }

    // Paused clock: the runtime jumps to the next timer once every task
    // waits, so the reply wait passes at once and nothing sleeps for real.
    #[tokio::test(start_paused = true)]
    async fn a_reply_left_unread_closes_the_connection() {
        let o = Outbox::with_byte_cap(1000, 100, Arc::default())
            .with_reply_wait(Duration::from_millis(50));
        assert!(o.push_wait(text(&"s".repeat(80), Kind::Reply)).await);
        // Over half the budget is waiting: the next reply waits, then
        // closes, since nobody drains.
        assert!(!o.push_wait(text(&"s".repeat(80), Kind::Reply)).await);
        let mut buf = Vec::new();
        assert_eq!(o.drain(&mut buf, 10), Err(Close::SLOW_CONSUMER));
    }

    #[tokio::test(start_paused = true)]
    async fn a_reply_goes_in_once_the_client_reads() {
        let o = Arc::new(Outbox::with_byte_cap(1000, 100, Arc::default()));
        assert!(o.push_wait(text(&"s".repeat(80), Kind::Reply)).await);
        let reader = {
            let o = o.clone();
            tokio::spawn(async move {
                tokio::time::sleep(Duration::from_millis(100)).await;
                drained(&o)
            })
        };
        assert!(o.push_wait(text("pong", Kind::Reply)).await);
        assert_eq!(reader.await.unwrap().len(), 1);
        assert_eq!(drained(&o), ["pong"]);
    }

    /// Pins the reply wait as one deadline from the reply's first try:
    /// room that frees up but not enough does not restart it, the reply
    /// is refused no sooner than [`REPLY_WAIT`] and not later, and the
    /// connection closes with 4008, counted.
    #[tokio::test(start_paused = true)]
    async fn the_reply_wait_is_one_deadline_from_the_first_try() {
        let metrics = Arc::new(Metrics::new());
        let o = Arc::new(Outbox::with_byte_cap(1000, 100, metrics.clone()));
        for _ in 0..2 {
            assert_eq!(
                o.push(text(&"q".repeat(40), Kind::Reply), None),
                Push::Queued
            );
        }
        let waiting = tokio::spawn({
            let o = o.clone();
            async move { o.push_wait(text(&"r".repeat(30), Kind::Reply)).await }
        });
        // The reply takes its first look (80 of 100 bytes queued: no
        // room) and starts waiting.
        tokio::task::yield_now().await;
        assert!(!waiting.is_finished());

        // The client reads one frame: room is signalled, 40 + 30 bytes
        // still pass half the budget, so the reply waits on.
        tokio::time::advance(REPLY_WAIT / 2).await;
        let mut buf = Vec::new();
        assert_eq!(o.drain(&mut buf, 1), Ok(()));
        tokio::task::yield_now().await;
        assert!(!waiting.is_finished());

        tokio::time::advance(REPLY_WAIT / 2 - Duration::from_millis(1)).await;
        tokio::task::yield_now().await;
        assert!(!waiting.is_finished(), "refused before the reply wait");
        assert!(!o.is_closing());
        assert_eq!(metrics.reply_wait_closed.get(), 0);

        tokio::time::advance(Duration::from_millis(1)).await;
        tokio::task::yield_now().await;
        assert!(waiting.is_finished(), "still waiting past the reply wait");
        assert!(!waiting.await.unwrap(), "queued past the reply wait");
        assert!(o.is_closing());
        assert_eq!(metrics.reply_wait_closed.get(), 1);
        assert_eq!(o.drain(&mut buf, 10), Err(Close::SLOW_CONSUMER));
    }

    /// Pins the counter of coalesced locations.
    #[test]
    fn coalescing_is_counted() {
        let metrics = Arc::new(Metrics::new());
        let o = Outbox::new(1, metrics.clone());
        let a = id("a");
        assert_eq!(o.push(text("a1", Kind::Location), Some(&a)), Push::Queued);
        assert_eq!(
            o.push(text("a2", Kind::Location), Some(&a)),
            Push::Coalesced
        );
        assert_eq!(metrics.coalesced.get(), 1);
    }

    #[test]
    fn token_expiry_flushes_first() {
        let o = Outbox::new(4, Arc::default());
        o.push(text("err", Kind::Reply), None);
        o.close(Close::TOKEN_EXPIRED);
        let mut buf = Vec::new();
        assert_eq!(o.drain(&mut buf, 10), Ok(()));
        assert_eq!(buf.len(), 1);
        assert_eq!(o.drain(&mut buf, 10), Err(Close::TOKEN_EXPIRED));
    }
}
