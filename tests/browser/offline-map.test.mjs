// The map page with no tile server and no internet (FIELDCAST_MAP_TILES
// unset, a browser that says navigator.onLine = false): the embedded Natural
// Earth basemap, a track over it, the token out of the address bar, and a
// view across the 180° meridian that receives the devices on both sides.
// Run by scripts/browser-test.sh like map.test.mjs; the screenshot of the
// first test becomes docs/map-basemap.png when UPDATE_DOCS=1 (a test run
// leaves the work tree as it found it).
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { copyFile } from 'node:fs/promises';
import { join } from 'node:path';
import { chromium } from 'playwright-core';
import { CHROMIUM_ARGS, Gateway, base, env, publish, screenshots, sleep, token, waitFor } from './harness.mjs';

// Whatever the caller's environment says: no tiles.
const gateway = new Gateway({ env: { FIELDCAST_MAP_TILES: null, FIELDCAST_MAP_ATTRIBUTION: null } });
let browser;
let page;
const TOKEN = token();

/** Lorries on European roads; lorry-1 has driven from Hamburg to Magdeburg (its track). */
const LORRIES = [
  ['lorry-1', 52.13, 11.62, 140],
  ['lorry-2', 51.2, 6.9, 200],
  ['lorry-3', 48.3, 11.4, 20],
  ['lorry-4', 50.2, 19.6, 270],
  ['lorry-5', 47.2, 5.3, 160],
  ['lorry-6', 45.6, 9.6, 300],
  ['lorry-7', 53.9, 18.4, 45],
  ['lorry-8', 48.9, 16.8, 90],
];
const TRACK_POINTS = 24;
/** Near Fiji, one each side of the 180° meridian. */
const SHIPS = [['ship-east', -17.2, 179.4], ['ship-west', -17.4, -179.4]];

const hex = (h) => [1, 3, 5].map((i) => parseInt(h.slice(i, i + 2), 16));
const near = (a, b, d = 12) => a.every((v, i) => Math.abs(v - b[i]) <= d);

// ---- a Mapbox Vector Tile, written by hand (the MVT 2.1 protobuf schema)
const varint = (n) => {
  const out = [];
  while (n > 127) {
    out.push((n & 127) | 128);
    n >>>= 7;
  }
  out.push(n);
  return out;
};
const field = (tag, bytes) => [...varint((tag << 3) | 2), ...varint(bytes.length), ...bytes];
const text = (tag, s) => field(tag, [...Buffer.from(s)]);
const num = (tag, n) => [...varint(tag << 3), ...varint(n)];
const zigzag = (n) => (n << 1) ^ (n >> 31);
/** Geometry commands for rings of [x, y] in tile units (0..4096). */
function geometry(rings, close) {
  const out = [];
  let cx = 0;
  let cy = 0;
  for (const ring of rings) {
    ring.forEach(([x, y], i) => {
      if (i === 0) out.push((1 & 7) | (1 << 3));
      else if (i === 1) out.push((2 & 7) | ((ring.length - 1) << 3));
      out.push(zigzag(x - cx), zigzag(y - cy));
      cx = x;
      cy = y;
    });
    if (close) out.push(7 | (1 << 3));
  }
  return out;
}
function layer(name, type, rings, props = {}) {
  const keys = Object.keys(props);
  const feature = [
    ...field(2, keys.flatMap((k, i) => [...varint(i), ...varint(i)])),
    ...num(3, type),
    ...field(4, geometry(rings, type === 3).flatMap(varint)),
  ];
  return field(3, [
    ...num(15, 2),
    ...text(1, name),
    ...field(2, feature),
    ...keys.flatMap((k) => text(3, k)),
    ...keys.flatMap((k) => field(4, text(1, String(props[k])))),
    ...num(5, 4096),
  ]);
}
/** Water on the left half, a motorway across at 3/8 of the height, a town in the middle. */
const MVT = Buffer.from([
  ...layer('water', 3, [[[0, 0], [0, 4096], [2048, 4096], [2048, 0]]]),
  ...layer('transportation', 2, [[[-64, 1536], [4160, 1536]]], { class: 'motorway' }),
  ...layer('place', 1, [[[3072, 3072]]], { name: 'Testville' }),
]);
const PNG_RED = Buffer.from(
  '89504e470d0a1a0a0000000d4948445200000001000000010802000000907753de0000000c4944415478da63f8cfc0000003010100f70341430000000049454e44ae426082',
  'hex',
);
const connState = (p = page) => p.locator('#conn-state').getAttribute('data-state');
const shot = async (name) => {
  const path = join(screenshots, `${name}.png`);
  await page.screenshot({ path });
  return path;
};

