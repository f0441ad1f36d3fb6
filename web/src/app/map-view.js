// The map: the offline basemap (sea until it has loaded, after the first
// paint) and a graticule always; tiles on top when configured, raster or
// vector, with the basemap showing where they have none; the devices' canvas
// over all of it. In: config.json and the URL's overrides, the devices known
// at load (the first view fits them), the glider. Out: the Leaflet map and its layers.
import L from 'leaflet';
import { Basemap, basemapPane } from '../map/basemap.js';
import { DevicesLayer } from '../map/devices-layer.js';
import { Graticule } from '../map/graticule.js';
import { VectorTiles } from '../map/vector-tiles.js';
import { tileSource, viewBbox } from '../geo.js';

/**
 * Builds the map in `#map`. `onSelect(id)` is called when a device is
 * clicked; the devices layer redraws on every change of `store`.
 */
export function createMapView({ config, params, known, store, glider, onSelect }) {
  const map = L.map('map', { zoomControl: true, worldCopyJump: true, preferCanvas: true, minZoom: 2 });
  basemapPane(map);
  const basemap = new Basemap({ attribution: 'Natural Earth' }).addTo(map);
  new Graticule().addTo(map);
  addTiles(map, tileSource(config, params), config.attribution || '');
  const located = known.filter((d) => d.lat != null);
  if (located.length) {
    map.fitBounds(L.latLngBounds(located.map((d) => [d.lat, d.lon])).pad(0.2), { maxZoom: 14 });
  } else {
    map.setView([20, 0], 2);
  }
  const layer = new DevicesLayer(store, onSelect, glider);
  layer.addTo(map);
  store.listeners.add(() => layer.schedule());
  return { map, basemap, layer };
}

/** Raster tiles (<img>) or vector tiles (fetch + canvas), if there is a source. */
function addTiles(map, source, attribution) {
  if (source?.format === 'vector') {
    new VectorTiles(source.url, { nativeMaxZoom: source.maxZoom, attribution }).addTo(map);
  } else if (source) {
    const opts = { maxZoom: 19, attribution };
    if (source.maxZoom != null) opts.maxNativeZoom = source.maxZoom;
    L.tileLayer(source.url, opts).addTo(map);
  }
}

/** The subscribe box of the view plus 20 %, across the 180° meridian as minLon > maxLon. */
export function viewBox(map) {
  const b = map.getBounds().pad(0.2);
  return viewBbox(b.getWest(), b.getSouth(), b.getEast(), b.getNorth());
}

/** The basemap after the first paint: the devices and the connection come first. */
export function loadBasemapAfterFirstPaint(basemap) {
  requestAnimationFrame(() => setTimeout(() => basemap.load('/assets/basemap.json').catch((e) => console.warn('basemap', e)), 0));
}
