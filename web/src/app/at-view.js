// "Where was everyone at": the map shows every device the token sees at a
// past instant, from `GET /api/devices?at=<ms>` (each device's last known
// position then, from the history tables), instead of the live positions.
// Chosen with the section's time field or its slider (the last 24 h), or by
// the tracks' replay timeline with *everyone* ticked; *live* goes back. The
// live store keeps taking the socket's messages meanwhile, so going back is
// instant. States are classified at that instant (stale: silent longer than
// the stale threshold before it).
import { ApiError } from '../api.js';
import { Store } from '../store.js';
import { dateTime } from '../panel/format.js';

/** Slider and timeline moves ask at most this often (the last one always: a replay at 600× moves every frame). */
const THROTTLE_MS = 250;

export class AtView {
  constructor({ api, layer, live }) {
    this.api = api;
    this.layer = layer;
    this.liveStore = live;
    /** the shown instant (ms), or null when the map is live */
    this.time = null;
    /** the store the map shows in this mode (null when live) */
    this.store = null;
    this.seq = 0;
    this.timer = 0;
    this.pending = null;
    this.input = document.getElementById('at-time');
    this.slider = document.getElementById('at-slider');
    this.msg = document.getElementById('at-msg');
    this.liveBtn = document.getElementById('at-live');
    document.getElementById('at-show').addEventListener('click', () => {
      const t = fromLocalInput(this.input.value);
      if (t != null) this.show(t);
    });
    this.slider.addEventListener('input', () => this.later(Date.now() - (Number(this.slider.max) - Number(this.slider.value)) * 60000));
    this.liveBtn.addEventListener('click', () => this.goLive());
  }

  /** `show(t)` soon: at most one request per THROTTLE_MS, for the newest `t` asked. */
  later(t) {
    this.pending = t;
    if (this.timer) return;
    this.timer = setTimeout(() => {
      this.timer = 0;
      this.show(this.pending);
    }, THROTTLE_MS);
  }

  /** Loads and shows every device at `t` (ms); resolves with how many, or null when refused. */
  async show(t) {
    const seq = ++this.seq;
    this.msg.textContent = `loading ${dateTime(t)}…`;
    let states;
    try {
      states = await this.api.get(`/api/devices?at=${Math.round(t)}`);
    } catch (e) {
      if (seq !== this.seq) return null;
      this.msg.textContent = e instanceof ApiError && e.status === 400
        ? 'this gateway cannot show past positions (no ?at=)'
        : `at: ${e.message}`;
      return null;
    }
    if (seq !== this.seq) return null; // a newer request answers for the map
    const store = new Store(this.liveStore.staleMs);
    for (const s of states) store.putState(s, t);
    this.store = store;
    this.time = t;
    this.layer.glider?.stopAll();
    this.layer.store = store;
    this.layer.schedule();
    this.input.value = toLocalInput(t);
    this.liveBtn.hidden = false;
    document.body.dataset.at = String(t);
    this.msg.textContent = `${dateTime(t)}: ${states.length} device${states.length === 1 ? '' : 's'}`;
    return states.length;
  }

  /** Back to the live positions. */
  goLive() {
    clearTimeout(this.timer);
    this.timer = 0;
    this.seq += 1;
    this.time = null;
    this.store = null;
    this.layer.store = this.liveStore;
    this.layer.schedule();
    this.liveBtn.hidden = true;
    this.slider.value = this.slider.max;
    delete document.body.dataset.at;
    this.msg.textContent = '';
  }
}

/** `datetime-local`'s value (local time) as epoch ms, or null. */
function fromLocalInput(v) {
  const t = new Date(v).getTime();
  return Number.isFinite(t) ? t : null;
}

/** Epoch ms as a `datetime-local` value (local time, seconds). */
function toLocalInput(t) {
  const d = new Date(t);
  const p = (n) => String(n).padStart(2, '0');
  return `${d.getFullYear()}-${p(d.getMonth() + 1)}-${p(d.getDate())}T${p(d.getHours())}:${p(d.getMinutes())}:${p(d.getSeconds())}`;
}
