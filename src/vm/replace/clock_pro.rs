//! CLOCK-Pro (Jiang, Chen, Zhang, USENIX 2005): LIRS's reuse-distance
//! test carried out with reference bits, so it needs nothing a kernel
//! cannot harvest from Accessed bits.
//!
//! All tracked pages sit on one circle in the order of their last move to
//! the head. Hot pages are those whose reuse distance proved shorter than
//! the recency of the oldest hot page; cold pages are new or demoted.
//! A cold page inserted or given a second chance starts a *test period*
//! that lasts until the hot hand passes it; evicted during it, the page
//! stays on the circle as non-resident history. A reference (or refault)
//! during the test promotes the page to hot if a hot page older than it can
//! be demoted. Three hands sweep from the oldest end:
//!
//! - the cold hand finds the victim among resident cold pages;
//! - the hot hand demotes the oldest unreferenced hot page and ends the
//!   tests of the cold pages it passes;
//! - the test hand ends the oldest tests when history exceeds its bound.
//!
//! The space for resident cold pages adapts: a re-reference during a test
//! asks for more (recency matters), a test ending unused for less.

use super::index::Index;
use super::ring::{Ring, FRESH, NIL, REFERENCED};
use super::{FaultIn, PageId, Removed, ReplaceError, ReplaceStats, ReplacementPolicy};

const HOT: u8 = 0;
/// Resident cold, its test period over.
const COLD: u8 = 1;
/// Resident cold in its test period.
const COLD_TEST: u8 = 2;
/// Non-resident, in its test period: the history.
const GHOST: u8 = 3;
/// Released to the arena (a test that ended while a caller held the node).
const GONE: u8 = 4;

/// CLOCK-Pro over a fixed number of frames with a bounded non-resident
/// history: a 24-byte node and 4-8 bytes of index per tracked page, at most
/// `frames + history` of them, all allocated by the constructor. Lookups
/// O(1) expected; `evict` and a promoting `insert` move hands that each
/// step past a page whose bit they clear or whose state they change, O(1)
/// amortized.
pub struct ClockPro {
    ring: Ring,
    index: Index,
    /// The most recently moved page; its `prev` is the oldest.
    head: u32,
    hand_hot: u32,
    hand_cold: u32,
    hand_test: u32,
    capacity: usize,
    history_limit: usize,
    hot: usize,
    cold: usize,
    ghosts: usize,
    in_test: usize,
    /// Target of resident cold pages, between the two bounds below.
    cold_target: usize,
    min_cold: usize,
    max_cold: usize,
    /// Set at the first eviction; before it new pages enter hot.
    warm: bool,
    stats: ReplaceStats,
}

impl ClockPro {
    /// A policy for `frames` frames remembering as many evicted pages.
    pub fn new(frames: usize) -> Self {
        Self::with_history(frames, frames)
    }

    /// A policy for `frames` frames remembering at most `history` evicted
    /// pages (the paper's bound is `frames`).
    pub fn with_history(frames: usize, history: usize) -> Self {
        let min_cold = (frames / 100).max(1).min(frames);
        let max_cold = frames.saturating_sub(min_cold).max(min_cold);
        let nodes = frames + history + 1;
        Self {
            ring: Ring::with_capacity(nodes),
            index: Index::with_capacity(nodes),
            head: NIL,
            hand_hot: NIL,
            hand_cold: NIL,
            hand_test: NIL,
            capacity: frames,
            history_limit: history,
            hot: 0,
            cold: 0,
            ghosts: 0,
            in_test: 0,
            cold_target: min_cold,
            min_cold,
            max_cold,
            warm: false,
            stats: ReplaceStats::default(),
        }
    }

    /// Bytes this policy holds for its nodes and index.
    pub fn footprint(&self) -> usize {
        self.ring.nodes.capacity() * core::mem::size_of::<super::ring::Node>()
            + self.index.slots() * core::mem::size_of::<u32>()
    }

