//! Moving the end of the span: growing it over newly mapped pages, and
//! cutting a large free top so its pages can be unmapped.

use super::block::{hdr, set_footer, set_hdr};
use super::{Large, MAX_BLOCK, MIN_BLOCK, OVERHEAD, PREV_FREE};
use core::ptr::NonNull;

impl Large {
    /// Grows the span to `new_brk` (page-aligned, above the current end).
    ///
    /// # Safety
    /// `[brk, new_brk)` must be writable memory used by nothing else, and
    /// the whole span stays under 256 TiB (see [`Large::init`]).
    pub(crate) unsafe fn extend(&mut self, new_brk: usize) {
        debug_assert!(new_brk - self.start <= MAX_BLOCK);
        let sentinel = (self.brk - 8) as *mut u8;
        // SAFETY: the old sentinel becomes a used block over the new memory,
        // which follows it, and is then deallocated like any other.
        unsafe {
            let prev_free = hdr(sentinel) & PREV_FREE;
            let size = new_brk - self.brk;
            set_hdr(sentinel, size | prev_free);
            set_hdr((new_brk - 8) as *mut u8, 0);
            self.brk = new_brk;
            self.deallocate(NonNull::new_unchecked(sentinel.add(OVERHEAD)));
        }
    }

    /// Size of the free block that ends the span, 0 if the last block is
    /// used. Extending the span merges the new memory into that block.
    pub(crate) fn free_top(&self) -> usize {
        let sentinel = (self.brk - 8) as *mut u8;
        // SAFETY: the sentinel and, if PREV_FREE, the last block's footer are in the span.
        unsafe {
            if hdr(sentinel) & PREV_FREE == 0 {
                return 0;
            }
            sentinel.sub(8).cast::<usize>().read()
        }
    }

    /// If the last block is free and larger than `trigger`, shrinks the span
    /// so about `keep` free bytes stay; returns the page-aligned range cut.
    pub(crate) fn trim(
        &mut self,
        trigger: usize,
        keep: usize,
        page: usize,
    ) -> Option<(usize, usize)> {
        let size = self.free_top();
        if size == 0 || size < trigger {
            return None;
        }
        let sentinel = (self.brk - 8) as *mut u8;
        // SAFETY: the last block is free and `size` long, so it and its
        // header lie in the span, below the sentinel.
        unsafe {
            let last = sentinel.sub(size);
            let new_brk = (last as usize + 16 + keep.max(MIN_BLOCK)).next_multiple_of(page);
            if new_brk >= self.brk {
                return None;
            }
            self.unlink(last, hdr(last));
            let new_size = new_brk - 8 - last as usize;
            set_footer(last, new_size);
            self.link(last, new_size, hdr(last) & PREV_FREE);
            set_hdr((new_brk - 8) as *mut u8, PREV_FREE);
            let cut = (new_brk, self.brk);
            self.brk = new_brk;
            Some(cut)
        }
    }
}
