// Geofences on the page (src/geofence.js, src/panel/event-text.js, the
// token's claims in src/api.js): schedules as the server decides them, a
// Feature turned into the shape the fences layer draws and hit-tests, the
// Features the editor posts, and fence/alert events in words.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import {
  circleFeature, circleRing, distance, fenceAt, fenceKind, fenceShape, insideRings, metresToWorld,
  polygonFeature, polygonLabel, scheduleActive, scheduleText, shapeContains, wrapLon,
} from '../src/geofence.js';
import { mercator } from '../src/store.js';
import { eventText } from '../src/panel/event-text.js';
import { tokenClaims } from '../src/api.js';

/** 2025-11-24 is a Monday; `h` hours (UTC) after its midnight (the same instant crates/geofence's tests use). */
const monday = (h) => 1763942400000 + h * 3600000;

// ---- schedules: the cases of crates/geofence/src/schedule.rs, so page and bridge agree

test('schedule: none = always; days alone = those whole days', () => {
  assert.equal(scheduleActive(null, monday(3)), true);
  const s = { days: ['mon'] };
  assert.equal(scheduleActive(s, monday(0)), true);
  assert.equal(scheduleActive(s, monday(23.99)), true);
  assert.equal(scheduleActive(s, monday(24)), false);
  assert.equal(scheduleActive(s, monday(-0.01)), false);
});

test('schedule: from inclusive, to exclusive, only on the days listed', () => {
  const s = { days: ['mon'], from: '07:00', to: '19:00' };
  assert.equal(scheduleActive(s, monday(6.99)), false);
  assert.equal(scheduleActive(s, monday(7)), true);
  assert.equal(scheduleActive(s, monday(18.99)), true);
  assert.equal(scheduleActive(s, monday(19)), false);
  assert.equal(scheduleActive(s, monday(24 + 8)), false, 'Tuesday is not listed');
  assert.equal(scheduleActive({ days: ['MON'], from: '07:00', to: '19:00' }, monday(8)), true, 'day names in any case');
});

test('schedule: a window across midnight belongs to the day it starts', () => {
  const s = { days: ['sun'], from: '22:00', to: '06:00' };
  assert.equal(scheduleActive(s, monday(3)), true, 'Monday 03:00 is the tail of Sunday');
  assert.equal(scheduleActive(s, monday(6)), false);
  assert.equal(scheduleActive(s, monday(23)), false, 'Monday is not listed');
  assert.equal(scheduleActive(s, monday(-1.5)), true, 'Sunday 22:30');
  assert.equal(scheduleActive(s, monday(-2.5)), false);
});

test('schedule: the offset moves the day boundary; 24:00 ends the day', () => {
  const s = { days: ['mon'], from: '00:00', to: '01:00', tz: '+01:00' };
  assert.equal(scheduleActive(s, monday(-0.5)), true, 'Monday 00:30 at +01:00 is Sunday 23:30 UTC');
  assert.equal(scheduleActive(s, monday(0.5)), false);
  const west = { days: ['mon'], tz: '-05:00' };
  assert.equal(scheduleActive(west, monday(4)), false);
  assert.equal(scheduleActive(west, monday(5)), true);
  const evening = { days: ['mon'], from: '18:00', to: '24:00', tz: 'Z' };
  assert.equal(scheduleActive(evening, monday(23.99)), true);
  assert.equal(scheduleActive(evening, monday(24)), false);
  assert.equal(scheduleActive({ days: ['thu'] }, -1), false, 'before 1970: 1969-12-31 was a Wednesday');
  assert.equal(scheduleActive({ days: ['wed'] }, -1), true);
});

test('schedule in words', () => {
  assert.equal(scheduleText(null), 'always');
  assert.equal(scheduleText({ days: ['mon', 'tue', 'wed', 'thu', 'fri', 'sat', 'sun'], from: '00:00', to: '24:00', tz: 'Z' }), 'every day all day UTC');
  assert.equal(scheduleText({ days: ['mon', 'fri'], from: '07:00', to: '19:00', tz: '+01:00' }), 'mon fri 07:00–19:00 (+01:00)');
});

// ---- shapes

const square = (lon, lat, d) => [[lon, lat], [lon + d, lat], [lon + d, lat + d], [lon, lat + d], [lon, lat]];
const feature = (id, geometry, properties = {}) => ({ type: 'Feature', id, geometry, properties: { name: `f${id}`, ...properties } });

