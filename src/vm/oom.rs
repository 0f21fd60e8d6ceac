//! Out of memory: what each address space holds, and which one to end
//! when nothing can be reclaimed.
//!
//! A fault that finds no frame and nothing to reclaim returns
//! [`FaultReason::OutOfMemory`](super::FaultReason::OutOfMemory). Ending
//! the faulting process is the wrong answer when another one is the
//! runaway: Linux's `oom_badness` scores every process by its footprint
//! (resident pages, swap entries, page tables) plus an adjustment the
//! administrator sets, and ends the highest. [`choose_victim`] is that
//! score over [`VmSpace::usage`]: the kernel lists its processes, ends the
//! one returned (destroying its space frees its frames and slots), and
//! retries the fault.

use super::swap::slot_of;
use super::{Vm, VmSpace};
use crate::paging::PhysMem;
use x86_64::structures::paging::PhysFrame;
use x86_64::VirtAddr;

/// What one address space holds, in pages.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct SpaceUsage {
    /// Anonymous frames it maps alone.
    pub resident: u64,
    /// Anonymous frames it shares with other spaces (after a fork).
    pub shared: u64,
    /// Pages on the swap device (entries holding a slot).
    pub swapped: u64,
    /// Pages mapping the shared zero frame (read, never written).
    pub zero: u64,
    /// Page-table frames, the PML4 included.
    pub tables: u64,
}

impl SpaceUsage {
    /// Pages that ending the space would give back or stop charging:
    /// resident and shared frames, swap slots and page tables.
    pub const fn footprint(&self) -> u64 {
        self.resident + self.shared + self.swapped + self.tables
    }
}

impl<P: PhysMem> VmSpace<P> {
    /// Counts what this space holds by walking its page tables (holding
    /// its page-table lock for the walk: O(pages mapped), so call it when
    /// choosing a victim, not on every fault).
    pub fn usage(&self, vm: &Vm) -> SpaceUsage {
        let mut u = SpaceUsage::default();
        let m = self.mapper.lock();
        // The user half's tables (the kernel half is shared by every
        // space), and the PML4.
        let (lo, hi) = self.areas.bounds();
        u.tables = m
            .for_each_leaf_in(VirtAddr::new(lo), hi - lo, |_| {})
            .tables as u64;
        for area in self.areas.iter().filter(|a| a.kind.is_private_memory()) {
            let (start, len) = (VirtAddr::new(area.start), area.len());
            m.for_each_leaf_in(start, len, |leaf| {
                let frame = PhysFrame::containing_address(leaf.frame);
                let va = leaf.page.as_u64();
                if frame == vm.zero_frame() {
                    u.zero += 1;
                } else if vm.share_count(frame) > 1
                    || super::objects::cached_page(vm, area, va, frame).is_some()
                {
                    // Shared after a fork, or an object's cached page.
                    u.shared += 1;
                } else {
                    u.resident += super::huge::pages_of(leaf.size); // 512 for a huge page
                }
            });
            m.for_each_soft_entry(start, len, |_, e| {
                if slot_of(e).is_some() {
                    u.swapped += 1;
                }
            });
        }
        u
    }
}

/// The adjustment that exempts a space from being chosen (Linux's
/// `OOM_SCORE_ADJ_MIN`).
pub const NEVER: i16 = -1000;

/// One process the kernel could end.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OomCandidate {
    /// The kernel's name for it (a process id).
    pub id: u64,
    /// What its address space holds ([`VmSpace::usage`]).
    pub usage: SpaceUsage,
    /// -1000 ([`NEVER`]) to 1000: thousandths of `total_pages` added to
    /// its score (negative: spare it; [`NEVER`]: never choose it).
    pub adjust: i16,
}

/// The process to end, and why.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OomChoice {
    /// Its id.
    pub id: u64,
    /// Its score: footprint in pages plus the adjustment.
    pub badness: u64,
    /// What it held when chosen.
    pub usage: SpaceUsage,
    /// Its adjustment.
    pub adjust: i16,
}

/// The score of one candidate, as Linux's `oom_badness`: its footprint in
/// pages plus `adjust` thousandths of `total_pages` (the memory the
/// kernel manages: frames plus swap slots), at least 1 so that any
/// candidate not exempt can be chosen; `None` for [`NEVER`].
pub fn badness(usage: &SpaceUsage, adjust: i16, total_pages: u64) -> Option<u64> {
    if adjust <= NEVER {
        return None;
    }
    let adjust = i128::from(adjust.clamp(NEVER, 1000)) * i128::from(total_pages) / 1000;
    let score = i128::from(usage.footprint()) + adjust;
    Some(score.clamp(1, i128::from(u64::MAX)) as u64)
}

/// The candidate with the highest [`badness`] (ties: the lowest id), or
/// `None` when every candidate is exempt.
///
/// ```
/// use kmem::vm::oom::{choose_victim, OomCandidate, SpaceUsage};
///
/// let shell = OomCandidate { id: 1, usage: SpaceUsage { resident: 50, ..Default::default() }, adjust: 0 };
/// let runaway = OomCandidate { id: 7, usage: SpaceUsage { resident: 900, swapped: 3000, ..Default::default() }, adjust: 0 };
/// let database = OomCandidate { id: 3, usage: SpaceUsage { resident: 2000, ..Default::default() }, adjust: -500 };
/// let choice = choose_victim([shell, runaway, database], 8192).unwrap();
/// assert_eq!(choice.id, 7);
/// assert_eq!(choice.badness, 3900);
/// ```
pub fn choose_victim(
    candidates: impl IntoIterator<Item = OomCandidate>,
    total_pages: u64,
) -> Option<OomChoice> {
    let mut best: Option<OomChoice> = None;
    for c in candidates {
        let Some(score) = badness(&c.usage, c.adjust, total_pages) else {
            continue;
        };
        let better = match best {
            None => true,
            Some(b) => score > b.badness || (score == b.badness && c.id < b.id),
        };
        if better {
            best = Some(OomChoice {
                id: c.id,
                badness: score,
                usage: c.usage,
                adjust: c.adjust,
            });
        }
    }
    best
}
