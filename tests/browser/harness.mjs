// Test harness: the gateway process (the tests stop and restart it), MQTT
// publishes through mosquitto_pub, HS256 tokens, and waiting helpers.
// scripts/browser-test.sh starts the broker, the bridge and the database and
// passes them in the environment (FC_*), see there.
import { spawn, execFile } from 'node:child_process';
import { createHmac } from 'node:crypto';
import { mkdirSync, openSync, writeFileSync, rmSync } from 'node:fs';
import { join } from 'node:path';
import { promisify } from 'node:util';

const run = promisify(execFile);

export const env = {
  root: need('FC_ROOT'),
  tmp: need('FC_TMP'),
  mqttPort: need('FC_MQTT_PORT'),
  gatewayPort: need('FC_GATEWAY_PORT'),
  secret: need('FC_JWT_SECRET'),
  redisUrl: process.env.FC_REDIS_URL || 'redis://127.0.0.1:6379',
  prefix: need('FC_REDIS_PREFIX'),
  databaseUrl: need('FC_DATABASE_URL'),
  chromium: process.env.FC_CHROMIUM || '/usr/bin/chromium',
};
export const base = `http://127.0.0.1:${env.gatewayPort}`;
/** Where the binaries are (target/debug, or target/release with FC_RELEASE=1). */
export const binDir = need('FC_BIN_DIR');
export const screenshots = join(env.root, 'tests/browser/screenshots');
mkdirSync(screenshots, { recursive: true });

function need(name) {
  const v = process.env[name];
  if (!v) throw new Error(`${name} is not set: run the browser tests with scripts/browser-test.sh`);
  return v;
}

export const CHROMIUM_ARGS = [
  '--headless', '--no-sandbox', '--disable-gpu', '--disable-background-networking', '--disable-quic',
  '--no-first-run', '--disable-component-update', '--disable-sync', '--disable-dev-shm-usage',
];

/** An HS256 JWT as the gateway expects (PROTOCOL.md §4). */
export function token(claims = {}) {
  const b64 = (o) => Buffer.from(JSON.stringify(o)).toString('base64url');
  const now = Math.floor(Date.now() / 1000);
  const body = `${b64({ alg: 'HS256', typ: 'JWT' })}.${b64({ sub: 'browser-test', exp: now + 3600, ...claims })}`;
  return `${body}.${createHmac('sha256', env.secret).update(body).digest('base64url')}`;
}

export async function publish(topic, payload, { retain = false, qos = 1 } = {}) {
  const args = ['-h', '127.0.0.1', '-p', env.mqttPort, '-q', String(qos), '-t', topic, '-m', JSON.stringify(payload)];
  if (retain) args.push('-r');
  await run('mosquitto_pub', args);
}

export const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

/** Polls `f` until it returns a truthy value (returned) or `ms` pass (throws, naming `what`). */
export async function waitFor(what, f, ms = 30000, every = 200) {
  const end = Date.now() + ms;
  let last;
  for (;;) {
    try {
      last = await f();
      if (last) return last;
    } catch (e) {
      last = e;
    }
    if (Date.now() > end) throw new Error(`timed out waiting for ${what} (last: ${last})`);
    await sleep(every);
  }
}

/**
 * The gateway under test: a real `target/debug/fieldcast-gateway` process.
 * `env`: variables to set on top of the test setup's, or to unset (null),
 * e.g. `{ FIELDCAST_MAP_TILES: null }` for a gateway without tiles whatever
 * the caller's environment says.
 */
export class Gateway {
  constructor({ env: extra = {} } = {}) {
    this.proc = null;
    this.starts = 0;
    this.extraEnv = extra;
  }

  async start() {
    this.starts += 1;
    const log = openSync(join(env.tmp, `gateway-${this.starts}.log`), 'a');
    const childEnv = {
      ...process.env,
      FIELDCAST_LISTEN: `127.0.0.1:${env.gatewayPort}`,
      FIELDCAST_REDIS_URL: env.redisUrl,
      FIELDCAST_REDIS_PREFIX: env.prefix,
      FIELDCAST_DATABASE_URL: env.databaseUrl,
      FIELDCAST_JWT_SECRET: env.secret,
      FIELDCAST_SHUTDOWN_GRACE: '2s',
      // One gateway, no load balancer to drain from: SIGTERM closes at once.
      FIELDCAST_DRAIN_GRACE: '0s',
      FIELDCAST_MAP_STALE: '10m',
      RUST_LOG: process.env.RUST_LOG || 'info',
      ...this.extraEnv,
    };
    for (const [k, v] of Object.entries(childEnv)) if (v == null) delete childEnv[k];
    this.proc = spawn(join(binDir, 'fieldcast-gateway'), [], { env: childEnv, stdio: ['ignore', log, log] });
    writeFileSync(join(env.tmp, 'gateway.pid'), String(this.proc.pid));
    const proc = this.proc;
    this.exited = new Promise((resolve) => proc.once('exit', (code, sig) => resolve({ code, sig })));
    await waitFor('gateway /readyz', async () => {
      if (proc.exitCode != null) throw new Error(`gateway exited with ${proc.exitCode}`);
      const r = await fetch(`${base}/readyz`);
      return r.ok;
    }, 60000);
  }

  /** SIGTERM, as an operator's restart does; resolves with the exit status. */
  async stop() {
    if (!this.proc) return null;
    this.proc.kill('SIGTERM');
    const t = setTimeout(() => this.proc?.kill('SIGKILL'), 15000);
    const res = await this.exited;
    clearTimeout(t);
    this.proc = null;
    rmSync(join(env.tmp, 'gateway.pid'), { force: true });
    return res;
  }
}
