// The map page as a dispatcher uses it, in headless Chromium, against the
// real gateway, bridge, Mosquitto, Redis and PostgreSQL (started by
// scripts/browser-test.sh). One browser page goes through the steps in
// order; each step saves a screenshot to tests/browser/screenshots/.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { readFile } from 'node:fs/promises';
import { join } from 'node:path';
import { chromium } from 'playwright-core';
import { CHROMIUM_ARGS, Gateway, base, env, publish, screenshots, sleep, token, waitFor } from './harness.mjs';

const DEVICES = ['van-1', 'van-2', 'van-3', 'van-4', 'van-5', 'truck-7'];
const gateway = new Gateway();
let browser;
let page;
const frames = { sent: [], received: [] };

const shot = (name) => page.screenshot({ path: join(screenshots, `${name}.png`) });
const rowState = (id) => page.locator(`#device-list .row[data-device="${id}"] .state`).textContent();
const marker = (id) => page.evaluate((d) => window.fieldcast?.marker(d) ?? null, id);
const connState = () => page.locator('#conn-state').getAttribute('data-state');

before(async () => {
  await gateway.start();
  // A small fleet around Berlin: status (retained, like the devices' Last
  // Will topic), then a short history of fixes so tracks have points.
  const now = Date.now();
  for (const [i, id] of DEVICES.entries()) {
    await publish(`devices/${id}/status`, { online: true, battery: 90 - i * 7, signal: -60 - i, ts: now - 200000 }, { retain: true });
    for (let k = 0; k < 6; k++) {
      await publish(`devices/${id}/location`, {
        ts: now - 180000 + k * 30000 + i,
        lat: 52.5 + i * 0.004 + k * 0.0008,
        lon: 13.4 + i * 0.006 + k * 0.0011,
        heading: (i * 60 + k * 5) % 360,
        speed: 8 + i,
      });
    }
  }
  browser = await chromium.launch({ executablePath: env.chromium, args: CHROMIUM_ARGS, headless: true });
  const context = await browser.newContext({ viewport: { width: 1280, height: 800 }, acceptDownloads: true });
  page = await context.newPage();
  page.on('console', (m) => {
    if (m.type() === 'error' || m.type() === 'warning') console.log(`[page ${m.type()}] ${m.text()}`);
  });
  page.on('pageerror', (e) => console.log(`[page error] ${e.message}`));
  page.on('websocket', (ws) => {
    ws.on('framesent', (f) => frames.sent.push(String(f.payload)));
    ws.on('framereceived', (f) => frames.received.push(String(f.payload)));
  });
});

after(async () => {
  await browser?.close();
  await gateway.stop();
});

test('the page loads from the gateway and shows a marker per device', async () => {
  await page.goto(`${base}/?token=${token()}`);
  await waitFor('connection live', async () => (await connState()) === 'live');
  for (const id of DEVICES) {
    await waitFor(`list row ${id}`, async () => (await rowState(id)) === 'online');
    const m = await waitFor(`marker ${id}`, () => marker(id));
    assert.equal(m.state, 'online');
  }
  // Heading and the newest fix came through the snapshot.
  const d = await page.evaluate(() => {
    const s = window.fieldcast.store.get('van-2');
    return { heading: s.heading, battery: s.battery };
  });
  assert.equal(d.heading, (60 + 25) % 360);
  assert.equal(d.battery, 83);
  // A live update moves the marker without a reload.
  const before = await marker('van-1');
  await publish('devices/van-1/location', { lat: 52.503, lon: 13.41, heading: 180, speed: 3 });
  await waitFor('van-1 moved', async () => {
    const m = await marker('van-1');
    return m && (Math.abs(m.x - before.x) > 1 || Math.abs(m.y - before.y) > 1);
  });
  await shot('01-live-map');
});

