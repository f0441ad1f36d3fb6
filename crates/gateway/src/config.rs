//! The gateway's one typed configuration: every option a CLI flag with an
//! environment fallback (PROTOCOL.md §1), parsed into `SocketAddr`,
//! `Duration` and `NonZero*` at start so a bad value fails there, never later.

use std::net::SocketAddr;
use std::num::{NonZeroU32, NonZeroUsize};
use std::time::Duration;

use clap::{Parser, ValueEnum};
use fieldcast_service::StoreArgs;

/// How `/ws` and `/api/*` authenticate their callers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum AuthMode {
    /// HS256 JWTs signed with `FIELDCAST_JWT_SECRET` (PROTOCOL.md §4).
    Jwt,
    /// No authentication: every caller sees everything and may publish.
    /// For local development only.
    None,
}

/// `fieldcast-gateway`: WebSocket push, HTTP history API and live map page.
#[derive(Debug, Clone, Parser)]
#[command(name = "fieldcast-gateway", version, about, long_about = None)]
pub struct Config {
    /// Address to listen on for HTTP and WebSocket.
    #[arg(long, env = "FIELDCAST_LISTEN", default_value = "127.0.0.1:8080")]
    pub listen: SocketAddr,

    #[command(flatten)]
    pub store: StoreArgs,

    /// HS256 secret for client tokens. Required unless `--auth none`.
    #[arg(long, env = "FIELDCAST_JWT_SECRET", hide_env_values = true)]
    pub jwt_secret: Option<String>,

    /// Authentication mode: `jwt` (default) or `none` (development only).
    #[arg(long, env = "FIELDCAST_AUTH", value_enum, default_value = "jwt")]
    pub auth: AuthMode,

    /// Comma-separated list of Origins allowed to open `/ws` (exact match,
    /// e.g. `https://dispatch.example.com`). Empty: any Origin.
    #[arg(long, env = "FIELDCAST_ALLOWED_ORIGINS", value_delimiter = ',')]
    pub allowed_origins: Vec<String>,

    /// Live updates buffered between Redis and the hub (fred preallocates
    /// it: about 600 bytes a slot). A burst longer than this forces a
    /// resync of every client.
    #[arg(long, env = "FIELDCAST_FEED_BUFFER", default_value = "65536")]
    pub feed_buffer: NonZeroUsize,

    /// Map page: an XYZ tile URL template
    /// (`https://tiles.example/{z}/{x}/{y}.png`), passed to the page as it
    /// is, or the path of a local MBTiles or PMTiles v3 archive (a value
    /// without `://` and `{z}`, or ending in `.mbtiles`/`.pmtiles`), which
    /// the gateway serves at `/tiles/{z}/{x}/{y}`; none = a plain
    /// background with a graticule.
    #[arg(long, env = "FIELDCAST_MAP_TILES")]
    pub map_tiles: Option<String>,

    /// Map page: attribution text shown with the tiles.
    #[arg(long, env = "FIELDCAST_MAP_ATTRIBUTION")]
    pub map_attribution: Option<String>,

    /// Map page: a device silent this long is drawn as stale.
    #[arg(long, env = "FIELDCAST_MAP_STALE", default_value = "2m", value_parser = parse_duration)]
    pub map_stale: Duration,

    /// Per-connection send queue, in messages. Locations coalesce per device
    /// once it is full; events that still back up close the socket (4008).
    #[arg(long, env = "FIELDCAST_WS_QUEUE", default_value = "1024")]
    pub ws_queue: NonZeroUsize,

    /// Kernel send buffer of each client socket, in bytes (`SO_SNDBUF`; 0
    /// leaves it to the kernel's autotuning, up to 4 MiB on Linux). Kept
    /// modest so that a stalled client backs up into its own queue, where
    /// locations coalesce, instead of into megabytes of stale frames in the
    /// kernel. 256 KiB still moves ~2.5 MB/s to a client 100 ms away. At
    /// most 64 MiB; Linux caps it at `net.core.wmem_max`, then doubles it.
    #[arg(long, env = "FIELDCAST_WS_SEND_BUFFER", default_value = "262144")]
    pub ws_send_buffer: usize,

