//! `/tiles/{z}/{x}/{y}` from a local archive (`FIELDCAST_MAP_TILES`), on a
//! real gateway: MBTiles built here with SQLite (TMS rows written by hand),
//! PMTiles v3 from fixtures written by protomaps' own Python writer
//! (`fixtures/make_pmtiles.py`), so the reader is checked against an
//! implementation it shares no code with.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::io::{Read, Write};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use fieldcast_gateway::store::tiles::TileSource;
use fieldcast_gateway::Config;
use http_body_util::BodyExt;
use hyper::HeaderMap;
use serde_json::Value;
use support::*;

/// 1x1 PNGs, the same bytes as in `fixtures/make_pmtiles.py`.
const RED: &str = "89504e470d0a1a0a0000000d4948445200000001000000010802000000907753de0000000c4944415478da63f8cfc0000003010100f70341430000000049454e44ae426082";
const GREEN: &str = "89504e470d0a1a0a0000000d4948445200000001000000010802000000907753de0000000c4944415478da6360f8cf00000202010045f452d40000000049454e44ae426082";
const BLUE: &str = "89504e470d0a1a0a0000000d4948445200000001000000010802000000907753de0000000c4944415478da636060f80f0001030100367411400000000049454e44ae426082";
/// A vector tile: one empty layer "roads".
const MVT: &str = "1a0c0a05726f6164732880207802";

fn hex(s: &str) -> Vec<u8> {
    let s: String = s.chars().filter(|c| !c.is_whitespace()).collect();
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
        .collect()
}

fn gzip(data: &[u8]) -> Vec<u8> {
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    e.write_all(data).unwrap();
    e.finish().unwrap()
}

fn gunzip(data: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    flate2::read::GzDecoder::new(data)
        .read_to_end(&mut out)
        .unwrap();
    out
}

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name)
}

struct Resp {
    status: u16,
    headers: HeaderMap,
    body: Vec<u8>,
}

impl Resp {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or(Value::Null)
    }
}

/// A GET without a token, with these request headers.
async fn get(addr: SocketAddr, path: &str, headers: &[(&str, &str)]) -> Resp {
    let stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let io = hyper_util::rt::TokioIo::new(stream);
    let (mut sender, conn) = hyper::client::conn::http1::handshake(io).await.unwrap();
    tokio::spawn(conn);
    let mut req = hyper::Request::builder()
        .uri(path)
        .header("host", addr.to_string());
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let req = req
        .body(http_body_util::Empty::<bytes::Bytes>::new())
        .unwrap();
    let resp = sender.send_request(req).await.unwrap();
    let status = resp.status().as_u16();
    let headers = resp.headers().clone();
    let body = resp
        .into_body()
        .collect()
        .await
        .unwrap()
        .to_bytes()
        .to_vec();
    Resp {
        status,
        headers,
        body,
    }
}

async fn page_config(addr: SocketAddr) -> Value {
    let r = get(addr, "/config.json", &[]).await;
    assert_eq!(r.status, 200);
    r.json()
}

fn assert_error(r: &Resp, status: u16, code: &str) {
    assert_eq!(r.status, status, "{}", String::from_utf8_lossy(&r.body));
    assert_eq!(
        r.json()["error"]["code"],
        code,
        "{}",
        String::from_utf8_lossy(&r.body)
    );
}

/// An MBTiles file: `tiles` rows are `(z, x, y in XYZ, data)`, written at
/// the TMS row `2^z - 1 - y`, as the spec stores them.
fn mbtiles(path: &Path, metadata: &[(&str, &str)], tiles: &[(u32, u32, u32, Vec<u8>)]) {
    let db = rusqlite::Connection::open(path).unwrap();
    db.execute_batch(
        "CREATE TABLE metadata (name TEXT, value TEXT);
         CREATE TABLE tiles (zoom_level INTEGER, tile_column INTEGER, tile_row INTEGER, tile_data BLOB);
         CREATE UNIQUE INDEX tile_index ON tiles (zoom_level, tile_column, tile_row);",
    )
    .unwrap();
    for (k, v) in metadata {
        db.execute("INSERT INTO metadata VALUES (?1, ?2)", [k, v])
            .unwrap();
    }
    for (z, x, y, data) in tiles {
        let tms_row = (1u32 << z) - 1 - y;
        db.execute(
            "INSERT INTO tiles VALUES (?1, ?2, ?3, ?4)",
            rusqlite::params![z, x, tms_row, data],
        )
        .unwrap();
    }
}

async fn gateway_with_tiles(env: &Env, tiles: &Path, attribution: Option<&str>) -> Gateway {
    let mut c = env.config();
    c.map_tiles = Some(tiles.to_str().unwrap().to_owned());
    c.map_attribution = attribution.map(str::to_owned);
    Gateway::start(c).await
}

