//! Why a GeoJSON Feature is not a fence.
//!
//! Every error names the field it is about, as a path into the Feature
//! (`geometry.coordinates[0][3]`, `properties.schedule.days[1]`), so an HTTP
//! 400 can carry [`FenceError`]'s `Display` as is and the client knows what
//! to fix.

use std::fmt;

/// A rejected fence: the field and what is wrong with it.
#[derive(Debug, Clone, PartialEq)]
pub struct FenceError {
    field: String,
    problem: Problem,
}

/// What is wrong with a field. Limits are in the messages so the client
/// need not read our docs to fix its input.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum Problem {
    #[error("is not valid JSON: {0}")]
    Json(String),
    #[error("is required")]
    Missing,
    #[error("is not a known field")]
    Unknown,
    #[error("must be {0}")]
    Type(&'static str),
    #[error("must be \"Feature\"")]
    NotFeature,
    #[error(
        "geometry type {0:?} is not supported (Polygon, Point with radius, LineString with width)"
    )]
    Geometry(String),
    #[error("must be [lon, lat] with finite lon within -180..180 and lat within -90..90")]
    Position,
    #[error("a ring needs at least 4 positions (first = last), got {0}")]
    RingTooShort(usize),
    #[error("ring is not closed: its last position must equal its first")]
    RingNotClosed,
    #[error("repeats the previous position")]
    Repeated,
    #[error("edges {0} and {1} cross or touch: the ring intersects itself")]
    SelfIntersection(usize, usize),
    #[error("crosses or touches ring {0}")]
    RingsIntersect(usize),
    #[error("hole is not inside the outer ring")]
    HoleOutside,
    #[error("hole is inside hole {0}")]
    HoleInHole(usize),
    #[error("a line needs at least 2 positions, got {0}")]
    LineTooShort(usize),
    #[error(
        "edge spans more than 180° of longitude: fences across the 180° meridian are not \
         supported, split it there (RFC 7946 §3.1.9)"
    )]
    Antimeridian,
    #[error("has {0} positions, more than the limit of {max}", max = crate::MAX_VERTICES)]
    TooManyVertices(usize),
    #[error("must be a number of metres greater than 0 and at most {0}")]
    Metres(f64),
    #[error("must be {0}")]
    Text(&'static str),
    #[error("must be one of info, warning, critical")]
    Severity,
    #[error("must be one of mon, tue, wed, thu, fri, sat, sun")]
    Day,
    #[error("names a day twice")]
    DuplicateDay,
    #[error("must be a time \"HH:MM\" from 00:00 to 24:00")]
    Time,
    #[error("must be \"Z\", \"UTC\" or an offset \"+HH:MM\" / \"-HH:MM\" up to 14:00")]
    Offset,
    #[error("from and to are equal: the window would be empty (omit both for all day)")]
    EmptyWindow,
    #[error("from and to go together: give both or neither")]
    HalfWindow,
    #[error("{0}")]
    Webhook(fieldcast_core::webhook::WebhookProblem),
}

impl FenceError {
    pub(crate) fn new(field: impl Into<String>, problem: Problem) -> Self {
        FenceError {
            field: field.into(),
            problem,
        }
    }

    /// The path of the offending field in the Feature (`""` for the whole
    /// document).
    pub fn field(&self) -> &str {
        &self.field
    }

    pub fn problem(&self) -> &Problem {
        &self.problem
    }
}

impl fmt::Display for FenceError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.field.is_empty() {
            write!(f, "the fence {}", self.problem)
        } else {
            write!(f, "{} {}", self.field, self.problem)
        }
    }
}

impl std::error::Error for FenceError {}
