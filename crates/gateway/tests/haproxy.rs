//! Gateways behind a real HAProxy running the shipped `deploy/haproxy.cfg`
//! (testkit's [`HaProxy`]): devices -> private Mosquitto -> bridge ->
//! Redis -> two `fieldcast-gateway` processes -> HAProxy -> a viewer that
//! behaves as PROTOCOL.md §4 tells a client to: on a lost connection it
//! reconnects to the same address and subscribes again with `since` = the
//! last cursor it got.
//!
//! The gateways are separate processes, so that they die by real signals:
//! SIGKILL for a crash, SIGTERM for a drain. The tests take turns
//! (`SERIAL`): each runs a broker, a bridge, two gateways and HAProxy.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use rumqttc::{AsyncClient, MqttOptions, QoS};
use serde_json::{json, Value};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use fieldcast_testkit::chain::Chain;
use fieldcast_testkit::{free_port, unique, wait_until, HaProxy};
use support::{get, tail, token, Ended, Ws, SECRET};

static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

const BIN: &str = env!("CARGO_BIN_EXE_fieldcast-gateway");
/// Generous: this machine may be running other builds and tests.
const LONG: Duration = Duration::from_secs(30);
const DEVICES: usize = 3;

/// Pins issue 14's promise for a crash: a viewer whose gateway is
/// SIGKILLed while events flow reconnects through HAProxy, lands on the
/// other gateway, resumes with `since` and has every event exactly once,
/// in order per device. The reconnect is one attempt, made at once, while
/// for HAProxy the dead gateway is still up (its checks need ~2 s) and,
/// with the fewest connections, leastconn's pick: the refused connect
/// must be redispatched to the other gateway (`option redispatch` in the
/// shipped file; without it the viewer gets a 503 and this test fails).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_viewer_whose_gateway_is_killed_resumes_on_the_other_losing_nothing() {
    let _turn = SERIAL.lock().await;
    let mut world = World::start("0s").await;
    let mut viewer = Viewer::connect(&world.haproxy).await;
    let (home, other) = world.home_of_the_viewer().await;
    // An idle viewer, which leastconn puts on the other gateway: once the
    // home gateway is dead it has the fewest connections, so HAProxy's
    // first pick for the reconnect is the dead one.
    let _bystander = connect(&world.haproxy).await;
    wait_until(LONG, "the bystander on the other gateway", || async {
        world.gateway(other).connections().await == Some(1.0)
    })
    .await
    .unwrap();

    let publisher = Publisher::start(&world.chain.broker.url).await;
    viewer
        .read_until(LONG, |v| v.events.len() >= 2 * DEVICES)
        .await
        .expect("events before the kill");
    world.gateway_mut(home).kill().await;
    let ended = viewer.read_until(LONG, |_| false).await.unwrap_err();
    assert_ne!(ended, Ended::Close(1001), "a SIGKILL sends no close frame");

    viewer.reconnect(&world.haproxy).await;
    assert_eq!(
        world.gateway(other).connections().await,
        Some(2.0),
        "the viewer is on the surviving gateway"
    );
    // Events published while it was away were replayed; these are live.
    let resumed = viewer.events.len();
    viewer
        .read_until(LONG, |v| v.events.len() >= resumed + 2 * DEVICES)
        .await
        .expect("live events after the resume");
    let rounds = publisher.finish().await;
    viewer.assert_every_event_once_in_order(rounds).await;
    // The health checks saw it too.
    world
        .haproxy
        .wait_state(&world.name(home), "DOWN", LONG)
        .await
        .unwrap();
    let log = world.haproxy.log();
    assert!(log.contains("GET /ws HTTP/1.1"), "{log}");
    assert!(!log.contains("token="), "HAProxy logged a token:\n{log}");
    world.stop().await;
}

