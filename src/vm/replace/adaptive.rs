//! Follow the leader between two policies: each sees every reference as
//! if it owned the frames, and the resident set follows whichever of them
//! missed less of late.
//!
//! CLOCK-Pro wins by far on loops, scans and skewed reuse but can lose to
//! plain CLOCK where recency is all there is: a page re-referenced once at
//! a distance longer than CLOCK-Pro's small cold space and shorter than
//! memory costs CLOCK-Pro two faults and CLOCK one. Tuning its cold space
//! narrows the gap on some traces and opens it on others; measuring both
//! experts on the live reference stream closes it on all of them (as set
//! dueling does for cache insertion policies, and ARC's ghost lists for
//! its recency/frequency split).
//!
//! The experts are simulations: their resident sets are their own and
//! hold no frames. The real resident set holds what the kernel has
//! mapped; a page in it that the leader would not hold is an *orphan* and
//! goes first when a frame is wanted, so after a change of leader the
//! resident set converges to the new leader's within one turnover of
//! memory, and while the leader stays, the two are the same set.

use super::index::Index;
use super::ring::{Ring, NIL};
use super::{
    Clock, ClockPro, FaultIn, PageId, Removed, ReplaceError, ReplaceStats, ReplacementPolicy,
};

/// A resident page the leader also holds.
const SYNCED: u8 = 1;
/// A resident page the leader does not hold: on the orphan queue.
const ORPHAN: u8 = 2;

/// Misses are counted in 1/`ONE` units so the decay stays in integers.
const ONE: u64 = 1 << 10;

/// Two policies dueling over one resident set: by default [`ClockPro`]
/// against [`Clock`], so the result faults about as little as the better
/// of the two on each stretch of the reference string.
///
/// Costs: both experts' bookkeeping plus a 24-byte node and 4-8 bytes of
/// index per resident page (with the default experts 128 to 150 bytes a
/// frame, 3.1-3.7 % of a 4 KiB page, all allocated by the constructor); every
/// reference is shown to both experts, so a call costs about the sum of
/// theirs.
///
/// ```
/// use kmem::vm::replace::{sim, Adaptive, Clock, ClockPro};
///
/// // A loop over 1.2x memory: CLOCK faults on every reference, CLOCK-Pro
/// // keeps most of the loop, and the duel soon follows CLOCK-Pro.
/// let trace: Vec<u64> = (0..20_000).map(|i| i % 120).collect();
/// let clock = sim::replay(&mut Clock::new(100), &trace).faults;
/// let pro = sim::replay(&mut ClockPro::new(100), &trace).faults;
/// let adaptive = sim::replay(&mut Adaptive::new(100), &trace).faults;
/// assert_eq!(clock, 20_000);
/// assert!(adaptive <= pro + pro / 10, "{adaptive} vs {pro}");
/// ```
pub struct Adaptive<A = ClockPro, B = Clock> {
    a: A,
    b: B,
    /// Whether `b` leads.
    b_leads: bool,
    resident: Residents,
    capacity: usize,
    /// Each expert's misses, decayed by 1/64 every `capacity / 16`
    /// references (a half-life of about three turnovers of memory).
    misses: [u64; 2],
    references: usize,
    switches: u64,
    stats: ReplaceStats,
}

/// The real resident set, with the queue of orphans.
struct Residents {
    ring: Ring,
    index: Index,
    /// Oldest orphan; the queue is a circle through the ring's links.
    orphans: u32,
    len: usize,
}

impl Residents {
    fn find(&self, page: PageId) -> Option<u32> {
        let ring = &self.ring;
        self.index.find(page, |n| ring.key(n))
    }

    fn enqueue(&mut self, n: u32) {
        if self.ring.node(n).state == ORPHAN {
            return;
        }
        self.ring.node_mut(n).state = ORPHAN;
        self.ring.link_before(n, self.orphans);
        if self.orphans == NIL {
            self.orphans = n;
        }
    }

    fn dequeue(&mut self, n: u32) {
        if self.ring.node(n).state != ORPHAN {
            return;
        }
        let next = self.ring.next(n);
        let others = self.ring.unlink(n);
        if self.orphans == n {
            self.orphans = if others { next } else { NIL };
        }
        self.ring.node_mut(n).state = SYNCED;
    }

    /// The leader let `page` go, or took it, in its simulation.
    fn leader_holds(&mut self, page: PageId, holds: bool) {
        if let Some(n) = self.find(page) {
            if holds {
                self.dequeue(n);
            } else {
                self.enqueue(n);
            }
        }
    }

    fn forget(&mut self, n: u32) -> PageId {
        self.dequeue(n);
        let page = self.ring.key(n);
        let ring = &self.ring;
        self.index.remove(page, |m| ring.key(m));
        self.ring.node_mut(n).state = 0;
        self.ring.release(n);
        self.len -= 1;
        page
    }
}

