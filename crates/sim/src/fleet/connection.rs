//! One MQTT connection and the devices that publish over it, as two tasks:
//!
//! - the **driver** owns the rumqttc `EventLoop` and polls it for as long as
//!   the connection lives (keepalive, acks, writes), sleeping a jittered
//!   exponential backoff between failed polls; it tells the publisher over a
//!   `watch` when the link comes up (a new generation) or goes down;
//! - the **publisher** owns the devices and their [`Queue`] of due jobs and
//!   hands payloads to the `AsyncClient`, whose request channel (bounded,
//!   `channel_capacity`) is the backpressure: a slow broker slows the
//!   publisher, and locations that fall behind are skipped, not bunched.
//!
//! On every (re)connect each device publishes its retained `online: true`
//! status; on shutdown, if connected, it publishes a retained
//! `online: false` and the connection sends DISCONNECT, so the broker drops
//! the Last Will instead of publishing it.

use std::sync::Arc;
use std::time::Duration;

use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use rumqttc::{
    AsyncClient, Event, EventLoop, LastWill, MqttOptions, NetworkOptions, Outgoing, Packet, QoS,
};
use tokio::sync::watch;
use tokio::time::{sleep, sleep_until, Instant};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{debug, info, warn};

use super::schedule::{exponential, Job, Queue, Ticker};
use super::stats::Stats;
use crate::device::Device;
use crate::payload;
use fieldcast_core::Backoff;

/// How long shutdown may take to say goodbye before the socket is dropped.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);
/// Longest stretch of movement simulated in one go (after an outage).
const MAX_STEP_SECS: f64 = 600.0;

/// What every connection of a fleet shares.
#[derive(Debug)]
pub struct Shared {
    /// Seconds between locations of one device; `None`: no locations.
    pub location_every: Option<Duration>,
    pub location_qos: QoS,
    /// Between periodic status reports; `None`: only on (re)connect/exit.
    pub status_every: Option<Duration>,
    /// Mean gap between events of one device; `None`: no events.
    pub event_every: Option<Duration>,
    /// First connects are spread uniformly over this window.
    pub ramp_up: Duration,
    pub stats: Arc<Stats>,
    /// Cancelled when the fleet should stop; the publisher then says
    /// goodbye and the driver keeps polling until DISCONNECT is written.
    pub stop: CancellationToken,
}

/// One connection's share of the fleet.
#[derive(Debug)]
pub struct Plan {
    /// Its brokers' address, credentials and TLS, its own first; the
    /// connection sets its client id, keepalive and Last Will on each.
    /// Like a device given a list of nodes (the MQTT listeners of a NATS
    /// cluster), a connection whose broker is lost tries the next one.
    pub brokers: Vec<MqttOptions>,
    pub client_id: String,
    pub devices: Vec<Device>,
    /// Seed for this connection's timing jitter.
    pub seed: u64,
}

/// The driver's view of the link, published to the publisher.
#[derive(Debug, Clone, Copy, Default)]
struct Link {
    /// Bumped on every successful connect.
    generation: u64,
    up: bool,
}

/// Starts the driver and publisher of one connection on `tracker`.
pub fn spawn(tracker: &TaskTracker, plan: Plan, shared: Arc<Shared>) {
    let mut brokers: Vec<MqttOptions> = plan.brokers;
    for options in &mut brokers {
        options
            .set_client_id(plan.client_id.clone())
            .set_keep_alive(Duration::from_secs(30))
            .set_clean_session(true);
        // One connection can carry one Last Will: the first device's.
        if let Some(first) = plan.devices.first() {
            options.set_last_will(LastWill::new(
                first.topics().status.clone(),
                payload::will(),
                QoS::AtLeastOnce,
                true,
            ));
        }
    }
    let Some(first) = brokers.first().cloned() else {
        warn!(client_id = %plan.client_id, "no broker to connect to");
        return;
    };
    let capacity = (plan.devices.len() * 4).clamp(16, 1024);
    let (client, mut eventloop) = AsyncClient::new(first, capacity);
    let mut network = NetworkOptions::new();
    network.set_tcp_nodelay(true);
    network.set_connection_timeout(10);
    eventloop.set_network_options(network);

    let (link_tx, link_rx) = watch::channel(Link::default());
    let driver = Driver {
        client_id: plan.client_id,
        _client: client.clone(),
        eventloop,
        brokers,
        broker: 0,
        link: link_tx,
        shared: Arc::clone(&shared),
        rng: SmallRng::seed_from_u64(plan.seed),
    };
    let publisher = Publisher {
        client,
        devices: plan.devices,
        link: link_rx,
        shared,
        rng: SmallRng::seed_from_u64(plan.seed.rotate_left(17)),
    };
    tracker.spawn(driver.run());
    tracker.spawn(publisher.run());
}

