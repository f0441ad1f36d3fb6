//! The gateway's readers of the stores the bridge writes: [`redis`] (hot
//! state, GEO, the event log; the key layout is `fieldcast_core::Keys`) and
//! [`history`] (PostgreSQL, for the HTTP API), and [`tiles`], the local
//! map-tile archive the page may use.

pub mod history;
pub mod redis;
pub mod tiles;
