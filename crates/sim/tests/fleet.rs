//! The fleet against the real broker (the shared Mosquitto at
//! `FIELDCAST_MQTT_URL`, default 127.0.0.1:1883). Every test uses its own
//! device prefix and client ids so tests running in parallel, or other
//! users of the broker, never see each other's devices.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::{HashMap, HashSet};
use std::process::{Command, Stdio};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use clap::Parser;
use fieldcast_core::{Limits, Message};
use fieldcast_mqtt::BrokerUrl;
use fieldcast_sim::fleet::{self, FleetArgs};
use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS};
use tokio::sync::mpsc;
use tokio::time::{timeout, Instant};
use tokio_util::sync::CancellationToken;

/// One message as a subscriber saw it.
#[derive(Debug, Clone)]
struct Seen {
    topic: String,
    payload: Vec<u8>,
    retain: bool,
}

impl Seen {
    fn parse(&self) -> Message {
        let now = fieldcast_core::time::now_ms();
        Message::parse(&self.topic, &self.payload, &Limits::default(), now).unwrap_or_else(|e| {
            panic!(
                "{} {}: {e}",
                self.topic,
                String::from_utf8_lossy(&self.payload)
            )
        })
    }

    fn online(&self) -> Option<bool> {
        match self.parse() {
            Message::Status(_, s) => Some(s.online),
            _ => None,
        }
    }
}

fn broker_url() -> String {
    std::env::var("FIELDCAST_MQTT_URL").unwrap_or_else(|_| "mqtt://127.0.0.1:1883".into())
}

/// A prefix no other test run shares.
fn unique_prefix(test: &str) -> String {
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .subsec_nanos();
    format!("t{test}{}x{nanos}", std::process::id())
}

/// A plain rumqttc subscriber; returns once every filter is acknowledged.
struct Subscriber {
    rx: mpsc::Receiver<Seen>,
    _client: AsyncClient,
}

impl Subscriber {
    async fn start(filters: &[String]) -> Subscriber {
        Self::start_on(&broker_url(), filters).await
    }

    async fn start_on(broker: &str, filters: &[String]) -> Subscriber {
        let url = BrokerUrl::parse(broker).unwrap();
        let id = format!("sub-{}", unique_prefix("s"));
        let mut opts = MqttOptions::new(id, url.host, url.port);
        opts.set_keep_alive(Duration::from_secs(10));
        let (client, mut eventloop) = AsyncClient::new(opts, 16);
        for f in filters {
            client.subscribe(f.clone(), QoS::AtLeastOnce).await.unwrap();
        }
        let (tx, rx) = mpsc::channel(10_000);
        let (acked_tx, mut acked_rx) = mpsc::channel(16);
        tokio::spawn(async move {
            loop {
                match eventloop.poll().await {
                    Ok(Event::Incoming(Packet::Publish(p))) => {
                        let seen = Seen {
                            topic: p.topic.clone(),
                            payload: p.payload.to_vec(),
                            retain: p.retain,
                        };
                        if tx.send(seen).await.is_err() {
                            return;
                        }
                    }
                    Ok(Event::Incoming(Packet::SubAck(_))) => {
                        let _ = acked_tx.send(()).await;
                    }
                    Ok(_) => {}
                    // The broker went away; `until` reports what was seen.
                    Err(_) => return,
                }
            }
        });
        for _ in filters {
            timeout(Duration::from_secs(5), acked_rx.recv())
                .await
                .expect("no SUBACK within 5 s");
        }
        Subscriber {
            rx,
            _client: client,
        }
    }

    /// Everything received until `pred` holds for the messages so far, or
    /// the deadline passes (then panics with what it saw).
    async fn until(
        &mut self,
        within: Duration,
        mut pred: impl FnMut(&[Seen]) -> bool,
    ) -> Vec<Seen> {
        let deadline = Instant::now() + within;
        let mut seen = Vec::new();
        while !pred(&seen) {
            match tokio::time::timeout_at(deadline, self.rx.recv()).await {
                Ok(Some(s)) => seen.push(s),
                _ => panic!(
                    "condition not met within {within:?}; saw {} messages: {seen:#?}",
                    seen.len()
                ),
            }
        }
        seen
    }

    /// Everything that arrives within `window`.
    async fn drain(&mut self, window: Duration) -> Vec<Seen> {
        let deadline = Instant::now() + window;
        let mut seen = Vec::new();
        while let Ok(Some(s)) = tokio::time::timeout_at(deadline, self.rx.recv()).await {
            seen.push(s);
        }
        seen
    }
}