before(async () => {
  await gateway.start();
  const now = Date.now();
  for (const [i, [id, lat, lon, heading]] of LORRIES.entries()) {
    await publish(`devices/${id}/status`, { online: true, battery: 80 - i, ts: now - 600000 }, { retain: true });
    if (id === 'lorry-1') {
      // From Hamburg, one fix every 20 s.
      for (let k = 0; k < TRACK_POINTS; k++) {
        const f = k / (TRACK_POINTS - 1);
        await publish(`devices/${id}/location`, {
          ts: now - 500000 + k * 20000,
          lat: 53.55 + (lat - 53.55) * f + Math.sin(f * Math.PI) * 0.25,
          lon: 10.0 + (lon - 10.0) * f,
          heading,
          speed: 24,
        });
      }
    } else {
      await publish(`devices/${id}/location`, { ts: now - 30000, lat, lon, heading, speed: 20 });
    }
  }
  for (const [id, lat, lon] of SHIPS) {
    await publish(`devices/${id}/status`, { online: true, ts: now - 600000 }, { retain: true });
    await publish(`devices/${id}/location`, { ts: now - 60000, lat, lon, heading: 90, speed: 5 });
  }
  browser = await chromium.launch({ executablePath: env.chromium, args: CHROMIUM_ARGS, headless: true });
  const context = await browser.newContext({ viewport: { width: 1280, height: 800 } });
  // Chromium with no network but loopback says navigator.onLine = false; so
  // does this browser, always, whatever this machine's network.
  await context.addInitScript(() => {
    Object.defineProperty(Navigator.prototype, 'onLine', { configurable: true, get: () => false });
  });
  page = await context.newPage();
  page.on('console', (m) => {
    if (m.type() === 'error' || m.type() === 'warning') console.log(`[page ${m.type()}] ${m.text()}`);
  });
  page.on('pageerror', (e) => console.log(`[page error] ${e.message}`));
  // What the page starts, in order: the socket, fetches (with how many device frames were drawn by then).
  await context.addInitScript(() => {
    window.__started = [];
    const { WebSocket: WS, fetch: f } = window;
    window.WebSocket = class extends WS {
      constructor(...a) {
        window.__started.push('ws');
        super(...a);
      }
    };
    window.fetch = (url, ...a) => {
      window.__started.push(`${new URL(url, location.href).pathname} ${window.fieldcast?.layer?.stats.draws ?? 0}`);
      return f(url, ...a);
    };
  });
  await page.goto(`${base}/?token=${TOKEN}`);
  await waitFor('connection live', async () => (await connState()) === 'live');
});

after(async () => {
  await browser?.close();
  await gateway.stop();
});

