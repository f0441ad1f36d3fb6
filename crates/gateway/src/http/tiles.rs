//! Map tiles from a local archive, for sites with their own street map
//! (issue #11): `FIELDCAST_MAP_TILES` names an MBTiles or PMTiles v3 file
//! instead of an online XYZ URL template, and the gateway serves it at
//! `GET /tiles/{z}/{x}/{y}` (an extension such as `.png` or `.pbf` may
//! follow `y` and is ignored).
//!
//! - The archive is opened and checked at startup ([`TileSource::open`];
//!   `Config::validate` does it too, so a bad path or a file that is not a
//!   valid archive exits with status 2 and one line naming the path).
//! - **MBTiles** (SQLite): read-only connections in a small pool; `tile_row`
//!   is TMS (`2^z - 1 - y`); `format`, `minzoom`, `maxzoom`, `attribution`
//!   come from the `metadata` table (format sniffed from a tile and zooms
//!   from the `tiles` table when missing).
//! - **PMTiles v3**: header, root directory and leaf directories read with
//!   positional reads (no mmap: a file replaced under a running gateway is
//!   an error, not a `SIGBUS`); leaves cached, bounded by entry count.
//!   Internal compression none or gzip; tile compression none or gzip.
//! - Reads are blocking and run on the blocking pool, at most
//!   [`READERS`] at once.
//! - Responses: `Content-Type` from the tile's magic bytes, else the
//!   archive's format (vector: `application/vnd.mapbox-vector-tile`);
//!   gzip'd vector tiles go out as they are with `Content-Encoding: gzip`
//!   when the client accepts it, decompressed otherwise (`Vary:
//!   Accept-Encoding`); `Cache-Control: public, max-age=86400` and an
//!   `ETag` (a hash of the stored bytes), `304` on `If-None-Match`; `404`
//!   (cacheable too: the archive does not change under a running gateway)
//!   for a tile the archive lacks, `400` for z/x/y out of range, both in
//!   the API's error shape.
//! - Metrics: `fieldcast_gateway_tile_requests_total{result}` with result
//!   `hit`, `not_modified`, `miss`, `bad_request` or `error`.

use std::collections::HashMap;
use std::fs::File;
use std::hash::{DefaultHasher, Hasher};
use std::io::Read;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};

use anyhow::{bail, Context};
use axum::extract::rejection::PathRejection;
use axum::extract::{Path as UrlPath, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;

use crate::http::error::ApiError;
use crate::state::AppState;

/// The page's tile URL template when the gateway serves an archive.
pub const URL_TEMPLATE: &str = "/tiles/{z}/{x}/{y}";
/// Deepest zoom a request may name (a PMTiles tile id fits 64 bits to 31).
pub const MAX_ZOOM: u32 = 30;
/// Blocking tile reads at once (also the MBTiles connection pool's size).
pub const READERS: usize = 4;
const CACHE_CONTROL: &str = "public, max-age=86400";
const VECTOR_TYPE: &str = "application/vnd.mapbox-vector-tile";
/// Largest tile, directory or metadata block read or decompressed: a
/// corrupt length must not make the gateway allocate gigabytes.
const MAX_BLOCK: u64 = 64 << 20;
/// PMTiles leaf directory entries kept in memory (24 bytes each: ~6 MiB).
const LEAF_CACHE_ENTRIES: usize = 256 * 1024;

/// The local archive `FIELDCAST_MAP_TILES` names, if it names one: a
/// value without `://` and without `{z}`, or one ending in `.mbtiles` or
/// `.pmtiles` (a `file://` prefix is dropped). Anything else is an online
/// URL template, passed to the page as it is. Empty = none.
pub fn archive_path(value: &str) -> Option<PathBuf> {
    let v = value.trim();
    if v.is_empty() {
        return None;
    }
    let lower = v.to_ascii_lowercase();
    let archive_ext = lower.ends_with(".mbtiles") || lower.ends_with(".pmtiles");
    if archive_ext || (!v.contains("://") && !v.contains("{z}")) {
        Some(PathBuf::from(v.strip_prefix("file://").unwrap_or(v)))
    } else {
        None
    }
}

/// Whether the archive holds images or vector tiles.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TileKind {
    Raster,
    Vector,
}

impl TileKind {
    pub fn as_str(self) -> &'static str {
        match self {
            TileKind::Raster => "raster",
            TileKind::Vector => "vector",
        }
    }
}

/// One tile as it goes out.
#[derive(Debug, Clone)]
pub struct Tile {
    pub data: Bytes,
    /// `data` is gzip-compressed (only when the caller asked to keep it).
    pub gzip: bool,
    pub content_type: &'static str,
    /// Hash of the stored bytes, for the `ETag`.
    pub hash: u64,
}

/// An opened, checked tile archive.
pub struct TileSource {
    path: PathBuf,
    kind: TileKind,
    /// For tiles whose magic bytes say nothing.
    content_type: &'static str,
    min_zoom: u8,
    max_zoom: u8,
    attribution: Option<String>,
    reader: Reader,
    readers: Arc<tokio::sync::Semaphore>,
}

enum Reader {
    Mb(MbTiles),
    Pm(PmTiles),
}

impl std::fmt::Debug for TileSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TileSource")
            .field("path", &self.path)
            .field("format", &self.format_name())
            .field("kind", &self.kind)
            .field("min_zoom", &self.min_zoom)
            .field("max_zoom", &self.max_zoom)
            .finish_non_exhaustive()
    }
}

