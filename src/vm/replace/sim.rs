//! The host simulator: replays a trace of page references against a
//! policy with a fixed number of frames, and computes Belady's OPT.
//!
//! The simulator drives a policy exactly as a kernel that harvests
//! Accessed bits after every reference would: a reference to a resident
//! page is reported with `referenced`; a miss evicts while all frames are
//! full, inserts the page and reports the faulting access.

use super::index::Index;
use super::{FaultIn, PageId, ReplacementPolicy};
use alloc::collections::BinaryHeap;
use alloc::vec;
use alloc::vec::Vec;

/// What one replay counted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Outcome {
    /// References replayed.
    pub references: u64,
    /// References that found their page not resident (cold misses included).
    pub faults: u64,
    /// Faults on a page the policy remembered in its history.
    pub refaults: u64,
}

/// Replays `trace` against `policy` (its capacity is the frame count).
///
/// # Panics
///
/// If the policy breaks its contract: evicts nothing while full, or
/// refuses an insert after an eviction.
pub fn replay<P: ReplacementPolicy + ?Sized>(policy: &mut P, trace: &[PageId]) -> Outcome {
    let mut out = Outcome::default();
    for &page in trace {
        out.references += 1;
        if policy.referenced(page) {
            continue;
        }
        out.faults += 1;
        while policy.resident_len() >= policy.capacity() {
            policy.evict().expect("a full policy has a victim");
        }
        if policy.insert(page).expect("a frame is free") == FaultIn::Refault {
            out.refaults += 1;
        }
        policy.referenced(page);
    }
    out
}

/// Replays `trace` the way a kernel that harvests Accessed bits only when
/// it needs a frame drives the policy: a reference sets the page's bit; a
/// miss with every frame in use first reports every set bit (in ascending
/// page order, as a page-table walk finds them) and clears it, then evicts
/// one page; the faulting access sets the new page's bit. A kernel that
/// reclaims one page per fault at the limit and reads nothing ahead makes
/// exactly these calls, so its fault count equals this one.
pub fn replay_harvested<P: ReplacementPolicy + ?Sized>(
    policy: &mut P,
    trace: &[PageId],
) -> Outcome {
    let mut out = Outcome::default();
    let mut accessed = alloc::collections::BTreeSet::new();
    for &page in trace {
        out.references += 1;
        if policy.is_resident(page) {
            accessed.insert(page);
            continue;
        }
        out.faults += 1;
        while policy.resident_len() >= policy.capacity() {
            for q in core::mem::take(&mut accessed) {
                policy.referenced(q);
            }
            let victim = policy.evict().expect("a full policy has a victim");
            accessed.remove(&victim);
        }
        if policy.insert(page).expect("a frame is free") == FaultIn::Refault {
            out.refaults += 1;
        }
        accessed.insert(page);
    }
    out
}

/// Renumbers the pages of `trace` densely (first seen = 0), returning the
/// dense trace and the number of distinct pages.
pub fn dense(trace: &[PageId]) -> (Vec<u32>, usize) {
    let mut keys: Vec<PageId> = Vec::new();
    let mut index = Index::with_capacity(1024);
    let mut out = Vec::with_capacity(trace.len());
    for &page in trace {
        let n = match index.find(page, |n| keys[n as usize]) {
            Some(n) => n,
            None => {
                let n = keys.len() as u32;
                keys.push(page);
                index.reserve_one(|n| keys[n as usize]);
                index.insert(page, n);
                n
            }
        };
        out.push(n);
    }
    (out, keys.len())
}

/// `next[i]`: the position of the next reference to `trace[i]`'s page,
/// or `trace.len()` if there is none.
pub fn next_uses(trace: &[u32], pages: usize) -> Vec<u32> {
    let never = trace.len() as u32;
    let mut last = vec![never; pages];
    let mut next = vec![never; trace.len()];
    for (i, &p) in trace.iter().enumerate().rev() {
        next[i] = last[p as usize];
        last[p as usize] = i as u32;
    }
    next
}

/// Faults of Belady's OPT (MIN) on `trace` with `frames` frames: on a
/// miss with all frames full, evict the page whose next use is furthest.
/// O(n log n): a max-heap of (next use, page), stale entries skipped.
pub fn opt_faults(trace: &[PageId], frames: usize) -> u64 {
    let (trace, pages) = dense(trace);
    opt_faults_dense(&trace, pages, frames)
}

/// [`opt_faults`] on a trace already renumbered by [`dense`].
pub fn opt_faults_dense(trace: &[u32], pages: usize, frames: usize) -> u64 {
    assert!(
        trace.len() < u32::MAX as usize,
        "traces hold fewer than 2^32 references"
    );
    let next = next_uses(trace, pages);
    // The next use of each resident page; NOT_RESIDENT otherwise.
    const NOT_RESIDENT: u32 = u32::MAX;
    let mut due = vec![NOT_RESIDENT; pages];
    let mut heap: BinaryHeap<(u32, u32)> = BinaryHeap::with_capacity(frames + 1);
    let (mut resident, mut faults) = (0usize, 0u64);
    for (i, &p) in trace.iter().enumerate() {
        let hit = due[p as usize] != NOT_RESIDENT;
        if !hit {
            faults += 1;
            if frames == 0 {
                continue;
            }
            if resident == frames {
                loop {
                    let (when, victim) = heap.pop().expect("resident pages are in the heap");
                    if due[victim as usize] == when {
                        due[victim as usize] = NOT_RESIDENT;
                        break;
                    }
                }
            } else {
                resident += 1;
            }
        }
        due[p as usize] = next[i];
        heap.push((next[i], p));
        // Stale entries only slow pops; rebuild when they dominate.
        if heap.len() > 4 * frames + 64 {
            heap.retain(|&(when, q)| due[q as usize] == when);
        }
    }
    faults
}
