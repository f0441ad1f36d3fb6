// Geofences as the page sees them, with no DOM and no Leaflet (unit-tested
// by `npm test`): a fence's schedule (is it active now?), its GeoJSON Feature
// turned into what the fences layer draws and hit-tests (rings and lines as
// Web Mercator fractions, like the devices and the basemap), and the
// Features the editor posts. The rules follow crates/geofence (the server's):
// circles and corridors on the mean-radius sphere, schedules as local
// day/minute windows with a fixed offset.
import { mercator } from './store.js';

/** The mean Earth radius crates/geofence measures circles and corridors on (metres). */
export const EARTH_RADIUS = 6371008.8;
const DAYS = ['mon', 'tue', 'wed', 'thu', 'fri', 'sat', 'sun'];
const DAY_MS = 86400000;
/** Points of a circle's ring: under a pixel off a true circle up to ~1000 px across. */
const CIRCLE_POINTS = 72;

// ---- schedule

/** `HH:MM` -> minutes after midnight, or null. */
function minutes(s) {
  const m = /^(\d\d):(\d\d)$/.exec(s ?? '');
  return m ? Number(m[1]) * 60 + Number(m[2]) : null;
}

/** `Z`, `UTC` or `±HH:MM` -> minutes east of UTC (0 when missing or unreadable). */
function offsetMinutes(tz) {
  if (tz == null || tz === 'Z' || /^utc$/i.test(tz)) return 0;
  const m = /^([+-])(\d\d):(\d\d)$/.exec(tz);
  return m ? (m[1] === '-' ? -1 : 1) * (Number(m[2]) * 60 + Number(m[3])) : 0;
}

/**
 * Whether a fence with `schedule` (`properties.schedule`, or none = always)
 * is active at `atMs`, as the bridge decides it (crates/geofence
 * schedule.rs): `days` are the local days a window starts on (default every
 * day), `from` inclusive, `to` exclusive (`24:00` allowed), `to` before
 * `from` runs past midnight into the next day, `tz` a fixed offset.
 */
export function scheduleActive(schedule, atMs) {
  if (!schedule) return true;
  const from = schedule.from == null ? 0 : minutes(schedule.from);
  const to = schedule.to == null ? 1440 : minutes(schedule.to);
  if (from == null || to == null) return true; // the server validated it; draw it rather than hide it
  const days = Array.isArray(schedule.days) ? schedule.days.map((d) => DAYS.indexOf(String(d).toLowerCase())) : [0, 1, 2, 3, 4, 5, 6];
  const local = atMs + offsetMinutes(schedule.tz) * 60000;
  const day = Math.floor(local / DAY_MS);
  const minute = Math.floor((local - day * DAY_MS) / 60000);
  const weekday = (((day + 3) % 7) + 7) % 7; // 1970-01-01 was a Thursday (3, Monday = 0)
  const on = (d) => days.includes(d);
  if (from < to) return on(weekday) && minute >= from && minute < to;
  return (on(weekday) && minute >= from) || (on((weekday + 6) % 7) && minute < to);
}

/** A schedule in words: `mon–fri 07:00–19:00 (+01:00)`. */
export function scheduleText(schedule) {
  if (!schedule) return 'always';
  const days = schedule.days?.length && schedule.days.length < 7 ? `${schedule.days.join(' ')} ` : 'every day ';
  const allDay = schedule.from == null || (schedule.from === '00:00' && schedule.to === '24:00');
  const hours = allDay ? 'all day' : `${schedule.from}–${schedule.to}`;
  const tz = schedule.tz && schedule.tz !== 'Z' && !/^utc$/i.test(schedule.tz) ? ` (${schedule.tz})` : ' UTC';
  return `${days}${hours}${tz}`;
}

// ---- shapes

/** A Feature's kind: `polygon`, `circle` (Point + radius), `corridor` (LineString + width), or null. */
export function fenceKind(feature) {
  const g = feature?.geometry;
  const p = feature?.properties || {};
  if (g?.type === 'Polygon') return 'polygon';
  if (g?.type === 'Point' && p.radius > 0) return 'circle';
  if (g?.type === 'LineString' && p.width > 0) return 'corridor';
  return null;
}

