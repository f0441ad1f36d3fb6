//! What every source does with a message once its broker handed it over,
//! whichever broker that is: parse it once into a typed [`Message`], count
//! it, and offer it to the [`Queue`]; a rejected one goes to the
//! dead-letter lane with its reason. What the queue has no room for waits
//! in an ordered hold-back buffer ([`Intake::release`] moves it on when
//! room is made), so a source never blocks inside its broker's loop.
//!
//! Where a message is acknowledged depends on the broker ([`Settling`]):
//!
//! - **MQTT** ([`Settling::InOrder`]): PUBACKs must leave in the order the
//!   PUBLISHes came, so every QoS 1 token goes through the reliable lane —
//!   events and status with their record, acknowledged once stored;
//!   locations and rejects as [`Reliable::AckOnly`], acknowledged in their
//!   turn.
//! - **JetStream** ([`Settling::Independent`]): every message has a token
//!   and acks are independent of each other. Events and status still go
//!   through the reliable lane (acknowledged once stored); a location is
//!   settled by the source as soon as the bridge accepted it (queued or
//!   held back), as QoS 0 is at most once; a reject is terminated at once
//!   (`+TERM`: never redelivered) — its dead letter is best effort either
//!   way, in a bounded list that drops the oldest.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;

use fieldcast_core::{Kind, Limits, LogLimiter, Message};

use crate::ack::{AckToken, Verdict};
use crate::metrics::{KindLabel, Metrics};
use crate::queue::Queue;
use crate::record::{DeadLetter, LocationRow, Reliable};

/// Messages held back while the queue is full. Tokens that go through the
/// reliable lane count against it but are never shed (the broker's
/// inflight window, or JetStream's `max_ack_pending`, bounds them); a
/// location settled at once arriving with this many held is shed.
pub const HELD_MAX: usize = 10_000;

/// Whether a broker's acknowledgements must keep the order of its
/// messages (module doc).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Settling {
    /// MQTT: every token through the reliable lane, in order.
    InOrder,
    /// JetStream: only what must be stored first goes through the lane.
    Independent,
}

/// One step the queue could not take yet, kept in arrival order.
#[derive(Debug)]
enum Held {
    Location(LocationRow),
    Reliable(Reliable),
}

/// What the source owes its broker for a message right now, beyond what
/// the queue carries to the reliable sink.
#[derive(Debug, PartialEq, Eq)]
pub enum Settle {
    /// Nothing: no token, or the reliable sink settles it.
    Later,
    /// Settle this token now with this verdict.
    Now(AckToken, Verdict),
}

/// The broker-independent half of a source (module doc).
pub struct Intake {
    queue: Arc<Queue>,
    metrics: Arc<Metrics>,
    limits: Limits,
    settling: Settling,
    held: VecDeque<Held>,
    reject_log: LogLimiter,
}

impl Intake {
    pub fn new(
        queue: Arc<Queue>,
        metrics: Arc<Metrics>,
        limits: Limits,
        settling: Settling,
    ) -> Self {
        Intake {
            queue,
            metrics,
            limits,
            settling,
            held: VecDeque::new(),
            reject_log: LogLimiter::new(10, Duration::from_secs(10)),
        }
    }

    /// The queue it feeds (to wait for [`Queue::room`] without borrowing
    /// the intake).
    pub fn queue(&self) -> &Arc<Queue> {
        &self.queue
    }

    /// Whether anything waits for room in the queue.
    pub fn holding(&self) -> bool {
        !self.held.is_empty()
    }

    /// How many steps wait for room.
    pub fn held(&self) -> usize {
        self.held.len()
    }

    /// Takes one message from the broker: `topic` in MQTT form, `ack` its
    /// token (none for an MQTT QoS 0 PUBLISH), `now` its receive time in
    /// epoch ms.
    pub fn offer(
        &mut self,
        topic: &str,
        payload: &[u8],
        ack: Option<AckToken>,
        now: i64,
    ) -> Settle {
        match Message::parse(topic, payload, &self.limits, now) {
            Err(rej) => {
                self.metrics.reject(rej.reason);
                if let Some(suppressed) = self.reject_log.allow() {
                    tracing::warn!(%topic, reason = %rej.reason, detail = %rej.detail, suppressed, "rejected a message");
                }
                self.queue.push_deadletter(DeadLetter::new(
                    topic,
                    rej.reason.as_str(),
                    now,
                    payload,
                ));
                self.settle_unstored(ack, Verdict::Term)
            }
            Ok(msg) => {
                let at_once = ack.is_none() || self.settling == Settling::Independent;
                if msg.kind() == Kind::Location && at_once && self.held.len() >= HELD_MAX {
                    // At most once by contract: shed (and count) rather
                    // than grow; a JetStream token is settled all the same.
                    self.metrics
                        .shed
                        .get_or_create(&KindLabel {
                            kind: msg.kind().as_str(),
                        })
                        .inc();
                    return match ack {
                        Some(t) => Settle::Now(t, Verdict::Ack),
                        None => Settle::Later,
                    };
                }
                self.metrics.message(msg.kind());
                match msg {
                    Message::Location(device, loc) => {
                        self.enqueue(Held::Location(LocationRow {
                            device,
                            loc,
                            received_at: now,
                        }));
                        self.settle_unstored(ack, Verdict::Ack)
                    }
                    Message::Status(device, status) => {
                        self.enqueue(Held::Reliable(Reliable::Status {
                            device,
                            status,
                            rx: now,
                            ack,
                        }));
                        Settle::Later
                    }
                    Message::Event(device, event) => {
                        self.enqueue(Held::Reliable(Reliable::Event {
                            device,
                            event,
                            rx: now,
                            ack,
                        }));
                        Settle::Later
                    }
                }
            }
        }
    }

