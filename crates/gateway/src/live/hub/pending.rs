//! A subscribe between [`super::Hub::begin`] and [`super::Hub::activate`]:
//! what it buffers, and the snapshot "floors" that filter what arrives late.

use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

use fieldcast_core::DeviceId;

use super::index::FastMap;
use super::{Selection, Update};
use crate::cursor::Cursor;
use crate::live::outbox::{Item, Kind};

/// What a connection learnt from its snapshot and replay, handed to
/// [`super::Hub::activate`] to filter the buffered updates.
#[derive(Debug, Default)]
pub struct Activation {
    /// Frames to queue before the buffered updates (`subscribed`).
    pub before: Vec<Item>,
    /// Device -> (location `ts`, status `ts`) as the snapshot read them.
    pub snapshot_ts: HashMap<DeviceId, (Option<i64>, Option<i64>)>,
    /// Devices inside the bbox at snapshot time.
    pub in_box: Vec<DeviceId>,
    /// Buffered events at or before this cursor (in its partition's life)
    /// were replayed or precede the subscription; they are not sent again.
    pub cursor_floor: Option<Cursor>,
}

/// What a pending subscribe buffers while its snapshot is read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// A new selection: only what it names.
    Subscribe,
    /// After a feed gap: everything the connection gets, selections it
    /// already had included; its snapshot replaces what the client holds.
    Resync,
}

pub(super) enum Buffered {
    Update(Update),
    Message(Item),
}

pub(super) struct Pending {
    pub(super) selection: Selection,
    pub(super) devices: HashSet<DeviceId>,
    pub(super) mode: Mode,
    pub(super) buffer: Vec<Buffered>,
}

impl Pending {
    /// Buffers `b`; `true` when the buffer is now over `cap`.
    pub(super) fn hold(&mut self, b: Buffered, cap: usize) -> bool {
        self.buffer.push(b);
        self.buffer.len() > cap
    }
}

/// What the latest snapshot showed, for a while after it: the feed reads
/// the live channel on another Redis connection than the snapshot, so an
/// update the snapshot already holds can still be dispatched *after*
/// activation. Such updates are dropped here; after [`FLOOR_TTL`] the feed
/// has long passed them and the map is freed.
pub(super) struct Floors {
    pub(super) ts: FastMap<DeviceId, (Option<i64>, Option<i64>)>,
    /// Events at or before these cursors were replayed (or precede the
    /// subscription): per device the replay covered by name or by box, and
    /// for every device when it covered the fleet — which the snapshot's
    /// `ts` cannot stand for, since a device can appear in the log after
    /// the snapshot was read and before the replay.
    pub(super) events: FastMap<DeviceId, Cursor>,
    pub(super) fleet_events: Option<Cursor>,
    pub(super) until: Instant,
}

/// How long a snapshot's floors filter live updates.
pub(super) const FLOOR_TTL: Duration = Duration::from_secs(30);

impl Floors {
    /// These floors, taken over a connection's `old` ones: an earlier
    /// snapshot's floors still in force keep filtering too, this snapshot's
    /// per-device values replace theirs, the cursor floor is the later one,
    /// and all last until this one's end.
    pub(super) fn after(self, old: Option<Floors>) -> Floors {
        match old {
            Some(mut old) if old.until > Instant::now() => {
                old.ts.extend(self.ts);
                old.events.extend(self.events);
                old.fleet_events = match (old.fleet_events, self.fleet_events) {
                    (Some(o), Some(n)) => Some(o.advanced_to(&n)),
                    (o, n) => n.or(o),
                };
                old.until = self.until;
                old
            }
            _ => self,
        }
    }

    pub(super) fn stale(&self, u: &Update) -> bool {
        let (loc_ts, sts) = self.ts.get(&u.device).copied().unwrap_or((None, None));
        match u.kind {
            Kind::Location => loc_ts.is_some_and(|t| u.ts <= t),
            Kind::Status => sts.is_some_and(|t| u.ts <= t),
            // An event of another life is not behind the floor: the log
            // started over, and the snapshot's replay never covered it.
            Kind::Event => {
                let Some(e) = &u.event else {
                    return false;
                };
                self.events.get(&u.device).is_some_and(|f| f.covers(e))
                    || self.fleet_events.as_ref().is_some_and(|f| f.covers(e))
            }
            _ => false,
        }
    }
}
