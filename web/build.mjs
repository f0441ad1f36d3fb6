// Builds the map page into web/dist: one JS bundle, one CSS bundle (Leaflet's
// CSS included, its images inlined) and index.html. The output is committed
// so the gateway builds from a clean clone without npm; `npm run build`
// reproduces it byte for byte (no hashes, timestamps or absolute paths), and
// `npm run check` fails when dist/ is not what the sources build to.
import { build } from 'esbuild';
import { mkdir, readFile, writeFile } from 'node:fs/promises';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';

const root = dirname(fileURLToPath(import.meta.url));
const dist = join(root, 'dist');
const check = process.argv.includes('--check');

const common = {
  bundle: true,
  minify: true,
  write: false,
  legalComments: 'eof',
  logLevel: 'warning',
  absWorkingDir: root,
  target: ['chrome110', 'firefox110', 'safari16'],
};

const [js, css] = await Promise.all([
  build({ ...common, entryPoints: ['src/main.js'], format: 'iife', outfile: 'dist/app.js' }),
  build({
    ...common,
    entryPoints: ['src/style.css'],
    outfile: 'dist/app.css',
    loader: { '.png': 'dataurl', '.svg': 'dataurl' },
  }),
]);

const files = new Map([
  ['app.js', js.outputFiles[0].contents],
  ['app.css', css.outputFiles[0].contents],
  ['index.html', await readFile(join(root, 'src/index.html'))],
]);

let stale = [];
if (!check) await mkdir(dist, { recursive: true });
for (const [name, bytes] of files) {
  const path = join(dist, name);
  if (check) {
    const old = await readFile(path).catch(() => null);
    if (!old || Buffer.compare(Buffer.from(old), Buffer.from(bytes)) !== 0) stale.push(name);
  } else {
    await writeFile(path, bytes);
  }
}
if (check && stale.length) {
  console.error(`web/dist is stale (${stale.join(', ')}): run \`npm run build\` in web/ and commit dist/`);
  process.exit(1);
}
console.log(check ? 'web/dist is up to date' : `built ${[...files.keys()].map((n) => `dist/${n}`).join(', ')}`);
