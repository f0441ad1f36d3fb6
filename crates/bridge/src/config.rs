//! The bridge's one typed configuration: every option is a flag with an
//! environment-variable fallback (PROTOCOL.md §1), parsed into durations,
//! addresses and sizes at start, so a bad value fails there with a clear
//! message instead of later.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use fieldcast_mqtt::MqttArgs;
use fieldcast_service::StoreArgs;

#[derive(clap::Parser, Debug, Clone)]
#[command(
    name = "fieldcast-bridge",
    version,
    about = "MQTT -> bounded queue -> Redis hot state + pub/sub, PostgreSQL history"
)]
pub struct Config {
    /// None: run the bridge.
    #[command(subcommand)]
    pub command: Option<Command>,

    #[command(flatten)]
    pub mqtt: MqttArgs,

    /// MQTT client id; keep it stable so the broker keeps the session (and the
    /// QoS 1 messages queued while the bridge was away).
    #[arg(
        long,
        env = "FIELDCAST_MQTT_CLIENT_ID",
        default_value = "fieldcast-bridge"
    )]
    pub mqtt_client_id: String,

    /// Subscribe as $share/<group>/devices/... so several bridges split the load.
    #[arg(long, env = "FIELDCAST_MQTT_SHARED_GROUP")]
    pub mqtt_shared_group: Option<String>,

    /// Largest MQTT packet the bridge reads (bytes); bigger payloads than
    /// --max-payload but below this are rejected as `oversize`, not by
    /// dropping the connection.
    #[arg(long, env = "FIELDCAST_MQTT_MAX_PACKET", default_value_t = 1024 * 1024)]
    pub mqtt_max_packet: usize,

    /// MQTT keepalive interval.
    #[arg(long, env = "FIELDCAST_MQTT_KEEPALIVE", default_value = "30s", value_parser = parse_duration)]
    pub mqtt_keepalive: Duration,

    #[command(flatten)]
    pub nats: NatsArgs,

    #[command(flatten)]
    pub store: StoreArgs,

    #[command(flatten)]
    pub webhook: WebhookArgs,

    /// Location history batch interval (a full batch is written sooner).
    #[arg(long, env = "FIELDCAST_FLUSH_INTERVAL", default_value = "30s", value_parser = parse_duration)]
    pub flush_interval: Duration,

    /// Rows per history batch: a batch this full is written at once.
    #[arg(long, env = "FIELDCAST_BATCH_ROWS", default_value_t = 10_000, value_parser = parse_nonzero)]
    pub batch_rows: usize,

    /// Location rows held in memory while PostgreSQL is down before they
    /// are spilled to the spool on disk.
    #[arg(long, env = "FIELDCAST_HISTORY_MEMORY_ROWS", default_value_t = 200_000, value_parser = parse_nonzero)]
    pub history_memory_rows: usize,

    /// History retention: older location partitions are dropped and older
    /// timestamps rejected.
    #[arg(long, env = "FIELDCAST_RETENTION", default_value = "90d", value_parser = parse_duration)]
    pub retention: Duration,

    /// Address of /metrics, /healthz and /readyz.
    #[arg(long, env = "FIELDCAST_ADMIN_ADDR", default_value = "127.0.0.1:9464")]
    pub admin_addr: SocketAddr,

    /// Largest accepted payload (bytes).
    #[arg(long, env = "FIELDCAST_MAX_PAYLOAD", default_value_t = 16 * 1024, value_parser = parse_nonzero)]
    pub max_payload: usize,

    /// Capacity of the queue's reliable lane (status, events, QoS 1 acks).
    /// Keep it above the broker's max_inflight_messages for the bridge.
    #[arg(long, env = "FIELDCAST_QUEUE_CAPACITY", default_value_t = 10_000, value_parser = parse_nonzero)]
    pub queue_capacity: usize,

    /// Devices with a pending live location before the oldest is dropped
    /// from the live path (history still gets it).
    #[arg(long, env = "FIELDCAST_LIVE_CAPACITY", default_value_t = 100_000, value_parser = parse_nonzero)]
    pub live_capacity: usize,

    /// Messages written to Redis in one pipelined round trip.
    #[arg(long, env = "FIELDCAST_SINK_BATCH", default_value_t = 1_000, value_parser = parse_nonzero)]
    pub sink_batch: usize,

    /// Live-path batches in flight to Redis at once (locations only; the
    /// reliable lane keeps one, for ack order).
    #[arg(long, env = "FIELDCAST_SINK_WORKERS", default_value_t = 4, value_parser = parse_nonzero)]
    pub sink_workers: usize,

    /// Directory of the durable spool (events acknowledged while PostgreSQL
    /// is down, history spilled from memory).
    #[arg(long, env = "FIELDCAST_SPOOL_DIR", default_value = ".fieldcast/spool")]
    pub spool_dir: PathBuf,

    /// How long shutdown may take to flush the queue and the pending batch.
    #[arg(long, env = "FIELDCAST_SHUTDOWN_TIMEOUT", default_value = "30s", value_parser = parse_duration)]
    pub shutdown_timeout: Duration,
}