    /// Checks the circle against the counters and the hands' invariants:
    /// every hand on a page of its kind, no test period older than the hot
    /// hand, no resident cold page older than the cold hand.
    #[cfg(test)]
    pub(crate) fn check(&self) {
        let (mut hot, mut cold, mut ghosts, mut in_test, mut len) = (0, 0, 0, 0, 0);
        if self.head != NIL {
            let mut n = self.head;
            loop {
                let node = self.ring.node(n);
                assert_eq!(self.ring.prev(node.next), n, "links of node {n}");
                assert_eq!(self.find(node.key), Some(n), "index of page {}", node.key);
                match node.state {
                    HOT => hot += 1,
                    COLD => cold += 1,
                    COLD_TEST => (cold, in_test) = (cold + 1, in_test + 1),
                    GHOST => (ghosts, in_test) = (ghosts + 1, in_test + 1),
                    s => panic!("node {n} on the circle in state {s}"),
                }
                len += 1;
                n = node.next;
                if n == self.head {
                    break;
                }
            }
        }
        assert_eq!(
            (hot, cold, ghosts, in_test),
            (self.hot, self.cold, self.ghosts, self.in_test)
        );
        assert!(hot + cold <= self.capacity && ghosts <= self.history_limit);
        assert!(len <= self.capacity + self.history_limit);
        assert_eq!(self.hand_hot == NIL, hot == 0);
        assert_eq!(self.hand_cold == NIL, cold == 0);
        assert_eq!(self.hand_test == NIL, in_test == 0);
        if hot > 0 {
            assert_eq!(self.state(self.hand_hot), HOT);
            let mut n = self.oldest();
            while n != self.hand_hot {
                assert!(
                    !matches!(self.state(n), COLD_TEST | GHOST),
                    "test older than the hot hand"
                );
                n = self.ring.prev(n);
            }
        }
        if cold > 0 {
            assert!(matches!(self.state(self.hand_cold), COLD | COLD_TEST));
        }
        if in_test > 0 {
            assert!(matches!(self.state(self.hand_test), COLD_TEST | GHOST));
        }
        assert!((self.min_cold..=self.max_cold).contains(&self.cold_target));
    }

    fn find(&self, page: PageId) -> Option<u32> {
        let ring = &self.ring;
        self.index.find(page, |n| ring.key(n))
    }

    fn state(&self, n: u32) -> u8 {
        self.ring.node(n).state
    }

    fn marked(&self, n: u32) -> bool {
        self.ring.node(n).flags & REFERENCED != 0
    }

    fn count(&mut self, state: u8, up: bool) {
        let c = match state {
            HOT => &mut self.hot,
            COLD | COLD_TEST => &mut self.cold,
            _ => &mut self.ghosts,
        };
        if up {
            *c += 1;
        } else {
            *c -= 1;
        }
        if state == COLD_TEST || state == GHOST {
            if up {
                self.in_test += 1;
            } else {
                self.in_test -= 1;
            }
        }
    }

    fn set_state(&mut self, n: u32, state: u8) {
        let old = self.state(n);
        self.count(old, false);
        self.count(state, true);
        self.ring.node_mut(n).state = state;
    }

    /// Unlinks `n`, moving the head and any hand on it to its neighbour.
    fn unlink(&mut self, n: u32) {
        let (prev, next) = (self.ring.prev(n), self.ring.next(n));
        if !self.ring.unlink(n) {
            self.head = NIL;
            self.hand_hot = NIL;
            self.hand_cold = NIL;
            self.hand_test = NIL;
            return;
        }
        if self.head == n {
            self.head = next;
        }
        for hand in [&mut self.hand_hot, &mut self.hand_cold, &mut self.hand_test] {
            if *hand == n {
                *hand = prev;
            }
        }
    }

    /// Takes `n` off the circle and out of the policy.
    fn forget(&mut self, n: u32) {
        self.unlink(n);
        let state = self.state(n);
        self.count(state, false);
        let ring = &self.ring;
        self.index.remove(ring.key(n), |m| ring.key(m));
        self.ring.node_mut(n).state = GONE;
        self.ring.release(n);
    }

    /// Puts `n` (on the circle or detached) at the head in `state`, its
    /// reference bit cleared.
    fn move_to_head(&mut self, n: u32, state: u8, on_circle: bool) {
        if on_circle {
            self.unlink(n);
        }
        self.ring.link_before(n, self.head);
        self.head = n;
        self.ring.node_mut(n).flags &= !REFERENCED;
        if on_circle {
            self.set_state(n, state);
        } else {
            self.ring.node_mut(n).state = state;
            self.count(state, true);
        }
    }

