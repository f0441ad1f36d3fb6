// Benchmark (not a test) of the map page with 50 000 known devices, 5 000 of
// them updating once a second, in viewport mode. Reports frames per second,
// long tasks and the page's own work from the browser's performance API.
//
//   scripts/browser-test.sh bench.mjs                         # synthetic feed (below)
//   FC_BENCH_SOURCE=sim FC_RELEASE=1 scripts/browser-test.sh bench.mjs
//
// FC_BENCH_SOURCE=synthetic (default): the page loads from the real gateway,
// then the devices and their updates are fed into its message handler at the
// real rate (`window.fieldcast.handle`, the path every WebSocket frame takes
// after JSON.parse). It measures the page alone, on any machine.
// FC_BENCH_SOURCE=sim: fieldcast-sim drives the devices through Mosquitto,
// the bridge and the gateway (build with FC_RELEASE=1: debug binaries do not
// sustain 5 000 msg/s on two cores). FC_BENCH_KNOWN, FC_BENCH_LIVE and
// FC_BENCH_SECONDS change the sizes.
//
// Gliding (issue #16): FC_BENCH_GLIDE=both (default) measures every view
// twice in the same run, markers jumping to each fix (off) then gliding
// between them (on); `off` or `on` measures one, `on,off` both the other
// way round (to tell the order's effect from gliding's on a busy machine). Views: zoomed out (zoom 11,
// clustered: no glides), mid (zoom 13) and zoomed in (zoom 15).
import { test } from 'node:test';
import { spawn } from 'node:child_process';
import { join } from 'node:path';
import { chromium } from 'playwright-core';
import { CHROMIUM_ARGS, Gateway, base, binDir, env, screenshots, sleep, token, waitFor } from './harness.mjs';

const KNOWN = Number(process.env.FC_BENCH_KNOWN || 50000);
const LIVE = Number(process.env.FC_BENCH_LIVE || 5000);
const SECONDS = Number(process.env.FC_BENCH_SECONDS || 20);
const SOURCE = process.env.FC_BENCH_SOURCE || 'synthetic';
const GLIDE = process.env.FC_BENCH_GLIDE || 'both';
const GLIDES = (GLIDE === 'both' ? 'off,on' : GLIDE).split(',').map((g) => ({ on: true, off: false })[g]);
if (GLIDES.some((g) => g === undefined)) throw new Error(`FC_BENCH_GLIDE=${GLIDE}: expected both, on, off or a list such as on,off`);
const CENTER = [52.52, 13.4];

function sim(args) {
  const p = spawn(join(binDir, 'fieldcast-sim'), ['fleet', '--prefix', 'k', '--center', CENTER.join(','), '--radius-km', '15', ...args], {
    env: { ...process.env, FIELDCAST_MQTT_URL: `mqtt://127.0.0.1:${env.mqttPort}`, RUST_LOG: 'warn' },
    stdio: ['ignore', 'inherit', 'inherit'],
  });
  return { proc: p, done: new Promise((r) => p.once('exit', r)) };
}

/** In the page: KNOWN devices in a snapshot, then LIVE of them moving at 1 Hz (in 10 slices a second). */
function synthetic({ known, live, center }) {
  const fc = window.fieldcast;
  const rnd = (i) => ((Math.sin(i * 12.9898) * 43758.5453) % 1 + 1) % 1;
  const now = Date.now();
  const devices = [];
  for (let i = 1; i <= known; i++) {
    devices.push({
      device: `k-${i}`, lat: center[0] + (rnd(i) - 0.5) * 0.27, lon: center[1] + (rnd(i + 0.5) - 0.5) * 0.44, ts: now,
      speed: 10, heading: (i * 37) % 360, accuracy: 5, alt: null, online: i % 17 !== 0, battery: 50 + (i % 50), signal: -70, last_seen: now,
    });
  }
  fc.handle({ type: 'snapshot', devices });
  let tick = 0;
  window.benchFeed = setInterval(() => {
    tick += 1;
    const t = Date.now();
    const slice = live / 10;
    for (let j = 0; j < slice; j++) {
      const i = ((tick * slice + j) % live) + 1;
      const d = devices[i - 1];
      d.lat += 0.00005 * Math.cos((d.heading * Math.PI) / 180);
      d.lon += 0.00008 * Math.sin((d.heading * Math.PI) / 180);
      fc.handle({ type: 'location', device: d.device, ts: t, lat: d.lat, lon: d.lon, speed: 10, heading: d.heading });
    }
  }, 100);
}