/** Great-circle distance in metres (haversine on the mean-radius sphere, as the server measures). */
export function distance(lat1, lon1, lat2, lon2) {
  const r = Math.PI / 180;
  const a = Math.sin(((lat2 - lat1) * r) / 2) ** 2 + Math.cos(lat1 * r) * Math.cos(lat2 * r) * Math.sin(((lon2 - lon1) * r) / 2) ** 2;
  return 2 * EARTH_RADIUS * Math.asin(Math.min(1, Math.sqrt(a)));
}

/**
 * A circle of `radius` metres round (lat, lon) as a closed ring of
 * `[lon, lat]`: the points at that great-circle distance, so it is the
 * shape the server tests (a Mercator circle would be too round far from the
 * equator). Longitudes are left unwrapped (beyond ±180° for a circle across
 * the 180° meridian), so the ring stays continuous.
 */
export function circleRing(lat, lon, radius, n = CIRCLE_POINTS) {
  const r = Math.PI / 180;
  const d = radius / EARTH_RADIUS;
  const p1 = lat * r;
  const ring = [];
  for (let i = 0; i <= n; i++) {
    const b = ((i % n) / n) * 2 * Math.PI;
    const p2 = Math.asin(Math.sin(p1) * Math.cos(d) + Math.cos(p1) * Math.sin(d) * Math.cos(b));
    const l2 = Math.atan2(Math.sin(b) * Math.sin(d) * Math.cos(p1), Math.cos(d) - Math.sin(p1) * Math.sin(p2));
    ring.push([lon + l2 / r, p2 / r]);
  }
  return ring;
}

/** `[[lon, lat], ...]` -> `{pts: Float64Array [x0, y0, ...], box}` in Web Mercator fractions. */
export function project(coords) {
  const pts = new Float64Array(coords.length * 2);
  const box = { minX: Infinity, minY: Infinity, maxX: -Infinity, maxY: -Infinity };
  coords.forEach(([lon, lat], i) => {
    const [x, y] = mercator(lat, lon);
    pts[2 * i] = x;
    pts[2 * i + 1] = y;
    extend(box, x, y);
  });
  return { pts, box };
}

function extend(box, x, y) {
  if (x < box.minX) box.minX = x;
  if (x > box.maxX) box.maxX = x;
  if (y < box.minY) box.minY = y;
  if (y > box.maxY) box.maxY = y;
}

/** Metres at latitude `lat` as a fraction of the Mercator world's width. */
export function metresToWorld(m, lat) {
  return m / (2 * Math.PI * EARTH_RADIUS * Math.max(Math.cos((Math.min(85.0511, Math.abs(lat)) * Math.PI) / 180), 1e-9));
}

/**
 * A fence (a GeoJSON Feature from `GET /api/geofences`) as the fences layer
 * draws it, or null for a Feature the page cannot draw:
 *
 * - `rings`: polygons (outer ring and holes, filled even-odd) and circles
 *   (their ring, circleRing), projected;
 * - `line` and `halfWidth` (a corridor): the centre line, projected, and
 *   half the width as a fraction of the world at the line's mean latitude.
 *   The layer strokes it with round caps and joins, which is exactly the
 *   set of points within half the width of the line on the Mercator plane;
 *   the scale is taken once per corridor, so a corridor spanning many
 *   degrees of latitude is drawn a few per cent too narrow or wide at its
 *   ends (the server measures on the sphere);
 * - `box` (with the corridor's width), `label` `[x, y]` (a point inside
 *   the shape where its name goes), `area` (the box's, to prefer the
 *   smaller of overlapping fences on a click).
 */
