//! The Redis key layout (docs/redis-layout.md), in one place for the
//! bridge, which writes it, and the gateway, which reads it: every key and
//! channel name under one deployment prefix (`FIELDCAST_REDIS_PREFIX`).
//!
//! The layout is split into [`Partitions`] so that it runs unchanged on one
//! Redis or on a Redis Cluster: a partition's keys and its live channel
//! carry the partition's number as a hash tag (`<prefix>{7}:geo`), so every
//! script call touches one hash slot. The event log and its keys share the
//! tag `{ev}` (one slot); the dead-letter list and the push channel are
//! single keys of their own.

use crate::partition::{Partition, Partitions};

/// The keys of one partition.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PartitionKeys {
    /// Set of the partition's device ids that have a hot state.
    pub devices: String,
    /// GEO set of the partition's devices' last positions.
    pub geo: String,
    /// Shard channel (`SPUBLISH`) of the partition's live updates: one JSON
    /// object or an array of them.
    pub live: String,
    /// `<prefix>{n}:dev:`, the start of each device hash's key.
    device: String,
}

impl PartitionKeys {
    fn new(prefix: &str, p: Partition) -> Self {
        let tag = format!("{prefix}{{{p}}}:");
        PartitionKeys {
            devices: format!("{tag}devices"),
            geo: format!("{tag}geo"),
            live: format!("{tag}live"),
            device: format!("{tag}dev:"),
        }
    }

    /// Hash of the hot state of `id`, which must belong to this partition.
    pub fn device(&self, id: &str) -> String {
        let mut k = String::with_capacity(self.device.len() + id.len());
        k.push_str(&self.device);
        k.push_str(id);
        k
    }
}

/// Every key and channel name, derived once from the prefix and the
/// partition count.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Keys {
    prefix: String,
    partitions: Partitions,
    parts: Vec<PartitionKeys>,
    /// Stream: the event log behind cursors.
    pub events: String,
    /// The event log's epoch: part of every cursor, so a cursor from an
    /// earlier life of the log is told apart (see the bridge's `event.lua`).
    pub epoch: String,
    /// Shard channel of live events (in the event log's slot, so the script
    /// that logs an event publishes it).
    pub events_live: String,
    /// `<prefix>{ev}:evseen:`, the start of the live de-duplication keys.
    event_seen: String,
    /// List of dead letters, newest first, capped.
    pub deadletter: String,
    /// Classic pub/sub channel of pushed messages (`/api/publish`), for
    /// every gateway instance: on a cluster `PUBLISH` reaches every node's
    /// subscribers, so backends keep using plain `PUBLISH`.
    pub push: String,
}

/// Why a key prefix cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("FIELDCAST_REDIS_PREFIX may not contain '{{' or '}}' (Redis would take it for the hash tag that places a partition's keys together)")]
pub struct PrefixError;

impl Keys {
    pub fn new(prefix: &str, partitions: Partitions) -> Self {
        Keys {
            prefix: prefix.to_owned(),
            partitions,
            parts: partitions
                .all()
                .map(|p| PartitionKeys::new(prefix, p))
                .collect(),
            events: format!("{prefix}{{ev}}:events"),
            epoch: format!("{prefix}{{ev}}:events:epoch"),
            events_live: format!("{prefix}{{ev}}:live"),
            event_seen: format!("{prefix}{{ev}}:evseen:"),
            deadletter: format!("{prefix}deadletter"),
            push: format!("{prefix}push"),
        }
    }

    /// A prefix with a brace would move keys out of their partition's slot.
    pub fn check_prefix(prefix: &str) -> Result<(), PrefixError> {
        if prefix.contains(['{', '}']) {
            return Err(PrefixError);
        }
        Ok(())
    }

    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    pub fn partitions(&self) -> Partitions {
        self.partitions
    }

    /// The partition of `device` and its keys.
    pub fn of(&self, device: &str) -> (Partition, &PartitionKeys) {
        let p = self.partitions.of(device);
        (p, &self.parts[p.index()])
    }

    pub fn partition(&self, p: Partition) -> &PartitionKeys {
        &self.parts[p.index()]
    }

    /// Every partition's keys, in partition order.
    pub fn all(&self) -> &[PartitionKeys] {
        &self.parts
    }

    /// Hash of one device's hot state.
    pub fn device(&self, id: &str) -> String {
        self.of(id).1.device(id)
    }

    /// Marks an event pushed live once (dedup across redeliveries).
    pub fn event_seen(&self, device: &str, event_id: &str) -> String {
        format!("{}{device}:{event_id}", self.event_seen)
    }

    /// Every live shard channel: the partitions' and the events'.
    pub fn live_channels(&self) -> Vec<String> {
        let mut all: Vec<String> = self.parts.iter().map(|p| p.live.clone()).collect();
        all.push(self.events_live.clone());
        all
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::partition::key_slot;

    /// Pins the layout docs/redis-layout.md documents and both services
    /// share.
    #[test]
    fn names_under_the_prefix() {
        let k = Keys::new("fc:", Partitions::new(4).unwrap());
        let (p, part) = k.of("v1");
        assert_eq!(p, Partitions::new(4).unwrap().of("v1"));
        assert_eq!(part.devices, format!("fc:{{{p}}}:devices"));
        assert_eq!(part.geo, format!("fc:{{{p}}}:geo"));
        assert_eq!(part.live, format!("fc:{{{p}}}:live"));
        assert_eq!(k.device("v1"), format!("fc:{{{p}}}:dev:v1"));
        assert_eq!(k.events, "fc:{ev}:events");
        assert_eq!(k.epoch, "fc:{ev}:events:epoch");
        assert_eq!(k.events_live, "fc:{ev}:live");
        assert_eq!(k.event_seen("v1", "e9"), "fc:{ev}:evseen:v1:e9");
        assert_eq!(k.deadletter, "fc:deadletter");
        assert_eq!(k.push, "fc:push");
        assert_eq!(k.all().len(), 4);
        assert_eq!(k.live_channels().len(), 5);
    }

    /// What makes the layout run on a cluster: each script's keys share a
    /// slot.
    #[test]
    fn a_partition_and_the_event_log_each_hold_one_slot() {
        let k = Keys::new("fc:", Partitions::default());
        for id in ["v1", "truck-17", "a/b"] {
            let (_, part) = k.of(id);
            let slot = key_slot(&part.geo);
            for key in [&part.devices, &part.live, &k.device(id)] {
                assert_eq!(key_slot(key), slot, "{key}");
            }
        }
        let slot = key_slot(&k.events);
        for key in [&k.epoch, &k.events_live, &k.event_seen("v1", "e")] {
            assert_eq!(key_slot(key), slot, "{key}");
        }
    }

    #[test]
    fn braces_in_the_prefix_are_refused() {
        assert!(Keys::check_prefix("fc:").is_ok());
        assert_eq!(Keys::check_prefix("fc{x}:"), Err(PrefixError));
        assert_eq!(Keys::check_prefix("fc}"), Err(PrefixError));
    }
}
