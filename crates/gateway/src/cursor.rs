//! Event cursors: `<epoch>:<ms>-<seq>`, the epoch of the event log's life
//! (`<prefix>events:epoch`, 16 hex digits) and the id of the event's entry
//! in the `<prefix>events` stream, so resuming is one exclusive `XRANGE`.
//!
//! The stream id alone is not enough: a Redis that lost the log (a restart
//! without persistence, a failover, an eviction) starts the stream over
//! with time-based ids larger than the old ones, so an old id would look
//! valid and the events lost in between would be skipped without a word.
//! A new life of the log gets a new epoch, so such a cursor no longer
//! matches and its holder gets `cursor_expired`. Clients treat a cursor as
//! opaque text; its layout is the gateway's and the bridge's business
//! (docs/redis-layout.md).

use std::fmt;
use std::str::FromStr;

/// A Redis stream entry id.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct StreamId {
    pub ms: u64,
    pub seq: u64,
}

impl StreamId {
    pub const ZERO: StreamId = StreamId { ms: 0, seq: 0 };
}

/// A cursor (or a part of one) that does not parse.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("malformed cursor")]
pub struct BadCursor;

impl FromStr for StreamId {
    type Err = BadCursor;

    fn from_str(s: &str) -> Result<Self, BadCursor> {
        let (ms, seq) = s.split_once('-').ok_or(BadCursor)?;
        let digits =
            |p: &str| !p.is_empty() && p.len() <= 20 && p.bytes().all(|b| b.is_ascii_digit());
        if !digits(ms) || !digits(seq) {
            return Err(BadCursor);
        }
        Ok(StreamId {
            ms: ms.parse().map_err(|_| BadCursor)?,
            seq: seq.parse().map_err(|_| BadCursor)?,
        })
    }
}

impl fmt::Display for StreamId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}-{}", self.ms, self.seq)
    }
}

/// One life of the event log. Written as exactly 16 lowercase hex digits,
/// as the bridge's `event.lua` and the gateway's `epoch.lua` store it; any
/// other spelling is refused, so one epoch has one text and comparing
/// cursors is comparing what the bridge published.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Epoch(u64);

impl Epoch {
    /// A candidate for a new life. It only has to differ from the epochs
    /// before it, not be secret.
    pub fn random() -> Epoch {
        Epoch(rand::random())
    }
}

impl FromStr for Epoch {
    type Err = BadCursor;

    fn from_str(s: &str) -> Result<Self, BadCursor> {
        let hex = |b: u8| b.is_ascii_digit() || (b'a'..=b'f').contains(&b);
        if s.len() != 16 || !s.bytes().all(hex) {
            return Err(BadCursor);
        }
        u64::from_str_radix(s, 16).map(Epoch).map_err(|_| BadCursor)
    }
}

impl fmt::Display for Epoch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:016x}", self.0)
    }
}

/// An event cursor: a position in one life of the event log.
///
/// Not `Ord`: positions in different lives do not compare.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Cursor {
    pub epoch: Epoch,
    pub id: StreamId,
}

impl Cursor {
    pub fn new(epoch: Epoch, id: StreamId) -> Cursor {
        Cursor { epoch, id }
    }

    /// Whether this cursor is at or before `other` in the same life.
    pub fn at_or_before(&self, other: &Cursor) -> bool {
        self.epoch == other.epoch && self.id <= other.id
    }

    /// The later of two positions, `newer` having been learnt after
    /// `self`: within one life the larger id; across lives `newer`, since
    /// a log only ever moves on to a new life.
    pub fn advanced_to(self, newer: Cursor) -> Cursor {
        if self.epoch == newer.epoch {
            Cursor::new(self.epoch, self.id.max(newer.id))
        } else {
            newer
        }
    }
}

impl FromStr for Cursor {
    type Err = BadCursor;

    fn from_str(s: &str) -> Result<Self, BadCursor> {
        let (epoch, id) = s.split_once(':').ok_or(BadCursor)?;
        Ok(Cursor {
            epoch: epoch.parse()?,
            id: id.parse()?,
        })
    }
}

impl fmt::Display for Cursor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.epoch, self.id)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_orders() {
        let a: StreamId = "1763800000000-0".parse().unwrap();
        let b: StreamId = "1763800000000-12".parse().unwrap();
        assert!(a < b);
        assert_eq!(b.to_string(), "1763800000000-12");
        for bad in ["", "1", "-1", "1-", "a-1", "1-1-1", "1 -1", "+1-0"] {
            assert!(bad.parse::<StreamId>().is_err(), "{bad}");
        }
    }

    #[test]
    fn cursor_round_trips() {
        let text = "00c0ffee0000beef:1763800000000-12";
        let c: Cursor = text.parse().unwrap();
        assert_eq!(c.epoch, Epoch(0x00c0_ffee_0000_beef));
        assert_eq!(
            c.id,
            StreamId {
                ms: 1_763_800_000_000,
                seq: 12
            }
        );
        assert_eq!(c.to_string(), text);
        // Leading zeros are kept: the text is what the bridge publishes.
        assert_eq!(
            Cursor::new(Epoch(1), StreamId { ms: 3, seq: 4 }).to_string(),
            "0000000000000001:3-4"
        );
        for _ in 0..100 {
            let e = Epoch::random();
            assert_eq!(e.to_string().len(), 16);
            assert_eq!(e.to_string().parse::<Epoch>(), Ok(e));
        }
    }

    #[test]
    fn cursors_parse_strictly() {
        for bad in [
            "",
            ":",
            // A bare stream id: the cursor format before epochs.
            "1763800000000-0",
            "00c0ffee0000beef",
            "00c0ffee0000beef:",
            ":1763800000000-0",
            // Epoch: exactly 16 lowercase hex digits.
            "c0ffee:1-0",
            "00c0ffee0000beef0:1-0",
            "00C0FFEE0000BEEF:1-0",
            "+0c0ffee0000beef:1-0",
            "00c0ffee0000beeg:1-0",
            " 0c0ffee0000beef:1-0",
            // Stream id part as strict as before.
            "00c0ffee0000beef:1",
            "00c0ffee0000beef:1-0:2",
            "00c0ffee0000beef:1-0 ",
            "00c0ffee0000beef::1-0",
            "00c0ffee0000beef:-1-0",
        ] {
            assert!(bad.parse::<Cursor>().is_err(), "{bad:?}");
        }
    }

    #[test]
    fn positions_compare_within_one_life_only() {
        let c = |e: u64, ms: u64| Cursor::new(Epoch(e), StreamId { ms, seq: 0 });
        assert!(c(1, 5).at_or_before(&c(1, 5)));
        assert!(c(1, 4).at_or_before(&c(1, 5)));
        assert!(!c(1, 6).at_or_before(&c(1, 5)));
        // A larger id of another life is not "after": it is elsewhere.
        assert!(!c(2, 4).at_or_before(&c(1, 5)));
        assert!(!c(1, 4).at_or_before(&c(2, 5)));
        assert_eq!(c(1, 5).advanced_to(c(1, 4)), c(1, 5));
        assert_eq!(c(1, 4).advanced_to(c(1, 5)), c(1, 5));
        assert_eq!(c(1, 9).advanced_to(c(2, 1)), c(2, 1));
    }
}
