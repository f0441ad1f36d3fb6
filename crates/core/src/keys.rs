//! The Redis key layout (docs/redis-layout.md), in one place for the
//! bridge, which writes it, and the gateway, which reads it: every key and
//! channel name under one deployment prefix (`FIELDCAST_REDIS_PREFIX`).
//!
//! The layout is split into [`Partitions`] so that it runs unchanged on one
//! Redis or on a Redis Cluster: a partition's keys and its live channel
//! carry the partition's number as a hash tag (`<prefix>{7}:geo`), so every
//! script call touches one hash slot. Each partition has its own event log
//! (stream, epoch and de-duplication keys in the partition's slot), so an
//! event's script touches one slot with the device's hot state; the
//! dead-letter list and the push channel are single keys of their own.
//!
//! The keys are the same on one Redis and on a cluster; the live channels
//! are not ([`Topology`]): on a cluster each partition has its shard
//! channel, so live traffic stays on the partition's node;
//! on one Redis every update goes to one channel, `<prefix>live`, so a
//! script call may mix partitions and the gateway reads one channel, as
//! before partitions existed (the cluster's split would only cost there).

use crate::partition::{Partition, Partitions};

/// What the Redis URL names: one server, or a Redis Cluster.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Topology {
    Single,
    Cluster,
}

impl Topology {
    /// `redis-cluster://` and `rediss-cluster://` (fred's form) name a
    /// cluster; anything else one server.
    pub fn of_url(url: &str) -> Self {
        if url.starts_with("redis-cluster://") || url.starts_with("rediss-cluster://") {
            Topology::Cluster
        } else {
            Topology::Single
        }
    }
}

/// The keys of one partition.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PartitionKeys {
    /// Set of the partition's device ids that have a hot state.
    pub devices: String,
    /// GEO set of the partition's devices' last positions.
    pub geo: String,
    /// Shard channel (`SPUBLISH`) of the partition's live updates: one JSON
    /// object or an array of them. `<prefix>{n}:live` on a cluster,
    /// `<prefix>live` (shared by all) on one Redis.
    pub live: String,
    /// Stream: the partition's event log, behind cursors.
    pub events: String,
    /// The partition's event-log epoch: part of every cursor, so a cursor
    /// from an earlier life of the log is told apart (the bridge's
    /// `event.lua`).
    pub epoch: String,
    /// Stream: the partition's membership changes (geofences) that the
    /// location step decided and the bridges have yet to turn into events
    /// (docs/geofences.md).
    pub transitions: String,
    /// `<prefix>{n}:dev:`, the start of each device hash's key.
    device: String,
    /// `<prefix>{n}:evseen:`, the start of the live de-duplication keys.
    event_seen: String,
}

impl PartitionKeys {
    fn new(prefix: &str, p: Partition, topology: Topology) -> Self {
        let tag = format!("{prefix}{{{p}}}:");
        PartitionKeys {
            devices: format!("{tag}devices"),
            geo: format!("{tag}geo"),
            live: match topology {
                Topology::Cluster => format!("{tag}live"),
                Topology::Single => format!("{prefix}live"),
            },
            events: format!("{tag}events"),
            epoch: format!("{tag}events:epoch"),
            transitions: format!("{tag}transitions"),
            device: format!("{tag}dev:"),
            event_seen: format!("{tag}evseen:"),
        }
    }

    /// Marks an event of `device` (of this partition) pushed live once
    /// (de-duplication across redeliveries).
    pub fn event_seen(&self, device: &str, event_id: &str) -> String {
        format!("{}{device}:{event_id}", self.event_seen)
    }

    /// `<prefix>{n}:dev:`: a device hash's key is this and its id.
    pub fn device_prefix(&self) -> &str {
        &self.device
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
    topology: Topology,
    parts: Vec<PartitionKeys>,
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
    pub fn new(prefix: &str, partitions: Partitions, topology: Topology) -> Self {
        Keys {
            prefix: prefix.to_owned(),
            partitions,
            topology,
            parts: partitions
                .all()
                .map(|p| PartitionKeys::new(prefix, p, topology))
                .collect(),
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

    pub fn topology(&self) -> Topology {
        self.topology
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

    /// Marks an event pushed live once (de-duplication across
    /// redeliveries), in the device's partition.
    pub fn event_seen(&self, device: &str, event_id: &str) -> String {
        self.of(device).1.event_seen(device, event_id)
    }

    /// Every live shard channel, each once: the partitions' on a cluster,
    /// `<prefix>live` on one Redis.
    pub fn live_channels(&self) -> Vec<String> {
        match self.topology {
            Topology::Single => vec![format!("{}live", self.prefix)],
            Topology::Cluster => self.parts.iter().map(|p| p.live.clone()).collect(),
        }
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
        let k = Keys::new("fc:", Partitions::new(4).unwrap(), Topology::Cluster);
        let (p, part) = k.of("v1");
        assert_eq!(p, Partitions::new(4).unwrap().of("v1"));
        assert_eq!(part.devices, format!("fc:{{{p}}}:devices"));
        assert_eq!(part.geo, format!("fc:{{{p}}}:geo"));
        assert_eq!(part.live, format!("fc:{{{p}}}:live"));
        assert_eq!(k.device("v1"), format!("fc:{{{p}}}:dev:v1"));
        assert_eq!(part.events, format!("fc:{{{p}}}:events"));
        assert_eq!(part.epoch, format!("fc:{{{p}}}:events:epoch"));
        assert_eq!(part.transitions, format!("fc:{{{p}}}:transitions"));
        assert_eq!(k.event_seen("v1", "e9"), format!("fc:{{{p}}}:evseen:v1:e9"));
        assert_eq!(k.deadletter, "fc:deadletter");
        assert_eq!(k.push, "fc:push");
        assert_eq!(k.all().len(), 4);
        assert_eq!(k.live_channels().len(), 4);

        let one = Keys::new("fc:", Partitions::new(4).unwrap(), Topology::Single);
        assert_eq!(one.device("v1"), k.device("v1"), "the same keys");
        assert_eq!(one.of("v1").1.live, "fc:live");
        assert_eq!(one.of("v1").1.events, part.events, "the same event logs");
        assert_eq!(one.live_channels(), ["fc:live"]);
    }

    #[test]
    fn the_url_names_the_topology() {
        assert_eq!(Topology::of_url("redis://h:1"), Topology::Single);
        assert_eq!(Topology::of_url("rediss://h:1"), Topology::Single);
        assert_eq!(
            Topology::of_url("redis-cluster://h:1?node=h:2"),
            Topology::Cluster
        );
        assert_eq!(Topology::of_url("rediss-cluster://h:1"), Topology::Cluster);
    }

    /// What makes the layout run on a cluster: each script's keys share a
    /// slot.
    #[test]
    fn a_partition_holds_one_slot() {
        let k = Keys::new("fc:", Partitions::default(), Topology::Cluster);
        for id in ["v1", "truck-17", "a/b"] {
            let (_, part) = k.of(id);
            let slot = key_slot(&part.geo);
            for key in [
                &part.devices,
                &part.live,
                &part.events,
                &part.epoch,
                &k.device(id),
                &k.event_seen(id, "e"),
            ] {
                assert_eq!(key_slot(key), slot, "{key}");
            }
        }
    }

    #[test]
    fn braces_in_the_prefix_are_refused() {
        assert!(Keys::check_prefix("fc:").is_ok());
        assert_eq!(Keys::check_prefix("fc{x}:"), Err(PrefixError));
        assert_eq!(Keys::check_prefix("fc}"), Err(PrefixError));
    }
}
