//! Shared setup for the bridge's integration tests: a bridge in this
//! process against the real broker, Redis and PostgreSQL, with its own
//! database, key prefix, client id and spool directory.

#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

pub mod endpoint;

use std::process::{Child, Command, Stdio};
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

/// `--nats-ack-wait` of a harness's bridge on NATS.
pub const NATS_ACK_WAIT: &str = "3s";

pub struct Harness {
    /// A private broker: the bridge subscribes to every device topic, so a
    /// shared one would mix in other tests' devices.
    pub broker: Option<fieldcast_testkit::Mosquitto>,
    /// Or a private NATS (`FIELDCAST_TEST_BROKER=nats`, or a NATS test):
    /// devices publish to its MQTT listener ([`Harness::mqtt_url`]), the
    /// bridge reads JetStream at [`Harness::nats_url`].
    pub nats: Option<fieldcast_testkit::NatsServer>,
    /// When set, the bridge gets `--nats-url` (and reads no MQTT).
    pub nats_url: Option<String>,
    pub db: PgDb,
    pub prefix: String,
    pub client_id: String,
    pub spool: tempfile::TempDir,
    pub redis: Client,
    pub mqtt_url: String,
    pub redis_url: String,
    pub extra: Vec<String>,
    /// The keys under `prefix` go when the test ends (shared Redis only).
    _keys: Option<fieldcast_testkit::PrefixGuard>,
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
    /// A harness with its own broker: Mosquitto, or a single-node NATS
    /// when `FIELDCAST_TEST_BROKER=nats` (the tests that run on both call
    /// this or [`Harness::private_with_redis`]).
    pub async fn private() -> Harness {
        Self::private_with_redis(&fieldcast_testkit::shared_redis_url()).await
    }

    /// [`Harness::private`] with the bridge on `redis_url` (the harness's
    /// client stays on the shared Redis).
    pub async fn private_with_redis(redis_url: &str) -> Harness {
        match fieldcast_testkit::TestBroker::from_env() {
            fieldcast_testkit::TestBroker::Mosquitto => {
                let broker = fieldcast_testkit::Mosquitto::start()
                    .await
                    .expect("private mosquitto");
                let mut h = Self::with_redis(&broker.url, redis_url).await;
                h.broker = Some(broker);
                h
            }
            fieldcast_testkit::TestBroker::Nats => Self::private_nats(redis_url).await,
        }
    }

    /// A harness on its own single-node NATS, whatever the environment
    /// says.
    pub async fn private_nats(redis_url: &str) -> Harness {
        let nats = fieldcast_testkit::NatsServer::start()
            .await
            .expect("private nats-server");
        let mut h = Self::with_redis(&nats.mqtt_url, redis_url).await;
        h.nats_url = Some(nats.url.clone());
        h.nats = Some(nats);
        h
    }

    /// Whether the bridge reads JetStream.
    pub fn on_nats(&self) -> bool {
        self.nats_url.is_some()
    }

    /// SIGKILLs the harness's private broker, whichever it is.
    pub fn kill_broker(&mut self) {
        match (&mut self.broker, &mut self.nats) {
            (Some(m), _) => m.kill(),
            (None, Some(n)) => n.kill(),
            (None, None) => panic!("the harness has no private broker"),
        }
    }

    /// Starts the harness's private broker again on its ports.
    pub async fn restart_broker(&mut self) {
        match (&mut self.broker, &mut self.nats) {
            (Some(m), _) => m.restart().await.unwrap(),
            (None, Some(n)) => n.restart().await.unwrap(),
            (None, None) => panic!("the harness has no private broker"),
        }
    }

