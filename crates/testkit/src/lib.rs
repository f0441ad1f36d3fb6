//! Test support for Fieldcast's integration tests: real services on free
//! loopback ports, started and killed by the test that owns them.
//!
//! Two kinds of service, two kinds of test:
//!
//! - **Shared services** (PostgreSQL, Redis, Mosquitto already running on the
//!   machine) for tests that only need one to be there. Isolate by name, not
//!   by process: [`PgDb`] gives each test a fresh database, [`unique`] a key
//!   prefix or MQTT client id no other test uses. The `shared_*_url`
//!   functions say where they are (overridable through the environment).
//! - **Private services** for fault tests, which must kill what they use:
//!   [`Mosquitto`], [`MosquittoTls`] and [`RedisServer`] start their own
//!   process on a free port; [`TcpProxy`] stands in front of a shared service
//!   so a test can cut it off without stopping it for everyone else.
//!
//! Every process is killed when its handle drops, panic included. Nothing here
//! is meant for production code: errors are `anyhow`, with context.
//!
//! Modules: `util` (ports, names, [`wait_until`]) · `process` (spawn, wait
//! for the port, kill) · `mosquitto` · `redis` · `postgres` · `proxy`.

#[cfg(feature = "chain")]
pub mod chain;
mod mosquitto;
mod postgres;
mod process;
mod proxy;
mod redis;
mod util;

pub use mosquitto::{Mosquitto, MosquittoTls};
pub use postgres::PgDb;
pub use proxy::TcpProxy;
pub use redis::RedisServer;
pub use util::{free_port, unique, wait_until};

/// The shared broker: `FIELDCAST_TEST_MQTT_URL`, else `mqtt://127.0.0.1:1883`.
pub fn shared_mqtt_url() -> String {
    env_or("FIELDCAST_TEST_MQTT_URL", "mqtt://127.0.0.1:1883")
}

/// The shared Redis: `FIELDCAST_TEST_REDIS_URL`, else `redis://127.0.0.1:6379`.
pub fn shared_redis_url() -> String {
    env_or("FIELDCAST_TEST_REDIS_URL", "redis://127.0.0.1:6379")
}

/// A superuser connection to the shared PostgreSQL server, used to create and
/// drop test databases: `FIELDCAST_TEST_PG_URL`, else
/// `postgres://postgres@127.0.0.1:5432/postgres`.
pub fn pg_admin_url() -> String {
    env_or(
        "FIELDCAST_TEST_PG_URL",
        "postgres://postgres@127.0.0.1:5432/postgres",
    )
}

fn env_or(var: &str, default: &str) -> String {
    match std::env::var(var) {
        Ok(v) if !v.trim().is_empty() => v,
        _ => default.to_owned(),
    }
}
