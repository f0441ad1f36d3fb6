// Smooth movement between fixes, without DOM or map: a moving marker glides
// from where it is drawn to its new fix over about the device's reporting
// interval, turning to its new heading. Gliding is only for what it makes
// believable: an online device taking a step it could have driven. A jump
// (teleport, a GPS glitch, a device back after a long silence), a stale or
// offline device, or a clustered view shows the fix as it is. Positions are
// the store's Web Mercator fractions (mx, my), so a frame costs a few
// multiply-adds per gliding device. Unit-tested in web/test/glide.test.mjs.

/** The reporting interval estimate is clamped to this: a marker lags its fix by at most MAX_MS. */
export const MIN_INTERVAL_MS = 250;
export const MAX_INTERVAL_MS = 5000;
/** Weight of the newest spacing in the interval estimate (the rest is the previous estimate). */
const NEW_WEIGHT = 0.3;
/** The fastest a device without a speed is believed to move (250 km/h), m/s. */
const FLOOR_SPEED = 70;
/** GPS noise a jump may add on top of what the speed explains, metres. */
const NOISE_M = 100;
/** Earth's circumference at the equator (Web Mercator's), metres. */
const EARTH_M = 40075016.686;

/**
 * The device's reporting interval after a fix `dtMs` after the previous one:
 * a moving average (one late fix does not halve the glide speed of the next
 * ones), clamped to MIN_INTERVAL_MS..MAX_INTERVAL_MS. `prev` null: the first.
 */
export function nextInterval(prev, dtMs) {
  const dt = Math.min(MAX_INTERVAL_MS, Math.max(MIN_INTERVAL_MS, dtMs));
  const est = prev == null ? dt : prev * (1 - NEW_WEIGHT) + dt * NEW_WEIGHT;
  return Math.min(MAX_INTERVAL_MS, Math.max(MIN_INTERVAL_MS, est));
}

/** Metres between two Web Mercator points (fractions), at their mean latitude's scale. */
export function mercatorMetres(x0, y0, x1, y1) {
  let dx = x1 - x0;
  if (dx > 0.5) dx -= 1;
  else if (dx < -0.5) dx += 1;
  const dy = y1 - y0;
  // Mercator stretches by 1/cos(lat): undo it at the middle's latitude.
  const lat = Math.atan(Math.sinh(Math.PI * (1 - (y0 + y1)))); // y in 0..1 -> lat of (y0+y1)/2
  return Math.hypot(dx, dy) * EARTH_M * Math.cos(lat);
}

/**
 * Whether moving `metres` in `dtMs` is a step a device could take: within
 * twice its reported speed (or FLOOR_SPEED, whichever is more) plus GPS
 * noise. Anything farther is a jump, shown at once.
 */
export function plausibleStep(metres, dtMs, speed) {
  const v = Math.max(FLOOR_SPEED, 2 * (Number.isFinite(speed) ? speed : 0));
  return metres <= v * Math.max(0, dtMs) / 1000 + NOISE_M;
}

/** `a` to `b` (degrees, 0 = north) along the shorter way round, at fraction `f`. */
export function turn(a, b, f) {
  if (a == null) return b;
  if (b == null) return a;
  const d = ((((b - a) % 360) + 540) % 360) - 180;
  return (((a + d * f) % 360) + 360) % 360;
}

/**
 * Where a glide is at time `now` (ms, any clock as long as it is the one
 * `start` used): `out.x`, `out.y` (Mercator), `out.heading`; returns false
 * once it has arrived (out then holds the end). Linear in time: vehicles
 * cross a few hundred metres at a near-constant speed, and easing would
 * stop them at every fix. The heading turns in the first half.
 */
export function glideAt(g, now, out) {
  const f = g.ms > 0 ? (now - g.t0) / g.ms : 1;
  const p = Math.min(1, Math.max(0, f));
  let x = g.x0 + (g.x1 - g.x0) * p;
  if (x < 0) x += 1;
  else if (x >= 1) x -= 1;
  out.x = x;
  out.y = g.y0 + (g.y1 - g.y0) * p;
  out.heading = turn(g.h0, g.h1, Math.min(1, 2 * p));
  return f < 1;
}

