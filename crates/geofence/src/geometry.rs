//! The three fence shapes: validated on the way in, tested exactly on the
//! way through, and boxed for the R-tree.
//!
//! Coordinates are GeoJSON's `[lon, lat]` in degrees (RFC 7946). What
//! "inside" means, exactly:
//!
//! - **Polygon**: even-odd over all rings, edges straight in lon/lat as
//!   GeoJSON draws them. The fence is a *closed* set: a point on the outer
//!   ring or on a hole's ring is inside; a point strictly inside a hole is
//!   outside. "On" means as far as `f64` can tell: the point equals a
//!   vertex, or the orientation of the point against the edge computes to
//!   exactly zero within the edge's extent. A point a few nanodegrees (under
//!   a millimetre) off an edge may go either way; at GPS scale this is
//!   immaterial, and it is consistent: the same input always gives the same
//!   answer.
//! - **Circle** (`Point` + `radius`): the spherical cap of that radius on
//!   the mean-radius sphere (6 371 008.8 m), by the haversine formula, edge
//!   included. The sphere differs from the WGS84 ellipsoid by at most 0.5 %
//!   of the radius. Correct at the poles and across the 180° meridian.
//! - **Corridor** (`LineString` + `width`): points whose great-circle
//!   distance to the line (straight in lon/lat, as GeoJSON draws it) is at
//!   most `width / 2`. For each segment, the nearest point is found in a
//!   plane whose longitudes are scaled by the cosine of the device's
//!   latitude, and the distance to that point is measured by haversine:
//!   it is the distance to a true point of the line, so the error only ever
//!   leans outward, and it is below 0.1 % of the half-width for widths up to
//!   the limit (the test `corridor_distance_matches_dense_sampling` pins
//!   it). Correct across the 180° meridian.
//!
//! **The 180° meridian**: circles and corridors may reach across it (their
//! boxes are split in two). A polygon or line edge that spans more than
//! 180° of longitude is refused, since RFC 7946 asks for such shapes to be
//! cut at the meridian; a polygon is then two fences. Longitudes -180 and
//! 180 are the same meridian for circles and corridors; for a polygon they
//! are its two plane edges.

use crate::error::{FenceError, Problem};
use rstar::{RTree, RTreeObject, AABB};
use serde_json::{json, Value};

/// `[lon, lat]` in degrees.
pub type Position = [f64; 2];

/// Mean Earth radius (IUGG), metres.
pub const EARTH_RADIUS_M: f64 = 6_371_008.8;
/// Largest circle radius accepted, metres. A fence wider than a country is
/// a mistake more often than a meaning.
pub const MAX_RADIUS_M: f64 = 1_000_000.0;
/// Largest corridor width accepted, metres (the whole width, both sides).
pub const MAX_WIDTH_M: f64 = 100_000.0;

/// A fence's shape, valid by construction (only parsing makes one).
#[derive(Debug, Clone, PartialEq)]
pub enum Shape {
    Polygon(Polygon),
    Circle(Circle),
    Corridor(Corridor),
}

