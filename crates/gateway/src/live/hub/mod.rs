//! The hub: which local connection wants which update.
//!
//! In: parsed live updates and channel messages from the feed task
//! ([`crate::live::feed`]). Out: frames offered to each receiver's [`Outbox`].
//!
//! Indexes keep the work per update proportional to its receivers: device ->
//! connections, channel -> connections, group -> connections (with the
//! device -> groups [`Memberships`]), the set of fleet subscribers, an
//! R-tree of bbox viewports, and device -> connections whose viewport holds
//! it (to report a device leaving). One `std::sync::Mutex` guards them; it is
//! never held across an `.await` and pushes into outboxes never block.
//!
//! Race-free subscribe: [`Hub::begin`] registers a *pending* selection whose
//! matching updates are buffered; the connection then reads its snapshot
//! (and replays events); [`Hub::activate`] atomically queues `subscribed`,
//! then the buffered updates that are newer than the snapshot (per device
//! and kind) or than the replay's last cursor, and makes the selection live.

mod index;
mod pending;
#[cfg(test)]
mod tests;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Instant;

use tokio::sync::Notify;

use crate::auth::Scope;
use crate::cursor::{Cursor, EventPos};
use crate::live::groups::{groups_json, Groups, Memberships};
use crate::live::outbox::{Close, Item, Kind, Out, Outbox, Push};
use crate::live::sent::EventKey;
use crate::metrics::Metrics;
use fieldcast_core::geo::BBox;
use fieldcast_core::DeviceId;
use prometheus_client::metrics::counter::Counter;

use index::{
    add_selection, clear_in_box, remove_selection, set_in_box, wants, Conn, FastMap, State,
};
pub use pending::{Activation, Mode};
use pending::{Buffered, Floors, Pending};

/// A connection's id, unique within the process.
pub type ConnId = u64;

/// One live update from the bridge, parsed once, shared by every receiver.
#[derive(Debug, Clone)]
pub struct Update {
    pub kind: Kind,
    pub device: DeviceId,
    pub ts: i64,
    /// `(lon, lat)` of a location.
    pub pos: Option<(f64, f64)>,
    /// An event's position in its partition's log.
    pub event: Option<EventPos>,
    /// An event's (`device`, `id`): a connection is sent it once.
    pub event_key: Option<EventKey>,
    /// A membership change ([`Kind::Groups`]): the device's groups before
    /// it, so the change also reaches whoever saw the device by them.
    pub prev_groups: Option<Groups>,
    /// The §4 JSON, forwarded untouched; an event's without its `cursor`,
    /// which is each receiver's own ([`offer`]).
    pub item: Item,
}

/// What a subscribe or unsubscribe names.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Selection {
    pub devices: Vec<DeviceId>,
    pub fleet: bool,
    pub bbox: Option<BBox>,
    pub channels: Vec<String>,
    /// Device groups (issue #16), sorted.
    pub groups: Vec<Box<str>>,
}

impl Selection {
    pub fn has_device_selector(&self) -> bool {
        !self.devices.is_empty() || self.fleet || self.bbox.is_some() || !self.groups.is_empty()
    }

    pub fn is_empty(&self) -> bool {
        !self.has_device_selector() && self.channels.is_empty()
    }
}

/// Signals from the hub to one connection task.
#[derive(Default)]
pub struct ConnSignals {
    /// Redis came back (or the feed lagged): read a fresh snapshot.
    pub resync: Notify,
}

/// Who gets each live update: the indexes of every connection's selection
/// (devices, fleet, an R-tree of viewports, channels), the pending subscribes whose
/// snapshot is being read (their updates buffered, then filtered by the
/// snapshot's floors), and each connection's [`Outbox`], offered every
/// update without waiting. One mutex; the module docs say why it is enough.
pub struct Hub {
    state: Mutex<State>,
    next_id: AtomicU64,
    /// Most updates a pending subscribe may buffer before the connection is
    /// treated as a slow consumer.
    pending_cap: usize,
    counters: Counters,
}

/// The hub's metrics.
struct Counters {
    /// `fieldcast_gateway_slow_consumer_closes_total`.
    slow_closes: Counter,
    /// `fieldcast_gateway_duplicate_events_dropped_total`.
    duplicate_events: Counter,
}

/// Removes its connection from the hub when dropped, so a connection task
/// that ends in any way leaves nothing behind.
pub struct Registration {
    hub: Arc<Hub>,
    pub id: ConnId,
}

impl Drop for Registration {
    fn drop(&mut self) {
        self.hub.unregister(self.id);
    }
}

