// A plain background with a graticule, so the map reads without any tile
// server (air-gapped sites, tests). Drawn on its own canvas under the devices.
import L from 'leaflet';

const STEPS = [30, 10, 5, 2, 1, 0.5, 0.25, 0.1, 0.05, 0.02, 0.01, 0.005, 0.002, 0.001];

export const Graticule = L.Layer.extend({
  onAdd(map) {
    this.map = map;
    this.canvas = L.DomUtil.create('canvas', 'fc-graticule');
    map.getPanes().tilePane.appendChild(this.canvas);
    map.on('moveend zoomend resize viewreset', this.draw, this);
    this.draw();
  },

  onRemove(map) {
    this.canvas.remove();
    map.off('moveend zoomend resize viewreset', this.draw, this);
  },

  draw() {
    const map = this.map;
    const size = map.getSize();
    const c = this.canvas;
    c.width = size.x;
    c.height = size.y;
    L.DomUtil.setPosition(c, map.containerPointToLayerPoint([0, 0]));
    const ctx = c.getContext('2d');
    const b = map.getBounds();
    const span = Math.max(b.getEast() - b.getWest(), b.getNorth() - b.getSouth());
    // The largest step that still draws a few lines across the view.
    const step = STEPS.find((s) => span / s >= 4) || STEPS[STEPS.length - 1];
    const digits = step >= 1 ? 0 : Math.ceil(-Math.log10(step));
    ctx.strokeStyle = 'rgba(60,80,110,0.25)';
    ctx.fillStyle = 'rgba(60,80,110,0.7)';
    ctx.font = '10px sans-serif';
    ctx.lineWidth = 1;
    for (let lon = Math.ceil(b.getWest() / step) * step; lon <= b.getEast(); lon += step) {
      const x = Math.round(map.latLngToContainerPoint([0, lon]).x) + 0.5;
      ctx.beginPath();
      ctx.moveTo(x, 0);
      ctx.lineTo(x, size.y);
      ctx.stroke();
      // Past the 180° meridian the labels go on from -180°, as the world does.
      const shown = lon - 360 * Math.floor((lon + 180) / 360);
      ctx.fillText(`${shown.toFixed(digits)}°`, x + 2, size.y - 4);
    }
    for (let lat = Math.ceil(Math.max(-85, b.getSouth()) / step) * step; lat <= Math.min(85, b.getNorth()); lat += step) {
      const y = Math.round(map.latLngToContainerPoint([lat, b.getWest()]).y) + 0.5;
      ctx.beginPath();
      ctx.moveTo(0, y);
      ctx.lineTo(size.x, y);
      ctx.stroke();
      ctx.fillText(`${lat.toFixed(digits)}°`, 2, y - 2);
    }
  },
});
