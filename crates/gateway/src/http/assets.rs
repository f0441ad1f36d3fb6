//! The map page: `web/` is bundled by `npm run build` into `web/dist`, which
//! is committed and embedded here at compile time, so the binary serves the
//! page with no files beside it and a clean clone builds without npm.
//!
//! In: `GET /`, `GET /assets/{file}`, `GET /config.json`. Out: the bundle
//! (`Cache-Control: no-cache` plus an `ETag`, so a browser revalidates and
//! picks up a new binary's page on reload), the offline world basemap
//! `/assets/basemap.json` (Natural Earth, ~850 KB of TopoJSON; sent as the
//! ~265 KB `basemap.json.gz` that `npm run build` precompressed, with
//! `Content-Encoding: gzip`, to a client that accepts gzip, so the gateway
//! compresses nothing at run time), and the page's settings, from the
//! configuration (flags `--map-tiles`, `--map-attribution`, `--map-stale`):
//!
//! | variable | default | meaning |
//! | --- | --- | --- |
//! | `FIELDCAST_MAP_TILES` | none | XYZ tile URL template (`https://tiles.example/{z}/{x}/{y}.png`, `.pbf`/`.mvt` = vector tiles); none = the embedded basemap with a graticule |
//! | `FIELDCAST_MAP_ATTRIBUTION` | none | attribution text shown with the tiles |
//! | `FIELDCAST_MAP_STALE` | `2m` | a device silent this long is drawn as stale |

use std::hash::{DefaultHasher, Hash, Hasher};
use std::sync::OnceLock;

use axum::extract::{Path, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;

use crate::http::error::ApiError;
use crate::state::AppState;

macro_rules! dist {
    ($file:literal) => {
        include_bytes!(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../../web/dist/",
            $file
        ))
    };
}

/// One embedded file of `web/dist`.
struct Asset {
    name: &'static str,
    body: &'static [u8],
    /// The same bytes gzip-compressed, for clients that accept gzip.
    gzip: Option<&'static [u8]>,
    content_type: &'static str,
}

/// `index.html` first: it is also `/`.
static ASSETS: [Asset; 4] = [
    Asset {
        name: "index.html",
        body: dist!("index.html"),
        gzip: None,
        content_type: "text/html; charset=utf-8",
    },
    Asset {
        name: "app.js",
        body: dist!("app.js"),
        gzip: None,
        content_type: "text/javascript; charset=utf-8",
    },
    Asset {
        name: "app.css",
        body: dist!("app.css"),
        gzip: None,
        content_type: "text/css; charset=utf-8",
    },
    Asset {
        name: "basemap.json",
        body: dist!("basemap.json"),
        gzip: Some(dist!("basemap.json.gz")),
        content_type: "application/json",
    },
];

pub async fn index(headers: HeaderMap) -> Response {
    serve(0, &headers)
}

pub async fn asset(Path(file): Path<String>, headers: HeaderMap) -> Response {
    match ASSETS.iter().position(|a| a.name == file) {
        Some(i) => serve(i, &headers),
        None => ApiError::NotFound(format!("no asset {file:?}")).into_response(),
    }
}

/// `{"tiles": string|null, "tiles_format": "raster"|"vector"|null,
/// "tiles_max_zoom": number|null, "attribution": string|null,
/// "stale_after_ms": number, "auth": "jwt"|"none", "login_url":
/// string|null}`, built once from the configuration (`auth` "none": the
/// page asks for no token; `login_url`: where the page sends a viewer
/// without a token, who comes back with `#token=`). A URL
/// template ending in `.pbf` or `.mvt` (before any query) is vector tiles,
/// any other raster; its max zoom is unknown here (null: the page asks for
/// every zoom). When the gateway serves a tile archive, `lib.rs` overwrites
/// the `tiles*` fields from the archive.
pub fn page_config(config: &crate::Config) -> serde_json::Value {
    let nonempty = |v: &Option<String>| v.clone().filter(|v| !v.trim().is_empty());
    let tiles = nonempty(&config.map_tiles);
    let format = tiles.as_deref().map(tile_format);
    serde_json::json!({
        "tiles": tiles,
        "tiles_format": format,
        "tiles_max_zoom": serde_json::Value::Null,
        "attribution": nonempty(&config.map_attribution),
        "stale_after_ms": u64::try_from(config.map_stale.as_millis()).unwrap_or(u64::MAX),
        "auth": match config.auth {
            crate::config::AuthMode::Jwt => "jwt",
            crate::config::AuthMode::None => "none",
        },
        "login_url": match config.auth {
            crate::config::AuthMode::Jwt => nonempty(&config.login_url).map(|u| u.trim().to_owned()),
            crate::config::AuthMode::None => None,
        },
    })
}

