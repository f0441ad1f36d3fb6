// One <canvas> for every device: no DOM node per device, so 50 000 devices
// cost one projection and one draw call each per frame, and only when
// something changed. When zoomed out (or too many are on screen) devices are
// aggregated into screen-grid clusters drawn as pies of their states.
// Gliding markers (glide.js) keep the one draw loop going, a frame per
// animation frame, until the last glide arrives; no timer per marker.
import L from 'leaflet';

export const COLORS = { online: '#1a9641', stale: '#e6a700', offline: '#d7191c' };
const CELL = 56; // cluster grid, px
const CLUSTER_BELOW_ZOOM = 11;
const CLUSTER_ABOVE_COUNT = 2500;

export const DevicesLayer = L.Layer.extend({
  /** `glider`: the Glider whose glides are drawn (null: markers jump to each fix). */
  initialize(store, onClickDevice, glider = null) {
    this.store = store;
    this.glider = glider;
    /** a group name: only its devices are drawn (the panel's group filter); null: all */
    this.group = null;
    this.onClickDevice = onClickDevice;
    this.selected = null;
    /** false while the fence editor takes the map's clicks */
    this.clickable = true;
    this.drawn = []; // what the last frame showed: {x, y, r, id?, count?, states?}
    this.drawnVersion = -1;
    this.frame = 0;
    /** draw count and total draw time (ms), for the benchmark */
    this.stats = { draws: 0, ms: 0 };
  },

  onAdd(map) {
    this.map = map;
    this.canvas = L.DomUtil.create('canvas', 'fc-devices');
    map.getPanes().overlayPane.appendChild(this.canvas);
    this.ctx = this.canvas.getContext('2d');
    map.on('move zoom resize viewreset', this.schedule, this);
    map.on('click', this.click, this);
    map.on('mousemove', this.hover, this);
    this.schedule();
  },

  onRemove(map) {
    this.canvas.remove();
    map.off('move zoom resize viewreset', this.schedule, this);
    map.off('click', this.click, this);
    map.off('mousemove', this.hover, this);
  },

  setSelected(id) {
    this.selected = id;
    this.schedule();
  },

  /** Coalesces any number of changes into one draw on the next animation frame. */
  schedule() {
    if (this.frame || !this.map) return;
    this.frame = requestAnimationFrame(() => {
      this.frame = 0;
      this.draw();
    });
  },

  draw() {
    const t0 = performance.now();
    this.paint(t0);
    this.stats.draws += 1;
    this.stats.ms += performance.now() - t0;
    if (this.glider && !this.clustered && this.glider.active(t0)) this.schedule();
  },

  /** Shows only the devices of `group` (null: all). */
  setGroup(group) {
    this.group = group || null;
    this.schedule();
  },

  paint(now) {
    const map = this.map;
    const size = map.getSize();
    const dpr = window.devicePixelRatio || 1;
    if (this.canvas.width !== size.x * dpr || this.canvas.height !== size.y * dpr) {
      this.canvas.width = size.x * dpr;
      this.canvas.height = size.y * dpr;
      this.canvas.style.width = `${size.x}px`;
      this.canvas.style.height = `${size.y}px`;
    }
    L.DomUtil.setPosition(this.canvas, map.containerPointToLayerPoint([0, 0]));
    const ctx = this.ctx;
    ctx.setTransform(dpr, 0, 0, dpr, 0, 0);
    ctx.clearRect(0, 0, size.x, size.y);

    const zoom = map.getZoom();
    const world = 256 * 2 ** zoom;
    const origin = map.getPixelBounds().min; // world px of the container's top-left
    const ox = origin.x;
    const oy = origin.y;
    const pad = 12;

    // Pass 1: project and keep what is on screen (world copies: shift by one world width).
    const xs = [];
    const ys = [];
    const hs = [];
    const vis = [];
    const glider = this.glider && zoom >= CLUSTER_BELOW_ZOOM && this.glider.moving.size ? this.glider : null;
    const group = this.group;
    for (const d of this.store.devices.values()) {
      if (d.mx == null) continue;
      if (group && !(d.groups && d.groups.includes(group))) continue;
      let mx = d.mx;
      let my = d.my;
      let h = d.heading;
      const g = glider && d.glide ? glider.position(d, now) : null;
      if (g) {
        mx = g.x;
        my = g.y;
        h = g.heading;
      }
      let x = mx * world - ox;
      const y = my * world - oy;
      if (y < -pad || y > size.y + pad) continue;
      if (x < -pad) x += world * Math.ceil((-pad - x) / world);
      if (x > size.x + pad) continue;
      xs.push(x);
      ys.push(y);
      hs.push(h);
      vis.push(d);
    }

    const drawn = [];
    const cluster = zoom < CLUSTER_BELOW_ZOOM || vis.length > CLUSTER_ABOVE_COUNT;
    if (this.glider) {
      // Clusters show where devices are, not where they are heading: no glides under them.
      this.glider.suspended = cluster;
      if (cluster) this.glider.stopAll();
    }
    if (cluster) {
      const cells = new Map();
      for (let i = 0; i < vis.length; i++) {
        // World-aligned cells so clusters do not jump while panning.
        const key = Math.floor((xs[i] + ox) / CELL) * 4194304 + Math.floor((ys[i] + oy) / CELL); // < 2^53 up to zoom 20
        let c = cells.get(key);
        if (!c) {
          c = { sx: 0, sy: 0, count: 0, online: 0, stale: 0, offline: 0, first: vis[i] };
          cells.set(key, c);
        }
        c.sx += xs[i];
        c.sy += ys[i];
        c.count += 1;
        c[vis[i].state] += 1;
      }
      for (const c of cells.values()) {
        const x = c.sx / c.count;
        const y = c.sy / c.count;
        if (c.count === 1) {
          drawn.push(this.drawDevice(ctx, c.first, x, y, c.first.heading));
        } else {
          drawn.push(this.drawCluster(ctx, c, x, y));
        }
      }
    } else {
      for (let i = 0; i < vis.length; i++) drawn.push(this.drawDevice(ctx, vis[i], xs[i], ys[i], hs[i], vis.length < 300));
    }
    this.drawn = drawn;
    this.clustered = cluster;
    this.drawnVersion = this.store.version;
  },

  drawDevice(ctx, d, x, y, heading, label = false) {
    const r = 6;
    const color = COLORS[d.state];
    if (heading != null) {
      // Heading: an arrowhead out of the dot, 0 = north, clockwise.
      const a = (heading * Math.PI) / 180;
      ctx.beginPath();
      ctx.moveTo(x + Math.sin(a) * (r + 8), y - Math.cos(a) * (r + 8));
      ctx.lineTo(x + Math.sin(a + 0.75) * (r + 1), y - Math.cos(a + 0.75) * (r + 1));
      ctx.lineTo(x + Math.sin(a - 0.75) * (r + 1), y - Math.cos(a - 0.75) * (r + 1));
      ctx.closePath();
      ctx.fillStyle = color;
      ctx.fill();
      ctx.lineWidth = 1;
      ctx.strokeStyle = '#fff';
      ctx.stroke();
    }
    ctx.beginPath();
    ctx.arc(x, y, r, 0, 2 * Math.PI);
    ctx.fillStyle = color;
    ctx.fill();
    ctx.lineWidth = d.id === this.selected ? 3 : 1.5;
    ctx.strokeStyle = d.id === this.selected ? '#1f4e9c' : '#fff';
    ctx.stroke();
    if (label || d.id === this.selected) {
      ctx.font = '11px sans-serif';
      ctx.lineWidth = 3;
      ctx.strokeStyle = 'rgba(255,255,255,0.85)';
      ctx.strokeText(d.id, x + 9, y + 4);
      ctx.fillStyle = '#222';
      ctx.fillText(d.id, x + 9, y + 4);
    }
    return { x, y, r: r + 3, id: d.id, state: d.state, heading };
  },

  drawCluster(ctx, c, x, y) {
    const r = Math.min(28, 11 + Math.log2(c.count) * 2.2);
    let a0 = -Math.PI / 2;
    for (const s of ['online', 'stale', 'offline']) {
      if (!c[s]) continue;
      const a1 = a0 + (2 * Math.PI * c[s]) / c.count;
      ctx.beginPath();
      ctx.moveTo(x, y);
      ctx.arc(x, y, r, a0, a1);
      ctx.closePath();
      ctx.fillStyle = COLORS[s];
      ctx.fill();
      a0 = a1;
    }
    ctx.beginPath();
    ctx.arc(x, y, r * 0.62, 0, 2 * Math.PI);
    ctx.fillStyle = 'rgba(255,255,255,0.92)';
    ctx.fill();
    ctx.fillStyle = '#222';
    ctx.font = 'bold 11px sans-serif';
    ctx.textAlign = 'center';
    ctx.textBaseline = 'middle';
    ctx.fillText(c.count >= 10000 ? `${Math.round(c.count / 1000)}k` : String(c.count), x, y);
    ctx.textAlign = 'start';
    ctx.textBaseline = 'alphabetic';
    return { x, y, r, count: c.count, online: c.online, stale: c.stale, offline: c.offline };
  },

  hit(point) {
    let best = null;
    let bestD = Infinity;
    for (const it of this.drawn) {
      const dx = it.x - point.x;
      const dy = it.y - point.y;
      const dd = dx * dx + dy * dy;
      if (dd <= (it.r + 3) ** 2 && dd < bestD) {
        best = it;
        bestD = dd;
      }
    }
    return best;
  },

  click(e) {
    if (!this.clickable) return;
    const it = this.hit(e.containerPoint);
    if (!it) return;
    if (it.id) this.onClickDevice(it.id);
    else this.map.setView(this.map.containerPointToLatLng([it.x, it.y]), Math.min(this.map.getZoom() + 2, 18));
  },

  hover(e) {
    if (!this.clickable) return;
    const it = this.hit(e.containerPoint);
    this.map.getContainer().style.cursor = it ? 'pointer' : '';
  },

  /** For tests and debugging: where and how a device is drawn (null if not on screen alone). */
  marker(id) {
    return this.drawn.find((it) => it.id === id) || null;
  },
});