    /// Most frames a client may send within one second; more closes with 1008.
    #[arg(long, env = "FIELDCAST_WS_RATE_LIMIT", default_value = "200")]
    pub ws_rate_limit: NonZeroU32,

    /// Largest frame a client may send, in bytes.
    #[arg(long, env = "FIELDCAST_WS_MAX_FRAME", default_value = "65536")]
    pub ws_max_frame: NonZeroUsize,

    /// Most device ids plus channels one connection may subscribe to.
    #[arg(long, env = "FIELDCAST_WS_MAX_SUBSCRIPTIONS", default_value = "10000")]
    pub ws_max_subscriptions: NonZeroUsize,

    /// A connection silent this long gets a ping; silent twice as long is dropped.
    #[arg(long, env = "FIELDCAST_WS_PING_INTERVAL", default_value = "30s", value_parser = parse_duration)]
    pub ws_ping_interval: Duration,

    /// After SIGTERM or SIGINT, how long the gateway keeps serving while
    /// `/readyz` answers 503, so that a load balancer takes it out of
    /// rotation before its WebSockets close with 1001 (their viewers
    /// reconnect elsewhere and resume with `since`). Keep it above the
    /// balancer's check interval x fall (deploy/haproxy.cfg: 1s x 2, plus
    /// a 2s check timeout: 5s). 0 (the default: no balancer to leave, and
    /// PROTOCOL.md's stop stays immediate) = no drain; a second signal ends
    /// it at once.
    #[arg(long, env = "FIELDCAST_DRAIN_GRACE", default_value = "0s", value_parser = parse_duration)]
    pub drain_grace: Duration,

    /// How long shutdown waits for sockets to take their 1001 close.
    #[arg(long, env = "FIELDCAST_SHUTDOWN_GRACE", default_value = "5s", value_parser = parse_duration)]
    pub shutdown_grace: Duration,

    /// PostgreSQL connections in the pool.
    #[arg(long, env = "FIELDCAST_DATABASE_POOL", default_value = "16")]
    pub database_pool: NonZeroUsize,

    /// Queued frames one connection may hold, in bytes (snapshots
    /// included). Past it the same policy as `FIELDCAST_WS_QUEUE` applies:
    /// locations coalesce, then the connection is closed with 4008.
    #[arg(long, env = "FIELDCAST_WS_QUEUE_BYTES", default_value = "16777216")]
    pub ws_queue_bytes: NonZeroUsize,

    /// Devices per snapshot frame: a larger snapshot is sent as several
    /// frames, all but the last with `"more":true`.
    #[arg(long, env = "FIELDCAST_SNAPSHOT_FRAME_DEVICES", default_value = "1000")]
    pub snapshot_frame_devices: NonZeroUsize,

    /// Snapshots one gateway builds at once; more subscribes wait their
    /// turn (a Redis blip makes every connection resync at the same time).
    #[arg(long, env = "FIELDCAST_SNAPSHOT_CONCURRENCY", default_value = "4")]
    pub snapshot_concurrency: NonZeroUsize,

    /// Longest a history query may run in PostgreSQL (`statement_timeout`).
    #[arg(long, env = "FIELDCAST_HISTORY_TIMEOUT", default_value = "30s", value_parser = parse_duration)]
    pub history_timeout: Duration,

    /// Longest a history response may wait for a client to take the next
    /// part; a reader that stalls longer is cut and its connection freed.
    #[arg(long, env = "FIELDCAST_HISTORY_SEND_TIMEOUT", default_value = "10s", value_parser = parse_duration)]
    pub history_send_timeout: Duration,

    /// History requests one gateway serves at once; more get 429. Kept
    /// below `FIELDCAST_DATABASE_POOL` so live paths keep a connection.
    #[arg(long, env = "FIELDCAST_HISTORY_CONCURRENCY", default_value = "12")]
    pub history_concurrency: NonZeroUsize,

    /// Largest `POST /api/publish` body, in bytes; larger gets 413.
    #[arg(long, env = "FIELDCAST_PUBLISH_MAX_BYTES", default_value = "65536")]
    pub publish_max_bytes: NonZeroUsize,
}

