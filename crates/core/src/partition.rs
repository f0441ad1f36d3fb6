//! Partitions of the fleet, the unit the Redis layout is split by so that it
//! runs on one Redis or on a Redis Cluster with one code path
//! (docs/redis-partitions.md). Every device belongs to one of `P` partitions
//! (`FIELDCAST_REDIS_PARTITIONS`, fixed per deployment); a partition's keys
//! carry its number as a Redis hash tag, so one device's hash, its
//! partition's geo index, event log, dedup keys and live channel share one
//! hash slot, and every Lua script touches one slot only.

use std::fmt;

/// The partition count of a deployment: the same for every bridge and
/// gateway of it, or they would look for a device in different places.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Partitions(u16);

/// One partition, `0..count`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Partition(u16);

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("the partition count must be 1..={max}, not {0}", max = Partitions::MAX)]
pub struct PartitionsError(pub u64);

impl Partitions {
    pub const DEFAULT: u16 = 64;
    /// A gateway subscribes to one live channel per partition and a fleet
    /// snapshot reads every partition: more partitions than this only add
    /// round trips, since a cluster rarely has more primaries.
    pub const MAX: u16 = 1024;

    pub fn new(count: u64) -> Result<Self, PartitionsError> {
        match u16::try_from(count) {
            Ok(n) if (1..=Self::MAX).contains(&n) => Ok(Partitions(n)),
            _ => Err(PartitionsError(count)),
        }
    }

    pub fn count(self) -> u16 {
        self.0
    }

    /// The partition of a device: CRC-16/XMODEM of its id (the checksum
    /// Redis Cluster uses for key slots, so any client can compute it) modulo
    /// the count.
    pub fn of(self, device: &str) -> Partition {
        Partition(crc16(device.as_bytes()) % self.0)
    }

    pub fn all(self) -> impl Iterator<Item = Partition> + Clone {
        (0..self.0).map(Partition)
    }
}

impl Default for Partitions {
    fn default() -> Self {
        Partitions(Self::DEFAULT)
    }
}

impl Partition {
    pub fn index(self) -> usize {
        usize::from(self.0)
    }
}

impl fmt::Display for Partition {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// CRC-16/XMODEM (polynomial 0x1021, initial value 0), as in Redis's
/// `crc16.c`.
pub fn crc16(bytes: &[u8]) -> u16 {
    let mut crc: u16 = 0;
    for &b in bytes {
        crc ^= u16::from(b) << 8;
        for _ in 0..8 {
            crc = if crc & 0x8000 != 0 {
                (crc << 1) ^ 0x1021
            } else {
                crc << 1
            };
        }
    }
    crc
}

/// The Redis Cluster hash slot of a key: CRC-16 of its hash tag (the text
/// between the first `{` and the next `}`, when not empty) or of the whole
/// key, modulo 16384.
pub fn key_slot(key: &str) -> u16 {
    let b = key.as_bytes();
    let hashed = b
        .iter()
        .position(|&c| c == b'{')
        .and_then(|open| {
            let rest = &b[open + 1..];
            let close = rest.iter().position(|&c| c == b'}')?;
            (close > 0).then(|| &rest[..close])
        })
        .unwrap_or(b);
    crc16(hashed) % 16384
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The check value of CRC-16/XMODEM, and the slots Redis's cluster
    /// specification gives as examples.
    #[test]
    fn crc_and_slots_are_redis_s() {
        assert_eq!(crc16(b"123456789"), 0x31C3);
        assert_eq!(key_slot("foo"), 12182);
        assert_eq!(key_slot("{user1000}.following"), key_slot("user1000"));
        assert_eq!(key_slot("foo{}{bar}"), key_slot("foo{}{bar}"));
        assert_ne!(
            key_slot("foo{}{bar}"),
            key_slot("bar"),
            "an empty tag hashes the whole key"
        );
        assert_eq!(key_slot("foo{{bar}}zap"), key_slot("{bar"));
        assert_eq!(key_slot("foo{bar}{zap}"), key_slot("bar"));
    }

    #[test]
    fn counts_are_bounded_and_devices_spread() {
        assert!(Partitions::new(0).is_err());
        assert!(Partitions::new(1025).is_err());
        assert!(Partitions::new(u64::MAX).is_err());
        let p = Partitions::new(64).unwrap();
        assert_eq!(p.all().count(), 64);
        let mut per = [0u32; 64];
        for i in 0..64_000 {
            per[p.of(&format!("truck-{i}")).index()] += 1;
        }
        let (lo, hi) = (per.iter().min().unwrap(), per.iter().max().unwrap());
        assert!(*lo > 800 && *hi < 1200, "uneven spread: {lo}..{hi}");
        assert_eq!(Partitions::new(1).unwrap().of("anything").index(), 0);
    }
}
