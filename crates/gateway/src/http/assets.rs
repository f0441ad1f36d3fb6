//! The map page: `web/` is bundled by `npm run build` into `web/dist`, which
//! is committed and embedded here at compile time, so the binary serves the
//! page with no files beside it and a clean clone builds without npm.
//!
//! In: `GET /`, `GET /assets/{file}`, `GET /config.json`. Out: the bundle
//! (`Cache-Control: no-cache` plus an `ETag`, so a browser revalidates and
//! picks up a new binary's page on reload) and the page's settings, from
//! the configuration (flags `--map-tiles`, `--map-attribution`, `--map-stale`):
//!
//! | variable | default | meaning |
//! | --- | --- | --- |
//! | `FIELDCAST_MAP_TILES` | none | XYZ tile URL template (`https://tiles.example/{z}/{x}/{y}.png`); none = plain background with a graticule |
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
    content_type: &'static str,
}

/// `index.html` first: it is also `/`.
static ASSETS: [Asset; 3] = [
    Asset {
        name: "index.html",
        body: dist!("index.html"),
        content_type: "text/html; charset=utf-8",
    },
    Asset {
        name: "app.js",
        body: dist!("app.js"),
        content_type: "text/javascript; charset=utf-8",
    },
    Asset {
        name: "app.css",
        body: dist!("app.css"),
        content_type: "text/css; charset=utf-8",
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

/// `{"tiles": string|null, "attribution": string|null, "stale_after_ms": number}`,
/// built once from the configuration.
pub fn page_config(config: &crate::Config) -> serde_json::Value {
    let nonempty = |v: &Option<String>| v.clone().filter(|v| !v.trim().is_empty());
    serde_json::json!({
        "tiles": nonempty(&config.map_tiles),
        "attribution": nonempty(&config.map_attribution),
        "stale_after_ms": u64::try_from(config.map_stale.as_millis()).unwrap_or(u64::MAX),
    })
}

pub async fn config(State(s): State<AppState>) -> Response {
    (
        [(header::CACHE_CONTROL, "no-cache")],
        Json(s.page_config.as_ref().clone()),
    )
        .into_response()
}

/// The `ETag` of each asset: a hash of its bytes, computed once.
fn etags() -> &'static [String] {
    static ETAGS: OnceLock<Vec<String>> = OnceLock::new();
    ETAGS.get_or_init(|| {
        ASSETS
            .iter()
            .map(|a| {
                let mut h = DefaultHasher::new();
                a.body.hash(&mut h);
                format!("\"{:016x}\"", h.finish())
            })
            .collect()
    })
}

fn serve(i: usize, headers: &HeaderMap) -> Response {
    let a = &ASSETS[i];
    let etag = &etags()[i];
    let fresh = headers
        .get(header::IF_NONE_MATCH)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.split(',').any(|t| t.trim() == etag));
    let common = [
        (header::CACHE_CONTROL, HeaderValue::from_static("no-cache")),
        // A quoted hex string is always a valid header value.
        (
            header::ETAG,
            HeaderValue::from_str(etag).unwrap_or(HeaderValue::from_static("\"0\"")),
        ),
    ];
    if fresh {
        return (StatusCode::NOT_MODIFIED, common).into_response();
    }
    (common, [(header::CONTENT_TYPE, a.content_type)], a.body).into_response()
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
    }
}
