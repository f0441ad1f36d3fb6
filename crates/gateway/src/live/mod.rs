//! The live path, from Redis to each connection: the [`feed`] task reads
//! the bridge's pub/sub channels, the [`hub`] finds each update's
//! receivers, and each connection's [`outbox`] queues its frames (bounded
//! in bytes) for the socket writer in [`crate::ws`].

pub mod feed;
pub mod groups;
pub mod hub;
pub mod kind;
pub mod outbox;
pub mod sent;