test('kinds: polygon, circle (Point + radius), corridor (LineString + width); anything else is not drawn', () => {
  assert.equal(fenceKind(feature(1, { type: 'Polygon', coordinates: [square(0, 0, 1)] })), 'polygon');
  assert.equal(fenceKind(feature(2, { type: 'Point', coordinates: [0, 0] }, { radius: 10 })), 'circle');
  assert.equal(fenceKind(feature(3, { type: 'LineString', coordinates: [[0, 0], [1, 1]] }, { width: 10 })), 'corridor');
  assert.equal(fenceKind(feature(4, { type: 'Point', coordinates: [0, 0] })), null, 'a point without radius');
  assert.equal(fenceShape(feature(5, { type: 'MultiPolygon', coordinates: [] })), null);
});

test('circle ring: every point at the radius (great circle), closed, continuous across 180°', () => {
  const ring = circleRing(60, 10, 5000);
  assert.deepEqual(ring[0], ring[ring.length - 1]);
  for (const [lon, lat] of ring) assert.ok(Math.abs(distance(60, 10, lat, lon) - 5000) < 0.01);
  // At 60° north the ring is twice as wide in longitude as in latitude.
  const lons = ring.map((p) => p[0]);
  const lats = ring.map((p) => p[1]);
  const ratio = (Math.max(...lons) - Math.min(...lons)) / (Math.max(...lats) - Math.min(...lats));
  assert.ok(Math.abs(ratio - 2) < 0.01, `ratio ${ratio}`);
  const east = circleRing(0, 179.99, 10000).map((p) => p[0]);
  assert.ok(Math.max(...east) > 180, 'unwrapped past 180°');
  for (let i = 1; i < east.length; i++) assert.ok(Math.abs(east[i] - east[i - 1]) < 1, 'no jump across the meridian');
});

test('polygon shape: holes are outside, the name goes inside the shape', () => {
  const donut = fenceShape(feature(7, { type: 'Polygon', coordinates: [square(0, 0, 4), square(1, 1, 2)] }, { severity: 'warning' }));
  assert.equal(donut.kind, 'polygon');
  assert.equal(donut.name, 'f7');
  assert.equal(donut.severity, 'warning');
  const at = (lon, lat) => shapeContains(donut, ...mercator(lat, lon));
  assert.equal(at(0.5, 0.5), true);
  assert.equal(at(2, 2), false, 'in the hole');
  assert.equal(at(5, 2), false, 'outside');
  // The centroid is in the hole: the label moves to the widest inside stretch of its row.
  assert.equal(insideRings(donut.rings, ...donut.label), true);
  const plain = fenceShape(feature(8, { type: 'Polygon', coordinates: [square(10, 10, 2)] }));
  const [cx, cy] = mercator(11, 11);
  assert.ok(Math.abs(plain.label[0] - cx) < 1e-9 && Math.abs(plain.label[1] - cy) < 1e-4, 'a convex polygon: its centroid');
});

test('polygon label of a C shape lands on the C', () => {
  const c = [[0, 0], [3, 0], [3, 1], [1, 1], [1, 2], [3, 2], [3, 3], [0, 3], [0, 0]];
  const rings = [c].map((r) => {
    const pts = new Float64Array(r.length * 2);
    r.forEach(([x, y], i) => { pts[2 * i] = x; pts[2 * i + 1] = y; });
    return pts;
  });
  assert.equal(insideRings(rings, ...polygonLabel(rings)), true);
});

test('corridor: the whole width is the band, measured at its latitude', () => {
  // 1 km wide, along the equator, then at 60° north.
  const eq = fenceShape(feature(9, { type: 'LineString', coordinates: [[0, 0], [0.1, 0]] }, { width: 1000 }));
  const north = fenceShape(feature(10, { type: 'LineString', coordinates: [[0, 60], [0.1, 60]] }, { width: 1000 }));
  assert.ok(Math.abs(north.halfWidth / eq.halfWidth - 2) < 1e-6, 'Mercator doubles distances at 60°');
  assert.ok(Math.abs(eq.halfWidth - metresToWorld(500, 0)) < 1e-15);
  const deg = (m) => m / 111195; // metres -> degrees of latitude (mean radius)
  assert.equal(shapeContains(eq, ...mercator(deg(480), 0.05)), true, '480 m off the line');
  assert.equal(shapeContains(eq, ...mercator(deg(520), 0.05)), false, '520 m off the line');
  assert.equal(shapeContains(eq, ...mercator(0, 0.1 + deg(480))), true, 'round end');
  assert.equal(shapeContains(eq, ...mercator(deg(400), 0.1 + deg(400))), false, 'beyond the round end');
  const [lx, ly] = eq.label;
  assert.ok(Math.abs(lx - mercator(0, 0.05)[0]) < 1e-12 && Math.abs(ly - 0.5) < 1e-12, 'the name halfway along');
});