fn device_filters(prefix: &str, devices: usize, suffix: &str) -> Vec<String> {
    (1..=devices)
        .map(|n| format!("devices/{prefix}-{n}/{suffix}"))
        .collect()
}

/// The latest `online` of each device's status messages in `seen`.
fn last_online(seen: &[Seen]) -> HashMap<String, bool> {
    seen.iter()
        .filter_map(|s| Some((s.topic.clone(), s.online()?)))
        .collect()
}

#[derive(Parser)]
struct Cli {
    #[command(flatten)]
    fleet: FleetArgs,
}

/// Runs the fleet in-process for ~2 s and checks what a subscriber saw:
/// locations and events that parse, the retained online status, and after
/// the stop a retained `online: false` for every device.
async fn fleet_round_trip(devices: usize, connections: usize) {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_test_writer()
        .try_init();
    let prefix = unique_prefix("f");
    let mut live = Subscriber::start(&device_filters(&prefix, devices, "#")).await;

    let args = Cli::parse_from([
        "fleet".to_string(),
        format!("--devices={devices}"),
        format!("--connections={connections}"),
        format!("--prefix={prefix}"),
        "--rate=5".into(),
        "--event-every=0.3".into(),
        "--status-every=1".into(),
        "--ramp-up=0s".into(),
        "--seed=7".into(),
    ]);
    let config = args.fleet.into_config().unwrap();
    let shutdown = CancellationToken::new();
    let fleet = tokio::spawn(fleet::run(config, shutdown.clone()));

    // A subscriber arriving late gets each device's retained online status.
    let seen = live
        .until(Duration::from_secs(10), |s| {
            last_online(s).values().filter(|o| **o).count() == devices
        })
        .await;
    let mut late = Subscriber::start(&device_filters(&prefix, devices, "status")).await;
    let retained = late
        .until(Duration::from_secs(5), |s| {
            s.iter().filter(|s| s.retain).count() >= devices
        })
        .await;
    assert!(
        retained.iter().all(|s| s.online() == Some(true)),
        "{retained:#?}"
    );

    tokio::time::sleep(Duration::from_secs(2)).await;
    shutdown.cancel();
    let summary = timeout(Duration::from_secs(10), fleet)
        .await
        .unwrap()
        .unwrap();

    let mut seen = [seen, live.drain(Duration::from_secs(1)).await].concat();
    let mut locations: HashMap<String, usize> = HashMap::new();
    let mut event_ids = HashSet::new();
    for s in &seen {
        match s.parse() {
            Message::Location(d, l) => {
                *locations.entry(d.as_str().to_owned()).or_default() += 1;
                assert!(
                    l.speed.is_some()
                        && l.heading.is_some()
                        && l.accuracy.is_some()
                        && l.alt.is_some()
                );
            }
            Message::Event(d, e) => assert!(event_ids.insert((d, e.id)), "event id repeated"),
            Message::Status(..) => {}
        }
    }
    assert_eq!(
        locations.len(),
        devices,
        "every device sent locations: {locations:?}"
    );
    assert!(locations.values().all(|n| *n >= 5), "{locations:?}");
    assert!(!event_ids.is_empty());
    let offline = last_online(&seen);
    assert_eq!(offline.len(), devices);
    assert!(
        offline.values().all(|o| !*o),
        "the last status of every device is offline: {offline:?}"
    );
    // Regression: a goodbye cut short by a TCP reset made the broker publish
    // the bare Last Will instead; a clean goodbye carries ts and battery.
    let wills: Vec<&Seen> = seen
        .iter()
        .filter(|s| s.payload == br#"{"online":false}"#)
        .collect();
    assert!(
        wills.is_empty(),
        "the Last Will fired on a clean stop: {wills:#?}"
    );

    // And that offline status is what the broker retains.
    let mut after = Subscriber::start(&device_filters(&prefix, devices, "status")).await;
    seen = after
        .until(Duration::from_secs(5), |s| s.len() >= devices)
        .await;
    assert!(
        seen.iter().all(|s| s.retain && s.online() == Some(false)),
        "{seen:#?}"
    );

    let expected_connections = if connections == 0 {
        devices
    } else {
        connections.min(devices)
    };
    assert_eq!(summary.connects as usize, expected_connections);
    assert_eq!((summary.connection_errors, summary.publish_errors), (0, 0));
    assert_eq!(summary.written, summary.sent(), "{summary:?}");
    assert_eq!(summary.event as usize, event_ids.len());
}

#[tokio::test]
async fn fleet_publishes_and_goes_offline_on_stop() {
    fleet_round_trip(3, 0).await;
}

#[tokio::test]
async fn fleet_shares_connections() {
    fleet_round_trip(5, 2).await;
}

fn sim() -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_fieldcast-sim"));
    cmd.env("RUST_LOG", "warn");
    cmd
}

