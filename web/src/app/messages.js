// The live frames of the WebSocket (PROTOCOL.md §4) applied to the page:
// `snapshot`, `location`, `status` and `event` change the store (and an event
// goes to the feed); an `error` is logged unless it is `cursor_expired`,
// which the connection answers by reloading recent events over HTTP. No DOM
// and no map: the unit tests (web/test) call the handler with a real Store.

/**
 * The handler every parsed frame goes through, and its message count (the
 * benchmark's messages per second).
 *
 * @param {object} ctx
 * @param {import('../store.js').Store} ctx.store  the devices the page knows
 * @param {{add(ev: object, live: boolean): unknown}} ctx.feed  the event feed
 * @param {'fleet'|'bbox'} ctx.mode  in fleet mode a snapshot is the whole visible world
 * @param {(id: string) => void} [ctx.onLocation]  after a device moved (the selection follows it)
 * @param {(ev: object) => void} [ctx.onEvent]  after an event went to the feed (the fences reload for one naming an unknown fence)
 * @returns {{handle(msg: object): void, stats: {messages: number}}}
 */
export function createMessageHandler({ store, feed, mode, onLocation = () => {}, onEvent = () => {} }) {
  const stats = { messages: 0 };
  const snapshot = new SnapshotParts();
  const handle = (msg) => {
    stats.messages += 1;
    switch (msg.type) {
      case 'snapshot':
        snapshot.apply(store, msg, mode === 'fleet');
        break;
      case 'location': {
        const had = store.get(msg.device);
        store.location(msg);
        store.changed(!had);
        onLocation(msg.device);
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
        store.seen(store.ensure(msg.device), msg.ts);
        feed.add(msg, true);
        store.changed(!had);
        onEvent(msg);
        break;
      }
      case 'error':
        if (msg.code !== 'cursor_expired') console.warn('gateway error', msg);
        break;
      default:
        break;
    }
  };
  return { handle, stats };
}

/**
 * A snapshot is fresh truth after every (re)connect; with `whole` (fleet
 * mode) it is the whole visible world, so devices not in it are dropped.
 * A large one comes in parts (`"more":true` on all but the last, PROTOCOL.md
 * §4): only the last part drops, and what it keeps is every part's devices.
 */
class SnapshotParts {
  constructor() {
    this.ref = undefined;
    this.seen = new Set();
  }

  apply(store, msg, whole) {
    const devices = msg.devices || [];
    // A part of another snapshot (a reconnect mid-way) starts afresh.
    if (msg.ref !== this.ref) this.seen.clear();
    this.ref = msg.ref;
    for (const s of devices) {
      this.seen.add(s.device);
      store.putState(s);
    }
    if (!msg.more) {
      if (whole) {
        for (const id of [...store.devices.keys()]) if (!this.seen.has(id)) store.remove(id);
      }
      this.seen.clear();
      this.ref = undefined;
    }
    store.changed();
  }
}
