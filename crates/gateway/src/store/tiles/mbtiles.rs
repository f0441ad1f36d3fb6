//! MBTiles: an SQLite file of tiles and metadata.

// The archive's shared parts (Info, TileKind, lock, the limits) and imports.
use super::*;

pub(super) struct MbTiles {
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

    pub(super) fn open(path: &Path) -> anyhow::Result<(MbTiles, Info)> {
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

    pub(super) fn get(&self, z: u32, x: u32, y: u32) -> anyhow::Result<Option<Vec<u8>>> {
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