/// Outer ring first, then holes; each ring closed (first = last).
#[derive(Debug, Clone, PartialEq)]
pub struct Polygon {
    rings: Vec<Vec<Position>>,
    /// `[min_lon, min_lat, max_lon, max_lat]` of each ring, so a hole far
    /// from the point costs one comparison.
    boxes: Vec<[f64; 4]>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Circle {
    center: Position,
    radius_m: f64,
    /// Haversine of the radius's central angle: a point is inside when its
    /// haversine to the centre is at most this (no `asin` per test).
    hav_max: f64,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Corridor {
    line: Vec<Position>,
    width_m: f64,
    hav_max: f64,
}

/// Where a point is relative to one ring.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Side {
    Inside,
    Boundary,
    Outside,
}

impl Shape {
    /// The geometry of a Feature, with `properties.radius` / `.width` when
    /// given (their value and field path; a non-number arrives as NaN and
    /// is refused like any bad number).
    pub(crate) fn parse(
        geometry: &Value,
        radius: Option<(f64, String)>,
        width: Option<(f64, String)>,
    ) -> Result<Shape, FenceError> {
        let obj = crate::json::Obj::new(geometry, "geometry", &["type", "coordinates", "bbox"])?;
        let kind = obj
            .require("type")?
            .as_str()
            .ok_or_else(|| obj.err("type", Problem::Type("a string")))?;
        let coords = obj.require("coordinates")?;
        let cpath = obj.path("coordinates");
        let only = |given: &Option<(f64, String)>, what| match given {
            Some((_, field)) => Err(FenceError::new(field, Problem::Text(what))),
            None => Ok(()),
        };
        match kind {
            "Polygon" => {
                only(&radius, "given only with a Point geometry")?;
                only(&width, "given only with a LineString geometry")?;
                Polygon::parse(coords, &cpath).map(Shape::Polygon)
            }
            "Point" => {
                only(&width, "given only with a LineString geometry")?;
                let (r, field) =
                    radius.ok_or_else(|| FenceError::new("properties.radius", Problem::Missing))?;
                check_metres(r, MAX_RADIUS_M, &field)?;
                let center = position(coords, &cpath)?;
                Ok(Shape::Circle(Circle {
                    center,
                    radius_m: r,
                    hav_max: hav_of_distance(r),
                }))
            }
            "LineString" => {
                only(&radius, "given only with a Point geometry")?;
                let (w, field) =
                    width.ok_or_else(|| FenceError::new("properties.width", Problem::Missing))?;
                check_metres(w, MAX_WIDTH_M, &field)?;
                let line = line(coords, &cpath)?;
                if line.len() < 2 {
                    return Err(FenceError::new(cpath, Problem::LineTooShort(line.len())));
                }
                Ok(Shape::Corridor(Corridor {
                    line,
                    width_m: w,
                    hav_max: hav_of_distance(w / 2.0),
                }))
            }
            other => Err(obj.err("type", Problem::Geometry(other.to_string()))),
        }
    }

    /// Exact test (the R-tree has already matched a box). `part` is the
    /// corridor segment whose box matched; the other shapes ignore it.
    pub(crate) fn contains(&self, p: Position, part: u32) -> bool {
        match self {
            Shape::Polygon(poly) => poly.contains(p),
            Shape::Circle(c) => hav(p, c.center) <= c.hav_max,
            Shape::Corridor(c) => {
                let i = part as usize;
                match (c.line.get(i), c.line.get(i + 1)) {
                    (Some(&a), Some(&b)) => segment_hav(p, a, b) <= c.hav_max,
                    _ => false,
                }
            }
        }
    }

    /// The same answer without an R-tree part: any segment.
    pub(crate) fn contains_any_part(&self, p: Position) -> bool {
        match self {
            Shape::Corridor(c) => c
                .line
                .windows(2)
                .any(|s| segment_hav(p, s[0], s[1]) <= c.hav_max),
            _ => self.contains(p, 0),
        }
    }

    /// The boxes that cover the shape, with the part each covers.
    pub(crate) fn boxes(&self, out: &mut Vec<(AABB<Position>, u32)>) {
        match self {
            Shape::Polygon(p) => {
                // The outer ring's box; it exists (see `Polygon::contains`).
                let [a, b, c, d] = p.boxes[0];
                out.push((AABB::from_corners([a, b], [c, d]), 0));
            }
            Shape::Circle(c) => {
                let [lon, lat] = c.center;
                push_expanded(out, 0, [lon, lat, lon, lat], c.radius_m);
            }
            Shape::Corridor(c) => {
                for (i, s) in c.line.windows(2).enumerate() {
                    let b = [
                        s[0][0].min(s[1][0]),
                        s[0][1].min(s[1][1]),
                        s[0][0].max(s[1][0]),
                        s[0][1].max(s[1][1]),
                    ];
                    push_expanded(out, i as u32, b, c.width_m / 2.0);
                }
            }
        }
    }

