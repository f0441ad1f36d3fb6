//! What kind of message a frame is: a leaf both the outbox (its
//! coalescing rule) and the metrics (`messages_out{type}`) use.

/// What kind of message a frame is, for metrics and for the coalescing rule.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Location,
    Status,
    Event,
    Message,
    /// snapshot, subscribed, unsubscribed, pong, error, pings.
    Reply,
}

impl Kind {
    /// Every kind, in [`Kind::index`] order.
    pub const ALL: [Kind; 5] = [
        Kind::Location,
        Kind::Status,
        Kind::Event,
        Kind::Message,
        Kind::Reply,
    ];

    /// The kind's position in [`Kind::ALL`].
    pub fn index(self) -> usize {
        match self {
            Kind::Location => 0,
            Kind::Status => 1,
            Kind::Event => 2,
            Kind::Message => 3,
            Kind::Reply => 4,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Location => "location",
            Kind::Status => "status",
            Kind::Event => "event",
            Kind::Message => "message",
            Kind::Reply => "reply",
        }
    }
}
