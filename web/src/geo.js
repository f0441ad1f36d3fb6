// Pure map helpers (no DOM, no Leaflet): unit-tested by `npm test`.

/** Degrees to 5 decimals (about 1 m), rounded outwards so the box still holds the view. */
const down = (v) => Math.floor(v * 1e5) / 1e5;
const up = (v) => Math.ceil(v * 1e5) / 1e5;
const clamp = (v, lo, hi) => Math.max(lo, Math.min(hi, v));

/**
 * The subscribe box (PROTOCOL.md §4: `[minLon, minLat, maxLon, maxLat]`) of a
 * map view. Leaflet gives west < -180 or east > 180 when the view shows
 * another copy of the world: longitudes are brought back into [-180, 180],
 * and a view across the 180° meridian gives minLon > maxLon. A view 360° wide
 * or more is the whole world.
 */
export function viewBbox(west, south, east, north) {
  const s = down(clamp(south, -90, 90));
  const n = up(clamp(north, -90, 90));
  if (!(east - west < 360)) return [-180, s, 180, n]; // also NaN: better all than nothing
  // west in [-180, 180), east = west + width in (-180, 540)
  let w = west - 360 * Math.floor((west + 180) / 360);
  let e = w + (east - west);
  if (e > 180) e -= 360; // across the meridian: now e < w
  w = clamp(down(w), -180, 180);
  e = clamp(up(e), -180, 180);
  return [w, s, e, n];
}

/** Vector tile URLs end in .pbf or .mvt (before any query); anything else is raster. */
export function guessTileFormat(url) {
  return /\.(pbf|mvt)$/i.test(String(url).split(/[?#]/)[0]) ? 'vector' : 'raster';
}

/**
 * Where the map's tiles come from: `?tiles=` in the page's URL (with optional
 * `?tiles_format=raster|vector` and `?tiles_max_zoom=`), else the gateway's
 * `/config.json`. Missing fields (an older gateway) mean raster tiles with no
 * native zoom limit. Returns null without tiles.
 */
export function tileSource(config, params) {
  const fromUrl = params.get('tiles');
  const url = fromUrl ?? config.tiles;
  if (!url) return null;
  let format;
  let maxZoom;
  if (fromUrl != null) {
    format = params.get('tiles_format') || guessTileFormat(url);
    maxZoom = params.get('tiles_max_zoom');
  } else {
    format = config.tiles_format;
    maxZoom = config.tiles_max_zoom;
  }
  maxZoom = maxZoom == null || maxZoom === '' ? null : Number(maxZoom);
  return {
    url,
    format: format === 'vector' ? 'vector' : 'raster',
    maxZoom: Number.isInteger(maxZoom) && maxZoom >= 0 ? maxZoom : null,
  };
}
