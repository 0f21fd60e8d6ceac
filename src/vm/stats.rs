//! Counters of the virtual-memory layer.

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