    /// The GeoJSON geometry, and the property that goes with it.
    pub(crate) fn to_json(&self) -> (Value, Option<(&'static str, f64)>) {
        match self {
            Shape::Polygon(p) => (json!({"type": "Polygon", "coordinates": p.rings}), None),
            Shape::Circle(c) => (
                json!({"type": "Point", "coordinates": c.center}),
                Some(("radius", c.radius_m)),
            ),
            Shape::Corridor(c) => (
                json!({"type": "LineString", "coordinates": c.line}),
                Some(("width", c.width_m)),
            ),
        }
    }

    /// How many positions the shape has (for the vertex limit).
    pub fn vertices(&self) -> usize {
        match self {
            Shape::Polygon(p) => p.rings.iter().map(Vec::len).sum(),
            Shape::Circle(_) => 1,
            Shape::Corridor(c) => c.line.len(),
        }
    }
}

impl Polygon {
    fn parse(v: &Value, path: &str) -> Result<Polygon, FenceError> {
        let rings_v = v
            .as_array()
            .ok_or_else(|| FenceError::new(path, Problem::Type("a list of rings")))?;
        if rings_v.is_empty() {
            return Err(FenceError::new(
                path,
                Problem::Type("a non-empty list of rings"),
            ));
        }
        let total: usize = rings_v
            .iter()
            .map(|r| r.as_array().map_or(0, Vec::len))
            .sum();
        if total > crate::MAX_VERTICES {
            return Err(FenceError::new(path, Problem::TooManyVertices(total)));
        }
        let mut rings = Vec::with_capacity(rings_v.len());
        for (r, ring_v) in rings_v.iter().enumerate() {
            let rpath = format!("{path}[{r}]");
            let ring = line(ring_v, &rpath)?;
            if ring.len() < 4 {
                return Err(FenceError::new(rpath, Problem::RingTooShort(ring.len())));
            }
            if ring.first() != ring.last() {
                return Err(FenceError::new(rpath, Problem::RingNotClosed));
            }
            rings.push(ring);
        }
        check_simple(&rings, path)?;
        let boxes: Vec<[f64; 4]> = rings.iter().map(|r| ring_box(r)).collect();
        // No ring crosses another (checked above), so one vertex tells
        // which side a whole hole is on.
        for (h, hole) in rings.iter().enumerate().skip(1) {
            let hpath = format!("{path}[{h}]");
            if locate(&rings[0], hole[0]) != Side::Inside {
                return Err(FenceError::new(hpath, Problem::HoleOutside));
            }
            for (o, other) in rings.iter().enumerate().skip(1) {
                if o != h && locate(other, hole[0]) == Side::Inside {
                    return Err(FenceError::new(hpath, Problem::HoleInHole(o)));
                }
            }
        }
        Ok(Polygon { rings, boxes })
    }

