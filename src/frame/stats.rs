//! Allocator statistics.

use super::BitmapFrameAllocator;

/// Frame counts of an allocator; `total = free + used + reserved`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct FrameStats {
    /// Usable frames in the map.
    pub total: u64,
    /// Frames that can be allocated.
    pub free: u64,
    /// Frames allocated and not yet freed.
    pub used: u64,
    /// Frames out of service: the allocator's storage and reservations.
    pub reserved: u64,
    /// The longest run of contiguous free frames.
    pub largest_free_run: u64,
}

impl BitmapFrameAllocator<'_> {
    /// Current statistics. O(frames / 64): computing the largest free run
    /// reads every bitmap word. [`free_frames`](Self::free_frames) is O(1).
    pub fn stats(&self) -> FrameStats {
        FrameStats {
            total: self.usable,
            free: self.free,
            used: self.usable - self.free - self.reserved,
            reserved: self.reserved,
            largest_free_run: self.bitmap.largest_free_run(self.storage),
        }
    }

    /// Bytes of metadata (bitmap, summaries, range table) this allocator uses.
    pub fn metadata_bytes(&self) -> u64 {
        (self.bitmap.words() + self.table.words()) as u64 * 8
    }
}