test('without a tile server the page draws the embedded basemap: land, sea, cities', async () => {
  const config = await (await fetch(`${base}/config.json`)).json();
  assert.equal(config.tiles, null);
  assert.equal(config.tiles_format, null);
  assert.equal(config.tiles_max_zoom, null);
  // Served gzip-compressed to a client that accepts it (Node's fetch does, and decodes).
  const res = await fetch(`${base}/assets/basemap.json`, { headers: { 'accept-encoding': 'gzip' } });
  assert.equal(res.status, 200);
  assert.equal(res.headers.get('content-encoding'), 'gzip');
  const basemap = await res.json();
  assert.deepEqual(basemap.levels.map((l) => l.topology.type), ['Topology', 'Topology']);

  await waitFor('basemap loaded', () => page.evaluate(() => window.fieldcast?.basemap?.loaded === true));
  // After the first paint: the socket was opening and the devices drawn before the basemap was asked for.
  const started = await page.evaluate(() => window.__started);
  const basemapAt = started.findIndex((s) => s.startsWith('/assets/basemap.json'));
  assert.ok(started.indexOf('ws') >= 0 && started.indexOf('ws') < basemapAt, started.join(', '));
  assert.ok(Number(started[basemapAt].split(' ')[1]) >= 1, started.join(', '));

  await page.evaluate(() => window.fieldcast.map.setView([50.5, 10], 5, { animate: false }));
  await sleep(500);
  const px = await page.evaluate(() => {
    const b = window.fieldcast.basemap;
    return { land: b.pixelAt([50.5, 10]), sea: b.pixelAt([55.2, 4]), ocean: b.pixelAt([45, -12]) };
  });
  assert.deepEqual(px.land, hex('#f4f2ec'), 'Germany is land');
  assert.deepEqual(px.sea, hex('#cddbe6'), 'the North Sea is sea');
  assert.deepEqual(px.ocean, hex('#cddbe6'), 'the Atlantic is sea');
  const labels = await page.evaluate(() => {
    const size = window.fieldcast.map.getSize();
    return window.fieldcast.basemap.labels.filter((l) => l.x >= 0 && l.y >= 0 && l.x <= size.x && l.y <= size.y).map((l) => l.name);
  });
  for (const city of ['Berlin', 'Paris', 'London', 'Vienna']) assert.ok(labels.includes(city), `${city} in ${labels.join(', ')}`);
  // Under the tiles and the devices.
  const z = await page.evaluate(() => ['basemap', 'tilePane', 'overlayPane'].map((p) => Number(getComputedStyle(window.fieldcast.map.getPane(p)).zIndex)));
  assert.ok(z[0] < z[1] && z[1] < z[2], `pane z-indices ${z}`);
  await shot('offline-01-basemap');
});

test("a device's track is drawn over the basemap", async () => {
  await waitFor('history written', async () => {
    const r = await fetch(`${base}/api/devices/lorry-1/track?from=${Date.now() - 3600000}`, { headers: { Authorization: `Bearer ${TOKEN}` } });
    return r.ok && (await r.json()).points.length >= TRACK_POINTS;
  });
  await page.locator('#device-search').fill('lorry-1');
  await page.locator('#device-list .row[data-device="lorry-1"]').click();
  await page.locator('#device-search').fill('');
  await page.click('#track-load');
  const n = await waitFor('track of lorry-1', () => page.locator('#tracks li[data-device="lorry-1"]').getAttribute('data-points', { timeout: 1000 }));
  assert.equal(Number(n), TRACK_POINTS);
  // The whole fleet and the track, for the README.
  await page.evaluate(() => {
    const fc = window.fieldcast;
    fc.select(null);
    fc.map.setView([50.6, 11.5], 6, { animate: false });
  });
  await sleep(800);
  // The track's own canvas (above the basemap's) is painted in its colour
  // at a fix in the middle of the track.
  const drawn = await page.evaluate(() => {
    const t = window.fieldcast.tracks.tracks.get('lorry-1');
    const r = t.line._renderer;
    const p = window.fieldcast.map.latLngToLayerPoint(t.points[Math.floor(t.points.length / 2)]);
    const m = r._container.width / (r._bounds.max.x - r._bounds.min.x);
    const d = r._ctx.getImageData(Math.round((p.x - r._bounds.min.x) * m), Math.round((p.y - r._bounds.min.y) * m), 1, 1).data;
    return { rgba: [...d], color: t.color };
  });
  const want = hex(drawn.color);
  assert.ok(drawn.rgba[3] > 150 && drawn.rgba.slice(0, 3).every((v, i) => Math.abs(v - want[i]) <= 3), `${drawn.rgba} vs ${drawn.color}`);
  // ... over land: the basemap under the track (beside the line) is Germany.
  assert.deepEqual(await page.evaluate(() => window.fieldcast.basemap?.pixelAt([53.0, 11.2])), hex('#f4f2ec'));
  // Markers redraw after the view change: waited for, not assumed (a loaded
  // machine takes longer than the sleep above).
  for (const [id] of LORRIES) await waitFor(`${id} drawn`, () => page.evaluate((d) => window.fieldcast.marker(d), id));
  const path = await shot('offline-02-track');
  if (process.env.UPDATE_DOCS === '1') await copyFile(path, join(env.root, 'docs/map-basemap.png'));
});

