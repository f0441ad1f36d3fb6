//! The events a connection has been sent, so that an event the bridge
//! published twice reaches it once.
//!
//! The bridge logs and publishes an event once per (`device`, `id`): its
//! dedup key sits in Redis next to the log. A failover to a replica that
//! had not yet received that key (Redis replicates asynchronously) loses
//! it, and the bridge, replaying what its outbox holds for the dead
//! primary, logs and publishes the event again, at a new position. Both
//! copies reach a connection that watched through the failover: the first
//! live, the second live or in the resync's replay (its position is past
//! the connection's cursor). PROTOCOL.md §3 says an event is pushed once,
//! so each connection remembers the keys of the events it was sent and
//! drops a second copy (counted in
//! `fieldcast_gateway_duplicate_events_dropped_total`).

use std::collections::VecDeque;
use std::hash::BuildHasher;
use std::sync::LazyLock;

/// How many events a connection remembers. A re-publication comes within
/// seconds of the first copy (a failover plus the bridge's reconnect), so
/// this covers a connection receiving hundreds of events a second through
/// that window, in at most 8 KiB, allocated as events arrive.
pub const SENT_EVENTS_KEPT: usize = 1024;

/// Seeded per process, so that no device can choose ids whose keys
/// collide with another device's events.
static SEED: LazyLock<foldhash::fast::RandomState> =
    LazyLock::new(foldhash::fast::RandomState::default);

/// An event's (`device`, `id`), hashed to 64 bits. Two different events
/// share a key with a chance of about 2⁻⁶⁴ per pair compared; such a
/// collision would drop the later one for this connection only.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EventKey(u64);

impl EventKey {
    pub fn of(device: &str, id: &str) -> Self {
        EventKey(SEED.hash_one((device, id)))
    }
}

/// The keys of the last [`SENT_EVENTS_KEPT`] events sent on one
/// connection, oldest first.
#[derive(Debug, Default)]
pub struct SentEvents(VecDeque<EventKey>);

impl SentEvents {
    /// Records `key`; `false` when it was already sent. A linear scan:
    /// events are rare next to locations, and 1024 keys compare in well
    /// under a microsecond.
    pub fn first(&mut self, key: EventKey) -> bool {
        if self.0.contains(&key) {
            return false;
        }
        if self.0.len() == SENT_EVENTS_KEPT {
            self.0.pop_front();
        }
        self.0.push_back(key);
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_key_is_first_once_until_it_ages_out() {
        let mut sent = SentEvents::default();
        let k = |i: usize| EventKey::of("truck-7", &format!("ev-{i}"));
        assert!(sent.first(k(0)));
        assert!(!sent.first(k(0)));
        for i in 1..SENT_EVENTS_KEPT {
            assert!(sent.first(k(i)));
        }
        assert!(!sent.first(k(0)), "the oldest is still kept at the limit");
        assert!(sent.first(k(SENT_EVENTS_KEPT)));
        assert!(sent.first(k(0)), "one past the limit, the oldest is gone");
        assert_eq!(sent.0.len(), SENT_EVENTS_KEPT);
    }

    #[test]
    fn the_key_separates_device_from_id() {
        assert_ne!(EventKey::of("ab", "c"), EventKey::of("a", "bc"));
        assert_ne!(EventKey::of("a", "e1"), EventKey::of("b", "e1"));
        assert_eq!(EventKey::of("a", "e1"), EventKey::of("a", "e1"));
    }
}
