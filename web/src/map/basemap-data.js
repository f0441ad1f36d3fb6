// The offline basemap's data and drawing primitives, with no DOM and no
// Leaflet (unit-tested by `npm test`); basemap.js is the Leaflet layer.
import { feature, mesh } from 'topojson-client';
import { mercator } from '../store.js';

export const STYLE = {
  sea: '#cddbe6',
  land: '#f4f2ec',
  coast: '#8ea8bc',
  border: '#b5a995',
  city: '#55606d',
  label: '#3f4955',
  halo: 'rgba(244,242,236,0.9)',
  font: '11px system-ui, -apple-system, "Segoe UI", sans-serif',
};

/** Cities labelled at each zoom (most important first); collisions drop more. */
export const CITIES_AT_ZOOM = [12, 12, 30, 80, 160];

/** A line or ring as Web Mercator fractions `[x0, y0, x1, y1, ...]` with its box. */
function path(coords) {
  const pts = new Float64Array(coords.length * 2);
  let minX = Infinity;
  let minY = Infinity;
  let maxX = -Infinity;
  let maxY = -Infinity;
  for (let i = 0; i < coords.length; i++) {
    const [x, y] = mercator(coords[i][1], coords[i][0]);
    pts[2 * i] = x;
    pts[2 * i + 1] = y;
    if (x < minX) minX = x;
    if (x > maxX) maxX = x;
    if (y < minY) minY = y;
    if (y > maxY) maxY = y;
  }
  return { pts, minX, minY, maxX, maxY };
}

/**
 * A ring made continuous across the 180° meridian: Natural Earth joins
 * Chukotka to Eurasia, and an islet of Fiji to itself, by an edge from 180°
 * to -180°, which a flat map would draw as a band around the world. Past
 * such an edge the longitudes go on beyond ±180° (the copies of the world
 * drawn east and west show them on both sides). Antarctica's bottom edge, from
 * 180° to -180° along the pole, is a real edge of the flat map and stays.
 */
function unwrap(coords) {
  let off = 0;
  let changed = false;
  const out = [coords[0]];
  for (let i = 1; i < coords.length; i++) {
    const [lon0, lat0] = coords[i - 1];
    const [lon1, lat1] = coords[i];
    const d = lon1 - lon0;
    if (Math.abs(d) > 180 && !(lat0 < -89.9 && lat1 < -89.9)) {
      off -= Math.sign(d) * 360;
      changed = true;
    }
    out.push(off ? [lon1 + off, lat1] : coords[i]);
  }
  return changed ? out : coords;
}

/**
 * An edge that Natural Earth adds where it cuts land, not a coast: along the
 * 180° meridian (Russia, Fiji, Antarctica) or the bottom of Antarctica.
 */
function artificial([lon0, lat0], [lon1, lat1]) {
  return (Math.abs(lon0) > 179.999 && Math.abs(lon1) > 179.999) || (lat0 < -89.9 && lat1 < -89.9);
}

/** One TopoJSON topology (`land` and `countries`) -> land polygons, coastlines and borders, projected. */
function decodeLevel(topo) {
  const polygons = [];
  const coasts = [];
  const addPolygon = (polygon) => {
    const rings = polygon.map(unwrap);
    const paths = rings.map(path);
    polygons.push({
      rings: paths,
      minX: Math.min(...paths.map((p) => p.minX)),
      minY: Math.min(...paths.map((p) => p.minY)),
      maxX: Math.max(...paths.map((p) => p.maxX)),
      maxY: Math.max(...paths.map((p) => p.maxY)),
    });
    for (const ring of rings) {
      // The coast is the ring without the cut edges.
      let run = [ring[0]];
      for (let i = 1; i < ring.length; i++) {
        if (artificial(ring[i - 1], ring[i])) {
          if (run.length > 1) coasts.push(path(run));
          run = [ring[i]];
        } else {
          run.push(ring[i]);
        }
      }
      if (run.length > 1) coasts.push(path(run));
    }
  };
  const land = feature(topo, topo.objects.land);
  for (const f of land.features || [land]) {
    const g = f.geometry;
    if (!g) continue;
    if (g.type === 'Polygon') addPolygon(g.coordinates);
    else if (g.type === 'MultiPolygon') g.coordinates.forEach(addPolygon);
  }
  // Borders: arcs that two countries share (a coast belongs to one only).
  const borders = mesh(topo, topo.objects.countries, (a, b) => a !== b).coordinates.map(path);
  return { polygons, coasts, borders };
}

/**
 * basemap.json -> `{levels: [{minZoom, polygons, coasts, borders}], cities}`:
 * one level per Natural Earth scale (1:110m for the world, 1:50m from zoom
 * 4, a tenth of the points where they would be closer than a pixel anyway),
 * and the cities, most important first.
 */
export function decodeBasemap(doc) {
  const levels = doc.levels
    .map((l) => ({ minZoom: l.min_zoom, ...decodeLevel(l.topology) }))
    .sort((a, b) => a.minZoom - b.minZoom);
  const cities = (doc.cities || []).map(([lon, lat, name], rank) => {
    const [mx, my] = mercator(lat, lon);
    return { name, rank, lat, lon, mx, my };
  });
  return { levels, cities };
}

/** The level to draw at `zoom`: the most detailed one that starts at or below it. */
export function levelAt(basemap, zoom) {
  let best = basemap.levels[0];
  for (const l of basemap.levels) if (l.minZoom <= zoom) best = l;
  return best;
}

/**
 * Traces `p` at world size `world`, shifted by (ox, oy), into the current path.
 * A point is skipped when it is within `tol` px of the last one kept, or when
 * it, the last one kept and the next one are outside the view on the same
 * side (the triangle dropped is then outside the view, so neither fill nor
 * stroke change inside it).
 */
export function trace(ctx, p, world, ox, oy, view, close, tol) {
  const a = p.pts;
  const n = a.length;
  const code = (x, y) => (x < view.x0 ? 1 : x > view.x1 ? 2 : 0) | (y < view.y0 ? 4 : y > view.y1 ? 8 : 0);
  let lx = a[0] * world + ox;
  let ly = a[1] * world + oy;
  let lc = code(lx, ly);
  ctx.moveTo(lx, ly);
  let x = n > 2 ? a[2] * world + ox : lx;
  let y = n > 2 ? a[3] * world + oy : ly;
  let c = code(x, y);
  for (let i = 2; i < n; i += 2) {
    const last = i === n - 2;
    const nx = last ? x : a[i + 2] * world + ox;
    const ny = last ? y : a[i + 3] * world + oy;
    const nc = last ? c : code(nx, ny);
    if (last || !((lc & c & nc) || Math.abs(x - lx) + Math.abs(y - ly) < tol)) {
      ctx.lineTo(x, y);
      lx = x;
      ly = y;
      lc = c;
    }
    x = nx;
    y = ny;
    c = nc;
  }
  if (close) ctx.closePath();
}