/// Pins the Last Will: a device whose simulator dies without saying goodbye
/// is marked offline (retained) by the broker.
#[tokio::test]
async fn killed_fleet_leaves_its_last_will() {
    let prefix = unique_prefix("k");
    let mut sub = Subscriber::start(&device_filters(&prefix, 2, "status")).await;
    let mut child = sim()
        .args(["fleet", "--devices=2", "--ramp-up=0s", "--prefix", &prefix])
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    sub.until(Duration::from_secs(10), |s| last_online(s).len() == 2)
        .await;
    child.kill().unwrap(); // SIGKILL: no goodbye, the broker sees the socket close
    child.wait().unwrap();
    let seen = sub
        .until(Duration::from_secs(10), |s| {
            last_online(s).values().filter(|o| !**o).count() == 2
        })
        .await;
    let wills: Vec<&Seen> = seen.iter().filter(|s| s.online() == Some(false)).collect();
    assert!(
        wills.iter().all(|s| s.payload == br#"{"online":false}"#),
        "{wills:#?}"
    );
}

/// SIGTERM stops the fleet cleanly: exit 0, a summary, devices offline.
#[tokio::test]
async fn sigterm_exits_cleanly_with_a_summary() {
    let prefix = unique_prefix("t");
    let mut sub = Subscriber::start(&device_filters(&prefix, 2, "status")).await;
    let child = sim()
        .args(["fleet", "--devices=2", "--ramp-up=0s", "--prefix", &prefix])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    sub.until(Duration::from_secs(10), |s| last_online(s).len() == 2)
        .await;
    let status = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let out = tokio::task::spawn_blocking(move || child.wait_with_output())
        .await
        .unwrap()
        .unwrap();
    assert!(out.status.success(), "{:?}", out.status);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("sent location"), "{stdout}");
    let seen = sub
        .until(Duration::from_secs(5), |s| {
            last_online(s).values().filter(|o| !**o).count() == 2
        })
        .await;
    // A goodbye carries a timestamp and battery, unlike the will.
    assert!(seen
        .iter()
        .filter(|s| s.online() == Some(false))
        .all(|s| String::from_utf8_lossy(&s.payload).contains("battery")));
}

#[test]
fn help_exits_0_and_bad_flags_exit_2_with_one_line() {
    let help = sim().args(["fleet", "--help"]).output().unwrap();
    assert_eq!(help.status.code(), Some(0));
    let text = String::from_utf8_lossy(&help.stdout);
    for flag in [
        "--devices",
        "--rate",
        "--connections",
        "FIELDCAST_MQTT_URL",
        "FIELDCAST_SIM_DEVICES",
    ] {
        assert!(text.contains(flag), "--help lacks {flag}");
    }
    assert_eq!(sim().arg("--help").output().unwrap().status.code(), Some(0));

    for bad in [
        &["fleet", "--rate", "fast"][..],
        &["fleet", "--location-qos", "2"],
        &["fleet", "--mqtt-url", "http://nowhere"],
    ] {
        let out = sim().args(bad).output().unwrap();
        assert_eq!(out.status.code(), Some(2), "{bad:?}");
        let err = String::from_utf8_lossy(&out.stderr);
        let first = err.lines().next().unwrap_or_default();
        assert!(
            first.starts_with("error:") || first.starts_with("fieldcast-sim: error:"),
            "{err}"
        );
    }
}

/// Pins reconnection: when the broker goes away and comes back, every
/// device connection reconnects (with backoff, counted as errors meanwhile),
/// announces itself online again and resumes sending locations.
#[tokio::test]
async fn fleet_reconnects_after_broker_loss() {
    // A private broker, so the test can take it away from the fleet.
    let mut broker = fieldcast_testkit::Mosquitto::start().await.unwrap();
    let prefix = unique_prefix("r");
    let url = broker.url.clone();
    let mut before = Subscriber::start_on(&url, &device_filters(&prefix, 2, "location")).await;
    let args = Cli::parse_from([
        "fleet".to_string(),
        format!("--mqtt-url={url}"),
        "--devices=2".into(),
        format!("--prefix={prefix}"),
        "--rate=5".into(),
        "--event-every=0".into(),
        "--ramp-up=0s".into(),
    ]);
    let shutdown = CancellationToken::new();
    let fleet = tokio::spawn(fleet::run(
        args.fleet.into_config().unwrap(),
        shutdown.clone(),
    ));
    before
        .until(Duration::from_secs(10), |s| s.len() >= 4)
        .await;

    broker.kill();
    tokio::time::sleep(Duration::from_secs(1)).await;
    broker.restart().await.unwrap();
    let mut after = Subscriber::start_on(&url, &device_filters(&prefix, 2, "#")).await;
    let seen = after
        .until(Duration::from_secs(15), |s| {
            last_online(s).values().filter(|o| **o).count() == 2
                && s.iter().filter(|s| s.topic.ends_with("/location")).count() >= 4
        })
        .await;
    assert!(seen.iter().all(|s| !s.retain || s.online() == Some(true)));

    shutdown.cancel();
    let summary = timeout(Duration::from_secs(10), fleet)
        .await
        .unwrap()
        .unwrap();
    assert!(summary.connects >= 4, "{summary:?}");
    assert!(summary.connection_errors >= 2, "{summary:?}");
}

