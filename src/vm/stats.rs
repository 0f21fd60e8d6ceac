//! Counters of the virtual-memory layer: atomic while CPUs count, a
//! plain snapshot for the kernel.

use core::sync::atomic::{AtomicU64, Ordering::Relaxed};

/// What the layer did since its [`Vm`](super::Vm) was made.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct VmStats {
    /// Page faults handled (resolved or not).
    pub faults: u64,
    /// Private zeroed frames mapped on a first write.
    pub zero_fills: u64,
    /// Maps of the shared zero frame on a first read.
    pub zero_page_maps: u64,
    /// Copies made on a write to a shared frame.
    pub cow_copies: u64,
    /// Writes to a frame no longer shared: write access given back, no copy.
    pub cow_reuses: u64,
    /// Faults on a page that was already mapped as asked (a stale TLB entry).
    pub spurious: u64,
    /// Faults refused: no area, guard, protection.
    pub protection_faults: u64,
    /// Frames shared by more than one mapping right now.
    pub shared_frames: u64,
    /// Faults that read a page back from swap (`pgmajfault`).
    pub major_faults: u64,
    /// Pages read from swap (`pswpin`), readahead included.
    pub swap_ins: u64,
    /// Pages written to swap (`pswpout`).
    pub swap_outs: u64,
    /// Pages the reclaim scan looked at (`pgscan`).
    pub scanned: u64,
    /// Pages reclaimed (`pgsteal`): written out, dropped clean, or zero.
    pub reclaimed: u64,
    /// Pages read back after being evicted (`refaults`).
    pub refaults: u64,
    /// Evicted pages that were all zero: dropped, not written.
    pub zero_elided: u64,
    /// Evicted pages still clean on swap: dropped, not written.
    pub swap_cache_hits: u64,
    /// Pages read ahead of their fault.
    pub readahead: u64,
    /// Frames anonymous memory holds now.
    pub resident_frames: u64,
    /// Swap slots in use now.
    pub swap_slots_used: u64,
    /// Swap slots of the attached device.
    pub swap_slots: u64,
    /// Resident pages whose copy on swap is still valid now.
    pub swap_cached: u64,
    /// IPI rounds sent to invalidate translations on other CPUs.
    pub shootdowns: u64,
    /// Frames an operation could not hold for release (the kernel heap was
    /// full): never reused, so never reachable through a stale translation.
    pub leaked_frames: u64,
}

/// The event counters of [`VmStats`], updated by CPUs at once (relaxed:
/// each is a statistic, ordered with nothing).
#[derive(Debug, Default)]
pub(crate) struct Counters {
    pub(crate) faults: AtomicU64,
    pub(crate) zero_fills: AtomicU64,
    pub(crate) zero_page_maps: AtomicU64,
    pub(crate) cow_copies: AtomicU64,
    pub(crate) cow_reuses: AtomicU64,
    pub(crate) spurious: AtomicU64,
    pub(crate) protection_faults: AtomicU64,
    pub(crate) major_faults: AtomicU64,
    pub(crate) swap_ins: AtomicU64,
    pub(crate) swap_outs: AtomicU64,
    pub(crate) scanned: AtomicU64,
    pub(crate) reclaimed: AtomicU64,
    pub(crate) refaults: AtomicU64,
    pub(crate) zero_elided: AtomicU64,
    pub(crate) swap_cache_hits: AtomicU64,
    pub(crate) readahead: AtomicU64,
    pub(crate) shootdowns: AtomicU64,
    pub(crate) leaked_frames: AtomicU64,
}

impl Counters {
    /// The counts now, the state fields left zero.
    pub(crate) fn snapshot(&self) -> VmStats {
        VmStats {
            faults: self.faults.load(Relaxed),
            zero_fills: self.zero_fills.load(Relaxed),
            zero_page_maps: self.zero_page_maps.load(Relaxed),
            cow_copies: self.cow_copies.load(Relaxed),
            cow_reuses: self.cow_reuses.load(Relaxed),
            spurious: self.spurious.load(Relaxed),
            protection_faults: self.protection_faults.load(Relaxed),
            major_faults: self.major_faults.load(Relaxed),
            swap_ins: self.swap_ins.load(Relaxed),
            swap_outs: self.swap_outs.load(Relaxed),
            scanned: self.scanned.load(Relaxed),
            reclaimed: self.reclaimed.load(Relaxed),
            refaults: self.refaults.load(Relaxed),
            zero_elided: self.zero_elided.load(Relaxed),
            swap_cache_hits: self.swap_cache_hits.load(Relaxed),
            readahead: self.readahead.load(Relaxed),
            shootdowns: self.shootdowns.load(Relaxed),
            leaked_frames: self.leaked_frames.load(Relaxed),
            ..VmStats::default()
        }
    }
}

/// Adds `n` to the counter `c`.
#[inline]
pub(crate) fn count(c: &AtomicU64, n: u64) {
    c.fetch_add(n, Relaxed);
}