/// `"vector"` for a Mapbox Vector Tile URL template (`….pbf`, `….mvt`), else `"raster"`.
fn tile_format(url: &str) -> &'static str {
    let path = url.split(['?', '#']).next().unwrap_or(url);
    let ext = path.rsplit_once('.').map(|(_, e)| e).unwrap_or_default();
    if ext.eq_ignore_ascii_case("pbf") || ext.eq_ignore_ascii_case("mvt") {
        "vector"
    } else {
        "raster"
    }
}

/// Whether the client takes `Content-Encoding: gzip` (RFC 9110 §12.5.3:
/// `gzip`/`x-gzip` with q > 0, else `*` with q > 0; no header = identity).
pub(crate) fn accepts_gzip(headers: &HeaderMap) -> bool {
    let mut gzip = None;
    let mut star = None;
    for item in headers
        .get_all(header::ACCEPT_ENCODING)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
    {
        let mut parts = item.split(';');
        let coding = parts.next().unwrap_or_default().trim();
        // A q that does not parse refuses the coding rather than guessing.
        let q = parts
            .filter_map(|p| {
                let (k, v) = p.split_once('=')?;
                k.trim()
                    .eq_ignore_ascii_case("q")
                    .then(|| v.trim().parse::<f32>().unwrap_or(0.0))
            })
            .next()
            .unwrap_or(1.0);
        if coding.eq_ignore_ascii_case("gzip") || coding.eq_ignore_ascii_case("x-gzip") {
            gzip = Some(q > 0.0);
        } else if coding == "*" {
            star = Some(q > 0.0);
        }
    }
    gzip.or(star).unwrap_or(false)
}

pub async fn config(State(s): State<AppState>) -> Response {
    (
        [(header::CACHE_CONTROL, "no-cache")],
        Json(s.page_config.as_ref().clone()),
    )
        .into_response()
}

/// The `ETag`s of each asset, `[identity, gzip]`: a hash of its bytes,
/// computed once. The two encodings are two representations, so they get
/// two tags (a cache must not answer one with the other).
fn etags() -> &'static [[String; 2]] {
    static ETAGS: OnceLock<Vec<[String; 2]>> = OnceLock::new();
    ETAGS.get_or_init(|| {
        ASSETS
            .iter()
            .map(|a| {
                let mut h = DefaultHasher::new();
                a.body.hash(&mut h);
                let hash = h.finish();
                [format!("\"{hash:016x}\""), format!("\"{hash:016x}-gz\"")]
            })
            .collect()
    })
}

