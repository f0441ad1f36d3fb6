export function ago(ts, now = Date.now()) {
  if (ts == null) return '—';
  const s = Math.max(0, Math.round((now - ts) / 1000));
  if (s < 60) return `${s}s ago`;
  if (s < 3600) return `${Math.floor(s / 60)}m ago`;
  if (s < 86400) return `${Math.floor(s / 3600)}h ago`;
  return `${Math.floor(s / 86400)}d ago`;
}

export function clock(ts) {
  return ts == null ? '—' : new Date(ts).toLocaleTimeString([], { hour12: false });
}

export function dateTime(ts) {
  return ts == null ? '—' : new Date(ts).toISOString().replace('T', ' ').replace(/\.\d+Z$/, 'Z');
}

export const num = (v, unit = '', digits = 0) => (v == null ? '—' : `${Number(v).toFixed(digits)}${unit}`);

export function el(tag, cls, text) {
  const e = document.createElement(tag);
  if (cls) e.className = cls;
  if (text != null) e.textContent = text;
  return e;
}
