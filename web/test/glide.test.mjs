// Unit tests of the glide math (src/glide.js) with a real Store and a
// hand-driven clock: where a marker is drawn between two fixes, and when it
// is not gliding at all.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { Store, mercator } from '../src/store.js';
import {
  Glider, MAX_INTERVAL_MS, MIN_INTERVAL_MS, glideAt, mercatorMetres, nextInterval, plausibleStep, turn,
} from '../src/glide.js';

/** A store whose fixes go through a glider on the clock `now.t`. */
function world({ staleMs = 120000, enabled = true } = {}) {
  const now = { t: 1000 };
  const store = new Store(staleMs);
  const glider = new Glider({ enabled, clock: () => now.t });
  store.onMove = (d, mx0, my0, ts0, h0) => glider.fix(d, mx0, my0, ts0, h0, store.staleMs);
  store.onPut = (d) => glider.stop(d);
  return { now, store, glider };
}

const near = (a, b, eps = 1e-12) => Math.abs(a - b) <= eps;

test('interval: the first spacing, then a moving average, clamped', () => {
  assert.equal(nextInterval(null, 1000), 1000);
  assert.equal(nextInterval(1000, 2000), 1300);
  assert.equal(nextInterval(null, 60000), MAX_INTERVAL_MS, 'a 1-minute reporter glides at most MAX_INTERVAL_MS');
  assert.equal(nextInterval(null, 10), MIN_INTERVAL_MS);
  assert.equal(nextInterval(MAX_INTERVAL_MS, 60000), MAX_INTERVAL_MS);
});

test('metres on the Mercator plane: a degree of latitude, a degree of longitude at 60°', () => {
  const [x0, y0] = mercator(0, 0);
  const [x1, y1] = mercator(1, 0);
  assert.ok(Math.abs(mercatorMetres(x0, y0, x1, y1) - 111320) < 300);
  const [a, b] = mercator(60, 10);
  const [c, e] = mercator(60, 11);
  assert.ok(Math.abs(mercatorMetres(a, b, c, e) - 55660) < 200);
  // Across the 180° meridian: the short way.
  const [w, wy] = mercator(0, 179.9);
  const [v, vy] = mercator(0, -179.9);
  assert.ok(mercatorMetres(w, wy, v, vy) < 23000);
});

test('plausible step: by speed, with a floor and GPS noise', () => {
  assert.equal(plausibleStep(60, 1000, 10), true);
  assert.equal(plausibleStep(150, 1000, null), true, '70 m/s floor + 100 m noise');
  assert.equal(plausibleStep(200, 1000, null), false);
  assert.equal(plausibleStep(550, 1000, 250), true, 'a plane at 250 m/s');
  assert.equal(plausibleStep(50000, 4000, 20), false, '50 km in 4 s is a jump');
});

test('turn: the shorter way round', () => {
  assert.equal(turn(350, 10, 0.5), 0);
  assert.equal(turn(10, 350, 0.5), 0);
  assert.equal(turn(90, 180, 0.5), 135);
  assert.equal(turn(null, 45, 0.3), 45);
  assert.equal(turn(45, null, 0.3), 45);
});

test('a marker glides along the line between its fixes over the interval, turning to its heading', () => {
  const { now, store, glider } = world();
  const t = Date.now();
  store.location({ device: 'a', ts: t - 2000, lat: 52.5, lon: 13.4, heading: 0, speed: 10 });
  const d0 = { mx: store.get('a').mx, my: store.get('a').my };
  assert.equal(store.get('a').glide, null, 'a first fix has nothing to glide from');
  store.location({ device: 'a', ts: t, lat: 52.5002, lon: 13.4002, heading: 90, speed: 10 });
  const d = store.get('a');
  assert.equal(d.interval, 2000);
  assert.ok(d.glide, 'gliding');
  const at = (ms) => {
    now.t = 1000 + ms;
    const p = glider.position(d, now.t);
    return p && { ...p };
  };
  const start = at(0);
  assert.ok(near(start.x, d0.mx) && near(start.y, d0.my), 'starts at the previous fix');
  assert.equal(start.heading, 0);
  const mid = at(1000);
  assert.ok(near(mid.x, (d0.mx + d.mx) / 2) && near(mid.y, (d0.my + d.my) / 2), 'half way at half the interval');
  assert.equal(mid.heading, 90, 'turned within the first half');
  assert.equal(at(500).heading, 45);
  assert.equal(glider.active(1000 + 1999), true);
  assert.equal(at(2000), null, 'arrived: drawn at the fix');
  assert.equal(d.glide, null);
  assert.equal(glider.active(now.t), false);
});

test('a fix mid-glide starts the next glide where the marker is drawn, not at the old fix', () => {
  const { now, store, glider } = world();
  const t = Date.now();
  store.location({ device: 'a', ts: t - 2000, lat: 10, lon: 10, speed: 20 });
  store.location({ device: 'a', ts: t - 1000, lat: 10.0001, lon: 10, speed: 20 });
  now.t += 500;
  const drawn = { ...glider.position(store.get('a'), now.t) };
  store.location({ device: 'a', ts: t, lat: 10.0002, lon: 10, speed: 20 });
  const g = store.get('a').glide;
  assert.ok(near(g.x0, drawn.x) && near(g.y0, drawn.y));
});

