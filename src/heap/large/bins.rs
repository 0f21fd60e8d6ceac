//! The segregated free lists: a bin per size range (`SL` per power of two),
//! a head per bin, and two levels of bitmaps so the first non-empty bin at
//! or above a size is found in O(1).

use super::block::{hdr, links, set_hdr, Links};
use super::{Large, BIN_SHIFT, FREE, GRANULE, MAX_BLOCK, SIZE_MASK};
use core::ptr::null_mut;

/// Blocks of the request's own bin tried before good fit moves up a bin:
/// its blocks may be too small, but the first few often fit and are a read
/// each.
const EXACT_SCAN: usize = 4;
const SL_LOG2: u32 = 6;
/// Second-level bins per first-level class.
pub(super) const SL: usize = 1 << SL_LOG2;
const GRANULE_LOG2: u32 = GRANULE.trailing_zeros();
/// Blocks below this size are binned exactly, one bin per granule (first
/// level 0); above it, each power of two is split into `SL` bins.
const LINEAR: usize = SL * GRANULE;
/// First-level classes: enough for every block up to `MAX_BLOCK`.
pub(super) const FL: usize = 37;
/// Bins, indexed flat: `first_level * SL + second_level`.
pub(super) const BINS: usize = FL * SL;
const _: () = assert!(bin_of(MAX_BLOCK) < BINS && bin_of(MAX_BLOCK) / SL == FL - 1);
const _: () = assert!(bin_of(LINEAR - GRANULE) == SL - 1 && bin_of(LINEAR) == SL);

/// The bin holding free blocks of `size` (a multiple of `GRANULE`,
/// ≤ `MAX_BLOCK`): one bin per granule below `LINEAR`, then `SL` bins per
/// power of two.
#[inline(always)]
pub(super) const fn bin_of(size: usize) -> usize {
    if size < LINEAR {
        size >> GRANULE_LOG2
    } else {
        let log2 = usize::BITS - 1 - size.leading_zeros();
        let first = (log2 - (SL_LOG2 + GRANULE_LOG2) + 1) as usize;
        first * SL + ((size >> (log2 - SL_LOG2)) & (SL - 1))
    }
}

/// `(bin_of(size), first bin whose every block holds size)`: the same bin
/// if `size` is its lower bound, else the next one.
#[inline(always)]
fn bins_for(size: usize) -> (usize, usize) {
    debug_assert!(size.is_multiple_of(GRANULE));
    let bin = bin_of(size);
    // Bits below the bin's resolution: exact bins have none.
    let below = if size < LINEAR {
        0
    } else {
        size & ((1 << (usize::BITS - 1 - size.leading_zeros() - SL_LOG2)) - 1)
    };
    (bin, bin + usize::from(below != 0))
}

impl Large {
    /// Finds and unlinks a free block of at least `size` (a multiple of
    /// `GRANULE`, ≤ `MAX_BLOCK`) bytes.
    #[inline(always)]
    pub(super) fn take(&mut self, size: usize) -> Option<*mut u8> {
        let (bin, fit) = bins_for(size);
        // Good fit skips the request's own bin, whose blocks may be too
        // small; its first few are tried first, as they often fit.
        if let Some(block) = self.scan_bin(bin, size, EXACT_SCAN) {
            return Some(block);
        }
        let block = self.head(self.find_nonempty(fit)?);
        // SAFETY: a non-empty bin's head is a free block in the span.
        unsafe { self.unlink(block, hdr(block)) };
        Some(block)
    }

    /// Scans the bin of `size` itself (where blocks may be too small) for a fit.
    #[cold]
    pub(super) fn take_scan(&mut self, size: usize) -> Option<*mut u8> {
        self.scan_bin(bin_of(size), size, usize::MAX)
    }

    /// Unlinks the first of the first `limit` blocks of `bin` holding `size`.
    #[inline(always)]
    fn scan_bin(&mut self, bin: usize, size: usize, limit: usize) -> Option<*mut u8> {
        let mut block = self.head(bin);
        let mut scanned = 0;
        while !block.is_null() && scanned < limit {
            // SAFETY: list members are free blocks in the span.
            unsafe {
                let header = hdr(block);
                if header & SIZE_MASK >= size {
                    self.unlink(block, header);
                    return Some(block);
                }
                block = (*links(block)).next;
            }
            scanned += 1;
        }
        None
    }

