//! The spatial index: which fences contain a location.
//!
//! Built once from a set of fences (the bridge rebuilds it when a fence
//! changes; an index is immutable, so readers share it behind an `Arc` and
//! swap it whole). An R-tree holds one box per polygon, one or two per
//! circle (two across the 180° meridian) and one per corridor segment, so a
//! long winding corridor does not make a box over half the country. A
//! lookup asks the R-tree for the boxes that hold the point, then runs the
//! cheap tests (schedule, groups) before the exact one; no fence is looked
//! at unless its box holds the point.

use crate::fence::{pos, Fence, FenceId};
use crate::geometry::Position;
use rstar::{RTree, RTreeObject, AABB};

/// One box of one fence.
struct Entry {
    envelope: AABB<Position>,
    /// Index into [`FenceIndex::fences`].
    slot: u32,
    /// The corridor segment the box covers (0 for other shapes).
    part: u32,
}

impl RTreeObject for Entry {
    type Envelope = AABB<Position>;
    fn envelope(&self) -> Self::Envelope {
        self.envelope
    }
}

/// Fences and their R-tree.
pub struct FenceIndex {
    tree: RTree<Entry>,
    /// Sorted by id, so sorting slots sorts ids.
    fences: Vec<Fence>,
}

impl FenceIndex {
    /// Indexes `fences`. Should two share an id, the later one wins (as a
    /// `PUT` replaces a fence).
    pub fn new(fences: impl IntoIterator<Item = Fence>) -> FenceIndex {
        let mut fences: Vec<Fence> = fences.into_iter().collect();
        // Stable sort keeps input order among equal ids; keep the last.
        fences.sort_by_key(Fence::id);
        fences.reverse();
        fences.dedup_by_key(|f| f.id());
        fences.reverse();
        let mut boxes = Vec::new();
        let mut entries = Vec::with_capacity(fences.len());
        for (slot, f) in fences.iter().enumerate() {
            boxes.clear();
            f.shape().boxes(&mut boxes);
            entries.extend(boxes.iter().map(|&(envelope, part)| Entry {
                envelope,
                // A u32 slot: fences are counted in thousands, and the
                // store would give out long before four billion.
                slot: slot as u32,
                part,
            }));
        }
        FenceIndex {
            tree: RTree::bulk_load(entries),
            fences,
        }
    }

    /// The ids (ascending) of the fences that contain the location at
    /// `at_ms` for a device in `device_groups`.
    pub fn containing<S: AsRef<str>>(
        &self,
        lat: f64,
        lon: f64,
        at_ms: i64,
        device_groups: &[S],
    ) -> Vec<FenceId> {
        let mut out = Vec::new();
        self.containing_into(lat, lon, at_ms, device_groups, &mut out);
        out
    }

    /// [`containing`](Self::containing) into a caller's buffer (cleared
    /// first), so a hot loop allocates nothing.
    pub fn containing_into<S: AsRef<str>>(
        &self,
        lat: f64,
        lon: f64,
        at_ms: i64,
        device_groups: &[S],
        out: &mut Vec<FenceId>,
    ) {
        out.clear();
        let p = pos(lat, lon);
        for e in self
            .tree
            .locate_in_envelope_intersecting(&AABB::from_point(p))
        {
            let Some(f) = self.fences.get(e.slot as usize) else {
                continue;
            };
            // A corridor has a box per segment and a circle may have two:
            // a fence already found needs no second test.
            if out.contains(&f.id()) {
                continue;
            }
            if f.is_active(at_ms) && f.applies_to(device_groups) && f.shape().contains(p, e.part) {
                out.push(f.id());
            }
        }
        out.sort_unstable();
    }

    /// The same answer by testing every fence: the reference the index is
    /// tested against, and a baseline for the bench.
    pub fn containing_by_scan<S: AsRef<str>>(
        &self,
        lat: f64,
        lon: f64,
        at_ms: i64,
        device_groups: &[S],
    ) -> Vec<FenceId> {
        self.fences
            .iter()
            .filter(|f| f.contains(lat, lon, at_ms, device_groups))
            .map(Fence::id)
            .collect()
    }

    pub fn get(&self, id: FenceId) -> Option<&Fence> {
        self.fences
            .binary_search_by_key(&id, Fence::id)
            .ok()
            .and_then(|i| self.fences.get(i))
    }

    /// The fences, by ascending id.
    pub fn fences(&self) -> &[Fence] {
        &self.fences
    }

    pub fn len(&self) -> usize {
        self.fences.len()
    }

    pub fn is_empty(&self) -> bool {
        self.fences.is_empty()
    }
}
