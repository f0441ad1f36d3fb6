// Token and HTTP API (PROTOCOL.md §5). The token comes from `?token=` or the
// fragment `#token=` (a login service's redirect back; taken once: kept in
// sessionStorage and removed from the address bar and the history entry, so
// it is not bookmarked, shared or shown), then from sessionStorage (set by
// the login prompt), else the operator's login URL (config.json `login_url`)
// or the prompt asks for it.

const KEY = 'fieldcast.token';
/** When the page last sent the browser to the login URL (ms): a refused token then shows the prompt, not another redirect. */
const REDIRECTED = 'fieldcast.login_redirect';
const REDIRECT_AGAIN_MS = 60000;

export class AuthError extends Error {}

/** An error answer of the API (PROTOCOL.md §5): `status` and the server's own `message`. */
export class ApiError extends Error {
  constructor(status, message, path) {
    super(message);
    this.status = status;
    this.path = path;
  }
}

/**
 * The claims of a JWT, decoded from its payload without checking its
 * signature (null if it is not a JWT): only to decide what the page shows,
 * e.g. the fence editor for `admin: true`. The gateway checks every call.
 */
export function tokenClaims(token) {
  const part = String(token ?? '').split('.')[1];
  if (!part) return null;
  try {
    const b64 = part.replace(/-/g, '+').replace(/_/g, '/');
    const bytes = Uint8Array.from(atob(b64 + '='.repeat((4 - (b64.length % 4)) % 4)), (c) => c.charCodeAt(0));
    const claims = JSON.parse(new TextDecoder().decode(bytes));
    return claims && typeof claims === 'object' ? claims : null;
  } catch {
    return null;
  }
}

export function tokenFromPage() {
  const { token: t, rest } = takeToken(location.href);
  if (rest !== location.href) {
    const url = new URL(rest);
    history.replaceState(history.state, '', `${url.pathname}${url.search}${url.hash}`);
  }
  if (t) {
    sessionStorage.setItem(KEY, t);
    return t;
  }
  return sessionStorage.getItem(KEY);
}

/**
 * The token in a page URL (`?token=`, or `#token=` as a login service sends
 * it back; the fragment wins, it is the newer) and the URL without it (other
 * query or fragment parameters kept). No DOM: unit-tested.
 */
export function takeToken(href) {
  const url = new URL(href);
  let token = url.searchParams.get('token');
  url.searchParams.delete('token');
  const frag = new URLSearchParams(url.hash.replace(/^#/, ''));
  if (frag.has('token')) {
    token = frag.get('token') || token;
    frag.delete('token');
    const restHash = frag.toString();
    url.hash = restHash ? `#${restHash}` : '';
  }
  return { token: token || null, rest: url.href };
}

/**
 * Where the page sends a user without a token: the operator's login URL
 * with `return_to` = this page (without any token), relative login URLs
 * resolved against the page. The login service sends the browser back to
 * `<return_to>#token=<JWT>` (web/README.md has the contract).
 */
export function loginTarget(loginUrl, pageHref) {
  const back = new URL(takeToken(pageHref).rest);
  back.hash = '';
  const u = new URL(loginUrl, pageHref);
  u.searchParams.set('return_to', back.href);
  return u.href;
}

/**
 * Sends the browser to `loginUrl` (returns true: the page is going away),
 * unless there is none or it was done less than a minute ago in this tab
 * (false): a login service handing back a token the gateway refuses must
 * not bounce the user between the two forever.
 */
export function loginRedirect(loginUrl) {
  if (!loginUrl) return false;
  const last = Number(sessionStorage.getItem(REDIRECTED));
  if (last && Date.now() - last < REDIRECT_AGAIN_MS) return false;
  sessionStorage.setItem(REDIRECTED, String(Date.now()));
  location.assign(loginTarget(loginUrl, location.href));
  return true;
}

/** To the login URL when there is one (the promise then never settles: the page goes), else the prompt. */
export function loginOrAsk(loginUrl, message) {
  if (loginRedirect(loginUrl)) return new Promise(() => {});
  return askToken(message);
}

/** A token worked: the next expiry may go to the login URL again. */
export function loginDone() {
  sessionStorage.removeItem(REDIRECTED);
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
      const msg = await errorMessage(res);
      throw new ApiError(res.status, `${path}: ${msg}`, path);
    }
    return as === 'json' ? res.json() : res.text();
  }

  /**
   * A write (`POST`, `PUT`, `DELETE`) with a JSON body; resolves with the
   * answer's JSON (null when it has none). A refusal throws an ApiError
   * whose message is the server's own (a 400 names the bad field), without
   * the path: the page shows it as it is.
   */
  async send(method, path, body) {
    const headers = this.headers();
    if (body !== undefined) headers['Content-Type'] = 'application/json';
    const res = await fetch(path, { method, headers, body: body === undefined ? undefined : JSON.stringify(body) });
    if (!res.ok) throw new ApiError(res.status, await errorMessage(res), path);
    const text = await res.text();
    return text ? JSON.parse(text) : null;
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

  /** Every geofence the token sees (a GeoJSON FeatureCollection). */
  geofences() {
    return this.get('/api/geofences');
  }

  config() {
    return fetch('/config.json').then((r) => (r.ok ? r.json() : {})).catch(() => ({}));
  }
}

/** The `message` of an error answer `{"error":{"code","message"}}`, else its status. */
async function errorMessage(res) {
  try {
    const m = (await res.json()).error.message;
    if (m) return m;
  } catch { /* not JSON */ }
  return `${res.status} ${res.statusText || ''}`.trim();
}
