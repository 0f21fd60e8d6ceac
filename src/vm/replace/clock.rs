//! CLOCK (second chance): the baseline policy.
//!
//! Resident pages sit on a circle in the order they came in; the hand
//! gives a referenced page a second chance (clears its bit, moves on) and
//! evicts the first page whose bit is clear. A new page goes just behind
//! the hand, so it is examined last. No history: refaults are not seen.

use super::index::Index;
use super::ring::{Ring, FRESH, NIL, REFERENCED};
use super::{FaultIn, PageId, Removed, ReplaceError, ReplaceStats, ReplacementPolicy};

/// CLOCK over a fixed number of frames: one 24-byte node and 4-8 bytes of
/// index per frame; every operation O(1) but `evict`, which steps the hand
/// over referenced pages (O(1) amortized, O(frames) at worst).
pub struct Clock {
    ring: Ring,
    index: Index,
    hand: u32,
    len: usize,
    capacity: usize,
    stats: ReplaceStats,
}

impl Clock {
    /// A policy for `frames` frames.
    pub fn new(frames: usize) -> Self {
        Self {
            ring: Ring::with_capacity(frames),
            index: Index::with_capacity(frames),
            hand: NIL,
            len: 0,
            capacity: frames,
            stats: ReplaceStats::default(),
        }
    }

    /// Bytes this policy holds for its nodes and index.
    pub fn footprint(&self) -> usize {
        self.ring.nodes.capacity() * core::mem::size_of::<super::ring::Node>()
            + self.index.slots() * core::mem::size_of::<u32>()
    }

    fn find(&self, page: PageId) -> Option<u32> {
        let ring = &self.ring;
        self.index.find(page, |n| ring.key(n))
    }

    /// Unlinks, unindexes and frees node `n`, moving the hand off it.
    fn drop_node(&mut self, n: u32) {
        let next = self.ring.next(n);
        let others = self.ring.unlink(n);
        if self.hand == n {
            self.hand = if others { next } else { NIL };
        }
        let ring = &self.ring;
        self.index.remove(ring.key(n), |m| ring.key(m));
        self.ring.release(n);
        self.len -= 1;
    }
}

impl ReplacementPolicy for Clock {
    fn name(&self) -> &'static str {
        "clock"
    }

    fn capacity(&self) -> usize {
        self.capacity
    }

    fn resident_len(&self) -> usize {
        self.len
    }

    fn history_len(&self) -> usize {
        0
    }

    fn history_limit(&self) -> usize {
        0
    }

    fn is_resident(&self, page: PageId) -> bool {
        self.find(page).is_some()
    }

    fn insert(&mut self, page: PageId) -> Result<FaultIn, ReplaceError> {
        if self.find(page).is_some() {
            return Err(ReplaceError::AlreadyResident { page });
        }
        if self.len == self.capacity {
            return Err(ReplaceError::Full {
                page,
                capacity: self.capacity,
            });
        }
        let n = self.ring.alloc(page, 0).expect("one node per frame");
        self.ring.node_mut(n).flags = FRESH;
        self.ring.link_before(n, self.hand);
        if self.hand == NIL {
            self.hand = n;
        }
        self.index.insert(page, n);
        self.len += 1;
        self.stats.inserts += 1;
        Ok(FaultIn::Fresh)
    }

    fn referenced(&mut self, page: PageId) -> bool {
        let Some(n) = self.find(page) else {
            return false;
        };
        self.ring.node_mut(n).report_reference();
        true
    }

    fn evict(&mut self) -> Option<PageId> {
        while self.hand != NIL {
            let n = self.hand;
            self.stats.scanned += 1;
            let node = self.ring.node_mut(n);
            if node.flags & REFERENCED != 0 {
                node.flags &= !REFERENCED;
                self.hand = self.ring.next(n);
                continue;
            }
            let page = node.key;
            self.drop_node(n);
            self.stats.evictions += 1;
            return Some(page);
        }
        None
    }

    fn demote(&mut self, page: PageId) -> bool {
        let Some(n) = self.find(page) else {
            return false;
        };
        // Unreferenced and under the hand: the next victim.
        self.ring.node_mut(n).flags = 0;
        if self.hand != n {
            self.ring.unlink(n);
            self.ring.link_before(n, self.hand);
            self.hand = n;
        }
        true
    }

    fn remove(&mut self, page: PageId) -> Removed {
        match self.find(page) {
            Some(n) => {
                self.drop_node(n);
                Removed::Resident
            }
            None => Removed::NotTracked,
        }
    }

    fn stats(&self) -> ReplaceStats {
        self.stats
    }
}
