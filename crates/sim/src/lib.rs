//! `fieldcast-sim`: simulated devices over MQTT, for demos, tests and
//! (later) the end-to-end benchmark and the probe.
//!
//! The path of a simulated message:
//!
//! - [`route`]: where a vehicle is (waypoints, speed, heading), pure;
//! - [`device`]: one device's state (route, battery, signal, event ids),
//!   turned into payload bytes by [`payload`] (PROTOCOL.md §2 shapes);
//! - [`fleet`]: the `fleet` command, which schedules every device's sends
//!   and publishes them over MQTT connections that reconnect with
//!   [`backoff`], until stopped, then brings each device offline cleanly.

pub mod backoff;
pub mod device;
pub mod fleet;
pub mod payload;
pub mod route;