fn serve(i: usize, headers: &HeaderMap) -> Response {
    let a = &ASSETS[i];
    let gzip = a.gzip.filter(|_| accepts_gzip(headers));
    let etag = &etags()[i][usize::from(gzip.is_some())];
    let fresh = headers
        .get(header::IF_NONE_MATCH)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.split(',').any(|t| t.trim() == etag));
    let mut h = HeaderMap::new();
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    // A quoted hex string is always a valid header value.
    h.insert(
        header::ETAG,
        HeaderValue::from_str(etag).unwrap_or(HeaderValue::from_static("\"0\"")),
    );
    if a.gzip.is_some() {
        // The body depends on Accept-Encoding: caches must key on it.
        h.insert(header::VARY, HeaderValue::from_static("accept-encoding"));
    }
    if fresh {
        return (StatusCode::NOT_MODIFIED, h).into_response();
    }
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static(a.content_type),
    );
    let body = match gzip {
        Some(gz) => {
            h.insert(header::CONTENT_ENCODING, HeaderValue::from_static("gzip"));
            gz
        }
        None => a.body,
    };
    (h, body).into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn page_is_embedded_and_revalidates() {
        let page = index(HeaderMap::new()).await;
        assert_eq!(page.status(), StatusCode::OK);
        assert_eq!(
            page.headers()[header::CONTENT_TYPE],
            "text/html; charset=utf-8"
        );
        let etag = page.headers()[header::ETAG].clone();

        let mut again = HeaderMap::new();
        again.insert(header::IF_NONE_MATCH, etag);
        assert_eq!(index(again).await.status(), StatusCode::NOT_MODIFIED);

        let js = asset(Path("app.js".into()), HeaderMap::new()).await;
        assert_eq!(js.status(), StatusCode::OK);
        assert_ne!(js.headers()[header::ETAG], page.headers()[header::ETAG]);
        let missing = asset(Path("../Cargo.toml".into()), HeaderMap::new()).await;
        assert_eq!(missing.status(), StatusCode::NOT_FOUND);
        let gz = asset(Path("basemap.json.gz".into()), HeaderMap::new()).await;
        assert_eq!(gz.status(), StatusCode::NOT_FOUND, "only as basemap.json");
    }

    fn accept(v: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(header::ACCEPT_ENCODING, HeaderValue::from_str(v).unwrap());
        h
    }

    fn crc32(bytes: &[u8]) -> u32 {
        let mut crc = !0u32;
        for &b in bytes {
            crc ^= u32::from(b);
            for _ in 0..8 {
                crc = (crc >> 1) ^ (0xedb8_8320 & (crc & 1).wrapping_neg());
            }
        }
        !crc
    }

    async fn body(r: Response) -> Vec<u8> {
        axum::body::to_bytes(r.into_body(), usize::MAX)
            .await
            .unwrap()
            .to_vec()
    }

    #[tokio::test]
    async fn basemap_is_gzip_when_accepted_and_the_same_json_either_way() {
        let plain = asset(Path("basemap.json".into()), HeaderMap::new()).await;
        assert_eq!(plain.status(), StatusCode::OK);
        assert_eq!(plain.headers()[header::CONTENT_TYPE], "application/json");
        assert!(plain.headers().get(header::CONTENT_ENCODING).is_none());
        assert_eq!(plain.headers()[header::VARY], "accept-encoding");
        let plain_tag = plain.headers()[header::ETAG].clone();
        let raw = body(plain).await;
        let doc: serde_json::Value = serde_json::from_slice(&raw).unwrap();
        let levels = doc["levels"].as_array().unwrap();
        assert_eq!(levels.len(), 2, "1:110m and 1:50m");
        for l in levels {
            assert_eq!(l["topology"]["type"], "Topology");
            assert!(l["topology"]["objects"]["land"].is_object());
        }
        assert!(doc["cities"].as_array().unwrap().len() > 200);

        let gz = asset(Path("basemap.json".into()), accept("gzip, deflate, br")).await;
        assert_eq!(gz.headers()[header::CONTENT_ENCODING], "gzip");
        assert_eq!(gz.headers()[header::VARY], "accept-encoding");
        let gz_tag = gz.headers()[header::ETAG].clone();
        assert_ne!(gz_tag, plain_tag, "one tag per representation");
        let packed = body(gz).await;
        assert!(
            packed.len() * 2 < raw.len(),
            "{} vs {}",
            packed.len(),
            raw.len()
        );
        // gzip's trailer: CRC-32 and length of the uncompressed bytes (npm run
        // check compares the whole content; this is the same file, cheaply).
        assert_eq!(&packed[..2], &[0x1f, 0x8b]);
        let n = packed.len();
        let trailer = |at: usize| {
            u32::from_le_bytes([packed[at], packed[at + 1], packed[at + 2], packed[at + 3]])
        };
        assert_eq!(
            trailer(n - 8),
            crc32(&raw),
            "basemap.json.gz is basemap.json"
        );
        assert_eq!(trailer(n - 4) as usize, raw.len());

        // Revalidation per representation.
        let mut again = accept("gzip");
        again.insert(header::IF_NONE_MATCH, gz_tag.clone());
        let not_modified = asset(Path("basemap.json".into()), again).await;
        assert_eq!(not_modified.status(), StatusCode::NOT_MODIFIED);
        let mut other = HeaderMap::new();
        other.insert(header::IF_NONE_MATCH, gz_tag);
        let full = asset(Path("basemap.json".into()), other).await;
        assert_eq!(
            full.status(),
            StatusCode::OK,
            "the gzip tag is not the identity's"
        );

        // gzip refused: identity.
        let refused = asset(Path("basemap.json".into()), accept("gzip;q=0, *")).await;
        assert!(refused.headers().get(header::CONTENT_ENCODING).is_none());
        // The page itself stays uncompressed (small, and no Vary needed).
        let page = index(accept("gzip")).await;
        assert!(page.headers().get(header::CONTENT_ENCODING).is_none());
    }

    #[test]
    fn accept_encoding() {
        assert!(accepts_gzip(&accept("gzip")));
        assert!(accepts_gzip(&accept("br;q=1.0, GZIP;q=0.5")));
        assert!(accepts_gzip(&accept("x-gzip")));
        assert!(accepts_gzip(&accept("*")));
        assert!(!accepts_gzip(&accept("gzip;q=0")));
        assert!(!accepts_gzip(&accept("gzip;q=0, *")));
        assert!(!accepts_gzip(&accept("br, deflate")));
        assert!(!accepts_gzip(&accept("gzip;q=nonsense")));
        assert!(!accepts_gzip(&HeaderMap::new()));
    }

    fn config(tiles: Option<&str>) -> serde_json::Value {
        let mut args = vec!["g", "--auth", "none"];
        if let Some(t) = tiles {
            args.extend(["--map-tiles", t]);
        }
        page_config(&<crate::Config as clap::Parser>::try_parse_from(args).unwrap())
    }

    #[test]
    fn page_config_says_the_tile_format() {
        let none = config(None);
        assert_eq!(none["tiles"], serde_json::Value::Null);
        assert_eq!(none["tiles_format"], serde_json::Value::Null);
        assert_eq!(none["tiles_max_zoom"], serde_json::Value::Null);
        assert_eq!(none["attribution"], serde_json::Value::Null);
        assert_eq!(none["stale_after_ms"], 120_000);
        assert_eq!(none["auth"], "none", "the page asks for no token");
        let jwt =
            <crate::Config as clap::Parser>::try_parse_from(["g", "--jwt-secret", "s"]).unwrap();
        assert_eq!(page_config(&jwt)["auth"], "jwt");
        assert_eq!(page_config(&jwt)["login_url"], serde_json::Value::Null);
        let login = <crate::Config as clap::Parser>::try_parse_from([
            "g",
            "--jwt-secret",
            "s",
            "--login-url",
            "https://sso.example/login?app=map",
        ])
        .unwrap();
        assert_eq!(
            page_config(&login)["login_url"],
            "https://sso.example/login?app=map"
        );
        let raster = config(Some("https://tiles.example/{z}/{x}/{y}.png"));
        assert_eq!(raster["tiles"], "https://tiles.example/{z}/{x}/{y}.png");
        assert_eq!(raster["tiles_format"], "raster");
        assert_eq!(raster["tiles_max_zoom"], serde_json::Value::Null);
        for vector in [
            "https://tiles.example/{z}/{x}/{y}.pbf",
            "https://tiles.example/{z}/{x}/{y}.MVT?key=abc",
        ] {
            assert_eq!(config(Some(vector))["tiles_format"], "vector", "{vector}");
        }
        assert_eq!(
            config(Some("https://pbf.example/{z}/{x}/{y}"))["tiles_format"],
            "raster"
        );
        assert_eq!(config(Some("  "))["tiles_format"], serde_json::Value::Null);
    }
}
