//! Bounding boxes (`[minLon,minLat,maxLon,maxLat]`), shared by the `bbox`
//! subscription, `GET /api/devices?bbox=` and the hub's R-tree.

/// A validated lon/lat box. Boxes across the antimeridian are not
/// supported: `minLon <= maxLon` is required (send two boxes' worth of
/// devices with two connections, or a wider box).
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
    #[error("bbox must have minLon <= maxLon and minLat <= maxLat")]
    Order,
}

/// Redis geo cannot index latitudes beyond this; the bridge clamps to it.
pub const GEO_MAX_LAT: f64 = 85.051_128_78;
const KM_PER_DEGREE: f64 = 111.319_49;

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
        if min_lon > max_lon || min_lat > max_lat {
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

    /// Exact test on the device's true position (edges included).
    pub fn contains(&self, lon: f64, lat: f64) -> bool {
        lon >= self.min_lon && lon <= self.max_lon && lat >= self.min_lat && lat <= self.max_lat
    }

    /// The `GEOSEARCH ... FROMLONLAT lon lat BYBOX w h km` arguments whose
    /// result is a superset of the box, or `None` when the box is so large
    /// that reading the whole fleet is simpler and exact.
    ///
    /// Redis measures a box's width along each point's own parallel, so the
    /// width must be that of the widest parallel in the box (the one nearest
    /// the equator); latitudes are clamped the way the bridge clamps them.
    pub fn geosearch_args(&self) -> Option<(f64, f64, f64, f64)> {
        if self.max_lon - self.min_lon > 90.0 || self.max_lat - self.min_lat > 60.0 {
            return None;
        }
        let lat_lo = self.min_lat.clamp(-GEO_MAX_LAT, GEO_MAX_LAT);
        let lat_hi = self.max_lat.clamp(-GEO_MAX_LAT, GEO_MAX_LAT);
        let nearest_equator = if lat_lo <= 0.0 && lat_hi >= 0.0 {
            0.0
        } else {
            lat_lo.abs().min(lat_hi.abs())
        };
        let widest = nearest_equator.to_radians().cos();
        // 1 % plus 1 km of margin absorbs geohash precision; the exact
        // filter runs afterwards on the stored lat/lon.
        let width = (self.max_lon - self.min_lon) * KM_PER_DEGREE * widest * 1.01 + 1.0;
        let height = (lat_hi - lat_lo) * KM_PER_DEGREE * 1.01 + 1.0;
        let lon = (self.min_lon + self.max_lon) / 2.0;
        let lat = (lat_lo + lat_hi) / 2.0;
        Some((lon, lat, width, height))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_checks() {
        let b = BBox::parse_query("-1,50,1,52").unwrap();
        assert!(b.contains(0.0, 51.0));
        assert!(b.contains(1.0, 52.0));
        assert!(!b.contains(1.1, 51.0));
        assert_eq!(BBox::parse_query("1,2,3"), Err(BBoxError::Shape));
        assert_eq!(BBox::parse_query("1,2,0,3"), Err(BBoxError::Order));
        assert_eq!(BBox::parse_query("1,2,3,95"), Err(BBoxError::Range));
        assert_eq!(BBox::parse_query("a,2,3,4"), Err(BBoxError::Shape));
        assert!(BBox::parse_query("-180,-90,180,90")
            .unwrap()
            .geosearch_args()
            .is_none());
    }
}
