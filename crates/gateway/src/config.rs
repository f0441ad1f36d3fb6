//! The gateway's one typed configuration: every option a CLI flag with an
//! environment fallback (PROTOCOL.md §1), parsed into `SocketAddr`,
//! `Duration` and `NonZero*` at start so a bad value fails there, never later.

use std::net::SocketAddr;
use std::num::{NonZeroU32, NonZeroUsize};
use std::path::PathBuf;
use std::time::Duration;

use clap::{Parser, Subcommand, ValueEnum};
use fieldcast_service::StoreArgs;

/// How `/ws` and `/api/*` authenticate their callers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum AuthMode {
    /// HS256 JWTs signed with `FIELDCAST_JWT_SECRET` (PROTOCOL.md §4),
    /// and RS256/ES256 ones when a public key or JWKS is configured.
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
    // Global, so `fieldcast-gateway token --jwt-secret ...` reads too.
    #[arg(
        long,
        env = "FIELDCAST_JWT_SECRET",
        hide_env_values = true,
        global = true
    )]
    pub jwt_secret: Option<String>,

    /// PEM public key (RSA or EC P-256) that verifies RS256 or ES256
    /// tokens, besides the HS256 secret.
    #[arg(long, env = "FIELDCAST_JWT_PUBLIC_KEY")]
    pub jwt_public_key: Option<PathBuf>,

    /// An identity provider's JWKS URL: its RS256/ES256 keys verify
    /// tokens, chosen by `kid`; fetched at start and refreshed in the
    /// background.
    #[arg(long, env = "FIELDCAST_JWT_JWKS_URL")]
    pub jwt_jwks_url: Option<String>,

    /// How often the JWKS is fetched again.
    #[arg(long, env = "FIELDCAST_JWT_JWKS_REFRESH", default_value = "10m", value_parser = parse_duration)]
    pub jwt_jwks_refresh: Duration,

    /// Least time between two JWKS fetches caused by tokens with an
    /// unknown `kid` (a key rotation, or made-up kids).
    #[arg(long, env = "FIELDCAST_JWT_JWKS_MIN_INTERVAL", default_value = "30s", value_parser = parse_duration)]
    pub jwt_jwks_min_interval: Duration,

    /// Required `iss` of RS256/ES256 tokens (HS256 ones are not checked).
    #[arg(long, env = "FIELDCAST_JWT_ISSUER")]
    pub jwt_issuer: Option<String>,

    /// Required `aud` of RS256/ES256 tokens (HS256 ones are not checked).
    #[arg(long, env = "FIELDCAST_JWT_AUDIENCE")]
    pub jwt_audience: Option<String>,

    /// Map page: where a viewer without a token is sent to get one (an
    /// `http(s)://` URL or a path on this host); the login page sends the
    /// viewer back with `#token=<JWT>`.
    #[arg(long, env = "FIELDCAST_LOGIN_URL")]
    pub login_url: Option<String>,

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

    /// How long a connection's writer waits, once a frame is queued on an
    /// idle connection, for more to write with it: one socket write (and
    /// one wake-up of the client) for all of them. 0 (the default) writes
    /// at once; a few ms cut the gateway's CPU per delivery when clients
    /// get many frames a second (docs/benchmarks.md) at that much latency.
    /// At most 1s.
    #[arg(long, env = "FIELDCAST_WS_WRITE_DELAY", default_value = "0s", value_parser = parse_duration)]
    pub ws_write_delay: Duration,

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

    /// Without a command, the gateway runs.
    #[command(subcommand)]
    pub command: Option<Command>,
}

