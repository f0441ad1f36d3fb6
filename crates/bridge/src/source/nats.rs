//! The JetStream source (docs/nats.md): devices publish over MQTT to
//! nats-server, which puts `devices/{id}/{kind}` on the subject
//! `devices.{id}.{kind}`; a stream captures `devices.>` and every bridge
//! pulls from one shared durable consumer with explicit acks. Each message
//! goes to the same [`Intake`] as an MQTT PUBLISH, under its topic in MQTT
//! form ([`topic_of`]), so validation, dead letters and the ack points are
//! the MQTT source's (see [`crate::source::intake`] for where each kind is
//! acknowledged).
//!
//! Backpressure: the source stops pulling while the queue holds anything
//! back, so a JetStream backlog waits in the stream, not in memory; the
//! consumer's `max_ack_pending` bounds what all bridges together hold
//! unacknowledged. A message not acknowledged within `ack_wait` (its
//! bridge died, or stalled) is delivered again, to any bridge; every store
//! is idempotent for it: events by (`device`, `id`), statuses and
//! locations by (`device`, `ts`) — and a message without `ts` takes its
//! stream timestamp, the same on every delivery.
//!
//! Connection: async-nats reconnects by itself, here with the bridge's
//! jittered backoff and a log line per attempt; `/readyz` is ready while
//! connected with the consumer in place.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::{self, consumer, stream};
use futures::{FutureExt as _, StreamExt as _};
use tokio_util::sync::CancellationToken;

use fieldcast_core::Backoff;

use crate::ack::{AckToken, Acker, Verdict};
use crate::config::{Config, NatsArgs};
use crate::health::Health;
use crate::metrics::Metrics;
use crate::source::intake::{Intake, Settle};

/// The subjects the stream captures: every device topic, as nats-server's
/// MQTT listener maps it.
pub const SUBJECTS: &str = "devices.>";

/// nats-server's own stream of the QoS 1 messages MQTT clients publish
/// (2.9 and later): a device's PUBACK waits for the message's store here,
/// not for [`SUBJECTS`]' stream (docs/nats.md, "Where a device's PUBACK
/// stands").
pub const MQTT_QOS1_STREAM: &str = "$MQTT_msgs";

/// What nats-server puts before a QoS 1 message's subject in
/// [`MQTT_QOS1_STREAM`].
const MQTT_QOS1_PREFIX: &str = "$MQTT.msgs.";

/// The header nats-server gives every message an MQTT client published,
/// with the publisher's QoS (`0` or `1`).
const MQTT_QOS_HEADER: &str = "Nmqtt-Pub";

/// QoS 1 copies in the main stream published this long after the QoS 1
/// lane's consumer was created are left to that lane: every such message
/// is certain to be held for the consumer in [`MQTT_QOS1_STREAM`] (an
/// interest stream keeps only what a consumer waits for). The margin
/// covers clock skew between the nodes that stamp the two times and a
/// message on its way while the consumer was being created; before it,
/// both lanes handle a QoS 1 message, and the stores' idempotence keeps
/// it single.
const HANDOFF_MARGIN: Duration = Duration::from_secs(10);

/// How long the QoS 1 lane waits before looking again for
/// [`MQTT_QOS1_STREAM`] (nats-server creates it at the first MQTT
/// connection) or for its consumer after an error; jittered.
const QOS1_RETRY: Duration = Duration::from_secs(2);

/// Replicas of a stream the bridge creates on a cluster.
const CLUSTER_REPLICAS: usize = 3;

/// How often an idle pull asks the server for a heartbeat: a missed one
/// (the server or the consumer gone) shows within two of these.
const HEARTBEAT: Duration = Duration::from_secs(5);

/// Why the stream or the consumer could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum SetupError {
    #[error("cannot connect to FIELDCAST_NATS_URL: {0}")]
    Connect(#[from] async_nats::ConnectError),
    #[error("FIELDCAST_NATS_URL {0:?}: {1}")]
    Url(String, async_nats::Error),
    #[error("cannot get or create the stream {0}: {1}")]
    Stream(String, String),
    #[error("cannot get or create the consumer {0}: {1}")]
    Consumer(String, String),
    #[error("cannot start pulling from the consumer: {0}")]
    Pull(String),
}

/// The consumer's settings, from [`NatsArgs`].
#[derive(Debug, Clone)]
pub struct Settings {
    pub stream: String,
    pub consumer: String,
    pub max_ack_pending: usize,
    pub ack_wait: Duration,
    pub batch: usize,
}

