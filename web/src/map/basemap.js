// The offline world basemap: Natural Earth land, coastlines, country borders
// and major cities (web/dist/basemap.json, built by build.mjs, embedded in
// the gateway and served gzip-compressed), so the map has geography with no
// tile server at all. Drawn by a Leaflet canvas renderer in its own pane
// under the tiles and the devices, in pale colours that the device markers
// (green, amber, red) and tracks stand out on.
//
// The geometry (1:110m for the world, 1:50m from zoom 4) is projected to
// Web Mercator fractions once, at load; a frame
// is one multiply-add per point, points closer than a pixel or outside the
// view on one side are skipped, and every copy of the world that the view
// shows is drawn (Leaflet's own polygons would leave the other side of the
// 180° meridian empty).
import L from 'leaflet';
import { CITIES_AT_ZOOM, STYLE, decodeBasemap, levelAt, trace } from './basemap-data.js';

export const Basemap = L.Canvas.extend({
  options: { padding: 0.2, pane: 'basemap' },

  initialize(options) {
    L.Canvas.prototype.initialize.call(this, options);
    this.data = null;
    this.loaded = false;
    /** The city labels of the last frame: {name, x, y} in container px (tests read them). */
    this.labels = [];
  },

  /** Fetches and decodes the basemap; the map works without it meanwhile (and if it fails). */
  async load(url) {
    const res = await fetch(url);
    if (!res.ok) throw new Error(`${url}: ${res.status}`);
    this.data = decodeBasemap(await res.json());
    this.loaded = true;
    if (this._map) this._redraw();
    this.fire('load');
    return this;
  },

  // L.Canvas calls _draw after clearing, with the context translated to layer
  // pixels; there are no vector layers on this renderer, only the basemap.
  _draw() {
    const map = this._map;
    const b = this._bounds;
    if (!map || !b) return;
    const ctx = this._ctx;
    ctx.save();
    ctx.fillStyle = STYLE.sea;
    ctx.fillRect(b.min.x, b.min.y, b.max.x - b.min.x, b.max.y - b.min.y);
    if (this.data) this.paint(ctx, map, b);
    ctx.restore();
  },

  paint(ctx, map, b) {
    const zoom = map.getZoom();
    const { cities } = this.data;
    const { polygons, coasts, borders } = levelAt(this.data, zoom);
    const world = 256 * 2 ** zoom;
    const po = map.getPixelOrigin(); // layer px = world px - po
    const view = { x0: b.min.x - 4, y0: b.min.y - 4, x1: b.max.x + 4, y1: b.max.y + 4 };
    // Copies of the world in view: k = -1 is the one west of -180°, and so on.
    const k0 = Math.floor((b.min.x + po.x) / world);
    const k1 = Math.floor((b.max.x + po.x) / world);
    const fy0 = (b.min.y + po.y) / world;
    const fy1 = (b.max.y + po.y) / world;
    const copies = [];
    for (let k = k0; k <= k1; k++) {
      copies.push({ ox: k * world - po.x, fx0: (b.min.x + po.x) / world - k, fx1: (b.max.x + po.x) / world - k });
    }
    const inView = (p, cp) => p.maxX >= cp.fx0 && p.minX <= cp.fx1 && p.maxY >= fy0 && p.minY <= fy1;
    const oy = -po.y;

    ctx.beginPath();
    for (const cp of copies) {
      for (const poly of polygons) {
        if (!inView(poly, cp)) continue;
        for (const ring of poly.rings) if (inView(ring, cp)) trace(ctx, ring, world, cp.ox, oy, view, true, 0.6);
      }
    }
    ctx.fillStyle = STYLE.land;
    ctx.fill('evenodd');

    const lines = (set, color, width, dash) => {
      ctx.beginPath();
      for (const cp of copies) for (const p of set) if (inView(p, cp)) trace(ctx, p, world, cp.ox, oy, view, false, 0.6);
      ctx.strokeStyle = color;
      ctx.lineWidth = width;
      ctx.lineJoin = 'round';
      ctx.setLineDash(dash);
      ctx.stroke();
      ctx.setLineDash([]);
    };
    lines(borders, STYLE.border, zoom >= 5 ? 1.2 : 0.8, zoom >= 4 ? [5, 3] : []);
    lines(coasts, STYLE.coast, zoom >= 6 ? 1.2 : 0.8, []);

    // Cities: a dot and a name, most important first, none over another.
    const max = CITIES_AT_ZOOM[Math.floor(zoom)] ?? Infinity;
    const offset = map.layerPointToContainerPoint([0, 0]);
    const placed = [];
    const labels = [];
    ctx.font = STYLE.font;
    ctx.textBaseline = 'middle';
    for (const city of cities) {
      if (city.rank >= max) break;
      for (const cp of copies) {
        if (city.mx < cp.fx0 || city.mx > cp.fx1 || city.my < fy0 || city.my > fy1) continue;
        const x = city.mx * world + cp.ox;
        const y = city.my * world + oy;
        const w = ctx.measureText(city.name).width;
        const box = { x0: x - 4, y0: y - 8, x1: x + 7 + w, y1: y + 8 };
        if (placed.some((o) => box.x0 < o.x1 && box.x1 > o.x0 && box.y0 < o.y1 && box.y1 > o.y0)) continue;
        placed.push(box);
        ctx.beginPath();
        ctx.arc(x, y, 2.5, 0, 2 * Math.PI);
        ctx.fillStyle = STYLE.city;
        ctx.fill();
        ctx.lineWidth = 3;
        ctx.strokeStyle = STYLE.halo;
        ctx.strokeText(city.name, x + 6, y);
        ctx.fillStyle = STYLE.label;
        ctx.fillText(city.name, x + 6, y);
        labels.push({ name: city.name, x: x + offset.x, y: y + offset.y });
      }
    }
    ctx.textBaseline = 'alphabetic';
    this.labels = labels;
  },

  /** For tests: the basemap's colour `[r, g, b]` at a point of the map. */
  pixelAt(latlng) {
    const b = this._bounds;
    const p = this._map.latLngToLayerPoint(latlng);
    const m = this._container.width / (b.max.x - b.min.x);
    const d = this._ctx.getImageData(Math.round((p.x - b.min.x) * m), Math.round((p.y - b.min.y) * m), 1, 1).data;
    return [d[0], d[1], d[2]];
  },
});

/** The pane the basemap draws in: under the tiles (200), so tiles cover it where they load. */
export function basemapPane(map) {
  const pane = map.createPane('basemap');
  pane.style.zIndex = '150';
  pane.style.pointerEvents = 'none';
  return pane;
}
