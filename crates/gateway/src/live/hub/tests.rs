use std::collections::HashMap;

use super::*;
use crate::cursor::Position;
use crate::live::outbox::Out;
use crate::live::sent::EventKey;

fn id(s: &str) -> DeviceId {
    DeviceId::parse(s).unwrap()
}

fn loc(device: &str, ts: i64, lon: f64, lat: f64) -> Update {
    Update {
        kind: Kind::Location,
        device: id(device),
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

fn conn(hub: &Arc<Hub>) -> (Registration, Arc<Outbox>) {
    let o = Arc::new(Outbox::new(100, Arc::default()));
    let r = hub.register(Arc::new(Scope::unrestricted()), o.clone(), Arc::default());
    (r, o)
}

#[test]
fn buffered_updates_older_than_the_snapshot_are_dropped() {
    let hub = Hub::new(1000, &Default::default());
    let (r, o) = conn(&hub);
    let sel = Selection {
        devices: vec![id("a")],
        ..Default::default()
    };
    hub.begin(r.id, sel, Mode::Subscribe);
    hub.dispatch(loc("a", 1, 0.0, 0.0));
    hub.dispatch(loc("a", 2, 0.0, 0.0));
    hub.dispatch(loc("b", 2, 0.0, 0.0));
    let mut snapshot_ts = HashMap::new();
    snapshot_ts.insert(id("a"), (Some(1), None));
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
    let hub = Hub::new(1000, &Default::default());
    let (r, o) = conn(&hub);
    let sel = Selection {
        bbox: Some(BBox::new([0.0, 0.0, 1.0, 1.0]).unwrap()),
        ..Default::default()
    };
    hub.begin(r.id, sel, Mode::Subscribe);
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

#[test]
fn live_updates_the_snapshot_already_showed_are_dropped() {
    let hub = Hub::new(1000, &Default::default());
    let (r, o) = conn(&hub);
    let sel = Selection {
        devices: vec![id("a")],
        ..Default::default()
    };
    hub.begin(r.id, sel, Mode::Subscribe);
    let mut snapshot_ts = HashMap::new();
    snapshot_ts.insert(id("a"), (Some(5), None));
    hub.activate(
        r.id,
        Activation {
            snapshot_ts,
            ..Default::default()
        },
    );
    // Read by the snapshot, dispatched by the feed only now.
    hub.dispatch(loc("a", 4, 0.0, 0.0));
    hub.dispatch(loc("a", 5, 0.0, 0.0));
    hub.dispatch(loc("a", 6, 0.0, 0.0));
    assert_eq!(texts(&o), ["a@6"]);
}

/// An event at `pos` (`<epoch>:<id>`) of a one-partition log.
fn event(device: &str, pos: &str) -> Update {
    Update {
        kind: Kind::Event,
        device: id(device),
        ts: 0,
        pos: None,
        event: Some(EventPos {
            partition: 0,
            at: pos.parse().unwrap(),
        }),
        // One event per position: the id its position.
        event_key: Some(EventKey::of(device, pos)),
        prev_groups: None,
        item: Item {
            out: Out::Text(msg(device, pos).into()),
            kind: Kind::Event,
            rx_ms: 0,
        },
    }
}

fn msg(device: &str, pos: &str) -> String {
    format!(r#"{{"d":"{device}","at":"{pos}"}}"#)
}

/// The one-partition cursor at `pos`.
fn cur(pos: &str) -> Cursor {
    Cursor::new(vec![pos.parse::<Position>().unwrap()])
}

/// The frame of the event at `pos` sent with the cursor at `after`.
fn sent(device: &str, pos: &str, after: &str) -> String {
    fieldcast_core::live::with_cursor(&msg(device, pos), &cur(after).encode())
}

const E1: &str = "00000000000000e1";
const E2: &str = "00000000000000e2";

#[test]
fn event_floors_and_resume_points_stay_within_one_life() {
    let hub = Hub::new(1000, &Default::default());
    let (r, o) = conn(&hub);
    assert_eq!(hub.resume_cursor(r.id), None);
    let sel = Selection {
        devices: vec![id("a")],
        ..Default::default()
    };
    hub.begin(r.id, sel, Mode::Subscribe);
    let mut snapshot_ts = HashMap::new();
    snapshot_ts.insert(id("a"), (None, None));
    let floor = cur(&format!("{E1}:5-0"));
    hub.activate(
        r.id,
        Activation {
            snapshot_ts,
            cursor_floor: Some(floor.clone()),
            ..Default::default()
        },
    );
    // Nothing dispatched yet: a resync resumes from the subscribe's floor.
    assert_eq!(hub.resume_cursor(r.id), Some(floor.clone()));
    // The feed behind the snapshot: already covered, and not a step back.
    hub.dispatch(event("a", &format!("{E1}:3-0")));
    assert_eq!(hub.resume_cursor(r.id), Some(floor));
    hub.dispatch(event("a", &format!("{E1}:7-0")));
    assert_eq!(hub.resume_cursor(r.id), Some(cur(&format!("{E1}:7-0"))));
    // The log started over: a smaller id of the new life is not behind
    // the floor, and it is where a resync resumes.
    hub.dispatch(event("a", &format!("{E2}:1-0")));
    assert_eq!(hub.resume_cursor(r.id), Some(cur(&format!("{E2}:1-0"))));
    let (e7, e2) = (format!("{E1}:7-0"), format!("{E2}:1-0"));
    assert_eq!(texts(&o), [sent("a", &e7, &e7), sent("a", &e2, &e2)]);
}

/// Pins the flake of `epoch.rs` (an event sent twice after a resync): a
/// fleet resync whose snapshot was read before a device's first event, and
/// whose replay (read after it) sent that event, must not send it again
/// when it arrives late on the feed — the fleet floor covers devices the
/// snapshot never saw. Events after the floor still go out.
#[test]
fn a_fleet_floor_covers_devices_the_snapshot_did_not_see() {
    let hub = Hub::new(1000, &Default::default());
    let (r, o) = conn(&hub);
    let fleet = Selection {
        fleet: true,
        ..Default::default()
    };
    hub.begin(r.id, fleet, Mode::Subscribe);
    // The snapshot saw no device; the replay sent b's event 5-0.
    hub.dispatch(event("b", &format!("{E1}:5-0")));
    hub.activate(
        r.id,
        Activation {
            cursor_floor: Some(cur(&format!("{E1}:5-0"))),
            ..Default::default()
        },
    );
    hub.dispatch(event("b", &format!("{E1}:5-0")));
    hub.dispatch(event("c", &format!("{E1}:4-0")));
    hub.dispatch(event("b", &format!("{E1}:6-0")));
    let e6 = format!("{E1}:6-0");
    assert_eq!(texts(&o), [sent("b", &e6, &e6)]);
}

/// The other side of the same floor: a new device subscribe on a
/// connection that already gets the fleet live does not hold back the
/// fleet's late events (the subscribe's replay did not cover them).
#[test]
fn a_new_subscribe_does_not_floor_what_the_connection_already_gets() {
    let hub = Hub::new(1000, &Default::default());
    let (r, o) = conn(&hub);
    let fleet = Selection {
        fleet: true,
        ..Default::default()
    };
    hub.begin(r.id, fleet, Mode::Subscribe);
    hub.activate(
        r.id,
        Activation {
            cursor_floor: Some(cur(&format!("{E1}:1-0"))),
            ..Default::default()
        },
    );
    let one = Selection {
        devices: vec![id("a")],
        ..Default::default()
    };
    hub.begin(r.id, one, Mode::Subscribe);
    hub.activate(
        r.id,
        Activation {
            cursor_floor: Some(cur(&format!("{E1}:9-0"))),
            ..Default::default()
        },
    );
    hub.dispatch(event("a", &format!("{E1}:8-0")));
    hub.dispatch(event("b", &format!("{E1}:7-0")));
    // The connection's cursor stays its fleet subscribe's (1-0) until
    // events move it: the device subscribe's floor (9-0) says nothing of
    // what the fleet selection was sent.
    let (e8, e7) = (format!("{E1}:8-0"), format!("{E1}:7-0"));
    assert_eq!(texts(&o), [sent("a", &e8, &e8), sent("b", &e7, &e8)]);
}

/// A connection's cursor is its own: each partition at what *it* was sent
/// (or its floor), however far another connection's has gone.
#[test]
fn each_connection_gets_its_own_cursor_in_every_partition() {
    let hub = Hub::new(1000, &Default::default());
    let two = |a: &str, b: &str| {
        Cursor::new(vec![
            a.parse::<Position>().unwrap(),
            b.parse::<Position>().unwrap(),
        ])
    };
    let at = |device: &str, partition: usize, pos: &str| Update {
        event: Some(EventPos {
            partition,
            at: pos.parse().unwrap(),
        }),
        ..event(device, pos)
    };
    let subscribe = |device: &str, floor: Cursor| {
        let (r, o) = conn(&hub);
        hub.begin(
            r.id,
            Selection {
                devices: vec![id(device)],
                ..Default::default()
            },
            Mode::Subscribe,
        );
        hub.activate(
            r.id,
            Activation {
                cursor_floor: Some(floor),
                ..Default::default()
            },
        );
        (r, o)
    };
    let (p5, p9) = (format!("{E1}:5-0"), format!("{E1}:9-0"));
    let (ra, oa) = subscribe("a", two(&p5, &p5));
    let (rb, ob) = subscribe("b", two(&p5, &p9));
    hub.dispatch(at("a", 0, &format!("{E1}:6-0")));
    hub.dispatch(at("b", 1, &format!("{E1}:10-0")));
    let frame = |device: &str, pos: &str, c: &Cursor| {
        fieldcast_core::live::with_cursor(&msg(device, pos), &c.encode())
    };
    let a_after = two(&format!("{E1}:6-0"), &p5);
    let b_after = two(&p5, &format!("{E1}:10-0"));
    assert_eq!(texts(&oa), [frame("a", &format!("{E1}:6-0"), &a_after)]);
    assert_eq!(texts(&ob), [frame("b", &format!("{E1}:10-0"), &b_after)]);
    assert_eq!(hub.resume_cursor(ra.id), Some(a_after));
    assert_eq!(hub.resume_cursor(rb.id), Some(b_after));
}

fn groups(names: &[&str]) -> crate::live::groups::Groups {
    names.iter().map(|n| Box::<str>::from(*n)).collect()
}

/// A token scope with only a `groups` claim.
fn group_scope(names: &[&str]) -> Arc<Scope> {
    let claims = serde_json::json!({"sub": "t", "exp": 4_000_000_000u64, "groups": names});
    let token = jsonwebtoken::encode(
        &jsonwebtoken::Header::default(),
        &claims,
        &jsonwebtoken::EncodingKey::from_secret(b"k").unwrap(),
    )
    .unwrap();
    Arc::new(
        crate::auth::Authenticator::jwt(b"k")
            .authenticate(Some(&token))
            .unwrap(),
    )
}

/// Pins that a device joining a subscribed group while the subscribe's
/// snapshot is read is announced after the snapshot and then followed,
/// and that leaving ends with its `groups` frame.
#[test]
fn a_group_subscription_follows_a_join_during_its_snapshot_and_a_leave() {
    let hub = Hub::new(1000, &Default::default());
    let (r, o) = conn(&hub);
    let sel = Selection {
        groups: vec!["north".into()],
        ..Default::default()
    };
    hub.begin(r.id, sel, Mode::Subscribe);
    hub.dispatch(loc("a", 1, 0.0, 0.0));
    hub.set_groups(&id("a"), groups(&["north"]));
    hub.dispatch(loc("a", 2, 0.0, 0.0));
    hub.activate(r.id, Activation::default());
    assert_eq!(
        texts(&o),
        [
            r#"{"type":"groups","device":"a","groups":["north"]}"#,
            "a@2"
        ]
    );
    hub.set_groups(&id("a"), groups(&[]));
    hub.dispatch(loc("a", 3, 0.0, 0.0));
    assert_eq!(texts(&o), [r#"{"type":"groups","device":"a","groups":[]}"#]);
}

/// Pins the done-criterion of issue #16 in the hub: a token whose groups
/// exclude a device sees it once it joins one of them (by fleet and by
/// viewport), and after it leaves neither gets more than its `groups` frame — the viewport not even
/// as a device "leaving the box".
#[test]
fn a_group_scope_follows_membership_for_fleet_and_viewport() {
    let hub = Hub::new(1000, &Default::default());
    let mut outs = Vec::new();
    for sel in [
        Selection {
            fleet: true,
            ..Default::default()
        },
        Selection {
            bbox: Some(BBox::new([-1.0, -1.0, 1.0, 1.0]).unwrap()),
            ..Default::default()
        },
    ] {
        let o = Arc::new(Outbox::new(100, Arc::default()));
        let r = hub.register(group_scope(&["north"]), o.clone(), Arc::default());
        hub.begin(r.id, sel, Mode::Subscribe);
        hub.activate(r.id, Activation::default());
        outs.push((r, o));
    }
    hub.dispatch(loc("a", 1, 0.0, 0.0));
    for (_, o) in &outs {
        assert!(texts(o).is_empty());
    }
    hub.set_groups(&id("a"), groups(&["north", "south"]));
    hub.dispatch(loc("a", 2, 0.0, 0.0));
    assert_eq!(
        texts(&outs[0].1),
        [
            r#"{"type":"groups","device":"a","groups":["north","south"]}"#,
            "a@2"
        ]
    );
    // The hub knows no position of a device out of a viewport's scope: the
    // viewport gets it with its next location inside.
    assert_eq!(texts(&outs[1].1), ["a@2"]);
    hub.set_groups(&id("a"), groups(&["south"]));
    hub.dispatch(loc("a", 3, 5.0, 5.0));
    hub.dispatch(loc("a", 4, 0.0, 0.0));
    for (_, o) in &outs {
        assert_eq!(
            texts(o),
            [r#"{"type":"groups","device":"a","groups":["south"]}"#]
        );
    }
}

/// Pins: an event the bridge published twice (its dedup key lost in a
/// Redis failover, so logged again at a later position) reaches a
/// connection once, live or after a resync, and does not move its cursor;
/// another connection that was not sent it yet still gets it.
#[test]
fn an_event_published_twice_reaches_each_connection_once() {
    let metrics = crate::metrics::Metrics::new();
    let hub = Hub::new(1000, &metrics);
    let sel = || Selection {
        devices: vec![id("a")],
        ..Default::default()
    };
    let activate = |id, floor: &str| {
        hub.activate(
            id,
            Activation {
                cursor_floor: Some(cur(floor)),
                ..Default::default()
            },
        )
    };
    let (r, o) = conn(&hub);
    hub.begin(r.id, sel(), Mode::Subscribe);
    activate(r.id, &format!("{E1}:1-0"));
    let (p2, p7, p8) = (
        format!("{E1}:2-0"),
        format!("{E1}:7-0"),
        format!("{E1}:8-0"),
    );
    let copy = |pos: &str| Update {
        event: Some(EventPos {
            partition: 0,
            at: pos.parse().unwrap(),
        }),
        ..event("a", &p2)
    };
    hub.dispatch(event("a", &p2));
    // The copy, live: dropped, the cursor stays at the first.
    hub.dispatch(copy(&p7));
    hub.dispatch(event("a", &p8));
    assert_eq!(texts(&o), [sent("a", &p2, &p2), sent("a", &p8, &p8)]);
    assert_eq!(metrics.duplicate_events_dropped.get(), 1);

    // Across a resync: the copy buffered while the snapshot is read.
    hub.begin(r.id, sel(), Mode::Resync);
    hub.dispatch(copy(&format!("{E1}:9-0")));
    activate(r.id, &p8);
    assert_eq!(texts(&o), Vec::<String>::new());
    assert_eq!(metrics.duplicate_events_dropped.get(), 2);
    // And in a replay.
    assert!(!hub.first_send(r.id, EventKey::of("a", &p2)));
    assert!(hub.first_send(r.id, EventKey::of("a", "new")));
    assert_eq!(metrics.duplicate_events_dropped.get(), 3);

    // A connection that subscribed between the two copies, its floor
    // before the copy, was never sent the event: it gets the copy.
    let (r2, o2) = conn(&hub);
    hub.begin(r2.id, sel(), Mode::Subscribe);
    hub.activate(
        r2.id,
        Activation {
            cursor_floor: Some(cur(&p2)),
            ..Default::default()
        },
    );
    hub.dispatch(copy(&p7));
    assert_eq!(texts(&o2), [sent("a", &p2, &p7)]);
}

fn status(device: &str, ts: i64) -> Update {
    let mut u = loc(device, ts, 0.0, 0.0);
    u.kind = Kind::Status;
    u.pos = None;
    u.item.kind = Kind::Status;
    u.item.out = Out::Text(format!("{device}!{ts}").into());
    u
}

/// A snapshot's floors last only until the feed has passed them: each
/// device's location and status floor goes with the first newer update,
/// and the connection stops paying a look-up per update once all have.
#[test]
fn floors_go_as_the_feed_passes_them() {
    let hub = Hub::new(1000, &Default::default());
    let (r, o) = conn(&hub);
    let sel = Selection {
        devices: vec![id("a"), id("b")],
        ..Default::default()
    };
    hub.begin(r.id, sel, Mode::Subscribe);
    let mut snapshot_ts = HashMap::new();
    snapshot_ts.insert(id("a"), (Some(5), Some(3)));
    snapshot_ts.insert(id("b"), (Some(5), None));
    hub.activate(
        r.id,
        Activation {
            snapshot_ts,
            ..Default::default()
        },
    );
    let floors = |f: fn(&Floors) -> usize| hub.lock().conns[&r.id].floors.as_ref().map(f);
    hub.dispatch(loc("a", 5, 0.0, 0.0));
    hub.dispatch(loc("a", 6, 0.0, 0.0));
    assert_eq!(
        floors(|f| f.location.len()),
        Some(1),
        "b's location floor stays"
    );
    hub.dispatch(loc("b", 4, 0.0, 0.0));
    hub.dispatch(loc("b", 7, 0.0, 0.0));
    assert_eq!(floors(|f| f.location.len()), Some(0));
    assert_eq!(
        floors(|f| f.status.len()),
        Some(1),
        "a's status floor stays"
    );
    hub.dispatch(status("a", 3));
    hub.dispatch(status("a", 4));
    assert_eq!(
        floors(|f| f.status.len()),
        None,
        "all passed: the floors are gone"
    );
    // Updates behind a passed floor cannot come (the feed is in order per
    // device), so what is sent is what a connection without floors gets.
    hub.dispatch(loc("a", 8, 0.0, 0.0));
    assert_eq!(texts(&o), ["a@6", "b@7", "a!4", "a@8"]);
}