    /// The bridge's counter of lost broker connections.
    pub fn reconnects_metric(&self) -> &'static str {
        if self.on_nats() {
            "fieldcast_bridge_nats_reconnects_total"
        } else {
            "fieldcast_bridge_mqtt_reconnects_total"
        }
    }

    /// A harness with its own broker, for a bridge on the Redis (or Redis
    /// Cluster) at `redis_url`, a test's private one; its client
    /// [`Harness::redis`] and its [`Harness::keys`] are that Redis's too.
    pub async fn private_on(redis_url: &str) -> Harness {
        let broker = fieldcast_testkit::Mosquitto::start()
            .await
            .expect("private mosquitto");
        let mut h = Self::build(&broker.url, redis_url, redis_url).await;
        h.broker = Some(broker);
        h
    }

    /// A bridge on `redis_url`; the harness's own client [`Harness::redis`]
    /// is on the shared Redis.
    pub async fn with_redis(mqtt_url: &str, redis_url: &str) -> Harness {
        Self::build(mqtt_url, redis_url, &fieldcast_testkit::shared_redis_url()).await
    }

    /// The bridge on `redis_url`, the harness's client on `client_url`.
    async fn build(mqtt_url: &str, redis_url: &str, client_url: &str) -> Harness {
        let redis = Builder::from_config(RedisConfig::from_url(client_url).unwrap())
            .build()
            .unwrap();
        redis.init().await.expect("harness redis client connects");
        let prefix = format!("{}:", unique("fc"));
        Harness {
            _keys: (redis_url == fieldcast_testkit::shared_redis_url())
                .then(|| fieldcast_testkit::PrefixGuard::new(redis_url, &prefix)),
            broker: None,
            nats: None,
            nats_url: None,
            db: PgDb::create().await.expect("test database"),
            prefix,
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
            &self.spool_dir().to_string_lossy(),
            "--shutdown-timeout",
            "10s",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        if let Some(url) = &self.nats_url {
            // A short ack_wait: a killed bridge's messages come back
            // within the tests' patience (the default is 30 s).
            a.extend(["--nats-url", url, "--nats-ack-wait", NATS_ACK_WAIT].map(String::from));
        }
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

    /// The bridge's `--spool-dir`: one spool per bridge identity, so a
    /// restarted bridge finds its own.
    pub fn spool_dir(&self) -> std::path::PathBuf {
        self.spool.path().join(&self.client_id)
    }

    pub fn key(&self, k: &str) -> String {
        format!("{}{k}", self.prefix)
    }

    /// The bridge's Redis layout (default partition count), with the live
    /// channels of its Redis URL's topology (the keys are the same on both).
    pub fn keys(&self) -> fieldcast_core::Keys {
        fieldcast_core::Keys::new(
            &self.prefix,
            fieldcast_core::Partitions::default(),
            fieldcast_core::Topology::of_url(&self.redis_url),
        )
    }

    /// How many devices have a hot state, over every partition.
    pub async fn fleet_size(&self) -> i64 {
        let mut n = 0;
        for part in self.keys().all() {
            n += self.redis.scard::<i64, _>(&part.devices).await.unwrap_or(0);
        }
        n
    }

    /// Entries in the event logs of every partition together, as `client`
    /// (a Redis other than the harness's, say) holds them.
    pub async fn event_log_len(&self, client: &Client) -> i64 {
        let mut n = 0;
        for part in self.keys().all() {
            n += client.xlen::<i64, _>(&part.events).await.unwrap_or(0);
        }
        n
    }

    /// The device's hash, its packed `loc` also read into the fields it
    /// packs (`add_location_fields`).
    pub async fn state(&self, device: &str) -> std::collections::HashMap<String, String> {
        let mut h = self
            .redis
            .hgetall(self.keys().device(device))
            .await
            .unwrap();
        fieldcast_core::live::add_location_fields(&mut h);
        h
    }

    /// Waits until the device's hash has `field` = `ts` (`ts` for its
    /// location, `sts` for its status).
    pub async fn wait_field(&self, device: &str, field: &str, ts: i64) {
        let want = ts.to_string();
        let r = wait_until(WAIT, "hot state moves", || async {
            self.state(device).await.get(field) == Some(&want)
        })
        .await;
        assert!(
            r.is_ok(),
            "state of {device}: {:?}",
            self.state(device).await
        );
    }

    /// Waits until every partition's transitions stream is empty: every
    /// membership change and tripped alert has become its events.
    pub async fn wait_transitions_drained(&self) {
        let keys = self.keys();
        let r = wait_until(WAIT, "transitions drained", || async {
            for p in keys.all() {
                if self.redis.xlen::<i64, _>(&p.transitions).await.unwrap_or(0) > 0 {
                    return false;
                }
            }
            true
        })
        .await;
        assert!(r.is_ok(), "entries left in the transitions streams");
    }

    /// The entries of `device`'s partition event log that are its events
    /// and contain `needle`.
    pub async fn logged_events(&self, device: &str, needle: &str) -> Vec<String> {
        let keys = self.keys();
        let (_, part) = keys.of(device);
        let entries: Vec<(String, std::collections::HashMap<String, String>)> = self
            .redis
            .xrange(&part.events, "-", "+", None)
            .await
            .unwrap();
        entries
            .into_iter()
            .flat_map(|(_, f)| f.into_values())
            .filter(|v| v.contains(needle) && v.contains(device))
            .collect()
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
    device_driven(opts, None).await
}

/// A device whose PUBACKs (from the broker) arrive on the returned
/// channel, one packet id each, in the order the broker sent them.
pub async fn device_with_acks(
    opts: MqttOptions,
) -> (Device, tokio::sync::mpsc::UnboundedReceiver<u16>) {
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    (device_driven(opts, Some(tx)).await, rx)
}

/// Options for a plain device on `mqtt_url` (what [`device`] uses).
pub fn device_options(mqtt_url: &str) -> MqttOptions {
    let u = fieldcast_mqtt::BrokerUrl::parse(mqtt_url).unwrap();
    let mut opts = MqttOptions::new(unique("dev"), u.host, u.port);
    opts.set_keep_alive(Duration::from_secs(30));
    opts.set_max_packet_size(2 * 1024 * 1024, 2 * 1024 * 1024);
    opts
}

async fn device_driven(
    opts: MqttOptions,
    acks: Option<tokio::sync::mpsc::UnboundedSender<u16>>,
) -> Device {
    let (client, eventloop) = AsyncClient::new(opts, 1000);
    let (tx, rx) = tokio::sync::oneshot::channel();
    let task = tokio::spawn(drive(eventloop, Some(tx), acks));
    tokio::time::timeout(WAIT, rx)
        .await
        .expect("device connects")
        .ok();
    Device { client, task }
}

pub async fn device(mqtt_url: &str) -> Device {
    device_with(device_options(mqtt_url)).await
}

async fn drive(
    mut el: EventLoop,
    mut connected: Option<tokio::sync::oneshot::Sender<()>>,
    acks: Option<tokio::sync::mpsc::UnboundedSender<u16>>,
) {
    loop {
        match el.poll().await {
            Ok(rumqttc::Event::Incoming(rumqttc::Packet::ConnAck(_))) => {
                if let Some(tx) = connected.take() {
                    let _ = tx.send(());
                }
            }
            Ok(rumqttc::Event::Incoming(rumqttc::Packet::PubAck(a))) => {
                if let Some(tx) = &acks {
                    let _ = tx.send(a.pkid);
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

    /// Publishes at QoS 1 and waits for the broker's PUBACK on `acks` (from
    /// [`device_with_acks`]); `false` if none came within [`WAIT`]. Call it
    /// for one message at a time, so the ack that comes is this one's.
    pub async fn publish_acked(
        &self,
        acks: &mut tokio::sync::mpsc::UnboundedReceiver<u16>,
        topic: &str,
        payload: impl Into<Vec<u8>>,
    ) -> bool {
        self.publish(topic, QoS::AtLeastOnce, false, payload).await;
        matches!(tokio::time::timeout(WAIT, acks.recv()).await, Ok(Some(_)))
    }
}

/// A client of the Redis at `url`, connected.
pub async fn redis_client(url: &str) -> Client {
    let c = Builder::from_config(RedisConfig::from_url(url).unwrap())
        .build()
        .unwrap();
    c.init().await.expect("redis client connects");
    c
}

/// A plain Redis subscriber on `<prefix>live`, collecting message texts.
pub async fn live_subscriber(
    prefix: &str,
) -> (SubscriberClient, tokio::sync::mpsc::Receiver<String>) {
    live_subscriber_at(&fieldcast_testkit::shared_redis_url(), prefix).await
}

/// [`live_subscriber`] on the Redis at `redis_url`.
pub async fn live_subscriber_at(
    redis_url: &str,
    prefix: &str,
) -> (SubscriberClient, tokio::sync::mpsc::Receiver<String>) {
    // fred hands messages over through a broadcast channel (32 by default)
    // that drops the oldest for a receiver that lags: a burst (a replay of
    // hundreds of events) would overflow it.
    let sub = Builder::from_config(RedisConfig::from_url(redis_url).unwrap())
        .with_performance_config(|p| p.broadcast_channel_capacity = 100_000)
        .build_subscriber_client()
        .unwrap();
    sub.init().await.unwrap();
    let (tx, rx) = tokio::sync::mpsc::channel(100_000);
    let mut stream = sub.message_rx();
    tokio::spawn(async move {
        loop {
            let m = match stream.recv().await {
                Ok(m) => m,
                Err(tokio::sync::broadcast::error::RecvError::Lagged(n)) => {
                    eprintln!("live subscriber: {n} messages lost in the client (lagged)");
                    continue;
                }
                Err(tokio::sync::broadcast::error::RecvError::Closed) => return,
            };
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
    // Every live shard channel; one SSUBSCRIBE naming them all is fine on a
    // single Redis.
    let keys = fieldcast_core::Keys::new(
        prefix,
        fieldcast_core::Partitions::default(),
        fieldcast_core::Topology::of_url(redis_url),
    );
    sub.ssubscribe(keys.live_channels()).await.unwrap();
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

/// The value of one sample line, or `None` when the page has no such line
/// (where [`metric`] would say 0).
pub fn metric_opt(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| l.strip_prefix(series).and_then(|r| r.strip_prefix(' ')))
        .and_then(|v| v.trim().parse().ok())
}

/// [`http_get`] that reports a failure (no connection, no answer within
/// 5 s) as `None` instead of panicking, for use in background pollers.
pub async fn try_http_get(addr: std::net::SocketAddr, path: &str) -> Option<(u16, String)> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let get = async {
        let mut s = tokio::net::TcpStream::connect(addr).await.ok()?;
        s.write_all(format!("GET {path} HTTP/1.0\r\nHost: x\r\n\r\n").as_bytes())
            .await
            .ok()?;
        let mut buf = String::new();
        s.read_to_string(&mut buf).await.ok()?;
        let code = buf.split(' ').nth(1).and_then(|c| c.parse().ok())?;
        let body = buf
            .split_once("\r\n\r\n")
            .map(|(_, b)| b.to_owned())
            .unwrap_or_default();
        Some((code, body))
    };
    tokio::time::timeout(Duration::from_secs(5), get)
        .await
        .ok()
        .flatten()
}

/// The bridge's `/metrics` page.
pub async fn metrics_page(addr: std::net::SocketAddr) -> String {
    let (code, text) = http_get(addr, "/metrics").await;
    assert_eq!(code, 200, "/metrics");
    text
}

/// What a [`ReadyWatch`] saw.
#[derive(Debug, Default, Clone)]
pub struct ReadySeen {
    /// Answers received.
    pub polls: u64,
    /// Answers that said not ready (a non-200 status or `"ready": false`).
    pub not_ready: u64,
    /// Requests that got no answer (not counted as not-ready).
    pub failed: u64,
    /// The first not-ready answer: status and body.
    pub first_not_ready: Option<(u16, String)>,
}

/// Polls `/readyz` every 100 ms in the background until dropped.
pub struct ReadyWatch {
    seen: std::sync::Arc<std::sync::Mutex<ReadySeen>>,
    task: JoinHandle<()>,
}

impl ReadyWatch {
    pub fn start(addr: std::net::SocketAddr) -> ReadyWatch {
        let seen = std::sync::Arc::new(std::sync::Mutex::new(ReadySeen::default()));
        let s = seen.clone();
        let task = tokio::spawn(async move {
            loop {
                let answer = try_http_get(addr, "/readyz").await;
                {
                    let mut s = s.lock().unwrap();
                    match answer {
                        None => s.failed += 1,
                        Some((code, body)) => {
                            s.polls += 1;
                            let ready = code == 200
                                && serde_json::from_str::<serde_json::Value>(&body)
                                    .ok()
                                    .and_then(|v| v["ready"].as_bool())
                                    .unwrap_or(false);
                            if !ready {
                                s.not_ready += 1;
                                if s.first_not_ready.is_none() {
                                    s.first_not_ready = Some((code, body));
                                }
                            }
                        }
                    }
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        });
        ReadyWatch { seen, task }
    }

    pub fn seen(&self) -> ReadySeen {
        self.seen.lock().unwrap().clone()
    }

    /// Waits (up to [`WAIT`]) until at least `n` answers came, so a quick
    /// test still watches for a while: e.g. 20 polls ≈ 2 s, two rounds of
    /// the bridge's 1 s health and replay loops.
    pub async fn wait_polls(&self, n: u64) {
        let _ = wait_until(WAIT, "readyz polls", || async { self.seen().polls >= n }).await;
    }
}

impl Drop for ReadyWatch {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// A size-limited tmpfs mounted on a directory, owned by the test's user,
/// unmounted on drop — lazily if something still holds a file in it, so a
/// failing test never leaves a mount behind. Mounting needs root: as root
/// `mount` runs directly, as another user through `sudo -n` (passwordless
/// sudo, as `scripts/test.sh` on a fresh machine has).
pub struct Tmpfs {
    path: std::path::PathBuf,
}

impl Tmpfs {
    /// Mounts a tmpfs of `size` (`mount -o size=`, e.g. `48k`) on `path`,
    /// creating the directory first.
    pub fn mount(path: &std::path::Path, size: &str) -> Tmpfs {
        use std::os::unix::fs::MetadataExt as _;
        std::fs::create_dir_all(path).unwrap();
        // /proc/self belongs to the process's effective user and group.
        let me = std::fs::metadata("/proc/self").unwrap();
        let status = as_root("mount")
            .args([
                "-t",
                "tmpfs",
                "-o",
                &format!("size={size},mode=0755,uid={},gid={}", me.uid(), me.gid()),
                "tmpfs",
            ])
            .arg(path)
            .status()
            .expect("run mount");
        assert!(
            status.success(),
            "mount -t tmpfs on {} failed ({status}); the test needs root or passwordless sudo",
            path.display()
        );
        Tmpfs {
            path: path.to_owned(),
        }
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let umount = |lazy: bool| {
            let mut c = as_root("umount");
            if lazy {
                c.arg("-l");
            }
            c.arg(&self.path)
                .stderr(std::process::Stdio::null())
                .status()
                .is_ok_and(|s| s.success())
        };
        if !umount(false) && !umount(true) {
            eprintln!("could not unmount the tmpfs on {}", self.path.display());
        }
    }
}

/// `program` as root: itself when we are root, else `sudo -n program`.
fn as_root(program: &str) -> std::process::Command {
    use std::os::unix::fs::MetadataExt as _;
    let root = std::fs::metadata("/proc/self").is_ok_and(|m| m.uid() == 0);
    if root {
        std::process::Command::new(program)
    } else {
        let mut c = std::process::Command::new("sudo");
        c.args(["-n", program]);
        c
    }
}

pub const BIN: &str = env!("CARGO_BIN_EXE_fieldcast-bridge");

/// The real `fieldcast-bridge` binary, for tests that kill it; killed
/// when dropped, so a failing test leaves none behind.
pub struct Bridge(pub Child);

impl Drop for Bridge {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

impl std::ops::Deref for Bridge {
    type Target = Child;
    fn deref(&self) -> &Child {
        &self.0
    }
}

impl std::ops::DerefMut for Bridge {
    fn deref_mut(&mut self) -> &mut Child {
        &mut self.0
    }
}

/// Runs the real binary with the harness's flags; `set` overrides some.
pub fn spawn_bridge(h: &Harness, admin_port: u16, set: &[(&str, &str)]) -> Bridge {
    let mut args = h.args(&h.db.url);
    args.remove(0);
    let admin = format!("127.0.0.1:{admin_port}");
    for (flag, value) in [("--admin-addr", admin.as_str())].iter().chain(set) {
        let i = args.iter().position(|a| a == flag).unwrap() + 1;
        args[i] = value.to_string();
    }
    let child = Command::new(BIN)
        .args(&args)
        .env(
            "RUST_LOG",
            std::env::var("BRIDGE_LOG").unwrap_or_else(|_| "warn".into()),
        )
        .stdin(Stdio::null())
        .spawn()
        .unwrap();
    Bridge(child)
}

pub async fn wait_ready(admin_port: u16) {
    let addr: std::net::SocketAddr = format!("127.0.0.1:{admin_port}").parse().unwrap();
    wait_until(WAIT, "bridge /readyz", || async move {
        match tokio::net::TcpStream::connect(addr).await {
            Ok(_) => http_get(addr, "/readyz").await.0 == 200,
            Err(_) => false,
        }
    })
    .await
    .unwrap();
}
