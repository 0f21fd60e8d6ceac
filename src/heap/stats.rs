//! Always-on accounting: a handful of adds per operation.

use super::size_class::NUM_CLASSES;

/// A snapshot of the heap's accounting.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HeapStats {
    /// Bytes requested by live allocations (as in their layouts).
    pub live_bytes: usize,
    /// Live allocations.
    pub live_allocs: usize,
    /// Highest `live_bytes` seen.
    pub peak_bytes: usize,
    /// Allocations made since init (including reallocations that moved).
    pub total_allocs: u64,
    /// Allocation requests that failed (out of memory).
    pub failures: u64,
    /// Live objects per size class (see [`CLASS_SIZES`](super::CLASS_SIZES)).
    pub class_live: [usize; NUM_CLASSES],
    /// Pages mapped from the page source.
    pub pages_held: usize,
    /// Pages in slabs in use.
    pub slab_pages: usize,
    /// Pages of the large-object heap.
    pub large_pages: usize,
    /// Pages in free slab spans kept mapped for reuse.
    pub cached_pages: usize,
}

impl HeapStats {
    /// Bytes held from the page source.
    pub fn held_bytes(&self) -> usize {
        self.pages_held * super::PAGE_SIZE
    }

    /// Fragmentation as held bytes ÷ live bytes, in percent (100 = no
    /// overhead); `None` while nothing is live.
    pub fn fragmentation_percent(&self) -> Option<usize> {
        (self.live_bytes != 0).then(|| self.held_bytes() * 100 / self.live_bytes)
    }
}

impl HeapStats {
    /// All zero: the accounting of a heap that holds nothing.
    pub(crate) const fn new() -> Self {
        Self {
            live_bytes: 0,
            live_allocs: 0,
            peak_bytes: 0,
            total_allocs: 0,
            failures: 0,
            class_live: [0; NUM_CLASSES],
            pages_held: 0,
            slab_pages: 0,
            large_pages: 0,
            cached_pages: 0,
        }
    }

    #[inline(always)]
    pub(crate) fn record_allocate(&mut self, size: usize) {
        self.live_bytes += size;
        self.total_allocs += 1;
        if self.live_bytes > self.peak_bytes {
            self.peak_bytes = self.live_bytes;
        }
    }

    #[inline(always)]
    pub(crate) fn record_deallocate(&mut self, size: usize) {
        self.live_bytes -= size;
    }

    #[inline(always)]
    pub(crate) fn record_resize(&mut self, old: usize, new: usize) {
        self.live_bytes = self.live_bytes - old + new;
        if self.live_bytes > self.peak_bytes {
            self.peak_bytes = self.live_bytes;
        }
    }
}
