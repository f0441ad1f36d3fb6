//! Event cursors. Each partition has its own event log (a stream in the
//! partition's slot, docs/redis-layout.md), so a position in the whole log
//! is a position in every partition's: a [`Cursor`] holds one
//! [`Position`] per partition, `<epoch>:<ms>-<seq>` each, the epoch of
//! that log's life (`<prefix>{n}:events:epoch`) and a stream id, so
//! resuming is one exclusive `XRANGE` per partition.
//!
//! The stream id alone is not enough: a Redis that lost a log (a restart
//! without persistence, a failover, an eviction) starts the stream over
//! with time-based ids larger than the old ones, so an old id would look
//! valid and the events lost in between would be skipped without a word.
//! A new life of the log gets a new epoch, so such a cursor no longer
//! matches and its holder gets `cursor_expired`.
//!
//! Clients treat a cursor as opaque text ([`Cursor::encode`]): the digest
//! of the partitions' epochs, then the stream ids, packed as varints in
//! URL-safe base64 (~3 bytes a partition). A cursor sent back is a
//! [`SentCursor`] until the current epochs are known: it matches them or
//! it is expired.

use std::fmt;
use std::str::FromStr;
use std::sync::Arc;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;

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

/// A position in one life of one partition's log.
///
/// Not `Ord`: positions in different lives do not compare.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Position {
    pub epoch: Epoch,
    pub id: StreamId,
}

impl Position {
    pub fn new(epoch: Epoch, id: StreamId) -> Position {
        Position { epoch, id }
    }

    /// Whether this position is at or before `other` in the same life.
    pub fn at_or_before(&self, other: &Position) -> bool {
        self.epoch == other.epoch && self.id <= other.id
    }

    /// The later of two positions, `newer` having been learnt after
    /// `self`: within one life the larger id; across lives `newer`, since
    /// a log only ever moves on to a new life.
    pub fn advanced_to(self, newer: Position) -> Position {
        if self.epoch == newer.epoch {
            Position::new(self.epoch, self.id.max(newer.id))
        } else {
            newer
        }
    }
}

/// `<epoch>:<ms>-<seq>`, as the bridge's `event.lua` publishes an event's
/// place in its partition's log (the live envelope's `pos`).
impl FromStr for Position {
    type Err = BadCursor;

    fn from_str(s: &str) -> Result<Self, BadCursor> {
        let (epoch, id) = s.split_once(':').ok_or(BadCursor)?;
        Ok(Position {
            epoch: epoch.parse()?,
            id: id.parse()?,
        })
    }
}

impl fmt::Display for Position {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.epoch, self.id)
    }
}

/// Where one event stands: its partition (index) and its position there.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EventPos {
    pub partition: usize,
    pub at: Position,
}

/// A position in every partition's log, in partition order: what a client
/// has been sent up to. Cheap to clone (shared).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cursor(Arc<[Position]>);

/// Longest cursor text taken from a client: 1024 partitions (the most
/// `FIELDCAST_REDIS_PARTITIONS` allows) at up to 20 bytes each, in base64.
const MAX_TEXT: usize = 16 + 1 + (20 * 1024 + 10) * 4 / 3 + 4;

impl Cursor {
    pub fn new(positions: Vec<Position>) -> Cursor {
        Cursor(positions.into())
    }

    pub fn positions(&self) -> &[Position] {
        &self.0
    }

    /// Whether the event is at or before this cursor in its partition.
    pub fn covers(&self, e: &EventPos) -> bool {
        self.0
            .get(e.partition)
            .is_some_and(|p| e.at.at_or_before(p))
    }

    /// This cursor moved past `e` (a position learnt after it).
    pub fn advanced_by(&mut self, e: &EventPos) {
        let Some(p) = self.0.get(e.partition).copied() else {
            return;
        };
        let next = p.advanced_to(e.at);
        if next != p {
            let mut v = self.0.to_vec();
            v[e.partition] = next;
            self.0 = v.into();
        }
    }

    /// Each partition's later position of the two (`newer` learnt after
    /// `self`); `newer` whole when they do not have the same partitions.
    pub fn advanced_to(&self, newer: &Cursor) -> Cursor {
        if self.0.len() != newer.0.len() {
            return newer.clone();
        }
        Cursor(
            self.0
                .iter()
                .zip(newer.0.iter())
                .map(|(a, b)| a.advanced_to(*b))
                .collect(),
        )
    }

    /// The opaque text clients get: `<digest of the epochs>:<ids>`.
    pub fn encode(&self) -> String {
        let epochs: Vec<Epoch> = self.0.iter().map(|p| p.epoch).collect();
        let ids: Vec<StreamId> = self.0.iter().map(|p| p.id).collect();
        let mut out = format!("{:016x}:", digest(&epochs));
        URL_SAFE_NO_PAD.encode_string(pack(&ids), &mut out);
        out
    }
}

