//! The MQTT source: subscribes to the device topics and hands every
//! PUBLISH to the [`Intake`] (parse once, queue, dead-letter rejects).
//!
//! The event loop is polled without pause, so keepalive holds whatever the
//! sinks are doing: a message the queue has no room for waits in the
//! intake's hold-back buffer instead of stalling `poll()`. QoS 1 messages
//! are acknowledged by the sink ([`crate::ack::Acker`]) only after they are
//! stored, so the broker's inflight window bounds how many QoS 1 messages
//! can be held back; QoS 0 locations beyond [`HELD_MAX`] are shed and
//! counted (`fieldcast_bridge_shed_total`), never accepted and then lost.
//! Reconnects back off with jitter (rumqttc by itself retries in a tight
//! loop).

use std::sync::Arc;
use std::time::Duration;

use rumqttc::{AsyncClient, Event, EventLoop, MqttOptions, Packet, Publish, QoS, SubscribeFilter};
use tokio_util::sync::CancellationToken;

use fieldcast_core::{Backoff, Kind};

use crate::ack::AckToken;
use crate::config::Config;
use crate::health::Health;
use crate::metrics::Metrics;
pub use crate::source::intake::HELD_MAX;
use crate::source::intake::{Intake, Settle};

/// Capacity of rumqttc's request channel (subscribe and every PUBACK go
/// through it). Far above any sane broker inflight window, so an ack never
/// waits for room while the source is waiting on the queue.
const REQUEST_CHANNEL: usize = 10_000;

/// The topic filters and their QoS (PROTOCOL.md §2).
pub fn filters(shared_group: Option<&str>) -> Vec<SubscribeFilter> {
    [
        (Kind::Location, QoS::AtMostOnce),
        (Kind::Status, QoS::AtLeastOnce),
        (Kind::Event, QoS::AtLeastOnce),
    ]
    .into_iter()
    .map(|(kind, qos)| {
        let base = format!("devices/+/{}", kind.topic_suffix());
        let path = match shared_group {
            Some(g) => format!("$share/{g}/{base}"),
            None => base,
        };
        SubscribeFilter::new(path, qos)
    })
    .collect()
}

/// Builds the bridge's MQTT connection: persistent session under a stable
/// client id, manual acks, TCP_NODELAY, packets up to `mqtt_max_packet`.
pub fn connect(
    config: &Config,
) -> Result<(AsyncClient, EventLoop), fieldcast_mqtt::MqttConfigError> {
    let mut opts: MqttOptions = config.mqtt.options(&config.mqtt_client_id)?;
    opts.set_clean_session(false)
        .set_manual_acks(true)
        .set_keep_alive(config.mqtt_keepalive)
        .set_max_packet_size(config.mqtt_max_packet, 64 * 1024);
    let (client, mut eventloop) = AsyncClient::new(opts, REQUEST_CHANNEL);
    let mut net = eventloop.network_options();
    net.set_tcp_nodelay(true);
    net.set_connection_timeout(5);
    eventloop.set_network_options(net);
    Ok((client, eventloop))
}

/// The MQTT side of the bridge: polls the broker (keepalive included,
/// whatever the queue does) and offers each PUBLISH to the [`Intake`]
/// (built with [`crate::source::intake::Settling::InOrder`]); what does
/// not fit waits there, QoS 1 messages unacknowledged (the broker's
/// inflight window bounds them). Acknowledgements come later, from the
/// sinks ([`crate::ack::Acker`]).
pub struct Source {
    pub client: AsyncClient,
    pub filters: Vec<SubscribeFilter>,
    pub intake: Intake,
    pub metrics: Arc<Metrics>,
    pub health: Arc<Health>,
}

impl Source {
    /// Runs until `stop_polling`. After `stop_reading` (shutdown began)
    /// messages are no longer taken — QoS 1 ones stay unacknowledged, so the
    /// broker redelivers them — but the loop keeps polling so the sink's
    /// last acknowledgements still reach the broker.
    pub async fn run(
        mut self,
        mut eventloop: EventLoop,
        stop_reading: CancellationToken,
        stop_polling: CancellationToken,
    ) {
        let mut backoff = Backoff::new(Duration::from_millis(200), Duration::from_secs(30));
        // Between a CONNACK and the next error: a drop counts as a reconnect.
        let mut connected = false;
        let queue = self.intake.queue().clone();
        loop {
            // Created before the attempt, so room made right after it still
            // wakes the select below.
            let room = queue.room();
            self.intake.release();
            let holding = self.intake.holding();
            let ev = tokio::select! {
                biased;
                _ = stop_polling.cancelled() => break,
                _ = room, if holding => continue,
                ev = eventloop.poll() => ev,
            };
            match ev {
                Ok(Event::Incoming(Packet::Publish(p))) => {
                    if stop_reading.is_cancelled() {
                        self.metrics.unread_at_shutdown.inc();
                        continue;
                    }
                    self.handle(p);
                }
                Ok(Event::Incoming(Packet::ConnAck(ack))) => {
                    connected = true;
                    backoff.reset();
                    self.on_connack(ack.session_present).await;
                }
                Ok(Event::Incoming(Packet::SubAck(s))) => self.on_suback(&s.return_codes),
                Ok(_) => {}
                Err(e) => {
                    if std::mem::take(&mut connected) {
                        self.metrics.mqtt_reconnects.inc();
                    }
                    self.health.set_broker(false);
                    self.metrics.mqtt_connected.set(0);
                    let delay = backoff.next_delay();
                    tracing::warn!(error = %e, retry_in = ?delay, "broker connection lost");
                    tokio::select! {
                        _ = stop_polling.cancelled() => break,
                        _ = tokio::time::sleep(delay) => {}
                    }
                }
            }
        }
        // QoS 1 ones were never acknowledged: the broker redelivers them.
        let _ = self.intake.abandon_held();
        let _ = self.client.try_disconnect();
        // Let the DISCONNECT go out; the broker keeps the session either way.
        let _ = tokio::time::timeout(Duration::from_millis(500), eventloop.poll()).await;
        self.health.set_broker(false);
        self.metrics.mqtt_connected.set(0);
    }

    async fn on_connack(&self, session_present: bool) {
        self.metrics.mqtt_connected.set(1);
        tracing::info!(session_present, "connected to the broker");
        if session_present {
            self.health.set_broker(true);
        } else {
            // A new session (first start, or the broker lost it): the
            // subscriptions must be made again, and the bridge is ready only
            // once the broker has them — a QoS 0 message published before
            // the SUBACK would never reach it.
            if let Err(e) = self.client.subscribe_many(self.filters.clone()).await {
                tracing::error!(error = %e, "cannot queue the subscription");
            }
        }
    }

    fn on_suback(&self, codes: &[rumqttc::SubscribeReasonCode]) {
        if codes
            .iter()
            .any(|c| matches!(c, rumqttc::SubscribeReasonCode::Failure))
        {
            tracing::error!(?codes, "the broker refused a subscription (check the ACL)");
        }
        self.health.set_broker(true);
    }

    fn handle(&mut self, p: Publish) {
        let now = fieldcast_core::time::now_ms();
        let ack = (p.qos != QoS::AtMostOnce).then_some(AckToken::Mqtt { pkid: p.pkid });
        // In order: every token goes through the reliable lane.
        let settle = self.intake.offer(&p.topic, &p.payload, ack, now);
        debug_assert_eq!(settle, Settle::Later);
    }
}
