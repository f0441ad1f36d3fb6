// The live connection: what the page subscribes to (the whole fleet, or the
// view plus the selected device), the connection badge, and what the socket
// cannot bring: events before the page loaded, events after an expired
// cursor, and in viewport mode the events of devices outside the view
// (/api/events every 5 s) and newly known devices (/api/devices every minute).
// Frames go to `onMessage` (app/messages.js); the socket itself is
// connection.js.
import { forgetToken, loginOrAsk } from '../api.js';
import { Connection } from '../connection.js';
import { viewBox } from './map-view.js';

const BBOX_DEBOUNCE = 300;
const HOUR = 3600 * 1000;

/** Shows the connection state in `#conn-state`; `title` is left as it is when not given. */
export function showConnState(state, text = state, title) {
  const badge = document.getElementById('conn-state');
  badge.dataset.state = state;
  badge.textContent = text;
  if (title !== undefined) badge.title = title;
}

/** The last hour of events into the feed: at load (`live` false: no alerts) and after `cursor_expired`. */
export async function loadRecentEvents(api, feed, live) {
  for (const ev of await api.recentEvents(HOUR)) feed.add(ev, live);
}

export class Live {
  /**
   * @param {object} o
   * @param {'fleet'|'bbox'} o.mode
   * @param {string} [o.loginUrl]  config.json's `login_url`: where an expired token sends the user
   * @param {() => string|null} o.selected  the selected device, followed by id in viewport mode
   * @param {(msg: object) => void} o.onMessage  every parsed frame
   */
  constructor({ api, token, mode, map, store, feed, loginUrl, selected, onMessage }) {
    this.mode = mode;
    this.map = map;
    /** the bbox last subscribed to, so an unchanged view sends nothing */
    this.bbox = null;
    this.conn = new Connection(token, {
      subscriptions: (cursor) => this.subscriptions(cursor, selected()),
      onState: (state, detail) => showConnState(state, state, detail || state),
      onMessage,
      onCursorExpired: () => loadRecentEvents(api, feed, true).catch(() => {}),
      onAuthExpired: () => {
        forgetToken();
        loginOrAsk(loginUrl, 'The token expired. Paste a new one.').then((t) => {
          this.conn.token = t;
          api.token = t;
          this.conn.reconnectNow();
        });
      },
    });
    if (mode === 'bbox') {
      map.on('moveend', () => this.viewMoved());
      pollOutsideView(api, store, feed);
    }
  }

  open() {
    this.conn.open();
  }

  /** The frames sent on every (re)connect, `since` the last cursor seen. */
  subscriptions(cursor, selected) {
    const since = cursor ? { since: cursor } : {};
    if (this.mode === 'fleet') return [{ op: 'subscribe', fleet: true, ...since }];
    this.bbox = viewBox(this.map);
    const frames = [{ op: 'subscribe', bbox: this.bbox, ...since }];
    if (selected) frames.push({ op: 'subscribe', devices: [selected] });
    return frames;
  }

  /** In viewport mode: a new bbox subscribe once the map has stopped moving. */
  viewMoved() {
    clearTimeout(this.moveTimer);
    this.moveTimer = setTimeout(() => {
      const next = viewBox(this.map);
      if (this.bbox && next.every((v, i) => v === this.bbox[i])) return;
      this.bbox = next;
      this.conn.send({ op: 'subscribe', bbox: this.bbox });
    }, BBOX_DEBOUNCE);
  }

  /** In viewport mode the selected device is followed by id wherever it goes. */
  selectionChanged(had, id) {
    if (!id || this.mode !== 'bbox' || had === id) return;
    if (had) this.conn.send({ op: 'unsubscribe', devices: [had] });
    this.conn.send({ op: 'subscribe', devices: [id] });
  }
}

/** Viewport mode: events of devices outside the view, and devices that became known. */
function pollOutsideView(api, store, feed) {
  let cursor = null;
  const from = Date.now() - 60000;
  setInterval(async () => {
    try {
      const q = new URLSearchParams({ from: String(from), limit: '1000' });
      if (cursor) q.set('cursor', cursor);
      const r = await api.get(`/api/events?${q}`);
      for (const ev of r.events) feed.add(ev, true);
      if (r.next) cursor = r.next;
    } catch { /* the connection badge tells */ }
  }, 5000);
  setInterval(() => api.devices().then((all) => {
    for (const s of all) if (!store.get(s.device)) store.putState(s);
    store.changed();
  }).catch(() => {}), 60000);
}
