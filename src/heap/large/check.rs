//! The large heap's invariant checker: every block walked from the start,
//! every free list walked from its head, the bitmaps against the lists.

use super::bins::{bin_of, FL, SL};
use super::block::{hdr, links};
use super::{Large, BIN_SHIFT, FREE, GRANULE, MIN_BLOCK, PREV_FREE, SIZE_MASK};
use core::ptr::null_mut;

impl Large {
    /// Walks every block and list, checking the structure. Returns
    /// `(used_blocks, free_blocks)` or a description of the first fault.
    pub(crate) fn check(&self) -> Result<(usize, usize), &'static str> {
        let (mut used, mut free) = (0, 0);
        let mut b = (self.start + GRANULE - 8) as *mut u8;
        let mut prev_free = false;
        loop {
            // SAFETY: the walk follows sizes inside [start, brk) (checked).
            let h = unsafe { hdr(b) };
            if (h & PREV_FREE != 0) != prev_free {
                return Err("PREV_FREE flag disagrees with the previous block");
            }
            let size = h & SIZE_MASK;
            if b as usize == self.brk - 8 {
                if size != 0 || h & FREE != 0 {
                    return Err("bad end sentinel");
                }
                break;
            }
            if size < MIN_BLOCK || !size.is_multiple_of(GRANULE) || b as usize + size > self.brk - 8
            {
                return Err("block size out of bounds");
            }
            if h & FREE != 0 {
                if prev_free {
                    return Err("two adjacent free blocks");
                }
                // SAFETY: footer of a free block inside the span.
                if unsafe { b.add(size - 8).cast::<usize>().read() } != size {
                    return Err("free block footer mismatch");
                }
                let bin = bin_of(size);
                if h >> BIN_SHIFT != bin {
                    return Err("free block header names the wrong bin");
                }
                if !self.list_contains(bin, b) {
                    return Err("free block missing from its bin");
                }
                free += 1;
            } else {
                if h >> BIN_SHIFT != 0 {
                    return Err("used block header carries a bin");
                }
                used += 1;
            }
            prev_free = h & FREE != 0;
            // SAFETY: bounded by the check above.
            b = unsafe { b.add(size) };
        }
        if self.list_members()? != free {
            return Err("free block count differs from the lists");
        }
        for f in 0..FL {
            for s in 0..SL {
                let bit = self.sl_bitmap[f] & (1 << s) != 0;
                if bit == self.heads[f * SL + s].is_null() {
                    return Err("bin bitmap disagrees with its list");
                }
            }
            if (self.fl_bitmap & (1 << f) != 0) != (self.sl_bitmap[f] != 0) {
                return Err("first-level bitmap disagrees");
            }
        }
        Ok((used, free))
    }

    /// Most blocks the span can hold: a bound for list walks (a cycle ends).
    fn max_blocks(&self) -> usize {
        (self.brk - self.start) / MIN_BLOCK
    }

    /// Counts the members of every list, checking that each names its bin
    /// and that back links match.
    fn list_members(&self) -> Result<usize, &'static str> {
        let mut total = 0;
        for (bin, &head) in self.heads.iter().enumerate() {
            let (mut p, mut prev) = (head, null_mut());
            while !p.is_null() {
                // SAFETY: list members are free blocks in the span (each
                // is also found by the block walk, which runs first).
                let (h, l) = unsafe { (hdr(p), links(p).read()) };
                if h & FREE == 0 || h >> BIN_SHIFT != bin {
                    return Err("list member is not a free block of its bin");
                }
                if l.prev != prev {
                    return Err("list back link is wrong");
                }
                total += 1;
                if total > self.max_blocks() {
                    return Err("free lists hold a cycle");
                }
                (prev, p) = (p, l.next);
            }
        }
        Ok(total)
    }

    fn list_contains(&self, bin: usize, b: *mut u8) -> bool {
        let mut p = self.heads[bin];
        let mut n = 0;
        while !p.is_null() && n <= self.max_blocks() {
            if p == b {
                return true;
            }
            // SAFETY: list members are free blocks in the span.
            p = unsafe { (*links(p)).next };
            n += 1;
        }
        false
    }
}