impl Settings {
    pub fn of(config: &Config) -> Settings {
        Settings {
            stream: config.nats.stream.clone(),
            consumer: config.nats.consumer.clone(),
            max_ack_pending: config.nats_max_ack_pending(),
            ack_wait: config.nats.ack_wait,
            batch: config.nats.batch.min(config.nats_max_ack_pending()),
        }
    }
}

/// The source's side of readiness: whether its consumer is in place. The
/// connection's side comes from async-nats's events ([`connect`]).
#[derive(Debug, Default)]
struct Link {
    consumer_ready: AtomicBool,
}

/// Connects to the servers of `url` in the background (the bridge starts,
/// not ready, while NATS is down), reconnecting for ever with the bridge's
/// jittered backoff. Connection events set readiness and the
/// `nats_connected` / `nats_reconnects_total` metrics.
pub async fn connect(
    url: &str,
    health: Arc<Health>,
    metrics: Arc<Metrics>,
) -> Result<(async_nats::Client, NatsLink), SetupError> {
    let servers = NatsArgs::servers(url)
        .map(|s| {
            s.parse::<async_nats::ServerAddr>()
                .map_err(|e| SetupError::Url(url.to_owned(), Box::new(e)))
        })
        .collect::<Result<Vec<_>, _>>()?;
    let link = Arc::new(Link::default());
    let events = {
        let link = link.clone();
        move |event: async_nats::Event| {
            let (health, metrics, link) = (health.clone(), metrics.clone(), link.clone());
            async move { on_event(&event, &health, &metrics, &link) }
        }
    };
    let client = async_nats::ConnectOptions::new()
        .name("fieldcast-bridge")
        .retry_on_initial_connect()
        .max_reconnects(None)
        .connection_timeout(Duration::from_secs(5))
        .ping_interval(Duration::from_secs(5))
        .reconnect_delay_callback(reconnect_delay)
        .event_callback(events)
        .connect(servers)
        .await?;
    Ok((client, NatsLink(link)))
}

/// Readiness shared between the connection's events and the [`Source`].
#[derive(Debug, Clone)]
pub struct NatsLink(Arc<Link>);

fn on_event(event: &async_nats::Event, health: &Health, metrics: &Metrics, link: &Link) {
    match event {
        async_nats::Event::Connected => {
            tracing::info!("connected to NATS");
            metrics.nats_connected.set(1);
            health.set_broker(link.consumer_ready.load(Ordering::Relaxed));
        }
        async_nats::Event::Disconnected => {
            tracing::warn!("NATS connection lost; reconnecting");
            metrics.nats_connected.set(0);
            metrics.nats_reconnects.inc();
            health.set_broker(false);
        }
        async_nats::Event::Closed => {
            metrics.nats_connected.set(0);
            health.set_broker(false);
        }
        async_nats::Event::Draining => tracing::info!("NATS connection draining"),
        // A failed connection attempt: `reconnect_delay` logs each one.
        async_nats::Event::ClientError(e) => tracing::debug!(error = %e, "NATS client"),
        other => tracing::warn!(event = %other, "NATS"),
    }
}

/// The delay before connection attempt `attempts` (async-nats counts from
/// 1, the first try, and again after each connection it had): none for the
/// first, then the bridge's equal-jitter backoff, 200 ms doubling to 30 s.
fn reconnect_delay(attempts: usize) -> Duration {
    if attempts <= 1 {
        return Duration::ZERO;
    }
    let d = Backoff::new(Duration::from_millis(200), Duration::from_secs(30))
        .delay_after(u32::try_from(attempts - 2).unwrap_or(u32::MAX));
    tracing::warn!(attempt = attempts, retry_in = ?d, "NATS unreachable");
    d
}

/// `devices.{id}.{kind}` back to the topic `devices/{id}/{kind}`. A
/// subject token holds a topic level; nats-server 2.10 and later write a
/// '.' inside a level as "//" (2.9 refuses such topics at the broker), so
/// "//" becomes '.' again.
pub fn topic_of(subject: &str) -> String {
    let mut topic = String::with_capacity(subject.len());
    for (i, token) in subject.split('.').enumerate() {
        if i > 0 {
            topic.push('/');
        }
        topic.push_str(&token.replace("//", "."));
    }
    topic
}

/// The replicas of a stream the bridge creates: 3 when the server it is
/// connected to is part of a cluster (its INFO names one), else 1.
pub fn replicas(info: &async_nats::ServerInfo) -> usize {
    if info.cluster.as_deref().is_some_and(|c| !c.is_empty()) {
        CLUSTER_REPLICAS
    } else {
        1
    }
}

