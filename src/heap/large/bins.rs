//! The segregated free lists: a bin per size range (`SL` per power of two),
//! a head per bin, and two levels of bitmaps so the first non-empty bin at
//! or above a size is found in O(1).

use super::block::{hdr, links, set_hdr, Links};
use super::{Large, BIN_SHIFT, FREE, MAX_BLOCK, SIZE_MASK};
use core::ptr::null_mut;

/// Blocks of the request's own bin tried before good fit moves up a bin.
/// Its blocks may be too small; the few first ones are worth a look: 4
/// gave 0.1 point of heap efficiency over the head alone, 16 no more.
pub(super) const EXACT_SCAN: usize = 4;
const SL_LOG2: u32 = 6;
pub(super) const SL: usize = 1 << SL_LOG2;
/// First-level classes: enough for every block up to `MAX_BLOCK`.
pub(super) const FL: usize = 39;
/// Bins, indexed flat: `first_level * SL + second_level`.
pub(super) const BINS: usize = FL * SL;
const _: () = assert!(bin_of(MAX_BLOCK) < BINS && bin_of(MAX_BLOCK) / SL == FL - 1);
/// Blocks below this size are binned exactly (16-byte bins, first level 0;
/// with 64-byte granules only every fourth is used).
const LINEAR: usize = SL << 4;

/// The bin holding free blocks of `size` (≤ `MAX_BLOCK`): exact 16-byte
/// bins below `LINEAR`, then `SL` bins per power of two.
#[inline(always)]
pub(super) const fn bin_of(size: usize) -> usize {
    if size < LINEAR {
        size >> 4
    } else {
        let l = usize::BITS - 1 - size.leading_zeros();
        let f = (l - (SL_LOG2 + 4) + 1) as usize;
        f * SL + ((size >> (l - SL_LOG2)) & (SL - 1))
    }
}

/// `(bin_of(bs), first bin whose every block holds bs)`: the same bin if
/// `bs` is its lower bound, else the next one.
#[inline(always)]
fn bins_for(bs: usize) -> (usize, usize) {
    let bin = bin_of(bs);
    // Bits below the bin's resolution: exact bins have none.
    let below = if bs < LINEAR {
        0
    } else {
        bs & ((1 << (usize::BITS - 1 - bs.leading_zeros() - SL_LOG2)) - 1)
    };
    (bin, bin + usize::from(below != 0))
}

impl Large {
    /// Finds and unlinks a free block of at least `bs` (≤ `MAX_BLOCK`) bytes.
    #[inline(always)]
    pub(super) fn take(&mut self, bs: usize) -> Option<*mut u8> {
        let (bin, fit) = bins_for(bs);
        // Good fit skips the request's own bin, whose blocks may be too
        // small; trying its first few costs a read each and measurably
        // improves the fit (about 0.6 point of heap efficiency).
        if let Some(b) = self.scan_bin(bin, bs, EXACT_SCAN) {
            return Some(b);
        }
        let b = self.head(self.find_nonempty(fit)?);
        // SAFETY: a non-empty bin's head is a free block in the span.
        unsafe { self.unlink(b, hdr(b)) };
        Some(b)
    }

    /// Scans the bin of `bs` itself (where blocks may be too small) for a fit.
    #[cold]
    pub(super) fn take_scan(&mut self, bs: usize) -> Option<*mut u8> {
        self.scan_bin(bin_of(bs), bs, usize::MAX)
    }

    /// Unlinks the first of the first `limit` blocks of `bin` holding `bs`.
    #[inline(always)]
    fn scan_bin(&mut self, bin: usize, bs: usize, limit: usize) -> Option<*mut u8> {
        let mut b = self.head(bin);
        let mut n = 0;
        while !b.is_null() && n < limit {
            // SAFETY: list members are free blocks in the span.
            unsafe {
                let h = hdr(b);
                if h & SIZE_MASK >= bs {
                    self.unlink(b, h);
                    return Some(b);
                }
                b = (*links(b)).next;
            }
            n += 1;
        }
        None
    }

    /// The first non-empty bin at or above `bin` (≤ `BINS`).
    #[inline(always)]
    fn find_nonempty(&self, bin: usize) -> Option<usize> {
        let (f, s) = (bin / SL, bin % SL);
        if f < FL {
            let sl = self.sl_bitmap[f] & (u64::MAX << s);
            if sl != 0 {
                return Some(f * SL + sl.trailing_zeros() as usize);
            }
        }
        let fl = self.fl_bitmap & u64::MAX.checked_shl(f as u32 + 1).unwrap_or(0);
        if fl == 0 {
            return None;
        }
        let f = fl.trailing_zeros() as usize;
        Some(f * SL + self.sl_bitmap.get(f)?.trailing_zeros() as usize)
    }

    /// The head of `bin` (< `BINS`; every caller derives it from a size
    /// ≤ `MAX_BLOCK`, from a bitmap bit, or from a free block's header).
    #[inline(always)]
    fn head(&self, bin: usize) -> *mut u8 {
        debug_assert!(bin < BINS);
        // SAFETY: `bin < BINS` as documented: sizes ≤ MAX_BLOCK map below
        // BINS (const-asserted), bitmap bits are only set for such bins,
        // and `link` writes only such bins into headers.
        unsafe { *self.heads.get_unchecked(bin) }
    }

    #[inline(always)]
    fn set_head(&mut self, bin: usize, b: *mut u8) {
        debug_assert!(bin < BINS);
        // SAFETY: as in `head`.
        unsafe { *self.heads.get_unchecked_mut(bin) = b }
    }

    /// Makes `b` a free block of `size` bytes (header with its bin and
    /// `prev_flags`, links) at the head of its bin. The footer is the caller's.
    #[inline(always)]
    pub(super) unsafe fn link(&mut self, b: *mut u8, size: usize, prev_flags: usize) {
        debug_assert!(size <= MAX_BLOCK, "block size collides with the bin bits");
        let bin = bin_of(size);
        let head = self.head(bin);
        // SAFETY: `b` is a free block; `head` (if any) too.
        unsafe {
            set_hdr(b, bin << BIN_SHIFT | size | FREE | prev_flags);
            links(b).write(Links {
                next: head,
                prev: null_mut(),
            });
            if !head.is_null() {
                (*links(head)).prev = b;
            }
        }
        self.set_head(bin, b);
        let f = bin / SL;
        // SAFETY: `bin < BINS`, so `f < FL` (see `head`).
        unsafe { *self.sl_bitmap.get_unchecked_mut(f) |= 1 << (bin % SL) };
        self.fl_bitmap |= 1 << f;
    }

    /// Takes the free block `b`, whose header is `h`, out of its bin.
    #[inline(always)]
    pub(super) unsafe fn unlink(&mut self, b: *mut u8, h: usize) {
        // SAFETY: `b` is a linked free block; its neighbours in the list too.
        unsafe {
            let Links { next, prev } = links(b).read();
            if !next.is_null() {
                (*links(next)).prev = prev;
            }
            if prev.is_null() {
                let bin = h >> BIN_SHIFT;
                self.set_head(bin, next);
                if next.is_null() {
                    let f = bin / SL;
                    // SAFETY: a free block's header names a bin < BINS.
                    let sl = self.sl_bitmap.get_unchecked_mut(f);
                    *sl &= !(1 << (bin % SL));
                    if *sl == 0 {
                        self.fl_bitmap &= !(1 << f);
                    }
                }
            } else {
                (*links(prev)).next = next;
            }
        }
    }
}