/// The JetStream source (docs/nats.md): used instead of MQTT when
/// `--nats-url` is given.
#[derive(clap::Args, Debug, Clone)]
pub struct NatsArgs {
    /// NATS servers, `nats://host:port[,nats://host:port...]`; when set the
    /// bridge consumes from JetStream instead of MQTT (the FIELDCAST_MQTT_*
    /// options are then unused).
    #[arg(id = "nats_url", long = "nats-url", env = "FIELDCAST_NATS_URL")]
    pub url: Option<String>,

    /// JetStream stream capturing `devices.>`; created if missing (3
    /// replicas on a cluster, 1 on a single node).
    #[arg(
        id = "nats_stream",
        long = "nats-stream",
        env = "FIELDCAST_NATS_STREAM",
        default_value = "FIELDCAST"
    )]
    pub stream: String,

    /// Durable pull consumer every bridge shares.
    #[arg(
        long = "nats-consumer",
        env = "FIELDCAST_NATS_CONSUMER",
        default_value = "fieldcast-bridge"
    )]
    pub consumer: String,

    /// The consumer's max_ack_pending: messages delivered to all bridges
    /// together and not yet acknowledged (the backpressure bound).
    /// Default: --queue-capacity, the reliable lane's size.
    #[arg(id = "nats_max_ack_pending", long = "nats-max-ack-pending", env = "FIELDCAST_NATS_MAX_ACK_PENDING", value_parser = parse_nonzero)]
    pub max_ack_pending: Option<usize>,

    /// The consumer's ack_wait: a message not acknowledged this long after
    /// delivery is delivered again (to any bridge; stored idempotently).
    #[arg(id = "nats_ack_wait", long = "nats-ack-wait", env = "FIELDCAST_NATS_ACK_WAIT", default_value = "30s", value_parser = parse_duration)]
    pub ack_wait: Duration,

    /// Messages asked for in one pull request.
    #[arg(id = "nats_batch", long = "nats-batch", env = "FIELDCAST_NATS_BATCH", default_value_t = 256, value_parser = parse_nonzero)]
    pub batch: usize,
}

/// Webhook delivery from the outbox in PostgreSQL (docs/webhooks.md).
#[derive(clap::Args, Debug, Clone)]
pub struct WebhookArgs {
    /// A webhook still undelivered this long after its alert is given up
    /// (deleted, counted in fieldcast_bridge_webhook_failed_total).
    #[arg(id = "webhook_give_up", long = "webhook-give-up", env = "FIELDCAST_WEBHOOK_GIVE_UP", default_value = "24h", value_parser = parse_positive_duration)]
    pub give_up: Duration,

    /// One webhook POST, connecting included, fails after this.
    #[arg(id = "webhook_timeout", long = "webhook-timeout", env = "FIELDCAST_WEBHOOK_TIMEOUT", default_value = "10s", value_parser = parse_positive_duration)]
    pub timeout: Duration,

    /// Delay after a webhook's first failed attempt; it doubles with each
    /// further one up to --webhook-retry-max (each drawn from its upper half).
    #[arg(id = "webhook_retry_min", long = "webhook-retry-min", env = "FIELDCAST_WEBHOOK_RETRY_MIN", default_value = "5s", value_parser = parse_positive_duration)]
    pub retry_min: Duration,

    /// Longest delay between two attempts of one webhook.
    #[arg(id = "webhook_retry_max", long = "webhook-retry-max", env = "FIELDCAST_WEBHOOK_RETRY_MAX", default_value = "30m", value_parser = parse_positive_duration)]
    pub retry_max: Duration,
}

impl WebhookArgs {
    /// The sender's settings (a --webhook-retry-max below the min is the min).
    pub fn settings(&self) -> crate::webhook::Settings {
        crate::webhook::Settings::new(self.timeout, self.give_up, self.retry_min, self.retry_max)
    }
}

fn parse_positive_duration(s: &str) -> Result<Duration, String> {
    match parse_duration(s)? {
        d if d.is_zero() => Err(format!("{s:?} must be longer than zero")),
        d => Ok(d),
    }
}

/// One-shot jobs the bridge's binary runs instead of the bridge.
#[derive(clap::Subcommand, Debug, Clone)]
pub enum Command {
    /// Rebuild the partitioned Redis hot state from PostgreSQL or from the
    /// keys of the layout before partitions, through the bridge's own
    /// scripts, then exit (docs/redis-rebuild.md).
    RebuildRedis(crate::rebuild::RebuildArgs),
}

