//! Where messages come from: the broker.

pub mod mqtt;
