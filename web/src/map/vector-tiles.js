// Mapbox Vector Tiles (a local .mbtiles/.pmtiles archive served by the
// gateway at /tiles/{z}/{x}/{y}, or any MVT URL) drawn on canvas tiles with
// the generic style of vector-style.js. Above the archive's own max zoom a
// tile is cut from its ancestor at that zoom and drawn at full resolution
// (no blurry upscaling). A missing tile (404, 204) stays transparent, so the
// offline basemap shows through where the archive has no data.
import L from 'leaflet';
import { VectorTile } from '@mapbox/vector-tile';
import { PbfReader } from 'pbf';
import { STYLE } from './basemap-data.js';
import { vectorStyle } from './vector-style.js';

const CACHE = 64; // decoded tiles kept for overzoomed children and panning back

function tileUrl(template, z, x, y) {
  return template.replace(/\{([a-z])\}/g, (m, k) => (k === 'z' ? z : k === 'x' ? x : k === 'y' ? y : k === 's' ? 'a' : k === 'r' ? '' : m));
}

/** The tile's bytes as decoded protobuf (gunzipped if a server sent them compressed as is). */
async function tileBytes(url) {
  const res = await fetch(url);
  if (res.status === 404 || res.status === 204) return null;
  if (!res.ok) throw new Error(`${url}: ${res.status}`);
  let buf = new Uint8Array(await res.arrayBuffer());
  if (buf.length >= 2 && buf[0] === 0x1f && buf[1] === 0x8b) {
    const stream = new Blob([buf]).stream().pipeThrough(new DecompressionStream('gzip'));
    buf = new Uint8Array(await new Response(stream).arrayBuffer());
  }
  return buf.length ? buf : null;
}

export const VectorTiles = L.GridLayer.extend({
  options: { maxZoom: 19, nativeMaxZoom: null, attribution: '' },

  initialize(url, options) {
    L.GridLayer.prototype.initialize.call(this, options);
    this.url = url;
    /** "z/x/y" -> Promise<VectorTile|null>, oldest first */
    this.cache = new Map();
  },

  decoded(z, x, y) {
    const key = `${z}/${x}/${y}`;
    let p = this.cache.get(key);
    if (p) {
      this.cache.delete(key); // most recently used goes last
    } else {
      p = tileBytes(tileUrl(this.url, z, x, y)).then((b) => (b ? new VectorTile(new PbfReader(b)) : null));
      p.catch(() => this.cache.delete(key)); // a failed fetch is tried again next time
    }
    this.cache.set(key, p);
    while (this.cache.size > CACHE) this.cache.delete(this.cache.keys().next().value);
    return p;
  },

  createTile(coords, done) {
    const size = this.getTileSize();
    const dpr = window.devicePixelRatio || 1;
    const canvas = document.createElement('canvas');
    canvas.width = size.x * dpr;
    canvas.height = size.y * dpr;
    const max = this.options.nativeMaxZoom;
    const dz = max != null && coords.z > max ? coords.z - max : 0;
    const z = coords.z - dz;
    // Wrap x: the world repeats east and west.
    const n = 2 ** coords.z;
    const wx = ((coords.x % n) + n) % n;
    const px = wx >> dz;
    const py = coords.y >> dz;
    this.decoded(z, px, py).then(
      (tile) => {
        if (tile) this.drawTile(canvas, tile, coords.z, 2 ** dz, wx - (px << dz), coords.y - (py << dz), size.x * dpr);
        done(null, canvas);
      },
      (e) => done(e, canvas),
    );
    return canvas;
  },

  /** Draws the part (sx, sy) of a `scale`×`scale` split of `tile` onto `canvas`. */
  drawTile(canvas, tile, zoom, scale, sx, sy, px) {
    const ctx = canvas.getContext('2d');
    // Land under everything: schemas such as OpenMapTiles have water polygons
    // but no land ones (a style's background is land).
    ctx.fillStyle = STYLE.land;
    ctx.fillRect(0, 0, canvas.width, canvas.height);
    const items = [];
    for (const name of Object.keys(tile.layers)) {
      const layer = tile.layers[name];
      for (let i = 0; i < layer.length; i++) {
        const f = layer.feature(i);
        const style = vectorStyle(name, f.type, f.properties, zoom);
        if (style) items.push({ f, style, extent: layer.extent });
      }
    }
    items.sort((a, b) => a.style.order - b.style.order);
    ctx.lineJoin = 'round';
    ctx.lineCap = 'round';
    const placed = [];
    for (const pass of ['casing', 'main']) {
      for (const { f, style, extent } of items) {
        if (pass === 'casing' && !style.casing) continue;
        const k = (px * scale) / extent; // tile units -> canvas px
        const ox = -sx * px;
        const oy = -sy * px;
        const rings = f.loadGeometry();
        if (style.label) {
          if (pass !== 'main') continue;
          const p = rings[0]?.[0];
          if (!p) continue;
          this.label(ctx, style.label, p.x * k + ox, p.y * k + oy, px, placed);
          continue;
        }
        ctx.beginPath();
        for (const ring of rings) {
          ring.forEach((p, j) => (j ? ctx.lineTo(p.x * k + ox, p.y * k + oy) : ctx.moveTo(p.x * k + ox, p.y * k + oy)));
          if (f.type === 3) ctx.closePath();
        }
        const dpr = px / 256;
        if (pass === 'casing') {
          ctx.strokeStyle = style.casing;
          ctx.lineWidth = (style.width + 1.5) * dpr;
          ctx.setLineDash([]);
          ctx.stroke();
          continue;
        }
        if (style.fill) {
          ctx.fillStyle = style.fill;
          ctx.fill();
        }
        if (style.stroke) {
          ctx.strokeStyle = style.stroke;
          ctx.lineWidth = style.width * dpr;
          ctx.setLineDash((style.dash || []).map((d) => d * dpr));
          ctx.stroke();
        }
      }
    }
  },

  label(ctx, text, x, y, px, placed) {
    const dpr = px / 256;
    if (x < 0 || y < 0 || x > px || y > px) return;
    ctx.font = `${11 * dpr}px system-ui, sans-serif`;
    const w = ctx.measureText(text).width;
    const box = { x0: x - w / 2, y0: y - 8 * dpr, x1: x + w / 2, y1: y + 8 * dpr };
    if (placed.some((o) => box.x0 < o.x1 && box.x1 > o.x0 && box.y0 < o.y1 && box.y1 > o.y0)) return;
    placed.push(box);
    ctx.textAlign = 'center';
    ctx.textBaseline = 'middle';
    ctx.lineWidth = 3 * dpr;
    ctx.strokeStyle = 'rgba(255,255,255,0.9)';
    ctx.setLineDash([]);
    ctx.strokeText(text, x, y);
    ctx.fillStyle = '#333b45';
    ctx.fillText(text, x, y);
  },
});
