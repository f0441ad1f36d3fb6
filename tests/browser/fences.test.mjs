// Geofences and alerts on the map page (issue #15 point 5), in headless
// Chromium against the real gateway, bridge, Mosquitto, Redis and
// PostgreSQL (scripts/browser-test.sh). Fences are seeded through the
// gateway's fence API with an admin token; a gateway without that API
// (404) skips the fence steps and says so. Alerts arrive as device events
// over MQTT, as the bridge's own will. Screenshots: fences-*.png.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { join } from 'node:path';
import { chromium } from 'playwright-core';
import { CHROMIUM_ARGS, Gateway, base, env, publish, screenshots, sleep, token, waitFor } from './harness.mjs';

const gateway = new Gateway();
const ADMIN = token({ admin: true });
const VIEWER = token();
let browser;
let context;
/** false when the gateway answers 404 to GET /api/geofences */
let fenceApi = false;
/** fence ids this file created, deleted again at the end */
const created = new Set();
const seeded = {};

const DAYS = ['mon', 'tue', 'wed', 'thu', 'fri', 'sat', 'sun'];
const square = (lon, lat, dlon, dlat) => [[lon, lat], [lon + dlon, lat], [lon + dlon, lat + dlat], [lon, lat + dlat], [lon, lat]];
const feature = (geometry, properties) => ({ type: 'Feature', geometry, properties });

async function api(method, path, body, tok = ADMIN) {
  const res = await fetch(`${base}${path}`, {
    method,
    headers: { Authorization: `Bearer ${tok}`, ...(body ? { 'Content-Type': 'application/json' } : {}) },
    body: body ? JSON.stringify(body) : undefined,
  });
  const text = await res.text();
  return { status: res.status, body: text ? JSON.parse(text) : null };
}

async function createFence(f) {
  const r = await api('POST', '/api/geofences', f);
  assert.equal(r.status, 201, `POST /api/geofences: ${JSON.stringify(r.body)}`);
  created.add(r.body.id);
  return r.body;
}

async function openPage(tok) {
  const page = await context.newPage();
  page.on('console', (m) => {
    if (m.type() === 'error' || m.type() === 'warning') console.log(`[page ${m.type()}] ${m.text()}`);
  });
  page.on('pageerror', (e) => console.log(`[page error] ${e.message}`));
  await page.goto(`${base}/?token=${tok}`);
  await waitFor('connection live', async () => (await page.locator('#conn-state').getAttribute('data-state')) === 'live');
  // Whatever other test files left in the fleet: look at this file's corner of Berlin.
  await page.evaluate(() => window.fieldcast.map.setView([52.515, 13.405], 13, { animate: false }));
  return page;
}

const shot = (page, name) => page.screenshot({ path: join(screenshots, `${name}.png`) });
const labels = (page) => page.evaluate(() => window.fieldcast.fences.layer.labels);
const label = async (page, name) => (await labels(page)).find((l) => l.name === name) || null;

/** Page coordinates of a map position. */
async function at(page, lat, lon) {
  const p = await page.evaluate(([a, o]) => window.fieldcast.map.latLngToContainerPoint([a, o]), [lat, lon]);
  const box = await page.locator('#map').boundingBox();
  return { x: box.x + p.x, y: box.y + p.y };
}

async function clickAt(page, lat, lon) {
  const p = await at(page, lat, lon);
  await page.mouse.click(p.x, p.y);
  await sleep(150);
}

before(async () => {
  await gateway.start();
  const now = Date.now();
  for (const [id, lat, lon] of [['gf-van-1', 52.519, 13.392], ['gf-van-2', 52.507, 13.43]]) {
    await publish(`devices/${id}/status`, { online: true, battery: 77, ts: now - 1000 }, { retain: true });
    await publish(`devices/${id}/location`, { lat, lon, heading: 45, speed: 9, ts: now - 500 });
  }
  fenceApi = (await api('GET', '/api/geofences', undefined, VIEWER)).status !== 404;
  if (fenceApi) {
    // Inactive now: a schedule whose only day is three days away.
    const away = DAYS[(new Date().getUTCDay() + 6 + 3) % 7];
    seeded.depot = await createFence(feature({ type: 'Polygon', coordinates: [square(13.38, 52.512, 0.03, 0.012), square(13.39, 52.515, 0.005, 0.003)] }, { name: 'Depot Mitte' }));
    seeded.night = await createFence(feature({ type: 'Point', coordinates: [13.44, 52.522] }, { name: 'Night lot', radius: 500, schedule: { days: [away], tz: 'Z' } }));
    seeded.road = await createFence(feature({ type: 'LineString', coordinates: [[13.37, 52.505], [13.41, 52.503], [13.45, 52.506]] }, { name: 'Route 9', width: 250, severity: 'warning' }));
  }
  browser = await chromium.launch({ executablePath: env.chromium, args: CHROMIUM_ARGS, headless: true });
  context = await browser.newContext({ viewport: { width: 1280, height: 800 } });
});

