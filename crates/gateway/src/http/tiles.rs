//! `GET /tiles/{z}/{x}/{y}` from the local archive (`store::tiles`; an
//! extension such as `.png` or `.pbf` may follow `y` and is ignored).
//!
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

use axum::extract::rejection::PathRejection;
use axum::extract::{Path as UrlPath, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};

use crate::http::error::ApiError;
use crate::state::AppState;
use crate::store::tiles::{check_range, Tile, TileKind};

const CACHE_CONTROL: &str = "public, max-age=86400";

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
}
