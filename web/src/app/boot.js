// The page's start: config.json, the token (checked by loading the known
// devices), fleet or viewport mode, then the parts (map-view.js, panel.js,
// selection.js, live.js with messages.js, fences.js), wired in the order the
// page shows them: devices first, the socket next, then the geofences, the
// basemap after the first paint.
import { Api, AuthError, askToken, forgetToken, tokenFromPage } from '../api.js';
import { Store } from '../store.js';
import { DeviceList } from '../panel/device-list.js';
import { EventFeed } from '../panel/event-feed.js';
import { Tracks } from '../panel/tracks.js';
import { Live, loadRecentEvents, showConnState } from './live.js';
import { createMapView, loadBasemapAfterFirstPaint } from './map-view.js';
import { createMessageHandler } from './messages.js';
import { Fences } from './fences.js';
import { Details, bindTrackControls, refreshPanel } from './panel.js';
import { Selection } from './selection.js';

/** Up to this many known devices the page subscribes to the whole fleet; above, by viewport. */
const FLEET_LIMIT = 2000;

/**
 * Starts the page; resolves with the app's parts (main.js exposes them as
 * `window.fieldcast`, the test and debugging hook).
 */
export async function boot() {
  const params = new URL(location.href).searchParams;
  const api = new Api(null);
  const config = await api.config();
  const store = new Store(Number(params.get('stale')) || config.stale_after_ms || 120000);
  const { token, known } = await signIn(api, config.auth === 'none');
  for (const s of known) store.putState(s);
  const mode = params.get('live') || (known.length > FLEET_LIMIT ? 'bbox' : 'fleet');
  document.body.dataset.mode = mode;

  const select = (id) => selection.select(id);
  const { map, basemap, layer } = createMapView({ config, params, known, store, onSelect: select });
  const list = new DeviceList(store, select);
  const feed = new EventFeed(select);
  const tracks = new Tracks(map, api);
  const fences = new Fences({ api, map, devices: layer, open: config.auth === 'none' });
  const { handle, stats } = createMessageHandler({
    store, feed, mode, onLocation: (id) => selection.moved(id), onEvent: (ev) => fences.noticeEvent(ev),
  });
  const live = new Live({ api, token, mode, map, store, feed, selected: () => selection.id, onMessage: handle });
  const details = new Details(() => select(null));
  const selection = new Selection({ store, map, layer, list, details, onChange: (had, id) => live.selectionChanged(had, id) });
  bindTrackControls({ tracks, details, selected: () => selection.id });
  refreshPanel({ store, list, details, selectedDevice: () => selection.device() });

  await loadRecentEvents(api, feed, false).catch((e) => console.warn('event history', e));
  store.changed();
  live.open();
  fences.start();
  loadBasemapAfterFirstPaint(basemap);
  return {
    mode, store, map, basemap, layer, list, feed, tracks, fences, conn: live.conn, select, handle, stats, marker: (id) => layer.marker(id),
  };
}

/**
 * The token from the URL, the session or the login prompt, checked with one
 * API call (the known devices, returned with it). A refused token asks again;
 * an unreachable gateway is retried after 2–5 s, like the socket does. A
 * gateway without authentication (`--auth none`) is not asked for one.
 */
async function signIn(api, open) {
  let token = tokenFromPage() ?? (open ? '' : null);
  for (;;) {
    if (token == null) token = await askToken();
    api.token = token;
    try {
      return { token, known: await api.devices() };
    } catch (e) {
      if (e instanceof AuthError) {
        forgetToken();
        token = await askToken('That token was refused. Paste a valid one.');
      } else {
        showConnState('offline', 'offline', e.message);
        await new Promise((r) => setTimeout(r, 2000 + Math.random() * 3000));
      }
    }
  }
}