struct Driver {
    client_id: String,
    /// Keeps the request channel open after the publisher has finished, so
    /// the event loop never ends on "requests done" while the broker's
    /// acks are still unread: closing a socket with unread data sends a
    /// TCP reset, and the broker then drops what it had not yet read (the
    /// last goodbyes and the DISCONNECT) and publishes the Last Will.
    _client: AsyncClient,
    eventloop: EventLoop,
    /// Every broker, ready to connect (client id, Last Will set), and the
    /// one in use.
    brokers: Vec<MqttOptions>,
    broker: usize,
    /// Link state; the other half is the publisher's.
    link: watch::Sender<Link>,
    shared: Arc<Shared>,
    rng: SmallRng,
}

impl Driver {
    async fn run(mut self) {
        let stop = self.shared.stop.clone();
        let stats = Arc::clone(&self.shared.stats);
        let ramp = self.shared.ramp_up.mul_f64(self.rng.random_range(0.0..1.0));
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = sleep(ramp) => {}
        }
        let mut backoff = Backoff::new(Duration::from_millis(200), Duration::from_secs(30));
        // After stop, the publisher has this long to say goodbye.
        let grace = async {
            stop.cancelled().await;
            sleep(SHUTDOWN_GRACE).await;
        };
        tokio::pin!(grace);
        // DISCONNECT is written; poll on until the broker closes the socket.
        let mut disconnecting = false;
        loop {
            let polled = tokio::select! {
                biased;
                _ = &mut grace => {
                    debug!(client_id = %self.client_id, "shutdown grace over, dropping the connection");
                    break;
                }
                polled = self.eventloop.poll() => polled,
            };
            match polled {
                // Connected too late: the publisher has stopped already.
                Ok(Event::Incoming(Packet::ConnAck(_))) if stop.is_cancelled() => break,
                Ok(Event::Incoming(Packet::ConnAck(_))) => {
                    backoff.reset();
                    Stats::add(&stats.connects, 1);
                    Stats::add(&stats.connected, 1);
                    debug!(client_id = %self.client_id, "connected");
                    self.link.send_modify(|l| {
                        l.generation += 1;
                        l.up = true;
                    });
                }
                Ok(Event::Incoming(Packet::PubAck(_))) => Stats::add(&stats.acked, 1),
                Ok(Event::Outgoing(Outgoing::Publish(_))) => Stats::add(&stats.written, 1),
                Ok(Event::Outgoing(Outgoing::Disconnect)) => disconnecting = true,
                Ok(_) => {}
                Err(error) => {
                    self.set_down();
                    if disconnecting {
                        debug!(client_id = %self.client_id, "disconnected");
                        break;
                    }
                    if stop.is_cancelled() {
                        debug!(client_id = %self.client_id, %error, "connection ended during shutdown");
                        break;
                    }
                    Stats::add(&stats.connection_errors, 1);
                    if self.brokers.len() > 1 {
                        // rumqttc connects with `mqtt_options` on the next poll.
                        self.broker = (self.broker + 1) % self.brokers.len();
                        self.eventloop.mqtt_options = self.brokers[self.broker].clone();
                    }
                    let delay = backoff.next_delay_with(&mut self.rng);
                    match stats.warn_allowed() {
                        Some(suppressed) => warn!(
                            client_id = %self.client_id, %error, retry_in = ?delay, suppressed,
                            "MQTT connection failed"
                        ),
                        None => {
                            debug!(client_id = %self.client_id, %error, retry_in = ?delay, "MQTT connection failed")
                        }
                    }
                    tokio::select! {
                        _ = stop.cancelled() => break,
                        _ = sleep(delay) => {}
                    }
                }
            }
        }
        self.set_down();
    }

    fn set_down(&self) {
        if self.link.borrow().up {
            self.shared
                .stats
                .connected
                .fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
            self.link.send_modify(|l| l.up = false);
        }
    }
}

