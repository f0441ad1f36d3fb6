//! Acknowledgements: a message that must not be lost is acknowledged to
//! its broker only after what it carries is stored (PostgreSQL or the
//! spool). The source takes an [`AckToken`] from each such message; the
//! reliable sink sends it back through the [`Acker`] once the batch holding
//! it is stored, in the order the broker sent them (which MQTT requires and
//! JetStream does not mind).
//!
//! Two brokers, one path: an MQTT QoS 1 PUBLISH is settled by a PUBACK of
//! its packet id; a JetStream message by a `+ACK` (or `+TERM`, `-NAK`)
//! published to its reply subject. Where each kind is settled is in
//! `docs/nats.md` and [`crate::source::intake`].

use std::time::Duration;

use async_nats::connection::State;
use async_nats::Subject;
use bytes::Bytes;
use rumqttc::{AsyncClient, Publish, QoS};

/// What is needed to settle one message later.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AckToken {
    /// An MQTT QoS 1 PUBLISH: its packet id.
    Mqtt { pkid: u16 },
    /// A JetStream message: its `$JS.ACK...` reply subject (shared bytes,
    /// cheap to clone).
    Nats(Subject),
}

/// How long a JetStream ack may wait for room in the client's command
/// channel. Past it, and while the client is not connected, the ack is not
/// sent: the message comes again after `ack_wait` and is stored once, where
/// a blocked ack would stall the reliable lane (and shutdown) until NATS
/// returns.
const NATS_SEND: Duration = Duration::from_secs(1);

/// How a JetStream message is settled (ADR-15 ack kinds).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Done: stored, or accepted at most once.
    Ack,
    /// Never deliver again: the message is rejected for its content.
    Term,
    /// Deliver again now (to any bridge): this one is stopping.
    Nak,
}

impl Verdict {
    fn body(self) -> Bytes {
        Bytes::from_static(match self {
            Verdict::Ack => b"+ACK",
            Verdict::Term => b"+TERM",
            Verdict::Nak => b"-NAK",
        })
    }
}

/// Why an acknowledgement could not be sent. Nothing to retry: an
/// unacknowledged message is delivered again, and every write is
/// idempotent.
#[derive(Debug, thiserror::Error)]
pub enum AckError {
    #[error("MQTT ack not sent: {0}")]
    Mqtt(#[from] rumqttc::ClientError),
    #[error("JetStream ack not sent: {0}")]
    Nats(#[from] async_nats::PublishError),
    #[error("JetStream ack not sent: not connected")]
    NotConnected,
    #[error("JetStream ack not sent within {NATS_SEND:?}")]
    Timeout,
    #[error("a token of one broker given to the other's acker")]
    WrongBroker,
}

/// Sends acknowledgements for stored messages, to whichever broker the
/// bridge reads.
#[derive(Clone)]
pub enum Acker {
    Mqtt(AsyncClient),
    Nats(async_nats::Client),
}

impl Acker {
    /// Settles a stored message: a PUBACK, or a JetStream `+ACK`.
    pub async fn ack(&self, t: &AckToken) -> Result<(), AckError> {
        self.settle(t, Verdict::Ack).await
    }

    /// Settles `t` with `verdict`. MQTT knows only the PUBACK: `Term` is
    /// one there, and `Nak` sends nothing (the broker redelivers the
    /// PUBLISH on the next session).
    pub async fn settle(&self, t: &AckToken, verdict: Verdict) -> Result<(), AckError> {
        match (self, t) {
            (Acker::Mqtt(_), AckToken::Mqtt { .. }) if verdict == Verdict::Nak => Ok(()),
            (Acker::Mqtt(client), AckToken::Mqtt { pkid }) => {
                let mut p = Publish::new("", QoS::AtLeastOnce, Vec::new());
                p.pkid = *pkid;
                Ok(client.ack(&p).await?)
            }
            (Acker::Nats(client), AckToken::Nats(reply)) => {
                if client.connection_state() != State::Connected {
                    return Err(AckError::NotConnected);
                }
                let send = client.publish(reply.clone(), verdict.body());
                match tokio::time::timeout(NATS_SEND, send).await {
                    Ok(sent) => Ok(sent?),
                    Err(_) => Err(AckError::Timeout),
                }
            }
            _ => Err(AckError::WrongBroker),
        }
    }
}
