//! What kind of message a frame is: a leaf both the outbox (its
//! coalescing rule) and the metrics (`messages_out{type}`) use.

/// What kind of message a frame is, for metrics and for the coalescing rule.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Location,
    Status,
    Event,
    Message,
    /// A device's group membership changed (issue #16).
    Groups,
    /// snapshot, subscribed, unsubscribed, pong, error, pings.
    Reply,
}

impl Kind {
    /// Every kind, in [`Kind::index`] order.
    pub const ALL: [Kind; 6] = [
        Kind::Location,
        Kind::Status,
        Kind::Event,
        Kind::Message,
        Kind::Reply,
        Kind::Groups,
    ];

    /// The kind's position in [`Kind::ALL`].
    pub fn index(self) -> usize {
        match self {
            Kind::Location => 0,
            Kind::Status => 1,
            Kind::Event => 2,
            Kind::Message => 3,
            Kind::Reply => 4,
            Kind::Groups => 5,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Location => "location",
            Kind::Status => "status",
            Kind::Event => "event",
            Kind::Message => "message",
            Kind::Reply => "reply",
            Kind::Groups => "groups",
        }
    }
}
