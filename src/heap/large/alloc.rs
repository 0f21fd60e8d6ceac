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
        let needed = block_size(size)?;
        let block = self.take(needed)?;
        // SAFETY: `block` is a free block of at least `needed` bytes, now unlinked.
        Some(unsafe { self.carve(block, needed) })
    }

    /// As [`Large::allocate`], but when good fit finds nothing, also scans the
    /// one bin whose blocks may or may not fit (the slow last resort before
    /// reporting out of memory).
    pub(crate) fn allocate_exhaustive(&mut self, size: usize, align: usize) -> Option<NonNull<u8>> {
        if align > GRANULE {
            return self.allocate_aligned(size, align, true);
        }
        let needed = block_size(size)?;
        let block = self.take(needed).or_else(|| self.take_scan(needed))?;
        // SAFETY: as in `allocate`.
        Some(unsafe { self.carve(block, needed) })
    }

    /// Allocation with alignment above `GRANULE`: a block with room for the gap
    /// in front of an aligned payload. A gap of at least `SPLIT_MIN` becomes
    /// a free block; a shorter one stays in the block behind an `OFFSET`
    /// word, which saves a link and an unlink per aligned allocation. Out
    /// of line so its bin lookups stay off the common path.
    #[inline(never)]
    fn allocate_aligned(&mut self, size: usize, align: usize, scan: bool) -> Option<NonNull<u8>> {
        let needed = block_size(size)?;
        let fit = fit_size(size, align)?;
        let block = self
            .take(fit)
            .or_else(|| if scan { self.take_scan(fit) } else { None })?;
        // SAFETY: the block holds `gap + needed` bytes; the gap is a multiple
        // of GRANULE, so an `OFFSET` word at `block + gap` lies past the header.
        unsafe {
            let payload = block as usize + OVERHEAD;
            let gap = ((payload + align - 1) & !(align - 1)) - payload;
            if gap >= SPLIT_MIN {
                let header = hdr(block);
                let rest = block.add(gap);
                set_hdr(rest, ((header & SIZE_MASK) - gap) | PREV_FREE);
                set_footer(block, gap);
                self.link(block, gap, header & PREV_FREE);
                return Some(self.carve(rest, needed));
            }
            let unaligned = self.carve(block, gap + needed).as_ptr();
            if gap == 0 {
                return Some(NonNull::new_unchecked(unaligned));
            }
            unaligned
                .add(gap - OVERHEAD)
                .cast::<usize>()
                .write(gap | OFFSET);
            Some(NonNull::new_unchecked(unaligned.add(gap)))
        }
    }

    /// Marks the unlinked free block `block` used with size `used`, freeing
    /// the tail.
    ///
    /// # Safety
    /// As [`Large::carve_with`].
    #[inline(always)]
    unsafe fn carve(&mut self, block: *mut u8, used: usize) -> NonNull<u8> {
        // SAFETY: forwarded.
        unsafe { self.carve_with(block, used, false) }
    }

    /// As `carve`; `mark_next` also sets `PREV_FREE` on the block after a
    /// split-off tail (needed when `block`'s successor was not free before).
    ///
    /// # Safety
    /// `block` must be a free block of the span, in no list, whose header
    /// holds its size (at least `used`, a multiple of `GRANULE`).
    #[inline(always)]
    unsafe fn carve_with(&mut self, block: *mut u8, used: usize, mark_next: bool) -> NonNull<u8> {
        // SAFETY: `block` is a free, unlinked block of at least `used` bytes.
        unsafe {
            let header = hdr(block);
            let size = header & SIZE_MASK;
            let rest = size - used;
            if rest >= SPLIT_MIN {
                let tail = block.add(used);
                set_footer(tail, rest);
                self.link(tail, rest, 0);
                if mark_next {
                    let next = tail.add(rest);
                    set_hdr(next, hdr(next) | PREV_FREE);
                }
                set_hdr(block, used | (header & PREV_FREE));
            } else {
                set_hdr(block, size | (header & PREV_FREE));
                let next = block.add(size);
                set_hdr(next, hdr(next) & !PREV_FREE);
            }
            NonNull::new_unchecked(block.add(OVERHEAD))
        }
    }

    /// Starts loading the header after a live block of `size` requested
    /// bytes, where [`Large::deallocate`] will look next. `deallocate` finds
    /// that header from the block's own, and both are usually cold: without
    /// the hint the two cache misses happen one after the other. A hint only:
    /// slack or a stale size just prefetches a useless line.
    #[inline(always)]
    pub(crate) fn prefetch_successor(ptr: NonNull<u8>, size: usize) {
        let block_bytes = size.wrapping_add(OVERHEAD + GRANULE - 1) & !(GRANULE - 1);
        prefetch(
            ptr.as_ptr()
                .wrapping_sub(OVERHEAD)
                .wrapping_add(block_bytes),
        );
    }

    /// Frees the block whose payload is `ptr`, merging with free neighbours.
    /// Returns the size of the free block the payload ended in, if that
    /// block is the last one (a trim candidate): the caller can decide on
    /// trimming without touching the sentinel's cache line.
    ///
    /// # Safety
    /// `ptr` must come from [`Large::allocate`] on this heap and be live.
    #[inline]
    pub(crate) unsafe fn deallocate(&mut self, ptr: NonNull<u8>) -> Option<usize> {
        // SAFETY: `ptr` is a live payload, so its header and neighbours are valid.
        unsafe {
            let (mut block, header, _) = block_of(ptr);
            let mut size = header & SIZE_MASK;
            let next = block.add(size);
            let next_header = hdr(next);
            if next_header & FREE != 0 {
                self.unlink(next, next_header);
                size += next_header & SIZE_MASK;
            } else {
                set_hdr(next, next_header | PREV_FREE);
            }
            let mut prev_flags = header & PREV_FREE;
            if prev_flags != 0 {
                let prev_size = block.sub(8).cast::<usize>().read();
                block = block.sub(prev_size);
                let prev_header = hdr(block);
                self.unlink(block, prev_header);
                size += prev_size;
                prev_flags = prev_header & PREV_FREE;
            }
            set_footer(block, size);
            self.link(block, size, prev_flags);
            (block as usize + size == self.brk - 8).then_some(size)
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
            let (_, header, gap) = block_of(ptr);
            (header & SIZE_MASK) - OVERHEAD - gap
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
            let (block, header, gap) = block_of(ptr);
            let needed = block_size(new_size)?.checked_add(gap)?;
            let size = header & SIZE_MASK;
            let next = block.add(size);
            let next_header = hdr(next);
            let next_free = next_header & FREE != 0;
            let total = if next_free {
                size + (next_header & SIZE_MASK)
            } else {
                size
            };
            if needed > total {
                return None;
            }
            if needed <= size && size - needed < SPLIT_MIN {
                return Some(0); // fits, nothing worth splitting off
            }
            if next_free {
                self.unlink(next, next_header);
            }
            set_hdr(block, total | FREE | (header & PREV_FREE));
            self.carve_with(block, needed, !next_free);
            let rest = total - needed;
            let at_top = rest >= SPLIT_MIN && block as usize + total == self.brk - 8;
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
        let needed = block_size(new_size)?;
        // SAFETY: `ptr` is live, so its header, its successor's and (if
        // PREV_FREE) its predecessor's footer are valid.
        unsafe {
            let (block, header, gap) = block_of(ptr);
            if header & PREV_FREE == 0 || gap != 0 {
                return None;
            }
            let size = header & SIZE_MASK;
            let prev_size = block.sub(8).cast::<usize>().read();
            let next = block.add(size);
            let next_header = hdr(next);
            let next_size = if next_header & FREE != 0 {
                next_header & SIZE_MASK
            } else {
                0
            };
            if prev_size + size + next_size < needed {
                return None;
            }
            let prev = block.sub(prev_size);
            let prev_header = hdr(prev);
            let prev_flags = prev_header & PREV_FREE;
            self.unlink(prev, prev_header);
            if next_size != 0 {
                self.unlink(next, next_header);
            }
            core::ptr::copy(ptr.as_ptr(), prev.add(OVERHEAD), keep);
            set_hdr(prev, (prev_size + size + next_size) | FREE | prev_flags);
            Some(self.carve_with(prev, needed, next_size == 0))
        }
    }
}