    /// A token with nothing left to store: in its turn through the
    /// reliable lane (MQTT), or back to the source to settle now.
    fn settle_unstored(&mut self, ack: Option<AckToken>, verdict: Verdict) -> Settle {
        match (ack, self.settling) {
            (None, _) => Settle::Later,
            (Some(t), Settling::InOrder) => {
                self.enqueue(Held::Reliable(Reliable::AckOnly(t)));
                Settle::Later
            }
            (Some(t), Settling::Independent) => Settle::Now(t, verdict),
        }
    }

    /// Moves held-back steps into the queue, in order, while it has room.
    pub fn release(&mut self) {
        while let Some(step) = self.held.pop_front() {
            if let Err(step) = self.try_queue(step) {
                self.held.push_front(step);
                return;
            }
        }
    }

    /// At shutdown: forgets what is held back and returns the tokens it
    /// carried (none of them stored, so none may be acknowledged).
    pub fn abandon_held(&mut self) -> Vec<AckToken> {
        let n = self.held.len() as u64;
        if n > 0 {
            self.metrics.unread_at_shutdown.inc_by(n);
        }
        self.held
            .drain(..)
            .filter_map(|step| match step {
                Held::Location(_) => None,
                Held::Reliable(r) => r.ack().cloned(),
            })
            .collect()
    }

    /// Queues a step behind anything held back, holding it when the queue
    /// has no room.
    fn enqueue(&mut self, step: Held) {
        if !self.held.is_empty() {
            self.held.push_back(step);
        } else if let Err(step) = self.try_queue(step) {
            self.held.push_back(step);
        }
    }

    // The step comes back to be held (see Queue::try_push_reliable).
    #[allow(clippy::result_large_err)]
    fn try_queue(&self, step: Held) -> Result<(), Held> {
        match step {
            Held::Location(row) => self.queue.try_push_location(row).map_err(Held::Location),
            Held::Reliable(item) => self.queue.try_push_reliable(item).map_err(Held::Reliable),
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;
    use crate::queue::Capacity;

    fn intake(settling: Settling, reliable: usize) -> Intake {
        let metrics = Arc::new(Metrics::new());
        let queue = Arc::new(Queue::new(
            Capacity {
                live: 10,
                reliable,
                history: 10,
                deadletters: 10,
            },
            metrics.clone(),
        ));
        let limits = Limits {
            max_payload: 1024,
            max_future_ms: 600_000,
            max_age_ms: i64::MAX,
        };
        Intake::new(queue, metrics, limits, settling)
    }

    fn nats(n: u8) -> AckToken {
        AckToken::Nats(format!("$JS.ACK.S.C.1.{n}.{n}.0.0").into())
    }

    const NOW: i64 = 1_700_000_000_000;
    const LOC: &[u8] = br#"{"lat":1,"lon":2}"#;
    const EVENT: &[u8] = br#"{"id":"e1","kind":"k"}"#;

    /// Pins the JetStream settling points: a location at once, a reject
    /// terminated at once, an event only through the reliable lane.
    #[test]
    fn independent_settles_locations_and_rejects_at_once_events_later() {
        let mut i = intake(Settling::Independent, 10);
        assert_eq!(
            i.offer("devices/d/location", LOC, Some(nats(1)), NOW),
            Settle::Now(nats(1), Verdict::Ack)
        );
        assert_eq!(
            i.offer("devices/d/location", b"{", Some(nats(2)), NOW),
            Settle::Now(nats(2), Verdict::Term)
        );
        assert_eq!(
            i.offer("devices/d/events", EVENT, Some(nats(3)), NOW),
            Settle::Later
        );
        assert_eq!(
            i.metrics.acks_pending.get(),
            1,
            "the event waits in the lane"
        );
    }

    /// Pins the MQTT order: a QoS 1 location's PUBACK waits its turn in
    /// the reliable lane behind the event before it.
    #[test]
    fn in_order_sends_every_token_through_the_reliable_lane() {
        let mut i = intake(Settling::InOrder, 10);
        let t = |pkid| AckToken::Mqtt { pkid };
        assert_eq!(
            i.offer("devices/d/events", EVENT, Some(t(1)), NOW),
            Settle::Later
        );
        assert_eq!(
            i.offer("devices/d/location", LOC, Some(t(2)), NOW),
            Settle::Later
        );
        assert_eq!(
            i.offer("devices/d/location", b"{", Some(t(3)), NOW),
            Settle::Later
        );
        assert_eq!(i.offer("devices/d/location", LOC, None, NOW), Settle::Later);
        assert_eq!(i.metrics.acks_pending.get(), 3, "three tokens in the lane");
    }

    /// Pins the hold-back: with the reliable lane full the step waits, in
    /// order, and at shutdown its token comes back unacknowledged.
    #[test]
    fn a_full_lane_holds_back_and_shutdown_returns_the_tokens() {
        let mut i = intake(Settling::Independent, 1);
        assert_eq!(
            i.offer("devices/d/events", EVENT, Some(nats(1)), NOW),
            Settle::Later
        );
        let second = br#"{"id":"e2","kind":"k"}"#;
        assert_eq!(
            i.offer("devices/d/events", second, Some(nats(2)), NOW),
            Settle::Later
        );
        assert!(i.holding());
        i.release();
        assert_eq!(i.held(), 1, "still no room");
        assert_eq!(i.abandon_held(), vec![nats(2)]);
        assert!(!i.holding());
    }
}