    /// The first non-empty bin at or above `bin` (≤ `BINS`).
    #[inline(always)]
    fn find_nonempty(&self, bin: usize) -> Option<usize> {
        let (first, second) = (bin / SL, bin % SL);
        if first < FL {
            let sl = self.sl_bitmap[first] & (u64::MAX << second);
            if sl != 0 {
                return Some(first * SL + sl.trailing_zeros() as usize);
            }
        }
        let fl = self.fl_bitmap & u64::MAX.checked_shl(first as u32 + 1).unwrap_or(0);
        if fl == 0 {
            return None;
        }
        let first = fl.trailing_zeros() as usize;
        Some(first * SL + self.sl_bitmap.get(first)?.trailing_zeros() as usize)
    }

    /// The head of `bin` (< `BINS`; every caller derives it from a size
    /// ≤ `MAX_BLOCK`, from a bitmap bit, or from a free block's header).
    #[inline(always)]
    pub(super) fn head(&self, bin: usize) -> *mut u8 {
        debug_assert!(bin < BINS);
        // SAFETY: `bin < BINS` as documented: sizes ≤ MAX_BLOCK map below
        // BINS (const-asserted), bitmap bits are only set for such bins,
        // and `link` writes only such bins into headers.
        unsafe { *self.heads.get_unchecked(bin) }
    }

    #[inline(always)]
    fn set_head(&mut self, bin: usize, block: *mut u8) {
        debug_assert!(bin < BINS);
        // SAFETY: as in `head`.
        unsafe { *self.heads.get_unchecked_mut(bin) = block }
    }

    /// Makes `block` a free block of `size` bytes (header with its bin and
    /// `prev_flags`, links) at the head of its bin. The footer is the caller's.
    ///
    /// # Safety
    /// `block` must be `size` bytes (a multiple of `GRANULE`, at least
    /// `MIN_BLOCK`, ≤ `MAX_BLOCK`) of the span in no list and no used block.
    #[inline(always)]
    pub(super) unsafe fn link(&mut self, block: *mut u8, size: usize, prev_flags: usize) {
        debug_assert!(size <= MAX_BLOCK, "block size collides with the bin bits");
        let bin = bin_of(size);
        let head = self.head(bin);
        // SAFETY: `block` is a free block (caller); `head` (if any) too.
        unsafe {
            set_hdr(block, bin << BIN_SHIFT | size | FREE | prev_flags);
            links(block).write(Links {
                next: head,
                prev: null_mut(),
            });
            if !head.is_null() {
                (*links(head)).prev = block;
            }
        }
        self.set_head(bin, block);
        let first = bin / SL;
        // SAFETY: `bin < BINS`, so `first < FL` (see `head`).
        unsafe { *self.sl_bitmap.get_unchecked_mut(first) |= 1 << (bin % SL) };
        self.fl_bitmap |= 1 << first;
    }

    /// Takes the free block `block`, whose header is `header`, out of its bin.
    ///
    /// # Safety
    /// `block` must be a free block linked in this heap's lists, and
    /// `header` its current header.
    #[inline(always)]
    pub(super) unsafe fn unlink(&mut self, block: *mut u8, header: usize) {
        // SAFETY: `block` is a linked free block; its neighbours in the list too.
        unsafe {
            let Links { next, prev } = links(block).read();
            if !next.is_null() {
                (*links(next)).prev = prev;
            }
            if prev.is_null() {
                let bin = header >> BIN_SHIFT;
                self.set_head(bin, next);
                if next.is_null() {
                    let first = bin / SL;
                    // SAFETY: a free block's header names a bin < BINS.
                    let sl = self.sl_bitmap.get_unchecked_mut(first);
                    *sl &= !(1 << (bin % SL));
                    if *sl == 0 {
                        self.fl_bitmap &= !(1 << first);
                    }
                }
            } else {
                (*links(prev)).next = next;
            }
        }
    }
}