test('a status {"online":false} turns the device offline', async () => {
  await publish('devices/van-2/status', { online: false }, { retain: true });
  await waitFor('van-2 row offline', async () => (await rowState('van-2')) === 'offline');
  await waitFor('van-2 marker offline', async () => (await marker('van-2'))?.state === 'offline');
  const color = await page.evaluate(() => {
    const m = window.fieldcast.marker('van-2');
    return m && window.fieldcast.layer.ctx.getImageData(Math.round(m.x * devicePixelRatio), Math.round(m.y * devicePixelRatio), 1, 1).data.slice(0, 3).join(',');
  });
  assert.equal(color, '215,25,28', 'the offline marker is painted red');
  await shot('02-offline');
});

test('events appear in the feed, critical ones pinned with an alert', async () => {
  await publish('devices/van-3/events', { id: 'ev-info-1', kind: 'door_open', severity: 'info', data: { door: 2 } });
  await publish('devices/truck-7/events', { id: 'ev-panic-1', kind: 'panic', severity: 'critical' });
  await waitFor('info event in feed', () => page.locator('#events li[data-id="ev-info-1"]').count());
  await waitFor('critical event pinned', () => page.locator('#pinned li[data-id="ev-panic-1"]').count());
  assert.equal(await page.locator('#pinned li[data-id="ev-info-1"]').count(), 0, 'info is not pinned');
  assert.equal(await page.locator('#alert').isVisible(), true, 'the alert banner shows');
  assert.match(await page.locator('#alert-text').textContent(), /panic.*truck-7/);
  await shot('03-events');
  await page.click('#alert-ack');
  assert.equal(await page.locator('#alert').isVisible(), false);
});

test('clicking a device on the map shows its details and its track; the track exports', async () => {
  // Wait until the history batch (FIELDCAST_FLUSH_INTERVAL=1s) holds the fixes.
  const t = token();
  await waitFor('history written', async () => {
    const r = await fetch(`${base}/api/devices/van-4/track?from=${Date.now() - 3600000}`, { headers: { Authorization: `Bearer ${t}` } });
    return r.ok && (await r.json()).points.length >= 6;
  });
  const m = await marker('van-4');
  const box = await page.locator('#map').boundingBox();
  await page.mouse.click(box.x + m.x, box.y + m.y);
  await waitFor('details of van-4', async () => (await page.locator('#details-title').textContent()) === 'van-4');
  assert.equal(await page.locator('#details dd[data-field="state"]').textContent(), 'online');
  await page.click('#track-load');
  const points = await waitFor('track of van-4', () => page.locator('#tracks li[data-device="van-4"]').getAttribute('data-points', { timeout: 1000 }));
  assert.equal(Number(points), 6);

  // A second device on the same timeline; the slider moves both replay markers.
  await page.locator('#device-search').fill('van-5');
  await page.locator('#device-list .row[data-device="van-5"]').click();
  await page.click('#track-load');
  await waitFor('track of van-5', () => page.locator('#tracks li[data-device="van-5"]').count());
  await page.locator('#device-search').fill('');
  const startPos = await page.evaluate(() => {
    const s = document.getElementById('replay-slider');
    s.value = '0';
    s.dispatchEvent(new Event('input'));
    return [...window.fieldcast.tracks.tracks.values()].map((t) => t.marker.getLatLng());
  });
  const firstFix = await page.evaluate(() => window.fieldcast.tracks.tracks.get('van-4').points[0]);
  assert.ok(Math.abs(startPos[0].lat - firstFix.lat) < 1e-9, 'slider at 0 puts the marker on the first fix');
  await shot('04-track');

  const [download] = await Promise.all([page.waitForEvent('download'), page.click('#export-geojson')]);
  const geo = JSON.parse(await readFile(await download.path(), 'utf8'));
  assert.equal(geo.type, 'FeatureCollection');
  assert.deepEqual(geo.features.map((f) => f.properties.device).sort(), ['van-4', 'van-5']);
  assert.equal(geo.features.find((f) => f.properties.device === 'van-4').geometry.coordinates.length, 6);
  const [csvDl] = await Promise.all([page.waitForEvent('download'), page.click('#export-csv')]);
  const csv = (await readFile(await csvDl.path(), 'utf8')).trim().split('\n');
  assert.equal(csv[0], 'device,ts,lat,lon,alt,speed,heading,accuracy');
  assert.equal(csv.length, 1 + 6 + 6);
});