after(async () => {
  for (const id of created) await api('DELETE', `/api/geofences/${id}`).catch(() => {});
  await browser?.close();
  await gateway.stop();
});

test('fences are drawn under the devices, named, the inactive one faded; a viewer gets no editor', async (t) => {
  if (!fenceApi) return t.skip('this gateway has no /api/geofences');
  const page = await openPage(VIEWER);
  await waitFor('three fence names drawn', async () => (await labels(page)).length >= 3);
  const byName = Object.fromEntries((await labels(page)).map((l) => [l.name, l]));
  assert.equal(byName['Depot Mitte'].active, true);
  assert.equal(byName['Route 9'].active, true);
  assert.equal(byName['Night lot'].active, false, 'outside its schedule now');
  // Pixels: the depot's fill, the inactive circle fainter, nothing in the depot's hole.
  const px = (lat, lon) => page.evaluate(([a, o]) => window.fieldcast.fences.layer.pixelAt([a, o]), [lat, lon]);
  const depot = await px(52.522, 13.384);
  const night = await px(52.525, 13.44);
  const hole = await px(52.5165, 13.3925);
  assert.ok(depot[3] > 20, `depot filled: ${depot}`);
  assert.ok(depot[2] > depot[0], 'polygons are blue');
  assert.ok(night[3] > 0 && night[3] < depot[3], `the inactive circle is fainter (${night[3]} < ${depot[3]})`);
  assert.equal(hole[3], 0, 'the hole is not filled');
  // Under the devices: the fences' pane is below the overlay pane of tracks and devices.
  const z = await page.evaluate(() => {
    const panes = window.fieldcast.map.getPanes();
    return [Number(getComputedStyle(panes.fences).zIndex), Number(getComputedStyle(panes.overlayPane).zIndex)];
  });
  assert.ok(z[0] < z[1], `fences pane ${z[0]} under overlay ${z[1]}`);
  assert.ok(await page.evaluate(() => window.fieldcast.marker('gf-van-1')), 'the device inside the depot is drawn');
  assert.equal(await page.locator('#fence-tools').isVisible(), false, 'no editor without the admin claim');
  assert.equal(await page.locator('#fences-count').textContent(), String((await api('GET', '/api/geofences')).body.features.length));
  await shot(page, 'fences-01-map');

  // A click on a fence selects it; a click on a device still selects the device.
  await clickAt(page, 52.522, 13.443);
  await waitFor('night lot selected', async () => (await page.locator('#fence-info dd[data-field="name"]').textContent()) === 'Night lot');
  assert.match(await page.locator('#fence-info dd[data-field="now"]').textContent(), /inactive/);
  assert.match(await page.locator('#fence-info dd[data-field="kind"]').textContent(), /circle, radius 500 m/);
  assert.equal(await page.locator('#fence-delete').isVisible(), false, 'a viewer cannot delete');
  const m = await page.evaluate(() => window.fieldcast.marker('gf-van-1'));
  const box = await page.locator('#map').boundingBox();
  await page.mouse.click(box.x + m.x, box.y + m.y);
  await waitFor('device selected', async () => (await page.locator('#details-title').textContent()) === 'gf-van-1');
  await shot(page, 'fences-02-selected');
  await page.close();
});

