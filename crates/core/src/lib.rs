//! Fieldcast's domain, with no I/O: what a device may send and what the rest
//! of the system sends on.
//!
//! - [`id`]: [`DeviceId`], validated once at the edge.
//! - [`topic`]: `devices/{id}/{location|status|events}` parsed into a [`Topic`].
//! - [`payload`]: JSON payloads parsed and validated into [`Location`],
//!   [`Status`] and [`Event`], or a [`Reject`] with the reason that the
//!   bridge counts and dead-letters.
//! - [`live`]: the JSON shapes of PROTOCOL.md §4 (`location`, `status`,
//!   `event`, `DeviceState`), serialised once and shared.
//! - [`geo`]: [`geo::BBox`], one box type and parser, across the 180°
//!   meridian too.
//! - [`keys`]: the Redis key layout both services share.
//! - [`partition`]: which partition of that layout a device belongs to, and
//!   Redis Cluster's key slot.
//! - [`backoff`]: exponential backoff with jitter, and a log limiter, for
//!   every retry.
//! - [`time`]: epoch-millisecond helpers.
//! - [`glob`]: the `*`/`?` device patterns of tokens and rules.
//! - [`rule`]: alert rules ([`rule::Rule`]) as the API takes them and the
//!   bridge evaluates them.
//! - [`webhook`]: the endpoint fences and rules may name, its secret kept
//!   out of answers and logs.

pub mod backoff;
pub mod geo;
pub mod glob;
pub mod id;
pub mod keys;
pub mod live;
pub mod partition;
pub mod payload;
pub mod rule;
pub mod time;
pub mod topic;
pub mod webhook;

pub use backoff::{Backoff, LogLimiter};
pub use id::{DeviceId, DeviceIdError};
pub use keys::{Keys, Topology};
pub use live::{DeviceState, LiveEnvelope, LiveHeader};
pub use partition::{Partition, Partitions};
pub use payload::{Event, Limits, Location, Message, Reject, RejectReason, Severity, Status};
pub use topic::{Kind, Topic, TopicError};
