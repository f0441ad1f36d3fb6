// Tokens from a login URL (issue #16): the gateway runs with
// FIELDCAST_LOGIN_URL pointing at a login service this test serves itself,
// which answers every visit by redirecting to `<return_to>#token=<JWT>`.
// A page without a token must go there, come back signed in, and keep the
// token out of its address bar. Skipped, saying so, when the gateway does
// not put `login_url` in /config.json.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { createServer } from 'node:http';
import { chromium } from 'playwright-core';
import { CHROMIUM_ARGS, Gateway, base, env, publish, token, waitFor } from './harness.mjs';

const visits = [];
const login = createServer((req, res) => {
  const url = new URL(req.url, 'http://login');
  visits.push(url);
  const back = url.searchParams.get('return_to');
  if (url.pathname !== '/login' || !back) {
    res.writeHead(400).end('return_to missing');
    return;
  }
  res.writeHead(302, { Location: `${back}#token=${token({ sub: 'alice' })}` }).end();
});
let gateway;
let browser;
let loginUrl;

before(async () => {
  await new Promise((r) => login.listen(0, '127.0.0.1', r));
  loginUrl = `http://127.0.0.1:${login.address().port}/login?realm=fleet`;
  gateway = new Gateway({ env: { FIELDCAST_LOGIN_URL: loginUrl } });
  await gateway.start();
  // Where the other files' devices are (map.test.mjs fits the view to all of them).
  await publish('devices/login-1/location', { lat: 52.511, lon: 13.392 });
  browser = await chromium.launch({ executablePath: env.chromium, args: CHROMIUM_ARGS, headless: true });
});

after(async () => {
  await browser?.close();
  await gateway?.stop();
  login.close();
});

test('a page without a token goes to the login URL and comes back signed in', async (t) => {
  const config = await (await fetch(`${base}/config.json`)).json();
  if (config.login_url !== loginUrl) {
    t.skip(`this gateway has no login_url in /config.json (got ${JSON.stringify(config.login_url)}): login redirect not tested`);
    return;
  }
  const page = await browser.newPage();
  await page.goto(`${base}/?live=fleet`);
  await waitFor('live after the login trip', async () => (await page.locator('#conn-state').getAttribute('data-state')) === 'live');
  assert.equal(visits.length, 1, 'one trip to the login service');
  assert.equal(visits[0].searchParams.get('realm'), 'fleet', "the login URL's own query is kept");
  assert.equal(visits[0].searchParams.get('return_to'), `${base}/?live=fleet`);
  assert.equal(page.url(), `${base}/?live=fleet`, 'the token is out of the address bar');
  const stored = await page.evaluate(() => sessionStorage.getItem('fieldcast.token'));
  assert.equal(JSON.parse(Buffer.from(stored.split('.')[1], 'base64url')).sub, 'alice');
  await waitFor('a marker', () => page.evaluate(() => window.fieldcast.marker('login-1')));
  await page.close();
});

test('a token in the fragment signs in and leaves the address bar', async () => {
  const page = await browser.newPage();
  const before = visits.length;
  await page.goto(`${base}/?live=fleet#token=${token({ sub: 'bob' })}`);
  await waitFor('live', async () => (await page.locator('#conn-state').getAttribute('data-state')) === 'live');
  assert.equal(page.url(), `${base}/?live=fleet`);
  assert.equal(visits.length, before, 'no trip to the login service');
  await page.close();
});
