//! Bounding boxes (`[minLon,minLat,maxLon,maxLat]`), shared by the
//! gateway's `bbox` subscription, `GET /api/devices?bbox=` and its hub's
//! R-tree, and the simulator's `--bbox`.
//!
//! One type and one parser for both: a box with `minLon > maxLon` crosses
//! the 180° meridian (PROTOCOL.md §4, §5) and covers `minLon..180` plus
//! `-180..maxLon`. Everything that cannot index a wrapped box (the R-tree,
//! `GEOSEARCH`) works on its [`BBox::parts`], one or two plain boxes.

/// A validated lon/lat box; `min_lon > max_lon` means it crosses the 180°
/// meridian.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct BBox {
    pub min_lon: f64,
    pub min_lat: f64,
    pub max_lon: f64,
    pub max_lat: f64,
}

/// Why four numbers are not a box.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BBoxError {
    #[error("bbox must be four numbers: minLon,minLat,maxLon,maxLat")]
    Shape,
    #[error("bbox values must be finite, lon within -180..180 and lat within -90..90")]
    Range,
    #[error("bbox must have minLat <= maxLat (minLon > maxLon is a box across the 180° meridian)")]
    Order,
}

/// Redis geo cannot index latitudes beyond this; the bridge clamps to it.
pub const GEO_MAX_LAT: f64 = 85.051_128_78;
const KM_PER_DEGREE: f64 = 111.319_49;
/// Wider than this (in longitude, both parts of a wrapped box together) or
/// taller than [`FLEET_SCAN_LAT`], a box reads the whole fleet and filters:
/// simpler, exact, and not much more than the geo index would return.
const FLEET_SCAN_LON: f64 = 90.0;
const FLEET_SCAN_LAT: f64 = 60.0;

/// Side of the cells of [`index_cell`], in degrees (~111 m of latitude).
pub const INDEX_CELL_DEG: f64 = 0.001;
/// How far a device may be from the position the geo index holds for it:
/// the diagonal of a cell where it is widest (at the equator), in km.
pub const INDEX_STALE_KM: f64 = INDEX_CELL_DEG * KM_PER_DEGREE * std::f64::consts::SQRT_2;

/// The cell of the geo index's grid that holds `(lat, lon)` (`lat` clamped
/// as the index stores it), as one integer. The bridge re-indexes a device
/// only when its newest location is in another cell than the one it was
/// last indexed in: most locations of a moving fleet stay in their cell
/// (a `GEOADD` per location was a fifth of Redis's CPU), so the index may
/// be up to [`INDEX_STALE_KM`] behind, which the search boxes add to
/// their margin; the exact filter runs on the hash's position.
pub fn index_cell(lat: f64, lon: f64) -> i64 {
    let lat = lat.clamp(-GEO_MAX_LAT, GEO_MAX_LAT);
    // Within ±85 052 and ±180 000: a lon index never reaches ±400 000, so
    // every pair has its own number.
    let row = (lat / INDEX_CELL_DEG).floor() as i64;
    let col = (lon / INDEX_CELL_DEG).floor() as i64;
    row * 400_000 + col
}

/// `GEOSEARCH ... FROMLONLAT lon lat BYBOX width height km`: `(lon, lat,
/// width_km, height_km)`.
pub type GeoSearchBox = (f64, f64, f64, f64);

impl BBox {
    pub fn new(v: [f64; 4]) -> Result<Self, BBoxError> {
        let [min_lon, min_lat, max_lon, max_lat] = v;
        if !v.iter().all(|x| x.is_finite())
            || !(-180.0..=180.0).contains(&min_lon)
            || !(-180.0..=180.0).contains(&max_lon)
            || !(-90.0..=90.0).contains(&min_lat)
            || !(-90.0..=90.0).contains(&max_lat)
        {
            return Err(BBoxError::Range);
        }
        // Longitude order is free (it says whether the box wraps); a
        // latitude range upside down is a mistake, never a meaning.
        if min_lat > max_lat {
            return Err(BBoxError::Order);
        }
        Ok(BBox {
            min_lon,
            min_lat,
            max_lon,
            max_lat,
        })
    }

    pub fn from_slice(v: &[f64]) -> Result<Self, BBoxError> {
        let arr: [f64; 4] = v.try_into().map_err(|_| BBoxError::Shape)?;
        Self::new(arr)
    }