/// What [`open`] learns from an archive besides how to read it.
struct Info {
    kind: TileKind,
    content_type: &'static str,
    min_zoom: u8,
    max_zoom: u8,
    attribution: Option<String>,
}

impl TileSource {
    /// Opens `path` (MBTiles or PMTiles, told apart by their magic bytes)
    /// and checks it: every error names the path. Blocking.
    pub fn open(path: &Path) -> anyhow::Result<TileSource> {
        Self::open_inner(path)
            .with_context(|| format!("cannot serve map tiles from {}", path.display()))
    }

    fn open_inner(path: &Path) -> anyhow::Result<TileSource> {
        if path.to_string_lossy().contains("://") {
            bail!("only a local file can be served (an online tile URL must be an XYZ template with {{z}}, {{x}}, {{y}})");
        }
        let file = File::open(path).context("cannot open the file")?;
        let meta = file.metadata().context("cannot stat the file")?;
        if !meta.is_file() {
            bail!("not a regular file");
        }
        let mut magic = [0u8; 16];
        let n = file
            .read_at(&mut magic, 0)
            .context("cannot read the file")?;
        let magic = magic.get(..n).unwrap_or_default();
        let (reader, info) = if magic.starts_with(b"PMTiles") {
            let (pm, info) = PmTiles::open(file, meta.len())?;
            (Reader::Pm(pm), info)
        } else if magic.starts_with(b"SQLite format 3\0") {
            drop(file);
            let (mb, info) = MbTiles::open(path)?;
            (Reader::Mb(mb), info)
        } else {
            bail!("neither an MBTiles (SQLite) nor a PMTiles archive");
        };
        if info.min_zoom > info.max_zoom || u32::from(info.max_zoom) > MAX_ZOOM {
            bail!(
                "bad zoom range {}..{} (at most {MAX_ZOOM})",
                info.min_zoom,
                info.max_zoom
            );
        }
        Ok(TileSource {
            path: path.to_owned(),
            kind: info.kind,
            content_type: info.content_type,
            min_zoom: info.min_zoom,
            max_zoom: info.max_zoom,
            attribution: info.attribution,
            reader,
            readers: Arc::new(tokio::sync::Semaphore::new(READERS)),
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn kind(&self) -> TileKind {
        self.kind
    }

    pub fn min_zoom(&self) -> u8 {
        self.min_zoom
    }

    pub fn max_zoom(&self) -> u8 {
        self.max_zoom
    }

    pub fn attribution(&self) -> Option<&str> {
        self.attribution.as_deref()
    }

    pub fn format_name(&self) -> &'static str {
        match self.reader {
            Reader::Mb(_) => "mbtiles",
            Reader::Pm(_) => "pmtiles",
        }
    }

    /// Sets the map page's tile fields of `page` (`/config.json`) to this
    /// archive: `tiles`, `tiles_format`, `tiles_max_zoom`, and
    /// `attribution` from the archive unless the operator set one.
    pub fn apply_to_page_config(&self, page: &mut serde_json::Value, operator_attribution: bool) {
        let Some(obj) = page.as_object_mut() else {
            return;
        };
        obj.insert("tiles".into(), URL_TEMPLATE.into());
        obj.insert("tiles_format".into(), self.kind.as_str().into());
        obj.insert("tiles_max_zoom".into(), self.max_zoom.into());
        if let (false, Some(a)) = (operator_attribution, &self.attribution) {
            obj.insert("attribution".into(), a.clone().into());
        }
    }

    /// The tile at `z/x/y` (XYZ scheme, y down), read on the blocking pool
    /// with at most [`READERS`] reads at once; `None` if the archive has
    /// none (or the address is out of range). A gzip'd tile stays gzip'd
    /// only if `keep_gzip`.
    pub async fn get(
        self: &Arc<Self>,
        z: u32,
        x: u32,
        y: u32,
        keep_gzip: bool,
    ) -> anyhow::Result<Option<Tile>> {
        let permit = self
            .readers
            .clone()
            .acquire_owned()
            .await
            .context("tile readers closed")?;
        let me = self.clone();
        tokio::task::spawn_blocking(move || {
            let _permit = permit;
            me.get_blocking(z, x, y, keep_gzip)
        })
        .await
        .context("tile read task")?
    }

    /// [`get`](Self::get) on the calling thread, without the concurrency cap.
    pub fn get_blocking(
        &self,
        z: u32,
        x: u32,
        y: u32,
        keep_gzip: bool,
    ) -> anyhow::Result<Option<Tile>> {
        if check_range(z, x, y).is_err() {
            return Ok(None);
        }
        let stored = match &self.reader {
            Reader::Mb(mb) => mb.get(z, x, y),
            Reader::Pm(pm) => pm.get(z, x, y),
        }
        .with_context(|| format!("tile {z}/{x}/{y} of {}", self.path.display()))?;
        let Some(stored) = stored else {
            return Ok(None);
        };
        let mut h = DefaultHasher::new();
        h.write(&stored);
        let hash = h.finish();
        let is_gzip = stored.starts_with(&[0x1f, 0x8b]);
        let (data, gzip) = if is_gzip && !keep_gzip {
            let plain = gunzip(&stored).with_context(|| {
                format!("tile {z}/{x}/{y} of {}: bad gzip", self.path.display())
            })?;
            (plain, false)
        } else {
            (stored, is_gzip)
        };
        let content_type = match self.kind {
            TileKind::Vector => VECTOR_TYPE,
            TileKind::Raster => sniff_image(&data).unwrap_or(self.content_type),
        };
        Ok(Some(Tile {
            data: Bytes::from(data),
            gzip,
            content_type,
            hash,
        }))
    }
}

/// `z` at most [`MAX_ZOOM`], `x` and `y` below `2^z`.
pub fn check_range(z: u32, x: u32, y: u32) -> Result<(), String> {
    if z > MAX_ZOOM {
        return Err(format!("zoom {z} is out of range (0..={MAX_ZOOM})"));
    }
    let n = 1u64 << z;
    if u64::from(x) >= n || u64::from(y) >= n {
        return Err(format!(
            "tile {z}/{x}/{y} is out of range: x and y must be below 2^{z} = {n}"
        ));
    }
    Ok(())
}

/// The PMTiles v3 tile id of `z/x/y`: the tiles of all lower zooms, then
/// the position on zoom `z`'s Hilbert curve. `None` out of range.
pub fn tile_id(z: u32, x: u32, y: u32) -> Option<u64> {
    check_range(z, x, y).ok()?;
    let mut acc: u64 = ((1u64 << (2 * z)) - 1) / 3;
    let (mut x, mut y) = (u64::from(x), u64::from(y));
    for a in (0..z).rev() {
        let s = 1u64 << a;
        let rx = s & x;
        let ry = s & y;
        acc += ((3 * rx) ^ ry) << a;
        if ry == 0 {
            if rx != 0 {
                x = s - 1 - (x & (s - 1));
                y = s - 1 - (y & (s - 1));
            }
            std::mem::swap(&mut x, &mut y);
        }
    }
    Some(acc)
}

fn sniff_image(d: &[u8]) -> Option<&'static str> {
    if d.starts_with(b"\x89PNG\r\n\x1a\n") {
        Some("image/png")
    } else if d.starts_with(&[0xff, 0xd8, 0xff]) {
        Some("image/jpeg")
    } else if d.get(..4) == Some(b"RIFF") && d.get(8..12) == Some(b"WEBP") {
        Some("image/webp")
    } else if d.get(4..8) == Some(b"ftyp") && matches!(d.get(8..12), Some(b"avif" | b"avis")) {
        Some("image/avif")
    } else {
        None
    }
}

fn gunzip(data: &[u8]) -> anyhow::Result<Vec<u8>> {
    let mut out = Vec::new();
    flate2::read::MultiGzDecoder::new(data)
        .take(MAX_BLOCK + 1)
        .read_to_end(&mut out)
        .context("gzip")?;
    if out.len() as u64 > MAX_BLOCK {
        bail!("more than {MAX_BLOCK} bytes once decompressed");
    }
    Ok(out)
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic while holding these locks leaves nothing half-done.
    m.lock().unwrap_or_else(|e| e.into_inner())
}

// ---------------------------------------------------------------- MBTiles

struct MbTiles {
    path: PathBuf,
    /// Idle connections. Each reader holds a [`READERS`] permit while it
    /// has one out, so one is always here; if not, a new one is opened.
    idle: Mutex<Vec<rusqlite::Connection>>,
}

const MB_TILE_SQL: &str =
    "SELECT tile_data FROM tiles WHERE zoom_level = ?1 AND tile_column = ?2 AND tile_row = ?3";

impl MbTiles {
    fn connect(path: &Path) -> anyhow::Result<rusqlite::Connection> {
        use rusqlite::OpenFlags;
        rusqlite::Connection::open_with_flags(
            path,
            OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )
        .context("cannot open as SQLite (read-only)")
    }

