// The geofences on one canvas, in their own pane (z-index 350: over the
// tiles and the basemap, under the tracks and the devices at 400), so a few
// hundred fences never touch the devices' per-frame draw. A Leaflet canvas
// renderer like the basemap: it redraws when the map stops moving or
// zooming (with a 20 % margin, so a pan shows fences at once) and when the
// fences change, never per location update.
//
// Each fence is drawn from its shape (geofence.js: rings and lines as Web
// Mercator fractions, projected once): polygons (holes even-odd) and circles
// filled and outlined, corridors as a stroke of their width with round ends.
// Colours by kind; a fence outside its schedule now is faded and dashed;
// the selected one has a heavier outline. Names are drawn on the fences
// that are large enough on screen, never over another name; one too small
// to see is a dot of its colour. Points closer than a pixel are skipped.
import L from 'leaflet';
import { trace } from './basemap-data.js';
import { fenceAt, scheduleActive } from '../geofence.js';

export const FENCE_COLORS = { polygon: '#2f6fd6', circle: '#9c3fc0', corridor: '#0f8f7f' };
/** Opacity of an inactive fence (outside its schedule now). */
const FADED = 0.35;
/** Points of a fence closer than this (px, Manhattan) to the last one kept are skipped. */
const TOLERANCE = 1;
/** A fence narrower than this on screen (px) gets no name. */
const MIN_LABELLED = 36;