test('an admin draws a circle and a polygon, sees the API refuse a bad one, and deletes a fence', async (t) => {
  if (!fenceApi) return t.skip('this gateway has no /api/geofences');
  const page = await openPage(ADMIN);
  await waitFor('editor shown to an admin', () => page.locator('#fence-tools').isVisible());

  // A circle: centre, then edge; ~600 m.
  await page.click('#fence-draw-circle');
  await clickAt(page, 52.532, 13.40);
  const edge = await at(page, 52.532, 13.4088);
  await page.mouse.move(edge.x, edge.y);
  await page.mouse.click(edge.x, edge.y);
  await page.fill('#fence-name', 'Drawn circle');
  await page.selectOption('#fence-severity', 'critical');
  await shot(page, 'fences-03-drawing');
  await page.click('#fence-save');
  await waitFor('the drawn circle on the map', () => label(page, 'Drawn circle'));
  const all = (await api('GET', '/api/geofences')).body.features;
  const circle = all.find((f) => f.properties.name === 'Drawn circle');
  created.add(circle.id);
  assert.equal(circle.geometry.type, 'Point');
  assert.ok(Math.abs(circle.properties.radius - 596) < 15, `radius ${circle.properties.radius} m`);
  assert.equal(circle.properties.severity, 'critical');
  assert.equal(await page.locator('#fence-info dd[data-field="name"]').textContent(), 'Drawn circle', 'the new fence is selected');

  // A bow tie crosses itself: the API's 400 message is shown, the drawing kept.
  await page.click('#fence-draw-polygon');
  for (const [lat, lon] of [[52.5, 13.36], [52.5, 13.375], [52.49, 13.36], [52.49, 13.375]]) await clickAt(page, lat, lon);
  await page.click('#fence-close');
  await page.fill('#fence-name', 'Bow tie');
  await page.click('#fence-save');
  const refusal = await waitFor('the refusal shown', async () => (await page.locator('#fence-form-error').textContent()).trim());
  assert.doesNotMatch(refusal, /^\d+/, `the server's own words, not a status: ${refusal}`);
  assert.equal(await page.locator('#fence-form').isVisible(), true, 'the drawing stays for another try');
  await shot(page, 'fences-04-refused');
  await page.click('#fence-cancel');
  assert.equal((await api('GET', '/api/geofences')).body.features.some((f) => f.properties.name === 'Bow tie'), false, 'nothing stored');

  // A triangle, closed by a double-click.
  await page.click('#fence-draw-polygon');
  await clickAt(page, 52.498, 13.36);
  await clickAt(page, 52.498, 13.375);
  const last = await at(page, 52.49, 13.3675);
  await page.mouse.click(last.x, last.y);
  await page.mouse.dblclick(last.x, last.y);
  await page.fill('#fence-name', 'Drawn triangle');
  await page.click('#fence-save');
  await waitFor('the triangle on the map', () => label(page, 'Drawn triangle'));
  const tri = (await api('GET', '/api/geofences')).body.features.find((f) => f.properties.name === 'Drawn triangle');
  created.add(tri.id);
  assert.equal(tri.geometry.coordinates[0].length, 4, 'three corners, closed (the double-click added none)');

  // Delete the circle: select it, "delete", "confirm delete".
  await clickAt(page, 52.532, 13.40);
  await waitFor('circle selected', async () => (await page.locator('#fence-info dd[data-field="name"]').textContent()) === 'Drawn circle');
  await page.click('#fence-delete');
  assert.equal(await page.locator('#fence-delete').textContent(), 'confirm delete');
  await page.click('#fence-delete');
  await waitFor('the circle gone from the map', async () => !(await label(page, 'Drawn circle')));
  assert.equal((await api('GET', '/api/geofences')).body.features.some((f) => f.id === circle.id), false, 'deleted in the API');
  assert.equal(await page.locator('#fence-info').isVisible(), false, 'nothing selected any more');
  await shot(page, 'fences-05-edited');
  await page.close();
});

test('a fence made elsewhere shows as soon as an event names it', async (t) => {
  if (!fenceApi) return t.skip('this gateway has no /api/geofences');
  const page = await openPage(VIEWER);
  await waitFor('fences loaded', async () => (await labels(page)).length >= 3);
  const yard = await createFence(feature({ type: 'Point', coordinates: [13.43, 52.507] }, { name: 'Yard East', radius: 300 }));
  await publish('devices/gf-van-2/events', {
    id: `geofence-enter-${yard.id}-${Date.now()}`, kind: 'geofence_enter', severity: 'info', data: { geofence: yard.id, name: 'Yard East' },
  });
  const li = page.locator('#events li[data-kind="geofence_enter"]').filter({ hasText: 'Yard East' });
  await waitFor('the transition in the feed', () => li.count());
  assert.equal(await li.first().locator('.kind').textContent(), 'entered');
  // Well before the minute's refresh.
  await waitFor('the new fence on the map', () => label(page, 'Yard East'), 10000);
  await page.close();
});

test('an alert arrives in the feed in words; a critical one is pinned with the banner', async () => {
  const page = await openPage(VIEWER);
  await publish('devices/gf-van-1/events', {
    id: 'alert-overspeed-7-1', kind: 'alert.overspeed', severity: 'critical', data: { rule: 7, speed: 33.4, limit: 25 },
  });
  await publish('devices/gf-van-2/events', {
    id: 'geofence-exit-99-1', kind: 'geofence_exit', severity: 'info', data: { geofence: 99, name: 'Depot Mitte' },
  });
  const pinned = page.locator('#pinned li[data-id="alert-overspeed-7-1"]');
  await waitFor('the alert pinned', () => pinned.count());
  assert.equal(await pinned.locator('.kind').textContent(), '⚠ overspeed');
  assert.match(await pinned.locator('.detail').textContent(), /rule #7, speed 33\.4, limit 25/);
  assert.equal(await page.locator('#events li[data-id="alert-overspeed-7-1"]').count(), 1, 'and in the feed');
  assert.match(await page.locator('#alert-text').textContent(), /CRITICAL ⚠ overspeed rule #7.*gf-van-1/);
  const exit = page.locator('#events li[data-id="geofence-exit-99-1"]');
  await waitFor('the exit in the feed', () => exit.count());
  assert.equal(await exit.locator('.kind').textContent(), 'left');
  assert.equal(await exit.locator('.detail').textContent(), 'Depot Mitte');
  assert.equal(await page.locator('#pinned li[data-id="geofence-exit-99-1"]').count(), 0, 'info is not pinned');
  await shot(page, 'fences-06-alert');
  await page.click('#alert-ack');
  await page.close();
});
