// An event in words for the feed and the alert banner (no DOM; unit-tested):
// fence transitions and alerts (issue #15: `geofence_enter`/`geofence_exit`
// with `data {geofence, name}`, `alert.<rule kind>` with `data {rule, ...}`)
// say what happened; any other kind is shown as it came.

/** At most this many of an alert's other data fields are shown. */
const ALERT_FIELDS = 3;

/**
 * `{label, detail}`: `label` replaces the kind (`entered`, `left`,
 * `⚠ overspeed`), `detail` says which fence or rule and what tripped it
 * (empty for other kinds).
 */
export function eventText(ev) {
  const kind = String(ev.kind ?? '');
  const data = ev.data && typeof ev.data === 'object' ? ev.data : {};
  if (kind === 'geofence_enter' || kind === 'geofence_exit') {
    // The bridge's transitions name the fence; devices that report their
    // own zone crossings (the simulator does) say `zone`.
    const fence = data.name != null ? String(data.name)
      : data.geofence != null ? `fence #${data.geofence}`
        : data.zone != null ? String(data.zone) : 'a fence';
    return { label: kind === 'geofence_enter' ? 'entered' : 'left', detail: fence };
  }
  if (kind.startsWith('alert.')) {
    const parts = [];
    if (data.rule != null) parts.push(`rule #${data.rule}`);
    let shown = 0;
    for (const [k, v] of Object.entries(data)) {
      if (k === 'rule' || shown >= ALERT_FIELDS) continue;
      if (v == null || typeof v === 'object') continue;
      parts.push(`${k.replace(/_/g, ' ')} ${typeof v === 'number' ? fmt(v) : String(v)}`);
      shown += 1;
    }
    return { label: `⚠ ${kind.slice(6).replace(/_/g, ' ') || 'alert'}`, detail: parts.join(', ') };
  }
  return { label: kind, detail: '' };
}

/** A number as people read it: integers as they are, others to at most 2 decimals. */
function fmt(v) {
  return Number.isInteger(v) ? String(v) : String(Math.round(v * 100) / 100);
}