/**
 * The gliding devices of the page. `fix()` is called for each new fix (the
 * store's `onMove`) with the device record (already at the new fix) and
 * where it was; the devices layer asks `position()` per drawn device and
 * keeps drawing frames while `active()` says some are under way, so every
 * gliding marker moves in the one draw loop of the layer.
 *
 * A glide lives on the record (`d.glide`: no map lookup per device per
 * frame) and in `this.moving` (to end them all at once).
 */
export class Glider {
  constructor({ enabled = true, clock = () => performance.now() } = {}) {
    this.enabled = enabled;
    /** true while the view is clustered: fixes then show as they are */
    this.suspended = false;
    this.clock = clock;
    this.moving = new Set();
    this.tmp = { x: 0, y: 0, heading: null };
    /** glides started, and fixes shown at once by reason, for tests and the benchmark */
    this.stats = { glides: 0, jumps: 0, skipped: 0 };
  }

  /**
   * A new fix of `d`: `mx0, my0, ts0, h0` are its previous fix (null for the
   * first). `staleMs`: a gap longer than this means the device was stale.
   */
  fix(d, mx0, my0, ts0, h0, staleMs) {
    if (ts0 != null && d.ts > ts0) d.interval = nextInterval(d.interval ?? null, d.ts - ts0);
    // Start from where the marker is drawn now (mid-glide, not the old fix): no step back.
    let x0 = mx0;
    let y0 = my0;
    let hs = h0;
    const now = this.clock();
    if (d.glide && glideAt(d.glide, now, this.tmp)) {
      x0 = this.tmp.x;
      y0 = this.tmp.y;
      hs = this.tmp.heading;
    }
    d.glide = null;
    if (!this.enabled || this.suspended || mx0 == null || d.mx == null || ts0 == null || d.state !== 'online'
      || d.ts - ts0 > staleMs || !(d.ts > ts0)) {
      this.stats.skipped += 1;
      return;
    }
    if (!plausibleStep(mercatorMetres(mx0, my0, d.mx, d.my), d.ts - ts0, d.speed)) {
      this.stats.jumps += 1;
      return;
    }
    let x1 = d.mx;
    // Across the 180° meridian: glide the short way, glideAt wraps x back.
    if (x1 - x0 > 0.5) x1 -= 1;
    else if (x0 - x1 > 0.5) x1 += 1;
    d.glide = { x0, y0, x1, y1: d.my, h0: hs, h1: d.heading, t0: now, ms: d.interval ?? MAX_INTERVAL_MS };
    this.moving.add(d);
    this.stats.glides += 1;
  }

  /**
   * Where `d` is drawn now: its glide's point in `this.tmp` (reused: read
   * it before the next call), or null when it is not gliding (draw d.mx, d.my).
   */
  position(d, now) {
    const g = d.glide;
    if (!g) return null;
    // Gone offline or stale mid-glide: shown where its fix is.
    if (d.state !== 'online' || !glideAt(g, now, this.tmp)) {
      d.glide = null;
      this.moving.delete(d);
      return null;
    }
    return this.tmp;
  }

  /** Whether any glide is under way (the layer draws another frame). Drops finished ones. */
  active(now) {
    for (const d of this.moving) {
      if (!d.glide || now - d.glide.t0 >= d.glide.ms) {
        d.glide = null;
        this.moving.delete(d);
      }
    }
    return this.moving.size > 0;
  }

  /** Ends every glide (zoomed out into clusters, gliding switched off, a snapshot). */
  stopAll() {
    for (const d of this.moving) d.glide = null;
    this.moving.clear();
  }

  /** Ends `d`'s glide: a snapshot or the API put it somewhere fresh. */
  stop(d) {
    if (!d.glide) return;
    d.glide = null;
    this.moving.delete(d);
  }
}
