//! The clients of the bridge's stores. The loops that use them are in
//! [`crate::sink`]; what they carry is in [`crate::record`].
//!
//! - [`redis`]: the hot state, live channel, event log and dead letters,
//!   each batch in one pipeline of Lua scripts.
//! - [`postgres`]: the history tables (binary COPY for locations).
//! - [`spool`]: the fsync'd local spool while PostgreSQL is down.
//! - [`schema`]: migrations, daily partitions, retention.

pub mod postgres;
pub mod redis;
pub mod schema;
pub mod spool;
