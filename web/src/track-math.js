// Pure track helpers (no DOM, no Leaflet): unit-tested by `npm test`.

/** Linear interpolation between the two fixes around `t` (clamped to the ends). */
export function positionAt(points, t) {
  if (!points.length) return null;
  if (t <= points[0].ts) return [points[0].lat, points[0].lon];
  const last = points[points.length - 1];
  if (t >= last.ts) return [last.lat, last.lon];
  let lo = 0;
  let hi = points.length - 1;
  while (hi - lo > 1) {
    const mid = (lo + hi) >> 1;
    if (points[mid].ts <= t) lo = mid;
    else hi = mid;
  }
  const a = points[lo];
  const b = points[hi];
  const f = (t - a.ts) / (b.ts - a.ts || 1);
  return [a.lat + (b.lat - a.lat) * f, a.lon + (b.lon - a.lon) * f];
}

/** CSV of several tracks: `device,ts,lat,lon,alt,speed,heading,accuracy`, `ts` in RFC 3339 like the API's. */
export function tracksCsv(tracks) {
  const cols = ['alt', 'speed', 'heading', 'accuracy'];
  const lines = ['device,ts,lat,lon,alt,speed,heading,accuracy'];
  for (const t of tracks) {
    const dev = /[",\n]/.test(t.device) ? `"${t.device.replace(/"/g, '""')}"` : t.device;
    for (const p of t.points) {
      lines.push([dev, new Date(p.ts).toISOString(), p.lat, p.lon, ...cols.map((c) => p[c] ?? '')].join(','));
    }
  }
  return `${lines.join('\n')}\n`;
}