    fn contains(&self, p: Position) -> bool {
        // Indexing [0] cannot panic: `parse` refuses a polygon without
        // rings, and `boxes` has one entry per ring.
        if !in_box(&self.boxes[0], p) || locate(&self.rings[0], p) == Side::Outside {
            return false;
        }
        // A hole's own ring is the fence's boundary, so it is inside.
        !self
            .rings
            .iter()
            .zip(&self.boxes)
            .skip(1)
            .any(|(hole, b)| in_box(b, p) && locate(hole, p) == Side::Inside)
    }
}

fn in_box(b: &[f64; 4], p: Position) -> bool {
    p[0] >= b[0] && p[1] >= b[1] && p[0] <= b[2] && p[1] <= b[3]
}

fn ring_box(ring: &[Position]) -> [f64; 4] {
    ring.iter().fold(
        [
            f64::INFINITY,
            f64::INFINITY,
            f64::NEG_INFINITY,
            f64::NEG_INFINITY,
        ],
        |b, p| {
            [
                b[0].min(p[0]),
                b[1].min(p[1]),
                b[2].max(p[0]),
                b[3].max(p[1]),
            ]
        },
    )
}

/// Twice the signed area of `a, b, c`: > 0 when `c` is left of `a -> b`.
fn orient(a: Position, b: Position, c: Position) -> f64 {
    (b[0] - a[0]) * (c[1] - a[1]) - (b[1] - a[1]) * (c[0] - a[0])
}

/// Even-odd with the half-open rule (an edge counts when it straddles the
/// point's latitude with one end strictly above), so a ray through a vertex
/// is counted once; the boundary is found on the way.
fn locate(ring: &[Position], p: Position) -> Side {
    let [x, y] = p;
    let mut inside = false;
    for w in ring.windows(2) {
        let (a, b) = (w[0], w[1]);
        if (a[1] > y) != (b[1] > y) {
            let t = orient(a, b, p);
            if t == 0.0 {
                return Side::Boundary;
            }
            if (t > 0.0) == (b[1] > a[1]) {
                inside = !inside;
            }
        } else if a[1] == y {
            // Rare: the point is level with a vertex. A vertex, or a
            // horizontal edge, under the point is boundary.
            if a[0] == x || (b[1] == y && (a[0] <= x) != (b[0] < x)) {
                return Side::Boundary;
            }
        }
    }
    if inside {
        Side::Inside
    } else {
        Side::Outside
    }
}

/// A segment of a ring, for the self-intersection R-tree.
struct Edge {
    ring: usize,
    index: usize,
    a: Position,
    b: Position,
}

impl RTreeObject for Edge {
    type Envelope = AABB<Position>;
    fn envelope(&self) -> Self::Envelope {
        AABB::from_corners(self.a, self.b)
    }
}

/// No ring touches itself (beyond neighbouring edges sharing their vertex)
/// or another ring. Edges that could meet are found through an R-tree of
/// their boxes, so 10 000 vertices cost milliseconds, not a pairwise scan.
fn check_simple(rings: &[Vec<Position>], path: &str) -> Result<(), FenceError> {
    let edges: Vec<Edge> = rings
        .iter()
        .enumerate()
        .flat_map(|(r, ring)| {
            ring.windows(2).enumerate().map(move |(i, w)| Edge {
                ring: r,
                index: i,
                a: w[0],
                b: w[1],
            })
        })
        .collect();
    let tree = RTree::bulk_load(edges);
    // Report the first offence in input order, so the message is stable.
    let mut worst: Option<(usize, usize, usize, usize)> = None;
    for e in tree.iter() {
        for f in tree.locate_in_envelope_intersecting(&e.envelope()) {
            if (f.ring, f.index) <= (e.ring, e.index) {
                continue;
            }
            let bad = if f.ring == e.ring {
                let n = rings[e.ring].len() - 1;
                let adjacent = f.index == e.index + 1 || (e.index == 0 && f.index == n - 1);
                if adjacent {
                    // They share one vertex; they must not fold back.
                    let (first, second) = if f.index == e.index + 1 {
                        (e, f)
                    } else {
                        (f, e)
                    };
                    let (p, v, q) = (first.a, first.b, second.b);
                    orient(p, v, q) == 0.0 && (on_segment(p, v, q) || on_segment(v, q, p))
                } else {
                    segments_touch(e.a, e.b, f.a, f.b)
                }
            } else {
                segments_touch(e.a, e.b, f.a, f.b)
            };
            if bad {
                let key = (e.ring, e.index, f.ring, f.index);
                if worst.is_none_or(|w| key < w) {
                    worst = Some(key);
                }
            }
        }
    }
    match worst {
        None => Ok(()),
        Some((r1, i, r2, j)) if r1 == r2 => Err(FenceError::new(
            format!("{path}[{r1}]"),
            Problem::SelfIntersection(i, j),
        )),
        Some((r1, _, r2, _)) => Err(FenceError::new(
            format!("{path}[{r2}]"),
            Problem::RingsIntersect(r1),
        )),
    }
}

/// `q` within the box of `a, b` (callers know the three are collinear).
fn on_segment(a: Position, b: Position, q: Position) -> bool {
    q[0] >= a[0].min(b[0])
        && q[0] <= a[0].max(b[0])
        && q[1] >= a[1].min(b[1])
        && q[1] <= a[1].max(b[1])
}

/// Closed segments `p1p2` and `q1q2` share at least one point.
fn segments_touch(p1: Position, p2: Position, q1: Position, q2: Position) -> bool {
    let d1 = orient(q1, q2, p1);
    let d2 = orient(q1, q2, p2);
    let d3 = orient(p1, p2, q1);
    let d4 = orient(p1, p2, q2);
    let opposite = |a: f64, b: f64| (a > 0.0 && b < 0.0) || (a < 0.0 && b > 0.0);
    if opposite(d1, d2) && opposite(d3, d4) {
        return true;
    }
    (d1 == 0.0 && on_segment(q1, q2, p1))
        || (d2 == 0.0 && on_segment(q1, q2, p2))
        || (d3 == 0.0 && on_segment(p1, p2, q1))
        || (d4 == 0.0 && on_segment(p1, p2, q2))
}

/// `[lon, lat]` (an altitude after them is accepted and dropped).
fn position(v: &Value, path: &str) -> Result<Position, FenceError> {
    let err = || FenceError::new(path, Problem::Position);
    let a = v.as_array().ok_or_else(err)?;
    if !(2..=3).contains(&a.len()) {
        return Err(err());
    }
    let lon = a[0].as_f64().ok_or_else(err)?;
    let lat = a[1].as_f64().ok_or_else(err)?;
    if !lon.is_finite() || !lat.is_finite() || lon.abs() > 180.0 || lat.abs() > 90.0 {
        return Err(err());
    }
    Ok([lon, lat])
}

/// A list of positions with no repeated neighbour and no edge over 180° of
/// longitude (a ring or a line).
fn line(v: &Value, path: &str) -> Result<Vec<Position>, FenceError> {
    let list = v
        .as_array()
        .ok_or_else(|| FenceError::new(path, Problem::Type("a list of positions")))?;
    if list.len() > crate::MAX_VERTICES {
        return Err(FenceError::new(path, Problem::TooManyVertices(list.len())));
    }
    let mut out: Vec<Position> = Vec::with_capacity(list.len());
    for (i, p) in list.iter().enumerate() {
        let field = format!("{path}[{i}]");
        let p = position(p, &field)?;
        if let Some(prev) = out.last() {
            if *prev == p {
                return Err(FenceError::new(field, Problem::Repeated));
            }
            if (p[0] - prev[0]).abs() > 180.0 {
                return Err(FenceError::new(field, Problem::Antimeridian));
            }
        }
        out.push(p);
    }
    Ok(out)
}

fn check_metres(m: f64, max: f64, field: &str) -> Result<(), FenceError> {
    if m.is_finite() && m > 0.0 && m <= max {
        Ok(())
    } else {
        Err(FenceError::new(field, Problem::Metres(max)))
    }
}

/// Haversine of the central angle of a distance along the sphere.
fn hav_of_distance(m: f64) -> f64 {
    let s = (m / (2.0 * EARTH_RADIUS_M)).sin();
    s * s
}

/// Haversine of the central angle between two positions: monotonic in
/// the distance, so comparing it saves the `asin` and `sqrt`.
fn hav(p: Position, q: Position) -> f64 {
    let (phi1, phi2) = (p[1].to_radians(), q[1].to_radians());
    let s_phi = ((phi2 - phi1) / 2.0).sin();
    let s_lam = ((q[0] - p[0]).to_radians() / 2.0).sin();
    (s_phi * s_phi + phi1.cos() * phi2.cos() * s_lam * s_lam).min(1.0)
}

/// Great-circle distance, metres.
pub fn distance_m(p: Position, q: Position) -> f64 {
    2.0 * EARTH_RADIUS_M * hav(p, q).sqrt().asin()
}

/// Longitude difference wrapped into -180..=180.
fn wrap_lon(d: f64) -> f64 {
    if d > 180.0 {
        d - 360.0
    } else if d < -180.0 {
        d + 360.0
    } else {
        d
    }
}

/// [`hav`] from `p` to the point of segment `ab` nearest to it in a plane
/// scaled at `p`'s latitude (see the module doc for the error).
fn segment_hav(p: Position, a: Position, b: Position) -> f64 {
    segment_hav_point(p, a, b).0
}

pub(crate) fn segment_hav_point(p: Position, a: Position, b: Position) -> (f64, Position) {
    let k = p[1].to_radians().cos();
    // Shift the segment whole by 360° so its middle is the near side of
    // `p`: across the meridian the segment keeps its own shape.
    let mid = (a[0] + b[0]) / 2.0 - p[0];
    let shift = wrap_lon(mid) - mid;
    let (ax, ay) = ((a[0] + shift - p[0]) * k, a[1] - p[1]);
    let (dx, dy) = ((b[0] - a[0]) * k, b[1] - a[1]);
    let len2 = dx * dx + dy * dy;
    let t = if len2 > 0.0 {
        (-(ax * dx + ay * dy) / len2).clamp(0.0, 1.0)
    } else {
        0.0
    };
    let q = [a[0] + t * (b[0] - a[0]), a[1] + t * (b[1] - a[1])];
    (hav(p, q), q)
}

/// Pushes the box `b` (`[min_lon, min_lat, max_lon, max_lat]`) grown by
/// `m` metres on every side, split in two where it crosses ±180°.
fn push_expanded(out: &mut Vec<(AABB<Position>, u32)>, part: u32, b: [f64; 4], m: f64) {
    // Central angle, with a hair of margin so rounding never loses a
    // point on the edge (the exact test follows anyway).
    let delta = m / EARTH_RADIUS_M * (1.0 + 1e-9) + 1e-12;
    let dlat = delta.to_degrees();
    let (lat_lo, lat_hi) = (b[1] - dlat, b[3] + dlat);
    let far = b[1].abs().max(b[3].abs()).to_radians();
    let (lat_lo, lat_hi) = (lat_lo.max(-90.0), lat_hi.min(90.0));
    if lat_lo <= -90.0 || lat_hi >= 90.0 || far + delta >= std::f64::consts::FRAC_PI_2 {
        // A pole is (nearly) inside: every longitude.
        out.push((AABB::from_corners([-180.0, lat_lo], [180.0, lat_hi]), part));
        return;
    }
    // Widest longitude reach of a cap of radius `delta` at latitude `far`.
    let dlon = (delta.sin() / far.cos()).min(1.0).asin().to_degrees() * (1.0 + 1e-9);
    let (lon_lo, lon_hi) = (b[0] - dlon, b[2] + dlon);
    if lon_hi - lon_lo >= 360.0 {
        out.push((AABB::from_corners([-180.0, lat_lo], [180.0, lat_hi]), part));
    } else if lon_lo < -180.0 {
        out.push((
            AABB::from_corners([lon_lo + 360.0, lat_lo], [180.0, lat_hi]),
            part,
        ));
        out.push((AABB::from_corners([-180.0, lat_lo], [lon_hi, lat_hi]), part));
    } else if lon_hi > 180.0 {
        out.push((AABB::from_corners([lon_lo, lat_lo], [180.0, lat_hi]), part));
        out.push((
            AABB::from_corners([-180.0, lat_lo], [lon_hi - 360.0, lat_hi]),
            part,
        ));
    } else {
        out.push((AABB::from_corners([lon_lo, lat_lo], [lon_hi, lat_hi]), part));
    }
}

#[cfg(test)]
mod tests;