/// Pins the drain on SIGTERM: `/readyz` turns 503 at once, HAProxy marks
/// the gateway down, a new viewer is sent to the other gateway while the
/// draining one still serves its own viewer, which then gets close 1001,
/// reconnects through HAProxy and resumes losing nothing; the process
/// exits 0. The drain's grace is long here and cut short by a second
/// SIGTERM once all that was seen (the grace's own timing is pinned by the
/// unit tests of `drain`). Fails without the drain (`/readyz` stays 200),
/// and with `on-marked-down shutdown-sessions` in the shipped file (HAProxy
/// then cuts the draining gateway's viewer when it marks it down).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_drains_a_gateway_out_of_haproxy_without_losing_an_event() {
    let _turn = SERIAL.lock().await;
    let mut world = World::start("60s").await;
    let mut viewer = Viewer::connect(&world.haproxy).await;
    let (home, other) = world.home_of_the_viewer().await;
    let publisher = Publisher::start(&world.chain.broker.url).await;
    viewer
        .read_until(LONG, |v| v.events.len() >= DEVICES)
        .await
        .expect("events before the drain");

    world.gateway(home).signal("TERM");
    let addr = world.gateway(home).addr;
    wait_until(LONG, "readyz 503 with draining", || async move {
        get(addr, "/readyz")
            .await
            .is_some_and(|(status, body)| status == 503 && body.contains("\"draining\":true"))
    })
    .await
    .unwrap();
    world
        .haproxy
        .wait_state(&world.name(home), "DOWN", LONG)
        .await
        .unwrap();

    // Marked down, still serving: the viewer's events keep coming.
    let seen = viewer.events.len();
    viewer
        .read_until(LONG, |v| v.events.len() >= seen + DEVICES)
        .await
        .expect("live events during the drain");
    // A new viewer goes to the other gateway.
    let mut newcomer = Viewer::connect(&world.haproxy).await;
    assert_eq!(world.gateway(other).connections().await, Some(1.0));
    assert_eq!(world.gateway(home).connections().await, Some(1.0));
    newcomer
        .read_until(LONG, |v| v.events.len() >= DEVICES)
        .await
        .expect("the newcomer is live");

    // The end of the drain (here: the second signal) closes with 1001.
    world.gateway(home).signal("TERM");
    let ended = viewer.read_until(LONG, |_| false).await.unwrap_err();
    assert_eq!(ended, Ended::Close(1001));
    viewer.reconnect(&world.haproxy).await;
    assert_eq!(world.gateway(other).connections().await, Some(2.0));
    let resumed = viewer.events.len();
    viewer
        .read_until(LONG, |v| v.events.len() >= resumed + DEVICES)
        .await
        .expect("live events after the resume");
    let rounds = publisher.finish().await;
    viewer.assert_every_event_once_in_order(rounds).await;

    let status = tokio::time::timeout(LONG, world.gateway_mut(home).child.wait())
        .await
        .expect("the drained gateway exits")
        .unwrap();
    assert_eq!(status.code(), Some(0));
    world.stop().await;
}

/// A bridge on its own broker, two gateway processes on it, HAProxy in
/// front.
struct World {
    chain: Chain,
    gateways: Vec<GatewayProcess>,
    haproxy: HaProxy,
}

impl World {
    async fn start(drain_grace: &str) -> World {
        let chain = Chain::start("hap").await.expect("broker and bridge");
        let store = chain.store();
        let mut gateways = Vec::new();
        for _ in 0..2 {
            gateways.push(GatewayProcess::start(&store, drain_grace).await);
        }
        let addrs: Vec<SocketAddr> = gateways.iter().map(|g| g.addr).collect();
        let haproxy = HaProxy::start(&addrs).await.expect("haproxy");
        World {
            chain,
            gateways,
            haproxy,
        }
    }

    /// HAProxy's name of gateway `i` (`gw1`, `gw2`).
    fn name(&self, i: usize) -> String {
        format!("gw{}", i + 1)
    }

    fn gateway(&self, i: usize) -> &GatewayProcess {
        &self.gateways[i]
    }

    fn gateway_mut(&mut self, i: usize) -> &mut GatewayProcess {
        &mut self.gateways[i]
    }

