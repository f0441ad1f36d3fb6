//! The hub: which local connection wants which update.
//!
//! In: parsed live updates and channel messages from the feed task
//! ([`crate::feed`]). Out: frames offered to each receiver's [`Outbox`].
//!
//! Indexes keep the work per update proportional to its receivers: device ->
//! connections, channel -> connections, the set of fleet subscribers, an
//! R-tree of bbox viewports, and device -> connections whose viewport holds
//! it (to report a device leaving). One `std::sync::Mutex` guards them; it is
//! never held across an `.await` and pushes into outboxes never block.
//!
//! Race-free subscribe: [`Hub::begin`] registers a *pending* selection whose
//! matching updates are buffered; the connection then reads its snapshot
//! (and replays events); [`Hub::activate`] atomically queues `subscribed`,
//! then the buffered updates that are newer than the snapshot (per device
//! and kind) or than the replay's last cursor, and makes the selection live.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use rstar::primitives::{GeomWithData, Rectangle};
use rstar::RTree;
use tokio::sync::Notify;

use crate::auth::Scope;
use crate::cursor::StreamId;
use crate::geo::BBox;
use crate::outbox::{Close, Item, Kind, Outbox, Push};

/// A connection's id, unique within the process.
pub type ConnId = u64;

/// One live update from the bridge, parsed once, shared by every receiver.
#[derive(Debug, Clone)]
pub struct Update {
    pub kind: Kind,
    pub device: Arc<str>,
    pub ts: i64,
    /// `(lon, lat)` of a location.
    pub pos: Option<(f64, f64)>,
    /// Event-log id of an event.
    pub cursor: Option<StreamId>,
    /// The §4 JSON, forwarded untouched.
    pub item: Item,
}

/// What a subscribe or unsubscribe names.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Selection {
    pub devices: Vec<Arc<str>>,
    pub fleet: bool,
    pub bbox: Option<BBox>,
    pub channels: Vec<String>,
}

impl Selection {
    pub fn has_device_selector(&self) -> bool {
        !self.devices.is_empty() || self.fleet || self.bbox.is_some()
    }

    pub fn is_empty(&self) -> bool {
        !self.has_device_selector() && self.channels.is_empty()
    }
}

/// What a connection learnt from its snapshot and replay, handed to
/// [`Hub::activate`] to filter the buffered updates.
#[derive(Debug, Default)]
pub struct Activation {
    /// Frames to queue before the buffered updates (`subscribed`).
    pub before: Vec<Item>,
    /// Device -> (location `ts`, status `ts`) as the snapshot read them.
    pub snapshot_ts: HashMap<Arc<str>, (Option<i64>, Option<i64>)>,
    /// Devices inside the bbox at snapshot time.
    pub in_box: Vec<Arc<str>>,
    /// Buffered events at or before this cursor were replayed or precede
    /// the subscription; they are not sent again.
    pub cursor_floor: StreamId,
}

/// Signals from the hub to one connection task.
#[derive(Default)]
pub struct ConnSignals {
    /// Redis came back (or the feed lagged): read a fresh snapshot.
    pub resync: Notify,
}

enum Buffered {
    Update(Update),
    Message(Item),
}

struct Pending {
    selection: Selection,
    devices: HashSet<Arc<str>>,
    /// Buffer every update this connection would get (a resync).
    all: bool,
    buffer: Vec<Buffered>,
}

/// What the latest snapshot showed, for a while after it: the feed reads
/// the live channel on another Redis connection than the snapshot, so an
/// update the snapshot already holds can still be dispatched *after*
/// activation. Such updates are dropped here; after [`FLOOR_TTL`] the feed
/// has long passed them and the map is freed.
struct Floors {
    ts: HashMap<Arc<str>, (Option<i64>, Option<i64>)>,
    cursor: StreamId,
    until: Instant,
}

/// How long a snapshot's floors filter live updates.
const FLOOR_TTL: Duration = Duration::from_secs(30);

impl Floors {
    fn stale(&self, u: &Update) -> bool {
        let (loc_ts, sts) = self.ts.get(&u.device).copied().unwrap_or((None, None));
        match u.kind {
            Kind::Location => loc_ts.is_some_and(|t| u.ts <= t),
            Kind::Status => sts.is_some_and(|t| u.ts <= t),
            Kind::Event => {
                self.ts.contains_key(&u.device) && u.cursor.is_some_and(|c| c <= self.cursor)
            }
            _ => false,
        }
    }
}

