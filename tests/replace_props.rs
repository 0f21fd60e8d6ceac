//! `kmem::vm::replace` against references and bounds, on random inputs:
//!
//! - OPT (`sim::opt_faults`) equals a direct O(n·frames) MIN and has no
//!   more faults than any policy on any trace;
//! - CLOCK equals a straightforward second-chance queue, operation by
//!   operation, under inserts, references, evictions and removals;
//! - every policy, under random operations, evicts only resident pages,
//!   keeps its resident set equal to a model's, stays within its capacity
//!   and history bound, and reports a refault only for a page it evicted
//!   (and counts each).
//!
//! Default: a fast run. Long run:
//! `PROPTEST_CASES=20000 cargo test --release --test replace_props`.

use kmem::vm::replace::sim;
use kmem::vm::replace::{
    Adaptive, Clock, ClockPro, FaultIn, Removed, ReplaceError, ReplacementPolicy,
};
use proptest::prelude::*;
use std::collections::{HashSet, VecDeque};

/// Belady's MIN by rescanning the future at each eviction.
fn slow_opt(trace: &[u64], frames: usize) -> u64 {
    let mut resident: Vec<u64> = Vec::new();
    let mut faults = 0;
    for (i, &p) in trace.iter().enumerate() {
        if resident.contains(&p) {
            continue;
        }
        faults += 1;
        if frames == 0 {
            continue;
        }
        if resident.len() == frames {
            let next = |q: u64| {
                trace[i + 1..]
                    .iter()
                    .position(|&r| r == q)
                    .unwrap_or(usize::MAX)
            };
            let far = (0..resident.len())
                .max_by_key(|&k| next(resident[k]))
                .unwrap();
            resident.swap_remove(far);
        }
        resident.push(p);
    }
    faults
}

/// Second chance as a queue: the front is under the hand.
#[derive(Default)]
struct RefClock {
    queue: VecDeque<(u64, bool, bool)>, // page, referenced, fresh
    capacity: usize,
}

impl RefClock {
    fn insert(&mut self, page: u64) -> bool {
        if self.queue.len() == self.capacity || self.queue.iter().any(|e| e.0 == page) {
            return false;
        }
        self.queue.push_back((page, false, true));
        true
    }
    fn referenced(&mut self, page: u64) -> bool {
        match self.queue.iter_mut().find(|e| e.0 == page) {
            Some(e) if e.2 => e.2 = false,
            Some(e) => e.1 = true,
            None => return false,
        }
        true
    }
    fn evict(&mut self) -> Option<u64> {
        loop {
            let mut e = self.queue.pop_front()?;
            if e.1 {
                e.1 = false;
                self.queue.push_back(e);
            } else {
                return Some(e.0);
            }
        }
    }
    fn remove(&mut self, page: u64) -> bool {
        let at = self.queue.iter().position(|e| e.0 == page);
        at.map(|i| self.queue.remove(i)).is_some()
    }
    /// Unreferenced, under the hand: the next victim.
    fn demote(&mut self, page: u64) -> bool {
        let Some(i) = self.queue.iter().position(|e| e.0 == page) else {
            return false;
        };
        self.queue.remove(i);
        self.queue.push_front((page, false, false));
        true
    }
}

#[derive(Debug, Clone)]
enum Op {
    Insert(u64),
    Referenced(u64),
    Evict,
    Remove(u64),
    Demote(u64),
}

fn ops(pages: u64) -> impl Strategy<Value = Vec<Op>> {
    prop::collection::vec(
        prop_oneof![
            4 => (0..pages).prop_map(Op::Insert),
            4 => (0..pages).prop_map(Op::Referenced),
            3 => Just(Op::Evict),
            1 => (0..pages).prop_map(Op::Remove),
            1 => (0..pages).prop_map(Op::Demote),
        ],
        0..300,
    )
}

/// Drives `policy` with `ops` against a model of the resident set and of
/// the pages it may remember.
fn check_policy(policy: &mut dyn ReplacementPolicy, ops: &[Op]) -> Result<(), TestCaseError> {
    let mut resident: HashSet<u64> = HashSet::new();
    let mut evicted: HashSet<u64> = HashSet::new();
    let mut refaults = 0;
    for op in ops {
        match *op {
            Op::Insert(p) => match policy.insert(p) {
                Ok(kind) => {
                    prop_assert!(!resident.contains(&p));
                    prop_assert!(resident.len() < policy.capacity());
                    if kind == FaultIn::Refault {
                        prop_assert!(evicted.contains(&p), "refault of {p}, never evicted");
                        refaults += 1;
                    }
                    evicted.remove(&p);
                    resident.insert(p);
                }
                Err(ReplaceError::AlreadyResident { page }) => {
                    prop_assert_eq!(page, p);
                    prop_assert!(resident.contains(&p));
                }
                Err(ReplaceError::Full { capacity, .. }) => {
                    prop_assert_eq!(capacity, policy.capacity());
                    prop_assert_eq!(resident.len(), capacity);
                }
            },
            Op::Referenced(p) => prop_assert_eq!(policy.referenced(p), resident.contains(&p)),
            Op::Evict => match policy.evict() {
                Some(v) => {
                    prop_assert!(resident.remove(&v), "evicted {v}, not resident");
                    evicted.insert(v);
                }
                None => prop_assert!(resident.is_empty()),
            },
            Op::Demote(p) => {
                // A hint: the resident set stays; only resident pages take it.
                if policy.demote(p) {
                    prop_assert!(resident.contains(&p), "demoted {p}, not resident");
                }
            }
            Op::Remove(p) => {
                let r = policy.remove(p);
                if resident.remove(&p) {
                    prop_assert_eq!(r, Removed::Resident);
                } else {
                    prop_assert_ne!(r, Removed::Resident);
                    evicted.remove(&p);
                }
            }
        }
        prop_assert_eq!(policy.resident_len(), resident.len());
        prop_assert!(policy.resident_len() <= policy.capacity());
        prop_assert!(policy.history_len() <= policy.history_limit());
        for &p in &resident {
            prop_assert!(policy.is_resident(p));
        }
    }
    prop_assert_eq!(policy.stats().refaults, refaults);
    Ok(())
}

