//! Local tile archives, for sites with their own street map (issue #11):
//! `FIELDCAST_MAP_TILES` names an MBTiles or PMTiles v3 file instead of an
//! online XYZ URL template; `http::tiles` serves what this reads.
//!
//! - The archive is opened and checked at startup ([`TileSource::open`];
//!   `Config::validate` does it too, so a bad path or a file that is not a
//!   valid archive exits with status 2 and one line naming the path).
//! - [`mbtiles`] (SQLite): read-only connections in a small pool;
//!   `tile_row` is TMS (`2^z - 1 - y`); `format`, `minzoom`, `maxzoom`,
//!   `attribution` come from the `metadata` table (format sniffed from a
//!   tile and zooms from the `tiles` table when missing).
//! - [`pmtiles`] v3: header, root directory and leaf directories read with
//!   positional reads (no mmap: a file replaced under a running gateway is
//!   an error, not a `SIGBUS`); leaves cached, bounded by entry count.
//!   Internal compression none or gzip; tile compression none or gzip.
//! - Reads are blocking and run on the blocking pool, at most
//!   [`READERS`] at once.

use std::collections::HashMap;
use std::fs::File;
use std::hash::{DefaultHasher, Hasher};
use std::io::Read;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};

use anyhow::{bail, Context};
use bytes::Bytes;

mod mbtiles;
mod pmtiles;

use mbtiles::MbTiles;
use pmtiles::PmTiles;

/// The page's tile URL template when the gateway serves an archive.
/// Deepest zoom a request may name (a PMTiles tile id fits 64 bits to 31).
/// Where `http::tiles` serves the archive (the page's tile URL).
pub const URL_TEMPLATE: &str = "/tiles/{z}/{x}/{y}";
pub const MAX_ZOOM: u32 = 30;
/// Blocking tile reads at once (also the MBTiles connection pool's size).
pub const READERS: usize = 4;
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
}
