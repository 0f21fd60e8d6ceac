//! Splitting and merging blocks: allocation carves a free block (the tail
//! goes back to a bin when it is worth one), deallocation merges a block
//! with its free neighbours, resizing does either in place.

use super::block::{block_of, hdr, prefetch, set_footer, set_hdr};
use super::{
    block_size, fit_size, Large, FREE, GRANULE, OFFSET, OVERHEAD, PREV_FREE, SIZE_MASK, SPLIT_MIN,
};
use core::ptr::NonNull;

impl Large {
    /// Allocates `size` bytes aligned to `align` (a power of two), by good fit.
    #[inline]
    pub(crate) fn allocate(&mut self, size: usize, align: usize) -> Option<NonNull<u8>> {
        if align > GRANULE {
            return self.allocate_aligned(size, align, false);
        }
        let bs = block_size(size)?;
        let b = self.take(bs)?;
        // SAFETY: `b` is a free block of at least `bs` bytes, now unlinked.
        Some(unsafe { self.carve(b, bs) })
    }

    /// As [`Large::allocate`], but when good fit finds nothing, also scans the
    /// one bin whose blocks may or may not fit (the slow last resort before
    /// reporting out of memory).
    pub(crate) fn allocate_exhaustive(&mut self, size: usize, align: usize) -> Option<NonNull<u8>> {
        if align > GRANULE {
            return self.allocate_aligned(size, align, true);
        }
        let bs = block_size(size)?;
        let b = self.take(bs).or_else(|| self.take_scan(bs))?;
        // SAFETY: as in `allocate`.
        Some(unsafe { self.carve(b, bs) })
    }

    /// Allocation with alignment above `GRANULE`: a block with room for the gap
    /// in front of an aligned payload. A gap of at least `SPLIT_MIN` becomes
    /// a free block; a shorter one stays in the block behind an `OFFSET`
    /// word (splitting it off cost two list operations per aligned
    /// allocation and made those the slowest 1 % of alloc+free pairs).
    /// Out of line: inlined, LLVM computed this path's bin lookups on every
    /// allocation.
    #[inline(never)]
    fn allocate_aligned(&mut self, size: usize, align: usize, scan: bool) -> Option<NonNull<u8>> {
        let bs = block_size(size)?;
        let need = fit_size(size, align)?;
        let b = self
            .take(need)
            .or_else(|| if scan { self.take_scan(need) } else { None })?;
        // SAFETY: the block holds `gap + bs` bytes; the gap is a multiple
        // of GRANULE, so an `OFFSET` word at `b + gap` lies past the header.
        unsafe {
            let pay = b as usize + OVERHEAD;
            let gap = ((pay + align - 1) & !(align - 1)) - pay;
            if gap >= SPLIT_MIN {
                let h = hdr(b);
                let rest = b.add(gap);
                set_hdr(rest, ((h & SIZE_MASK) - gap) | PREV_FREE);
                set_footer(b, gap);
                self.link(b, gap, h & PREV_FREE);
                return Some(self.carve(rest, bs));
            }
            let p = self.carve(b, gap + bs).as_ptr();
            if gap == 0 {
                return Some(NonNull::new_unchecked(p));
            }
            p.add(gap - OVERHEAD).cast::<usize>().write(gap | OFFSET);
            Some(NonNull::new_unchecked(p.add(gap)))
        }
    }

    /// Marks the unlinked free block `b` used with size `bs`, freeing the tail.
    #[inline(always)]
    unsafe fn carve(&mut self, b: *mut u8, bs: usize) -> NonNull<u8> {
        // SAFETY: forwarded.
        unsafe { self.carve_with(b, bs, false) }
    }

    /// As `carve`; `mark_next` also sets `PREV_FREE` on the block after a
    /// split-off tail (needed when `b`'s successor was not free before).
    #[inline(always)]
    unsafe fn carve_with(&mut self, b: *mut u8, bs: usize, mark_next: bool) -> NonNull<u8> {
        // SAFETY: `b` is a free, unlinked block of at least `bs` bytes.
        unsafe {
            let h = hdr(b);
            let size = h & SIZE_MASK;
            let rest = size - bs;
            if rest >= SPLIT_MIN {
                let t = b.add(bs);
                set_footer(t, rest);
                self.link(t, rest, 0);
                if mark_next {
                    let n = t.add(rest);
                    set_hdr(n, hdr(n) | PREV_FREE);
                }
                set_hdr(b, bs | (h & PREV_FREE));
            } else {
                set_hdr(b, size | (h & PREV_FREE));
                let n = b.add(size);
                set_hdr(n, hdr(n) & !PREV_FREE);
            }
            NonNull::new_unchecked(b.add(OVERHEAD))
        }
    }

    /// Starts loading the header after a live block of `size` requested
    /// bytes, where [`Large::release`] will look next. `release` finds that
    /// header from the block's own, and both are usually cold: without the
    /// hint the two cache misses happen one after the other. A hint only:
    /// slack or a stale size just prefetches a useless line.
    #[inline(always)]
    pub(crate) fn prefetch_successor(ptr: NonNull<u8>, size: usize) {
        let bs = size.wrapping_add(OVERHEAD + GRANULE - 1) & !(GRANULE - 1);
        prefetch(ptr.as_ptr().wrapping_sub(OVERHEAD).wrapping_add(bs));
    }

