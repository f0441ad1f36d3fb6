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

// ---- map geometry: the subscribe box, tile sources, the basemap, vector styles

import { readFileSync } from 'node:fs';
import { guessTileFormat, tileSource, viewBbox } from '../src/geo.js';
import { decodeBasemap, levelAt, trace } from '../src/map/basemap-data.js';
import { vectorStyle } from '../src/map/vector-style.js';

test('view box: within one world it is the view, latitudes clamped', () => {
  assert.deepEqual(viewBbox(13.1, 52.3, 13.7, 52.7), [13.1, 52.3, 13.7, 52.7]);
  assert.deepEqual(viewBbox(-20, -95, 20, 95), [-20, -90, 20, 90]);
  // Rounded outwards to 5 decimals: the box still holds the view.
  assert.deepEqual(viewBbox(1.000001, 2.000001, 3.000001, 4.000001), [1, 2, 3.00001, 4.00001]);
});

test('view box: a view across the 180° meridian gives minLon > maxLon', () => {
  // Leaflet says east > 180 (the view runs into the next world east) ...
  assert.deepEqual(viewBbox(170, -20, 190, -10), [170, -20, -170, -10]);
  // ... or west < -180 (the world west of it).
  assert.deepEqual(viewBbox(-190, -20, -170, -10), [170, -20, -170, -10]);
  // A view wholly in another copy of the world comes back into [-180, 180].
  assert.deepEqual(viewBbox(370, 0, 380, 1), [10, 0, 20, 1]);
  assert.deepEqual(viewBbox(-350, 0, -340, 1), [10, 0, 20, 1]);
  assert.deepEqual(viewBbox(540, 0, 550, 1), [-180, 0, -170, 1]);
  // Touching the meridian from either side is not across it.
  assert.deepEqual(viewBbox(170, 0, 180, 1), [170, 0, 180, 1]);
  assert.deepEqual(viewBbox(180, 0, 190, 1), [-180, 0, -170, 1]);
  for (let west = -900; west <= 900; west += 7.3) {
    const [w, , e] = viewBbox(west, 0, west + 35, 1);
    assert.ok(w >= -180 && w <= 180 && e >= -180 && e <= 180, `${west}: ${w}, ${e}`);
    const width = e >= w ? e - w : e + 360 - w;
    assert.ok(Math.abs(width - 35) < 1e-4, `${west}: width ${width}`);
  }
});

test('view box: 360° or wider is the whole world', () => {
  assert.deepEqual(viewBbox(-180, -60, 180, 60), [-180, -60, 180, 60]);
  assert.deepEqual(viewBbox(-400, -85, 500, 85), [-180, -85, 180, 85]);
  assert.deepEqual(viewBbox(NaN, -85, NaN, 85), [-180, -85, 180, 85]);
});

test('tile source: config.json, older gateways, and ?tiles= in the URL', () => {
  const none = new URLSearchParams('');
  assert.equal(tileSource({ tiles: null, stale_after_ms: 1 }, none), null);
  assert.deepEqual(tileSource({ tiles: 'https://t/{z}/{x}/{y}.png' }, none), { url: 'https://t/{z}/{x}/{y}.png', format: 'raster', maxZoom: null });
  assert.deepEqual(
    tileSource({ tiles: '/tiles/{z}/{x}/{y}', tiles_format: 'vector', tiles_max_zoom: 14 }, none),
    { url: '/tiles/{z}/{x}/{y}', format: 'vector', maxZoom: 14 },
  );
  assert.deepEqual(tileSource({ tiles: '/tiles/{z}/{x}/{y}', tiles_format: 'raster', tiles_max_zoom: 12 }, none).maxZoom, 12);
  assert.equal(tileSource({ tiles: '/t/{z}/{x}/{y}.pbf' }, none).format, 'raster', 'no tiles_format: an older gateway, raster');
  const url = new URLSearchParams('tiles=https://v/{z}/{x}/{y}.mvt?k=1&tiles_max_zoom=10');
  assert.deepEqual(tileSource({ tiles: 'https://t/{z}/{x}/{y}.png', tiles_format: 'raster' }, url), { url: 'https://v/{z}/{x}/{y}.mvt?k=1', format: 'vector', maxZoom: 10 });
  assert.equal(tileSource({}, new URLSearchParams('tiles=/x/{z}/{x}/{y}&tiles_format=vector')).format, 'vector');
  assert.equal(guessTileFormat('https://t/{z}/{x}/{y}.PBF#x'), 'vector');
  assert.equal(guessTileFormat('https://pbf.example/{z}/{x}/{y}'), 'raster');
});

const doc = JSON.parse(readFileSync(new URL('../dist/basemap.json', import.meta.url), 'utf8'));
const basemap = decodeBasemap(doc);
const detailed = levelAt(basemap, 6);

