// The page's start: config.json, the token (checked by loading the known
// devices), fleet or viewport mode, then the parts (map-view.js, panel.js,
// selection.js, live.js with messages.js, fences.js), wired in the order the
// page shows them: devices first, the socket next, then the geofences, the
// basemap after the first paint.
import { Api, AuthError, forgetToken, loginDone, loginOrAsk, tokenFromPage } from '../api.js';
import { Store } from '../store.js';
import { Glider } from '../glide.js';
import { DeviceList } from '../panel/device-list.js';
import { GroupFilter } from '../panel/group-filter.js';
import { EventFeed } from '../panel/event-feed.js';
import { Tracks } from '../panel/tracks.js';
import { Live, loadRecentEvents, showConnState } from './live.js';
import { createMapView, loadBasemapAfterFirstPaint } from './map-view.js';
import { createMessageHandler } from './messages.js';
import { Fences } from './fences.js';
import { AtView } from './at-view.js';
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
  const glider = new Glider({ enabled: !['off', '0', 'false'].includes(params.get('glide')) });
  store.onMove = (d, mx0, my0, ts0, h0) => glider.fix(d, mx0, my0, ts0, h0, store.staleMs);
  store.onPut = (d) => glider.stop(d);
  const { token, known } = await signIn(api, config);
  for (const s of known) store.putState(s);
  const mode = params.get('live') || (known.length > FLEET_LIMIT ? 'bbox' : 'fleet');
  document.body.dataset.mode = mode;

  const select = (id) => selection.select(id);
  const { map, basemap, layer } = createMapView({ config, params, known, store, glider, onSelect: select });
  bindGlideSwitch(glider);
  const list = new DeviceList(store, select);
  const groups = new GroupFilter(store, (g) => {
    list.setGroup(g);
    layer.setGroup(g);
  });
  const feed = new EventFeed(select);
  const tracks = new Tracks(map, api);
  const at = new AtView({ api, layer, live: store });
  tracks.onTime = (t) => at.later(t);
  tracks.onLive = () => at.goLive();
  const fences = new Fences({ api, map, devices: layer, open: config.auth === 'none' });
  const { handle, stats } = createMessageHandler({
    store, feed, mode, onLocation: (id) => selection.moved(id), onEvent: (ev) => fences.noticeEvent(ev),
  });
  const live = new Live({
    api, token, mode, map, store, feed, loginUrl: config.login_url, selected: () => selection.id, onMessage: handle,
  });
  const details = new Details(() => select(null));
  const selection = new Selection({ store, map, layer, list, details, onChange: (had, id) => live.selectionChanged(had, id) });
  bindTrackControls({ tracks, details, selected: () => selection.id });
  refreshPanel({ store, list, details, groups, selectedDevice: () => selection.device() });

  await loadRecentEvents(api, feed, false).catch((e) => console.warn('event history', e));
  store.changed();
  live.open();
  fences.start();
  loadBasemapAfterFirstPaint(basemap);
  return {
    mode, store, glider, at, map, basemap, layer, list, feed, tracks, fences, groups, conn: live.conn, select, handle, stats,
    marker: (id) => layer.marker(id),
  };
}

/**
 * The token from the URL, the session, the operator's login URL or the login
 * prompt, checked with one API call (the known devices, returned with it). A
 * refused token goes to the login URL again (at most once a minute, else the
 * prompt asks); an unreachable gateway is retried after 2–5 s, like the
 * socket does. A gateway without authentication (`--auth none`) is not asked
 * for one.
 */
async function signIn(api, config) {
  let token = tokenFromPage() ?? (config.auth === 'none' ? '' : null);
  for (;;) {
    if (token == null) token = await loginOrAsk(config.login_url);
    api.token = token;
    try {
      const known = await api.devices();
      loginDone();
      return { token, known };
    } catch (e) {
      if (e instanceof AuthError) {
        forgetToken();
        token = await loginOrAsk(config.login_url, 'That token was refused. Paste a valid one.');
      } else {
        showConnState('offline', 'offline', e.message);
        await new Promise((r) => setTimeout(r, 2000 + Math.random() * 3000));
      }
    }
  }
}

/** The top bar's *smooth* switch: gliding on or off for this tab. */
function bindGlideSwitch(glider) {
  const box = document.getElementById('glide');
  box.checked = glider.enabled;
  box.addEventListener('change', () => {
    glider.enabled = box.checked;
    if (!box.checked) glider.stopAll();
  });
}
