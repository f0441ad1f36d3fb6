// The devices the page knows, keyed by id. Positions are kept as Web
// Mercator fractions (mx, my in 0..1) so the canvas layer projects 50 000
// devices with two multiply-adds each.

export const STATES = ['online', 'stale', 'offline'];

export function mercator(lat, lon) {
  const s = Math.sin((Math.max(-85.0511, Math.min(85.0511, lat)) * Math.PI) / 180);
  return [(lon + 180) / 360, 0.5 - Math.log((1 + s) / (1 - s)) / (4 * Math.PI)];
}

export class Store {
  constructor(staleMs) {
    this.staleMs = staleMs;
    /** id -> device record */
    this.devices = new Map();
    /** bumped on any change, so views redraw only when needed */
    this.version = 0;
    /** bumped when the set of ids changes (the list re-sorts only then) */
    this.listVersion = 0;
    this.listeners = new Set();
    /**
     * Called as a fix moves a device, with the record (at the new fix) and
     * its previous fix: `(d, mx0, my0, ts0, heading0)`. The glider's hook.
     */
    this.onMove = null;
    /** Called when a snapshot or the API puts a device somewhere afresh (`d`): no glide. */
    this.onPut = null;
  }

  changed(listChanged = true) {
    this.version += 1;
    if (listChanged) this.listVersion += 1;
    for (const f of this.listeners) f();
  }

  get(id) {
    return this.devices.get(id);
  }

  ensure(id) {
    let d = this.devices.get(id);
    if (!d) {
      d = {
        id, lat: null, lon: null, mx: null, my: null, ts: null, speed: null, heading: null,
        accuracy: null, alt: null, online: null, battery: null, signal: null, last_seen: null,
        sts: null, state: 'stale', groups: null,
        // The glider's (glide.js): kept on the record so a frame needs no lookup per device.
        interval: null, glide: null,
      };
      this.devices.set(id, d);
    }
    return d;
  }

  /**
   * A DeviceState from a snapshot or the HTTP API: fresh truth, replaces what
   * we had. `now`: the time the state is classified at (a past instant in
   * the "where was everyone at" view).
   */
  putState(s, now = Date.now()) {
    const d = this.ensure(s.device);
    for (const k of ['lat', 'lon', 'ts', 'speed', 'heading', 'accuracy', 'alt', 'online', 'battery', 'signal', 'last_seen']) {
      d[k] = s[k] ?? null;
    }
    // Live messages do not carry groups: a device keeps the last ones a state said.
    if (Array.isArray(s.groups)) d.groups = s.groups;
    this.project(d);
    this.classify(d, now);
    if (this.onPut) this.onPut(d);
  }

  location(m) {
    const d = this.ensure(m.device);
    if (d.ts != null && m.ts <= d.ts) return d; // order: only forward (also after a snapshot)
    const mx0 = d.mx;
    const my0 = d.my;
    const ts0 = d.ts;
    const h0 = d.heading;
    d.lat = m.lat;
    d.lon = m.lon;
    d.ts = m.ts;
    // A fix's optional fields belong to that fix (README: a newer fix without them clears them).
    d.speed = m.speed ?? null;
    d.heading = m.heading ?? null;
    d.accuracy = m.accuracy ?? null;
    d.alt = m.alt ?? null;
    this.seen(d, m.ts);
    this.project(d);
    this.classify(d, Date.now());
    if (this.onMove) this.onMove(d, mx0, my0, ts0, h0);
    return d;
  }

  /** The groups of every known device, sorted (the filter's choices). */
  groups() {
    const all = new Set();
    for (const d of this.devices.values()) if (d.groups) for (const g of d.groups) all.add(g);
    return [...all].sort();
  }

  status(m) {
    const d = this.ensure(m.device);
    if (d.sts != null && m.ts <= d.sts) return d;
    d.sts = m.ts;
    d.online = m.online;
    if (m.battery != null) d.battery = m.battery;
    if (m.signal != null) d.signal = m.signal;
    this.seen(d, m.ts);
    this.classify(d, Date.now());
    return d;
  }

  seen(d, ts) {
    if (ts != null && (d.last_seen == null || ts > d.last_seen)) d.last_seen = ts;
  }

  project(d) {
    if (d.lat == null || d.lon == null) {
      d.mx = d.my = null;
      return;
    }
    [d.mx, d.my] = mercator(d.lat, d.lon);
  }

  /** offline: the device said so (or its Last Will did); stale: silent for `staleMs`; else online. */
  classify(d, now) {
    let state;
    if (d.online === false) state = 'offline';
    else if (d.last_seen == null || now - d.last_seen > this.staleMs) state = 'stale';
    else state = 'online';
    const changed = state !== d.state;
    d.state = state;
    return changed;
  }

  /** Re-evaluates staleness as time passes; returns true if any device changed state. */
  tick(now = Date.now()) {
    let any = false;
    for (const d of this.devices.values()) if (this.classify(d, now)) any = true;
    return any;
  }

  remove(id) {
    this.devices.delete(id);
  }

  counts() {
    const c = { online: 0, stale: 0, offline: 0 };
    for (const d of this.devices.values()) c[d.state] += 1;
    return c;
  }
}