/// Pins `--mqtt-url` as a list: the fleet's connections take the brokers
/// in turn, so the devices spread evenly and each device stays on one.
#[tokio::test]
async fn fleet_spreads_devices_over_several_brokers() {
    let a = fieldcast_testkit::Mosquitto::start().await.unwrap();
    let b = fieldcast_testkit::Mosquitto::start().await.unwrap();
    let prefix = unique_prefix("m");
    let mut on_a = Subscriber::start_on(&a.url, &device_filters(&prefix, 4, "location")).await;
    let mut on_b = Subscriber::start_on(&b.url, &device_filters(&prefix, 4, "location")).await;
    let args = Cli::parse_from([
        "fleet".to_string(),
        format!("--mqtt-url={},{}", a.url, b.url),
        "--devices=4".into(),
        format!("--prefix={prefix}"),
        "--rate=5".into(),
        "--event-every=0".into(),
        "--ramp-up=0s".into(),
    ]);
    let shutdown = CancellationToken::new();
    let fleet = tokio::spawn(fleet::run(
        args.fleet.into_config().unwrap(),
        shutdown.clone(),
    ));
    let devices = |seen: Vec<Seen>| -> HashSet<String> {
        seen.iter()
            .filter_map(|s| s.topic.split('/').nth(1).map(str::to_owned))
            .collect()
    };
    let seen_a = devices(on_a.until(Duration::from_secs(10), |s| s.len() >= 20).await);
    let seen_b = devices(on_b.until(Duration::from_secs(10), |s| s.len() >= 20).await);
    shutdown.cancel();
    let _ = timeout(Duration::from_secs(10), fleet).await;
    assert_eq!(seen_a.len(), 2, "{seen_a:?}");
    assert_eq!(seen_b.len(), 2, "{seen_b:?}");
    assert!(seen_a.is_disjoint(&seen_b), "{seen_a:?} {seen_b:?}");
}

/// Pins what a device with a list of brokers does (the MQTT listeners of
/// a NATS cluster): when its broker is lost, its connection goes on to the
/// next one in the list rather than waiting for the lost one to return.
#[tokio::test]
async fn devices_of_a_lost_broker_go_on_to_the_next() {
    let mut a = fieldcast_testkit::Mosquitto::start().await.unwrap();
    let b = fieldcast_testkit::Mosquitto::start().await.unwrap();
    let prefix = unique_prefix("f");
    let mut on_b = Subscriber::start_on(&b.url, &device_filters(&prefix, 4, "location")).await;
    let args = Cli::parse_from([
        "fleet".to_string(),
        format!("--mqtt-url={},{}", a.url, b.url),
        "--devices=4".into(),
        format!("--prefix={prefix}"),
        "--rate=5".into(),
        "--event-every=0".into(),
        "--ramp-up=0s".into(),
    ]);
    let shutdown = CancellationToken::new();
    let fleet = tokio::spawn(fleet::run(
        args.fleet.into_config().unwrap(),
        shutdown.clone(),
    ));
    let devices = |seen: &[Seen]| -> HashSet<String> {
        seen.iter()
            .filter_map(|s| s.topic.split('/').nth(1).map(str::to_owned))
            .collect()
    };
    let before = devices(&on_b.until(Duration::from_secs(10), |s| s.len() >= 20).await);
    assert_eq!(
        before.len(),
        2,
        "half the devices on b at first: {before:?}"
    );
    a.kill();
    // b alone now: every device's locations arrive there.
    let after = on_b
        .until(Duration::from_secs(20), |s| devices(s).len() == 4)
        .await;
    shutdown.cancel();
    let _ = timeout(Duration::from_secs(10), fleet).await;
    assert_eq!(devices(&after).len(), 4, "{:?}", devices(&after));
}
