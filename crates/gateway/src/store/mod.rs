//! The gateway's readers of the stores the bridge writes: [`redis`] (hot
//! state, GEO, the event log; the key layout is `fieldcast_core::Keys`),
//! [`history`] (PostgreSQL, for the HTTP API), [`config`] (geofences and
//! alert rules in PostgreSQL, which the gateway also writes), [`groups`]
//! (device groups in PostgreSQL, written here and copied into the hub), and
//! [`tiles`], the local map-tile archive the page may use.

pub mod config;
pub mod groups;
pub mod history;
pub mod redis;
pub mod tiles;
