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
}
