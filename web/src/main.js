// The live map page's entry point: boots the app (app/boot.js; web/README.md
// has the layout and the design) and exposes its parts as `window.fieldcast`,
// the one hook for the browser tests, the benchmark and debugging in the
// console. Nothing in the page reads it.
import { boot } from './app/boot.js';
import { showConnState } from './app/live.js';

boot().then((app) => {
  window.fieldcast = app;
}).catch((e) => {
  console.error(e);
  showConnState('offline', `error: ${e.message}`);
});
