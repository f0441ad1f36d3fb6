//! Shared setup for the bridge's integration tests: a bridge in this
//! process against the real broker, Redis and PostgreSQL, with its own
//! database, key prefix, client id and spool directory.

#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use clap::Parser;
use fred::prelude::*;
use rumqttc::{AsyncClient, EventLoop, MqttOptions, QoS};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use fieldcast_bridge::Handles;
use fieldcast_testkit::{unique, wait_until, PgDb};
use fred::clients::SubscriberClient;
use fred::types::config::Config as RedisConfig;

pub const WAIT: Duration = Duration::from_secs(20);

pub struct Harness {
    /// A private broker: the bridge subscribes to every device topic, so a
    /// shared one would mix in other tests' devices.
    pub broker: Option<fieldcast_testkit::Mosquitto>,
    pub db: PgDb,
    pub prefix: String,
    pub client_id: String,
    pub spool: tempfile::TempDir,
    pub redis: Client,
    pub mqtt_url: String,
    pub redis_url: String,
    pub extra: Vec<String>,
}

pub struct Running {
    pub handles: Handles,
    pub shutdown: CancellationToken,
    pub done: JoinHandle<anyhow::Result<()>>,
}

impl Running {
    pub async fn stop(self) {
        self.shutdown.cancel();
        self.done
            .await
            .expect("bridge task")
            .expect("bridge shut down cleanly");
    }
}

impl Harness {
    /// A harness with its own broker.
    pub async fn private() -> Harness {
        let broker = fieldcast_testkit::Mosquitto::start()
            .await
            .expect("private mosquitto");
        let mut h = Self::with_redis(&broker.url, &fieldcast_testkit::shared_redis_url()).await;
        h.broker = Some(broker);
        h
    }

    pub async fn with_redis(mqtt_url: &str, redis_url: &str) -> Harness {
        let redis = Builder::from_config(
            RedisConfig::from_url(&fieldcast_testkit::shared_redis_url()).unwrap(),
        )
        .build()
        .unwrap();
        redis.init().await.expect("shared redis");
        Harness {
            broker: None,
            db: PgDb::create().await.expect("test database"),
            prefix: format!("{}:", unique("fc")),
            client_id: unique("bridge"),
            spool: tempfile::tempdir().unwrap(),
            redis,
            mqtt_url: mqtt_url.to_owned(),
            redis_url: redis_url.to_owned(),
            extra: Vec::new(),
        }
    }

