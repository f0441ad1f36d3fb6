// Unit tests of the page's pure logic: `npm test` in web/.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { Store, mercator } from '../src/store.js';
import { positionAt, tracksCsv } from '../src/track-math.js';

test('state: offline when the device says so, stale when silent, else online', () => {
  const s = new Store(60000);
  const now = Date.now();
  s.putState({ device: 'a', lat: 1, lon: 2, ts: now, online: true, last_seen: now });
  s.putState({ device: 'b', lat: 1, lon: 2, ts: now - 120000, online: true, last_seen: now - 120000 });
  s.putState({ device: 'c', lat: 1, lon: 2, ts: now, online: false, last_seen: now });
  assert.deepEqual(['a', 'b', 'c'].map((id) => s.get(id).state), ['online', 'stale', 'offline']);
  assert.equal(s.tick(now + 61000), true, 'a goes stale as time passes');
  assert.equal(s.get('a').state, 'stale');
  s.status({ device: 'c', ts: now + 1, online: true });
  assert.equal(s.get('c').state, 'online');
});

test('hot state only moves forward; a fix without optional fields clears them', () => {
  const s = new Store(60000);
  s.location({ device: 'a', ts: 10, lat: 1, lon: 1, heading: 90, speed: 3 });
  s.location({ device: 'a', ts: 5, lat: 9, lon: 9 });
  assert.equal(s.get('a').lat, 1, 'older fix ignored');
  s.location({ device: 'a', ts: 11, lat: 2, lon: 2 });
  assert.equal(s.get('a').heading, null);
  s.status({ device: 'a', ts: 20, online: true, battery: 80 });
  s.status({ device: 'a', ts: 30, online: false });
  assert.equal(s.get('a').battery, 80, 'battery is last known');
  s.status({ device: 'a', ts: 25, online: true });
  assert.equal(s.get('a').online, false, 'older status ignored');
  assert.equal(s.get('a').last_seen, 30);
});

test('mercator: the equator and Greenwich are the middle of the world', () => {
  assert.deepEqual(mercator(0, 0), [0.5, 0.5]);
  const [x, y] = mercator(85.0511, 180);
  assert.equal(x, 1);
  assert.ok(Math.abs(y) < 1e-4);
});

test('replay position interpolates between fixes and clamps at the ends', () => {
  const pts = [{ ts: 0, lat: 0, lon: 0 }, { ts: 10, lat: 10, lon: 20 }, { ts: 20, lat: 10, lon: 30 }];
  assert.deepEqual(positionAt(pts, -5), [0, 0]);
  assert.deepEqual(positionAt(pts, 5), [5, 10]);
  assert.deepEqual(positionAt(pts, 15), [10, 25]);
  assert.deepEqual(positionAt(pts, 99), [10, 30]);
  assert.equal(positionAt([], 1), null);
});

test('CSV export: one header, RFC 3339 times, empty optional fields, quoted ids', () => {
  const csv = tracksCsv([
    { device: 'a', points: [{ ts: 0, lat: 51.5, lon: -0.12, alt: null, speed: 3, heading: 90, accuracy: null }] },
    { device: 'b,c', points: [{ ts: 1000, lat: 1, lon: 2 }] },
  ]);
  assert.equal(csv, 'device,ts,lat,lon,alt,speed,heading,accuracy\na,1970-01-01T00:00:00.000Z,51.5,-0.12,,3,90,\n"b,c",1970-01-01T00:00:01.000Z,1,2,,,,\n');
});