test('no glide: a jump, a stale gap, an offline device, a late fix, gliding off, clusters', () => {
  const t = Date.now();
  {
    const { store, glider } = world();
    store.location({ device: 'j', ts: t - 4000, lat: 52.5, lon: 13.4, speed: 10 });
    store.location({ device: 'j', ts: t, lat: 53.0, lon: 13.4, speed: 10 }); // 55 km in 4 s
    assert.equal(store.get('j').glide, null, 'a jump is shown at once');
    assert.equal(glider.stats.jumps, 1);
  }
  {
    const { store } = world({ staleMs: 60000 });
    store.location({ device: 's', ts: t - 90000, lat: 52.5, lon: 13.4 });
    store.location({ device: 's', ts: t, lat: 52.5001, lon: 13.4 });
    assert.equal(store.get('s').glide, null, 'back after longer than the stale threshold');
  }
  {
    const { store } = world();
    store.status({ device: 'o', ts: t - 5000, online: false });
    store.location({ device: 'o', ts: t - 2000, lat: 52.5, lon: 13.4 });
    store.location({ device: 'o', ts: t, lat: 52.5001, lon: 13.4 });
    assert.equal(store.get('o').state, 'offline');
    assert.equal(store.get('o').glide, null, 'offline devices do not glide');
  }
  {
    const { store } = world({ staleMs: 60000 });
    store.location({ device: 'l', ts: t - 300000, lat: 52.5, lon: 13.4 });
    store.location({ device: 'l', ts: t - 299000, lat: 52.5001, lon: 13.4 });
    assert.equal(store.get('l').state, 'stale');
    assert.equal(store.get('l').glide, null, 'fixes of a stale device (late ones) do not glide');
  }
  {
    const { store } = world({ enabled: false });
    store.location({ device: 'x', ts: t - 1000, lat: 52.5, lon: 13.4 });
    store.location({ device: 'x', ts: t, lat: 52.5001, lon: 13.4 });
    assert.equal(store.get('x').glide, null, 'gliding switched off');
  }
  {
    const { store, glider } = world();
    store.location({ device: 'c', ts: t - 2000, lat: 52.5, lon: 13.4 });
    store.location({ device: 'c', ts: t - 1000, lat: 52.5001, lon: 13.4 });
    assert.ok(store.get('c').glide);
    glider.suspended = true; // the view went into clusters
    glider.stopAll();
    assert.equal(store.get('c').glide, null);
    store.location({ device: 'c', ts: t, lat: 52.5002, lon: 13.4 });
    assert.equal(store.get('c').glide, null, 'no glide while clustered');
  }
});

test('a device going offline or put afresh by a snapshot stops gliding', () => {
  const { now, store, glider } = world();
  const t = Date.now();
  store.location({ device: 'a', ts: t - 2000, lat: 52.5, lon: 13.4 });
  store.location({ device: 'a', ts: t - 1000, lat: 52.5001, lon: 13.4 });
  store.status({ device: 'a', ts: t, online: false });
  assert.equal(glider.position(store.get('a'), now.t), null);
  store.location({ device: 'b', ts: t - 2000, lat: 52.5, lon: 13.4 });
  store.location({ device: 'b', ts: t - 1000, lat: 52.5001, lon: 13.4 });
  store.putState({ device: 'b', lat: 40, lon: 3, ts: t, online: true, last_seen: t });
  assert.equal(store.get('b').glide, null);
  assert.equal(glider.active(now.t), false);
});

test('a glide across the 180° meridian goes the short way and stays in the world', () => {
  const { now, store, glider } = world();
  const t = Date.now();
  store.location({ device: 'a', ts: t - 1000, lat: 0, lon: 179.9995, speed: 50 });
  store.location({ device: 'a', ts: t, lat: 0, lon: -179.9995, speed: 50 });
  const d = store.get('a');
  assert.ok(d.glide, 'about 111 m: a step, not a jump');
  now.t += d.interval / 2;
  const p = glider.position(d, now.t);
  assert.ok(p.x > 0.999999 || p.x < 0.000001, `at the meridian, not across the world (x ${p.x})`);
  const end = {};
  glideAt(d.glide, now.t + d.interval, end);
  assert.ok(near(end.x, d.mx), 'ends at the fix, wrapped into 0..1');
});

test('groups: kept from states (live messages have none), listed sorted', () => {
  const s = new Store(60000);
  s.putState({ device: 'a', lat: 1, lon: 1, ts: 1, groups: ['north', 'night'] });
  s.putState({ device: 'b', lat: 1, lon: 1, ts: 1, groups: [] });
  s.putState({ device: 'c', lat: 1, lon: 1, ts: 1 });
  s.location({ device: 'a', ts: 2, lat: 2, lon: 2 });
  assert.deepEqual(s.get('a').groups, ['north', 'night']);
  assert.deepEqual(s.groups(), ['night', 'north']);
});