    /// `(the gateway with the one viewer, the other)`, from their gauges.
    async fn home_of_the_viewer(&self) -> (usize, usize) {
        let deadline = tokio::time::Instant::now() + LONG;
        loop {
            let a = self.gateways[0].connections().await;
            let b = self.gateways[1].connections().await;
            match (a, b) {
                (Some(1.0), Some(0.0)) => return (0, 1),
                (Some(0.0), Some(1.0)) => return (1, 0),
                _ => {}
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "no gateway has the one viewer: {a:?} {b:?}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    async fn stop(self) {
        drop(self.haproxy);
        drop(self.gateways);
        self.chain.stop().await.expect("bridge shut down cleanly");
    }
}

/// `fieldcast-gateway` as a child process, killed on drop.
struct GatewayProcess {
    addr: SocketAddr,
    child: tokio::process::Child,
    log: PathBuf,
}

impl GatewayProcess {
    async fn start(store: &fieldcast_service::StoreArgs, drain_grace: &str) -> GatewayProcess {
        let log = std::env::temp_dir().join(format!("{}.log", unique("fieldcast-gw")));
        for _ in 0..5 {
            let addr = SocketAddr::from(([127, 0, 0, 1], free_port()));
            let out = std::fs::File::create(&log).unwrap();
            let mut child = tokio::process::Command::new(BIN)
                .env("FIELDCAST_LISTEN", addr.to_string())
                .env("FIELDCAST_REDIS_URL", &store.redis_url)
                .env("FIELDCAST_REDIS_PREFIX", &store.redis_prefix)
                .env("FIELDCAST_DATABASE_URL", &store.database_url)
                .env("FIELDCAST_JWT_SECRET", SECRET)
                .env("FIELDCAST_DRAIN_GRACE", drain_grace)
                .env("RUST_LOG", "info")
                .stdout(Stdio::from(out.try_clone().unwrap()))
                .stderr(Stdio::from(out))
                .kill_on_drop(true)
                .spawn()
                .unwrap();
            let mut exited = false;
            let ready = wait_until(LONG, "gateway process ready", || {
                exited = !matches!(child.try_wait(), Ok(None));
                let exited = exited;
                async move { exited || get(addr, "/readyz").await.is_some_and(|(s, _)| s == 200) }
            })
            .await;
            if ready.is_ok() && !exited {
                return GatewayProcess { addr, child, log };
            }
            let _ = child.kill().await;
            // Exited at start: most likely its port was taken before it
            // bound, so try another. Not ready in time: give up.
            assert!(exited, "gateway not ready; log:\n{}", tail(&log));
        }
        panic!("gateway did not start; log:\n{}", tail(&log));
    }

    /// Open WebSockets (`fieldcast_gateway_connections`), `None` when the
    /// process does not answer.
    async fn connections(&self) -> Option<f64> {
        let (_, body) = get(self.addr, "/metrics").await?;
        body.lines()
            .find(|l| l.starts_with("fieldcast_gateway_connections "))
            .and_then(|l| l.rsplit(' ').next()?.parse().ok())
    }

    fn signal(&self, name: &str) {
        let pid = self.child.id().expect("running");
        let ok = std::process::Command::new("kill")
            .args([format!("-{name}"), pid.to_string()])
            .status()
            .unwrap()
            .success();
        assert!(ok, "kill -{name} {pid}");
    }

    async fn kill(&mut self) {
        self.child.kill().await.unwrap();
    }
}

impl Drop for GatewayProcess {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("gateway {} log:\n{}", self.addr, tail(&self.log));
        }
        let _ = std::fs::remove_file(&self.log);
    }
}
/// `DEVICES` devices over MQTT, each publishing QoS 1 events `e-00000`,
/// `e-00001`... in order, a round (an event from each) every 25 ms, until
/// [`Publisher::finish`].
struct Publisher {
    stop: CancellationToken,
    task: JoinHandle<usize>,
}

impl Publisher {
    async fn start(mqtt_url: &str) -> Publisher {
        let u = fieldcast_mqtt::BrokerUrl::parse(mqtt_url).unwrap();
        let mut opts = MqttOptions::new(unique("hap-dev"), u.host, u.port);
        opts.set_keep_alive(Duration::from_secs(30));
        let (client, mut eventloop) = AsyncClient::new(opts, 1000);
        let acked = Arc::new(AtomicUsize::new(0));
        let counter = acked.clone();
        let driver = tokio::spawn(async move {
            loop {
                match eventloop.poll().await {
                    Ok(rumqttc::Event::Incoming(rumqttc::Packet::PubAck(_))) => {
                        counter.fetch_add(1, Ordering::Relaxed);
                    }
                    Ok(_) => {}
                    Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
                }
            }
        });
        let stop = CancellationToken::new();
        let until = stop.clone();
        let task = tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_millis(25));
            let mut rounds = 0;
            while !until.is_cancelled() {
                tick.tick().await;
                for d in 0..DEVICES {
                    let payload = json!({
                        "id": format!("e-{rounds:05}"),
                        "kind": "haproxy-test",
                        "ts": fieldcast_core::time::now_ms(),
                    });
                    client
                        .publish(
                            format!("devices/hap-{d}/events"),
                            QoS::AtLeastOnce,
                            false,
                            payload.to_string(),
                        )
                        .await
                        .unwrap();
                }
                rounds += 1;
            }
            let a = &acked;
            wait_until(
                LONG,
                "every event acknowledged by the broker",
                || async move { a.load(Ordering::Relaxed) >= DEVICES * rounds },
            )
            .await
            .unwrap();
            driver.abort();
            rounds
        });
        Publisher { stop, task }
    }

    /// Stops publishing; the rounds published, each acknowledged by the
    /// broker.
    async fn finish(self) -> usize {
        self.stop.cancel();
        self.task.await.unwrap()
    }
}