/// Why publishing stopped.
enum Halt {
    /// The fleet is stopping.
    Stop,
    /// The event loop is gone.
    Closed,
}

struct Publisher {
    client: AsyncClient,
    devices: Vec<Device>,
    /// Link state; the driver holds the sender.
    link: watch::Receiver<Link>,
    shared: Arc<Shared>,
    rng: SmallRng,
}

/// Per-device timing next to the devices.
struct Clock {
    location: Option<Ticker>,
    status: Option<Ticker>,
    /// Time the route was last advanced to.
    moved_at: Instant,
    /// Time the battery was last drained to.
    reported_at: Instant,
}

impl Publisher {
    async fn run(mut self) {
        let t0 = Instant::now();
        let mut queue = Queue::default();
        let mut clocks = Vec::with_capacity(self.devices.len());
        for i in 0..self.devices.len() {
            // A random phase per device spreads the fleet over each period.
            let mut ticker = |every: Option<Duration>, job| {
                every.map(|p| {
                    let t = Ticker::new(t0 + p.mul_f64(self.rng.random_range(0.0..1.0)), p);
                    queue.push(t.due(), i, job);
                    t
                })
            };
            let location = ticker(self.shared.location_every, Job::Location);
            let status = ticker(self.shared.status_every, Job::Status);
            if let Some(mean) = self.shared.event_every {
                queue.push(t0 + exponential(mean, &mut self.rng), i, Job::Event);
            }
            clocks.push(Clock {
                location,
                status,
                moved_at: t0,
                reported_at: t0,
            });
        }
        if self.publish_loop(&mut queue, &mut clocks).await.is_ok() {
            debug!("publisher ended without a stop");
        }
        self.goodbye(&mut clocks).await;
    }

    async fn publish_loop(&mut self, queue: &mut Queue, clocks: &mut [Clock]) -> Result<(), Halt> {
        let stop = self.shared.stop.clone();
        let mut generation = 0;
        loop {
            let link = *self.link.borrow_and_update();
            if link.up && link.generation != generation {
                generation = link.generation;
                self.hello(clocks).await?;
            }
            let next = queue.next_at();
            tokio::select! {
                biased;
                _ = stop.cancelled() => return Err(Halt::Stop),
                changed = self.link.changed() => if changed.is_err() { return Err(Halt::Closed) },
                _ = sleep_until(next.unwrap_or(t_far())), if link.up && next.is_some() => {
                    let now = Instant::now();
                    while let Some((at, i, job)) = queue.pop_due(now) {
                        self.job(queue, clocks, now, at, i, job).await?;
                    }
                }
            }
        }
    }

    /// Every device announces itself online (retained) on a fresh link.
    async fn hello(&mut self, clocks: &mut [Clock]) -> Result<(), Halt> {
        let now = Instant::now();
        for (i, clock) in clocks.iter_mut().enumerate() {
            let dt = now
                .saturating_duration_since(clock.reported_at)
                .as_secs_f64();
            clock.reported_at = now;
            self.status(i, true, dt).await?;
        }
        Ok(())
    }