/// Pins: MBTiles raster tiles come out with their image type, the TMS row
/// flipped to XYZ, cacheable, revalidated by ETag, without a token even on
/// a JWT gateway and from a foreign Origin; 404/400 in the API's shape;
/// /config.json points the page at them with the archive's attribution.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mbtiles_raster() {
    let env = Env::new().await;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("site.mbtiles");
    let jpeg = vec![0xff, 0xd8, 0xff, 0xe0, 0, 0x10, b'J', b'F', b'I', b'F', 0];
    mbtiles(
        &path,
        &[
            ("name", "site"),
            ("format", "png"),
            ("minzoom", "0"),
            ("maxzoom", "3"),
            ("attribution", "© Site Survey"),
        ],
        &[
            // y = 2 is TMS row 5, y = 5 is row 2: a reader without the
            // flip swaps them.
            (3, 4, 2, hex(RED)),
            (3, 4, 5, hex(GREEN)),
            (0, 0, 0, hex(BLUE)),
            // The metadata says png; the bytes say JPEG, and win.
            (1, 1, 0, jpeg.clone()),
        ],
    );
    let gw = gateway_with_tiles(&env, &path, None).await;
    let misses = gw
        .metric("fieldcast_gateway_tile_requests_total{result=\"miss\"}")
        .await;

    let r = get(gw.addr, "/tiles/3/4/2", &[]).await;
    assert_eq!(r.status, 200);
    assert_eq!(r.header("content-type"), Some("image/png"));
    assert_eq!(r.body, hex(RED));
    assert!(r.header("cache-control").unwrap().contains("max-age="));
    assert_eq!(r.header("content-encoding"), None);
    let etag = r.header("etag").unwrap().to_owned();

    let r = get(gw.addr, "/tiles/3/4/5.png", &[]).await;
    assert_eq!((r.status, r.body), (200, hex(GREEN)));
    let r = get(gw.addr, "/tiles/0/0/0.png", &[]).await;
    assert_eq!((r.status, r.body), (200, hex(BLUE)));
    let r = get(gw.addr, "/tiles/1/1/0.jpg", &[]).await;
    assert_eq!(r.status, 200);
    assert_eq!(r.header("content-type"), Some("image/jpeg"));
    assert_eq!(r.body, jpeg);

    let r = get(gw.addr, "/tiles/3/4/2", &[("if-none-match", &etag)]).await;
    assert_eq!(r.status, 304);
    assert!(r.body.is_empty());

    // Public: no token on a JWT gateway, and another site's Origin.
    let r = get(
        gw.addr,
        "/tiles/3/4/2",
        &[("origin", "https://elsewhere.example")],
    )
    .await;
    assert_eq!(r.status, 200);

    let r = get(gw.addr, "/tiles/3/4/3", &[]).await;
    assert_error(&r, 404, "not_found");
    let r = get(gw.addr, "/tiles/3/0/0.png", &[]).await;
    assert_error(&r, 404, "not_found");
    for bad in [
        "/tiles/3/8/0",
        "/tiles/3/0/8",
        "/tiles/31/0/0",
        "/tiles/x/0/0",
        "/tiles/1/-1/0",
        "/tiles/1/0/0.p%2Fg",
    ] {
        assert_error(&get(gw.addr, bad, &[]).await, 400, "bad_request");
    }
    assert!(
        gw.metric("fieldcast_gateway_tile_requests_total{result=\"miss\"}")
            .await
            >= misses + 2.0
    );

    let page = page_config(gw.addr).await;
    assert_eq!(page["tiles"], "/tiles/{z}/{x}/{y}");
    assert_eq!(page["tiles_format"], "raster");
    assert_eq!(page["tiles_max_zoom"], 3);
    assert_eq!(page["attribution"], "© Site Survey");
    gw.stop().await;
}