test('a gateway restart shows reconnecting then live, and no event is missed', async () => {
  const status = await gateway.stop();
  assert.equal(status.code, 0, 'the gateway exits 0 on SIGTERM');
  await waitFor('reconnecting', async () => (await connState()) === 'reconnecting');
  await shot('05-reconnecting');
  // While the gateway is down: an event, and a device going offline.
  await publish('devices/van-5/events', { id: 'ev-while-down', kind: 'geofence_exit', severity: 'critical' });
  await publish('devices/van-1/status', { online: false }, { retain: true });
  await sleep(1500);
  await gateway.start();
  await waitFor('live again', async () => (await connState()) === 'live', 60000);
  await waitFor('the event sent while down', () => page.locator('#pinned li[data-id="ev-while-down"]').count());
  await waitFor('van-1 offline from the fresh snapshot', async () => (await rowState('van-1')) === 'offline');
  // Resumed by cursor: the re-subscribe carried `since`.
  const resub = frames.sent.map((f) => JSON.parse(f)).filter((f) => f.op === 'subscribe' && f.since);
  assert.ok(resub.length >= 1, 'the reconnect subscribed with since');
  // Exactly once in the feed.
  assert.equal(await page.locator('#events li[data-id="ev-while-down"]').count(), 1);
  assert.equal(await page.locator('#events li[data-id="ev-panic-1"]').count(), 1);
  await shot('06-live-again');
  // The overview for the README: every device, both tracks, the feed.
  await page.evaluate(() => {
    const fc = window.fieldcast;
    fc.map.fitBounds([...fc.store.devices.values()].map((d) => [d.lat, d.lon]), { padding: [60, 60] });
  });
  await sleep(1500);
  await shot('07-overview');
});

test('viewport mode subscribes by bbox and follows map moves', async () => {
  const p = await page.context().newPage();
  const sent = [];
  p.on('websocket', (ws) => ws.on('framesent', (f) => sent.push(JSON.parse(String(f.payload)))));
  await p.goto(`${base}/?live=bbox&token=${token()}`);
  await waitFor('live (bbox)', async () => (await p.locator('#conn-state').getAttribute('data-state')) === 'live');
  await waitFor('van-3 marker', () => p.evaluate(() => window.fieldcast.marker('van-3')));
  assert.ok(sent.some((f) => f.op === 'subscribe' && Array.isArray(f.bbox)), 'a bbox subscribe on load');
  const n = sent.filter((f) => f.bbox).length;
  await p.evaluate(() => window.fieldcast.map.panBy([400, 0], { animate: false }));
  await waitFor('a new bbox after the move', () => sent.filter((f) => f.bbox).length > n);
  await p.close();
});

test('without a token the page asks for one, and refuses a bad one', async () => {
  const p = await page.context().newPage();
  await p.goto(`${base}/`);
  await p.locator('#login').waitFor({ state: 'visible' });
  await p.fill('#login-token', 'not-a-jwt');
  await p.click('#login button[type="submit"]');
  await waitFor('refusal shown', async () => /refused/.test(await p.locator('#login-error').textContent()));
  await p.fill('#login-token', token());
  await p.click('#login button[type="submit"]');
  await waitFor('live after login', async () => (await p.locator('#conn-state').getAttribute('data-state')) === 'live');
  await waitFor('markers after login', () => p.evaluate(() => window.fieldcast.marker('truck-7')));
  await p.close();
});