/// The JetStream side of the bridge: pulls from the shared consumer and
/// hands each message to the [`Intake`] (built with
/// [`crate::source::intake::Settling::Independent`]).
pub struct Source {
    pub client: async_nats::Client,
    pub link: NatsLink,
    pub settings: Settings,
    pub intake: Intake,
    pub metrics: Arc<Metrics>,
    pub health: Arc<Health>,
}

impl Source {
    /// Runs until `stop_polling`. After `stop_reading` (shutdown began) it
    /// pulls no more and gives back (`-NAK`) what it took but did not
    /// queue, so another bridge gets it at once; the connection stays up
    /// for the sinks' last acks until `stop_polling`, then is flushed and
    /// closed.
    pub async fn run(mut self, stop_reading: CancellationToken, stop_polling: CancellationToken) {
        let acker = Acker::Nats(self.client.clone());
        let js = jetstream::new(self.client.clone());
        let mut backoff = Backoff::new(Duration::from_millis(200), Duration::from_secs(30));
        let mut log = fieldcast_core::LogLimiter::new(5, Duration::from_secs(10));
        let mut taken: Option<consumer::pull::Stream> = None;
        // The QoS 1 lane (docs/nats.md): bound once nats-server has made
        // its stream, looked for again after a pause while it is missing.
        let mut qos1: Option<consumer::pull::Stream> = None;
        let mut handoff: Option<i64> = None;
        let mut qos1_backoff = Backoff::new(QOS1_RETRY, QOS1_RETRY * 5);
        let qos1_retry = tokio::time::sleep(Duration::ZERO);
        tokio::pin!(qos1_retry);
        while !stop_reading.is_cancelled() {
            if taken.is_none() {
                let started = tokio::select! {
                    _ = stop_reading.cancelled() => break,
                    r = self.pull(&js) => r,
                };
                match started {
                    Ok(m) => {
                        backoff.reset();
                        taken = Some(m);
                    }
                    Err(e) => {
                        self.set_consumer_ready(false);
                        let delay = backoff.next_delay();
                        tracing::warn!(error = %e, retry_in = ?delay, "JetStream consumer not ready");
                        tokio::select! {
                            _ = stop_reading.cancelled() => break,
                            _ = tokio::time::sleep(delay) => continue,
                        }
                    }
                }
            }
            let Some(messages) = taken.as_mut() else {
                continue;
            };
            let queue = self.intake.queue().clone();
            // Created before the release, so room made right after it
            // still wakes the select below.
            let room = queue.room();
            self.intake.release();
            if self.intake.holding() {
                tokio::select! {
                    biased;
                    _ = stop_reading.cancelled() => break,
                    _ = room => continue,
                }
            }
            // Not biased between the lanes: a busy main stream must not
            // starve the QoS 1 lane.
            let next = tokio::select! {
                _ = stop_reading.cancelled() => break,
                next = messages.next() => Next::Message(Lane::Stream, next),
                next = next_of(&mut qos1) => Next::Message(Lane::Qos1, next),
                () = &mut qos1_retry, if qos1.is_none() => Next::BindQos1,
            };
            let (lane, next) = match next {
                Next::BindQos1 => {
                    match self.bind_qos1(&js).await {
                        Ok((m, from)) => {
                            qos1_backoff.reset();
                            qos1 = Some(m);
                            handoff = Some(from);
                            self.metrics.nats_qos1_lane.set(1);
                        }
                        Err(e) => {
                            let delay = qos1_backoff.next_delay();
                            tracing::debug!(error = %e, retry_in = ?delay, "QoS 1 lane not bound");
                            qos1_retry
                                .as_mut()
                                .reset(tokio::time::Instant::now() + delay);
                        }
                    }
                    continue;
                }
                Next::Message(lane, next) => (lane, next),
            };
            match next {
                Some(Ok(msg)) => self.handle(msg, lane, handoff, &acker).await,
                Some(Err(e)) => {
                    // Missed heartbeats and failed pulls (NATS away) are
                    // retried by the stream itself; the rest need a new one.
                    use consumer::pull::MessagesErrorKind as K;
                    let kind = e.kind();
                    let fatal = matches!(
                        kind,
                        K::ConsumerDeleted
                            | K::NoResponders
                            | K::PushBasedConsumer
                            | K::RequestLimitExceeded
                    );
                    if let Some(suppressed) = log.allow() {
                        tracing::warn!(error = %e, fatal, ?lane, suppressed, "JetStream pull");
                    }
                    if fatal {
                        match lane {
                            Lane::Stream => {
                                self.set_consumer_ready(false);
                                taken = None;
                            }
                            Lane::Qos1 => {
                                if kind == K::ConsumerDeleted {
                                    // Nothing holds the QoS 1 copies for us
                                    // until a new consumer exists: take them
                                    // from the main stream again.
                                    handoff = None;
                                }
                                self.unbind_qos1(&mut qos1, qos1_retry.as_mut(), &mut qos1_backoff);
                            }
                        }
                    }
                }
                None => match lane {
                    Lane::Stream => {
                        self.set_consumer_ready(false);
                        taken = None;
                    }
                    Lane::Qos1 => {
                        self.unbind_qos1(&mut qos1, qos1_retry.as_mut(), &mut qos1_backoff);
                    }
                },
            }
        }
        self.give_back(taken, qos1, &acker).await;
        // The sinks' last acks go out over this connection.
        stop_polling.cancelled().await;
        self.close().await;
    }

