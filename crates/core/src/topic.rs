//! Device topics: `devices/{id}/location`, `devices/{id}/status`,
//! `devices/{id}/events` (PROTOCOL.md §2).

use crate::id::{DeviceId, DeviceIdError};

/// What a message on a device topic carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Kind {
    Location,
    Status,
    Event,
}

impl Kind {
    /// The `kind` label of `fieldcast_bridge_messages_total`.
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Location => "location",
            Kind::Status => "status",
            Kind::Event => "event",
        }
    }

    /// The last topic level.
    pub fn topic_suffix(self) -> &'static str {
        match self {
            Kind::Location => "location",
            Kind::Status => "status",
            Kind::Event => "events",
        }
    }
}

/// A parsed device topic.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Topic {
    pub device: DeviceId,
    pub kind: Kind,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TopicError {
    #[error("topic is not devices/{{id}}/(location|status|events)")]
    Unknown,
    #[error("bad device id in topic: {0}")]
    DeviceId(#[from] DeviceIdError),
}

impl Topic {
    pub fn parse(topic: &str) -> Result<Self, TopicError> {
        let rest = topic.strip_prefix("devices/").ok_or(TopicError::Unknown)?;
        let (id, suffix) = rest.rsplit_once('/').ok_or(TopicError::Unknown)?;
        let kind = match suffix {
            "location" => Kind::Location,
            "status" => Kind::Status,
            "events" => Kind::Event,
            _ => return Err(TopicError::Unknown),
        };
        Ok(Topic {
            device: DeviceId::parse(id)?,
            kind,
        })
    }

    pub fn format(device: &str, kind: Kind) -> String {
        format!("devices/{device}/{}", kind.topic_suffix())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_three_kinds() {
        let t = Topic::parse("devices/truck-7/location").unwrap();
        assert_eq!(t.device.as_str(), "truck-7");
        assert_eq!(t.kind, Kind::Location);
        assert_eq!(Topic::parse("devices/a/status").unwrap().kind, Kind::Status);
        assert_eq!(Topic::parse("devices/a/events").unwrap().kind, Kind::Event);
    }

    #[test]
    fn rejects_other_topics() {
        for t in [
            "devices/a",
            "devices//location",
            "devices/a/b/location",
            "x/a/location",
            "devices/a/event",
            "",
        ] {
            assert!(Topic::parse(t).is_err(), "{t}");
        }
        assert!(matches!(
            Topic::parse("devices/a b/location"),
            Err(TopicError::DeviceId(_))
        ));
    }
}