    pub fn args(&self, database_url: &str) -> Vec<String> {
        let mut a: Vec<String> = [
            "fieldcast-bridge",
            "--mqtt-url",
            &self.mqtt_url,
            "--mqtt-client-id",
            &self.client_id,
            "--redis-url",
            &self.redis_url,
            "--redis-prefix",
            &self.prefix,
            "--database-url",
            database_url,
            "--admin-addr",
            "127.0.0.1:0",
            "--flush-interval",
            "300ms",
            "--spool-dir",
            // One spool per bridge identity: a restarted bridge finds its own.
            &self.spool.path().join(&self.client_id).to_string_lossy(),
            "--shutdown-timeout",
            "10s",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        a.extend(self.extra.iter().cloned());
        a
    }

    pub async fn start(&self) -> Running {
        self.start_with_db(&self.db.url.clone()).await
    }

    pub async fn start_with_db(&self, database_url: &str) -> Running {
        let config =
            fieldcast_bridge::Config::try_parse_from(self.args(database_url)).expect("config");
        let shutdown = CancellationToken::new();
        let (handles, done) = fieldcast_bridge::start(config, shutdown.clone())
            .await
            .expect("bridge starts");
        let done = tokio::spawn(done);
        let h = &handles;
        wait_until(WAIT, "bridge ready", || async move { h.health.ready() })
            .await
            .expect("bridge becomes ready");
        Running {
            handles,
            shutdown,
            done,
        }
    }

    pub fn key(&self, k: &str) -> String {
        format!("{}{k}", self.prefix)
    }

    pub async fn state(&self, device: &str) -> std::collections::HashMap<String, String> {
        self.redis
            .hgetall(self.key(&format!("dev:{device}")))
            .await
            .unwrap()
    }

    pub async fn count(&self, sql: &str) -> i64 {
        let c = self.db.client().await.unwrap();
        c.query_one(sql, &[]).await.unwrap().get(0)
    }

    pub async fn wait_count(&self, sql: &str, want: i64) {
        let r = wait_until(WAIT, sql, || async { self.count(sql).await == want }).await;
        assert!(
            r.is_ok(),
            "{sql}: wanted {want}, have {}",
            self.count(sql).await
        );
    }
}

/// A device-side MQTT client whose event loop runs in the background.
pub struct Device {
    pub client: AsyncClient,
    task: JoinHandle<()>,
}

impl Drop for Device {
    fn drop(&mut self) {
        self.task.abort();
    }
}

pub async fn device_with(opts: MqttOptions) -> Device {
    let (client, eventloop) = AsyncClient::new(opts, 1000);
    let (tx, rx) = tokio::sync::oneshot::channel();
    let task = tokio::spawn(drive(eventloop, Some(tx)));
    tokio::time::timeout(WAIT, rx)
        .await
        .expect("device connects")
        .ok();
    Device { client, task }
}

pub async fn device(mqtt_url: &str) -> Device {
    let u = fieldcast_mqtt::BrokerUrl::parse(mqtt_url).unwrap();
    let mut opts = MqttOptions::new(unique("dev"), u.host, u.port);
    opts.set_keep_alive(Duration::from_secs(30));
    opts.set_max_packet_size(2 * 1024 * 1024, 2 * 1024 * 1024);
    device_with(opts).await
}

async fn drive(mut el: EventLoop, mut connected: Option<tokio::sync::oneshot::Sender<()>>) {
    loop {
        match el.poll().await {
            Ok(rumqttc::Event::Incoming(rumqttc::Packet::ConnAck(_))) => {
                if let Some(tx) = connected.take() {
                    let _ = tx.send(());
                }
            }
            Ok(_) => {}
            Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    }
}

impl Device {
    pub async fn publish(&self, topic: &str, qos: QoS, retain: bool, payload: impl Into<Vec<u8>>) {
        self.client
            .publish(topic, qos, retain, payload)
            .await
            .unwrap();
    }
}

/// A plain Redis subscriber on `<prefix>live`, collecting message texts.
pub async fn live_subscriber(
    prefix: &str,
) -> (SubscriberClient, tokio::sync::mpsc::Receiver<String>) {
    let sub = Builder::from_config(
        RedisConfig::from_url(&fieldcast_testkit::shared_redis_url()).unwrap(),
    )
    .build_subscriber_client()
    .unwrap();
    sub.init().await.unwrap();
    let (tx, rx) = tokio::sync::mpsc::channel(10_000);
    let mut stream = sub.message_rx();
    tokio::spawn(async move {
        while let Ok(m) = stream.recv().await {
            let Some(s) = m.value.as_string() else {
                continue;
            };
            // One update, or a batch of them as a JSON array.
            let items = match serde_json::from_str::<Vec<Box<serde_json::value::RawValue>>>(&s) {
                Ok(batch) => batch.into_iter().map(|r| r.get().to_owned()).collect(),
                Err(_) => vec![s],
            };
            for item in items {
                if tx.send(item).await.is_err() {
                    return;
                }
            }
        }
    });
    sub.subscribe(format!("{prefix}live")).await.unwrap();
    (sub, rx)
}

pub async fn next_msg(rx: &mut tokio::sync::mpsc::Receiver<String>) -> serde_json::Value {
    let s = tokio::time::timeout(WAIT, rx.recv())
        .await
        .expect("a live message")
        .expect("open");
    serde_json::from_str(&s).unwrap()
}

/// GET over plain HTTP/1.0, returning (status, body).
pub async fn http_get(addr: std::net::SocketAddr, path: &str) -> (u16, String) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    s.write_all(format!("GET {path} HTTP/1.0\r\nHost: x\r\n\r\n").as_bytes())
        .await
        .unwrap();
    let mut buf = String::new();
    s.read_to_string(&mut buf).await.unwrap();
    let code = buf
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let body = buf
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or_default();
    (code, body)
}

/// The value of one sample line of a Prometheus text page.
pub fn metric(text: &str, series: &str) -> f64 {
    text.lines()
        .find_map(|l| l.strip_prefix(series).and_then(|r| r.strip_prefix(' ')))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0.0)
}

pub fn now_ms() -> i64 {
    fieldcast_core::time::now_ms()
}
