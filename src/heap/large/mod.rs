//! The large-object heap: a two-level segregated-fit (TLSF) allocator with
//! boundary tags over one contiguous, growable span `[start, brk)`.
//!
//! Block layout (every block starts at an address ≡ −8 mod `GRANULE`, sizes
//! are multiples of `GRANULE`, so payloads are `GRANULE`-aligned):
//! ```text
//! used: [size|flags: 8][payload ..................]
//! used, aligned: [size|flags: 8][gap ...][gap|OFFSET: 8][payload .....]
//! free: [bin|size|flags: 8][next: 8][prev: 8] ... [size: 8]   (footer)
//! ```
//! An aligned payload short of a split from its block's start keeps that
//! gap inside the block; the word before it then says how far back the
//! header is (`OFFSET` set), so no useless free block is split off in front.
//! Sizes stay below 2^48 (the top 16 header bits hold a free block's bin).
//! `PREV_FREE` in a header says the block before is free, so its footer is
//! valid and the two can merge. An 8-byte used sentinel of size 0 sits at
//! `brk - 8`. Lists are searched by "good fit": the head of the exact bin is
//! tried, then the first non-empty bin whose every block fits (O(1) bitmaps).
//!
//! Files: `block` reads and writes the boundary tags, `bins` keeps the
//! segregated free lists and their bitmaps, `alloc` splits and merges blocks
//! (allocate, deallocate, resize), `growth` moves `brk`, `check` is the
//! invariant checker.

mod alloc;
mod bins;
mod block;
mod check;
mod growth;
#[cfg(test)]
mod tests;

use bins::{BINS, FL};
use block::set_hdr;
use core::ptr::null_mut;

const FREE: usize = 1;
const PREV_FREE: usize = 2;
/// Marks the word before an aligned payload as a back-offset to the header
/// (never set in a header: sizes are multiples of `GRANULE`).
const OFFSET: usize = 8;
/// Block sizes are multiples of this, and every payload is aligned to it:
/// a cache line, so large objects never share one, and alignments up to 64
/// bytes (common for large requests) need no in-block gap.
pub(crate) const GRANULE: usize = 64;
const _: () = assert!(GRANULE.is_power_of_two() && GRANULE > OFFSET && GRANULE >= 16);
/// The size bits of a header. A free block's header also names its bin in
/// the bits above (`BIN_SHIFT`), so unlinking it needs no size-to-bin math.
const SIZE_MASK: usize = (1 << BIN_SHIFT) - 16;
const BIN_SHIFT: u32 = 48;
/// Header bytes in front of every payload.
pub(crate) const OVERHEAD: usize = 8;
/// Smallest block: header, two links, footer (32 bytes), in granules.
pub(crate) const MIN_BLOCK: usize = if GRANULE > 32 { GRANULE } else { 32 };
/// Smallest tail split off an allocation; a shorter one stays in the block
/// as slack. Requests below 1 KiB go to the slabs, so a free block this
/// small could only wait for a neighbour to merge with, at the cost of a
/// link now and an unlink later.
const SPLIT_MIN: usize = 1024;
/// Largest block, and largest span: sizes stay below a header's bin bits.
pub(crate) const MAX_BLOCK: usize = SIZE_MASK;

/// The TLSF state. Holds no memory of its own: blocks live in `[start, brk)`.
pub(crate) struct Large {
    start: usize,
    brk: usize,
    fl_bitmap: u64,
    sl_bitmap: [u64; FL],
    heads: [*mut u8; BINS],
}

// SAFETY: the raw pointers refer into memory the owning heap has exclusive
// access to; `Large` is moved, not shared.
unsafe impl Send for Large {}

/// Block size needed for `size` payload bytes with alignment ≤ `GRANULE`, or
/// `None` if no block can be that large.
#[inline(always)]
pub(crate) fn block_size(size: usize) -> Option<usize> {
    let bs = size.checked_add(OVERHEAD + GRANULE - 1)? & !(GRANULE - 1);
    (bs <= MAX_BLOCK).then_some(bs.max(MIN_BLOCK))
}

/// Size of a free block that holds `size` bytes aligned to `align` wherever
/// it lies: the block plus the largest alignment gap (payloads are
/// `GRANULE`-aligned, so the gap is at most `align - GRANULE`), or `None`
/// if no block can be that large.
#[inline(always)]
pub(crate) fn fit_size(size: usize, align: usize) -> Option<usize> {
    let gap = align.saturating_sub(GRANULE);
    block_size(size)?
        .checked_add(gap)
        .filter(|&n| n <= MAX_BLOCK)
}

impl Large {
    /// An empty heap; [`Large::init`] gives it memory.
    pub(crate) const fn new() -> Self {
        Self {
            start: 0,
            brk: 0,
            fl_bitmap: 0,
            sl_bitmap: [0; FL],
            heads: [null_mut(); BINS],
        }
    }

    /// Writes an empty state (as [`Large::new`]) at `slot` without building
    /// its ~19 KiB on the stack first.
    ///
    /// # Safety
    /// `slot` must be valid for writes of a `Large` and aligned.
    pub(crate) unsafe fn init_at(slot: *mut Self) {
        // SAFETY: the caller gives a writable, aligned slot; every field is
        // an integer or a raw pointer, for which all-zero bits are the
        // empty state (`new` sets exactly zeros and nulls).
        unsafe { slot.write_bytes(0, 1) }
    }

    /// Takes `[start, brk)` (page-aligned, at least a page, writable) as the heap.
    ///
    /// # Safety
    /// The span must be writable memory used by nothing else, and it must
    /// stay under 256 TiB (`MAX_BLOCK`) as it grows: a free block's size
    /// shares its header with the bin index.
    pub(crate) unsafe fn init(&mut self, start: usize, brk: usize) {
        // SAFETY: `self` is a valid, aligned `Large`; resetting it in place
        // keeps its ~19 KiB off the stack (no `Self::new()` temporary).
        unsafe { Self::init_at(self) };
        self.start = start;
        // The first block starts at `start + GRANULE - 8`, where the
        // sentinel is until `extend` turns it into the first free block.
        self.brk = start + GRANULE;
        // SAFETY: the sentinel lies inside the span.
        unsafe { set_hdr((self.brk - 8) as *mut u8, 0) };
        // SAFETY: forwarded from the caller.
        unsafe { self.extend(brk) };
    }

    /// End of the heap span.
    pub(crate) fn brk(&self) -> usize {
        self.brk
    }
}

impl Default for Large {
    fn default() -> Self {
        Self::new()
    }
}
