//! The hub's indexes and the bookkeeping that keeps them consistent with
//! each connection's own view of its selection.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use rstar::primitives::{GeomWithData, Rectangle};
use rstar::RTree;

use super::pending::{Floors, Pending};
use super::{ConnId, ConnSignals, Selection, Update};
use crate::auth::Scope;
use crate::cursor::Cursor;
use crate::live::groups::Memberships;
use crate::live::outbox::Outbox;
use crate::live::sent::SentEvents;
use crate::metrics::SubscriptionGauges;
use fieldcast_core::geo::BBox;
use fieldcast_core::DeviceId;

pub(super) struct Conn {
    pub(super) scope: Arc<Scope>,
    pub(super) floors: Option<Floors>,
    pub(super) outbox: Arc<Outbox>,
    pub(super) signals: Arc<ConnSignals>,
    pub(super) devices: HashSet<DeviceId>,
    pub(super) fleet: bool,
    pub(super) bbox: Option<BBox>,
    pub(super) in_box: HashSet<DeviceId>,
    pub(super) channels: HashSet<String>,
    /// Groups subscribed to (`{"groups":[...]}`): their devices, as
    /// membership is now, within the scope.
    pub(super) groups: HashSet<Box<str>>,
    pub(super) pending: Option<Pending>,
    /// What this connection has been sent of every partition's event log:
    /// the floor of its first subscribe (then of its latest resync),
    /// moved by each event sent since. Each event frame carries it, and a
    /// resync resumes from it.
    pub(super) cursor: Option<Cursor>,
    pub(super) sent_events: SentEvents,
}

impl Conn {
    pub(super) fn new(scope: Arc<Scope>, outbox: Arc<Outbox>, signals: Arc<ConnSignals>) -> Self {
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
            groups: HashSet::new(),
            pending: None,
            cursor: None,
            sent_events: SentEvents::default(),
        }
    }

    /// Whether the connection gets `device`, in `groups`, by name, fleet
    /// or group subscription (its viewport aside).
    pub(super) fn selects<S: AsRef<str>>(&self, device: &DeviceId, groups: &[S]) -> bool {
        self.devices.contains(device)
            || ((self.fleet || groups.iter().any(|g| self.groups.contains(g.as_ref())))
                && self.scope.allows_device(device.as_str(), groups))
    }
}

/// The maps looked up once or more per live update: foldhash, seeded per
/// process, where SipHash was a visible part of the fan-out's profile.
pub(super) type FastMap<K, V> = HashMap<K, V, foldhash::fast::RandomState>;
pub(super) type FastSet<K> = HashSet<K, foldhash::fast::RandomState>;

pub(super) type BoxEntry = GeomWithData<Rectangle<[f64; 2]>, ConnId>;

#[derive(Default)]
pub(super) struct State {
    pub(super) conns: FastMap<ConnId, Conn>,
    pub(super) by_device: FastMap<DeviceId, FastSet<ConnId>>,
    pub(super) fleet: FastSet<ConnId>,
    pub(super) boxes: RTree<BoxEntry>,
    pub(super) in_box: FastMap<DeviceId, FastSet<ConnId>>,
    pub(super) by_channel: HashMap<String, FastSet<ConnId>>,
    pub(super) by_group: HashMap<Box<str>, FastSet<ConnId>>,
    /// Every device's groups; replaced whole on a change (see
    /// [`crate::live::groups`]).
    pub(super) members: Arc<Memberships>,
    pub(super) pending: HashSet<ConnId>,
    /// `fieldcast_gateway_subscriptions`, kept with the indexes it counts.
    pub(super) gauges: SubscriptionGauges,
}

/// The R-tree entries of connection `id`'s viewport: one rectangle per
/// plain part of the box, so a box across the 180° meridian is found from
/// either side (the exact test is `BBox::contains`).
fn entries(b: &BBox, id: ConnId) -> impl Iterator<Item = BoxEntry> {
    b.parts().map(move |p| {
        GeomWithData::new(
            Rectangle::from_corners([p.min_lon, p.min_lat], [p.max_lon, p.max_lat]),
            id,
        )
    })
}

fn insert_box(st: &mut State, b: &BBox, id: ConnId) {
    for e in entries(b, id) {
        st.boxes.insert(e);
    }
}

fn remove_box(st: &mut State, b: &BBox, id: ConnId) {
    for e in entries(b, id) {
        st.boxes.remove(&e);
    }
}