test(`map page: ${KNOWN} known devices, ${LIVE} updating at 1 Hz (${SOURCE})`, { timeout: 900000 }, async () => {
  const gateway = new Gateway();
  await gateway.start();
  let live;
  try {
    if (SOURCE === 'sim') {
      const seedRate = Number(process.env.FC_BENCH_SEED_RATE || 2000); // messages per second
      const seed = sim(['--devices', String(KNOWN), '--connections', '50', '--rate', String(Math.min(1, seedRate / KNOWN)),
        '--event-every', '0', '--status-every', '0', '--ramp-up', '2s', '--duration', `${Math.ceil((KNOWN / seedRate) * 1.5)}s`,
        '--seed', '1', '--location-qos', '1']);
      await seed.done;
      const auth = { Authorization: `Bearer ${token()}` };
      await waitFor(`${KNOWN} devices in the hot state`, async () => {
        const n = (await (await fetch(`${base}/api/devices`, { headers: auth })).json()).length;
        console.log(`hot state: ${n} devices`);
        return n >= KNOWN * 0.98;
      }, 600000, 5000);
      live = sim(['--devices', String(LIVE), '--connections', '20', '--rate', '1', '--event-every', '120', '--status-every', '30', '--ramp-up', '2s', '--seed', '2']);
    }
    const browser = await chromium.launch({ executablePath: env.chromium, args: CHROMIUM_ARGS });
    const page = await browser.newPage({ viewport: { width: 1280, height: 800 } });
    const t0 = Date.now();
    await page.goto(`${base}/?live=bbox&token=${token()}`);
    await waitFor('live', async () => (await page.locator('#conn-state').getAttribute('data-state')) === 'live', 120000);
    const loadMs = Date.now() - t0;
    if (SOURCE === 'synthetic') {
      await page.evaluate(synthetic, { known: KNOWN, live: LIVE, center: CENTER });
      await page.evaluate((c) => window.fieldcast.map.setView(c, 11, { animate: false }), CENTER);
    }
    await waitFor('markers drawn', () => page.evaluate(() => window.fieldcast.layer.drawn.length > 0), 60000);
    await sleep(3000); // let the stream settle

    const measure = (seconds, glide) => page.evaluate(async ({ s, glide }) => {
      const fc = window.fieldcast;
      fc.glider.enabled = glide;
      if (!glide) fc.glider.stopAll();
      // Let the switch take effect (a glide lasts at most one reporting interval).
      await new Promise((r) => setTimeout(r, 2000));
      const g0 = { ...fc.glider.stats };
      const long = [];
      const obs = new PerformanceObserver((l) => long.push(...l.getEntries().map((e) => e.duration)));
      obs.observe({ type: 'longtask' });
      const m0 = fc.stats.messages;
      const d0 = { ...fc.layer.stats };
      let frames = 0;
      let worst = 0;
      let last = performance.now();
      const start = last;
      await new Promise((resolve) => {
        const f = (now) => {
          frames += 1;
          worst = Math.max(worst, now - last);
          last = now;
          if (now - start < s * 1000) requestAnimationFrame(f);
          else resolve();
        };
        requestAnimationFrame(f);
      });
      obs.disconnect();
      const elapsed = (performance.now() - start) / 1000;
      const input = document.getElementById('device-search');
      const s0 = performance.now();
      input.value = 'k-4999';
      input.dispatchEvent(new Event('input'));
      const searchMs = performance.now() - s0;
      input.value = '';
      input.dispatchEvent(new Event('input'));
      const draws = fc.layer.stats.draws - d0.draws;
      return {
        glide,
        zoom: fc.map.getZoom(),
        devices: fc.store.devices.size,
        drawnItems: fc.layer.drawn.length,
        clustered: fc.layer.clustered,
        fps: +(frames / elapsed).toFixed(1),
        worstFrameMs: +worst.toFixed(1),
        messagesPerSecond: Math.round((fc.stats.messages - m0) / elapsed),
        drawsPerSecond: +(draws / elapsed).toFixed(1),
        drawMsAvg: +((fc.layer.stats.ms - d0.ms) / Math.max(1, draws)).toFixed(2),
        glidesPerSecond: Math.round((fc.glider.stats.glides - g0.glides) / elapsed),
        gliding: fc.glider.moving.size,
        longTasks: long.length,
        longTaskMsPerSecond: Math.round(long.reduce((a, b) => a + b, 0) / elapsed),
        searchMs: +searchMs.toFixed(1),
        heapMB: performance.memory ? Math.round(performance.memory.usedJSHeapSize / 1048576) : null,
      };
    }, { s: seconds, glide });

    const results = { source: SOURCE, known: KNOWN, live: LIVE, pageLoadToLiveMs: loadMs };
    const views = [['zoomedOut', 11, SECONDS], ['mid', 13, Math.max(5, SECONDS / 2)], ['zoomedIn', 15, Math.max(5, SECONDS / 2)]];
    for (const [name, zoom, seconds] of views) {
      await page.evaluate(({ c, z }) => window.fieldcast.map.setView(c, z, { animate: false }), { c: CENTER, z: zoom });
      await sleep(2000);
      for (const glide of GLIDES) {
        const r = await measure(seconds, glide);
        results[`${name}${glide ? 'GlideOn' : 'GlideOff'}`] = r;
        console.log(`${name} glide ${glide ? 'on' : 'off'}: ${r.fps} fps, ${r.drawnItems} drawn, ${r.longTaskMsPerSecond} ms/s long tasks, ${r.messagesPerSecond} msg/s`);
      }
      await page.screenshot({ path: join(screenshots, `bench-${name}.png`) });
    }
    console.log(JSON.stringify(results, null, 2));
    await browser.close();
  } finally {
    if (live) {
      live.proc.kill('SIGTERM');
      await live.done;
    }
    await gateway.stop();
  }
});