    fn unbind_qos1(
        &self,
        qos1: &mut Option<consumer::pull::Stream>,
        retry: std::pin::Pin<&mut tokio::time::Sleep>,
        backoff: &mut Backoff,
    ) {
        *qos1 = None;
        self.metrics.nats_qos1_lane.set(0);
        retry.reset(tokio::time::Instant::now() + backoff.next_delay());
    }

    /// At shutdown: what was taken but not queued goes back at once
    /// (`-NAK`), for another bridge.
    async fn give_back(
        &mut self,
        taken: Option<consumer::pull::Stream>,
        qos1: Option<consumer::pull::Stream>,
        acker: &Acker,
    ) {
        let mut back = self.intake.abandon_held();
        for mut messages in taken.into_iter().chain(qos1) {
            while let Some(Some(Ok(msg))) = messages.next().now_or_never() {
                if let Some(reply) = msg.message.reply {
                    back.push(AckToken::Nats(reply));
                }
            }
        }
        for t in &back {
            let _ = acker.settle(t, Verdict::Nak).await;
        }
        if !back.is_empty() {
            tracing::info!(n = back.len(), "gave unqueued messages back to JetStream");
        }
    }

    /// Flushes the last acks and closes the connection, each step bounded
    /// (NATS may be gone).
    async fn close(&self) {
        const BOUND: Duration = Duration::from_secs(2);
        let connected = self.client.connection_state() == async_nats::connection::State::Connected;
        if connected
            && tokio::time::timeout(BOUND, self.client.flush())
                .await
                .is_err()
        {
            tracing::warn!("last acks not flushed to NATS; they will be redelivered");
        }
        self.set_consumer_ready(false);
        let _ = tokio::time::timeout(BOUND, self.client.drain()).await;
        self.metrics.nats_connected.set(0);
    }

    fn set_consumer_ready(&self, ok: bool) {
        self.link.0.consumer_ready.store(ok, Ordering::Relaxed);
        let connected = self.client.connection_state() == async_nats::connection::State::Connected;
        self.health.set_broker(ok && connected);
    }