struct Conn {
    scope: Arc<Scope>,
    floors: Option<Floors>,
    outbox: Arc<Outbox>,
    signals: Arc<ConnSignals>,
    devices: HashSet<Arc<str>>,
    fleet: bool,
    bbox: Option<BBox>,
    in_box: HashSet<Arc<str>>,
    channels: HashSet<String>,
    pending: Option<Pending>,
}

type BoxEntry = GeomWithData<Rectangle<[f64; 2]>, ConnId>;

#[derive(Default)]
struct State {
    conns: HashMap<ConnId, Conn>,
    by_device: HashMap<Arc<str>, HashSet<ConnId>>,
    fleet: HashSet<ConnId>,
    boxes: RTree<BoxEntry>,
    in_box: HashMap<Arc<str>, HashSet<ConnId>>,
    by_channel: HashMap<String, HashSet<ConnId>>,
    pending: HashSet<ConnId>,
    last_event: StreamId,
}

/// See the module docs.
pub struct Hub {
    state: Mutex<State>,
    next_id: AtomicU64,
    /// Most updates a pending subscribe may buffer before the connection is
    /// treated as a slow consumer.
    pending_cap: usize,
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

fn rect(b: &BBox) -> Rectangle<[f64; 2]> {
    Rectangle::from_corners([b.min_lon, b.min_lat], [b.max_lon, b.max_lat])
}

fn gauge(kind: &'static str, delta: f64) {
    metrics::gauge!("fieldcast_gateway_subscriptions", "kind" => kind).increment(delta);
}

impl Hub {
    pub fn new(pending_cap: usize) -> Arc<Self> {
        Arc::new(Hub {
            state: Mutex::new(State::default()),
            next_id: AtomicU64::new(1),
            pending_cap,
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
        self.lock().conns.insert(
            id,
            Conn {
                scope,
                floors: None,
                outbox,
                signals,
                devices: HashSet::new(),
                fleet: false,
                bbox: None,
                in_box: HashSet::new(),
                channels: HashSet::new(),
                pending: None,
            },
        );
        Registration {
            hub: self.clone(),
            id,
        }
    }

    fn unregister(&self, id: ConnId) {
        let mut st = self.lock();
        let sel = Selection {
            devices: Vec::new(),
            fleet: true,
            bbox: None,
            channels: Vec::new(),
        };
        if let Some(c) = st.conns.get(&id) {
            let all = Selection {
                devices: c.devices.iter().cloned().collect(),
                bbox: c.bbox,
                channels: c.channels.iter().cloned().collect(),
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

    /// Newest event cursor this instance has dispatched.
    pub fn last_event_cursor(&self) -> StreamId {
        self.lock().last_event
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
            })
            .unwrap_or_default()
    }

    /// Device ids plus channels the connection holds now.
    pub fn subscription_count(&self, id: ConnId) -> usize {
        let st = self.lock();
        st.conns
            .get(&id)
            .map_or(0, |c| c.devices.len() + c.channels.len())
    }

    /// Starts buffering what `selection` matches (everything for the
    /// connection when `all`), before the snapshot is read.
    pub fn begin(&self, id: ConnId, selection: Selection, all: bool) {
        let mut st = self.lock();
        if let Some(c) = st.conns.get_mut(&id) {
            c.pending = Some(Pending {
                devices: selection.devices.iter().cloned().collect(),
                selection,
                all,
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
    pub fn activate(&self, id: ConnId, act: Activation) {
        let mut st = self.lock();
        st.pending.remove(&id);
        let Some(pending) = st.conns.get_mut(&id).and_then(|c| c.pending.take()) else {
            return;
        };
        let sel = pending.selection;
        let mut snapshot_ts = act.snapshot_ts;
        if !pending.all {
            // Devices the connection already gets live keep their live
            // order; only the newly covered ones are filtered by the snapshot.
            if let Some(c) = st.conns.get(&id) {
                snapshot_ts.retain(|d, _| {
                    !(c.devices.contains(d)
                        || (c.fleet && c.scope.allows_device(d))
                        || c.in_box.contains(d))
                });
            }
        }
        if pending.all {
            // A resync: the snapshot is the truth for the viewport.
            let old: Vec<Arc<str>> = st
                .conns
                .get(&id)
                .map(|c| c.in_box.iter().cloned().collect())
                .unwrap_or_default();
            for d in old {
                set_in_box(&mut st, id, &d, false);
            }
        }
        add_selection(&mut st, id, &sel);
        if sel.bbox.is_some() || pending.all {
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
        let floors = Floors {
            ts: snapshot_ts,
            cursor: act.cursor_floor,
            until: Instant::now() + FLOOR_TTL,
        };
        for b in pending.buffer {
            match b {
                Buffered::Message(item) => {
                    outbox.push(item, None);
                }
                Buffered::Update(u) => {
                    if floors.stale(&u) || !wants(&mut st, id, &u) {
                        continue;
                    }
                    offer(&outbox, &u);
                }
            }
        }
        if let Some(c) = st.conns.get_mut(&id) {
            c.floors = Some(match c.floors.take() {
                Some(mut old) if old.until > Instant::now() => {
                    old.ts.extend(floors.ts);
                    old.cursor = old.cursor.max(floors.cursor);
                    old.until = floors.until;
                    old
                }
                _ => floors,
            });
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

    /// Routes one live update to its receivers.
    pub fn dispatch(&self, u: Update) {
        let mut st = self.lock();
        if let Some(c) = u.cursor {
            st.last_event = st.last_event.max(c);
        }
        let mut receivers: Vec<ConnId> = Vec::new();
        if let Some(set) = st.by_device.get(&u.device) {
            receivers.extend(set.iter().copied());
        }
        for &id in &st.fleet {
            if st
                .conns
                .get(&id)
                .is_some_and(|c| c.scope.allows_device(&u.device))
            {
                receivers.push(id);
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
                                && c.scope.allows_device(&u.device)
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
                        // Leaving: this location is sent once so the
                        // client sees the device outside its box.
                        set_in_box(&mut st, id, &u.device, false);
                        receivers.push(id);
                    }
                }
                for &id in &inside {
                    set_in_box(&mut st, id, &u.device, true);
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
        let mut overflowed = Vec::new();
        for &id in &receivers {
            let Some(c) = st.conns.get_mut(&id) else {
                continue;
            };
            if let Some(p) = c.pending.as_mut().filter(|p| p.all) {
                p.buffer.push(Buffered::Update(u.clone()));
                if p.buffer.len() > self.pending_cap {
                    overflowed.push(id);
                }
                continue;
            }
            offer(&c.outbox, &u);
        }
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
            let matches = p.all
                || p.devices.contains(&u.device)
                || ((p.selection.fleet || p.selection.bbox.is_some())
                    && scope.allows_device(&u.device));
            if matches {
                p.buffer.push(Buffered::Update(u.clone()));
                if p.buffer.len() > self.pending_cap {
                    overflowed.push(id);
                }
            }
        }
        for id in overflowed {
            if let Some(c) = st.conns.get_mut(&id) {
                c.pending = None;
                c.outbox.close(Close::SLOW_CONSUMER);
                metrics::counter!("fieldcast_gateway_slow_consumer_closes_total").increment(1);
            }
            st.pending.remove(&id);
        }
    }

    /// Routes one channel message to the channel's subscribers.
    pub fn dispatch_message(&self, channel: &str, item: Item) {
        let mut st = self.lock();
        let receivers: Vec<ConnId> = st
            .by_channel
            .get(channel)
            .map(|s| s.iter().copied().collect())
            .unwrap_or_default();
        for &id in &receivers {
            let Some(c) = st.conns.get_mut(&id) else {
                continue;
            };
            if let Some(p) = c.pending.as_mut().filter(|p| p.all) {
                p.buffer.push(Buffered::Message(item.clone()));
                continue;
            }
            if c.outbox.push(item.clone(), None) == Push::Overflow {
                metrics::counter!("fieldcast_gateway_slow_consumer_closes_total").increment(1);
            }
        }
        let pending: Vec<ConnId> = st.pending.iter().copied().collect();
        for id in pending {
            if receivers.contains(&id) {
                continue;
            }
            let Some(p) = st.conns.get_mut(&id).and_then(|c| c.pending.as_mut()) else {
                continue;
            };
            if p.all || p.selection.channels.iter().any(|c| c == channel) {
                p.buffer.push(Buffered::Message(item.clone()));
            }
        }
    }
}

fn offer(outbox: &Outbox, u: &Update) {
    let device = (u.kind == Kind::Location).then_some(&u.device);
    if outbox.push(u.item.clone(), device) == Push::Overflow {
        metrics::counter!("fieldcast_gateway_slow_consumer_closes_total").increment(1);
    }
}

/// Whether connection `id`'s live selection wants `u` now, updating its
/// viewport membership for locations.
fn wants(st: &mut State, id: ConnId, u: &Update) -> bool {
    let Some(c) = st.conns.get(&id) else {
        return false;
    };
    if c.devices.contains(&u.device) || (c.fleet && c.scope.allows_device(&u.device)) {
        if let (Some(b), Some((lon, lat))) = (c.bbox, u.pos) {
            let inside = b.contains(lon, lat) && c.scope.allows_device(&u.device);
            set_in_box(st, id, &u.device, inside);
        }
        return true;
    }
    let Some(b) = c.bbox else { return false };
    if !c.scope.allows_device(&u.device) {
        return false;
    }
    let was = c.in_box.contains(&u.device);
    match u.pos {
        Some((lon, lat)) => {
            let inside = b.contains(lon, lat);
            set_in_box(st, id, &u.device, inside);
            inside || was
        }
        None => was,
    }
}

fn set_in_box(st: &mut State, id: ConnId, device: &Arc<str>, inside: bool) {
    let Some(c) = st.conns.get_mut(&id) else {
        return;
    };
    if inside {
        if c.in_box.insert(device.clone()) {
            st.in_box.entry(device.clone()).or_default().insert(id);
        }
    } else if c.in_box.remove(device) {
        if let Some(s) = st.in_box.get_mut(device) {
            s.remove(&id);
            if s.is_empty() {
                st.in_box.remove(device);
            }
        }
    }
}

fn add_selection(st: &mut State, id: ConnId, sel: &Selection) {
    let Some(c) = st.conns.get_mut(&id) else {
        return;
    };
    let mut new_devices = Vec::new();
    for d in &sel.devices {
        if c.devices.insert(d.clone()) {
            new_devices.push(d.clone());
        }
    }
    let mut new_channels = Vec::new();
    for ch in &sel.channels {
        if c.channels.insert(ch.clone()) {
            new_channels.push(ch.clone());
        }
    }
    let new_fleet = sel.fleet && !c.fleet;
    c.fleet |= sel.fleet;
    let old_box = match sel.bbox {
        Some(b) => c.bbox.replace(b).map(Some),
        None => None,
    };
    let new_box = sel.bbox;
    for d in new_devices {
        st.by_device.entry(d).or_default().insert(id);
        gauge("device", 1.0);
    }
    for ch in new_channels {
        st.by_channel.entry(ch).or_default().insert(id);
        gauge("channel", 1.0);
    }
    if new_fleet {
        st.fleet.insert(id);
        gauge("fleet", 1.0);
    }
    if let Some(b) = new_box {
        match old_box {
            Some(Some(old)) => {
                st.boxes.remove(&GeomWithData::new(rect(&old), id));
            }
            _ => gauge("bbox", 1.0),
        }
        st.boxes.insert(GeomWithData::new(rect(&b), id));
        // Devices of the old viewport that the new one does not hold are
        // forgotten; the new snapshot says what is inside now.
        let old: Vec<Arc<str>> = st
            .conns
            .get(&id)
            .map(|c| c.in_box.iter().cloned().collect())
            .unwrap_or_default();
        for d in old {
            set_in_box(st, id, &d, false);
        }
    }
}

fn remove_selection(st: &mut State, id: ConnId, sel: &Selection) {
    let Some(c) = st.conns.get_mut(&id) else {
        return;
    };
    let mut gone_devices = Vec::new();
    for d in &sel.devices {
        if c.devices.remove(d) {
            gone_devices.push(d.clone());
        }
    }
    let mut gone_channels = Vec::new();
    for ch in &sel.channels {
        if c.channels.remove(ch) {
            gone_channels.push(ch.clone());
        }
    }
    let gone_fleet = sel.fleet && c.fleet;
    if sel.fleet {
        c.fleet = false;
    }
    let gone_box = if sel.bbox.is_some() {
        c.bbox.take()
    } else {
        None
    };
    let in_box: Vec<Arc<str>> = if gone_box.is_some() {
        c.in_box.iter().cloned().collect()
    } else {
        Vec::new()
    };
    for d in gone_devices {
        if let Some(s) = st.by_device.get_mut(&d) {
            s.remove(&id);
            if s.is_empty() {
                st.by_device.remove(&d);
            }
        }
        gauge("device", -1.0);
    }
    for ch in gone_channels {
        if let Some(s) = st.by_channel.get_mut(&ch) {
            s.remove(&id);
            if s.is_empty() {
                st.by_channel.remove(&ch);
            }
        }
        gauge("channel", -1.0);
    }
    if gone_fleet {
        st.fleet.remove(&id);
        gauge("fleet", -1.0);
    }
    if let Some(b) = gone_box {
        st.boxes.remove(&GeomWithData::new(rect(&b), id));
        for d in in_box {
            set_in_box(st, id, &d, false);
        }
        gauge("bbox", -1.0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::outbox::Out;

    fn loc(device: &str, ts: i64, lon: f64, lat: f64) -> Update {
        Update {
            kind: Kind::Location,
            device: Arc::from(device),
            ts,
            pos: Some((lon, lat)),
            cursor: None,
            item: Item {
                out: Out::Text(format!("{device}@{ts}").into()),
                kind: Kind::Location,
                rx_ms: 0,
            },
        }
    }

    fn texts(o: &Outbox) -> Vec<String> {
        let mut buf = Vec::new();
        let _ = o.drain(&mut buf, usize::MAX);
        buf.into_iter()
            .filter_map(|i| match i.out {
                Out::Text(t) => Some(t.as_str().to_owned()),
                Out::Ping => None,
            })
            .collect()
    }

    fn conn(hub: &Arc<Hub>) -> (Registration, Arc<Outbox>) {
        let o = Arc::new(Outbox::new(100));
        let r = hub.register(Arc::new(Scope::unrestricted()), o.clone(), Arc::default());
        (r, o)
    }

    #[test]
    fn buffered_updates_older_than_the_snapshot_are_dropped() {
        let hub = Hub::new(1000);
        let (r, o) = conn(&hub);
        let sel = Selection {
            devices: vec![Arc::from("a")],
            ..Default::default()
        };
        hub.begin(r.id, sel, false);
        hub.dispatch(loc("a", 1, 0.0, 0.0));
        hub.dispatch(loc("a", 2, 0.0, 0.0));
        hub.dispatch(loc("b", 2, 0.0, 0.0));
        let mut snapshot_ts = HashMap::new();
        snapshot_ts.insert(Arc::from("a"), (Some(1), None));
        hub.activate(
            r.id,
            Activation {
                before: vec![Item::reply("subscribed".to_owned())],
                snapshot_ts,
                ..Default::default()
            },
        );
        hub.dispatch(loc("a", 3, 0.0, 0.0));
        assert_eq!(texts(&o), ["subscribed", "a@2", "a@3"]);
    }

    #[test]
    fn bbox_enter_and_leave() {
        let hub = Hub::new(1000);
        let (r, o) = conn(&hub);
        let sel = Selection {
            bbox: Some(BBox::new([0.0, 0.0, 1.0, 1.0]).unwrap()),
            ..Default::default()
        };
        hub.begin(r.id, sel, false);
        hub.activate(r.id, Activation::default());
        hub.dispatch(loc("a", 1, 5.0, 5.0)); // outside: not sent
        hub.dispatch(loc("a", 2, 0.5, 0.5)); // enters
        hub.dispatch(loc("a", 3, 0.6, 0.5)); // moves inside
        hub.dispatch(loc("a", 4, 5.0, 5.0)); // leaves: sent once
        hub.dispatch(loc("a", 5, 6.0, 5.0)); // outside: not sent
        assert_eq!(texts(&o), ["a@2", "a@3", "a@4"]);
        drop(r);
        assert_eq!(hub.connections(), 0);
        assert!(hub.lock().in_box.is_empty());
        assert_eq!(hub.lock().boxes.size(), 0);
    }
}
