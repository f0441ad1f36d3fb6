//! PMTiles v3: one file of directories and tiles, read with positional reads.

// The archive's shared parts (Info, TileKind, lock, the limits) and imports.
use super::*;

/// A PMTiles v3 archive: the spec is
/// <https://github.com/protomaps/PMTiles/blob/main/spec/v3/spec.md>.
pub(super) struct PmTiles {
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
    pub(super) fn open(file: File, file_len: u64) -> anyhow::Result<(PmTiles, Info)> {
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

    pub(super) fn get(&self, z: u32, x: u32, y: u32) -> anyhow::Result<Option<Vec<u8>>> {
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
    pub(super) fn get(&mut self, offset: u64) -> Option<Arc<Vec<Entry>>> {
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

#[cfg(test)]
mod tests {
    use super::*;

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
