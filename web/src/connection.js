// The WebSocket client (PROTOCOL.md §4): subscribe, reconnect with
// exponential backoff and full jitter, resume events with the `since`
// cursor, and report the state live / reconnecting / offline. The state
// comes from the socket alone: navigator.onLine is false in a browser with
// no network but loopback, as on an air-gapped site whose gateway answers
// fine, so it never makes the page say "offline".

const BASE_DELAY = 500;
const MAX_DELAY = 15000;
/** Consecutive failed attempts after which the page says "offline" (it keeps trying). */
const OFFLINE_AFTER = 6;
const PING_EVERY = 20000;
/** No frame at all for this long: the socket is dead even if the browser has not noticed. */
const SILENCE_LIMIT = 50000;

export class Connection {
  /**
   * @param {string} token
   * @param {object} handlers  onMessage(msg), onState(state, detail), subscriptions() -> [frame]
   */
  constructor(token, handlers) {
    this.token = token;
    this.h = handlers;
    this.ws = null;
    this.state = 'connecting';
    this.failures = 0;
    this.cursor = null;
    this.refSeq = 0;
    this.timer = null;
    this.lastFrame = 0;
    this.pendingRefs = new Map();
    setInterval(() => this.keepalive(), 5000);
    // The network is back: retry now rather than at the end of the backoff.
    addEventListener('online', () => this.reconnectNow());
  }

  url() {
    const proto = location.protocol === 'https:' ? 'wss:' : 'ws:';
    const q = this.token ? `?token=${encodeURIComponent(this.token)}` : '';
    return `${proto}//${location.host}/ws${q}`;
  }

  setState(state, detail = '') {
    this.state = state;
    this.h.onState(state, detail);
  }

  open() {
    clearTimeout(this.timer);
    let ws;
    try {
      ws = new WebSocket(this.url());
    } catch {
      this.scheduleRetry();
      return;
    }
    this.ws = ws;
    ws.onopen = () => {
      this.lastFrame = Date.now();
      // Fresh snapshot of every selection, events resumed after the cursor.
      for (const frame of this.h.subscriptions(this.cursor)) this.send(frame);
    };
    ws.onmessage = (e) => {
      this.lastFrame = Date.now();
      let msg;
      try {
        msg = JSON.parse(e.data);
      } catch {
        return;
      }
      if (msg.cursor) this.cursor = msg.cursor;
      if (msg.type === 'subscribed') {
        this.failures = 0;
        if (this.state !== 'live') this.setState('live');
      } else if (msg.type === 'error' && msg.code === 'cursor_expired') {
        // Too far behind: the feed reloads recent history over HTTP.
        this.h.onCursorExpired?.();
      }
      this.h.onMessage(msg);
    };
    ws.onclose = (e) => {
      if (this.ws !== ws) return;
      this.ws = null;
      this.h.onClose?.(e.code);
      if (e.code === 4001) {
        this.setState('offline', 'token expired');
        this.h.onAuthExpired?.();
        return;
      }
      this.scheduleRetry();
    };
  }

  scheduleRetry() {
    this.failures += 1;
    const cap = Math.min(MAX_DELAY, BASE_DELAY * 2 ** Math.min(this.failures - 1, 10));
    const delay = Math.round(cap / 2 + Math.random() * (cap / 2)); // jitter
    const offline = this.failures > OFFLINE_AFTER;
    this.setState(offline ? 'offline' : 'reconnecting', `retry in ${(delay / 1000).toFixed(1)} s`);
    clearTimeout(this.timer);
    this.timer = setTimeout(() => this.open(), delay);
  }

  reconnectNow() {
    if (this.ws) return;
    clearTimeout(this.timer);
    this.open();
  }

  keepalive() {
    if (!this.ws || this.ws.readyState !== WebSocket.OPEN) return;
    const idle = Date.now() - this.lastFrame;
    if (idle > SILENCE_LIMIT) {
      this.ws.close();
      return;
    }
    if (idle > PING_EVERY) this.send({ op: 'ping' });
  }

  nextRef() {
    this.refSeq += 1;
    return String(this.refSeq);
  }

  /** Sends a frame if the socket is open; subscriptions are re-sent on every (re)connect anyway. */
  send(frame) {
    if (!this.ws || this.ws.readyState !== WebSocket.OPEN) return false;
    if (!frame.ref) frame.ref = this.nextRef();
    this.ws.send(JSON.stringify(frame));
    return true;
  }
}