export function fenceShape(feature) {
  const kind = fenceKind(feature);
  if (!kind) return null;
  const p = feature.properties || {};
  const base = {
    id: feature.id,
    kind,
    name: p.name ?? `fence ${feature.id}`,
    severity: p.severity || 'info',
    schedule: p.schedule || null,
    groups: p.groups || null,
    feature,
  };
  const c = feature.geometry.coordinates;
  let shape;
  if (kind === 'corridor') {
    const line = project(c);
    const meanLat = c.reduce((s, q) => s + q[1], 0) / c.length;
    const halfWidth = metresToWorld(p.width / 2, meanLat);
    const box = {
      minX: line.box.minX - halfWidth, minY: line.box.minY - halfWidth,
      maxX: line.box.maxX + halfWidth, maxY: line.box.maxY + halfWidth,
    };
    shape = { ...base, line: line.pts, halfWidth, box, label: lineMiddle(line.pts) };
  } else {
    const rings = (kind === 'circle' ? [circleRing(c[1], c[0], p.radius)] : c).map(project);
    const box = { ...rings[0].box };
    shape = { ...base, rings: rings.map((r) => r.pts), box };
    shape.label = kind === 'circle' ? mercator(c[1], c[0]) : polygonLabel(shape.rings);
  }
  shape.area = (shape.box.maxX - shape.box.minX) * (shape.box.maxY - shape.box.minY);
  return shape;
}

/** The point halfway along a projected line. */
export function lineMiddle(pts) {
  let total = 0;
  for (let i = 2; i < pts.length; i += 2) total += Math.hypot(pts[i] - pts[i - 2], pts[i + 1] - pts[i - 1]);
  let left = total / 2;
  for (let i = 2; i < pts.length; i += 2) {
    const len = Math.hypot(pts[i] - pts[i - 2], pts[i + 1] - pts[i - 1]);
    if (len >= left && len > 0) {
      const t = left / len;
      return [pts[i - 2] + t * (pts[i] - pts[i - 2]), pts[i - 1] + t * (pts[i + 1] - pts[i - 1])];
    }
    left -= len;
  }
  return [pts[0], pts[1]];
}

/**
 * Where a polygon's name goes: the outer ring's centroid when it is inside
 * the polygon (holes count as outside), else the middle of the widest
 * inside stretch of the horizontal line through it, so a C- or ring-shaped
 * fence still gets its name on itself.
 */
export function polygonLabel(rings) {
  const outer = rings[0];
  let a = 0;
  let cx = 0;
  let cy = 0;
  for (let i = 0; i + 3 < outer.length; i += 2) {
    const f = outer[i] * outer[i + 3] - outer[i + 2] * outer[i + 1];
    a += f;
    cx += (outer[i] + outer[i + 2]) * f;
    cy += (outer[i + 1] + outer[i + 3]) * f;
  }
  if (Math.abs(a) < 1e-30) return [outer[0], outer[1]];
  cx /= 3 * a;
  cy /= 3 * a;
  if (insideRings(rings, cx, cy)) return [cx, cy];
  const xs = [];
  for (const r of rings) {
    for (let i = 0; i + 3 < r.length; i += 2) {
      const [x0, y0, x1, y1] = [r[i], r[i + 1], r[i + 2], r[i + 3]];
      if ((y0 > cy) !== (y1 > cy)) xs.push(x0 + ((cy - y0) / (y1 - y0)) * (x1 - x0));
    }
  }
  xs.sort((p, q) => p - q);
  let best = [outer[0], outer[1]];
  let widest = -1;
  for (let i = 0; i + 1 < xs.length; i += 2) {
    if (xs[i + 1] - xs[i] > widest) {
      widest = xs[i + 1] - xs[i];
      best = [(xs[i] + xs[i + 1]) / 2, cy];
    }
  }
  return best;
}

/** Even-odd over every ring: inside the outer ring and outside its holes. */
export function insideRings(rings, x, y) {
  let inside = false;
  for (const r of rings) {
    for (let i = 0, j = r.length - 2; i < r.length; j = i, i += 2) {
      const xi = r[i];
      const yi = r[i + 1];
      const xj = r[j];
      const yj = r[j + 1];
      if ((yi > y) !== (yj > y) && x < ((xj - xi) * (y - yi)) / (yj - yi) + xi) inside = !inside;
    }
  }
  return inside;
}

