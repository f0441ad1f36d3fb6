// The group filter (`#group-filter`): the groups of the devices the page
// knows (DeviceState `groups`), and the chosen one narrowing the device list
// and the map to its devices. Hidden while no device has a group. The choices
// are recounted when the set of devices changes and every 5 s (a group change
// arrives as a fresh DeviceState without changing the set).
import { el } from './format.js';

const RECOUNT_MS = 5000;

export class GroupFilter {
  /** `onChange(group|null)`: the list and the map apply it. */
  constructor(store, onChange) {
    this.store = store;
    this.select = document.getElementById('group-filter');
    this.group = null;
    this.shown = '';
    this.builtFor = -1;
    this.builtAt = 0;
    this.select.addEventListener('change', () => {
      this.group = this.select.value || null;
      onChange(this.group);
    });
  }

  /** Rebuilds the choices if the devices changed (cheap otherwise: called on every panel refresh). */
  refresh() {
    const now = Date.now();
    if (this.builtFor === this.store.listVersion && now - this.builtAt < RECOUNT_MS) return;
    this.builtFor = this.store.listVersion;
    this.builtAt = now;
    const groups = this.store.groups();
    // A chosen group stays offered while no device is left in it, so the filter does not jump.
    if (this.group && !groups.includes(this.group)) groups.push(this.group);
    const key = groups.join('\n');
    if (key === this.shown) return;
    this.shown = key;
    this.select.replaceChildren(el('option', null, 'all groups'), ...groups.map((g) => el('option', null, g)));
    this.select.firstChild.value = '';
    for (const o of this.select.options) if (o.value === (this.group ?? '')) o.selected = true;
    this.select.hidden = groups.length === 0;
  }
}