    /// Waits for the connection, makes sure the stream and the consumer
    /// exist, and starts pulling.
    async fn pull(&self, js: &jetstream::Context) -> Result<consumer::pull::Stream, SetupError> {
        while self.client.connection_state() != async_nats::connection::State::Connected {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let s = &self.settings;
        let stream = js
            .get_or_create_stream(stream::Config {
                name: s.stream.clone(),
                subjects: vec![SUBJECTS.to_owned()],
                // Acknowledged messages leave the stream: its size is the
                // backlog, not the history.
                retention: stream::RetentionPolicy::WorkQueue,
                storage: stream::StorageType::File,
                num_replicas: replicas(&self.client.server_info()),
                ..Default::default()
            })
            .await
            .map_err(|e| SetupError::Stream(s.stream.clone(), e.to_string()))?;
        let info = stream.cached_info();
        if !info.config.subjects.iter().any(|x| x == SUBJECTS) {
            tracing::warn!(stream = %s.stream, subjects = ?info.config.subjects, "the stream does not capture {SUBJECTS}");
        }
        tracing::info!(stream = %s.stream, replicas = info.config.num_replicas, messages = info.state.messages, "JetStream stream");
        let (messages, _) = self.durable_pull(&stream, &s.consumer, None).await?;
        self.set_consumer_ready(true);
        tracing::info!(consumer = %s.consumer, max_ack_pending = s.max_ack_pending, ack_wait = ?s.ack_wait, "pulling from JetStream");
        Ok(messages)
    }

    /// Creates the durable pull consumer `name` on `stream` (shared by
    /// every bridge, optionally filtered), or updates the settings of the
    /// one another bridge made (one that cannot be updated is used as it
    /// is), and starts pulling. Answers the pull and the consumer's
    /// creation time (ms since the epoch).
    async fn durable_pull(
        &self,
        stream: &jetstream::stream::Stream,
        name: &str,
        filter: Option<String>,
    ) -> Result<(consumer::pull::Stream, i64), SetupError> {
        let s = &self.settings;
        let config = consumer::pull::Config {
            durable_name: Some(name.to_owned()),
            filter_subject: filter.unwrap_or_default(),
            ack_policy: consumer::AckPolicy::Explicit,
            ack_wait: s.ack_wait,
            max_ack_pending: i64::try_from(s.max_ack_pending).unwrap_or(i64::MAX),
            deliver_policy: consumer::DeliverPolicy::All,
            ..Default::default()
        };
        let consumer: consumer::PullConsumer = match stream.create_consumer(config).await {
            Ok(c) => c,
            Err(e) => {
                tracing::warn!(consumer = %name, error = %e, "cannot create or update the consumer; using it as it is");
                stream
                    .get_consumer(name)
                    .await
                    .map_err(|e| SetupError::Consumer(name.to_owned(), e.to_string()))?
            }
        };
        let created =
            i64::try_from(consumer.cached_info().created.unix_timestamp_nanos() / 1_000_000)
                .unwrap_or(i64::MAX);
        let messages = consumer
            .stream()
            .max_messages_per_batch(s.batch)
            .heartbeat(HEARTBEAT)
            .messages()
            .await
            .map_err(|e| SetupError::Pull(e.to_string()))?;
        Ok((messages, created))
    }

    /// Binds the QoS 1 lane: a durable consumer of its own on
    /// nats-server's [`MQTT_QOS1_STREAM`], filtered to the device subjects
    /// and shared by every bridge like the main one. Answers its pull and
    /// the handoff time: main-stream QoS 1 copies published from then on
    /// (ms since the epoch) are left to this lane.
    async fn bind_qos1(
        &self,
        js: &jetstream::Context,
    ) -> Result<(consumer::pull::Stream, i64), SetupError> {
        let s = &self.settings;
        let name = qos1_consumer(&s.consumer);
        let stream = js
            .get_stream(MQTT_QOS1_STREAM)
            .await
            .map_err(|e| SetupError::Stream(MQTT_QOS1_STREAM.to_owned(), e.to_string()))?;
        let filter = format!("{MQTT_QOS1_PREFIX}{SUBJECTS}");
        let (messages, created) = self.durable_pull(&stream, &name, Some(filter)).await?;
        let handoff =
            created.saturating_add(i64::try_from(HANDOFF_MARGIN.as_millis()).unwrap_or(i64::MAX));
        tracing::info!(stream = MQTT_QOS1_STREAM, consumer = %name, created_ms = created, "pulling QoS 1 messages from nats-server's MQTT stream");
        Ok((messages, handoff))
    }

    async fn handle(
        &mut self,
        msg: jetstream::Message,
        lane: Lane,
        handoff: Option<i64>,
        acker: &Acker,
    ) {
        let (published, redelivered) = match msg.info() {
            Ok(info) => (
                i64::try_from(info.published.unix_timestamp_nanos() / 1_000_000).ok(),
                info.delivered > 1,
            ),
            Err(_) => (None, false),
        };
        if redelivered {
            self.metrics.nats_redelivered.inc();
        }
        let jetstream::Message { message, .. } = msg;
        let Some(reply) = message.reply else {
            // Not from a consumer with acks: nothing to settle.
            return;
        };
        let subject = message.subject.as_str();
        let subject = match lane {
            Lane::Stream => {
                if left_to_qos1_lane(message.headers.as_ref(), published, handoff) {
                    self.metrics.nats_qos1_copies.inc();
                    if let Err(e) = acker.settle(&AckToken::Nats(reply), Verdict::Ack).await {
                        tracing::debug!(error = %e, "settle not sent");
                    }
                    return;
                }
                subject
            }
            Lane::Qos1 => subject.strip_prefix(MQTT_QOS1_PREFIX).unwrap_or(subject),
        };
        let topic = topic_of(subject);
        let now = published.unwrap_or_else(fieldcast_core::time::now_ms);
        match self
            .intake
            .offer(&topic, &message.payload, Some(AckToken::Nats(reply)), now)
        {
            Settle::Later => {}
            Settle::Now(t, verdict) => {
                if let Err(e) = acker.settle(&t, verdict).await {
                    tracing::debug!(error = %e, "settle not sent");
                }
            }
        }
    }
}

/// Which consumer a message came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Lane {
    /// The main stream ([`SUBJECTS`]): everything, QoS 0 included.
    Stream,
    /// nats-server's [`MQTT_QOS1_STREAM`]: what devices' PUBACKs stand for.
    Qos1,
}