/** Distance from (x, y) to a projected line, in the line's units. */
export function distanceToLine(pts, x, y) {
  let best = Infinity;
  for (let i = 0; i + 3 < pts.length; i += 2) {
    const ax = pts[i];
    const ay = pts[i + 1];
    const dx = pts[i + 2] - ax;
    const dy = pts[i + 3] - ay;
    const len2 = dx * dx + dy * dy;
    const t = len2 ? Math.max(0, Math.min(1, ((x - ax) * dx + (y - ay) * dy) / len2)) : 0;
    best = Math.min(best, Math.hypot(x - ax - t * dx, y - ay - t * dy));
  }
  if (pts.length === 2) best = Math.hypot(x - pts[0], y - pts[1]);
  return best;
}

/** Whether a drawn shape covers the Mercator point (x, y), give or take `tol` (world fraction) for corridors. */
export function shapeContains(shape, x, y, tol = 0) {
  const b = shape.box;
  if (x < b.minX - tol || x > b.maxX + tol || y < b.minY - tol || y > b.maxY + tol) return false;
  if (shape.line) return distanceToLine(shape.line, x, y) <= shape.halfWidth + tol;
  return insideRings(shape.rings, x, y);
}

/**
 * The fence under the Mercator point (x, y) among `shapes`: the one with the
 * smallest box when several overlap, so a small fence inside a big one can
 * still be picked. The point is tried in the world copies east and west too
 * (a circle across the 180° meridian reaches past 0 or 1).
 */
export function fenceAt(shapes, x, y, tol = 0) {
  let best = null;
  for (const s of shapes) {
    if (best && s.area >= best.area) continue;
    const wx = x - Math.floor(x);
    if (shapeContains(s, wx, y, tol) || shapeContains(s, wx - 1, y, tol) || shapeContains(s, wx + 1, y, tol)) best = s;
  }
  return best;
}

// ---- what the editor posts

const round7 = (v) => Math.round(v * 1e7) / 1e7;
/** A longitude back into -180..180 (Leaflet's clicks on a world copy go beyond). */
export const wrapLon = (lon) => round7(((((lon + 180) % 360) + 360) % 360) - 180);

/** A circle fence to POST: centre and a point on its edge as `{lat, lng}`; the radius in whole metres (at least 1). */
export function circleFeature(centre, edge, properties) {
  const radius = Math.max(1, Math.round(distance(centre.lat, centre.lng, edge.lat, edge.lng)));
  return {
    type: 'Feature',
    geometry: { type: 'Point', coordinates: [wrapLon(centre.lng), round7(centre.lat)] },
    properties: { ...properties, radius },
  };
}

/**
 * A polygon fence to POST from the vertices clicked (`{lat, lng}`), closed
 * (the first position repeated last, as GeoJSON wants) and without
 * repeated neighbours (the two clicks of a double-click). The ring is
 * unwrapped relative to its first vertex, so a polygon drawn across the 180°
 * meridian keeps its shape, and any vertex outside -180..180 is shifted back
 * with the whole ring (the server still refuses an edge longer than 180°).
 */
export function polygonFeature(vertices, properties) {
  const pts = [];
  for (const v of vertices) {
    const q = [round7(v.lng), round7(v.lat)];
    const last = pts[pts.length - 1];
    if (!last || last[0] !== q[0] || last[1] !== q[1]) pts.push(q);
  }
  while (pts.length > 1 && pts[0][0] === pts[pts.length - 1][0] && pts[0][1] === pts[pts.length - 1][1]) pts.pop();
  const shift = wrapLon(pts[0]?.[0] ?? 0) - (pts[0]?.[0] ?? 0);
  const ring = pts.map(([lon, lat]) => [round7(lon + shift), lat]);
  if (ring.length) ring.push([...ring[0]]);
  return { type: 'Feature', geometry: { type: 'Polygon', coordinates: [ring] }, properties: { ...properties } };
}