/// A cursor as a client sent it back: the digest of the epochs it was
/// issued in, and a stream id per partition.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SentCursor {
    digest: u64,
    ids: Vec<StreamId>,
}

/// Why a sent cursor cannot be resumed from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mismatch {
    /// Issued for another partition count.
    Partitions,
    /// Some partition's log started a new life since.
    Epochs,
}

impl SentCursor {
    /// The stream id of each partition, in partition order.
    pub fn ids(&self) -> &[StreamId] {
        &self.ids
    }

    /// The full cursor in `epochs` (the logs' current lives, in partition
    /// order), if it was issued in them.
    pub fn resolve(&self, epochs: &[Epoch]) -> Result<Cursor, Mismatch> {
        if self.ids.len() != epochs.len() {
            return Err(Mismatch::Partitions);
        }
        if self.digest != digest(epochs) {
            return Err(Mismatch::Epochs);
        }
        Ok(Cursor(
            epochs
                .iter()
                .zip(&self.ids)
                .map(|(e, id)| Position::new(*e, *id))
                .collect(),
        ))
    }
}

/// What the client holding `c` would send back.
impl From<&Cursor> for SentCursor {
    fn from(c: &Cursor) -> SentCursor {
        let epochs: Vec<Epoch> = c.0.iter().map(|p| p.epoch).collect();
        SentCursor {
            digest: digest(&epochs),
            ids: c.0.iter().map(|p| p.id).collect(),
        }
    }
}

impl FromStr for SentCursor {
    type Err = BadCursor;

    fn from_str(s: &str) -> Result<Self, BadCursor> {
        if s.len() > MAX_TEXT {
            return Err(BadCursor);
        }
        let (digest, ids) = s.split_once(':').ok_or(BadCursor)?;
        let digest: Epoch = digest.parse()?;
        let bytes = URL_SAFE_NO_PAD.decode(ids).map_err(|_| BadCursor)?;
        let ids = unpack(&bytes).ok_or(BadCursor)?;
        // One text per cursor: a spelling `encode` would not write is not
        // one (base64 with stray bits, over-long varints).
        let mut again = String::new();
        URL_SAFE_NO_PAD.encode_string(pack(&ids), &mut again);
        if again != *ids_text(s) {
            return Err(BadCursor);
        }
        Ok(SentCursor {
            digest: digest.0,
            ids,
        })
    }
}

fn ids_text(s: &str) -> &str {
    s.split_once(':').map_or("", |(_, ids)| ids)
}

/// FNV-1a over the epochs: stable across builds and versions (a cursor
/// outlives the gateway that issued it), and only has to tell lives apart.
fn digest(epochs: &[Epoch]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for e in epochs {
        for b in e.0.to_le_bytes() {
            h ^= u64::from(b);
            h = h.wrapping_mul(0x0000_0100_0000_01b3);
        }
    }
    h
}

/// The ids as varints: the newest `ms`, then per partition `0` for `0-0`
/// or `newest ms - ms + 1` and the `seq`. Logs written in the same hours
/// cost ~3 bytes each.
fn pack(ids: &[StreamId]) -> Vec<u8> {
    let top = ids.iter().map(|i| i.ms).max().unwrap_or(0);
    let mut out = Vec::with_capacity(8 + 3 * ids.len());
    varint(&mut out, top);
    for id in ids {
        if *id == StreamId::ZERO {
            varint(&mut out, 0);
        } else {
            varint(&mut out, top - id.ms + 1);
            varint(&mut out, id.seq);
        }
    }
    out
}

fn unpack(bytes: &[u8]) -> Option<Vec<StreamId>> {
    let mut rest = bytes;
    let top = read_varint(&mut rest)?;
    let mut ids = Vec::new();
    while !rest.is_empty() {
        let back = read_varint(&mut rest)?;
        if back == 0 {
            ids.push(StreamId::ZERO);
            continue;
        }
        let ms = top.checked_sub(back - 1)?;
        let seq = read_varint(&mut rest)?;
        ids.push(StreamId { ms, seq });
        if ids.len() > 1024 {
            return None;
        }
    }
    (!ids.is_empty()).then_some(ids)
}

fn varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