    /// Frees the block whose payload is `ptr`, merging with free neighbours.
    ///
    /// # Safety
    /// `ptr` must come from [`Large::allocate`] on this heap and be live.
    /// Returns the size of the free block the payload ended in, if that
    /// block is the last one (a trim candidate): the caller can decide on
    /// trimming without touching the sentinel's cache line.
    #[inline]
    pub(crate) unsafe fn release(&mut self, ptr: NonNull<u8>) -> Option<usize> {
        // SAFETY: `ptr` is a live payload, so its header and neighbours are valid.
        unsafe {
            let (mut b, h, _) = block_of(ptr);
            let mut size = h & SIZE_MASK;
            let n = b.add(size);
            let nh = hdr(n);
            if nh & FREE != 0 {
                self.unlink(n, nh);
                size += nh & SIZE_MASK;
            } else {
                set_hdr(n, nh | PREV_FREE);
            }
            let mut pf = h & PREV_FREE;
            if pf != 0 {
                let ps = b.sub(8).cast::<usize>().read();
                b = b.sub(ps);
                let ph = hdr(b);
                self.unlink(b, ph);
                size += ps;
                pf = ph & PREV_FREE;
            }
            set_footer(b, size);
            self.link(b, size, pf);
            (b as usize + size == self.brk - 8).then_some(size)
        }
    }

    /// Bytes usable in the live block at `ptr`.
    ///
    /// # Safety
    /// `ptr` must be a live payload of this heap.
    #[cfg(any(test, feature = "tracking"))]
    pub(crate) unsafe fn usable(&self, ptr: NonNull<u8>) -> usize {
        // SAFETY: forwarded from the caller.
        unsafe {
            let (_, h, gap) = block_of(ptr);
            (h & SIZE_MASK) - OVERHEAD - gap
        }
    }

    /// Resizes the live block at `ptr` in place to hold `new_size` bytes.
    /// Returns `None` (nothing changed) if the next block cannot give
    /// enough; else the size of the free block the resize left at the end
    /// of the heap (0 if none), so the caller can decide on trimming
    /// without reading the sentinel's line.
    ///
    /// # Safety
    /// `ptr` must be a live payload of this heap.
    #[inline]
    pub(crate) unsafe fn resize_in_place(
        &mut self,
        ptr: NonNull<u8>,
        new_size: usize,
    ) -> Option<usize> {
        // SAFETY: `ptr` is live, so its header and its successor's are valid.
        unsafe {
            let (b, h, gap) = block_of(ptr);
            let bs = block_size(new_size)?.checked_add(gap)?;
            let size = h & SIZE_MASK;
            let n = b.add(size);
            let nh = hdr(n);
            let total = if nh & FREE != 0 {
                size + (nh & SIZE_MASK)
            } else {
                size
            };
            if bs > total {
                return None;
            }
            if bs <= size && size - bs < SPLIT_MIN {
                return Some(0); // fits, nothing worth splitting off
            }
            let next_free = nh & FREE != 0;
            if next_free {
                self.unlink(n, nh);
            }
            set_hdr(b, total | FREE | (h & PREV_FREE));
            self.carve_with(b, bs, !next_free);
            let rest = total - bs;
            let at_top = rest >= SPLIT_MIN && b as usize + total == self.brk - 8;
            Some(if at_top { rest } else { 0 })
        }
    }

    /// Grows the live block at `ptr` by merging it with a free block before
    /// it (and after it, if free), moving the first `keep` bytes down.
    /// Returns the new payload, or `None` (nothing changed) if that is not
    /// enough. Only for alignment ≤ `GRANULE`.
    ///
    /// # Safety
    /// `ptr` must be a live payload of this heap with alignment ≤ `GRANULE` and at
    /// least `keep` bytes.
    pub(crate) unsafe fn resize_backward(
        &mut self,
        ptr: NonNull<u8>,
        new_size: usize,
        keep: usize,
    ) -> Option<NonNull<u8>> {
        let bs = block_size(new_size)?;
        // SAFETY: `ptr` is live, so its header, its successor's and (if
        // PREV_FREE) its predecessor's footer are valid.
        unsafe {
            let (b, h, gap) = block_of(ptr);
            if h & PREV_FREE == 0 || gap != 0 {
                return None;
            }
            let size = h & SIZE_MASK;
            let ps = b.sub(8).cast::<usize>().read();
            let n = b.add(size);
            let nh = hdr(n);
            let ns = if nh & FREE != 0 { nh & SIZE_MASK } else { 0 };
            if ps + size + ns < bs {
                return None;
            }
            let p = b.sub(ps);
            let ph = hdr(p);
            let pf = ph & PREV_FREE;
            self.unlink(p, ph);
            if ns != 0 {
                self.unlink(n, nh);
            }
            core::ptr::copy(ptr.as_ptr(), p.add(OVERHEAD), keep);
            set_hdr(p, (ps + size + ns) | FREE | pf);
            Some(self.carve_with(p, bs, ns == 0))
        }
    }
}