impl Hub {
    /// A hub counting in `metrics` (its subscription gauges and slow
    /// consumer closes).
    pub fn new(pending_cap: usize, metrics: &Metrics) -> Arc<Self> {
        Arc::new(Hub {
            state: Mutex::new(State {
                gauges: metrics.subscription_gauges(),
                ..State::default()
            }),
            next_id: AtomicU64::new(1),
            pending_cap,
            counters: Counters {
                slow_closes: metrics.slow_consumer_closes.clone(),
                duplicate_events: metrics.duplicate_events_dropped.clone(),
            },
        })
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // No code panics while holding the lock (no indexing that can fail,
        // no user callbacks), so a poisoned state is still consistent.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn register(
        self: &Arc<Self>,
        scope: Arc<Scope>,
        outbox: Arc<Outbox>,
        signals: Arc<ConnSignals>,
    ) -> Registration {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        self.lock()
            .conns
            .insert(id, Conn::new(scope, outbox, signals));
        Registration {
            hub: self.clone(),
            id,
        }
    }

    fn unregister(&self, id: ConnId) {
        let mut st = self.lock();
        let sel = Selection {
            fleet: true,
            ..Selection::default()
        };
        if let Some(c) = st.conns.get(&id) {
            let all = Selection {
                devices: c.devices.iter().cloned().collect(),
                bbox: c.bbox,
                channels: c.channels.iter().cloned().collect(),
                groups: c.groups.iter().cloned().collect(),
                ..sel
            };
            remove_selection(&mut st, id, &all);
        }
        st.pending.remove(&id);
        st.conns.remove(&id);
    }

    /// Number of connections registered (for tests and metrics).
    pub fn connections(&self) -> usize {
        self.lock().conns.len()
    }

    /// Records that connection `id` is sent the event `key` (a replay's);
    /// `false`, counted, when it was sent that event already.
    pub fn first_send(&self, id: ConnId, key: EventKey) -> bool {
        let first = self
            .lock()
            .conns
            .get_mut(&id)
            .is_none_or(|c| c.sent_events.first(key));
        if !first {
            self.counters.duplicate_events.inc();
        }
        first
    }

    /// Where a resync of connection `id` resumes its events: the cursor
    /// of the last event it was sent, or its floor (see
    /// [`index::Conn::cursor`]). `None` when it never subscribed.
    pub fn resume_cursor(&self, id: ConnId) -> Option<Cursor> {
        self.lock().conns.get(&id).and_then(|c| c.cursor.clone())
    }

    /// The connection's current live selection.
    pub fn selection(&self, id: ConnId) -> Selection {
        let st = self.lock();
        st.conns
            .get(&id)
            .map(|c| Selection {
                devices: c.devices.iter().cloned().collect(),
                fleet: c.fleet,
                bbox: c.bbox,
                channels: c.channels.iter().cloned().collect(),
                groups: {
                    let mut g: Vec<Box<str>> = c.groups.iter().cloned().collect();
                    g.sort();
                    g
                },
            })
            .unwrap_or_default()
    }

    /// Device ids plus channels the connection holds now.
    pub fn subscription_count(&self, id: ConnId) -> usize {
        let st = self.lock();
        st.conns
            .get(&id)
            .map_or(0, |c| c.devices.len() + c.channels.len() + c.groups.len())
    }

    /// Starts buffering what `selection` matches (everything for the
    /// connection on a [`Mode::Resync`]), before the snapshot is read.
    pub fn begin(&self, id: ConnId, selection: Selection, mode: Mode) {
        let mut st = self.lock();
        if let Some(c) = st.conns.get_mut(&id) {
            c.pending = Some(Pending {
                devices: selection.devices.iter().cloned().collect(),
                selection,
                mode,
                buffer: Vec::new(),
            });
            st.pending.insert(id);
        }
    }

    /// Drops a pending selection (its snapshot failed): nothing of it
    /// takes effect.
    pub fn abort(&self, id: ConnId) {
        let mut st = self.lock();
        if let Some(c) = st.conns.get_mut(&id) {
            c.pending = None;
        }
        st.pending.remove(&id);
    }

