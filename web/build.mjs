// Builds the map page into web/dist: one JS bundle, one CSS bundle (Leaflet's
// CSS included, its images inlined), index.html, and the offline world
// basemap (basemap.json, plus basemap.json.gz that the gateway serves to
// clients that accept gzip; see web/README.md). The output is committed
// so the gateway builds from a clean clone without npm; `npm run build`
// reproduces it byte for byte (no hashes, timestamps or absolute paths), and
// `npm run check` fails when dist/ is not what the sources build to.
import { build } from 'esbuild';
import { mkdir, readFile, writeFile } from 'node:fs/promises';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { gunzipSync, gzipSync } from 'node:zlib';

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

/**
 * The basemap: Natural Earth countries and land as TopoJSON (world-atlas;
 * arcs shared, so a border or a coast costs one copy of its points) at two
 * scales, 1:110m for the world view and 1:50m from zoom 4, country names and
 * ids dropped (the page draws no country labels), plus the cities of
 * web/data/cities.json as `[lon, lat, name]`, most important first.
 */
async function basemap() {
  const level = async (file, minZoom) => {
    const atlas = JSON.parse(await readFile(join(root, 'node_modules/world-atlas', file), 'utf8'));
    const countries = atlas.objects.countries.geometries.map((g) => ({ type: g.type, arcs: g.arcs }));
    return {
      min_zoom: minZoom,
      topology: {
        type: 'Topology',
        bbox: atlas.bbox,
        transform: atlas.transform,
        objects: { land: atlas.objects.land, countries: { type: 'GeometryCollection', geometries: countries } },
        arcs: atlas.arcs,
      },
    };
  };
  const { cities } = JSON.parse(await readFile(join(root, 'data/cities.json'), 'utf8'));
  const doc = {
    source: 'Natural Earth (public domain): admin-0 countries 1:110m and 1:50m via world-atlas 2.0.2, populated places 1:110m',
    levels: [await level('countries-110m.json', 0), await level('countries-50m.json', 4)],
    cities,
  };
  return Buffer.from(`${JSON.stringify(doc)}\n`);
}

const files = new Map([
  ['app.js', js.outputFiles[0].contents],
  ['app.css', css.outputFiles[0].contents],
  ['index.html', await readFile(join(root, 'src/index.html'))],
  ['basemap.json', await basemap()],
]);

// basemap.json.gz is checked (and kept) by what it decompresses to: gzip's
// bytes depend on the zlib that Node ships, its content does not.
const gzName = 'basemap.json.gz';
const gzPath = join(dist, gzName);
const oldGz = await readFile(gzPath).catch(() => null);
let gzFresh = false;
try {
  gzFresh = oldGz != null && Buffer.compare(gunzipSync(oldGz), Buffer.from(files.get('basemap.json'))) === 0;
} catch {
  gzFresh = false; // not gzip at all: rebuild it
}

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
if (check && !gzFresh) stale.push(gzName);
if (!check && !gzFresh) await writeFile(gzPath, gzipSync(files.get('basemap.json'), { level: 9 }));
if (check && stale.length) {
  console.error(`web/dist is stale (${stale.join(', ')}): run \`npm run build\` in web/ and commit dist/`);
  process.exit(1);
}
console.log(check ? 'web/dist is up to date' : `built ${[...files.keys(), gzName].map((n) => `dist/${n}`).join(', ')}`);
