//! Fieldcast geofences, without I/O: GeoJSON fences in, the fences holding
//! a location out, and the enter/exit transitions that follow.
//!
//! - [`fence`]: a [`Fence`] parsed from / written to a GeoJSON Feature
//!   (polygon with holes, circle, corridor; name, groups, schedule,
//!   severity), every rule checked with a [`FenceError`] that names its
//!   field, fit for an HTTP 400.
//! - [`geometry`]: the shapes and exactly what "inside" means (boundary,
//!   poles, the 180° meridian).
//! - [`schedule`]: when a fence is active.
//! - [`index`]: [`FenceIndex`], an R-tree of the fences' boxes; one lookup
//!   per location.
//! - [`transition`]: enter/exit from two memberships, with deterministic
//!   event ids.
//!
//! Loading fences from PostgreSQL, the membership kept in Redis and the
//! atomic step that turns a newest location into events belong to the
//! bridge; `docs/geofences.md` lays out that design.

pub mod error;
pub mod fence;
pub mod geometry;
pub mod index;
mod json;
pub mod schedule;
pub mod transition;

pub use error::{FenceError, Problem};
pub use fence::{feature_collection, Fence, FenceId};
pub use geometry::Shape;
pub use index::FenceIndex;
pub use schedule::Schedule;
pub use transition::{transitions, Direction, Transition};

/// Most positions one fence may have (all rings of a polygon together).
/// Validation is O(n log n) and a lookup O(n) in the fence's vertices, so
/// this bounds both; 10 000 draws a country's border at ~100 m detail.
pub const MAX_VERTICES: usize = 10_000;
