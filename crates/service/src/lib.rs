//! What the Fieldcast service binaries share, so that the bridge and the
//! gateway name their stores with the same flags and stop the same way.
//!
//! - [`StoreArgs`]: `FIELDCAST_REDIS_URL`, `FIELDCAST_REDIS_PREFIX`,
//!   `FIELDCAST_REDIS_PARTITIONS` and `FIELDCAST_DATABASE_URL`
//!   (PROTOCOL.md), flattened into each binary's clap configuration;
//! - [`shutdown_on_signal`]: one cancellation token for SIGTERM and SIGINT;
//!   [`stop_signals`]: two, for a drain the second signal cuts short;
//! - [`redis::builder`]: the one Redis client builder, with its retry
//!   settings;
//! - [`metric_set!`]: how each service declares its Prometheus metrics.

pub mod metrics;
pub mod pg;
pub mod redis;

use clap::Args;
use fieldcast_core::{Keys, Partitions, Topology};
use tokio_util::sync::CancellationToken;

/// Where the fleet's state lives. The bridge writes both stores; the
/// gateway reads both.
#[derive(Debug, Clone, PartialEq, Eq, Args)]
pub struct StoreArgs {
    /// Redis with the hot state, the live channel and the event log.
    #[arg(
        long,
        env = "FIELDCAST_REDIS_URL",
        default_value = "redis://127.0.0.1:6379"
    )]
    pub redis_url: String,

    /// Prefix of every Redis key and channel (several deployments can share one Redis).
    #[arg(long, env = "FIELDCAST_REDIS_PREFIX", default_value = "fieldcast:")]
    pub redis_prefix: String,

    /// Partitions of the Redis layout (docs/redis-layout.md): the same for
    /// every bridge and gateway of a deployment.
    #[arg(long, env = "FIELDCAST_REDIS_PARTITIONS", default_value_t = Partitions::DEFAULT,
          value_parser = clap::value_parser!(u16).range(1..=i64::from(Partitions::MAX)))]
    pub redis_partitions: u16,

    /// PostgreSQL with the history tables.
    #[arg(
        long,
        env = "FIELDCAST_DATABASE_URL",
        default_value = "postgres://postgres@127.0.0.1:5432/fieldcast"
    )]
    pub database_url: String,
}

