// The selected device: highlighted on the map and in the list, its details
// shown, and the map following it (recentred at once when selected, then
// panned at most once a second as it moves, until the user drags the map).

export class Selection {
  /**
   * @param {object} o
   * @param {import('./panel.js').Details} o.details
   * @param {(had: string|null, id: string|null) => void} o.onChange  after the id changed (live.js re-subscribes)
   */
  constructor({ store, map, layer, list, details, onChange }) {
    Object.assign(this, { store, map, layer, list, details, onChange });
    /** the selected device's id, or null */
    this.id = null;
    this.lastFollow = 0;
    map.on('dragstart', () => {
      details.follow = false;
    });
  }

  /** Its record, if a device is selected and known. */
  device() {
    return this.id && this.store.get(this.id);
  }

  select(id) {
    const had = this.id;
    this.id = id;
    this.layer.setSelected(id);
    this.list.setSelected(id);
    this.list.reveal(id);
    this.details.show(id);
    this.onChange(had, id);
    this.follow(true);
    this.details.render(this.device());
  }

  /** A device moved: the map follows it if it is the selected one. */
  moved(id) {
    if (id === this.id) this.follow();
  }

  /** Recentres (zooming in, `now`) or pans to the selected device, if following. */
  follow(now = false) {
    const d = this.device();
    if (!d || d.lat == null || !this.details.follow) return;
    if (!now && Date.now() - this.lastFollow < 1000) return;
    this.lastFollow = Date.now();
    if (now && this.map.getZoom() < 13) this.map.setView([d.lat, d.lon], 14, { animate: false });
    else this.map.panTo([d.lat, d.lon], { animate: false });
  }
}