test('?token= is kept in sessionStorage and gone from the address bar', async () => {
  const where = await page.evaluate(() => ({ href: location.href, stored: sessionStorage.getItem('fieldcast.token') }));
  assert.ok(!where.href.includes('token'), where.href);
  assert.equal(where.stored, TOKEN);
  // Replaced, not pushed: the entry before the page is the blank one, not one with the token.
  await page.goBack();
  assert.ok(!page.url().includes('token'), page.url());
  await page.goForward();
  assert.ok(!page.url().includes('token'), page.url());
  await waitFor('live again', async () => (await connState()) === 'live');
  // A reload (no token in the URL now) signs in from the session.
  await page.reload();
  await waitFor('live after reload', async () => (await connState()) === 'live');
  assert.equal(await page.locator('#login').isVisible(), false);
});

test('a browser that thinks it is offline still says live: the state comes from the socket', async () => {
  assert.equal(await page.evaluate(() => navigator.onLine), false);
  assert.equal(await connState(), 'live');
  await page.evaluate(() => window.dispatchEvent(new Event('offline')));
  await sleep(500);
  assert.equal(await connState(), 'live');
});

test('a view across the 180° meridian receives the devices on both sides', async () => {
  const p = await page.context().newPage();
  const sent = [];
  const received = [];
  p.on('websocket', (ws) => {
    ws.on('framesent', (f) => sent.push(JSON.parse(String(f.payload))));
    ws.on('framereceived', (f) => received.push(JSON.parse(String(f.payload))));
  });
  await p.goto(`${base}/?live=bbox&token=${TOKEN}`);
  await waitFor('live (bbox)', async () => (await connState(p)) === 'live');
  await p.evaluate(() => window.fieldcast.map.setView([-17.3, 180], 8, { animate: false }));
  const sub = await waitFor('a bbox across the meridian', () => sent.find((f) => f.bbox && f.bbox[0] > f.bbox[2]));
  assert.ok(sub.bbox[0] > 170 && sub.bbox[2] < -170, `${sub.bbox}`);
  await waitFor('subscribed', () => received.some((m) => m.type === 'subscribed' && m.ref === sub.ref));
  const snapshot = received.filter((m) => m.type === 'snapshot' && m.ref === sub.ref).flatMap((m) => m.devices.map((d) => d.device));
  for (const [id] of SHIPS) assert.ok(snapshot.includes(id), `${id} in the snapshot (${snapshot})`);
  // Live updates from both sides.
  const ts = Date.now();
  for (const [id, lat, lon] of SHIPS) await publish(`devices/${id}/location`, { ts, lat: lat + 0.01, lon, heading: 90, speed: 5 });
  for (const [id] of SHIPS) {
    await waitFor(`live location of ${id}`, () => received.some((m) => m.type === 'location' && m.device === id && m.ts === ts));
    await waitFor(`${id} drawn`, () => p.evaluate((d) => window.fieldcast.marker(d), id));
  }
  await p.screenshot({ path: join(screenshots, 'offline-03-meridian.png') });

  // The basemap draws the world east of 180° too: Alaska at 210° (-150°).
  await waitFor('basemap loaded', () => p.evaluate(() => window.fieldcast.basemap.loaded));
  await p.evaluate(() => window.fieldcast.map.setView([60, 180], 3, { animate: false }));
  await sleep(500);
  const px = await p.evaluate(() => {
    const b = window.fieldcast.basemap;
    return { alaska: b.pixelAt([64, 210]), siberia: b.pixelAt([64, 150]), bering: b.pixelAt([57, 182]) };
  });
  assert.deepEqual(px.alaska, hex('#f4f2ec'), 'Alaska, east of the meridian, is land');
  assert.deepEqual(px.siberia, hex('#f4f2ec'));
  assert.deepEqual(px.bering, hex('#cddbe6'), 'the Bering Sea is sea');
  await p.close();
});

