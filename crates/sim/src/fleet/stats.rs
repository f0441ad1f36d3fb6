//! Fleet counters, shared by every connection task, and the summary printed
//! on exit.

use std::fmt;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering::Relaxed};

use fieldcast_core::time::now_ms;

/// Live counters. Each is only ever added to (`connected` also goes down).
#[derive(Debug, Default)]
pub struct Stats {
    /// Messages handed to the MQTT client, by kind.
    pub location: AtomicU64,
    pub status: AtomicU64,
    pub event: AtomicU64,
    /// Events by severity (part of `event`).
    pub critical: AtomicU64,
    /// Location slots skipped because the connection was down or fell
    /// more than a period behind.
    pub skipped: AtomicU64,
    /// PUBLISH packets the event loops wrote to the socket.
    pub written: AtomicU64,
    /// PUBACKs read (status and events, locations at QoS 1). Acks that
    /// arrive together with the broker closing the socket after DISCONNECT
    /// are not counted, so at shutdown this trails the QoS 1 messages sent.
    pub acked: AtomicU64,
    /// Successful connections (the first and every reconnect).
    pub connects: AtomicU64,
    /// Failed connects and lost connections.
    pub connection_errors: AtomicU64,
    /// Publishes the client refused (its event loop was gone).
    pub publish_errors: AtomicU64,
    /// Connections up right now.
    pub connected: AtomicU64,
    /// When the last warning was logged (epoch ms), for rate limiting.
    last_warn_ms: AtomicI64,
    /// Warnings swallowed by the rate limit since the last one logged.
    suppressed: AtomicU64,
}

impl Stats {
    pub fn add(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Relaxed);
    }

    /// At most one warning a second for the whole fleet: a broker outage
    /// must not print a line per device. Returns how many were suppressed
    /// since the last one, or `None` when this one should stay quiet.
    pub fn warn_allowed(&self) -> Option<u64> {
        let now = now_ms();
        let last = self.last_warn_ms.load(Relaxed);
        if now - last >= 1_000
            && self
                .last_warn_ms
                .compare_exchange(last, now, Relaxed, Relaxed)
                .is_ok()
        {
            Some(self.suppressed.swap(0, Relaxed))
        } else {
            self.suppressed.fetch_add(1, Relaxed);
            None
        }
    }

    pub fn summary(&self) -> Summary {
        let get = |c: &AtomicU64| c.load(Relaxed);
        Summary {
            location: get(&self.location),
            status: get(&self.status),
            event: get(&self.event),
            critical: get(&self.critical),
            skipped: get(&self.skipped),
            written: get(&self.written),
            acked: get(&self.acked),
            connects: get(&self.connects),
            connection_errors: get(&self.connection_errors),
            publish_errors: get(&self.publish_errors),
        }
    }
}

/// What a fleet run did; see [`Stats`] for each field.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Summary {
    pub location: u64,
    pub status: u64,
    pub event: u64,
    pub critical: u64,
    pub skipped: u64,
    pub written: u64,
    pub acked: u64,
    pub connects: u64,
    pub connection_errors: u64,
    pub publish_errors: u64,
}

impl Summary {
    pub fn sent(&self) -> u64 {
        self.location + self.status + self.event
    }
}

impl fmt::Display for Summary {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "fieldcast-sim fleet summary")?;
        writeln!(f, "  sent location      {:>12}", self.location)?;
        writeln!(f, "  sent status        {:>12}", self.status)?;
        writeln!(
            f,
            "  sent event         {:>12}  ({} critical)",
            self.event, self.critical
        )?;
        writeln!(f, "  written to socket  {:>12}", self.written)?;
        writeln!(f, "  acks read          {:>12}", self.acked)?;
        writeln!(f, "  locations skipped  {:>12}", self.skipped)?;
        writeln!(f, "  connects           {:>12}", self.connects)?;
        writeln!(f, "  connection errors  {:>12}", self.connection_errors)?;
        write!(f, "  publish errors     {:>12}", self.publish_errors)
    }
}
