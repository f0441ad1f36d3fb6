// The geofences of the page (issue #15): loaded from `GET /api/geofences`
// at start, again every minute, after the page's own edits and when an
// event names a fence the page does not know (PROTOCOL.md has no message
// for a fence change, so that is how the page learns of one between
// refreshes); their schedules re-evaluated every 30 s (a fence fades when
// its window closes). A click on a fence (not on a device) selects it and
// shows it in the panel's `#fences` section, with "delete" for an admin;
// app/fence-editor.js draws new ones. A gateway without the fence API
// (404) leaves the section hidden and the layer empty.
import { ApiError, tokenClaims } from '../api.js';
import { fenceShape, scheduleText } from '../geofence.js';
import { FencesLayer, fencesPane } from '../map/fences-layer.js';
import { FenceEditor } from './fence-editor.js';

const REFRESH = 60000;
const ACTIVITY = 30000;
/** An unknown fence in an event reloads at most this often. */
const NOTICE_GAP = 5000;
const KIND_WORDS = { polygon: 'polygon', circle: 'circle', corridor: 'corridor' };

export class Fences {
  /**
   * @param {object} o
   * @param {import('../api.js').Api} o.api
   * @param {L.Map} o.map
   * @param {{hit(point): object|null, clickable: boolean}} o.devices  the devices layer: a click on a device is not a click on a fence
   * @param {boolean} o.open  the gateway runs without authentication (`--auth none`): every visitor may try to edit
   */
  constructor({ api, map, devices, open }) {
    this.api = api;
    this.map = map;
    this.devices = devices;
    fencesPane(map);
    this.layer = new FencesLayer().addTo(map);
    /** id -> shape, as last loaded */
    this.byId = new Map();
    /** false once the gateway answered 404: it has no fence API */
    this.available = true;
    this.loading = null;
    this.lastNotice = 0;
    this.selected = null;
    this.section = document.getElementById('fences');
    this.count = document.getElementById('fences-count');
    this.info = document.getElementById('fence-info');
    this.error = document.getElementById('fence-error');
    this.deleteBtn = document.getElementById('fence-delete');
    this.open = open;
    this.admin = false;
    this.editor = new FenceEditor({
      map,
      devices,
      onSave: (feature) => this.create(feature),
      onState: (drawing) => {
        if (drawing) this.select(null);
      },
    });
    this.updateAdmin();
    this.deleteBtn.addEventListener('click', () => this.deleteSelected());
    map.on('click', (e) => this.click(e));
  }

  /** The first load, then the periodic refresh and schedule checks. */
  start() {
    const first = this.load();
    setInterval(() => this.load(), REFRESH);
    setInterval(() => this.layer.updateActive() && this.showSelected(), ACTIVITY);
    return first;
  }

  /**
   * Whether to offer the editor: the token's `admin` claim (read again on
   * every load: a new token after expiry may differ), or an open gateway.
   */
  updateAdmin() {
    this.admin = this.open || tokenClaims(this.api.token)?.admin === true;
    document.getElementById('fence-tools').hidden = !this.admin;
    if (!this.admin) this.editor.stop();
  }

  /**
   * Loads every fence, one load at a time: a call during one shares it, or
   * with `fresh` (after an edit, which that load may predate) waits for it
   * and loads again.
   */
  async load(fresh = false) {
    if (fresh && this.loading) await this.loading;
    if (!this.available) return false;
    this.loading ||= this.api.geofences().then((fc) => {
      this.updateAdmin();
      const shapes = (fc.features || []).map(fenceShape).filter(Boolean);
      this.byId = new Map(shapes.map((s) => [s.id, s]));
      this.layer.setFences(shapes);
      this.section.hidden = false;
      this.count.textContent = `${shapes.length}`;
      if (this.selected != null && !this.byId.has(this.selected)) this.select(null);
      else this.showSelected();
      return true;
    }).catch((e) => {
      if (e instanceof ApiError && e.status === 404) {
        this.available = false;
        console.info('this gateway has no /api/geofences: no fences on the map');
      } else {
        console.warn('geofences', e);
      }
      return false;
    }).finally(() => {
      this.loading = null;
    });
    return this.loading;
  }

  /** Every event (app/messages.js): one that names a fence the page does not know reloads the fences. */
  noticeEvent(ev) {
    const id = ev.data?.geofence;
    if (id == null || !String(ev.kind).startsWith('geofence_')) return;
    const known = this.byId.get(id);
    if (known && (ev.data.name == null || known.name === ev.data.name)) return;
    if (Date.now() - this.lastNotice < NOTICE_GAP) return;
    this.lastNotice = Date.now();
    this.load();
  }

  click(e) {
    if (this.editor.drawing || this.devices.hit(e.containerPoint)) return;
    this.select(this.layer.hit(e.containerPoint)?.id ?? null);
  }

  select(id) {
    this.selected = id;
    this.layer.setSelected(id);
    this.error.textContent = '';
    this.deleteBtn.textContent = 'delete';
    delete this.deleteBtn.dataset.confirm;
    this.showSelected();
  }

  /** The selected fence's name, kind, schedule and state in the panel. */
  showSelected() {
    const s = this.selected != null && this.byId.get(this.selected);
    this.info.hidden = !s;
    this.deleteBtn.hidden = !s || !this.admin;
    if (!s) return;
    this.info.dataset.id = s.id;
    const extent = s.kind === 'circle' ? `, radius ${s.feature.properties.radius} m` : s.kind === 'corridor' ? `, width ${s.feature.properties.width} m` : '';
    const rows = [
      ['name', s.name],
      ['kind', `${KIND_WORDS[s.kind]}${extent}`],
      ['schedule', scheduleText(s.schedule)],
      ['now', s.active ? 'active' : 'inactive (outside its schedule)'],
      ['severity', s.severity],
    ];
    if (s.groups?.length) rows.push(['groups', s.groups.join(', ')]);
    if (s.feature.properties.webhook?.url) rows.push(['webhook', s.feature.properties.webhook.url]);
    this.info.replaceChildren(...rows.flatMap(([k, v]) => {
      const dt = document.createElement('dt');
      dt.textContent = k;
      const dd = document.createElement('dd');
      dd.textContent = v;
      dd.dataset.field = k;
      return [dt, dd];
    }));
  }

  /** POSTs a new fence; resolves with the stored Feature (selected), throws the API's refusal. */
  async create(feature) {
    const stored = await this.api.send('POST', '/api/geofences', feature);
    await this.load(true);
    if (stored?.id != null) this.select(stored.id);
    return stored;
  }

  /** "delete" asks once more ("confirm delete"), then DELETEs the selected fence. */
  async deleteSelected() {
    const id = this.selected;
    if (id == null) return;
    if (!this.deleteBtn.dataset.confirm) {
      this.deleteBtn.dataset.confirm = '1';
      this.deleteBtn.textContent = 'confirm delete';
      return;
    }
    this.deleteBtn.disabled = true;
    try {
      await this.api.send('DELETE', `/api/geofences/${encodeURIComponent(id)}`);
      this.select(null);
      await this.load(true);
    } catch (e) {
      this.error.textContent = e.message;
      delete this.deleteBtn.dataset.confirm;
      this.deleteBtn.textContent = 'delete';
    } finally {
      this.deleteBtn.disabled = false;
    }
  }
}