test('tiles from a local archive: raster up to its max zoom, vector drawn with the generic style', async () => {
  // The page's part of FIELDCAST_MAP_TILES=file.pmtiles: a tile URL, a format
  // and a max zoom, here through ?tiles= and tile responses of the test's own.
  const p = await page.context().newPage();
  const asked = [];
  await p.route((u) => u.pathname.startsWith('/rt/'), (route) => {
    asked.push(new URL(route.request().url()).pathname);
    return route.fulfill({ status: 200, contentType: 'image/png', body: PNG_RED });
  });
  await p.goto(`${base}/?tiles=/rt/{z}/{x}/{y}.png&tiles_max_zoom=3&token=${TOKEN}`);
  await waitFor('live', async () => (await connState(p)) === 'live');
  await p.evaluate(() => window.fieldcast.map.setView([50, 10], 6, { animate: false }));
  await waitFor('raster tiles', () => asked.some((u) => u.startsWith('/rt/3/')));
  await sleep(300);
  const zooms = new Set(asked.map((u) => Number(u.split('/')[2])));
  assert.ok([...zooms].every((z) => z <= 3), `no zoom above the archive's: ${[...zooms]}`);

  const vectorAsked = [];
  await p.route((u) => u.pathname.startsWith('/vt/'), (route) => {
    vectorAsked.push(new URL(route.request().url()).pathname);
    return route.fulfill({ status: 200, contentType: 'application/vnd.mapbox-vector-tile', body: MVT });
  });
  await p.goto(`${base}/?tiles=/vt/{z}/{x}/{y}.pbf&tiles_max_zoom=5&token=${TOKEN}`);
  await waitFor('live', async () => (await connState(p)) === 'live');
  // Centred on a zoom-5 tile: its 4×4 zoom-7 tiles are all in view.
  await p.evaluate(() => {
    const map = window.fieldcast.map;
    const c = map.project([50, 10], 7);
    const mid = [Math.floor(c.x / 1024) * 1024 + 512, Math.floor(c.y / 1024) * 1024 + 512];
    map.setView(map.unproject(mid, 7), 7, { animate: false });
  });
  const probe = (fx, fy) => p.evaluate(async ([fx, fy]) => {
    // A point at (fx, fy) of a native (zoom 5) tile: the zoom-7 tile and pixel it falls in.
    const fc = window.fieldcast;
    const layer = Object.values(fc.map._layers).find((l) => l.decoded);
    const c = fc.map.project(fc.map.getCenter(), 7);
    const nx = Math.floor(c.x / 1024) * 1024 + fx * 1024;
    const ny = Math.floor(c.y / 1024) * 1024 + fy * 1024;
    const key = `${Math.floor(nx / 256)}:${Math.floor(ny / 256)}:7`;
    for (let i = 0; i < 50 && !(layer._tiles[key]?.loaded); i++) await new Promise((r) => setTimeout(r, 100));
    const el = layer._tiles[key].el;
    const m = el.width / 256;
    return [...el.getContext('2d').getImageData(Math.floor((nx % 256) * m), Math.floor((ny % 256) * m), 1, 1).data].slice(0, 3);
  }, [fx, fy]);
  await waitFor('vector tiles', () => vectorAsked.length > 0);
  assert.deepEqual(await probe(0.25, 0.25), hex('#cddbe6'), 'water');
  assert.deepEqual(await probe(0.8, 0.2), hex('#f4f2ec'), 'land');
  const road = await probe(0.75, 0.375);
  assert.ok(near(road, hex('#f4cf7e'), 30), `motorway: ${road}`);
  const vz = new Set(vectorAsked.map((u) => Number(u.split('/')[2])));
  assert.ok(vz.has(5) && [...vz].every((z) => z <= 5), `zoom 7 is cut from the zoom-5 tiles: ${[...vz]}`);
  await sleep(500); // tiles fade in
  await p.screenshot({ path: join(screenshots, 'offline-04-vector-tiles.png') });
  await p.close();
});