fn trace() -> impl Strategy<Value = Vec<u64>> {
    (1u64..14).prop_flat_map(|pages| prop::collection::vec(0..pages, 0..250))
}

proptest! {
    #[test]
    fn opt_is_min_and_beats_every_policy(t in trace(), frames in 1usize..9) {
        let opt = sim::opt_faults(&t, frames);
        prop_assert_eq!(opt, slow_opt(&t, frames));
        let clock = sim::replay(&mut Clock::new(frames), &t);
        let mut policy = ClockPro::new(frames);
        let pro = sim::replay(&mut policy, &t);
        prop_assert!(opt <= clock.faults, "opt {} > clock {}", opt, clock.faults);
        prop_assert!(opt <= pro.faults, "opt {} > clock-pro {}", opt, pro.faults);
        prop_assert_eq!(pro.refaults, policy.stats().refaults);
        prop_assert_eq!(pro.faults, policy.stats().inserts);
        let mut adaptive = Adaptive::new(frames);
        let ad = sim::replay(&mut adaptive, &t);
        prop_assert!(opt <= ad.faults, "opt {} > adaptive {}", opt, ad.faults);
        prop_assert_eq!(ad.faults, adaptive.stats().inserts);
    }

    #[test]
    fn opt_bounds_global_and_per_process_replacement(
        traces in prop::collection::vec(prop::collection::vec(0u64..12, 0..80), 1..4),
        quantum in 1usize..6,
        frames in 1usize..9,
    ) {
        use kmem::vm::replace::multi;
        let refs = multi::interleave(&traces, quantum).unwrap();
        let opt = multi::opt_faults(&refs, frames);
        let global = multi::replay_global(&mut Adaptive::new(frames), &refs);
        let mut own: Vec<Box<dyn ReplacementPolicy>> =
            traces.iter().map(|_| Box::new(ClockPro::new(frames)) as Box<dyn ReplacementPolicy>).collect();
        let local = multi::replay_per_process(&mut own, frames, &refs);
        prop_assert!(opt <= global.faults && opt <= local.faults);
        prop_assert_eq!(global.per_process.iter().sum::<u64>(), global.faults);
        let held: usize = own.iter().map(|p| p.resident_len()).sum();
        prop_assert!(held <= frames, "{} pages held in {} frames", held, frames);
    }

    #[test]
    fn clock_matches_reference(frames in 1usize..8, ops in ops(12)) {
        let mut clock = Clock::new(frames);
        let mut reference = RefClock { capacity: frames, ..RefClock::default() };
        for op in &ops {
            match *op {
                Op::Insert(p) => prop_assert_eq!(clock.insert(p).is_ok(), reference.insert(p)),
                Op::Referenced(p) => prop_assert_eq!(clock.referenced(p), reference.referenced(p)),
                Op::Evict => prop_assert_eq!(clock.evict(), reference.evict()),
                Op::Remove(p) => prop_assert_eq!(
                    clock.remove(p) == Removed::Resident,
                    reference.remove(p)
                ),
                Op::Demote(p) => prop_assert_eq!(clock.demote(p), reference.demote(p)),
            }
        }
    }

    #[test]
    fn clock_keeps_its_contract(frames in 0usize..8, ops in ops(12)) {
        check_policy(&mut Clock::new(frames), &ops)?;
    }

    #[test]
    fn clock_pro_keeps_its_contract(
        frames in 0usize..10,
        history in 0usize..12,
        ops in ops(24),
    ) {
        check_policy(&mut ClockPro::with_history(frames, history), &ops)?;
    }

    #[test]
    fn adaptive_keeps_its_contract(
        frames in 0usize..10,
        history in 0usize..12,
        ops in ops(24),
    ) {
        let mut p = Adaptive::with_experts(ClockPro::with_history(frames, history), Clock::new(frames));
        check_policy(&mut p, &ops)?;
    }

    #[test]
    fn clock_pro_history_bounded_on_replay(t in trace(), frames in 1usize..9, history in 0usize..9) {
        let mut p = ClockPro::with_history(frames, history);
        let mut resident = HashSet::new();
        for &page in &t {
            if !p.referenced(page) {
                while p.resident_len() == frames {
                    let v = p.evict().unwrap();
                    prop_assert!(resident.remove(&v));
                }
                p.insert(page).unwrap();
                resident.insert(page);
                p.referenced(page);
            }
            prop_assert!(p.history_len() <= history);
            prop_assert_eq!(p.resident_len(), resident.len());
        }
    }
}