    fn open(path: &Path) -> anyhow::Result<(MbTiles, Info)> {
        let conn = Self::connect(path)?;
        if !mb_has_table(&conn, "tiles")? {
            bail!("not an MBTiles archive: no `tiles` table");
        }
        conn.prepare(MB_TILE_SQL).context(
            "not an MBTiles archive: `tiles` lacks zoom_level/tile_column/tile_row/tile_data",
        )?;
        let meta = if mb_has_table(&conn, "metadata")? {
            mb_metadata(&conn)?
        } else {
            tracing::warn!(path = %path.display(), "MBTiles archive without a metadata table: format and zooms taken from its tiles");
            HashMap::new()
        };
        let (kind, content_type) = mb_format(&conn, &meta)?;
        let (min_zoom, max_zoom) = mb_zooms(&conn, &meta)?;
        let attribution = meta
            .get("attribution")
            .map(|a| a.trim().to_owned())
            .filter(|a| !a.is_empty());
        let info = Info {
            kind,
            content_type,
            min_zoom,
            max_zoom,
            attribution,
        };
        let mb = MbTiles {
            path: path.to_owned(),
            idle: Mutex::new(vec![conn]),
        };
        Ok((mb, info))
    }

    fn get(&self, z: u32, x: u32, y: u32) -> anyhow::Result<Option<Vec<u8>>> {
        use rusqlite::OptionalExtension;
        let conn = match lock(&self.idle).pop() {
            Some(c) => c,
            None => Self::connect(&self.path)?,
        };
        // TMS: row 0 is the southernmost.
        let row = (1i64 << z) - 1 - i64::from(y);
        let got = conn
            .prepare_cached(MB_TILE_SQL)
            .and_then(|mut stmt| {
                stmt.query_row(rusqlite::params![z, x, row], |r| {
                    r.get::<_, Option<Vec<u8>>>(0)
                })
                .optional()
            })
            .context("MBTiles query");
        let mut idle = lock(&self.idle);
        if idle.len() < READERS {
            idle.push(conn);
        }
        Ok(got?.flatten())
    }
}

/// Whether the archive has a table (or view) `name`.
fn mb_has_table(conn: &rusqlite::Connection, name: &str) -> anyhow::Result<bool> {
    use rusqlite::OptionalExtension;
    conn.query_row(
        "SELECT 1 FROM sqlite_master WHERE name = ?1 AND type IN ('table', 'view')",
        [name],
        |_| Ok(()),
    )
    .optional()
    .map(|r| r.is_some())
    .context("not a readable SQLite database")
}

/// The `metadata` table's name/value pairs (rows with a NULL skipped).
fn mb_metadata(conn: &rusqlite::Connection) -> anyhow::Result<HashMap<String, String>> {
    let mut meta = HashMap::new();
    let mut stmt = conn
        .prepare("SELECT name, value FROM metadata")
        .context("bad `metadata` table")?;
    let rows = stmt
        .query_map([], |r| {
            Ok((
                r.get::<_, Option<String>>(0)?,
                r.get::<_, Option<String>>(1)?,
            ))
        })
        .context("bad `metadata` table")?;
    for row in rows {
        if let (Some(k), Some(v)) = row.context("bad `metadata` row")? {
            meta.insert(k, v);
        }
    }
    Ok(meta)
}

/// The tiles' kind and content type: the metadata's `format`, else
/// sniffed from the first tile.
fn mb_format(
    conn: &rusqlite::Connection,
    meta: &HashMap<String, String>,
) -> anyhow::Result<(TileKind, &'static str)> {
    use rusqlite::OptionalExtension;
    let format = meta.get("format").map(|f| f.trim().to_ascii_lowercase());
    Ok(match format.as_deref() {
        Some("pbf" | "mvt") => (TileKind::Vector, VECTOR_TYPE),
        Some("png") => (TileKind::Raster, "image/png"),
        Some("jpg" | "jpeg") => (TileKind::Raster, "image/jpeg"),
        Some("webp") => (TileKind::Raster, "image/webp"),
        Some("avif") => (TileKind::Raster, "image/avif"),
        Some(other) => {
            bail!("unsupported tile format {other:?} in metadata (png, jpg, webp, avif or pbf)")
        }
        None => {
            let first: Option<Option<Vec<u8>>> = conn
                .query_row("SELECT tile_data FROM tiles LIMIT 1", [], |r| r.get(0))
                .optional()
                .context("cannot read a tile")?;
            match first.flatten() {
                None => bail!("no tiles, and no format in metadata"),
                Some(d) => match sniff_image(&d) {
                    Some(t) => (TileKind::Raster, t),
                    None => (TileKind::Vector, VECTOR_TYPE),
                },
            }
        }
    })
}

/// `(min, max)` zoom: the metadata's `minzoom`/`maxzoom`, each one
/// missing read from the `tiles` table.
fn mb_zooms(
    conn: &rusqlite::Connection,
    meta: &HashMap<String, String>,
) -> anyhow::Result<(u8, u8)> {
    let zoom = |key: &str| -> anyhow::Result<Option<u8>> {
        meta.get(key)
            .map(|v| {
                v.trim()
                    .parse::<u8>()
                    .with_context(|| format!("metadata {key} = {v:?} is not a zoom level"))
            })
            .transpose()
    };
    let (mut min_zoom, mut max_zoom) = (zoom("minzoom")?, zoom("maxzoom")?);
    if min_zoom.is_none() || max_zoom.is_none() {
        let (lo, hi): (Option<i64>, Option<i64>) = conn
            .query_row(
                "SELECT MIN(zoom_level), MAX(zoom_level) FROM tiles",
                [],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .context("cannot read the zoom levels of `tiles`")?;
        let z = |v: Option<i64>| v.and_then(|v| u8::try_from(v).ok()).unwrap_or(0);
        min_zoom = min_zoom.or(Some(z(lo)));
        max_zoom = max_zoom.or(Some(z(hi)));
    }
    Ok((min_zoom.unwrap_or(0), max_zoom.unwrap_or(0)))
}

// ---------------------------------------------------------------- PMTiles

/// A PMTiles v3 archive: the spec is
/// <https://github.com/protomaps/PMTiles/blob/main/spec/v3/spec.md>.
struct PmTiles {
    file: File,
    file_len: u64,
    internal_gzip: bool,
    leaf_offset: u64,
    leaf_length: u64,
    data_offset: u64,
    data_length: u64,
    root: Vec<Entry>,
    leaves: Mutex<LeafCache>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Entry {
    tile_id: u64,
    offset: u64,
    length: u32,
    /// 0: a leaf directory covering ids from `tile_id` to the next entry.
    run_length: u32,
}

const PM_HEADER: usize = 127;

/// The fixed header of a PMTiles v3 archive, checked against the file.
struct PmHeader {
    /// `(offset, length)` of each section.
    root: (u64, u64),
    metadata: (u64, u64),
    leaves: (u64, u64),
    data: (u64, u64),
    internal_gzip: bool,
    kind: TileKind,
    content_type: &'static str,
    min_zoom: u8,
    max_zoom: u8,
}

impl PmHeader {
    fn parse(h: &[u8; PM_HEADER], file_len: u64) -> anyhow::Result<PmHeader> {
        if &h[..7] != b"PMTiles" {
            bail!("not a PMTiles archive");
        }
        if h[7] != 3 {
            bail!(
                "PMTiles version {} is not supported (only v3; `pmtiles convert` upgrades v2)",
                h[7]
            );
        }
        let u64_at = |at: usize| {
            let mut b = [0u8; 8];
            b.copy_from_slice(&h[at..at + 8]);
            u64::from_le_bytes(b)
        };
        let compression = |b: u8| match b {
            1 => Ok(false),
            2 => Ok(true),
            0 => Ok(false),
            3 => bail!("brotli compression is not supported (gzip or none)"),
            4 => bail!("zstd compression is not supported (gzip or none)"),
            b => bail!("unknown compression {b}"),
        };
        let internal_gzip = match h[97] {
            0 => bail!("internal compression unknown"),
            b => compression(b).context("internal compression")?,
        };
        let tile_gzip = compression(h[98]).context("tile compression")?;
        let (kind, content_type) = match h[99] {
            1 => (TileKind::Vector, VECTOR_TYPE),
            2 => (TileKind::Raster, "image/png"),
            3 => (TileKind::Raster, "image/jpeg"),
            4 => (TileKind::Raster, "image/webp"),
            5 => (TileKind::Raster, "image/avif"),
            6 => bail!("MapLibre Tiles (MLT) are not supported (mvt, png, jpeg, webp, avif)"),
            t => bail!("unknown tile type {t}"),
        };
        if kind == TileKind::Raster && tile_gzip {
            bail!("gzip-compressed raster tiles are not supported");
        }
        let head = PmHeader {
            root: (u64_at(8), u64_at(16)),
            metadata: (u64_at(24), u64_at(32)),
            leaves: (u64_at(40), u64_at(48)),
            data: (u64_at(56), u64_at(64)),
            internal_gzip,
            kind,
            content_type,
            min_zoom: h[100],
            max_zoom: h[101],
        };
        for (what, (off, len)) in [
            ("root directory", head.root),
            ("metadata", head.metadata),
            ("leaf directories", head.leaves),
            ("tile data", head.data),
        ] {
            if off.checked_add(len).is_none_or(|end| end > file_len) {
                bail!("truncated or corrupt: the {what} ({len} bytes at {off}) ends past the file ({file_len} bytes)");
            }
        }
        Ok(head)
    }
}

impl PmTiles {
    fn open(file: File, file_len: u64) -> anyhow::Result<(PmTiles, Info)> {
        let mut h = [0u8; PM_HEADER];
        file.read_exact_at(&mut h, 0)
            .context("not a PMTiles archive: shorter than its 127-byte header")?;
        let head = PmHeader::parse(&h, file_len)?;
        let mut pm = PmTiles {
            file,
            file_len,
            internal_gzip: head.internal_gzip,
            leaf_offset: head.leaves.0,
            leaf_length: head.leaves.1,
            data_offset: head.data.0,
            data_length: head.data.1,
            root: Vec::new(),
            leaves: Mutex::new(LeafCache::default()),
        };
        pm.root = pm
            .directory(head.root.0, head.root.1)
            .context("bad root directory")?;
        let attribution = match pm.metadata(head.metadata.0, head.metadata.1) {
            Ok(m) => m
                .get("attribution")
                .and_then(|a| a.as_str())
                .map(|a| a.trim().to_owned())
                .filter(|a| !a.is_empty()),
            Err(e) => {
                tracing::warn!(error = %format!("{e:#}"), "PMTiles metadata unreadable: no attribution from the archive");
                None
            }
        };
        let info = Info {
            kind: head.kind,
            content_type: head.content_type,
            min_zoom: head.min_zoom,
            max_zoom: head.max_zoom,
            attribution,
        };
        Ok((pm, info))
    }

    fn read(&self, offset: u64, length: u64) -> anyhow::Result<Vec<u8>> {
        if length > MAX_BLOCK {
            bail!("a block of {length} bytes at {offset}: corrupt archive?");
        }
        if offset.checked_add(length).is_none_or(|e| e > self.file_len) {
            bail!("{length} bytes at {offset} end past the file: corrupt archive?");
        }
        let len = usize::try_from(length).context("block length")?;
        let mut buf = vec![0u8; len];
        self.file
            .read_exact_at(&mut buf, offset)
            .with_context(|| format!("read {length} bytes at {offset}"))?;
        Ok(buf)
    }

    fn internal(&self, offset: u64, length: u64) -> anyhow::Result<Vec<u8>> {
        let raw = self.read(offset, length)?;
        if self.internal_gzip {
            gunzip(&raw)
        } else {
            Ok(raw)
        }
    }

    fn directory(&self, offset: u64, length: u64) -> anyhow::Result<Vec<Entry>> {
        parse_directory(&self.internal(offset, length)?)
    }

    fn metadata(&self, offset: u64, length: u64) -> anyhow::Result<serde_json::Value> {
        if length == 0 {
            return Ok(serde_json::Value::Null);
        }
        serde_json::from_slice(&self.internal(offset, length)?).context("metadata is not JSON")
    }

    fn leaf(&self, offset: u64, length: u64) -> anyhow::Result<Arc<Vec<Entry>>> {
        if let Some(d) = lock(&self.leaves).get(offset) {
            return Ok(d);
        }
        if offset
            .checked_add(length)
            .is_none_or(|e| e > self.leaf_length)
        {
            bail!("leaf directory ({length} bytes at {offset}) past the leaf section");
        }
        let dir = Arc::new(
            self.directory(self.leaf_offset + offset, length)
                .with_context(|| format!("bad leaf directory at {offset}"))?,
        );
        lock(&self.leaves).insert(offset, dir.clone());
        Ok(dir)
    }

    fn get(&self, z: u32, x: u32, y: u32) -> anyhow::Result<Option<Vec<u8>>> {
        let Some(id) = tile_id(z, x, y) else {
            return Ok(None);
        };
        // The root, then at most three levels of leaves.
        let mut leaf: Option<Arc<Vec<Entry>>> = None;
        for _ in 0..4 {
            let dir = leaf.as_deref().unwrap_or(&self.root);
            let Some(e) = find(dir, id) else {
                return Ok(None);
            };
            if e.run_length > 0 {
                if e.offset
                    .checked_add(u64::from(e.length))
                    .is_none_or(|end| end > self.data_length)
                {
                    bail!("tile entry past the tile data section: corrupt archive");
                }
                return self
                    .read(self.data_offset + e.offset, u64::from(e.length))
                    .map(Some);
            }
            leaf = Some(self.leaf(e.offset, u64::from(e.length))?);
        }
        bail!("leaf directories nested deeper than 3 levels")
    }
}

/// The entry that holds `id`: the last with `tile_id <= id`, if it is a
/// leaf pointer or its run covers `id`.
fn find(dir: &[Entry], id: u64) -> Option<Entry> {
    let i = dir.partition_point(|e| e.tile_id <= id);
    let e = *dir.get(i.checked_sub(1)?)?;
    (e.run_length == 0 || id - e.tile_id < u64::from(e.run_length)).then_some(e)
}

/// A serialized directory (already decompressed): the entry count, then
/// columns of tile id deltas, run lengths, lengths and offsets (0 =
/// right after the previous entry, else offset + 1), all varints.
fn parse_directory(buf: &[u8]) -> anyhow::Result<Vec<Entry>> {
    let mut r = Varints { buf, at: 0 };
    let n = r.next()?;
    // Each entry takes at least four bytes.
    if n > (buf.len() as u64) / 4 + 1 {
        bail!("{n} entries cannot fit in {} bytes", buf.len());
    }
    let n = usize::try_from(n).context("entry count")?;
    let mut entries = vec![
        Entry {
            tile_id: 0,
            offset: 0,
            length: 0,
            run_length: 0
        };
        n
    ];
    let mut last = 0u64;
    for e in entries.iter_mut() {
        last = last.checked_add(r.next()?).context("tile id overflow")?;
        e.tile_id = last;
    }
    for e in entries.iter_mut() {
        e.run_length = u32::try_from(r.next()?).context("run length")?;
    }
    for e in entries.iter_mut() {
        e.length = u32::try_from(r.next()?).context("length")?;
        if e.length == 0 {
            bail!("entry of length 0");
        }
    }
    for i in 0..n {
        let v = r.next()?;
        let offset = match (v, i.checked_sub(1).and_then(|p| entries.get(p))) {
            (0, Some(prev)) => prev
                .offset
                .checked_add(u64::from(prev.length))
                .context("offset overflow")?,
            (0, None) => bail!("first entry without an offset"),
            (v, _) => v - 1,
        };
        if let Some(e) = entries.get_mut(i) {
            e.offset = offset;
        }
    }
    Ok(entries)
}

struct Varints<'a> {
    buf: &'a [u8],
    at: usize,
}

impl Varints<'_> {
    fn next(&mut self) -> anyhow::Result<u64> {
        let mut v = 0u64;
        for shift in (0..64).step_by(7) {
            let Some(&b) = self.buf.get(self.at) else {
                bail!("directory ends inside a varint");
            };
            self.at += 1;
            v |= u64::from(b & 0x7f) << shift;
            if b & 0x80 == 0 {
                return Ok(v);
            }
        }
        bail!("varint longer than 64 bits")
    }
}

/// Leaf directories by offset, least recently used out first once they
/// hold more than [`LEAF_CACHE_ENTRIES`] entries.
#[derive(Default)]
struct LeafCache {
    dirs: HashMap<u64, (Arc<Vec<Entry>>, u64)>,
    entries: usize,
    tick: u64,
}

impl LeafCache {
    fn get(&mut self, offset: u64) -> Option<Arc<Vec<Entry>>> {
        self.tick += 1;
        let tick = self.tick;
        self.dirs.get_mut(&offset).map(|(d, used)| {
            *used = tick;
            d.clone()
        })
    }

