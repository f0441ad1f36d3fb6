// Tracks from the history API, drawn as polylines; one timeline replays every
// shown track together (a moving marker per device, interpolated), and the
// shown tracks export as GeoJSON (one LineString per device, with
// properties.times like the API's) or CSV. With *everyone* ticked the
// timeline also moves the map's "where was everyone at" view (at-view.js).
import L from 'leaflet';
import { dateTime, el } from './format.js';
import { positionAt, tracksCsv } from '../track-math.js';

const PALETTE = ['#1f4e9c', '#8e24aa', '#00838f', '#ef6c00', '#5d4037', '#c2185b', '#2e7d32', '#455a64'];

export class Tracks {
  constructor(map, api) {
    this.map = map;
    this.api = api;
    this.renderer = L.canvas({ padding: 0.2 });
    /** device -> {points, color, line, marker} */
    this.tracks = new Map();
    this.section = document.getElementById('replay');
    this.ul = document.getElementById('tracks');
    this.slider = document.getElementById('replay-slider');
    this.timeOut = document.getElementById('replay-time');
    this.playBtn = document.getElementById('replay-play');
    this.speed = document.getElementById('replay-speed');
    this.t0 = 0;
    this.t1 = 0;
    this.playing = false;
    /** `(t)`: the timeline moved with *everyone* ticked; `()`: it was unticked (back to live) */
    this.onTime = () => {};
    this.onLive = () => {};
    this.everyone = document.getElementById('replay-everyone');
    this.everyone.addEventListener('change', () => (this.everyone.checked ? this.onTime(this.now) : this.onLive()));
    this.slider.addEventListener('input', () => this.seek(this.sliderTime()));
    this.playBtn.addEventListener('click', () => (this.playing ? this.pause() : this.play()));
    document.getElementById('tracks-clear').addEventListener('click', () => this.clear());
    document.getElementById('export-geojson').addEventListener('click', () => this.download('geojson'));
    document.getElementById('export-csv').addEventListener('click', () => this.download('csv'));
    this.ul.addEventListener('click', (e) => {
      const li = e.target.closest('li[data-device]');
      if (li && e.target.closest('button')) this.remove(li.dataset.device);
    });
  }

  async load(device, from, to) {
    const points = await this.api.track(device, from, to);
    this.remove(device);
    const color = PALETTE[(this.colorSeq = (this.colorSeq || 0) + 1) % PALETTE.length];
    const latlngs = points.map((p) => [p.lat, p.lon]);
    const line = L.polyline(latlngs, { color, weight: 3, opacity: 0.85, renderer: this.renderer }).addTo(this.map);
    const marker = L.circleMarker(latlngs[latlngs.length - 1] || [0, 0], {
      radius: 7, color: '#fff', weight: 2, fillColor: color, fillOpacity: 1, renderer: this.renderer,
    });
    if (points.length) marker.addTo(this.map);
    this.tracks.set(device, { device, points, color, line, marker, from, to });
    if (points.length > 1) this.map.fitBounds(line.getBounds(), { padding: [40, 40], maxZoom: 16 });
    this.refresh();
    return points.length;
  }

  remove(device) {
    const t = this.tracks.get(device);
    if (!t) return;
    t.line.remove();
    t.marker.remove();
    this.tracks.delete(device);
    this.refresh();
  }

  clear() {
    for (const d of [...this.tracks.keys()]) this.remove(d);
  }

  refresh() {
    this.ul.replaceChildren();
    let t0 = Infinity;
    let t1 = -Infinity;
    for (const t of this.tracks.values()) {
      const li = el('li');
      li.dataset.device = t.device;
      li.dataset.points = t.points.length;
      const sw = el('span', 'swatch');
      sw.style.background = t.color;
      li.append(sw, el('span', 'dev', t.device), el('span', 'pts', `${t.points.length} points`), el('button', null, '×'));
      this.ul.appendChild(li);
      if (t.points.length) {
        t0 = Math.min(t0, t.points[0].ts);
        t1 = Math.max(t1, t.points[t.points.length - 1].ts);
      }
    }
    this.section.hidden = this.tracks.size === 0;
    this.t0 = Number.isFinite(t0) ? t0 : 0;
    this.t1 = Number.isFinite(t1) ? t1 : 0;
    this.seek(this.t1);
  }

  sliderTime() {
    return this.t0 + ((this.t1 - this.t0) * Number(this.slider.value)) / 1000;
  }

  /** Moves every replay marker to its device's position at time `t`. */
  seek(t) {
    this.now = t;
    const span = this.t1 - this.t0;
    this.slider.value = span > 0 ? String(Math.round(((t - this.t0) / span) * 1000)) : '1000';
    this.timeOut.textContent = this.tracks.size ? dateTime(t) : '';
    for (const tr of this.tracks.values()) {
      const p = positionAt(tr.points, t);
      if (p) tr.marker.setLatLng(p);
    }
    if (this.everyone.checked && this.tracks.size) this.onTime(t);
  }

  play() {
    if (this.t1 <= this.t0) return;
    if (this.now >= this.t1) this.seek(this.t0);
    this.playing = true;
    this.playBtn.textContent = '❚❚';
    let last = performance.now();
    const step = (nowMs) => {
      if (!this.playing) return;
      const dt = (nowMs - last) * Number(this.speed.value);
      last = nowMs;
      const t = Math.min(this.t1, this.now + dt);
      this.seek(t);
      if (t >= this.t1) this.pause();
      else requestAnimationFrame(step);
    };
    requestAnimationFrame(step);
  }

  pause() {
    this.playing = false;
    this.playBtn.textContent = '▶';
  }

  geojson() {
    return {
      type: 'FeatureCollection',
      features: [...this.tracks.values()].map((t) => ({
        type: 'Feature',
        geometry: { type: 'LineString', coordinates: t.points.map((p) => [p.lon, p.lat]) },
        properties: { device: t.device, times: t.points.map((p) => p.ts) },
      })),
    };
  }

  csv() {
    return tracksCsv(this.tracks.values());
  }

  download(kind) {
    const body = kind === 'csv' ? this.csv() : JSON.stringify(this.geojson());
    const type = kind === 'csv' ? 'text/csv' : 'application/geo+json';
    const a = document.createElement('a');
    a.href = URL.createObjectURL(new Blob([body], { type }));
    const names = [...this.tracks.keys()];
    a.download = `${names.length === 1 ? names[0] : 'tracks'}.${kind}`;
    document.body.appendChild(a);
    a.click();
    setTimeout(() => {
      URL.revokeObjectURL(a.href);
      a.remove();
    }, 1000);
  }
}