/// Why a store address cannot be used; checked at start, before anything
/// connects.
#[derive(Debug, thiserror::Error)]
pub enum StoreArgsError {
    #[error("FIELDCAST_REDIS_URL is not a valid Redis URL: {0}")]
    RedisUrl(fred::error::Error),
    #[error("FIELDCAST_REDIS_URL must start with redis://, rediss://, redis-cluster:// or rediss-cluster://")]
    RedisScheme,
    #[error("FIELDCAST_DATABASE_URL is not a valid PostgreSQL URL: {0}")]
    DatabaseUrl(tokio_postgres::Error),
    #[error(transparent)]
    Prefix(#[from] fieldcast_core::keys::PrefixError),
    #[error(transparent)]
    Partitions(#[from] fieldcast_core::partition::PartitionsError),
}

impl StoreArgs {
    /// The stores at these addresses, with the default partition count.
    pub fn new(redis_url: &str, redis_prefix: &str, database_url: &str) -> Self {
        StoreArgs {
            redis_url: redis_url.to_owned(),
            redis_prefix: redis_prefix.to_owned(),
            redis_partitions: Partitions::DEFAULT,
            database_url: database_url.to_owned(),
        }
    }

    /// Parses both addresses as their clients will.
    pub fn validate(&self) -> Result<(), StoreArgsError> {
        // fred reads an unknown scheme as a plain Redis URL; say so instead.
        let scheme = self.redis_url.split("://").next().unwrap_or("");
        if !matches!(
            scheme,
            "redis" | "rediss" | "redis-cluster" | "rediss-cluster"
        ) {
            return Err(StoreArgsError::RedisScheme);
        }
        fred::types::config::Config::from_url(&self.redis_url).map_err(StoreArgsError::RedisUrl)?;
        self.database_url
            .parse::<tokio_postgres::Config>()
            .map_err(StoreArgsError::DatabaseUrl)?;
        Keys::check_prefix(&self.redis_prefix)?;
        Partitions::new(u64::from(self.redis_partitions))?;
        Ok(())
    }

    /// The Redis layout these flags name. Clap bounds the partition count;
    /// a value built by hand outside it is clamped into range here, and
    /// [`Self::validate`] refuses it.
    pub fn keys(&self) -> Keys {
        let count = self.redis_partitions.clamp(1, Partitions::MAX);
        let partitions = Partitions::new(u64::from(count)).unwrap_or_default();
        Keys::new(
            &self.redis_prefix,
            partitions,
            Topology::of_url(&self.redis_url),
        )
    }
}

/// A token cancelled on the first SIGTERM or SIGINT (Ctrl-C where Unix
/// signals cannot be installed). Must be called inside a Tokio runtime.
/// The waiting task also ends if the token is cancelled some other way.
pub fn shutdown_on_signal() -> CancellationToken {
    let shutdown = CancellationToken::new();
    let token = shutdown.clone();
    tokio::spawn(async move {
        let mut signals = Signals::install();
        tokio::select! {
            () = signals.recv() => {
                tracing::info!("shutting down");
                token.cancel();
            }
            () = token.cancelled() => {}
        }
    });
    shutdown
}

/// A stop in two steps, for a service that drains before it stops.
#[derive(Debug, Clone, Default)]
pub struct StopSignals {
    /// Cancelled on the first SIGTERM or SIGINT: begin the drain.
    pub first: CancellationToken,
    /// Cancelled on a later one: an operator who will not wait for the
    /// drain. Cancelling it by hand also ends the task that waits for the
    /// signals (the service does so once it has stopped).
    pub again: CancellationToken,
}

/// [`StopSignals`], with the task that cancels them. Must be called inside
/// a Tokio runtime.
pub fn stop_signals() -> StopSignals {
    let stop = StopSignals::default();
    let StopSignals { first, again } = stop.clone();
    tokio::spawn(async move {
        let mut signals = Signals::install();
        tokio::select! {
            () = signals.recv() => {}
            () = again.cancelled() => return,
        }
        tracing::info!("shutting down (a second SIGTERM or SIGINT stops at once)");
        first.cancel();
        tokio::select! {
            () = signals.recv() => {
                tracing::info!("second signal: stopping now");
                again.cancel();
            }
            () = again.cancelled() => {}
        }
    });
    stop
}

/// SIGTERM and SIGINT, installed once so that none is missed between two
/// waits; Ctrl-C alone where Unix signals cannot be installed.
struct Signals {
    unix: Option<(tokio::signal::unix::Signal, tokio::signal::unix::Signal)>,
}

impl Signals {
    fn install() -> Signals {
        use tokio::signal::unix::{signal, SignalKind};
        let unix = match (
            signal(SignalKind::terminate()),
            signal(SignalKind::interrupt()),
        ) {
            (Ok(term), Ok(int)) => Some((term, int)),
            _ => None,
        };
        Signals { unix }
    }

    async fn recv(&mut self) {
        match &mut self.unix {
            Some((term, int)) => {
                tokio::select! {
                    _ = term.recv() => {}
                    _ = int.recv() => {}
                }
            }
            None => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        store: StoreArgs,
    }

    #[test]
    fn defaults_and_flags() {
        let d = Cli::try_parse_from(["x"]).map(|c| c.store);
        assert_eq!(
            d.as_ref().map(|s| s.redis_prefix.as_str()).ok(),
            Some("fieldcast:")
        );
        let c = Cli::try_parse_from(["x", "--redis-url", "redis://h:1", "--redis-prefix", "p:"])
            .map(|c| c.store);
        assert_eq!(
            c.map(|s| (s.redis_url, s.redis_prefix)).ok(),
            Some(("redis://h:1".to_owned(), "p:".to_owned()))
        );
    }

    #[test]
    fn store_addresses_are_checked_as_their_clients_parse_them() {
        let store = |redis: &str, db: &str| StoreArgs::new(redis, "p:", db);
        assert!(store("redis://127.0.0.1:6379", "postgres://u@h/db")
            .validate()
            .is_ok());
        assert!(store("rediss://h:1", "host=/run/postgresql dbname=x")
            .validate()
            .is_ok());
        assert!(matches!(
            store("http://h", "postgres://u@h/db").validate(),
            Err(StoreArgsError::RedisScheme)
        ));
        assert!(matches!(
            store("redis://h:port", "postgres://u@h/db").validate(),
            Err(StoreArgsError::RedisUrl(_))
        ));
        assert!(matches!(
            store("redis://h", "postgres://u@h:notaport/db").validate(),
            Err(StoreArgsError::DatabaseUrl(_))
        ));
        let mut braces = store("redis://h", "postgres://u@h/db");
        braces.redis_prefix = "p{1}:".into();
        assert!(matches!(braces.validate(), Err(StoreArgsError::Prefix(_))));
        let mut zero = store("redis://h", "postgres://u@h/db");
        zero.redis_partitions = 0;
        assert!(matches!(
            zero.validate(),
            Err(StoreArgsError::Partitions(_))
        ));
    }

    #[test]
    fn partitions_are_bounded_by_the_flag() {
        let p = |v: &str| Cli::try_parse_from(["x", "--redis-partitions", v]).map(|c| c.store);
        assert_eq!(p("8").map(|s| s.keys().partitions().count()).ok(), Some(8));
        assert!(p("0").is_err());
        assert!(p("1025").is_err());
        let d = Cli::try_parse_from(["x"]).map(|c| c.store.redis_partitions);
        assert_eq!(d.ok(), Some(64));
    }
}