    fn insert(&mut self, offset: u64, dir: Arc<Vec<Entry>>) {
        if self.dirs.contains_key(&offset) {
            return;
        }
        while self.entries + dir.len() > LEAF_CACHE_ENTRIES && !self.dirs.is_empty() {
            let oldest = self
                .dirs
                .iter()
                .min_by_key(|(_, (_, used))| *used)
                .map(|(k, _)| *k);
            if let Some((d, _)) = oldest.and_then(|k| self.dirs.remove(&k)) {
                self.entries -= d.len();
            }
        }
        self.tick += 1;
        self.entries += dir.len();
        self.dirs.insert(offset, (dir, self.tick));
    }
}

// ---------------------------------------------------------------- HTTP

use super::assets::accepts_gzip;

/// `z`, `x`, and `y` with an optional extension (`2.png`, `2.pbf`).
fn parse_address(z: &str, x: &str, y: &str) -> Result<(u32, u32, u32), ApiError> {
    let y = match y.split_once('.') {
        Some((y, ext))
            if !ext.is_empty()
                && ext.len() <= 8
                && ext.bytes().all(|b| b.is_ascii_alphanumeric()) =>
        {
            y
        }
        Some(_) => return Err(ApiError::BadRequest(format!("bad tile address y {y:?}"))),
        None => y,
    };
    let num = |what: &str, v: &str| {
        if v.is_empty() || !v.bytes().all(|b| b.is_ascii_digit()) {
            return Err(ApiError::BadRequest(format!(
                "tile {what} {v:?} is not a number"
            )));
        }
        v.parse::<u32>()
            .map_err(|_| ApiError::BadRequest(format!("tile {what} {v} is out of range")))
    };
    let (z, x, y) = (num("z", z)?, num("x", x)?, num("y", y)?);
    check_range(z, x, y).map_err(ApiError::BadRequest)?;
    Ok((z, x, y))
}

/// `GET /tiles/{z}/{x}/{y}`: a tile of the configured archive.
pub async fn tile(
    State(s): State<AppState>,
    path: Result<UrlPath<(String, String, String)>, PathRejection>,
    headers: HeaderMap,
) -> Response {
    let count = |result| s.metrics.tile_request(result);
    let Some(source) = s.tiles.clone() else {
        return ApiError::NotFound(
            "this gateway serves no tile archive (FIELDCAST_MAP_TILES is not a local .mbtiles/.pmtiles file)".into(),
        )
        .into_response();
    };
    let (z, x, y) = match path
        .map_err(|e| ApiError::BadRequest(format!("bad tile address: {e}")))
        .and_then(|UrlPath((z, x, y))| parse_address(&z, &x, &y))
    {
        Ok(a) => a,
        Err(e) => {
            count("bad_request");
            return e.into_response();
        }
    };
    let vector = source.kind() == TileKind::Vector;
    let tile = match source.get(z, x, y, accepts_gzip(&headers)).await {
        Ok(Some(t)) => t,
        Ok(None) => {
            count("miss");
            let missing = ApiError::NotFound(format!("no tile {z}/{x}/{y}"));
            return cacheable(missing.into_response(), vector);
        }
        Err(e) => {
            count("error");
            return ApiError::Unavailable {
                what: "tile archive",
                cause: format!("{e:#}"),
            }
            .into_response();
        }
    };
    let (result, response) = found(tile, &headers);
    count(result);
    cacheable(response, vector)
}

/// The cache headers of a tile answer (a miss too): a vector tile's bytes
/// depend on `Accept-Encoding`.
fn cacheable(mut r: Response, vector: bool) -> Response {
    let h = r.headers_mut();
    h.insert(
        header::CACHE_CONTROL,
        HeaderValue::from_static(CACHE_CONTROL),
    );
    if vector {
        h.insert(header::VARY, HeaderValue::from_static("accept-encoding"));
    }
    r
}

/// A tile the archive has: 304 when the client holds it (`If-None-Match`),
/// else its bytes with their `ETag`. Also the result it counts as.
fn found(tile: Tile, headers: &HeaderMap) -> (&'static str, Response) {
    let etag = format!(
        "\"{:016x}{}\"",
        tile.hash,
        if tile.gzip { "-gzip" } else { "" }
    );
    // ok: a quoted hex string is always a valid header value.
    let etag_value = HeaderValue::from_str(&etag).unwrap_or(HeaderValue::from_static("\"0\""));
    let fresh = headers
        .get(header::IF_NONE_MATCH)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.split(',').any(|t| t.trim() == etag || t.trim() == "*"));
    if fresh {
        let r = (StatusCode::NOT_MODIFIED, [(header::ETAG, etag_value)]).into_response();
        return ("not_modified", r);
    }
    let mut r = (
        [
            (
                header::CONTENT_TYPE,
                HeaderValue::from_static(tile.content_type),
            ),
            (header::ETAG, etag_value),
        ],
        tile.data,
    )
        .into_response();
    if tile.gzip {
        r.headers_mut()
            .insert(header::CONTENT_ENCODING, HeaderValue::from_static("gzip"));
    }
    ("hit", r)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tile_ids_follow_the_spec() {
        assert_eq!(tile_id(0, 0, 0), Some(0));
        assert_eq!(tile_id(1, 0, 0), Some(1));
        assert_eq!(tile_id(1, 0, 1), Some(2));
        assert_eq!(tile_id(1, 1, 1), Some(3));
        assert_eq!(tile_id(1, 1, 0), Some(4));
        // z2 starts after the 5 tiles of z0 and z1; its curve starts at
        // the top left corner and ends at the top right.
        assert_eq!(tile_id(2, 0, 0), Some(5));
        assert_eq!(tile_id(2, 3, 0), Some(20));
        // Values from protomaps' reference implementation (Python
        // `pmtiles.tile.zxy_to_tileid`).
        assert_eq!(tile_id(3, 0, 0), Some(21));
        assert_eq!(tile_id(3, 7, 0), Some(84));
        assert_eq!(tile_id(5, 13, 22), Some(802));
        assert_eq!(tile_id(12, 3423, 1763), Some(19_078_479));
        assert_eq!(
            tile_id(30, (1 << 30) - 1, 0),
            Some(1_537_228_672_809_129_300)
        );
        assert_eq!(tile_id(1, 2, 0), None);
        assert_eq!(tile_id(31, 0, 0), None);
        // Every id of a zoom level once.
        for z in 0..=5u32 {
            let n = 1u32 << z;
            let mut ids: Vec<u64> = (0..n)
                .flat_map(|x| (0..n).map(move |y| tile_id(z, x, y).unwrap()))
                .collect();
            ids.sort_unstable();
            let first = ((1u64 << (2 * z)) - 1) / 3;
            assert_eq!(
                ids,
                (first..first + u64::from(n) * u64::from(n)).collect::<Vec<_>>()
            );
        }
        // The deepest zoom does not overflow.
        let top = (1u32 << 30) - 1;
        assert!(tile_id(30, top, top).is_some());
    }

