//! One connection's bounded send queue, filled by the hub (never blocking
//! it) and drained by the connection's writer.
//!
//! Policy (PROTOCOL.md §4, "slow consumers"): below `cap` entries every
//! message is queued. At `cap`, a location for a device that already has
//! one queued replaces it in place (latest wins, counted). Events, statuses,
//! channel messages and replies are never dropped: when `cap` of them are
//! waiting, or the queue reaches twice `cap` in all, the connection is
//! marked for closing with 4008 `slow_consumer` and its writer stops
//! sending. Memory per connection is therefore bounded by `2 * cap` frames.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard};

use axum::extract::ws::Utf8Bytes;
use tokio::sync::Notify;

/// What the writer puts on the socket.
#[derive(Debug, Clone)]
pub enum Out {
    /// A text frame, shared by every receiver of the same update.
    Text(Utf8Bytes),
    /// A WebSocket ping (idle check).
    Ping,
}

/// What kind of message a frame is, for metrics and for the coalescing rule.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Location,
    Status,
    Event,
    Message,
    /// snapshot, subscribed, unsubscribed, pong, error, pings.
    Reply,
}

impl Kind {
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Location => "location",
            Kind::Status => "status",
            Kind::Event => "event",
            Kind::Message => "message",
            Kind::Reply => "reply",
        }
    }
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

impl Item {
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
    device: Option<Arc<str>>,
}

struct Inner {
    queue: VecDeque<Slot>,
    /// Sequence number of `queue[0]`.
    head: u64,
    /// Device -> sequence number of its newest queued location.
    latest_location: HashMap<Arc<str>, u64>,
    /// Queued frames that may never be dropped.
    strict: usize,
    closing: Option<Close>,
}

/// See the module docs.
pub struct Outbox {
    cap: usize,
    inner: Mutex<Inner>,
    /// Wakes the writer: something was queued, or the connection must close.
    ready: Notify,
    /// Wakes a producer waiting in [`Outbox::push_wait`] for room.
    room: Notify,
    /// Wakes every waiter in [`Outbox::closing`] once the connection must close.
    closed: Notify,
}

impl Outbox {
    pub fn new(cap: usize) -> Self {
        Outbox {
            cap: cap.max(1),
            inner: Mutex::new(Inner {
                queue: VecDeque::new(),
                head: 0,
                latest_location: HashMap::new(),
                strict: 0,
                closing: None,
            }),
            ready: Notify::new(),
            room: Notify::new(),
            closed: Notify::new(),
        }
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // The lock guards plain data and no code panics while holding it; a
        // poisoned lock still holds a consistent queue, so keep using it.
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Offers a frame without waiting (the hub's path). `device` is the
    /// device of a location, which makes it coalescible.
    pub fn push(&self, item: Item, device: Option<&Arc<str>>) -> Push {
        let mut g = self.lock();
        if g.closing.is_some() {
            return Push::Closed;
        }
        let len = g.queue.len();
        if let Some(dev) = device.filter(|_| len >= self.cap) {
            if let Some(&seq) = g.latest_location.get(dev) {
                let idx = (seq - g.head) as usize;
                if let Some(slot) = g.queue.get_mut(idx) {
                    slot.item = item;
                    metrics::counter!("fieldcast_gateway_coalesced_total").increment(1);
                    return Push::Coalesced;
                }
            }
        }
        if (device.is_none() && g.strict >= self.cap) || len >= 2 * self.cap {
            g.closing = Some(Close::SLOW_CONSUMER);
            drop(g);
            self.ready.notify_one();
            self.closed.notify_waiters();
            self.room.notify_one();
            return Push::Overflow;
        }
        let seq = g.head + len as u64;
        match device {
            Some(dev) => {
                g.latest_location.insert(dev.clone(), seq);
            }
            None => g.strict += 1,
        }
        g.queue.push_back(Slot {
            item,
            device: device.cloned(),
        });
        drop(g);
        self.ready.notify_one();
        Push::Queued
    }

    /// Queues a frame that must not be dropped (snapshot, replayed events),
    /// waiting while the queue is full. Returns `false` if the connection is
    /// closing.
    pub async fn push_wait(&self, item: Item) -> bool {
        let mut item = Some(item);
        loop {
            let room = self.room.notified();
            {
                let g = self.lock();
                if g.closing.is_some() {
                    return false;
                }
                if g.queue.len() < self.cap {
                    drop(g);
                    if let Some(item) = item.take() {
                        return self.push(item, None) == Push::Queued;
                    }
                    return false;
                }
            }
            room.await;
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

    /// Moves up to `max` frames into `buf`. `Err(close)` when the writer
    /// must close now (queued frames are first drained if the close asks
    /// for it).
    pub fn drain(&self, buf: &mut Vec<Item>, max: usize) -> Result<(), Close> {
        let mut g = self.lock();
        if let Some(close) = g.closing {
            if !close.flush_first || g.queue.is_empty() {
                return Err(close);
            }
        }
        for _ in 0..max {
            let Some(slot) = g.queue.pop_front() else {
                break;
            };
            let seq = g.head;
            g.head += 1;
            match slot.device {
                Some(dev) => {
                    if g.latest_location.get(&dev) == Some(&seq) {
                        g.latest_location.remove(&dev);
                    }
                }
                None => g.strict -= 1,
            }
            buf.push(slot.item);
        }
        // A burst may have grown the queue to 2 * cap slots; give the
        // memory back once it is drained, so idle connections stay small.
        if g.queue.is_empty() && g.queue.capacity() > 64 {
            g.queue.shrink_to(16);
            g.latest_location.shrink_to(16);
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
}

#[cfg(test)]
mod tests {
    use super::*;

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
        let o = Outbox::new(2);
        let a: Arc<str> = Arc::from("a");
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

    #[test]
    fn events_never_drop_they_close() {
        let o = Outbox::new(2);
        assert_eq!(o.push(text("e1", Kind::Event), None), Push::Queued);
        assert_eq!(o.push(text("e2", Kind::Event), None), Push::Queued);
        assert_eq!(o.push(text("e3", Kind::Event), None), Push::Overflow);
        assert_eq!(o.push(text("e4", Kind::Event), None), Push::Closed);
        let mut buf = Vec::new();
        assert_eq!(o.drain(&mut buf, 10), Err(Close::SLOW_CONSUMER));
    }

    #[test]
    fn many_devices_are_bounded_too() {
        let o = Outbox::new(2);
        let ids: Vec<Arc<str>> = (0..5).map(|i| Arc::from(format!("d{i}"))).collect();
        let results: Vec<Push> = ids
            .iter()
            .map(|d| o.push(text("x", Kind::Location), Some(d)))
            .collect();
        assert_eq!(results[..4], [Push::Queued; 4]);
        assert_eq!(results[4], Push::Overflow);
    }

    #[test]
    fn token_expiry_flushes_first() {
        let o = Outbox::new(4);
        o.push(text("err", Kind::Reply), None);
        o.close(Close::TOKEN_EXPIRED);
        let mut buf = Vec::new();
        assert_eq!(o.drain(&mut buf, 10), Ok(()));
        assert_eq!(buf.len(), 1);
        assert_eq!(o.drain(&mut buf, 10), Err(Close::TOKEN_EXPIRED));
    }
}
