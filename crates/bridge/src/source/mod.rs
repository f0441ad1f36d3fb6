//! Where messages come from: the broker. One source runs, chosen by the
//! configuration: [`mqtt`] (the default) or [`nats`] (JetStream, when
//! `FIELDCAST_NATS_URL` is set). Both hand every message to the same
//! [`intake`]: parse, hold back, queue, dead-letter, and say where it is
//! acknowledged.

pub mod intake;
pub mod mqtt;
pub mod nats;
