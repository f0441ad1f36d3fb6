//! Enter and exit: the difference between a device's previous membership
//! and its new one, and the event each change becomes.
//!
//! This module decides *what* changed; *whether* a location may change the
//! stored membership at all (only the one that becomes the device's newest)
//! is the bridge's atomic step, described in `docs/geofences.md`.

use crate::fence::FenceId;

/// Into or out of a fence.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Direction {
    Enter,
    Exit,
}

impl Direction {
    /// The event `kind` (PROTOCOL: `geofence_enter` / `geofence_exit`).
    pub fn kind(self) -> &'static str {
        match self {
            Direction::Enter => "geofence_enter",
            Direction::Exit => "geofence_exit",
        }
    }
}

/// One change of membership.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Transition {
    pub fence: FenceId,
    pub direction: Direction,
}

impl Transition {
    /// The event id of this transition caused by the location at `ts`.
    ///
    /// Deterministic: the same fence, direction and location give the same
    /// id however often the location is delivered and whichever bridge
    /// computes it, so the event store's dedup key (`device`, `id`) keeps
    /// the event single. The device is not in the id because it is already
    /// in that key. A device can cross one fence one way only once at one
    /// `ts` (membership moves only with a newer location), so the id is
    /// unique per device. At most 15 + 20 + 1 + 20 = 56 characters, within
    /// the protocol's 128, in the device-id alphabet.
    pub fn event_id(&self, ts: i64) -> String {
        let dir = match self.direction {
            Direction::Enter => "enter",
            Direction::Exit => "exit",
        };
        format!("geofence-{dir}-{}-{ts}", self.fence)
    }
}

/// The transitions from membership `prev` to `next` (both ascending, no
/// repeats, as [`crate::FenceIndex::containing`] returns them): exits first,
/// then enters, each by ascending fence id, so a device that moves from
/// fence A straight into fence B reports leaving A before entering B.
pub fn transitions(prev: &[FenceId], next: &[FenceId]) -> Vec<Transition> {
    debug_assert!(prev.windows(2).all(|w| w[0] < w[1]), "prev not sorted");
    debug_assert!(next.windows(2).all(|w| w[0] < w[1]), "next not sorted");
    let mut exits = Vec::new();
    let mut enters = Vec::new();
    let (mut i, mut j) = (0, 0);
    while i < prev.len() || j < next.len() {
        match (prev.get(i), next.get(j)) {
            (Some(a), Some(b)) if a == b => {
                i += 1;
                j += 1;
            }
            (Some(a), b) if b.is_none_or(|b| a < b) => {
                exits.push(Transition {
                    fence: *a,
                    direction: Direction::Exit,
                });
                i += 1;
            }
            (_, Some(b)) => {
                enters.push(Transition {
                    fence: *b,
                    direction: Direction::Enter,
                });
                j += 1;
            }
            // Unreachable: the loop runs while one side has more, and the
            // arms above take every such case.
            (_, None) => break,
        }
    }
    exits.extend(enters);
    exits
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ids(v: &[u64]) -> Vec<FenceId> {
        v.iter().copied().map(FenceId).collect()
    }

    fn t(fence: u64, direction: Direction) -> Transition {
        Transition {
            fence: FenceId(fence),
            direction,
        }
    }

    #[test]
    fn exits_then_enters_by_id() {
        use Direction::*;
        assert_eq!(
            transitions(&ids(&[1, 3, 5, 9]), &ids(&[2, 3, 4, 9, 10])),
            [
                t(1, Exit),
                t(5, Exit),
                t(2, Enter),
                t(4, Enter),
                t(10, Enter)
            ]
        );
        assert_eq!(transitions(&ids(&[]), &ids(&[7])), [t(7, Enter)]);
        assert_eq!(transitions(&ids(&[7]), &ids(&[])), [t(7, Exit)]);
        assert!(transitions(&ids(&[1, 2]), &ids(&[1, 2])).is_empty());
        assert!(transitions(&[], &[]).is_empty());
    }

    #[test]
    fn event_ids_are_deterministic_and_distinct() {
        let enter = t(42, Direction::Enter);
        let ts = 1_763_800_000_123;
        // Pins the format: stored events carry it, so changing it would
        // let a redelivery after an upgrade through the dedup.
        assert_eq!(enter.event_id(ts), "geofence-enter-42-1763800000123");
        assert_eq!(enter.event_id(ts), t(42, Direction::Enter).event_id(ts));
        let others = [
            t(42, Direction::Exit).event_id(ts),
            t(43, Direction::Enter).event_id(ts),
            enter.event_id(ts + 1),
        ];
        assert!(others.iter().all(|o| *o != enter.event_id(ts)));
        let longest = t(u64::MAX, Direction::Enter).event_id(i64::MIN);
        assert!(longest.len() <= 128);
        assert!(fieldcast_core::DeviceId::validate(&longest).is_ok());
        assert_eq!(Direction::Enter.kind(), "geofence_enter");
        assert_eq!(Direction::Exit.kind(), "geofence_exit");
    }
}
