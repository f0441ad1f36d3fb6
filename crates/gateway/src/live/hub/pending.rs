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
/// activation. Such updates are dropped here. A device's floor goes as
/// soon as the feed brings it anything past it: the feed carries each
/// device's locations, statuses and events in order (one partition's
/// channel, the script publishing only what is newer), so nothing behind
/// the floor can follow. Floors passed by every device are dropped
/// whole; after [`FLOOR_TTL`] the rest go too. Locations and statuses
/// have a map each: a device whose status never changes keeps its status
/// floor until then, and locations, the bulk of the feed, stop paying a
/// look-up for it as soon as their own map is empty.
pub(super) struct Floors {
    pub(super) location: FastMap<DeviceId, i64>,
    pub(super) status: FastMap<DeviceId, i64>,
    /// Events at or before these cursors were replayed (or precede the
    /// subscription): per device the replay covered by name or by box, and
    /// for every device when it covered the fleet — which the snapshot's
    /// `ts` cannot stand for, since a device can appear in the log after
    /// the snapshot was read and before the replay.
    pub(super) events: FastMap<DeviceId, Cursor>,
    pub(super) fleet_events: Option<Cursor>,
    pub(super) until: Instant,
}

/// How long a snapshot's floors filter live updates at most.
pub(super) const FLOOR_TTL: Duration = Duration::from_secs(30);

impl Floors {
    /// The floors of a snapshot's `(location ts, status ts)` per device.
    pub(super) fn new(
        snapshot_ts: impl IntoIterator<Item = (DeviceId, (Option<i64>, Option<i64>))>,
        events: FastMap<DeviceId, Cursor>,
        fleet_events: Option<Cursor>,
    ) -> Floors {
        let (mut location, mut status) = (FastMap::default(), FastMap::default());
        for (d, (l, s)) in snapshot_ts {
            if let Some(s) = s {
                status.insert(d.clone(), s);
            }
            if let Some(l) = l {
                location.insert(d, l);
            }
        }
        Floors {
            location,
            status,
            events,
            fleet_events,
            until: Instant::now() + FLOOR_TTL,
        }
    }

    /// Keeps only the devices `keep` accepts.
    pub(super) fn retain(&mut self, keep: impl Fn(&DeviceId) -> bool) {
        self.location.retain(|d, _| keep(d));
        self.status.retain(|d, _| keep(d));
        self.events.retain(|d, _| keep(d));
    }

    /// These floors, taken over a connection's `old` ones: an earlier
    /// snapshot's floors still in force keep filtering too, this snapshot's
    /// per-device values replace theirs, the cursor floor is the later one,
    /// and all last until this one's end.
    pub(super) fn after(self, old: Option<Floors>) -> Floors {
        match old {
            Some(mut old) if old.until > Instant::now() => {
                old.location.extend(self.location);
                old.status.extend(self.status);
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

    /// Whether the snapshot already showed `u`; a device's floor the feed
    /// has passed is dropped (type doc).
    pub(super) fn stale(&mut self, u: &Update) -> bool {
        match u.kind {
            Kind::Location => behind(&mut self.location, &u.device, |&t| u.ts <= t),
            Kind::Status => behind(&mut self.status, &u.device, |&t| u.ts <= t),
            // An event of another life is not behind the floor: the log
            // started over, and the snapshot's replay never covered it.
            Kind::Event => {
                let Some(e) = &u.event else {
                    return false;
                };
                behind(&mut self.events, &u.device, |f| f.covers(e))
                    || self.fleet_events.as_ref().is_some_and(|f| f.covers(e))
            }
            _ => false,
        }
    }

    /// Whether these floors can no longer drop anything: every device's
    /// passed, and no fleet floor, or their time is up.
    pub(super) fn spent(&self, now: Instant) -> bool {
        self.until <= now
            || (self.location.is_empty()
                && self.status.is_empty()
                && self.events.is_empty()
                && self.fleet_events.is_none())
    }
}

/// Whether `device`'s floor in `floors` holds `covers`; a floor that does
/// not is passed, and removed.
fn behind<F>(
    floors: &mut FastMap<DeviceId, F>,
    device: &DeviceId,
    covers: impl Fn(&F) -> bool,
) -> bool {
    match floors.get(device) {
        None => false,
        Some(f) if covers(f) => true,
        Some(_) => {
            floors.remove(device);
            false
        }
    }
}
