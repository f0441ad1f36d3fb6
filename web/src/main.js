// The live map page: wires the store, the map layers, the side panel and the
// WebSocket connection. See web/README.md for the design.
import L from 'leaflet';
import { Api, AuthError, askToken, forgetToken, tokenFromPage } from './api.js';
import { Connection } from './connection.js';
import { Store } from './store.js';
import { DevicesLayer } from './map/devices-layer.js';
import { Graticule } from './map/graticule.js';
import { Basemap, basemapPane } from './map/basemap.js';
import { VectorTiles } from './map/vector-tiles.js';
import { tileSource, viewBbox } from './geo.js';
import { DeviceList } from './panel/device-list.js';
import { EventFeed } from './panel/event-feed.js';
import { Tracks } from './panel/tracks.js';
import { ago, dateTime, num, el } from './panel/format.js';

/** Up to this many known devices the page subscribes to the whole fleet; above, by viewport. */
const FLEET_LIMIT = 2000;
const BBOX_DEBOUNCE = 300;

const params = new URL(location.href).searchParams;

async function start() {
  const api = new Api(null);
  const config = await api.config();
  const staleMs = Number(params.get('stale')) || config.stale_after_ms || 120000;
  const store = new Store(staleMs);

  // Token: URL, session, or the login prompt; checked with one API call.
  let token = tokenFromPage();
  let known;
  for (;;) {
    if (token == null) token = await askToken();
    api.token = token;
    try {
      known = await api.devices();
      break;
    } catch (e) {
      if (e instanceof AuthError) {
        forgetToken();
        token = await askToken('That token was refused. Paste a valid one.');
      } else {
        // Gateway unreachable at load: say so and try again, like the socket does.
        const s = document.getElementById('conn-state');
        s.dataset.state = 'offline';
        s.textContent = 'offline';
        s.title = e.message;
        await new Promise((r) => setTimeout(r, 2000 + Math.random() * 3000));
      }
    }
  }
  for (const s of known) store.putState(s);

  const mode = params.get('live') || (known.length > FLEET_LIMIT ? 'bbox' : 'fleet');
  document.body.dataset.mode = mode;

  // Map: the offline basemap (sea until it has loaded, after the first
  // paint) and a graticule always; tiles on top when configured, raster or
  // vector, with the basemap showing where they have none.
  const map = L.map('map', { zoomControl: true, worldCopyJump: true, preferCanvas: true, minZoom: 2 });
  basemapPane(map);
  const basemap = new Basemap({ attribution: 'Natural Earth' }).addTo(map);
  new Graticule().addTo(map);
  const source = tileSource(config, params);
  const attribution = config.attribution || '';
  if (source?.format === 'vector') {
    new VectorTiles(source.url, { nativeMaxZoom: source.maxZoom, attribution }).addTo(map);
  } else if (source) {
    const opts = { maxZoom: 19, attribution };
    if (source.maxZoom != null) opts.maxNativeZoom = source.maxZoom;
    L.tileLayer(source.url, opts).addTo(map);
  }
  const located = known.filter((d) => d.lat != null);
  if (located.length) {
    map.fitBounds(L.latLngBounds(located.map((d) => [d.lat, d.lon])).pad(0.2), { maxZoom: 14 });
  } else {
    map.setView([20, 0], 2);
  }

  let selected = null;
  const layer = new DevicesLayer(store, (id) => select(id));
  layer.addTo(map);
  const list = new DeviceList(store, (id) => select(id));
  const feed = new EventFeed((id) => select(id));
  const tracks = new Tracks(map, api);

  try {
    for (const ev of await api.recentEvents(3600 * 1000)) feed.add(ev, false);
  } catch (e) {
    console.warn('event history', e);
  }

  // ---- the live connection
  let bbox = null;
  // The view plus 20 %, across the 180° meridian as minLon > maxLon.
  const viewBox = () => {
    const b = map.getBounds().pad(0.2);
    return viewBbox(b.getWest(), b.getSouth(), b.getEast(), b.getNorth());
  };
  const connState = document.getElementById('conn-state');
  const conn = new Connection(token, {
    subscriptions(cursor) {
      const since = cursor ? { since: cursor } : {};
      if (mode === 'fleet') return [{ op: 'subscribe', fleet: true, ...since }];
      bbox = viewBox();
      const frames = [{ op: 'subscribe', bbox, ...since }];
      if (selected) frames.push({ op: 'subscribe', devices: [selected] });
      return frames;
    },
    onState(state, detail) {
      connState.dataset.state = state;
      connState.textContent = state;
      connState.title = detail || state;
    },
    onMessage: handle,
    onCursorExpired() {
      api.recentEvents(3600 * 1000).then((evs) => evs.forEach((ev) => feed.add(ev, true))).catch(() => {});
    },
    onAuthExpired() {
      forgetToken();
      askToken('The token expired. Paste a new one.').then((t) => {
        conn.token = t;
        api.token = t;
        conn.reconnectNow();
      });
    },
  });

  const stats = { messages: 0 };
  function handle(msg) {
    stats.messages += 1;
    switch (msg.type) {
      case 'snapshot': {
        // Fresh truth after every (re)connect: in fleet mode it is the whole visible world.
        if (mode === 'fleet' && msg.devices) {
          const keep = new Set(msg.devices.map((s) => s.device));
          for (const id of [...store.devices.keys()]) if (!keep.has(id)) store.remove(id);
        }
        for (const s of msg.devices || []) store.putState(s);
        store.changed();
        break;
      }
      case 'location': {
        const had = store.get(msg.device);
        store.location(msg);
        store.changed(!had);
        if (msg.device === selected) followSelected();
        break;
      }
      case 'status': {
        const had = store.get(msg.device);
        store.status(msg);
        store.changed(!had);
        break;
      }
      case 'event': {
        const had = store.get(msg.device);
        const d = store.ensure(msg.device);
        store.seen(d, msg.ts);
        feed.add(msg, true);
        store.changed(!had);
        break;
      }
      case 'error':
        if (msg.code !== 'cursor_expired') console.warn('gateway error', msg);
        break;
      default:
        break;
    }
  }

  let moveTimer = 0;
  map.on('moveend', () => {
    clearTimeout(moveTimer);
    moveTimer = setTimeout(() => {
      if (mode !== 'bbox') return;
      const next = viewBox();
      if (bbox && next.every((v, i) => v === bbox[i])) return;
      bbox = next;
      conn.send({ op: 'subscribe', bbox });
    }, BBOX_DEBOUNCE);
  });

  // In viewport mode, events of devices outside the view come from the history API.
  if (mode === 'bbox') {
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

  // ---- selection, follow, details
  const details = document.getElementById('details');
  const follow = document.getElementById('follow');
  map.on('dragstart', () => {
    follow.checked = false;
  });
  function select(id) {
    const had = selected;
    selected = id;
    layer.setSelected(id);
    list.setSelected(id);
    list.reveal(id);
    details.hidden = !id;
    document.getElementById('details-title').textContent = id || '';
    follow.checked = true;
    if (id && mode === 'bbox' && had !== id) {
      if (had) conn.send({ op: 'unsubscribe', devices: [had] });
      conn.send({ op: 'subscribe', devices: [id] });
    }
    followSelected(true);
    renderDetails();
  }
  document.getElementById('details-close').addEventListener('click', () => select(null));
  let lastFollow = 0;
  function followSelected(now = false) {
    const d = selected && store.get(selected);
    if (!d || d.lat == null || !follow.checked) return;
    if (!now && Date.now() - lastFollow < 1000) return;
    lastFollow = Date.now();
    if (now && map.getZoom() < 13) map.setView([d.lat, d.lon], 14, { animate: false });
    else map.panTo([d.lat, d.lon], { animate: false });
  }
  const fields = document.getElementById('details-fields');
  function renderDetails() {
    const d = selected && store.get(selected);
    if (!d) return;
    const rows = [
      ['state', d.state],
      ['position', d.lat == null ? '—' : `${d.lat.toFixed(6)}, ${d.lon.toFixed(6)}`],
      ['fix time', dateTime(d.ts)],
      ['speed', num(d.speed == null ? null : d.speed * 3.6, ' km/h', 1)],
      ['heading', num(d.heading, '°')],
      ['accuracy', num(d.accuracy, ' m')],
      ['altitude', num(d.alt, ' m')],
      ['battery', num(d.battery, '%')],
      ['signal', num(d.signal, ' dBm')],
      ['last seen', `${ago(d.last_seen)} (${dateTime(d.last_seen)})`],
    ];
    fields.replaceChildren(...rows.flatMap(([k, v]) => {
      const dd = el('dd', null, v);
      dd.dataset.field = k;
      return [el('dt', null, k), dd];
    }));
    fields.dataset.state = d.state;
  }

  const period = document.getElementById('track-period');
  period.addEventListener('change', () => {
    document.getElementById('track-custom').hidden = period.value !== 'custom';
  });
  document.getElementById('track-load').addEventListener('click', async () => {
    if (!selected) return;
    let from;
    let to;
    if (period.value === 'custom') {
      from = Date.parse(document.getElementById('track-from').value);
      to = Date.parse(document.getElementById('track-to').value);
      if (!Number.isFinite(from) || !Number.isFinite(to)) return;
    } else {
      to = Date.now() + 60000;
      from = Date.now() - Number(period.value);
    }
    follow.checked = false;
    const msg = document.getElementById('track-msg');
    msg.textContent = 'loading…';
    try {
      const n = await tracks.load(selected, from, to);
      msg.textContent = n ? '' : 'no points in this period';
    } catch (e) {
      msg.textContent = `track: ${e.message}`;
    }
  });

  // ---- one render loop for everything that depends on the store
  const counts = document.getElementById('counts');
  function refreshPanel() {
    list.render(true);
    renderDetails();
    const c = store.counts();
    counts.textContent = `${store.devices.size} devices · ${c.online} online · ${c.stale} stale · ${c.offline} offline`;
  }
  let panelDue = 0;
  store.listeners.add(() => {
    layer.schedule();
    panelDue ||= setTimeout(() => {
      panelDue = 0;
      refreshPanel();
    }, 250);
  });
  // Time passes: "last seen", and devices going stale without any message.
  setInterval(() => {
    if (store.tick()) store.changed(false);
    refreshPanel();
  }, 1000);
  store.changed();
  conn.open();
  // The basemap after the first paint: devices and the connection come first.
  requestAnimationFrame(() => setTimeout(() => basemap.load('/assets/basemap.json').catch((e) => console.warn('basemap', e)), 0));

  window.fieldcast = { handle, stats, store, map, layer, conn, feed, tracks, list, select, mode, basemap, marker: (id) => layer.marker(id) };
}

start().catch((e) => {
  console.error(e);
  const s = document.getElementById('conn-state');
  s.dataset.state = 'offline';
  s.textContent = `error: ${e.message}`;
});
