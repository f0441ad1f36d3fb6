//! Every row and record the pipeline carries, in one place: what the
//! source puts on the queue ([`LiveLocation`], [`LocationRow`],
//! [`Reliable`], [`DeadLetter`]) and the history rows the stores write
//! ([`LocationRow`], [`StatusRow`], [`EventRow`]). The spool's on-disk form
//! of them is [`crate::store::spool::Record`].

use fieldcast_core::{DeviceId, Event, Location, Status};

use crate::ack::AckToken;

/// A location on its way to the hot state.
#[derive(Debug, Clone)]
pub struct LiveLocation {
    pub device: DeviceId,
    pub loc: Location,
    /// Bridge receive time, epoch ms.
    pub rx: i64,
}

/// An accepted location for the history table.
#[derive(Debug, Clone, PartialEq)]
pub struct LocationRow {
    pub device: DeviceId,
    pub loc: Location,
    pub received_at: i64,
}

#[cfg(test)]
mod test_rows {
    use super::*;

    impl LocationRow {
        /// A fix at (1, 2) with nothing optional, received at its own `ts`.
        pub fn at(device: &str, ts: i64) -> Self {
            LocationRow {
                device: DeviceId::parse(device).unwrap(),
                loc: Location {
                    ts,
                    lat: 1.0,
                    lon: 2.0,
                    alt: None,
                    speed: None,
                    heading: None,
                    accuracy: None,
                },
                received_at: ts,
            }
        }
    }
}

/// An item that must not be lost and whose acknowledgement keeps its order.
#[derive(Debug, Clone)]
pub enum Reliable {
    Status {
        device: DeviceId,
        status: Status,
        rx: i64,
        ack: Option<AckToken>,
    },
    Event {
        device: DeviceId,
        event: Event,
        rx: i64,
        ack: Option<AckToken>,
    },
    /// A QoS 1 MQTT message with nothing left to store (a location, whose
    /// history row is already queued, or a rejected message), acknowledged
    /// in its turn.
    AckOnly(AckToken),
}

impl Reliable {
    pub fn ack(&self) -> Option<&AckToken> {
        match self {
            Reliable::Status { ack, .. } | Reliable::Event { ack, .. } => ack.as_ref(),
            Reliable::AckOnly(a) => Some(a),
        }
    }
}

/// A rejected message for `<prefix>deadletter`.
#[derive(Debug, Clone, PartialEq)]
pub struct DeadLetter {
    pub topic: String,
    pub reason: &'static str,
    pub received_at: i64,
    /// The first 1 KiB of the payload, invalid UTF-8 replaced.
    pub payload: String,
}

impl DeadLetter {
    pub const PAYLOAD_BYTES: usize = 1024;

    pub fn new(topic: &str, reason: &'static str, received_at: i64, payload: &[u8]) -> Self {
        let head = &payload[..payload.len().min(Self::PAYLOAD_BYTES)];
        DeadLetter {
            topic: topic.chars().take(1024).collect(),
            reason,
            received_at,
            payload: String::from_utf8_lossy(head).into_owned(),
        }
    }
}

/// An accepted status report for `device_status`.
#[derive(Debug, Clone, PartialEq)]
pub struct StatusRow {
    pub device: DeviceId,
    pub status: Status,
    pub received_at: i64,
}

/// An accepted event for `events`.
#[derive(Debug, Clone, PartialEq)]
pub struct EventRow {
    pub device: DeviceId,
    pub event: Event,
    pub received_at: i64,
}