    fn adjust_cold_target(&mut self, up: bool) {
        self.cold_target = if up {
            (self.cold_target + 1).min(self.max_cold)
        } else {
            self.cold_target.saturating_sub(1).max(self.min_cold)
        };
    }

    /// Ends `n`'s test period; a non-resident page leaves the circle.
    fn end_test(&mut self, n: u32) {
        let state = self.state(n);
        if state != COLD_TEST && state != GHOST {
            return;
        }
        let used = self.marked(n);
        if state == COLD_TEST {
            self.set_state(n, COLD);
        } else {
            self.forget(n);
        }
        self.adjust_cold_target(used);
    }

    fn oldest(&self) -> u32 {
        self.ring.prev(self.head)
    }

    fn seek_cold(&mut self) {
        if self.cold == 0 {
            self.hand_cold = NIL;
            return;
        }
        if self.hand_cold == NIL {
            self.hand_cold = self.oldest();
        }
        while !matches!(self.state(self.hand_cold), COLD | COLD_TEST) {
            self.hand_cold = self.ring.prev(self.hand_cold);
            self.stats.scanned += 1;
        }
    }

    fn seek_hot(&mut self) {
        if self.hot == 0 {
            self.hand_hot = NIL;
        } else {
            if self.hand_hot == NIL {
                self.hand_hot = self.oldest();
            }
            while self.state(self.hand_hot) != HOT {
                let passed = self.hand_hot;
                self.hand_hot = self.ring.prev(passed);
                self.stats.scanned += 1;
                self.end_test(passed);
            }
        }
        self.seek_test();
    }

    fn seek_test(&mut self) {
        if self.in_test == 0 {
            self.hand_test = NIL;
            return;
        }
        if self.hand_test == NIL {
            self.hand_test = if self.hand_hot != NIL {
                self.hand_hot
            } else {
                self.oldest()
            };
        }
        while !matches!(self.state(self.hand_test), COLD_TEST | GHOST) {
            self.hand_test = self.ring.prev(self.hand_test);
            self.stats.scanned += 1;
        }
    }

    fn seek_all(&mut self) {
        self.seek_cold();
        self.seek_hot();
        self.seek_test();
    }

    /// Runs the hot hand until it demotes a hot page, giving referenced
    /// hot pages another round; stops without demoting on reaching `stop`.
    fn run_hot(&mut self, stop: u32) -> bool {
        let mut demoted = false;
        while self.hot > 0 && self.hand_hot != stop {
            let h = self.hand_hot;
            self.stats.scanned += 1;
            if self.state(h) == HOT {
                if self.marked(h) {
                    self.move_to_head(h, HOT, true);
                } else {
                    self.move_to_head(h, COLD, true);
                    demoted = true;
                    break;
                }
            } else {
                self.hand_hot = self.ring.prev(h);
                self.end_test(h);
            }
        }
        self.seek_hot();
        demoted
    }

    /// Whether cold page `n`, re-referenced during its test, may become hot:
    /// only if a hot page older than it can be demoted to make room.
    fn may_promote(&mut self, n: u32) -> bool {
        if !matches!(self.state(n), COLD_TEST | GHOST) {
            return false;
        }
        self.adjust_cold_target(true);
        while self.hot >= self.capacity - self.cold_target {
            if self.hot == 0 || !matches!(self.state(n), COLD_TEST | GHOST) {
                return false;
            }
            if !self.run_hot(n) {
                return false;
            }
        }
        true
    }

    /// One step of the cold hand; returns the page it evicted, if any.
    fn run_cold(&mut self) -> Option<PageId> {
        let c = self.hand_cold;
        self.stats.scanned += 1;
        if self.marked(c) {
            let promote = self.state(c) == COLD_TEST && self.may_promote(c);
            self.move_to_head(c, if promote { HOT } else { COLD_TEST }, true);
            self.seek_all();
            return None;
        }
        let page = self.ring.key(c);
        if self.state(c) == COLD_TEST {
            self.set_state(c, GHOST);
            self.ring.node_mut(c).flags = 0;
            self.hand_cold = self.ring.prev(c);
        } else {
            self.forget(c);
        }
        while self.ghosts > self.history_limit {
            let t = self.hand_test;
            self.end_test(t);
            self.seek_test();
        }
        self.seek_all();
        Some(page)
    }

