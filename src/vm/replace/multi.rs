//! Several processes over one pool of frames: the simulator for global
//! replacement (one policy sees every process's pages and evicts the
//! coldest anywhere) against per-process replacement (a process that
//! faults at the limit evicts one of its own pages, whatever the others
//! hold), and OPT over the merged reference string.
//!
//! Per-process replacement is what a kernel does when reclaim looks only
//! at the faulting address space; operating-systems texts show it
//! thrashes when working sets shift between processes, which global
//! replacement absorbs.

use super::{sim, PageId, ReplacementPolicy};
use alloc::boxed::Box;
use alloc::vec;
use alloc::vec::Vec;
use core::fmt;

/// One reference: the process and its page.
pub type ProcessRef = (u32, PageId);

/// Pages of a process must lie below this (virtual page numbers do): the
/// process goes in the bits above.
pub const PAGE_LIMIT: PageId = 1 << 48;

/// A page at or above [`PAGE_LIMIT`] in a process's trace.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PageTooLarge {
    /// The process.
    pub process: u32,
    /// The page.
    pub page: PageId,
}

impl fmt::Display for PageTooLarge {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "page {:#x} of process {} is not below 2^48",
            self.page, self.process
        )
    }
}

impl core::error::Error for PageTooLarge {}

/// The identity of `page` of process `process` under one policy for all.
#[inline]
pub fn global_id(process: u32, page: PageId) -> PageId {
    (PageId::from(process) << 48) | (page & (PAGE_LIMIT - 1))
}

/// Interleaves the processes' traces round-robin, `quantum` references of
/// each at a time (a process whose trace ended drops out).
pub fn interleave(traces: &[Vec<PageId>], quantum: usize) -> Result<Vec<ProcessRef>, PageTooLarge> {
    let quantum = quantum.max(1);
    let mut at = vec![0usize; traces.len()];
    let mut out = Vec::with_capacity(traces.iter().map(Vec::len).sum());
    loop {
        let mut any = false;
        for (p, trace) in traces.iter().enumerate() {
            let end = (at[p] + quantum).min(trace.len());
            for &page in &trace[at[p]..end] {
                if page >= PAGE_LIMIT {
                    return Err(PageTooLarge {
                        process: p as u32,
                        page,
                    });
                }
                out.push((p as u32, page));
                any = true;
            }
            at[p] = end;
        }
        if !any {
            return Ok(out);
        }
    }
}

/// What a multi-process replay counted.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct MultiOutcome {
    /// References replayed.
    pub references: u64,
    /// References that found their page not resident.
    pub faults: u64,
    /// Faults of each process.
    pub per_process: Vec<u64>,
    /// Per-process replacement only: faults at the limit of a process that
    /// held no page, served by evicting from the process holding the most
    /// (a kernel that reclaims only the faulting space fails these).
    pub borrowed: u64,
}

impl MultiOutcome {
    fn count(&mut self, process: u32) {
        let p = process as usize;
        if self.per_process.len() <= p {
            self.per_process.resize(p + 1, 0);
        }
        self.per_process[p] += 1;
        self.faults += 1;
    }
}

/// Replays `refs` with one policy over every process's pages (its
/// capacity is the frame count), as [`sim::replay`] does for one trace.
pub fn replay_global<P: ReplacementPolicy + ?Sized>(
    policy: &mut P,
    refs: &[ProcessRef],
) -> MultiOutcome {
    let mut out = MultiOutcome::default();
    for &(process, page) in refs {
        out.references += 1;
        let id = global_id(process, page);
        if policy.referenced(id) {
            continue;
        }
        out.count(process);
        while policy.resident_len() >= policy.capacity() {
            policy.evict().expect("a full policy has a victim");
        }
        policy.insert(id).expect("a frame is free");
        policy.referenced(id);
    }
    out
}

/// Replays `refs` with one policy over every process the way the kernel's
/// reclaim worker drives it ([`Vm::reclaim_global`](crate::vm::Vm::reclaim_global)
/// with one page a pass): a reference sets its page's Accessed bit; a miss
/// with every frame in use first reports every set bit (process by
/// process in ascending order, pages in ascending order, as the worker's
/// page-table walks find them) and clears it, then evicts one page; the
/// faulting access sets the new page's bit. A kernel that runs the worker
/// for one page whenever a fault finds every frame in use, over spaces
/// joined in process order, faults exactly this often.
pub fn replay_global_harvested<P: ReplacementPolicy + ?Sized>(
    policy: &mut P,
    refs: &[ProcessRef],
) -> MultiOutcome {
    let mut out = MultiOutcome::default();
    let mut accessed = alloc::collections::BTreeSet::new();
    for &(process, page) in refs {
        out.references += 1;
        let id = global_id(process, page);
        if policy.is_resident(id) {
            accessed.insert(id);
            continue;
        }
        out.count(process);
        while policy.resident_len() >= policy.capacity() {
            for q in core::mem::take(&mut accessed) {
                policy.referenced(q);
            }
            let victim = policy.evict().expect("a full policy has a victim");
            accessed.remove(&victim);
        }
        policy.insert(id).expect("a frame is free");
        accessed.insert(id);
    }
    out
}

/// Replays `refs` over `frames` frames with a policy per process
/// (`policies[p]` for process `p`, each of capacity `frames`): a fault at
/// the limit evicts from the faulting process's own policy.
///
/// # Panics
///
/// If a reference names a process without a policy.
pub fn replay_per_process(
    policies: &mut [Box<dyn ReplacementPolicy + '_>],
    frames: usize,
    refs: &[ProcessRef],
) -> MultiOutcome {
    let mut out = MultiOutcome::default();
    let mut resident = 0usize;
    for &(process, page) in refs {
        out.references += 1;
        let p = process as usize;
        if policies[p].referenced(page) {
            continue;
        }
        out.count(process);
        if frames == 0 {
            continue;
        }
        if resident >= frames {
            let from = if policies[p].resident_len() > 0 {
                p
            } else {
                out.borrowed += 1;
                (0..policies.len())
                    .max_by_key(|&q| policies[q].resident_len())
                    .expect("some process holds the frames")
            };
            policies[from].evict().expect("a victim");
            resident -= 1;
        }
        policies[p]
            .insert(page)
            .expect("each policy can hold every frame");
        resident += 1;
        policies[p].referenced(page);
    }
    out
}

/// Faults of Belady's OPT over the merged reference string with `frames`
/// frames: the bound of global and per-process replacement alike.
pub fn opt_faults(refs: &[ProcessRef], frames: usize) -> u64 {
    let ids: Vec<PageId> = refs.iter().map(|&(p, page)| global_id(p, page)).collect();
    sim::opt_faults(&ids, frames)
}
