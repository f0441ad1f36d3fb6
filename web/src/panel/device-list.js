// Searchable device list. Virtual: only the rows in view exist in the DOM
// (about 30 of them, whatever the fleet size); the filtered order is rebuilt
// at most a few times a second, the visible rows once a second for "last seen".
import { ago, num, el } from './format.js';
import { STATES } from '../store.js';

const ROW = 26;
/** truck-2 before truck-10 */
const byId = new Intl.Collator('en', { numeric: true }).compare;

export class DeviceList {
  constructor(store, onSelect) {
    this.store = store;
    this.onSelect = onSelect;
    this.box = document.getElementById('device-list');
    this.spacer = this.box.querySelector('.spacer');
    this.search = document.getElementById('device-search');
    this.rows = [];
    this.ids = [];
    this.builtFor = -1;
    this.query = '';
    /** only this group's devices (the group filter); null: all */
    this.group = null;
    this.selected = null;
    this.search.addEventListener('input', () => {
      this.query = this.search.value.trim().toLowerCase();
      this.builtFor = -1;
      this.box.scrollTop = 0;
      this.render();
    });
    this.box.addEventListener('scroll', () => this.render());
    this.box.addEventListener('click', (e) => {
      const row = e.target.closest('[data-device]');
      if (row) this.onSelect(row.dataset.device);
    });
    setInterval(() => this.render(true), 1000);
  }

  /** Lists only the devices of `group` (null: all). */
  setGroup(group) {
    this.group = group;
    this.builtFor = -1;
    this.box.scrollTop = 0;
    this.render();
  }

  rebuild() {
    const q = this.query;
    const group = this.group;
    const ids = [];
    for (const d of this.store.devices.values()) {
      if (group && !(d.groups && d.groups.includes(group))) continue;
      if (!q || d.id.toLowerCase().includes(q) || d.state === q) ids.push(d.id);
    }
    ids.sort(byId);
    this.ids = ids;
    this.builtFor = this.store.listVersion;
    this.builtAt = Date.now();
    this.builtState = this.store.version;
    this.spacer.style.height = `${ids.length * ROW}px`;
  }

  setSelected(id) {
    this.selected = id;
    this.render(true);
  }

  /** Scrolls the list so `id` is in view. */
  reveal(id) {
    const i = this.ids.indexOf(id);
    if (i < 0) return;
    const top = i * ROW;
    if (top < this.box.scrollTop || top > this.box.scrollTop + this.box.clientHeight - ROW) this.box.scrollTop = top - ROW * 2;
    this.render(true);
  }

  render(force = false) {
    // Searching by state ("offline"): states change without the id set changing.
    const byState = STATES.includes(this.query) && this.builtState !== this.store.version && Date.now() - this.builtAt > 1000;
    const rebuilt = this.builtFor !== this.store.listVersion || byState;
    if (rebuilt) this.rebuild();
    if (!rebuilt && !force && this.rendered === this.box.scrollTop) return;
    this.rendered = this.box.scrollTop;
    const first = Math.max(0, Math.floor(this.box.scrollTop / ROW) - 5);
    const last = Math.min(this.ids.length, first + Math.ceil((this.box.clientHeight || 400) / ROW) + 10);
    const now = Date.now();
    const want = last - first;
    while (this.rows.length < want) {
      const r = el('div', 'row');
      r.setAttribute('role', 'listitem');
      for (const c of ['dot', 'id', 'state', 'bat', 'sig', 'seen']) r.appendChild(el('span', c));
      this.box.appendChild(r);
      this.rows.push(r);
    }
    for (let i = 0; i < this.rows.length; i++) {
      const r = this.rows[i];
      const d = i < want ? this.store.get(this.ids[first + i]) : null;
      if (!d) {
        r.hidden = true;
        r.removeAttribute('data-device');
        continue;
      }
      r.hidden = false;
      r.style.top = `${(first + i) * ROW}px`;
      r.dataset.device = d.id;
      r.dataset.state = d.state;
      r.classList.toggle('selected', d.id === this.selected);
      const [, id, state, bat, sig, seen] = r.children;
      id.textContent = d.id;
      id.title = d.id;
      state.textContent = d.state;
      bat.textContent = num(d.battery, '%');
      bat.title = 'battery';
      sig.textContent = num(d.signal, ' dBm');
      sig.title = 'signal';
      seen.textContent = ago(d.last_seen, now);
      seen.title = d.last_seen ? new Date(d.last_seen).toISOString() : 'never';
    }
  }
}