/// Whether connection `id`'s live selection wants `u` now, updating its
/// viewport membership for locations.
pub(super) fn wants(st: &mut State, id: ConnId, u: &Update) -> bool {
    let Some(c) = st.conns.get(&id) else {
        return false;
    };
    let device = u.device.as_str();
    let groups = st.members.of(device).clone();
    // A membership change goes to whoever saw the device before it too.
    if let Some(prev) = &u.prev_groups {
        if c.selects(&u.device, prev)
            || (c.in_box.contains(&u.device) && c.scope.allows_device(device, prev))
        {
            return true;
        }
    }
    if c.selects(&u.device, &groups) {
        if let (Some(b), Some((lon, lat))) = (c.bbox, u.pos) {
            let inside = b.contains(lon, lat) && c.scope.allows_device(device, &groups);
            set_in_box(st, id, &u.device, inside);
        }
        return true;
    }
    let Some(b) = c.bbox else { return false };
    if !c.scope.allows_device(device, &groups) {
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

pub(super) fn set_in_box(st: &mut State, id: ConnId, device: &DeviceId, inside: bool) {
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

pub(super) fn add_selection(st: &mut State, id: ConnId, sel: &Selection) {
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
    let mut new_groups = Vec::new();
    for g in &sel.groups {
        if c.groups.insert(g.clone()) {
            new_groups.push(g.clone());
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
        st.gauges.device.inc();
    }
    for ch in new_channels {
        st.by_channel.entry(ch).or_default().insert(id);
        st.gauges.channel.inc();
    }
    for g in new_groups {
        st.by_group.entry(g).or_default().insert(id);
    }
    if new_fleet {
        st.fleet.insert(id);
        st.gauges.fleet.inc();
    }
    if let Some(b) = new_box {
        match old_box {
            Some(Some(old)) => remove_box(st, &old, id),
            _ => {
                st.gauges.bbox.inc();
            }
        }
        insert_box(st, &b, id);
        // Devices of the old viewport that the new one does not hold are
        // forgotten; the new snapshot says what is inside now.
        clear_in_box(st, id);
    }
}

/// Forgets which devices connection `id`'s viewport holds.
pub(super) fn clear_in_box(st: &mut State, id: ConnId) {
    let old: Vec<DeviceId> = st
        .conns
        .get(&id)
        .map(|c| c.in_box.iter().cloned().collect())
        .unwrap_or_default();
    for d in old {
        set_in_box(st, id, &d, false);
    }
}

pub(super) fn remove_selection(st: &mut State, id: ConnId, sel: &Selection) {
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
    let mut gone_groups = Vec::new();
    for g in &sel.groups {
        if c.groups.remove(g) {
            gone_groups.push(g.clone());
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
    let in_box: Vec<DeviceId> = if gone_box.is_some() {
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
        st.gauges.device.dec();
    }
    for ch in gone_channels {
        if let Some(s) = st.by_channel.get_mut(&ch) {
            s.remove(&id);
            if s.is_empty() {
                st.by_channel.remove(&ch);
            }
        }
        st.gauges.channel.dec();
    }
    for g in gone_groups {
        if let Some(s) = st.by_group.get_mut(&g) {
            s.remove(&id);
            if s.is_empty() {
                st.by_group.remove(&g);
            }
        }
    }
    if gone_fleet {
        st.fleet.remove(&id);
        st.gauges.fleet.dec();
    }
    if let Some(b) = gone_box {
        remove_box(st, &b, id);
        for d in in_box {
            set_in_box(st, id, &d, false);
        }
        st.gauges.bbox.dec();
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::super::{Activation, Hub, Mode, Selection, Update};
    use crate::auth::Scope;
    use crate::live::outbox::{Item, Kind, Out, Outbox};
    use fieldcast_core::geo::BBox;
    use fieldcast_core::DeviceId;

    fn loc(device: &str, ts: i64, lon: f64, lat: f64) -> Update {
        Update {
            kind: Kind::Location,
            device: DeviceId::parse(device).unwrap(),
            ts,
            pos: Some((lon, lat)),
            event: None,
            event_key: None,
            prev_groups: None,
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

    #[test]
    fn a_box_across_the_meridian_gets_both_sides_and_leaves_nothing() {
        let hub = Hub::new(1000, &Default::default());
        let o = Arc::new(Outbox::new(100, Arc::default()));
        let r = hub.register(Arc::new(Scope::unrestricted()), o.clone(), Arc::default());
        let wrapped = BBox::new([179.0, -1.0, -179.0, 1.0]).unwrap();
        let sel = Selection {
            bbox: Some(wrapped),
            ..Default::default()
        };
        hub.begin(r.id, sel, Mode::Subscribe);
        hub.activate(r.id, Activation::default());
        assert_eq!(hub.lock().boxes.size(), 2);
        hub.dispatch(loc("e", 1, 179.5, 0.0)); // east of the meridian: inside
        hub.dispatch(loc("w", 1, -179.5, 0.0)); // west of it: inside
        hub.dispatch(loc("x", 1, 0.0, 0.0)); // the other side of the world
        hub.dispatch(loc("e", 2, 178.0, 0.0)); // leaves: sent once
        hub.dispatch(loc("e", 3, 177.0, 0.0)); // outside: not sent
        hub.dispatch(loc("w", 2, 180.0, 0.5)); // crosses the meridian, inside
        assert_eq!(texts(&o), ["e@1", "w@1", "e@2", "w@2"]);

        // A new plain box replaces both parts.
        let plain = Selection {
            bbox: Some(BBox::new([0.0, 0.0, 1.0, 1.0]).unwrap()),
            ..Default::default()
        };
        hub.begin(r.id, plain, Mode::Subscribe);
        hub.activate(r.id, Activation::default());
        assert_eq!(hub.lock().boxes.size(), 1);
        hub.dispatch(loc("w", 3, -179.5, 0.0));
        assert!(texts(&o).is_empty());

        // And a wrapped one replaces it again; dropping the connection
        // removes every part.
        hub.begin(
            r.id,
            Selection {
                bbox: Some(wrapped),
                ..Default::default()
            },
            Mode::Subscribe,
        );
        hub.activate(r.id, Activation::default());
        assert_eq!(hub.lock().boxes.size(), 2);
        drop(r);
        assert_eq!(hub.connections(), 0);
        assert_eq!(hub.lock().boxes.size(), 0);
        assert!(hub.lock().in_box.is_empty());
    }
}