test('basemap: land, coasts, borders and cities in Web Mercator fractions, at two scales', () => {
  assert.deepEqual(basemap.levels.map((l) => l.minZoom), [0, 4]);
  assert.equal(levelAt(basemap, 2), basemap.levels[0]);
  assert.equal(levelAt(basemap, 3.5), basemap.levels[0]);
  assert.equal(levelAt(basemap, 4), basemap.levels[1]);
  assert.equal(levelAt(basemap, 18), basemap.levels[1]);
  const points = (l) => l.polygons.reduce((n, p) => n + p.rings.reduce((m, r) => m + r.pts.length / 2, 0), 0);
  assert.ok(points(basemap.levels[0]) * 5 < points(basemap.levels[1]), 'the world view has far fewer points');
  for (const level of basemap.levels) checkLevel(level);
  const names = basemap.cities.map((c) => c.name);
  for (const n of ['Berlin', 'Paris', 'Tokyo', 'São Paulo', 'Suva']) assert.ok(names.includes(n), n);
  assert.equal(basemap.cities[0].rank, 0);
});

function checkLevel(level) {
  assert.ok(level.polygons.length > 100, `${level.polygons.length} land polygons`);
  assert.ok(level.borders.length > 100 && level.coasts.length > 100);
  for (const set of [level.coasts, level.borders]) {
    for (const p of set) assert.ok(p.minX >= -0.05 && p.maxX <= 1.05 && p.minY >= 0 && p.maxY <= 1);
  }
  for (const poly of level.polygons) {
    // Within the world, but for Chukotka and an islet of Fiji, continued past x = 1.
    assert.ok(poly.minX >= -0.05 && poly.maxX <= 1.05 && poly.minY >= 0 && poly.maxY <= 1);
    // None spans the world (a band around it), but Antarctica.
    assert.ok(poly.maxX - poly.minX < 0.6 || poly.maxY > 0.99);
  }
  // No coast along the 180° meridian where Natural Earth cuts Russia and Fiji.
  for (const p of level.coasts) {
    for (let i = 2; i < p.pts.length; i += 2) {
      const onCut = (x) => x < 1e-6 || Math.abs(x - 1) < 1e-6;
      assert.ok(!(onCut(p.pts[i - 2]) && onCut(p.pts[i])), 'a coast segment on the meridian');
    }
  }
}

/** A 2D context that records the path, with the even-odd point test of the filled path. */
function recorder() {
  const subpaths = [];
  return {
    subpaths,
    moveTo(x, y) { subpaths.push([[x, y]]); },
    lineTo(x, y) { subpaths[subpaths.length - 1].push([x, y]); },
    closePath() {},
    inside(px, py) {
      let c = false;
      for (const ring of subpaths) {
        for (let i = 0, j = ring.length - 1; i < ring.length; j = i++) {
          const [xi, yi] = ring[i];
          const [xj, yj] = ring[j];
          if (yi > py !== yj > py && px < ((xj - xi) * (py - yi)) / (yj - yi) + xi) c = !c;
        }
      }
      return c;
    },
  };
}

test('basemap trace: skipping points outside the view changes nothing inside it', () => {
  // Every land polygon of the world at zoom 6 around Berlin, traced with and
  // without culling: the same points of the view are land.
  const world = 256 * 2 ** 6;
  const ox = -0.537 * world;
  const oy = -0.33 * world;
  const view = { x0: 0, y0: 0, x1: 800, y1: 600 };
  const everything = { x0: -Infinity, y0: -Infinity, x1: Infinity, y1: Infinity };
  const culled = recorder();
  const full = recorder();
  for (const poly of detailed.polygons) {
    for (const ring of poly.rings) {
      trace(culled, ring, world, ox, oy, view, true, 0);
      trace(full, ring, world, ox, oy, everything, true, 0);
    }
  }
  const count = (r) => r.subpaths.reduce((n, s) => n + s.length, 0);
  assert.ok(count(culled) * 4 < count(full), `culled ${count(culled)} of ${count(full)} points`);
  let land = 0;
  for (let x = 5; x < 800; x += 37) {
    for (let y = 5; y < 600; y += 41) {
      assert.equal(culled.inside(x, y), full.inside(x, y), `at ${x},${y}`);
      if (full.inside(x, y)) land += 1;
    }
  }
  assert.ok(land > 50, 'the view around Berlin is mostly land');
});

test('vector tile style: generic schemas, unknown layers left out', () => {
  assert.equal(vectorStyle('water', 3, {}, 10).order, 2);
  assert.ok(vectorStyle('earth', 3, {}, 5).fill);
  assert.ok(vectorStyle('transportation', 2, { class: 'motorway' }, 12).casing);
  assert.ok(vectorStyle('roads', 2, { kind: 'minor_road' }, 12).width > 0);
  assert.equal(vectorStyle('boundary', 2, { maritime: 1 }, 5), null);
  assert.equal(vectorStyle('place', 1, { name: 'Berlin' }, 8).label, 'Berlin');
  assert.equal(vectorStyle('poi', 1, { name: 'Café' }, 16), null);
  assert.equal(vectorStyle('transportation_name', 2, { name: 'A1' }, 12), null);
  assert.equal(vectorStyle('building', 3, {}, 10), null, 'buildings from zoom 13');
  assert.equal(vectorStyle('mystery', 3, {}, 10), null);
});
