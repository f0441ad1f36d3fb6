//! What the Fieldcast service binaries share, so that the bridge and the
//! gateway name their stores with the same flags and stop the same way.
//!
//! - [`StoreArgs`]: `FIELDCAST_REDIS_URL`, `FIELDCAST_REDIS_PREFIX` and
//!   `FIELDCAST_DATABASE_URL` (PROTOCOL.md), flattened into each binary's
//!   clap configuration;
//! - [`shutdown_on_signal`]: one cancellation token for SIGTERM and SIGINT;
//! - [`redis::builder`]: the one Redis client builder, with its retry
//!   settings.

pub mod redis;

use clap::Args;
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

    /// PostgreSQL with the history tables.
    #[arg(
        long,
        env = "FIELDCAST_DATABASE_URL",
        default_value = "postgres://postgres@127.0.0.1:5432/fieldcast"
    )]
    pub database_url: String,
}

/// A token cancelled on the first SIGTERM or SIGINT (Ctrl-C where Unix
/// signals cannot be installed). Must be called inside a Tokio runtime.
/// The waiting task also ends if the token is cancelled some other way.
pub fn shutdown_on_signal() -> CancellationToken {
    let shutdown = CancellationToken::new();
    let token = shutdown.clone();
    tokio::spawn(async move {
        tokio::select! {
            () = wait_for_signal() => {
                tracing::info!("shutting down");
                token.cancel();
            }
            () = token.cancelled() => {}
        }
    });
    shutdown
}

async fn wait_for_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    match (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) {
        (Ok(mut term), Ok(mut int)) => {
            tokio::select! {
                _ = term.recv() => {}
                _ = int.recv() => {}
            }
        }
        _ => {
            let _ = tokio::signal::ctrl_c().await;
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
}
