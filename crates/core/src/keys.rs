//! The Redis key layout (README "Redis layout"), in one place for the
//! bridge, which writes it, and the gateway, which reads it: every key and
//! channel name under one deployment prefix (`FIELDCAST_REDIS_PREFIX`).

/// Every key and channel name, derived once from the prefix.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Keys {
    prefix: String,
    /// Set of every device id ever seen.
    pub devices: String,
    /// GEO set of each device's last position.
    pub geo: String,
    /// Pub/sub channel of live updates (one JSON object or an array).
    pub live: String,
    /// Stream: the event log behind cursors.
    pub events: String,
    /// The event log's epoch: part of every cursor, so a cursor from an
    /// earlier life of the log is told apart (see the bridge's `event.lua`).
    pub epoch: String,
    /// List of dead letters, newest first, capped.
    pub deadletter: String,
    /// Pub/sub channel of pushed messages (`/api/publish`), for every
    /// gateway instance.
    pub push: String,
}

impl Keys {
    pub fn new(prefix: &str) -> Self {
        Keys {
            prefix: prefix.to_owned(),
            devices: format!("{prefix}devices"),
            geo: format!("{prefix}geo"),
            live: format!("{prefix}live"),
            events: format!("{prefix}events"),
            epoch: format!("{prefix}events:epoch"),
            deadletter: format!("{prefix}deadletter"),
            push: format!("{prefix}push"),
        }
    }

    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// Hash of one device's hot state.
    pub fn device(&self, id: &str) -> String {
        format!("{}dev:{id}", self.prefix)
    }

    /// Marks an event pushed live once (dedup across redeliveries).
    pub fn event_seen(&self, device: &str, event_id: &str) -> String {
        format!("{}evseen:{device}:{event_id}", self.prefix)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Pins the layout the README documents and both services share.
    #[test]
    fn names_under_the_prefix() {
        let k = Keys::new("fc:");
        assert_eq!(k.devices, "fc:devices");
        assert_eq!(k.geo, "fc:geo");
        assert_eq!(k.live, "fc:live");
        assert_eq!(k.events, "fc:events");
        assert_eq!(k.epoch, "fc:events:epoch");
        assert_eq!(k.deadletter, "fc:deadletter");
        assert_eq!(k.push, "fc:push");
        assert_eq!(k.device("v1"), "fc:dev:v1");
        assert_eq!(k.event_seen("v1", "e9"), "fc:evseen:v1:e9");
    }
}
