//! Event cursors: the id of the event's entry in the bridge's `<prefix>events`
//! stream (`<ms>-<seq>`), so resuming is one exclusive `XRANGE`.

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

/// A cursor that is not `<ms>-<seq>`.
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
}
