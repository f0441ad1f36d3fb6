//! Pure computations over a device's history, fed row by row from a
//! PostgreSQL portal so that a month of 1 Hz fixes never sits in memory:
//! [`trips`] (trips and stops) and [`simplify`] (Douglas–Peucker in
//! bounded windows). No I/O; the handlers in [`crate::http::reports`] and
//! [`crate::http::api`] feed them.

pub mod simplify;
pub mod trips;