fn read_varint(rest: &mut &[u8]) -> Option<u64> {
    let mut v: u64 = 0;
    for shift in (0..64).step_by(7) {
        let (&b, tail) = rest.split_first()?;
        *rest = tail;
        v |= u64::from(b & 0x7f).checked_shl(shift)?;
        if b & 0x80 == 0 {
            return Some(v);
        }
    }
    None
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
    fn position_round_trips() {
        let text = "00c0ffee0000beef:1763800000000-12";
        let c: Position = text.parse().unwrap();
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
            Position::new(Epoch(1), StreamId { ms: 3, seq: 4 }).to_string(),
            "0000000000000001:3-4"
        );
        for _ in 0..100 {
            let e = Epoch::random();
            assert_eq!(e.to_string().len(), 16);
            assert_eq!(e.to_string().parse::<Epoch>(), Ok(e));
        }
    }

    #[test]
    fn positions_parse_strictly() {
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
            assert!(bad.parse::<Position>().is_err(), "{bad:?}");
        }
    }

    #[test]
    fn positions_compare_within_one_life_only() {
        let c = |e: u64, ms: u64| Position::new(Epoch(e), StreamId { ms, seq: 0 });
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

    fn id(ms: u64, seq: u64) -> StreamId {
        StreamId { ms, seq }
    }

    fn cursor(epochs: &[u64], ids: &[StreamId]) -> Cursor {
        Cursor::new(
            epochs
                .iter()
                .zip(ids)
                .map(|(e, i)| Position::new(Epoch(*e), *i))
                .collect(),
        )
    }

    #[test]
    fn a_cursor_round_trips_through_its_text_in_its_epochs() {
        let epochs = [7, 8, 9, 0xffff_ffff_ffff_ffff];
        let ids = [
            id(1_763_800_000_000, 0),
            StreamId::ZERO,
            id(1_763_800_004_321, 17),
            id(1, u64::MAX),
        ];
        let c = cursor(&epochs, &ids);
        let text = c.encode();
        assert!(
            text.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"-_:".contains(&b)),
            "{text}"
        );
        let sent: SentCursor = text.parse().unwrap();
        assert_eq!(sent, SentCursor::from(&c));
        let epochs: Vec<Epoch> = epochs.iter().map(|e| Epoch(*e)).collect();
        assert_eq!(sent.resolve(&epochs), Ok(c));
        // Another life of any one partition, or another partition count,
        // is not the cursor's.
        let mut other = epochs.clone();
        other[2] = Epoch(10);
        assert_eq!(sent.resolve(&other), Err(Mismatch::Epochs));
        assert_eq!(sent.resolve(&epochs[..3]), Err(Mismatch::Partitions));
    }

    #[test]
    fn a_cursor_of_logs_written_together_is_short() {
        let ids: Vec<StreamId> = (0..64)
            .map(|p| id(1_763_800_000_000 + p * 977, p % 3))
            .collect();
        let text = cursor(&[1; 64], &ids).encode();
        // ~4 bytes a partition here (ids up to a minute apart), 4/3 of that
        // in base64.
        assert!(text.len() <= 17 + 6 * 64, "{} bytes", text.len());
    }

    #[test]
    fn sent_cursors_parse_strictly() {
        let good = cursor(&[1, 2], &[id(5, 1), StreamId::ZERO]).encode();
        assert!(good.parse::<SentCursor>().is_ok());
        let ids = good.split_once(':').unwrap().1.to_owned();
        for bad in [
            String::new(),
            ":".into(),
            format!("{}:", "0".repeat(16)),
            format!("{}:{ids}", "0".repeat(15)),
            format!("{}:{ids}=", "0".repeat(16)),
            format!("{}:{ids}!", "0".repeat(16)),
            // The single-log cursor of before partitions.
            "00c0ffee0000beef:1763800000000-0".into(),
            // Not the one spelling: an over-long varint for the top ms.
            format!(
                "{}:{}",
                "0".repeat(16),
                URL_SAFE_NO_PAD.encode([0x85, 0x00, 0x00])
            ),
            // A partition whose ms would be below zero.
            format!("{}:{}", "0".repeat(16), URL_SAFE_NO_PAD.encode([5, 9, 0])),
            // A varint cut short.
            format!(
                "{}:{}",
                "0".repeat(16),
                URL_SAFE_NO_PAD.encode([5, 1, 0x80])
            ),
            "x".repeat(MAX_TEXT + 1),
        ] {
            assert!(bad.parse::<SentCursor>().is_err(), "{bad:?}");
        }
    }

    #[test]
    fn a_cursor_covers_and_moves_partition_by_partition() {
        let mut c = cursor(&[1, 1], &[id(10, 0), id(20, 0)]);
        let at = |p: usize, e: u64, ms: u64| EventPos {
            partition: p,
            at: Position::new(Epoch(e), id(ms, 0)),
        };
        assert!(c.covers(&at(0, 1, 10)));
        assert!(!c.covers(&at(0, 1, 11)));
        assert!(c.covers(&at(1, 1, 15)), "partition 1 is at 20");
        assert!(!c.covers(&at(1, 2, 15)), "another life is never covered");
        assert!(!c.covers(&at(2, 1, 1)), "no such partition");
        c.advanced_by(&at(0, 1, 12));
        c.advanced_by(&at(1, 1, 5));
        assert_eq!(c, cursor(&[1, 1], &[id(12, 0), id(20, 0)]));
        c.advanced_by(&at(1, 3, 2));
        assert_eq!(c, cursor(&[1, 3], &[id(12, 0), id(2, 0)]));
        let later = cursor(&[1, 3], &[id(11, 0), id(9, 0)]);
        assert_eq!(
            c.advanced_to(&later),
            cursor(&[1, 3], &[id(12, 0), id(9, 0)])
        );
    }
}