/// A configuration that parses but cannot run.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("FIELDCAST_JWT_SECRET is required (or pass --auth none)")]
    MissingJwtSecret,
    #[error(transparent)]
    Store(#[from] fieldcast_service::StoreArgsError),
    #[error("FIELDCAST_WS_PING_INTERVAL must be at least 1s")]
    PingInterval,
    #[error("FIELDCAST_WS_SEND_BUFFER must be at most 64 MiB (0 = kernel autotuning)")]
    SendBuffer,
    /// A local tile archive that cannot be opened or is not valid.
    #[error("FIELDCAST_MAP_TILES: {0}")]
    MapTiles(String),
}

impl Config {
    /// Checks what clap cannot: the secret's presence and the URLs.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.auth == AuthMode::Jwt && self.jwt_secret.as_deref().is_none_or(str::is_empty) {
            return Err(ConfigError::MissingJwtSecret);
        }
        self.store.validate()?;
        if self.ws_ping_interval < Duration::from_secs(1) {
            return Err(ConfigError::PingInterval);
        }
        if self.ws_send_buffer > 64 << 20 {
            return Err(ConfigError::SendBuffer);
        }
        // Opened once here to check it (cheap: a header and a directory, or
        // SQLite's schema), so a bad archive fails before anything starts.
        if let Some(path) = self
            .map_tiles
            .as_deref()
            .and_then(crate::store::tiles::archive_path)
        {
            crate::store::tiles::TileSource::open(&path)
                .map_err(|e| ConfigError::MapTiles(format!("{e:#}")))?;
        }
        Ok(())
    }

    /// A configuration with every default, for tests and embedding; `auth`
    /// is `none` so it validates without a secret, and there is no drain
    /// (a test's stop is immediate).
    pub fn for_tests(redis_url: &str, redis_prefix: &str, database_url: &str) -> Self {
        let mut c = Config::parse_from(["fieldcast-gateway", "--auth", "none"]);
        c.drain_grace = Duration::ZERO;
        c.store.redis_url = redis_url.to_owned();
        c.store.redis_prefix = redis_prefix.to_owned();
        c.store.database_url = database_url.to_owned();
        c
    }
}

fn parse_duration(s: &str) -> Result<Duration, humantime::DurationError> {
    humantime::parse_duration(s)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn jwt_mode_needs_a_secret() {
        let c = Config::try_parse_from(["g"]).unwrap();
        assert!(matches!(c.validate(), Err(ConfigError::MissingJwtSecret)));
        let c = Config::try_parse_from(["g", "--jwt-secret", "s"]).unwrap();
        assert!(c.validate().is_ok());
        let c = Config::try_parse_from(["g", "--auth", "none"]).unwrap();
        assert!(c.validate().is_ok());
    }

    #[test]
    fn bad_values_are_errors() {
        assert!(Config::try_parse_from(["g", "--listen", "nowhere"]).is_err());
        assert!(Config::try_parse_from(["g", "--ws-ping-interval", "soon"]).is_err());
        assert!(Config::try_parse_from(["g", "--ws-queue", "0"]).is_err());
        let c =
            Config::try_parse_from(["g", "--auth", "none", "--database-url", "mysql:x"]).unwrap();
        assert!(matches!(c.validate(), Err(ConfigError::Store(_))));
        let c = Config::try_parse_from(["g", "--auth", "none", "--redis-url", "http://x"]).unwrap();
        assert!(matches!(c.validate(), Err(ConfigError::Store(_))));
        let c = Config::try_parse_from(["g", "--auth", "none", "--ws-send-buffer", "1000000000"])
            .unwrap();
        assert!(matches!(c.validate(), Err(ConfigError::SendBuffer)));
    }

    #[test]
    fn map_tiles_is_a_url_template_or_an_archive_that_opens() {
        let with = |v: &str| {
            Config::try_parse_from(["g", "--auth", "none", "--map-tiles", v])
                .unwrap()
                .validate()
        };
        assert!(with("https://tile.example/{z}/{x}/{y}.png").is_ok());
        let e = with("/nonexistent/site.mbtiles").unwrap_err().to_string();
        assert!(
            e.starts_with("FIELDCAST_MAP_TILES: ") && e.contains("/nonexistent/site.mbtiles"),
            "{e}"
        );
    }
}