    async fn job(
        &mut self,
        queue: &mut Queue,
        clocks: &mut [Clock],
        now: Instant,
        at: Instant,
        i: usize,
        job: Job,
    ) -> Result<(), Halt> {
        let clock = &mut clocks[i];
        let stats = Arc::clone(&self.shared.stats);
        match job {
            Job::Location => {
                let dt = at.saturating_duration_since(clock.moved_at).as_secs_f64();
                clock.moved_at = at;
                let device = &mut self.devices[i];
                let payload =
                    device.location(dt.min(MAX_STEP_SECS), fieldcast_core::time::now_ms());
                let topic = device.topics().location.clone();
                self.send(topic, self.shared.location_qos, false, payload)
                    .await?;
                Stats::add(&stats.location, 1);
                if let Some(ticker) = clock.location.as_mut() {
                    Stats::add(&stats.skipped, ticker.advance(now));
                    queue.push(ticker.due(), i, Job::Location);
                }
            }
            Job::Status => {
                let dt = now
                    .saturating_duration_since(clock.reported_at)
                    .as_secs_f64();
                clock.reported_at = now;
                if let Some(ticker) = clock.status.as_mut() {
                    ticker.advance(now);
                    queue.push(ticker.due(), i, Job::Status);
                }
                self.status(i, true, dt).await?;
            }
            Job::Event => {
                let event = self.devices[i].event(fieldcast_core::time::now_ms());
                let topic = self.devices[i].topics().events.clone();
                self.send(topic, QoS::AtLeastOnce, false, event.payload)
                    .await?;
                Stats::add(&stats.event, 1);
                if event.severity == fieldcast_core::Severity::Critical {
                    Stats::add(&stats.critical, 1);
                }
                if let Some(mean) = self.shared.event_every {
                    queue.push(now + exponential(mean, &mut self.rng), i, Job::Event);
                }
            }
        }
        Ok(())
    }

    async fn status(&mut self, i: usize, online: bool, dt: f64) -> Result<(), Halt> {
        let device = &mut self.devices[i];
        let payload = device.status(online, dt, fieldcast_core::time::now_ms());
        let topic = device.topics().status.clone();
        self.send(topic, QoS::AtLeastOnce, true, payload).await?;
        Stats::add(&self.shared.stats.status, 1);
        Ok(())
    }

    /// Hands one message to the client, waiting while its channel is full
    /// unless the fleet stops first.
    async fn send(
        &self,
        topic: String,
        qos: QoS,
        retain: bool,
        payload: Vec<u8>,
    ) -> Result<(), Halt> {
        tokio::select! {
            biased;
            _ = self.shared.stop.cancelled() => Err(Halt::Stop),
            sent = self.client.publish(topic, qos, retain, payload) => sent.map_err(|_| {
                Stats::add(&self.shared.stats.publish_errors, 1);
                Halt::Closed
            }),
        }
    }

    /// Retained `online: false` for every device, then DISCONNECT, when
    /// there is a link to say it on; bounded by [`SHUTDOWN_GRACE`].
    async fn goodbye(&mut self, clocks: &mut [Clock]) {
        if !self.link.borrow().up {
            return;
        }
        let now = Instant::now();
        let stats = Arc::clone(&self.shared.stats);
        let farewell = async {
            for (i, clock) in clocks.iter_mut().enumerate() {
                let dt = now
                    .saturating_duration_since(clock.reported_at)
                    .as_secs_f64();
                let device = &mut self.devices[i];
                let payload = device.status(false, dt, fieldcast_core::time::now_ms());
                let topic = device.topics().status.clone();
                self.client
                    .publish(topic, QoS::AtLeastOnce, true, payload)
                    .await?;
                Stats::add(&stats.status, 1);
            }
            self.client.disconnect().await
        };
        match tokio::time::timeout(SHUTDOWN_GRACE, farewell).await {
            Ok(Ok(())) => {}
            Ok(Err(error)) => info!(%error, "could not publish offline status"),
            Err(_) => info!("offline status not sent within the shutdown grace"),
        }
    }
}

/// A time that never comes, for a disabled `sleep_until` arm.
fn t_far() -> Instant {
    Instant::now() + Duration::from_secs(86_400 * 365)
}