/// What `fieldcast-gateway <command>` does instead of serving.
#[derive(Debug, Clone, Subcommand)]
pub enum Command {
    /// Print an HS256 token signed with FIELDCAST_JWT_SECRET.
    Token(crate::token::TokenArgs),
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
    #[error("FIELDCAST_WS_WRITE_DELAY must be at most 1s")]
    WriteDelay,
    /// A local tile archive that cannot be opened or is not valid.
    #[error("FIELDCAST_MAP_TILES: {0}")]
    MapTiles(String),
    #[error("FIELDCAST_JWT_PUBLIC_KEY {path}: {reason}")]
    PublicKey { path: String, reason: String },
    #[error("FIELDCAST_JWT_JWKS_URL must be an http:// or https:// URL")]
    JwksUrl,
    #[error("FIELDCAST_JWT_JWKS_REFRESH must be at least 1s")]
    JwksRefresh,
    #[error("FIELDCAST_LOGIN_URL must be an http:// or https:// URL or a path starting with /")]
    LoginUrl,
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
        if self.ws_write_delay > Duration::from_secs(1) {
            return Err(ConfigError::WriteDelay);
        }
        self.validate_token_keys()?;
        if let Some(url) = self.login_url.as_deref() {
            // The page navigates to it: a `javascript:` or `data:` URL
            // would run in the map's origin.
            let url = url.trim();
            let path = url.starts_with('/') && !url.starts_with("//");
            if !(path || is_http_url(url)) {
                return Err(ConfigError::LoginUrl);
            }
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

    fn validate_token_keys(&self) -> Result<(), ConfigError> {
        self.public_key()?;
        if let Some(url) = self.jwt_jwks_url.as_deref() {
            if !is_http_url(url.trim()) {
                return Err(ConfigError::JwksUrl);
            }
        }
        if self.jwt_jwks_refresh < Duration::from_secs(1) {
            return Err(ConfigError::JwksRefresh);
        }
        Ok(())
    }

    /// `FIELDCAST_JWT_PUBLIC_KEY`, read and parsed; `None` when unset.
    pub fn public_key(&self) -> Result<Option<crate::keys::VerifyingKey>, ConfigError> {
        let Some(path) = &self.jwt_public_key else {
            return Ok(None);
        };
        let bad = |reason: String| ConfigError::PublicKey {
            path: path.display().to_string(),
            reason,
        };
        let pem = std::fs::read_to_string(path).map_err(|e| bad(e.to_string()))?;
        crate::keys::pem::parse(&pem).map(Some).map_err(bad)
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

pub(crate) fn parse_duration(s: &str) -> Result<Duration, humantime::DurationError> {
    humantime::parse_duration(s)
}

fn is_http_url(url: &str) -> bool {
    reqwest::Url::parse(url)
        .is_ok_and(|u| matches!(u.scheme(), "http" | "https") && u.host_str().is_some())
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
        let c = Config::try_parse_from(["g", "--auth", "none", "--ws-write-delay", "2s"]).unwrap();
        assert!(matches!(c.validate(), Err(ConfigError::WriteDelay)));
        let c = Config::try_parse_from(["g", "--auth", "none", "--ws-write-delay", "2ms"]).unwrap();
        assert_eq!(c.ws_write_delay, Duration::from_millis(2));
        assert!(c.validate().is_ok());
    }

    #[test]
    fn token_key_sources_are_checked_at_start() {
        let with = |args: &[&str]| {
            let mut all = vec!["g", "--jwt-secret", "s"];
            all.extend(args);
            Config::try_parse_from(all).unwrap().validate()
        };
        assert!(with(&["--jwt-jwks-url", "https://idp.example/jwks.json"]).is_ok());
        assert!(matches!(
            with(&["--jwt-jwks-url", "file:///etc/passwd"]),
            Err(ConfigError::JwksUrl)
        ));
        let e = with(&["--jwt-public-key", "/nonexistent.pem"]).unwrap_err();
        assert!(
            e.to_string()
                .starts_with("FIELDCAST_JWT_PUBLIC_KEY /nonexistent.pem: "),
            "{e}"
        );
        assert!(with(&["--login-url", "https://sso.example/login"]).is_ok());
        assert!(with(&["--login-url", "/login"]).is_ok());
        for bad in ["javascript:alert(1)", "//evil.example/x", "login"] {
            assert!(
                matches!(with(&["--login-url", bad]), Err(ConfigError::LoginUrl)),
                "{bad}"
            );
        }
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