    /// Makes the pending selection live; see the module docs.
    pub fn activate(&self, id: ConnId, mut act: Activation) {
        let mut st = self.lock();
        st.pending.remove(&id);
        let Some(pending) = st.conns.get_mut(&id).and_then(|c| c.pending.take()) else {
            return;
        };
        let sel = pending.selection;
        let resync = pending.mode == Mode::Resync;
        let mut floors = new_floors(&st, id, &sel, &mut act, resync);
        if resync {
            // The snapshot is the truth for the viewport.
            clear_in_box(&mut st, id);
        }
        add_selection(&mut st, id, &sel);
        if sel.bbox.is_some() || resync {
            for d in &act.in_box {
                set_in_box(&mut st, id, d, true);
            }
        }
        let Some(outbox) = st.conns.get(&id).map(|c| c.outbox.clone()) else {
            return;
        };
        for item in act.before {
            outbox.push(item, None);
        }
        if let Some(floor) = act.cursor_floor {
            if let Some(c) = st.conns.get_mut(&id) {
                // A resync brought every selection up to its floor (or told
                // the client it could not); a new subscribe only its own,
                // so the cursor of the others stays.
                if resync || c.cursor.is_none() {
                    c.cursor = Some(floor);
                }
            }
        }
        for b in pending.buffer {
            match b {
                Buffered::Message(item) => {
                    outbox.push(item, None);
                }
                Buffered::Update(u) => {
                    if floors.stale(&u) || !wants(&mut st, id, &u) {
                        continue;
                    }
                    if let Some(c) = st.conns.get_mut(&id) {
                        offer(c, &u, &self.counters);
                    }
                }
            }
        }
        if let Some(c) = st.conns.get_mut(&id) {
            c.floors = Some(floors.after(c.floors.take()));
        }
    }

    /// Removes what `selection` names from the connection's live selection.
    pub fn unsubscribe(&self, id: ConnId, selection: &Selection) {
        let mut st = self.lock();
        remove_selection(&mut st, id, selection);
    }

    /// Asks every connection to read a fresh snapshot.
    pub fn resync_all(&self) {
        let st = self.lock();
        for c in st.conns.values() {
            c.signals.resync.notify_one();
        }
    }

    /// Routes one live update to its receivers: those it is live for get
    /// it now, pending subscribes that match it buffer it.
    pub fn dispatch(&self, u: Update) {
        let mut st = self.lock();
        let groups = st.members.of(u.device.as_str()).clone();
        let receivers = receivers(&mut st, &u, &groups);
        self.deliver_and_buffer(&mut st, &receivers, &u, &[groups]);
    }

    /// Delivers `u` to `receivers` and buffers it for the pending
    /// subscribes it matches with the device in any of `groups`.
    fn deliver_and_buffer(
        &self,
        st: &mut State,
        receivers: &[ConnId],
        u: &Update,
        groups: &[Groups],
    ) {
        let mut overflowed = deliver(st, receivers, u, self.pending_cap, &self.counters);
        overflowed.extend(buffer_pending(
            st,
            receivers,
            |p, scope| {
                p.devices.contains(&u.device)
                    || groups.iter().any(|g| {
                        (p.selection.fleet
                            || p.selection.bbox.is_some()
                            || crate::live::groups::overlap(&p.selection.groups, g))
                            && scope.allows_device(u.device.as_str(), g)
                    })
            },
            || Buffered::Update(u.clone()),
            self.pending_cap,
        ));
        close_overflowed(st, overflowed, &self.counters.slow_closes);
    }

    /// Every device's groups as the hub holds them now.
    pub fn memberships(&self) -> Arc<Memberships> {
        self.lock().members.clone()
    }

    /// Takes `new` as every device's groups: each device whose groups
    /// changed is announced like [`Hub::set_groups`].
    pub fn replace_memberships(&self, new: Memberships) {
        let changes = self.lock().members.changes_to(&new);
        for (device, groups) in changes {
            if let Ok(d) = DeviceId::parse(&device) {
                self.set_groups(&d, groups);
            }
        }
    }

    /// Gives `device` exactly `groups` and sends the change (a `groups`
    /// frame) to every connection that gets the device before or after
    /// it: one whose group subscription or group scope it joins starts
    /// getting it with this frame, one it leaves gets this frame last.
    pub fn set_groups(&self, device: &DeviceId, groups: Groups) {
        let mut st = self.lock();
        if **st.members.of(device.as_str()) == *groups {
            return;
        }
        let prev = Arc::make_mut(&mut st.members).set(device.as_str(), groups.clone());
        let u = Update {
            kind: Kind::Groups,
            device: device.clone(),
            ts: fieldcast_core::time::now_ms(),
            pos: None,
            event: None,
            event_key: None,
            prev_groups: Some(prev.clone()),
            item: Item {
                out: Out::Text(groups_json(device.as_str(), &groups).into()),
                kind: Kind::Groups,
                rx_ms: 0,
            },
        };
        let mut all = receivers(&mut st, &u, &groups);
        all.extend(receivers(&mut st, &u, &prev));
        all.sort_unstable();
        all.dedup();
        self.deliver_and_buffer(&mut st, &all, &u, &[groups.clone(), prev]);
        // A viewport whose token no longer covers the device forgets it, so
        // its next location is not sent as "leaving the box".
        let viewers: Vec<ConnId> = st
            .in_box
            .get(device)
            .map(|s| s.iter().copied().collect())
            .unwrap_or_default();
        for id in viewers {
            if st
                .conns
                .get(&id)
                .is_some_and(|c| !c.scope.allows_device(device.as_str(), &groups))
            {
                set_in_box(&mut st, id, device, false);
            }
        }
    }

