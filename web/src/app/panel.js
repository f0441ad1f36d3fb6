// The side panel's own parts: the details of the selected device (with its
// "follow" switch and the track controls) and the counts in the top bar,
// redrawn at most every 250 ms after a change and once a second as time
// passes. The device list, the event feed and the tracks are panel/*.js.
import { ago, dateTime, num, el } from '../panel/format.js';

/** The details section (`#details`): title, fields, follow, close. */
export class Details {
  /** `onClose()`: the × button (the selection clears). */
  constructor(onClose) {
    this.section = document.getElementById('details');
    this.title = document.getElementById('details-title');
    this.fields = document.getElementById('details-fields');
    this.followBox = document.getElementById('follow');
    document.getElementById('details-close').addEventListener('click', () => onClose());
  }

  /** Whether the map follows the selected device; a drag or a track load turns it off. */
  get follow() {
    return this.followBox.checked;
  }

  set follow(on) {
    this.followBox.checked = on;
  }

  /** Shows the section for `id` (hidden for null), following it. */
  show(id) {
    this.section.hidden = !id;
    this.title.textContent = id || '';
    this.follow = true;
  }

  /** The fields of device record `d` (nothing to do without one). */
  render(d) {
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
    this.fields.replaceChildren(...rows.flatMap(([k, v]) => {
      const dd = el('dd', null, v);
      dd.dataset.field = k;
      return [el('dt', null, k), dd];
    }));
    this.fields.dataset.state = d.state;
  }
}

/** The track period and "show track": loads the selected device's track into `tracks`. */
export function bindTrackControls({ tracks, details, selected }) {
  const period = document.getElementById('track-period');
  period.addEventListener('change', () => {
    document.getElementById('track-custom').hidden = period.value !== 'custom';
  });
  document.getElementById('track-load').addEventListener('click', async () => {
    const id = selected();
    if (!id) return;
    const range = trackRange(period.value);
    if (!range) return;
    details.follow = false;
    const msg = document.getElementById('track-msg');
    msg.textContent = 'loading…';
    try {
      const n = await tracks.load(id, range.from, range.to);
      msg.textContent = n ? '' : 'no points in this period';
    } catch (e) {
      msg.textContent = `track: ${e.message}`;
    }
  });
}

/** `{from, to}` of the chosen period (ms), or null for a custom one not filled in. */
function trackRange(period) {
  if (period !== 'custom') return { from: Date.now() - Number(period), to: Date.now() + 60000 };
  const from = Date.parse(document.getElementById('track-from').value);
  const to = Date.parse(document.getElementById('track-to').value);
  return Number.isFinite(from) && Number.isFinite(to) ? { from, to } : null;
}

/**
 * Redraws the list, the details and the counts after store changes (at most
 * every 250 ms) and every second (for "last seen", and devices going stale
 * without any message).
 */
export function refreshPanel({ store, list, details, groups, selectedDevice }) {
  const counts = document.getElementById('counts');
  const refresh = () => {
    groups.refresh();
    list.render(true);
    details.render(selectedDevice());
    const c = store.counts();
    counts.textContent = `${store.devices.size} devices · ${c.online} online · ${c.stale} stale · ${c.offline} offline`;
  };
  let due = 0;
  store.listeners.add(() => {
    due ||= setTimeout(() => {
      due = 0;
      refresh();
    }, 250);
  });
  setInterval(() => {
    if (store.tick()) store.changed(false);
    refresh();
  }, 1000);
}
