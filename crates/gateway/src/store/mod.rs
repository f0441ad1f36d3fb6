//! The gateway's readers of the stores the bridge writes: [`redis`] (hot
//! state, GEO, the event log; the key layout is `fieldcast_core::Keys`) and
//! [`history`] (PostgreSQL, for the HTTP API).

pub mod history;
pub mod redis;
