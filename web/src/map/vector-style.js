// A generic style for Mapbox Vector Tiles of any common schema (OpenMapTiles,
// Protomaps, Shortbread, Mapbox Streets): the layer's name and the usual
// class/kind properties say land, water, green, building, boundary, road or
// place. Pure (no DOM): unit-tested by `npm test`.
import { STYLE } from './basemap-data.js';

const GREEN = 'rgba(176,206,156,0.45)';
const BUILDING = '#e3ddd3';
const BUILDING_EDGE = '#d2cabd';
const WATER_LINE = '#a9c3d6';
const BOUNDARY = '#a497b5';
const ROAD = '#ffffff';
const MAJOR = '#f4cf7e';
const CASING = '#c6bdae';
const RAIL = '#a9a39a';

/** The name to show for a feature, if any. */
export function featureName(props) {
  const n = props.name ?? props['name:en'] ?? props.name_en ?? props.name_int;
  return n == null || n === '' ? null : String(n);
}

/**
 * How to draw one feature: `{order, fill?, stroke?, casing?, width?, dash?, label?}`
 * (lower `order` first), or null to leave it out. `type`: 1 point, 2 line, 3 polygon.
 */
export function vectorStyle(layer, type, props, zoom) {
  const name = layer.toLowerCase();
  if (type === 1) {
    const label = /place/.test(name) ? featureName(props) : null;
    return label ? { order: 9, label } : null;
  }
  if (/(_name|label|labels)$/.test(name)) return null; // names along lines: no text on paths here
  if (type === 3) {
    if (/^(earth|land|landmass)$/.test(name)) return { order: 0, fill: STYLE.land };
    if (/ocean|water|lake|sea|river/.test(name)) return { order: 2, fill: STYLE.sea };
    if (/landcover|landuse|park|natural|wood|forest|green|vegetation/.test(name)) return { order: 1, fill: GREEN };
    if (/building/.test(name)) return zoom >= 13 ? { order: 3, fill: BUILDING, stroke: BUILDING_EDGE, width: 0.5 } : null;
    return null;
  }
  if (type === 2) {
    if (/water|river/.test(name)) return { order: 2.5, stroke: WATER_LINE, width: zoom >= 12 ? 1.5 : 0.8 };
    if (/boundar|admin|border/.test(name)) {
      if (props.maritime === 1 || props.maritime === true || props.maritime === 'true') return null;
      return { order: 4, stroke: BOUNDARY, width: 1, dash: [4, 3] };
    }
    if (/road|transport|street|highway|rail|path/.test(name)) {
      const cls = String(props.class ?? props.kind ?? props.highway ?? props.type ?? '').toLowerCase();
      const base = zoom >= 16 ? 5 : zoom >= 14 ? 3.5 : zoom >= 11 ? 2 : 1.2;
      if (/rail/.test(cls) || /rail/.test(name)) return { order: 5, stroke: RAIL, width: 1, dash: [3, 2] };
      if (/motorway|trunk|primary|highway|major/.test(cls)) return { order: 7, stroke: MAJOR, casing: CASING, width: base * 1.5 };
      if (/path|footway|cycleway|track|steps/.test(cls)) return zoom >= 14 ? { order: 5, stroke: CASING, width: 1, dash: [2, 2] } : null;
      return { order: 6, stroke: ROAD, casing: CASING, width: base };
    }
  }
  return null;
}