/// What the source's loop does next. One lives at a time, on the stack,
/// and is taken apart at once: boxing the message would cost an
/// allocation per message for nothing.
#[allow(clippy::large_enum_variant)]
enum Next {
    Message(
        Lane,
        Option<Result<jetstream::Message, consumer::pull::MessagesError>>,
    ),
    BindQos1,
}

/// The next message of a lane; never, while it is not bound.
async fn next_of(
    lane: &mut Option<consumer::pull::Stream>,
) -> Option<Result<jetstream::Message, consumer::pull::MessagesError>> {
    match lane {
        Some(messages) => messages.next().await,
        None => std::future::pending().await,
    }
}

/// The QoS 1 lane's durable consumer, named after the main one.
pub fn qos1_consumer(consumer: &str) -> String {
    format!("{consumer}-qos1")
}

/// Whether a message of the main stream is a QoS 1 MQTT publish that the
/// QoS 1 lane handles: published (stream time, ms) at or after the
/// `handoff`, with nats-server's QoS header saying `1`.
fn left_to_qos1_lane(
    headers: Option<&async_nats::HeaderMap>,
    published: Option<i64>,
    handoff: Option<i64>,
) -> bool {
    let (Some(published), Some(handoff)) = (published, handoff) else {
        return false;
    };
    published >= handoff
        && headers
            .and_then(|h| h.get(MQTT_QOS_HEADER))
            .is_some_and(|v| v.as_str() == "1")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subjects_map_back_to_topics() {
        assert_eq!(
            topic_of("devices.truck-7.location"),
            "devices/truck-7/location"
        );
        assert_eq!(topic_of("devices.a_b.events"), "devices/a_b/events");
        // nats-server 2.10+: a '.' in a topic level travels as "//".
        assert_eq!(topic_of("devices.v1//2.status"), "devices/v1.2/status");
        assert_eq!(topic_of("devices.x.y.location"), "devices/x/y/location");
    }

    #[test]
    fn qos1_copies_after_the_handoff_are_left_to_the_qos1_lane() {
        let mut h = async_nats::HeaderMap::new();
        h.insert(MQTT_QOS_HEADER, "1");
        let mut q0 = async_nats::HeaderMap::new();
        q0.insert(MQTT_QOS_HEADER, "0");
        assert!(left_to_qos1_lane(Some(&h), Some(1000), Some(1000)));
        assert!(left_to_qos1_lane(Some(&h), Some(5000), Some(1000)));
        assert!(
            !left_to_qos1_lane(Some(&h), Some(999), Some(1000)),
            "before the handoff both lanes handle it"
        );
        assert!(
            !left_to_qos1_lane(Some(&h), Some(5000), None),
            "lane never bound"
        );
        assert!(
            !left_to_qos1_lane(Some(&h), None, Some(1000)),
            "no stream time"
        );
        assert!(
            !left_to_qos1_lane(Some(&q0), Some(5000), Some(1000)),
            "QoS 0"
        );
        assert!(
            !left_to_qos1_lane(None, Some(5000), Some(1000)),
            "published on NATS, not over MQTT"
        );
    }

    #[test]
    fn a_cluster_gets_three_replicas() {
        let mut info = async_nats::ServerInfo::default();
        assert_eq!(replicas(&info), 1);
        info.cluster = Some("fc".into());
        assert_eq!(replicas(&info), 3);
    }

    #[test]
    fn reconnects_back_off_with_jitter_up_to_30s() {
        assert_eq!(reconnect_delay(1), Duration::ZERO, "the first try at once");
        let first = reconnect_delay(2);
        assert!(first >= Duration::from_millis(100) && first <= Duration::from_millis(200));
        let late = reconnect_delay(50);
        assert!(late >= Duration::from_secs(15) && late <= Duration::from_secs(30));
    }
}
