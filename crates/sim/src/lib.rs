//! `fieldcast-sim`: simulated devices over MQTT, for demos and tests, the
//! end-to-end benchmark, and the synthetic probe.
//!
//! The path of a simulated message:
//!
//! - [`route`]: where a vehicle is (waypoints, speed, heading), pure;
//! - [`device`]: one device's state (route, battery, signal, event ids),
//!   turned into payload bytes by [`payload`] (PROTOCOL.md §2 shapes);
//! - [`fleet`]: the `fleet` command, which schedules every device's sends
//!   and publishes them over MQTT connections that reconnect with
//!   [`fieldcast_core::backoff`], until stopped, then brings each device offline cleanly.
//!
//! Around it:
//!
//! - [`bench`]: the `bench` command: devices -> broker -> bridge -> gateway
//!   -> [`ws`] clients (or a plain MQTT subscriber: the floor), every
//!   message matched to its send; a table and a JSON line;
//! - [`probe`]: the `probe` service: one synthetic device, a round every
//!   interval, end-to-end latency and success on its own `/metrics`;
//! - [`token`]: gateway tokens, given or minted from the shared secret.

pub mod bench;
pub mod device;
pub mod fleet;
pub mod payload;
pub mod probe;
pub mod route;
pub mod token;
pub mod ws;