test('a click picks the smallest fence under it, in any copy of the world', () => {
  const big = fenceShape(feature(1, { type: 'Polygon', coordinates: [square(0, 0, 10)] }));
  const small = fenceShape(feature(2, { type: 'Point', coordinates: [5, 5] }, { radius: 20000 }));
  const shapes = [small, big];
  assert.equal(fenceAt(shapes, ...mercator(5, 5)).id, 2);
  assert.equal(fenceAt(shapes, ...mercator(1, 1)).id, 1);
  assert.equal(fenceAt(shapes, ...mercator(20, 20)), null);
  const [x, y] = mercator(5, 5);
  assert.equal(fenceAt(shapes, x + 1, y).id, 2, 'the copy of the world east');
  const dateline = fenceShape(feature(3, { type: 'Point', coordinates: [179.99, 0] }, { radius: 10000 }));
  assert.equal(fenceAt([dateline], ...mercator(0, -179.98)).id, 3, 'a circle across 180°, clicked on the other side');
});

// ---- what the editor posts

test('circle feature: the centre wrapped into -180..180, the radius in whole metres', () => {
  const f = circleFeature({ lat: 52.5, lng: 373.4 }, { lat: 52.5, lng: 373.41 }, { name: 'depot', severity: 'info' });
  assert.deepEqual(f.geometry, { type: 'Point', coordinates: [13.4, 52.5] });
  assert.equal(f.properties.name, 'depot');
  assert.equal(f.properties.radius, Math.round(distance(52.5, 13.4, 52.5, 13.41)));
  assert.equal(f.id, undefined, 'a new fence has no id');
  assert.equal(circleFeature({ lat: 0, lng: 0 }, { lat: 0, lng: 0 }, {}).properties.radius, 1, 'never zero');
});

test('polygon feature: closed, no repeated neighbours, shifted whole into -180..180', () => {
  const f = polygonFeature([
    { lat: 1, lng: 1 }, { lat: 1, lng: 2 }, { lat: 1, lng: 2 }, { lat: 2, lng: 2 }, { lat: 1, lng: 1 },
  ], { name: 'p' });
  assert.deepEqual(f.geometry.coordinates, [[[1, 1], [2, 1], [2, 2], [1, 1]]]);
  const east = polygonFeature([{ lat: 0, lng: 361 }, { lat: 0, lng: 362 }, { lat: 1, lng: 362 }], { name: 'e' });
  assert.deepEqual(east.geometry.coordinates[0], [[1, 0], [2, 0], [2, 1], [1, 0]]);
  assert.equal(wrapLon(180), -180);
  assert.equal(wrapLon(-190.5), 169.5);
});

// ---- events and tokens

test('fence transitions and alerts in words; other kinds as they are', () => {
  assert.deepEqual(eventText({ kind: 'geofence_enter', data: { geofence: 4, name: 'Depot' } }), { label: 'entered', detail: 'Depot' });
  assert.deepEqual(eventText({ kind: 'geofence_exit', data: { geofence: 4 } }), { label: 'left', detail: 'fence #4' });
  // A device that reports its own zone crossings (the simulator).
  assert.deepEqual(eventText({ kind: 'geofence_exit', data: { zone: 'zone-12', lat: 51.5 } }), { label: 'left', detail: 'zone-12' });
  assert.deepEqual(
    eventText({ kind: 'alert.overspeed', data: { rule: 3, speed: 31.234, limit: 25, for_ms: 30000, extra: 1 } }),
    { label: '⚠ overspeed', detail: 'rule #3, speed 31.23, limit 25, for ms 30000' },
  );
  assert.deepEqual(eventText({ kind: 'alert.low_battery', data: { rule: 1, battery: 9, at: { x: 1 } } }), { label: '⚠ low battery', detail: 'rule #1, battery 9' });
  assert.deepEqual(eventText({ kind: 'panic' }), { label: 'panic', detail: '' });
});

test('token claims: the payload decoded (base64url, UTF-8), null for what is not a JWT', () => {
  const b64 = (o) => Buffer.from(JSON.stringify(o)).toString('base64url');
  assert.deepEqual(tokenClaims(`${b64({ alg: 'HS256' })}.${b64({ sub: 'Zoë', admin: true })}.sig`), { sub: 'Zoë', admin: true });
  assert.equal(tokenClaims('not-a-jwt'), null);
  assert.equal(tokenClaims('a.!!!.c'), null);
  assert.equal(tokenClaims(''), null);
  assert.equal(tokenClaims(null), null);
});
