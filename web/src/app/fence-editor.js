// Drawing a new fence (for admin tokens; the gateway checks the claim on
// every write): "+ circle" = click the centre, then click the edge (the
// radius follows the pointer until then); "+ polygon" = click the vertices,
// then double-click, click the first vertex again or press "close". The
// panel's form names it (and its severity) and saves it; the API's refusal
// (a 400 naming the bad field, a 403) is shown under the form, the drawing
// kept so the name can be fixed, or cancelled (Esc) and drawn again. The
// map still pans between clicks; clicks on devices do nothing meanwhile.
import L from 'leaflet';
import { circleFeature, circleRing, distance, polygonFeature } from '../geofence.js';
import { FENCE_COLORS } from '../map/fences-layer.js';

/** Clicks closer than this (px) to the previous vertex are the same vertex (a double-click's two clicks). */
const SAME_VERTEX = 5;
/** A click this close (px) to the first vertex closes the polygon. */
const CLOSE_TO_FIRST = 9;

export class FenceEditor {
  /**
   * @param {object} o
   * @param {(feature: object) => Promise<unknown>} o.onSave  POSTs the Feature; its rejection is shown
   * @param {(drawing: boolean) => void} o.onState  drawing started or stopped
   */
  constructor({ map, devices, onSave, onState }) {
    Object.assign(this, { map, devices, onSave, onState });
    /** 'circle' | 'polygon' while drawing, else null */
    this.drawing = null;
    this.points = [];
    this.done = false;
    this.renderer = L.canvas({ padding: 0.2, pane: 'fences' });
    this.draft = L.layerGroup().addTo(map);
    this.form = document.getElementById('fence-form');
    this.hint = document.getElementById('fence-hint');
    this.name = document.getElementById('fence-name');
    this.severity = document.getElementById('fence-severity');
    this.save = document.getElementById('fence-save');
    this.closeBtn = document.getElementById('fence-close');
    this.error = document.getElementById('fence-form-error');
    document.getElementById('fence-draw-circle').addEventListener('click', () => this.start('circle'));
    document.getElementById('fence-draw-polygon').addEventListener('click', () => this.start('polygon'));
    document.getElementById('fence-cancel').addEventListener('click', () => this.stop());
    this.closeBtn.addEventListener('click', () => this.finishPolygon());
    this.form.addEventListener('submit', (e) => {
      e.preventDefault();
      this.submit();
    });
    map.on('click', (e) => this.drawing && this.click(e));
    map.on('mousemove', (e) => this.drawing && !this.done && this.preview(e.latlng));
    map.on('dblclick', () => this.drawing === 'polygon' && this.finishPolygon());
    document.addEventListener('keydown', (e) => {
      if (e.key === 'Escape' && this.drawing) this.stop();
    });
  }

  start(kind) {
    this.stop();
    this.drawing = kind;
    this.points = [];
    this.done = false;
    this.devices.clickable = false;
    this.map.doubleClickZoom.disable();
    this.map.getContainer().style.cursor = 'crosshair';
    this.form.hidden = false;
    this.form.dataset.kind = kind;
    this.error.textContent = '';
    this.closeBtn.hidden = kind !== 'polygon';
    this.update();
    this.onState(true);
  }

  stop() {
    if (!this.drawing) return;
    this.drawing = null;
    this.points = [];
    this.done = false;
    this.draft.clearLayers();
    this.devices.clickable = true;
    this.map.doubleClickZoom.enable();
    this.map.getContainer().style.cursor = '';
    this.form.hidden = true;
    this.onState(false);
  }

  click(e) {
    if (this.done) return;
    const p = e.latlng;
    if (this.drawing === 'circle') {
      if (!this.points.length) {
        this.points = [p];
      } else if (distance(this.points[0].lat, this.points[0].lng, p.lat, p.lng) >= 1) {
        this.points = [this.points[0], p];
        this.done = true;
      }
    } else {
      const px = (q) => this.map.latLngToContainerPoint(q);
      const last = this.points[this.points.length - 1];
      if (last && px(last).distanceTo(px(p)) < SAME_VERTEX) return;
      if (this.points.length >= 3 && px(this.points[0]).distanceTo(px(p)) < CLOSE_TO_FIRST) {
        this.finishPolygon();
        return;
      }
      this.points.push(p);
    }
    this.update();
  }

  finishPolygon() {
    if (this.drawing !== 'polygon' || this.done) return;
    if (this.points.length < 3) {
      this.hint.textContent = 'A polygon needs at least 3 points: click more.';
      return;
    }
    this.done = true;
    this.update();
  }

  /** The shape so far, plus the pointer as the next vertex or the circle's edge. */
  preview(cursor) {
    this.render(cursor);
  }

  update() {
    this.render(null);
    const n = this.points.length;
    if (this.done) {
      this.hint.textContent = this.drawing === 'circle'
        ? `Circle of ${this.radius()} m. Name it and save.`
        : `Polygon of ${n} points. Name it and save.`;
      this.name.focus();
    } else if (this.drawing === 'circle') {
      this.hint.textContent = n ? 'Click the edge of the circle.' : 'Click the centre of the circle.';
    } else {
      this.hint.textContent = n < 3
        ? `Click the corners of the polygon (${n} so far).`
        : `${n} points: double-click, click the first point or press close to finish.`;
    }
    this.save.disabled = !this.done;
  }

  radius() {
    const [c, e] = this.points;
    return e ? Math.max(1, Math.round(distance(c.lat, c.lng, e.lat, e.lng))) : 0;
  }

  render(cursor) {
    this.draft.clearLayers();
    const color = FENCE_COLORS[this.drawing];
    const style = { renderer: this.renderer, interactive: false, color, weight: 2, dashArray: '6 4', fillColor: color, fillOpacity: 0.15 };
    const pts = this.points;
    if (this.drawing === 'circle' && pts.length) {
      const edge = pts[1] || cursor;
      if (edge) {
        const r = distance(pts[0].lat, pts[0].lng, edge.lat, edge.lng);
        if (r > 0) L.polygon(circleRing(pts[0].lat, pts[0].lng, r).map(([lon, lat]) => [lat, lon]), style).addTo(this.draft);
        L.polyline([pts[0], edge], { ...style, weight: 1 }).addTo(this.draft);
      }
    } else if (this.drawing === 'polygon' && pts.length) {
      const ring = cursor && !this.done ? [...pts, cursor] : pts;
      if (ring.length >= 3) L.polygon(ring, { ...style, weight: 0 }).addTo(this.draft);
      L.polyline(this.done ? [...pts, pts[0]] : ring, style).addTo(this.draft);
    }
    pts.forEach((p, i) => {
      L.circleMarker(p, { renderer: this.renderer, interactive: false, radius: i === 0 ? 5 : 3.5, color: '#fff', weight: 1.5, fillColor: color, fillOpacity: 1 }).addTo(this.draft);
    });
  }

  /** The Feature drawn, with the form's name and severity. */
  feature() {
    const properties = { name: this.name.value.trim(), severity: this.severity.value };
    return this.drawing === 'circle' ? circleFeature(this.points[0], this.points[1], properties) : polygonFeature(this.points, properties);
  }

  async submit() {
    if (!this.done) return;
    this.error.textContent = '';
    this.save.disabled = true;
    try {
      await this.onSave(this.feature());
      this.name.value = '';
      this.stop();
    } catch (e) {
      this.error.textContent = e.message;
    } finally {
      this.save.disabled = !this.done;
    }
  }
}
