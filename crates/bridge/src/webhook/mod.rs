//! Webhooks (issue #15): alerts owed to HTTP endpoints, delivered from a
//! durable outbox in PostgreSQL, at least once, signed.
//!
//! ```text
//!  the transaction that stores an alert's event ──enqueue──> webhook_outbox (PostgreSQL, shared)
//!      then Wake::owed ──> sender::Sender (one per bridge) ──claim──┘   │
//!                             │ up to 8 POSTs at once                    │ 2xx: delete
//!                             └──> endpoint (X-Fieldcast-Signature)      │ else: next_attempt += backoff
//!                                                                        │ older than give-up: delete, failed
//! ```
//!
//! - [`outbox`]: the table's statements ([`enqueue`], claim, settle);
//!   [`Owed`] is one row to write.
//! - [`sender`]: the loop that claims, POSTs and settles ([`Sender`],
//!   [`Wake`], [`Settings`]).
//! - [`sign`]: the `X-Fieldcast-Signature` header.
//!
//! The promise, for receivers (docs/webhooks.md): every alert owed is
//! POSTed until a 2xx or the give-up age, possibly more than once (a sender
//! that dies between the POST and the delete, or whose settle cannot reach
//! PostgreSQL, leaves the row to be sent again), so receivers dedup on the
//! body's (`device`, `id`).

pub mod outbox;
pub mod sender;
pub mod sign;

pub use outbox::{enqueue, Owed};
pub use sender::{Sender, SenderError, Settings, Wake};