    /// Routes one channel message to the channel's subscribers, and to the
    /// pending subscribes that name the channel.
    pub fn dispatch_message(&self, channel: &str, item: Item) {
        let mut st = self.lock();
        let mut receivers: Vec<ConnId> = st
            .by_channel
            .get(channel)
            .map(|s| s.iter().copied().collect())
            .unwrap_or_default();
        receivers.sort_unstable();
        let mut overflowed = Vec::new();
        for &id in &receivers {
            let Some(c) = st.conns.get_mut(&id) else {
                continue;
            };
            if let Some(p) = c.pending.as_mut().filter(|p| p.mode == Mode::Resync) {
                if p.hold(Buffered::Message(item.clone()), self.pending_cap) {
                    overflowed.push(id);
                }
                continue;
            }
            if c.outbox.push(item.clone(), None) == Push::Overflow {
                self.counters.slow_closes.inc();
            }
        }
        overflowed.extend(buffer_pending(
            &mut st,
            &receivers,
            |p, _| p.selection.channels.iter().any(|c| c == channel),
            || Buffered::Message(item.clone()),
            self.pending_cap,
        ));
        close_overflowed(&mut st, overflowed, &self.counters.slow_closes);
    }
}

/// Every connection the update is live for, the device being in
/// `groups`, sorted and without repeats: by device, by fleet and by group
/// (within its scope), and by viewport — which also keeps the in-box index
/// current and includes a viewport the device just left, so its client
/// sees it go.
fn receivers(st: &mut State, u: &Update, groups: &[Box<str>]) -> Vec<ConnId> {
    let mut receivers: Vec<ConnId> = Vec::new();
    if let Some(set) = st.by_device.get(&u.device) {
        receivers.extend(set.iter().copied());
    }
    let allowed = |id: &ConnId| {
        st.conns
            .get(id)
            .is_some_and(|c| c.scope.allows_device(u.device.as_str(), groups))
    };
    for id in &st.fleet {
        if allowed(id) {
            receivers.push(*id);
        }
    }
    for g in groups {
        if let Some(set) = st.by_group.get(g) {
            receivers.extend(set.iter().filter(|id| allowed(id)));
        }
    }
    match (u.kind, u.pos) {
        (Kind::Location, Some((lon, lat))) => {
            let inside: Vec<ConnId> = st
                .boxes
                .locate_all_at_point(&[lon, lat])
                .map(|e| e.data)
                .filter(|id| {
                    st.conns.get(id).is_some_and(|c| {
                        c.bbox.is_some_and(|b| b.contains(lon, lat))
                            && c.scope.allows_device(u.device.as_str(), groups)
                    })
                })
                .collect();
            let was: Vec<ConnId> = st
                .in_box
                .get(&u.device)
                .map(|s| s.iter().copied().collect())
                .unwrap_or_default();
            for &id in &was {
                if !inside.contains(&id) {
                    // Leaving: this location is sent once so the client
                    // sees the device outside its box.
                    set_in_box(st, id, &u.device, false);
                    receivers.push(id);
                }
            }
            for &id in &inside {
                set_in_box(st, id, &u.device, true);
                receivers.push(id);
            }
        }
        _ => {
            if let Some(set) = st.in_box.get(&u.device) {
                receivers.extend(set.iter().copied());
            }
        }
    }
    receivers.sort_unstable();
    receivers.dedup();
    receivers
}