    /// Demotes one hot page when no resident page is cold.
    fn make_cold(&mut self) {
        while self.cold == 0 && self.hot > 0 {
            self.run_hot(NIL);
        }
        self.seek_all();
    }
}

impl ReplacementPolicy for ClockPro {
    fn name(&self) -> &'static str {
        "clock-pro"
    }

    fn capacity(&self) -> usize {
        self.capacity
    }

    fn resident_len(&self) -> usize {
        self.hot + self.cold
    }

    fn history_len(&self) -> usize {
        self.ghosts
    }

    fn history_limit(&self) -> usize {
        self.history_limit
    }

    fn is_resident(&self, page: PageId) -> bool {
        self.find(page).is_some_and(|n| self.state(n) != GHOST)
    }

    fn insert(&mut self, page: PageId) -> Result<FaultIn, ReplaceError> {
        let found = self.find(page);
        if let Some(n) = found {
            if self.state(n) != GHOST {
                return Err(ReplaceError::AlreadyResident { page });
            }
        }
        if self.resident_len() == self.capacity {
            return Err(ReplaceError::Full {
                page,
                capacity: self.capacity,
            });
        }
        self.stats.inserts += 1;
        let fault = match found {
            Some(n) => {
                self.stats.refaults += 1;
                let promote = self.may_promote(n);
                if self.state(n) == GONE {
                    // The hot hand ended the page's test while making room.
                    let m = self
                        .ring
                        .alloc(page, COLD_TEST)
                        .expect("the node just freed");
                    self.index.insert(page, m);
                    self.move_to_head(m, COLD_TEST, false);
                    self.ring.node_mut(m).flags = FRESH;
                } else {
                    self.move_to_head(n, if promote { HOT } else { COLD_TEST }, true);
                    self.ring.node_mut(n).flags = FRESH;
                }
                FaultIn::Refault
            }
            None => {
                let state = if !self.warm && self.resident_len() < self.capacity - self.min_cold {
                    HOT
                } else {
                    COLD_TEST
                };
                let n = self
                    .ring
                    .alloc(page, state)
                    .expect("nodes for frames and history");
                self.index.insert(page, n);
                self.move_to_head(n, state, false);
                self.ring.node_mut(n).flags = FRESH;
                FaultIn::Fresh
            }
        };
        self.seek_all();
        Ok(fault)
    }

    fn referenced(&mut self, page: PageId) -> bool {
        let Some(n) = self.find(page) else {
            return false;
        };
        let node = self.ring.node_mut(n);
        if node.state == GHOST {
            return false;
        }
        node.report_reference();
        true
    }

    fn evict(&mut self) -> Option<PageId> {
        if self.resident_len() == 0 {
            return None;
        }
        self.warm = true;
        if self.cold == 0 {
            self.make_cold();
        }
        loop {
            if let Some(page) = self.run_cold() {
                self.stats.evictions += 1;
                return Some(page);
            }
            if self.cold == 0 {
                self.make_cold();
            }
        }
    }

    fn demote(&mut self, page: PageId) -> bool {
        let Some(n) = self.find(page) else {
            return false;
        };
        match self.state(n) {
            GHOST | GONE => return false,
            // Its test ends unused: no promotion on a later reference.
            COLD_TEST => self.set_state(n, COLD),
            HOT => self.set_state(n, COLD),
            _ => {}
        }
        self.ring.node_mut(n).flags = 0;
        self.seek_all();
        true
    }

    fn remove(&mut self, page: PageId) -> Removed {
        let Some(n) = self.find(page) else {
            return Removed::NotTracked;
        };
        let was = if self.state(n) == GHOST {
            Removed::History
        } else {
            Removed::Resident
        };
        self.forget(n);
        self.seek_all();
        was
    }

    fn stats(&self) -> ReplaceStats {
        self.stats
    }
}