/// Pins: gzip'd MBTiles vector tiles go out gzip'd to a client that
/// accepts gzip and decompressed to one that does not; zooms without
/// metadata come from the tiles; the operator's attribution wins.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mbtiles_vector_gzip() {
    let env = Env::new().await;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("streets.mbtiles");
    let mvt = hex(MVT);
    mbtiles(
        &path,
        &[("name", "streets"), ("format", "pbf")],
        &[(2, 1, 3, gzip(&mvt)), (5, 10, 20, gzip(&mvt))],
    );
    let gw = gateway_with_tiles(&env, &path, Some("© Operator")).await;

    let r = get(
        gw.addr,
        "/tiles/2/1/3.pbf",
        &[("accept-encoding", "gzip, br")],
    )
    .await;
    assert_eq!(r.status, 200);
    assert_eq!(
        r.header("content-type"),
        Some("application/vnd.mapbox-vector-tile")
    );
    assert_eq!(r.header("content-encoding"), Some("gzip"));
    assert_eq!(r.header("vary"), Some("accept-encoding"));
    assert_eq!(gunzip(&r.body), mvt);
    let gz_etag = r.header("etag").unwrap().to_owned();

    for accept in [None, Some("identity"), Some("gzip;q=0, br")] {
        let h: Vec<(&str, &str)> = accept.map(|a| ("accept-encoding", a)).into_iter().collect();
        let r = get(gw.addr, "/tiles/2/1/3", &h).await;
        assert_eq!(r.status, 200, "{accept:?}");
        assert_eq!(r.header("content-encoding"), None, "{accept:?}");
        assert_eq!(r.body, mvt, "{accept:?}");
        assert_ne!(r.header("etag"), Some(gz_etag.as_str()));
    }
    let r = get(gw.addr, "/tiles/5/10/20", &[]).await;
    assert_eq!((r.status, r.body), (200, mvt.clone()));
    // TMS row of 5/10/20 is 11.
    assert_error(&get(gw.addr, "/tiles/5/10/11", &[]).await, 404, "not_found");

    let page = page_config(gw.addr).await;
    assert_eq!(page["tiles"], "/tiles/{z}/{x}/{y}");
    assert_eq!(page["tiles_format"], "vector");
    assert_eq!(page["tiles_max_zoom"], 5);
    assert_eq!(page["attribution"], "© Operator");
    gw.stop().await;
}

/// Pins: a PMTiles raster archive from the reference writer: z0, z1 by
/// the spec's Hilbert ids ((1,0,0) = 1 and (1,0,1) = 2 are one entry with
/// run length 2, (1,1,1) = 3, (1,1,0) = 4 absent), z2, the header's max
/// zoom and the metadata's attribution.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pmtiles_raster_fixture() {
    let env = Env::new().await;
    let gw = gateway_with_tiles(&env, &fixture("raster.pmtiles"), None).await;
    for (path, want) in [
        ("/tiles/0/0/0", RED),
        ("/tiles/1/0/0.png", GREEN),
        ("/tiles/1/0/1", GREEN),
        ("/tiles/1/1/1", BLUE),
        ("/tiles/2/2/1", RED),
    ] {
        let r = get(gw.addr, path, &[("accept-encoding", "gzip")]).await;
        assert_eq!(r.status, 200, "{path}");
        assert_eq!(r.header("content-type"), Some("image/png"), "{path}");
        assert_eq!(r.header("content-encoding"), None, "{path}");
        assert_eq!(r.body, hex(want), "{path}");
        assert!(r.header("cache-control").is_some());
    }
    for path in ["/tiles/1/1/0", "/tiles/2/1/2", "/tiles/3/0/0"] {
        assert_error(&get(gw.addr, path, &[]).await, 404, "not_found");
    }
    assert_error(&get(gw.addr, "/tiles/2/4/0", &[]).await, 400, "bad_request");
    let page = page_config(gw.addr).await;
    assert_eq!(page["tiles"], "/tiles/{z}/{x}/{y}");
    assert_eq!(page["tiles_format"], "raster");
    assert_eq!(page["tiles_max_zoom"], 2);
    assert_eq!(page["attribution"], "© Raster Fixture");
    gw.stop().await;
}

/// Pins: a PMTiles vector archive with gzip tile compression: present at
/// ids 0, 2 (1,0,1) and 4 (1,1,0), absent at 1 (1,0,0) and 3 (1,1,1).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pmtiles_vector_fixture() {
    let env = Env::new().await;
    let gw = gateway_with_tiles(&env, &fixture("vector.pmtiles"), None).await;
    let mvt = hex(MVT);
    for path in ["/tiles/0/0/0", "/tiles/1/0/1.pbf", "/tiles/1/1/0.mvt"] {
        let r = get(gw.addr, path, &[("accept-encoding", "gzip")]).await;
        assert_eq!(r.status, 200, "{path}");
        assert_eq!(
            r.header("content-type"),
            Some("application/vnd.mapbox-vector-tile")
        );
        assert_eq!(r.header("content-encoding"), Some("gzip"), "{path}");
        assert_eq!(gunzip(&r.body), mvt, "{path}");
        let r = get(gw.addr, path, &[]).await;
        assert_eq!(r.header("content-encoding"), None, "{path}");
        assert_eq!(r.body, mvt, "{path}");
    }
    for path in ["/tiles/1/0/0", "/tiles/1/1/1", "/tiles/2/0/0"] {
        assert_error(&get(gw.addr, path, &[]).await, 404, "not_found");
    }
    let page = page_config(gw.addr).await;
    assert_eq!(page["tiles_format"], "vector");
    assert_eq!(page["tiles_max_zoom"], 1);
    assert_eq!(page["attribution"], "© Vector Fixture");
    gw.stop().await;
}

