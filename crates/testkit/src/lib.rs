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
//!   [`Mosquitto`], [`MosquittoTls`], [`NatsServer`] and [`RedisServer`] start their own
//!   process on a free port; [`RedisCluster`] starts a whole Redis Cluster
//!   (primaries, replicas where a test needs failover) and can kill a
//!   primary, wait for its replica to take over, and bring it back;
//!   [`NatsCluster`] three NATS nodes with JetStream and MQTT;
//!   [`TcpProxy`] stands in front of a shared service so a test can cut it
//!   off without stopping it for everyone else; [`HaProxy`] runs the
//!   shipped `deploy/haproxy.cfg` in front of a test's gateways.
//!
//! Every process is killed when its handle drops, panic included. Nothing here
//! is meant for production code: errors are `anyhow`, with context.
//!
//! Modules: `util` (ports, names, [`wait_until`]) · `process` (spawn, wait
//! for the port, kill) · `mosquitto` · `nats` · `redis` · `redis_cluster`
//! (with `health` and `view`, what the nodes say) · `postgres` · `proxy` ·
//! `haproxy`.

#[cfg(feature = "chain")]
pub mod chain;
mod haproxy;
mod mosquitto;
mod nats;
mod postgres;
mod process;
mod proxy;
mod redis;
mod redis_cluster;
mod util;

pub use haproxy::{HaProxy, ServerStat};
pub use mosquitto::{Mosquitto, MosquittoTls};
pub use nats::{NatsCluster, NatsServer};
pub use postgres::PgDb;
pub use proxy::TcpProxy;
pub use redis::{delete_prefix, PrefixGuard, RedisServer};
pub use redis_cluster::{RedisCluster, NODE_TIMEOUT_MS};
pub use util::{free_port, init_tracing, unique, wait_until};

/// The shared broker: `FIELDCAST_TEST_MQTT_URL`, else `mqtt://127.0.0.1:1883`.
pub fn shared_mqtt_url() -> String {
    env_or("FIELDCAST_TEST_MQTT_URL", "mqtt://127.0.0.1:1883")
}

/// Which broker the bridge's broker-relevant integration tests run on:
/// `FIELDCAST_TEST_BROKER=nats` puts the bridge on a private single-node
/// NATS (JetStream, devices on its MQTT listener); anything else, or
/// unset, on a private Mosquitto.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TestBroker {
    Mosquitto,
    Nats,
}

impl TestBroker {
    pub fn from_env() -> TestBroker {
        match std::env::var("FIELDCAST_TEST_BROKER") {
            Ok(v) if v.trim().eq_ignore_ascii_case("nats") => TestBroker::Nats,
            _ => TestBroker::Mosquitto,
        }
    }
}

/// The shared Redis: `FIELDCAST_TEST_REDIS_URL`, else `redis://127.0.0.1:6379`.
pub fn shared_redis_url() -> String {
    env_or("FIELDCAST_TEST_REDIS_URL", "redis://127.0.0.1:6379")
}

/// An admin connection (superuser, or a role with CREATEDB) to the shared
/// PostgreSQL server, used to create and drop test databases, found in the
/// order `scripts/lib.sh` resolves it:
///
/// 1. `FIELDCAST_TEST_PG_URL` (`scripts/test.sh` sets it from that
///    resolution);
/// 2. `FIELDCAST_PG_ADMIN_URL=` in `$XDG_CONFIG_HOME/fieldcast/pg.env`
///    (default `~/.config/fieldcast/pg.env`), where the scripts keep the
///    `fieldcast` role's generated password when PostgreSQL asks for one on
///    127.0.0.1, as Debian's and Ubuntu's packages do;
/// 3. `postgres://postgres@127.0.0.1:5432/postgres` (trust authentication,
///    as on CI).
pub fn pg_admin_url() -> String {
    const TRUST: &str = "postgres://postgres@127.0.0.1:5432/postgres";
    match std::env::var("FIELDCAST_TEST_PG_URL") {
        Ok(v) if !v.trim().is_empty() => v,
        _ => pg_env_file()
            .and_then(|path| std::fs::read_to_string(path).ok())
            .and_then(|text| admin_url_in(&text))
            .unwrap_or_else(|| TRUST.to_owned()),
    }
}

/// Where the scripts keep the PostgreSQL login they made.
fn pg_env_file() -> Option<std::path::PathBuf> {
    let config = match std::env::var_os("XDG_CONFIG_HOME") {
        Some(dir) if !dir.is_empty() => std::path::PathBuf::from(dir),
        _ => std::path::PathBuf::from(std::env::var_os("HOME")?).join(".config"),
    };
    Some(config.join("fieldcast/pg.env"))
}

/// The URL of the last non-empty `FIELDCAST_PG_ADMIN_URL=` line of a
/// `pg.env` file's text.
fn admin_url_in(text: &str) -> Option<String> {
    text.lines().rev().find_map(|line| {
        let url = line.trim().strip_prefix("FIELDCAST_PG_ADMIN_URL=")?.trim();
        (!url.is_empty()).then(|| url.to_owned())
    })
}

fn env_or(var: &str, default: &str) -> String {
    match std::env::var(var) {
        Ok(v) if !v.trim().is_empty() => v,
        _ => default.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::admin_url_in;

    #[test]
    fn pg_env_file_gives_its_admin_url() {
        let text = "# Written by scripts/lib.sh\n\
                    FIELDCAST_PG_ADMIN_URL=postgres://fieldcast:ab12@127.0.0.1:5432/postgres\n\
                    PGUSER=fieldcast\n";
        assert_eq!(
            admin_url_in(text).as_deref(),
            Some("postgres://fieldcast:ab12@127.0.0.1:5432/postgres")
        );
        assert_eq!(
            admin_url_in("PGUSER=fieldcast\nFIELDCAST_PG_ADMIN_URL=\n"),
            None
        );
    }
}