/// Offers the update to each receiver — held back instead while the
/// receiver resyncs, dropped when its last snapshot already showed it.
/// Returns the receivers whose resync buffer overflowed.
fn deliver(
    st: &mut State,
    receivers: &[ConnId],
    u: &Update,
    pending_cap: usize,
    counters: &Counters,
) -> Vec<ConnId> {
    let mut overflowed = Vec::new();
    let now = Instant::now();
    for &id in receivers {
        let Some(c) = st.conns.get_mut(&id) else {
            continue;
        };
        if let Some(p) = c.pending.as_mut().filter(|p| p.mode == Mode::Resync) {
            if p.hold(Buffered::Update(u.clone()), pending_cap) {
                overflowed.push(id);
            }
            continue;
        }
        // An update the last snapshot already showed, arriving late on the
        // feed's connection: not sent again (see `Floors`).
        if let Some(f) = &mut c.floors {
            let stale = f.until > now && f.stale(u);
            if f.spent(now) {
                c.floors = None;
            }
            if stale {
                continue;
            }
        }
        offer(c, u, counters);
    }
    overflowed
}

/// The floors of a snapshot and its replay (see [`Floors`]). Events up to
/// the cursor floor were replayed for what the replay covered: the
/// selection's devices by name and by box, and every device when it names
/// the fleet. Outside a resync, devices the connection already gets live
/// keep their live order: only the newly covered ones are filtered.
fn new_floors(
    st: &State,
    id: ConnId,
    sel: &Selection,
    act: &mut Activation,
    resync: bool,
) -> Floors {
    let events: FastMap<DeviceId, Cursor> = act
        .cursor_floor
        .as_ref()
        .map(|floor| {
            sel.devices
                .iter()
                .chain(&act.in_box)
                .map(|d| (d.clone(), floor.clone()))
                .collect()
        })
        .unwrap_or_default();
    let fleet_events = act.cursor_floor.clone().filter(|_| sel.fleet);
    let mut floors = Floors::new(std::mem::take(&mut act.snapshot_ts), events, fleet_events);
    if let Some(c) = st.conns.get(&id).filter(|_| !resync) {
        floors.retain(|d| !(c.selects(d, st.members.of(d.as_str())) || c.in_box.contains(d)));
        if c.fleet {
            floors.fleet_events = None;
        }
    }
    floors
}

/// The one pending-buffer path of both dispatches: every pending subscribe
/// not among `receivers` (sorted) that is a resync or `matches` buffers
/// the item. Returns the connections whose buffer overflowed.
fn buffer_pending(
    st: &mut State,
    receivers: &[ConnId],
    matches: impl Fn(&Pending, &Scope) -> bool,
    item: impl Fn() -> Buffered,
    pending_cap: usize,
) -> Vec<ConnId> {
    let mut overflowed = Vec::new();
    let pending: Vec<ConnId> = st.pending.iter().copied().collect();
    for id in pending {
        if receivers.binary_search(&id).is_ok() {
            continue;
        }
        let Some(c) = st.conns.get_mut(&id) else {
            continue;
        };
        let scope = c.scope.clone();
        let Some(p) = c.pending.as_mut() else {
            continue;
        };
        if (p.mode == Mode::Resync || matches(p, &scope)) && p.hold(item(), pending_cap) {
            overflowed.push(id);
        }
    }
    overflowed
}

/// A subscribe whose buffer outgrew the cap while its snapshot was read:
/// the client cannot keep up, so it is closed as a slow consumer.
fn close_overflowed(st: &mut State, overflowed: Vec<ConnId>, slow_closes: &Counter) {
    for id in overflowed {
        if let Some(c) = st.conns.get_mut(&id) {
            c.pending = None;
            c.outbox.close(Close::SLOW_CONSUMER);
            slow_closes.inc();
        }
        st.pending.remove(&id);
    }
}

/// Queues the update for connection `c`. An event moves the connection's
/// cursor and goes out with it: a receiver's cursor says what *it* was
/// sent up to in every partition, which no cursor shared by all receivers
/// can (their floors differ, and a position another partition's event
/// reached may be ahead of what this one has been sent). An event the
/// connection was already sent (re-published; see [`crate::live::sent`])
/// is dropped, and moves nothing.
fn offer(c: &mut Conn, u: &Update, counters: &Counters) {
    if let Some(key) = u.event_key {
        if !c.sent_events.first(key) {
            counters.duplicate_events.inc();
            return;
        }
    }
    let device = (u.kind == Kind::Location).then_some(&u.device);
    let item = match (&u.event, c.cursor.as_mut(), &u.item.out) {
        (Some(e), Some(cursor), Out::Text(msg)) => {
            cursor.advanced_by(e);
            let frame = fieldcast_core::live::with_cursor(msg.as_str(), &cursor.encode());
            Item {
                out: Out::Text(frame.into()),
                ..u.item.clone()
            }
        }
        _ => u.item.clone(),
    };
    if c.outbox.push(item, device) == Push::Overflow {
        counters.slow_closes.inc();
    }
}