export const FencesLayer = L.Canvas.extend({
  options: { padding: 0.2, pane: 'fences' },

  initialize(options) {
    L.Canvas.prototype.initialize.call(this, options);
    /** the shapes drawn (geofence.js fenceShape), each with `active` */
    this.shapes = [];
    this.selected = null;
    /** names drawn in the last frame: {id, name, x, y} in container px (tests read them) */
    this.labels = [];
  },

  /** Replaces every fence; `now` decides which are active. */
  setFences(shapes, now = Date.now()) {
    this.shapes = shapes;
    for (const s of shapes) s.active = scheduleActive(s.schedule, now);
    this.redraw();
  },

  /** Re-evaluates the schedules at `now`; redraws (and returns true) only if one changed. */
  updateActive(now = Date.now()) {
    let changed = false;
    for (const s of this.shapes) {
      const a = scheduleActive(s.schedule, now);
      if (a !== s.active) {
        s.active = a;
        changed = true;
      }
    }
    if (changed) this.redraw();
    return changed;
  },

  setSelected(id) {
    this.selected = id;
    this.redraw();
  },

  redraw() {
    if (this._map) this._redraw();
  },

  /** The fence under a container point (the smallest one there), or null. */
  hit(point) {
    if (!this._map || !this.shapes.length) return null;
    const map = this._map;
    const world = 256 * 2 ** map.getZoom();
    const p = map.containerPointToLayerPoint(point).add(map.getPixelOrigin());
    return fenceAt(this.shapes, p.x / world, p.y / world, 3 / world);
  },

  // L.Canvas calls _draw after clearing, with the context translated to layer pixels.
  _draw() {
    const map = this._map;
    const b = this._bounds;
    if (!map || !b || !this.shapes.length) {
      this.labels = [];
      return;
    }
    const ctx = this._ctx;
    ctx.save();
    this.paint(ctx, map, b);
    ctx.restore();
  },

  paint(ctx, map, b) {
    const zoom = map.getZoom();
    const world = 256 * 2 ** zoom;
    const po = map.getPixelOrigin(); // layer px = world px - po
    const view = { x0: b.min.x - 4, y0: b.min.y - 4, x1: b.max.x + 4, y1: b.max.y + 4 };
    const fy0 = (b.min.y + po.y) / world;
    const fy1 = (b.max.y + po.y) / world;
    const copies = [];
    for (let k = Math.floor((b.min.x + po.x) / world) - 1; k <= Math.floor((b.max.x + po.x) / world) + 1; k++) {
      copies.push({ k, ox: k * world - po.x, fx0: (b.min.x + po.x) / world - k, fx1: (b.max.x + po.x) / world - k });
    }
    const oy = -po.y;
    const onScreen = [];
    for (const s of this.shapes) {
      const bx = s.box;
      if (bx.maxY < fy0 || bx.minY > fy1) continue;
      for (const cp of copies) if (bx.maxX >= cp.fx0 && bx.minX <= cp.fx1) onScreen.push([s, cp]);
    }
    // Batches of one style (kind, active), each one path filled and stroked
    // once: a canvas operation costs far more than a path point (software
    // raster: ~25 µs each), so 600 fences are 4 fills, not 600. Overlapping
    // fences of a batch show as one tint. Polygons with holes (even-odd) and
    // corridors (a width each) are drawn one by one, larger first.
    const batches = new Map();
    const single = [];
    const selected = [];
    for (const item of onScreen) {
      const [s, cp] = item;
      if (s.id === this.selected) selected.push(item);
      const small = (s.box.maxX - s.box.minX) * world < 4 && (s.box.maxY - s.box.minY) * world < 4;
      if (!small && (s.line || s.rings.length > 1)) {
        single.push(item);
        continue;
      }
      const key = `${s.kind}|${s.active}|${small}`;
      let batch = batches.get(key);
      if (!batch) batches.set(key, (batch = { kind: s.kind, active: s.active, small, items: [] }));
      batch.items.push(item);
    }
    for (const batch of batches.values()) {
      ctx.beginPath();
      for (const [s, cp] of batch.items) {
        if (batch.small) {
          const x = s.label[0] * world + cp.ox;
          const y = s.label[1] * world + oy;
          ctx.moveTo(x + 3.5, y);
          ctx.arc(x, y, 3.5, 0, 2 * Math.PI);
        } else {
          trace(ctx, { pts: s.rings[0] }, world, cp.ox, oy, view, true, TOLERANCE);
        }
      }
      this.style(ctx, batch.kind, batch.active, batch.small ? 'dot' : 'area');
    }
    single.sort((p, q) => q[0].area - p[0].area);
    for (const [s, cp] of single) this.shape(ctx, s, world, cp.ox, oy, view);
    // The selected fence's outline over everything else.
    for (const [s, cp] of selected) this.shape(ctx, s, world, cp.ox, oy, view, true);
    this.labels = this.names(ctx, map, onScreen, world, oy, b);
  },

  /** Fills and strokes the current path in the style of a kind; `what`: 'area', 'band' (a corridor), 'dot' or 'outline'. */
  style(ctx, kind, active, what, width = 0, fillRule = 'nonzero') {
    const color = FENCE_COLORS[kind];
    ctx.globalAlpha = active ? 1 : FADED;
    ctx.lineJoin = 'round';
    ctx.lineCap = 'round';
    if (what === 'dot') {
      ctx.fillStyle = color;
      ctx.fill();
    } else if (what === 'band') {
      ctx.strokeStyle = hexAlpha(color, 0.22);
      ctx.lineWidth = width;
      ctx.stroke();
    } else {
      if (what === 'area') {
        ctx.fillStyle = hexAlpha(color, 0.18);
        ctx.fill(fillRule);
      }
      ctx.setLineDash(active ? [] : [6, 4]);
      ctx.strokeStyle = color;
      ctx.lineWidth = width || 1;
      ctx.stroke();
      ctx.setLineDash([]);
    }
    ctx.globalAlpha = 1;
  },

  /** One fence: a polygon with holes, a corridor (a band of its width and its centre line), or the selected one's outline. */
  shape(ctx, s, world, ox, oy, view, selected = false) {
    ctx.beginPath();
    const small = (s.box.maxX - s.box.minX) * world < 4 && (s.box.maxY - s.box.minY) * world < 4;
    if (small) {
      const x = s.label[0] * world + ox;
      const y = s.label[1] * world + oy;
      ctx.arc(x, y, 5, 0, 2 * Math.PI);
      this.style(ctx, s.kind, s.active, 'outline', 2);
    } else if (s.line) {
      trace(ctx, { pts: s.line }, world, ox, oy, view, false, TOLERANCE);
      if (!selected) this.style(ctx, s.kind, s.active, 'band', Math.max(2, 2 * s.halfWidth * world));
      this.style(ctx, s.kind, s.active, 'outline', selected ? 3 : 1);
    } else {
      for (const r of s.rings) trace(ctx, { pts: r }, world, ox, oy, view, true, TOLERANCE);
      this.style(ctx, s.kind, s.active, selected ? 'outline' : 'area', selected ? 3 : 1, 'evenodd');
    }
  },

  /** Names on the fences wide enough on screen, the selected one first, none over another. */
  names(ctx, map, onScreen, world, oy, b) {
    const offset = map.layerPointToContainerPoint([0, 0]);
    const placed = [];
    const labels = [];
    ctx.font = '600 12px system-ui, -apple-system, "Segoe UI", sans-serif';
    // Butt caps: round ones would stroke a space's empty outline as a dot in the halo.
    ctx.lineCap = 'butt';
    ctx.textAlign = 'center';
    ctx.textBaseline = 'middle';
    const order = [...onScreen].sort((p, q) => (q[0].id === this.selected) - (p[0].id === this.selected) || q[0].area - p[0].area);
    for (const [s, cp] of order) {
      if ((s.box.maxX - s.box.minX) * world < MIN_LABELLED && s.id !== this.selected) continue;
      const x = s.label[0] * world + cp.ox;
      const y = s.label[1] * world + oy;
      if (x < b.min.x || x > b.max.x || y < b.min.y || y > b.max.y) continue;
      const w = ctx.measureText(s.name).width;
      const box = { x0: x - w / 2 - 3, y0: y - 9, x1: x + w / 2 + 3, y1: y + 9 };
      if (placed.some((o) => box.x0 < o.x1 && box.x1 > o.x0 && box.y0 < o.y1 && box.y1 > o.y0)) continue;
      placed.push(box);
      ctx.globalAlpha = s.active ? 1 : 0.6;
      ctx.lineWidth = 3;
      ctx.strokeStyle = 'rgba(255,255,255,0.9)';
      ctx.strokeText(s.name, x, y);
      ctx.fillStyle = darker(FENCE_COLORS[s.kind]);
      ctx.fillText(s.name, x, y);
      labels.push({ id: s.id, name: s.name, active: s.active, x: x + offset.x, y: y + offset.y });
    }
    ctx.globalAlpha = 1;
    ctx.textAlign = 'start';
    ctx.textBaseline = 'alphabetic';
    return labels;
  },

  /** For tests: the colour `[r, g, b, a]` drawn at a point of the map. */
  pixelAt(latlng) {
    const b = this._bounds;
    const p = this._map.latLngToLayerPoint(latlng);
    const m = this._container.width / (b.max.x - b.min.x);
    return [...this._ctx.getImageData(Math.round((p.x - b.min.x) * m), Math.round((p.y - b.min.y) * m), 1, 1).data];
  },
});

/** The pane fences draw in: over the tiles (200), under the tracks and devices (overlay, 400). */
export function fencesPane(map) {
  const pane = map.createPane('fences');
  pane.style.zIndex = '350';
  pane.style.pointerEvents = 'none';
  return pane;
}

function hexAlpha(hex, a) {
  const n = parseInt(hex.slice(1), 16);
  return `rgba(${n >> 16},${(n >> 8) & 255},${n & 255},${a})`;
}

function darker(hex) {
  const n = parseInt(hex.slice(1), 16);
  const f = (v) => Math.round(v * 0.6);
  return `rgb(${f(n >> 16)},${f((n >> 8) & 255)},${f(n & 255)})`;
}