/// One reference to `page` shown to expert `x`: a miss (counted in
/// `misses`) makes room and inserts. `report` also reports the reference
/// to an expert holding the page, and the faulting access to one that
/// inserts it. When `x` leads, `resident` learns what it dropped and
/// took. Returns whether `x` remembered the page as history.
fn show(
    x: &mut dyn ReplacementPolicy,
    page: PageId,
    report: bool,
    misses: &mut u64,
    mut resident: Option<&mut Residents>,
) -> bool {
    if x.is_resident(page) {
        if report {
            x.referenced(page);
        }
        return false;
    }
    *misses += ONE;
    while x.resident_len() >= x.capacity() {
        let v = x.evict().expect("a full expert has a victim");
        if let Some(r) = resident.as_deref_mut() {
            r.leader_holds(v, false);
        }
    }
    let fault = x.insert(page).expect("room was made");
    if report {
        x.referenced(page);
    }
    if let Some(r) = resident {
        r.leader_holds(page, true);
    }
    fault == FaultIn::Refault
}

impl Adaptive<ClockPro, Clock> {
    /// CLOCK-Pro against CLOCK over `frames` frames.
    pub fn new(frames: usize) -> Self {
        Self::with_experts(ClockPro::new(frames), Clock::new(frames))
    }
}

impl<A: ReplacementPolicy, B: ReplacementPolicy> Adaptive<A, B> {
    /// A duel between two empty policies of the same capacity; `b` leads
    /// first (with the default experts CLOCK, which adapts to a new working
    /// set at once; CLOCK-Pro takes over as soon as it misses less).
    ///
    /// # Panics
    ///
    /// If the capacities differ or either policy holds pages already.
    pub fn with_experts(a: A, b: B) -> Self {
        assert_eq!(a.capacity(), b.capacity(), "experts of one capacity");
        assert_eq!(a.resident_len() + b.resident_len(), 0, "empty experts");
        let capacity = a.capacity();
        Self {
            a,
            b,
            b_leads: true,
            resident: Residents {
                ring: Ring::with_capacity(capacity),
                index: Index::with_capacity(capacity),
                orphans: NIL,
                len: 0,
            },
            capacity,
            misses: [0; 2],
            references: 0,
            switches: 0,
            stats: ReplaceStats::default(),
        }
    }

    /// Whether the second expert (CLOCK by default) leads now.
    pub fn second_leads(&self) -> bool {
        self.b_leads
    }

    /// Times the lead changed hands.
    pub fn switches(&self) -> u64 {
        self.switches
    }

    /// Bytes held by the experts' and the resident set's bookkeeping.
    pub fn footprint(&self) -> usize
    where
        A: Footprint,
        B: Footprint,
    {
        self.a.footprint()
            + self.b.footprint()
            + self.resident.ring.nodes.capacity() * core::mem::size_of::<super::ring::Node>()
            + self.resident.index.slots() * core::mem::size_of::<u32>()
    }

    /// Checks the resident set against the leader: the orphan queue holds
    /// exactly the resident pages the leader does not, each once, and the
    /// index finds every resident page.
    #[cfg(test)]
    pub(crate) fn check(&self) {
        let mut len = 0;
        let mut orphans = 0;
        for (n, node) in self.resident.ring.nodes.iter().enumerate() {
            if node.state != SYNCED && node.state != ORPHAN {
                continue;
            }
            len += 1;
            assert_eq!(self.resident.find(node.key), Some(n as u32));
            let held = if self.b_leads {
                self.b.is_resident(node.key)
            } else {
                self.a.is_resident(node.key)
            };
            assert_eq!(node.state == ORPHAN, !held, "page {} orphaned", node.key);
            orphans += usize::from(node.state == ORPHAN);
        }
        assert_eq!(len, self.resident.len);
        assert!(len <= self.capacity);
        let mut queued = 0;
        let mut n = self.resident.orphans;
        while n != NIL {
            assert_eq!(self.resident.ring.node(n).state, ORPHAN);
            queued += 1;
            n = self.resident.ring.next(n);
            if n == self.resident.orphans {
                break;
            }
        }
        assert_eq!(queued, orphans);
    }

    /// Shows one reference to both experts.
    fn show_both(&mut self, page: PageId, report: bool) -> bool {
        let [ma, mb] = &mut self.misses;
        let (ra, rb) = if self.b_leads {
            (None, Some(&mut self.resident))
        } else {
            (Some(&mut self.resident), None)
        };
        let a = show(&mut self.a, page, report, ma, ra);
        let b = show(&mut self.b, page, report, mb, rb);
        a || b
    }

