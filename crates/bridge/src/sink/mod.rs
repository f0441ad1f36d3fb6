//! The sinks, fed by the queue.
//!
//! - [`live`]: two tasks. One takes live locations and dead letters to
//!   Redis in one pipeline per batch. The other takes the reliable lane:
//!   events and status reports are stored durably (PostgreSQL, or the
//!   fsync'd spool while it is down), then go to Redis in one pipeline,
//!   then the QoS 1 messages are acknowledged in order.
//! - [`history`]: the location batcher (binary COPY every flush interval or
//!   when a batch is full) and the spool replayer.
//! - [`redis`], [`postgres`]: the two stores.

pub mod history;
pub mod live;
pub mod postgres;
pub mod redis;