/// A configuration clap's types accept but the bridge cannot run with.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error(transparent)]
    Mqtt(#[from] fieldcast_mqtt::MqttConfigError),
    #[error("FIELDCAST_MQTT_SHARED_GROUP {0:?} must be a non-empty name without / + #")]
    SharedGroup(String),
    #[error("FIELDCAST_MQTT_MAX_PACKET must be at least FIELDCAST_MAX_PAYLOAD")]
    MaxPacket,
    #[error("FIELDCAST_RETENTION must be at least 1d")]
    Retention,
    #[error("FIELDCAST_FLUSH_INTERVAL must be positive")]
    FlushInterval,
    #[error(transparent)]
    Store(#[from] fieldcast_service::StoreArgsError),
    #[error("FIELDCAST_NATS_URL {0:?}: each server must be nats://host:port or tls://host:port")]
    NatsUrl(String),
    #[error("{0} {1:?} must be a non-empty name without spaces, '.', '*', '>', '/' or '\\'")]
    NatsName(&'static str, String),
}

impl Config {
    /// Checks what clap's types cannot express.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if let Some(url) = &self.nats.url {
            self.nats.validate(url)?;
        } else {
            self.validate_mqtt()?;
        }
        if self.retention < Duration::from_secs(24 * 3600) {
            return Err(ConfigError::Retention);
        }
        if self.flush_interval.is_zero() {
            return Err(ConfigError::FlushInterval);
        }
        self.store.validate()?;
        Ok(())
    }

    /// The JetStream consumer's max_ack_pending (see [`NatsArgs`]).
    pub fn nats_max_ack_pending(&self) -> usize {
        self.nats.max_ack_pending.unwrap_or(self.queue_capacity)
    }

    fn validate_mqtt(&self) -> Result<(), ConfigError> {
        fieldcast_mqtt::BrokerUrl::parse(&self.mqtt.url)?;
        if let Some(g) = &self.mqtt_shared_group {
            if g.is_empty() || g.contains(['/', '+', '#']) {
                return Err(ConfigError::SharedGroup(g.clone()));
            }
        }
        if self.mqtt_max_packet < self.max_payload {
            return Err(ConfigError::MaxPacket);
        }
        Ok(())
    }

    /// The payload validation limits this configuration implies.
    pub fn limits(&self) -> fieldcast_core::Limits {
        fieldcast_core::Limits {
            max_payload: self.max_payload,
            max_future_ms: 10 * 60 * 1000,
            max_age_ms: i64::try_from(self.retention.as_millis()).unwrap_or(i64::MAX),
        }
    }
}

impl NatsArgs {
    /// The servers of `--nats-url`, in order.
    pub fn servers(url: &str) -> impl Iterator<Item = &str> {
        url.split(',').map(str::trim).filter(|s| !s.is_empty())
    }

    fn validate(&self, url: &str) -> Result<(), ConfigError> {
        let mut any = false;
        for server in Self::servers(url) {
            any = true;
            let rest = server
                .strip_prefix("nats://")
                .or_else(|| server.strip_prefix("tls://"))
                .ok_or_else(|| ConfigError::NatsUrl(url.to_owned()))?;
            let host_port = rest.rsplit('@').next().unwrap_or(rest);
            match host_port.rsplit_once(':') {
                Some((host, port)) if !host.is_empty() && port.parse::<u16>().is_ok() => {}
                _ => return Err(ConfigError::NatsUrl(url.to_owned())),
            }
        }
        if !any {
            return Err(ConfigError::NatsUrl(url.to_owned()));
        }
        for (var, name) in [
            ("FIELDCAST_NATS_STREAM", &self.stream),
            ("FIELDCAST_NATS_CONSUMER", &self.consumer),
        ] {
            let bad = |c: char| c.is_whitespace() || matches!(c, '.' | '*' | '>' | '/' | '\\');
            if name.is_empty() || name.contains(bad) {
                return Err(ConfigError::NatsName(var, name.clone()));
            }
        }
        Ok(())
    }
}

/// Parses `30s`, `500ms`, `90d`, `1h 30m`.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    humantime::parse_duration(s)
        .map_err(|e| format!("{s:?} is not a duration like 30s or 90d: {e}"))
}

