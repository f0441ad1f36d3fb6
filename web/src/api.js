// Token and HTTP API (PROTOCOL.md §5). The token comes from `?token=` (taken
// once: kept in sessionStorage and removed from the address bar and the
// history entry, so it is not bookmarked, shared or shown), then from
// sessionStorage (set by the login prompt), else the prompt asks for it.

const KEY = 'fieldcast.token';

export class AuthError extends Error {}

export function tokenFromPage() {
  const url = new URL(location.href);
  const t = url.searchParams.get('token');
  if (url.searchParams.has('token')) {
    url.searchParams.delete('token');
    history.replaceState(history.state, '', `${url.pathname}${url.search}${url.hash}`);
  }
  if (t) {
    sessionStorage.setItem(KEY, t);
    return t;
  }
  return sessionStorage.getItem(KEY);
}

export function forgetToken() {
  sessionStorage.removeItem(KEY);
}

/** Shows the login dialog until the user submits a token (may be empty with `--auth none`). */
export function askToken(message) {
  const dialog = document.getElementById('login');
  document.getElementById('login-error').textContent = message || '';
  return new Promise((resolve) => {
    dialog.addEventListener(
      'close',
      () => {
        const t = document.getElementById('login-token').value.trim();
        sessionStorage.setItem(KEY, t);
        resolve(t);
      },
      { once: true },
    );
    dialog.showModal();
  });
}

export class Api {
  constructor(token) {
    this.token = token;
  }

  headers() {
    return this.token ? { Authorization: `Bearer ${this.token}` } : {};
  }

  async get(path, as = 'json') {
    const res = await fetch(path, { headers: this.headers() });
    if (res.status === 401) throw new AuthError('token refused (401)');
    if (!res.ok) {
      let msg = `${res.status}`;
      try {
        msg = (await res.json()).error.message;
      } catch { /* not JSON */ }
      throw new Error(`${path}: ${msg}`);
    }
    return as === 'json' ? res.json() : res.text();
  }

  devices() {
    return this.get('/api/devices');
  }

  /** Every stored point of `[from, to)`, following `next` pages (at most `maxPoints`). */
  async track(device, from, to, maxPoints = 200000) {
    const points = [];
    let cursor = from;
    while (cursor != null && points.length < maxPoints) {
      const q = new URLSearchParams({ from: String(cursor), to: String(to), limit: '50000' });
      const page = await this.get(`/api/devices/${encodeURIComponent(device)}/track?${q}`);
      points.push(...page.points);
      cursor = page.next;
    }
    return points;
  }

  /** Events of the last `ms`, newest last, at most `limit` (the newest ones). */
  async recentEvents(ms, limit = 500) {
    const out = [];
    let q = new URLSearchParams({ from: String(Date.now() - ms), limit: '1000' });
    for (let page = 0; page < 20; page++) {
      const r = await this.get(`/api/events?${q}`);
      out.push(...r.events);
      if (out.length > limit) out.splice(0, out.length - limit);
      if (!r.next) break;
      q = new URLSearchParams({ from: String(Date.now() - ms), limit: '1000', cursor: r.next });
    }
    return out;
  }

  config() {
    return fetch('/config.json').then((r) => (r.ok ? r.json() : {})).catch(() => ({}));
  }
}