    #[test]
    fn local_paths_and_url_templates() {
        for url in [
            "https://tile.openstreetmap.org/{z}/{x}/{y}.png",
            "/osm/{z}/{x}/{y}.png",
            "tiles.example/{z}/{x}/{y}",
            "",
            "  ",
        ] {
            assert_eq!(archive_path(url), None, "{url}");
        }
        for (v, p) in [
            ("/srv/map.mbtiles", "/srv/map.mbtiles"),
            ("map.PMTiles", "map.PMTiles"),
            ("/srv/map", "/srv/map"),
            ("file:///srv/map.pmtiles", "/srv/map.pmtiles"),
            (
                "https://x.example/map.pmtiles",
                "https://x.example/map.pmtiles",
            ),
        ] {
            assert_eq!(archive_path(v), Some(PathBuf::from(p)), "{v}");
        }
    }

    #[test]
    fn directory_columns_and_lookup() {
        // 3 entries: ids 0, 1 (run 2), 5 (leaf); lengths 10, 20, 30;
        // offsets 0, right after (10), then 100.
        let raw = [3, 0, 1, 4, 1, 2, 0, 10, 20, 30, 1, 0, 101];
        let dir = parse_directory(&raw).unwrap();
        let e = |tile_id, offset, length, run_length| Entry {
            tile_id,
            offset,
            length,
            run_length,
        };
        assert_eq!(dir, vec![e(0, 0, 10, 1), e(1, 10, 20, 2), e(5, 100, 30, 0)]);
        assert_eq!(find(&dir, 0), Some(dir[0]));
        assert_eq!(find(&dir, 2), Some(dir[1]));
        assert_eq!(find(&dir, 3), None);
        assert_eq!(find(&dir, 4), None);
        assert_eq!(find(&dir, 99), Some(dir[2]));
        assert!(parse_directory(&[200]).is_err());
        assert!(parse_directory(&[1, 0, 1, 5]).is_err());
        assert!(parse_directory(&[1, 0, 1, 5, 0]).is_err());
    }