    /// Counts a reference; every `capacity / 16` of them (at least 64) the
    /// lead may change and the counts decay.
    fn tick(&mut self) {
        self.references += 1;
        if self.references < (self.capacity / 16).max(64) {
            return;
        }
        self.references = 0;
        let (lead, other) = if self.b_leads { (1, 0) } else { (0, 1) };
        // A margin of 1/256 of the leader's misses plus one miss keeps
        // near-ties from trading the resident set back and forth.
        if self.misses[other] + self.misses[lead] / 256 + ONE < self.misses[lead] {
            self.b_leads = !self.b_leads;
            self.switches += 1;
            self.resync();
        }
        for m in &mut self.misses {
            *m -= *m >> 6;
        }
    }

    /// After a change of leader: every resident page the new leader does
    /// not hold is queued, every other one is taken off the queue.
    fn resync(&mut self) {
        for n in 0..self.resident.ring.nodes.len() as u32 {
            let node = self.resident.ring.node(n);
            if node.state != SYNCED && node.state != ORPHAN {
                continue;
            }
            let holds = if self.b_leads {
                self.b.is_resident(node.key)
            } else {
                self.a.is_resident(node.key)
            };
            if holds {
                self.resident.dequeue(n);
            } else {
                self.resident.enqueue(n);
            }
        }
    }
}

/// Policies that report the bytes of their bookkeeping.
pub trait Footprint {
    /// Bytes held for nodes and index.
    fn footprint(&self) -> usize;
}

impl Footprint for ClockPro {
    fn footprint(&self) -> usize {
        ClockPro::footprint(self)
    }
}

impl Footprint for Clock {
    fn footprint(&self) -> usize {
        Clock::footprint(self)
    }
}

impl<A: ReplacementPolicy, B: ReplacementPolicy> ReplacementPolicy for Adaptive<A, B> {
    fn name(&self) -> &'static str {
        "adaptive"
    }

    fn capacity(&self) -> usize {
        self.capacity
    }

    fn resident_len(&self) -> usize {
        self.resident.len
    }

    fn history_len(&self) -> usize {
        self.a.history_len() + self.b.history_len()
    }

    fn history_limit(&self) -> usize {
        self.a.history_limit() + self.b.history_limit()
    }

    fn is_resident(&self, page: PageId) -> bool {
        self.resident.find(page).is_some()
    }

    fn insert(&mut self, page: PageId) -> Result<FaultIn, ReplaceError> {
        if self.resident.find(page).is_some() {
            return Err(ReplaceError::AlreadyResident { page });
        }
        if self.resident.len == self.capacity {
            return Err(ReplaceError::Full {
                page,
                capacity: self.capacity,
            });
        }
        let held = self.a.is_resident(page) || self.b.is_resident(page);
        let n = self
            .resident
            .ring
            .alloc(page, SYNCED)
            .expect("one node per frame");
        self.resident.index.insert(page, n);
        self.resident.len += 1;
        self.stats.inserts += 1;
        // The faulting access is reported by the caller's next
        // `referenced`, which reaches the experts then.
        let remembered = self.show_both(page, false) || held;
        self.tick();
        if remembered {
            self.stats.refaults += 1;
            Ok(FaultIn::Refault)
        } else {
            Ok(FaultIn::Fresh)
        }
    }

    fn referenced(&mut self, page: PageId) -> bool {
        if self.resident.find(page).is_none() {
            return false;
        }
        self.show_both(page, true);
        self.tick();
        true
    }

    fn evict(&mut self) -> Option<PageId> {
        if self.resident.len == 0 {
            return None;
        }
        let n = if self.resident.orphans != NIL {
            self.resident.orphans
        } else {
            // No orphan: the leader holds every resident page, so its
            // victims are resident unless reclaim ran ahead of faults.
            loop {
                let x: &mut dyn ReplacementPolicy = if self.b_leads {
                    &mut self.b
                } else {
                    &mut self.a
                };
                let v = x.evict().expect("the leader holds the resident pages");
                if let Some(n) = self.resident.find(v) {
                    break n;
                }
            }
        };
        let page = self.resident.forget(n);
        self.stats.evictions += 1;
        Some(page)
    }

    fn demote(&mut self, page: PageId) -> bool {
        if self.resident.find(page).is_none() {
            return false;
        }
        let a = self.a.demote(page);
        let b = self.b.demote(page);
        a || b
    }

    fn remove(&mut self, page: PageId) -> Removed {
        let (a, b) = (self.a.remove(page), self.b.remove(page));
        if let Some(n) = self.resident.find(page) {
            self.resident.forget(n);
            Removed::Resident
        } else if a != Removed::NotTracked || b != Removed::NotTracked {
            Removed::History
        } else {
            Removed::NotTracked
        }
    }

    fn stats(&self) -> ReplaceStats {
        ReplaceStats {
            scanned: self.a.stats().scanned + self.b.stats().scanned,
            ..self.stats
        }
    }
}
