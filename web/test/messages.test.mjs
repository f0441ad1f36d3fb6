// The page's message handler (src/app/messages.js), called as the socket
// calls it, with a real Store and a feed that records what it was given.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { Store } from '../src/store.js';
import { createMessageHandler } from '../src/app/messages.js';

/** A handler over a fresh store; `changes` records each store.changed(listChanged). */
function setup(mode = 'fleet') {
  const store = new Store(60000);
  const changes = [];
  const changed = store.changed.bind(store);
  store.changed = (listChanged = true) => {
    changes.push(listChanged);
    changed(listChanged);
  };
  const feed = { events: [], add(ev, live) { this.events.push({ ev, live }); } };
  const moved = [];
  const noticed = [];
  const { handle, stats } = createMessageHandler({
    store, feed, mode, onLocation: (id) => moved.push(id), onEvent: (ev) => noticed.push(ev.id),
  });
  return { store, feed, handle, stats, changes, moved, noticed };
}

const state = (device, extra = {}) => ({
  device, lat: 52.5, lon: 13.4, ts: Date.now(), speed: null, heading: null, accuracy: null, alt: null,
  online: true, battery: null, signal: null, last_seen: Date.now(), ...extra,
});

test('snapshot in fleet mode is the whole world: devices not in it are removed', () => {
  const { store, handle, changes } = setup('fleet');
  handle({ type: 'snapshot', devices: [state('a'), state('b'), state('c')] });
  handle({ type: 'snapshot', devices: [state('b', { battery: 40 }), state('d')] });
  assert.deepEqual([...store.devices.keys()].sort(), ['b', 'd']);
  assert.equal(store.get('b').battery, 40, 'the snapshot is fresh truth');
  assert.deepEqual(changes, [true, true], 'one change per snapshot, the list re-sorts');
});

test('a fleet snapshot in parts keeps every part: only the last part drops the devices in none', () => {
  const { store, handle } = setup('fleet');
  handle({ type: 'snapshot', devices: [state('old'), state('a')] });
  handle({ type: 'snapshot', ref: '1', devices: [state('a'), state('b')], more: true });
  assert.ok(store.get('old'), 'nothing is dropped before the last part');
  handle({ type: 'snapshot', ref: '1', devices: [state('c')] });
  assert.deepEqual([...store.devices.keys()].sort(), ['a', 'b', 'c']);
});

test('a snapshot cut off by a reconnect does not keep its devices in the next one', () => {
  const { store, handle } = setup('fleet');
  handle({ type: 'snapshot', ref: '1', devices: [state('a'), state('b')], more: true });
  handle({ type: 'snapshot', ref: '2', devices: [state('b')] });
  assert.deepEqual([...store.devices.keys()], ['b']);
});

test('snapshot in viewport mode adds to what the page knows', () => {
  const { store, handle } = setup('bbox');
  handle({ type: 'snapshot', devices: [state('a'), state('b')] });
  handle({ type: 'snapshot', devices: [state('c')] });
  assert.deepEqual([...store.devices.keys()].sort(), ['a', 'b', 'c']);
});

test('location of a new device adds it; of a known one moves it without re-sorting the list', () => {
  const { store, handle, changes, moved } = setup();
  const ts = Date.now();
  handle({ type: 'location', device: 'van-1', ts, lat: 51.5, lon: -0.12, heading: 90, speed: 3 });
  const d = store.get('van-1');
  assert.deepEqual([d.lat, d.lon, d.heading, d.speed, d.last_seen], [51.5, -0.12, 90, 3, ts]);
  assert.ok(d.mx != null && d.my != null, 'projected for the canvas');
  handle({ type: 'location', device: 'van-1', ts: ts + 1000, lat: 51.6, lon: -0.1 });
  assert.equal(store.get('van-1').lat, 51.6);
  assert.deepEqual(changes, [true, false], 'a new id re-sorts the list, a move does not');
  assert.deepEqual(moved, ['van-1', 'van-1'], 'the selection is told, to follow it');
});

test('status: online false makes a device offline; battery and signal are kept', () => {
  const { store, handle, changes } = setup();
  const ts = Date.now();
  handle({ type: 'status', device: 'van-2', ts, online: true, battery: 81, signal: -70 });
  assert.equal(store.get('van-2').state, 'online');
  handle({ type: 'status', device: 'van-2', ts: ts + 1, online: false });
  const d = store.get('van-2');
  assert.deepEqual([d.state, d.battery, d.signal, d.last_seen], ['offline', 81, -70, ts + 1]);
  assert.deepEqual(changes, [true, false]);
});

test('event: into the feed as live, and the device is marked seen', () => {
  const { store, feed, handle, changes } = setup();
  const ts = Date.now();
  const ev = { type: 'event', device: 'truck-7', id: 'ev-1', ts, kind: 'panic', severity: 'critical', data: {}, cursor: 'c1' };
  handle(ev);
  assert.deepEqual(feed.events, [{ ev, live: true }]);
  const d = store.get('truck-7');
  assert.equal(d.last_seen, ts);
  assert.equal(d.lat, null, 'an event has no position');
  handle({ ...ev, id: 'ev-2', ts: ts - 5000 });
  assert.equal(store.get('truck-7').last_seen, ts, 'an older event does not move last seen back');
  assert.deepEqual(changes, [true, false]);
});

test('fence transitions and alerts are events like any other; each event is noticed after the feed has it', () => {
  const { feed, handle, noticed } = setup();
  const ts = Date.now();
  handle({ type: 'event', device: 'van-1', id: 'geofence-enter-4-1', ts, kind: 'geofence_enter', severity: 'info', data: { geofence: 4, name: 'Depot' } });
  handle({ type: 'event', device: 'van-1', id: 'a-1', ts, kind: 'alert.overspeed', severity: 'critical', data: { rule: 3 } });
  assert.deepEqual(feed.events.map((e) => [e.ev.kind, e.live]), [['geofence_enter', true], ['alert.overspeed', true]]);
  assert.deepEqual(noticed, ['geofence-enter-4-1', 'a-1'], 'the fences see each event (an unknown fence reloads them)');
});

test('errors: cursor_expired is expected (the connection reloads history), others are logged', (t) => {
  const { store, feed, handle, stats, changes } = setup();
  const warn = t.mock.method(console, 'warn', () => {});
  handle({ type: 'error', code: 'cursor_expired', message: 'too old' });
  assert.equal(warn.mock.callCount(), 0);
  handle({ type: 'error', ref: '3', code: 'forbidden', message: 'no' });
  assert.equal(warn.mock.callCount(), 1);
  handle({ type: 'subscribed', ref: '2', cursor: 'c' });
  handle({ type: 'pong', ref: '7' });
  assert.equal(store.devices.size, 0);
  assert.deepEqual(feed.events, []);
  assert.deepEqual(changes, []);
  assert.equal(stats.messages, 4, 'every frame is counted');
});