    #[test]
    fn addresses_and_accept_encoding() {
        assert_eq!(parse_address("3", "4", "2").unwrap(), (3, 4, 2));
        assert_eq!(parse_address("3", "4", "2.png").unwrap(), (3, 4, 2));
        assert_eq!(parse_address("0", "0", "0.pbf").unwrap(), (0, 0, 0));
        for (z, x, y) in [
            ("3", "8", "0"),
            ("31", "0", "0"),
            ("-1", "0", "0"),
            ("a", "0", "0"),
            ("3", "4", "2."),
            ("3", "4", "2.p-g"),
            ("3", "4", ""),
            ("99999999999", "0", "0"),
        ] {
            assert!(parse_address(z, x, y).is_err(), "{z}/{x}/{y}");
        }
        let h = |v: &str| {
            let mut m = HeaderMap::new();
            m.insert(header::ACCEPT_ENCODING, HeaderValue::from_str(v).unwrap());
            m
        };
        assert!(accepts_gzip(&h("gzip, deflate, br")));
        assert!(accepts_gzip(&h("br;q=1.0, gzip;q=0.8")));
        assert!(accepts_gzip(&h("*")));
        assert!(!accepts_gzip(&h("gzip;q=0, *")));
        assert!(!accepts_gzip(&h("identity")));
        assert!(!accepts_gzip(&HeaderMap::new()));
    }

    #[test]
    fn leaf_cache_is_bounded() {
        let mut c = LeafCache::default();
        let big = Arc::new(vec![
            Entry {
                tile_id: 0,
                offset: 0,
                length: 1,
                run_length: 1
            };
            LEAF_CACHE_ENTRIES / 2
        ]);
        c.insert(1, big.clone());
        c.insert(2, big.clone());
        assert!(c.get(1).is_some());
        c.insert(3, big);
        assert!(c.get(1).is_some() && c.get(3).is_some() && c.get(2).is_none());
        assert!(c.entries <= LEAF_CACHE_ENTRIES);
    }
}
