// Event feed: newest first, critical events pinned on top until acknowledged,
// a banner (and, if enabled, a beep) for each new critical event. Events are
// deduplicated by (device, id), so a replay after a reconnect never doubles one.
// Fence transitions and alerts (`geofence_*`, `alert.*`) read as words
// (event-text.js): "entered Depot", "⚠ overspeed rule #3, speed 31".
import { clock, el } from './format.js';
import { eventText } from './event-text.js';

const KEEP = 200;
/** Pinned critical events kept before the oldest unacknowledged ones drop off. */
const KEEP_PINNED = 100;

export class EventFeed {
  constructor(onSelect) {
    this.onSelect = onSelect;
    this.seen = new Set();
    this.list = document.getElementById('events');
    this.pinned = document.getElementById('pinned');
    this.alert = document.getElementById('alert');
    this.alertText = document.getElementById('alert-text');
    this.sound = document.getElementById('sound');
    this.unacked = [];
    document.getElementById('alert-ack').addEventListener('click', () => this.ackAll());
    for (const ul of [this.list, this.pinned]) {
      ul.addEventListener('click', (e) => {
        const ack = e.target.closest('button.ack');
        const li = e.target.closest('li[data-device]');
        if (ack && li) {
          li.remove();
          this.unacked = this.unacked.filter((x) => x !== li.dataset.key);
          this.updateAlert();
        } else if (li) this.onSelect(li.dataset.device);
      });
    }
  }

  /** Adds an event; `live` = arrived now (alerts), not loaded from history. */
  add(ev, live = true) {
    const key = `${ev.device}\u0000${ev.id}`;
    if (this.seen.has(key)) return false;
    this.seen.add(key);
    const sev = ev.severity || 'info';
    const li = el('li', `ev ${sev}`);
    li.dataset.device = ev.device;
    li.dataset.id = ev.id;
    li.dataset.key = key;
    li.dataset.severity = sev;
    li.dataset.kind = ev.kind;
    const { label, detail } = eventText(ev);
    if (ev.kind?.startsWith('alert.')) li.classList.add('alert-ev');
    else if (ev.kind?.startsWith('geofence_')) li.classList.add('fence-ev');
    li.append(el('time', null, clock(ev.ts)), el('span', 'dev', ev.device), el('span', 'kind', label));
    if (detail) li.append(el('span', 'detail', detail));
    li.append(el('span', 'sev', sev));
    li.title = `${ev.kind} ${JSON.stringify(ev.data || {})}`;
    this.insert(this.list, li.cloneNode(true), ev.ts);
    if (sev === 'critical') {
      li.appendChild(el('button', 'ack', '✓')).title = 'acknowledge';
      this.insert(this.pinned, li, ev.ts);
      if (live) {
        this.unacked.push(key);
        this.updateAlert(ev);
        if (this.sound.checked) beep();
      }
    }
    while (this.list.children.length > KEEP) this.list.lastElementChild.remove();
    while (this.pinned.children.length > KEEP_PINNED) this.pinned.lastElementChild.remove();
    return true;
  }

  /** Newest first; replayed events may arrive older than ones shown. */
  insert(ul, li, ts) {
    li.dataset.ts = ts;
    let before = ul.firstElementChild;
    while (before && Number(before.dataset.ts) > ts) before = before.nextElementSibling;
    ul.insertBefore(li, before);
  }

  updateAlert(ev) {
    if (!this.unacked.length) {
      this.alert.hidden = true;
      return;
    }
    if (ev) {
      const { label, detail } = eventText(ev);
      this.alertText.textContent = `CRITICAL ${label}${detail ? ` ${detail}` : ''} — ${ev.device} at ${clock(ev.ts)}${this.unacked.length > 1 ? ` (+${this.unacked.length - 1} more)` : ''}`;
    }
    this.alert.hidden = false;
  }

  ackAll() {
    this.unacked = [];
    this.updateAlert();
  }
}

let audio;
function beep() {
  try {
    audio ||= new AudioContext();
    const o = audio.createOscillator();
    const g = audio.createGain();
    o.frequency.value = 880;
    g.gain.value = 0.15;
    o.connect(g).connect(audio.destination);
    o.start();
    o.stop(audio.currentTime + 0.25);
  } catch { /* no audio: the banner is the alert */ }
}