    /// `minLon,minLat,maxLon,maxLat` as in `?bbox=`.
    pub fn parse_query(s: &str) -> Result<Self, BBoxError> {
        let v: Vec<f64> = s
            .split(',')
            .map(|p| p.trim().parse::<f64>().map_err(|_| BBoxError::Shape))
            .collect::<Result<_, _>>()?;
        Self::from_slice(&v)
    }

    /// `[minLon, minLat, maxLon, maxLat]`, as the protocol writes it.
    pub fn to_array(&self) -> [f64; 4] {
        [self.min_lon, self.min_lat, self.max_lon, self.max_lat]
    }

    /// Whether the box crosses the 180° meridian.
    pub fn wraps(&self) -> bool {
        self.min_lon > self.max_lon
    }

    /// Exact test on the device's true position (edges included).
    pub fn contains(&self, lon: f64, lat: f64) -> bool {
        let in_lon = if self.wraps() {
            lon >= self.min_lon || lon <= self.max_lon
        } else {
            lon >= self.min_lon && lon <= self.max_lon
        };
        in_lon && lat >= self.min_lat && lat <= self.max_lat
    }

    /// The box as plain boxes (`min_lon <= max_lon`), whose union it is:
    /// itself, or for a box across the meridian its eastern part
    /// `min_lon..180` and its western part `-180..max_lon`.
    pub fn parts(&self) -> impl Iterator<Item = BBox> {
        let (first, second) = if self.wraps() {
            (
                BBox {
                    max_lon: 180.0,
                    ..*self
                },
                Some(BBox {
                    min_lon: -180.0,
                    ..*self
                }),
            )
        } else {
            (*self, None)
        };
        std::iter::once(first).chain(second)
    }

    /// Degrees of longitude the box spans (both parts of a wrapped box).
    pub fn lon_span(&self) -> f64 {
        self.parts().map(|p| p.max_lon - p.min_lon).sum()
    }

    /// The `GEOSEARCH` boxes whose results together are a superset of the
    /// box (one per [part](Self::parts)), or `None` when the box is so
    /// large that reading the whole fleet is simpler and exact.
    pub fn geosearch_boxes(&self) -> Option<Vec<GeoSearchBox>> {
        if self.lon_span() > FLEET_SCAN_LON || self.max_lat - self.min_lat > FLEET_SCAN_LAT {
            return None;
        }
        let mut boxes: Vec<GeoSearchBox> = self.parts().map(|p| p.geosearch_plain()).collect();
        if self.wraps() || self.max_lon >= 180.0 {
            // Redis indexes a member at exactly lon 180 in a cell that only
            // a search centred on lon 180 finds (its geohash overflows; one
            // at -180 is found from either side): a 1 km wide search along
            // the meridian catches those.
            boxes.push(
                BBox {
                    min_lon: 180.0,
                    max_lon: 180.0,
                    ..*self
                }
                .geosearch_plain(),
            );
        }
        Some(boxes)
    }