/// A viewer of the whole fleet through HAProxy, keeping what a client
/// keeps: the events it got and the last cursor.
struct Viewer {
    ws: Ws,
    cursor: String,
    /// `(device, event id)` in the order received.
    events: Vec<(String, String)>,
}

impl Viewer {
    async fn connect(haproxy: &HaProxy) -> Viewer {
        let ws = connect(haproxy).await;
        let mut v = Viewer {
            ws,
            cursor: String::new(),
            events: Vec::new(),
        };
        v.subscribe(None).await;
        v
    }

    /// After a lost connection: through HAProxy again, `since` the last
    /// cursor.
    async fn reconnect(&mut self, haproxy: &HaProxy) {
        self.ws = connect(haproxy).await;
        let since = self.cursor.clone();
        self.subscribe(Some(&since)).await;
    }

    async fn subscribe(&mut self, since: Option<&str>) {
        let mut cmd = json!({"op": "subscribe", "ref": "s", "fleet": true});
        if let Some(c) = since {
            cmd["since"] = json!(c);
        }
        self.ws.send(cmd).await;
        loop {
            let v = self.ws.recv().await;
            if v["type"] == "subscribed" && v["ref"] == "s" {
                self.cursor = v["cursor"].as_str().unwrap().to_owned();
                return;
            }
            self.take(&v);
        }
    }

    /// Reads frames until `done` holds (`Ok`) or the socket ends (`Err`,
    /// how); panics after `within`.
    async fn read_until(
        &mut self,
        within: Duration,
        done: impl Fn(&Viewer) -> bool,
    ) -> Result<(), Ended> {
        let deadline = tokio::time::Instant::now() + within;
        while !done(self) {
            assert!(
                tokio::time::Instant::now() < deadline,
                "viewer waited {within:?}; has {} events",
                self.events.len()
            );
            let v = self.ws.try_recv().await?;
            self.take(&v);
        }
        Ok(())
    }

    fn take(&mut self, v: &Value) {
        match v["type"].as_str() {
            Some("event") => {
                self.events.push((
                    v["device"].as_str().unwrap().to_owned(),
                    v["id"].as_str().unwrap().to_owned(),
                ));
                self.cursor = v["cursor"].as_str().unwrap().to_owned();
            }
            Some("error") => panic!("viewer got an error: {v}"),
            _ => {}
        }
    }

    /// Reads until it has `rounds` events of every device, then checks
    /// them: each once, in order per device.
    async fn assert_every_event_once_in_order(&mut self, rounds: usize) {
        self.read_until(LONG, |v| v.events.len() >= DEVICES * rounds)
            .await
            .expect("every event");
        // Anything sent before the pong is read before it: a duplicate
        // still on its way would be counted.
        self.ws.send(json!({"op": "ping", "ref": "end"})).await;
        loop {
            let v = self.ws.recv().await;
            if v["type"] == "pong" {
                break;
            }
            self.take(&v);
        }
        let mut per_device: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
        for (d, id) in &self.events {
            per_device.entry(d).or_default().push(id);
        }
        let want: Vec<String> = (0..rounds).map(|s| format!("e-{s:05}")).collect();
        assert_eq!(per_device.len(), DEVICES, "devices seen");
        for (d, ids) in per_device {
            assert_eq!(ids, want, "events of {d}: each once, in order");
        }
    }
}

/// A WebSocket through HAProxy, in one attempt: a client retries, but
/// here a failed attempt is the failure (HAProxy must find a live gateway).
async fn connect(haproxy: &HaProxy) -> Ws {
    let url = haproxy.ws_url(&token(json!({})));
    match tokio_tungstenite::connect_async(&url).await {
        Ok((stream, _)) => Ws { stream },
        Err(e) => panic!("no WebSocket through HAProxy: {e}\n{}", haproxy.log_tail()),
    }
}