fn parse_nonzero(s: &str) -> Result<usize, String> {
    match s.parse::<usize>() {
        Ok(0) | Err(_) => Err(format!("{s:?} must be a positive integer")),
        Ok(n) => Ok(n),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[test]
    fn defaults_are_protocol_defaults() {
        let c = Config::try_parse_from(["fieldcast-bridge"]).unwrap();
        assert_eq!(c.mqtt.url, "mqtt://127.0.0.1:1883");
        assert_eq!(c.mqtt_client_id, "fieldcast-bridge");
        assert_eq!(c.store.redis_prefix, "fieldcast:");
        assert_eq!(c.flush_interval, Duration::from_secs(30));
        assert_eq!(c.retention, Duration::from_secs(90 * 86400));
        assert_eq!(c.admin_addr.to_string(), "127.0.0.1:9464");
        c.validate().unwrap();
        assert!(c.command.is_none(), "no subcommand: the bridge runs");
    }

    #[test]
    fn rebuild_redis_takes_the_store_flags() {
        let c = Config::try_parse_from([
            "fieldcast-bridge",
            "rebuild-redis",
            "--from",
            "old-keys",
            "--redis-prefix",
            "p:",
            "--redis-partitions",
            "8",
        ])
        .unwrap();
        let Some(Command::RebuildRedis(r)) = c.command else {
            panic!("a rebuild");
        };
        assert_eq!(r.from, crate::rebuild::SourceKind::OldKeys);
        assert_eq!(
            (r.store.redis_prefix.as_str(), r.store.redis_partitions),
            ("p:", 8)
        );
        assert!(Config::try_parse_from(["fieldcast-bridge", "rebuild-redis"]).is_err());
        assert!(Config::try_parse_from(["fieldcast-bridge", "rebuild"]).is_err());
    }

    #[test]
    fn bad_values_are_errors() {
        assert!(Config::try_parse_from(["b", "--flush-interval", "soon"]).is_err());
        assert!(Config::try_parse_from(["b", "--admin-addr", "nowhere"]).is_err());
        assert!(Config::try_parse_from(["b", "--queue-capacity", "0"]).is_err());
        let c = Config::try_parse_from(["b", "--mqtt-url", "http://x"]).unwrap();
        assert!(matches!(c.validate(), Err(ConfigError::Mqtt(_))));
        let c = Config::try_parse_from(["b", "--mqtt-shared-group", "a/b"]).unwrap();
        assert!(matches!(c.validate(), Err(ConfigError::SharedGroup(_))));
        let c = Config::try_parse_from(["b", "--retention", "12h"]).unwrap();
        assert!(matches!(c.validate(), Err(ConfigError::Retention)));
        let c = Config::try_parse_from(["b", "--redis-url", "http://x"]).unwrap();
        assert!(matches!(c.validate(), Err(ConfigError::Store(_))));
    }

    #[test]
    fn nats_settings() {
        let c = Config::try_parse_from(["b"]).unwrap();
        assert_eq!(c.nats.url, None, "MQTT unless FIELDCAST_NATS_URL is set");
        assert_eq!(c.nats.stream, "FIELDCAST");
        assert_eq!(c.nats.consumer, "fieldcast-bridge");
        assert_eq!(c.nats_max_ack_pending(), c.queue_capacity);
        let c = Config::try_parse_from([
            "b",
            "--nats-url",
            "nats://127.0.0.1:4222, nats://h2:4223",
            "--mqtt-url",
            "http://unused",
            "--queue-capacity",
            "50",
        ])
        .unwrap();
        c.validate().unwrap();
        assert_eq!(
            NatsArgs::servers(c.nats.url.as_deref().unwrap()).collect::<Vec<_>>(),
            ["nats://127.0.0.1:4222", "nats://h2:4223"]
        );
        assert_eq!(c.nats_max_ack_pending(), 50);
        for bad in [
            "",
            "127.0.0.1:4222",
            "nats://h",
            "mqtt://h:1883",
            "nats://h:1,x",
        ] {
            let c = Config::try_parse_from(["b", "--nats-url", bad]).unwrap();
            assert!(
                matches!(c.validate(), Err(ConfigError::NatsUrl(_))),
                "{bad:?}"
            );
        }
        let c = Config::try_parse_from(["b", "--nats-url", "nats://h:1", "--nats-stream", "a.b"])
            .unwrap();
        assert!(matches!(c.validate(), Err(ConfigError::NatsName(..))));
    }

    #[test]
    fn webhook_settings() {
        let c = Config::try_parse_from(["b"]).unwrap();
        assert_eq!(c.webhook.give_up, Duration::from_secs(24 * 3600));
        assert_eq!(c.webhook.timeout, Duration::from_secs(10));
        assert_eq!(c.webhook.retry_min, Duration::from_secs(5));
        assert_eq!(c.webhook.retry_max, Duration::from_secs(1800));
        let c = Config::try_parse_from([
            "b",
            "--webhook-give-up",
            "90m",
            "--webhook-timeout",
            "500ms",
        ])
        .unwrap();
        assert_eq!(c.webhook.settings().give_up, Duration::from_secs(5400));
        assert_eq!(c.webhook.settings().timeout, Duration::from_millis(500));
        assert!(Config::try_parse_from(["b", "--webhook-timeout", "0s"]).is_err());
        assert!(Config::try_parse_from(["b", "--webhook-give-up", "soon"]).is_err());
    }
}