    /// The search box of a plain box.
    ///
    /// Redis measures a box's width along each point's own parallel, so the
    /// width must be that of the widest parallel in the box (the one nearest
    /// the equator); latitudes are clamped the way the bridge clamps them.
    fn geosearch_plain(&self) -> GeoSearchBox {
        let lat_lo = self.min_lat.clamp(-GEO_MAX_LAT, GEO_MAX_LAT);
        let lat_hi = self.max_lat.clamp(-GEO_MAX_LAT, GEO_MAX_LAT);
        let nearest_equator = if lat_lo <= 0.0 && lat_hi >= 0.0 {
            0.0
        } else {
            lat_lo.abs().min(lat_hi.abs())
        };
        let widest = nearest_equator.to_radians().cos();
        // 1 % plus 1 km of margin absorbs geohash precision, and a cell's
        // diagonal on each side the index lagging behind a device that
        // moved within its cell (`index_cell`); the exact filter runs
        // afterwards on the stored lat/lon.
        let margin = 1.0 + 2.0 * INDEX_STALE_KM;
        let width = (self.max_lon - self.min_lon) * KM_PER_DEGREE * widest * 1.01 + margin;
        let height = (lat_hi - lat_lo) * KM_PER_DEGREE * 1.01 + margin;
        let lon = (self.min_lon + self.max_lon) / 2.0;
        let lat = (lat_lo + lat_hi) / 2.0;
        (lon, lat, width, height)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Two points in one cell are never further apart than the margin the
    /// search boxes add for it, and neighbouring cells have their own
    /// numbers, on both sides of zero and at the clamped poles.
    #[test]
    fn index_cells() {
        let c = index_cell(51.5074, -0.1278);
        assert_eq!(c, index_cell(51.50749, -0.12709));
        assert_ne!(c, index_cell(51.5084, -0.1278));
        assert_ne!(c, index_cell(51.5074, -0.1268));
        assert_ne!(index_cell(0.0005, -0.0005), index_cell(0.0005, 0.0005));
        assert_ne!(index_cell(-0.0005, 0.0005), index_cell(0.0005, 0.0005));
        assert_eq!(index_cell(89.0, 10.0), index_cell(GEO_MAX_LAT, 10.0));
        let mut seen = std::collections::HashSet::new();
        for lat in [-85.0511, -85.05, 0.0, 85.05] {
            for lon in [-180.0, -179.9985, 179.9975, 179.9995, 180.0] {
                seen.insert(index_cell(lat, lon));
            }
        }
        assert_eq!(seen.len(), 4 * 5);
        // A cell's diagonal at the equator, where a degree of longitude is
        // widest.
        let diag = (2.0 * (INDEX_CELL_DEG * KM_PER_DEGREE).powi(2)).sqrt();
        assert!(
            INDEX_STALE_KM >= diag * 0.999_999,
            "{INDEX_STALE_KM} {diag}"
        );
    }

    #[test]
    fn parses_and_checks() {
        let b = BBox::parse_query("-1,50,1,52").unwrap();
        assert!(!b.wraps());
        assert!(b.contains(0.0, 51.0));
        assert!(b.contains(1.0, 52.0));
        assert!(!b.contains(1.1, 51.0));
        assert_eq!(b.parts().collect::<Vec<_>>(), [b]);
        assert_eq!(BBox::parse_query("1,2,3"), Err(BBoxError::Shape));
        assert_eq!(BBox::parse_query("1,3,2,2"), Err(BBoxError::Order));
        assert_eq!(BBox::parse_query("1,2,3,95"), Err(BBoxError::Range));
        assert_eq!(BBox::parse_query("-181,2,3,4"), Err(BBoxError::Range));
        assert_eq!(BBox::parse_query("170,2,180.5,4"), Err(BBoxError::Range));
        assert_eq!(BBox::parse_query("a,2,3,4"), Err(BBoxError::Shape));
        assert_eq!(BBox::parse_query("NaN,2,3,4"), Err(BBoxError::Range));
        assert!(BBox::parse_query("-180,-90,180,90")
            .unwrap()
            .geosearch_boxes()
            .is_none());
    }

    #[test]
    fn a_box_across_the_meridian_covers_both_sides() {
        let b = BBox::parse_query("179,-1,-179,1").unwrap();
        assert!(b.wraps());
        for (lon, inside) in [
            (179.5, true),
            (180.0, true),
            (-180.0, true),
            (-179.5, true),
            (-179.0, true),
            (179.0, true),
            (0.0, false),
            (178.9, false),
            (-178.9, false),
        ] {
            assert_eq!(b.contains(lon, 0.0), inside, "{lon}");
        }
        assert!(!b.contains(179.5, 1.5));
        let parts: Vec<BBox> = b.parts().collect();
        assert_eq!(
            parts,
            [
                BBox::new([179.0, -1.0, 180.0, 1.0]).unwrap(),
                BBox::new([-180.0, -1.0, -179.0, 1.0]).unwrap()
            ]
        );
        assert_eq!(b.lon_span(), 2.0);
        let boxes = b.geosearch_boxes().unwrap();
        assert_eq!(boxes.len(), 3);
        assert_eq!((boxes[0].0, boxes[1].0, boxes[2].0), (179.5, -179.5, 180.0));
        assert!(boxes[2].2 < 2.0, "the meridian's own search is narrow");
        // A plain box up to lon 180 searches the meridian too.
        let to_180 = BBox::parse_query("170,-1,180,1").unwrap();
        assert_eq!(to_180.geosearch_boxes().unwrap().len(), 2);
        assert_eq!(
            BBox::parse_query("170,-1,179,1")
                .unwrap()
                .geosearch_boxes()
                .unwrap()
                .len(),
            1
        );
        // Narrow in total, though its corners are 358° apart.
        assert!(BBox::parse_query("100,0,-100,1")
            .unwrap()
            .geosearch_boxes()
            .is_none());
        assert!(BBox::parse_query("170,0,-170,1")
            .unwrap()
            .geosearch_boxes()
            .is_some());
    }
}