/// `fixtures/make_pmtiles.py`'s rule for `leaves.pmtiles`.
fn leaves_fixture_tile(z: u32, x: u32, y: u32) -> Option<Vec<u8>> {
    if (3 * x + 5 * y + z).is_multiple_of(7) {
        return None;
    }
    let i = (31 * x + 17 * y + 7 * z) % 97;
    Some(vec![i as u8; 1 + (i % 37) as usize])
}

/// Pins: an archive whose directory the reference writer split into leaf
/// directories (and whose entries mostly point back at shared data):
/// every address of z0-z8, read through the library, matches the
/// writer's rule; a sample through HTTP does too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pmtiles_leaf_directories() {
    let path = fixture("leaves.pmtiles");
    let source = TileSource::open(&path).unwrap();
    assert_eq!((source.min_zoom(), source.max_zoom()), (1, 7));
    let mut present = 0;
    for z in 0..=8u32 {
        for x in 0..1u32 << z {
            for y in 0..1u32 << z {
                let want = if z <= 7 {
                    leaves_fixture_tile(z, x, y)
                } else {
                    None
                };
                let got = source
                    .get_blocking(z, x, y, false)
                    .unwrap()
                    .map(|t| t.data.to_vec());
                assert_eq!(got, want, "{z}/{x}/{y}");
                present += usize::from(want.is_some());
            }
        }
    }
    assert_eq!(present, 18_724);

    let env = Env::new().await;
    let gw = gateway_with_tiles(&env, &path, None).await;
    for (z, x, y) in [
        (1, 0, 0),
        (4, 9, 3),
        (6, 63, 0),
        (7, 127, 127),
        (7, 0, 0),
        (7, 100, 33),
        (7, 1, 1),
    ] {
        let r = get(gw.addr, &format!("/tiles/{z}/{x}/{y}"), &[]).await;
        match leaves_fixture_tile(z, x, y) {
            Some(want) => assert_eq!((r.status, r.body), (200, want), "{z}/{x}/{y}"),
            None => assert_error(&r, 404, "not_found"),
        }
    }
    let page = page_config(gw.addr).await;
    assert_eq!(page["tiles_max_zoom"], 7);
    gw.stop().await;
}

/// Pins: a path that does not open, or a file that is no valid archive,
/// fails at startup — `validate` (exit 2 in main) and `serve` — with an
/// error naming the path, never a panic.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_archive_fails_at_startup() {
    let dir = tempfile::tempdir().unwrap();
    let text = dir.path().join("notes.mbtiles");
    std::fs::write(&text, "not a map\n").unwrap();
    let short_pm = dir.path().join("short.pmtiles");
    let mut bytes = std::fs::read(fixture("raster.pmtiles")).unwrap();
    bytes.truncate(200);
    std::fs::write(&short_pm, bytes).unwrap();
    let sqlite = dir.path().join("other.mbtiles");
    rusqlite::Connection::open(&sqlite)
        .unwrap()
        .execute_batch("CREATE TABLE notes (t TEXT)")
        .unwrap();
    let missing = dir.path().join("missing.pmtiles");
    let no_ext = dir.path().join("no-such-dir/map");

    for path in [&text, &short_pm, &sqlite, &missing, &no_ext] {
        let mut c = Config::for_tests(
            "redis://127.0.0.1:1",
            "unused:",
            "postgres://postgres@127.0.0.1:1/unused",
        );
        c.map_tiles = Some(path.to_str().unwrap().to_owned());
        let e = c.validate().unwrap_err().to_string();
        assert!(
            e.starts_with("FIELDCAST_MAP_TILES: ") && e.contains(path.to_str().unwrap()),
            "{e}"
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let e = fieldcast_gateway::serve(c, listener, Default::default())
            .await
            .unwrap_err();
        assert!(format!("{e:#}").contains(path.to_str().unwrap()), "{e:#}");
    }
}

/// Pins: an online URL template still goes to the page unchanged, and
/// the gateway then serves no tiles.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn url_template_passes_through() {
    let env = Env::new().await;
    let mut c = env.config();
    let url = "https://tile.example.org/{z}/{x}/{y}.png?key=abc";
    c.map_tiles = Some(url.to_owned());
    c.map_attribution = Some("© Example".into());
    let gw = Gateway::start(c).await;
    let page = page_config(gw.addr).await;
    assert_eq!(page["tiles"], url);
    assert_eq!(page["attribution"], "© Example");
    assert_error(&get(gw.addr, "/tiles/0/0/0", &[]).await, 404, "not_found");
    gw.stop().await;
}
