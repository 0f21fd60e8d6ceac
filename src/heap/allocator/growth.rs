//! The large heap's side: allocation that falls back to growing it, frees
//! that trim its free top past a hysteresis band, and the reclaim both
//! sides fall back to when they cannot get pages.

use super::Heap;
use crate::heap::large;
use crate::heap::page_source::{PageSource, PAGE_SIZE};
use core::alloc::Layout;
use core::ptr::NonNull;

/// Minimum growth of the large heap.
const GROW_MIN: usize = 64 * 1024;
/// The large heap's free top is trimmed when it exceeds this...
pub(super) const TRIM_TRIGGER: usize = 512 * 1024;
/// ...down to about this much.
const TRIM_KEEP: usize = 128 * 1024;

impl<P: PageSource> Heap<P> {
    #[inline]
    pub(super) fn allocate_large(&mut self, layout: Layout) -> Option<NonNull<u8>> {
        match self.large.allocate(layout.size(), layout.align()) {
            Some(ptr) => Some(ptr),
            None => self.allocate_large_slow(layout),
        }
    }

    /// The large heap had no fitting block: grow it, as a last resort scan
    /// exhaustively, and failing that reclaim and grow. Out of line so the
    /// common path stays short.
    #[cold]
    #[inline(never)]
    fn allocate_large_slow(&mut self, layout: Layout) -> Option<NonNull<u8>> {
        let (size, align) = (layout.size(), layout.align());
        let need = large::fit_size(size, align)?;
        if need > self.top - self.lo {
            // Not even the whole range would do: nothing to reclaim for.
            return None;
        }
        if self.grow_large(layout, need).is_none() {
            if let Some(ptr) = self.large.allocate_exhaustive(size, align) {
                return Some(ptr);
            }
            self.after_reclaim(|heap| heap.grow_large(layout, need))?;
        }
        // The free block ending the heap now holds `need` bytes; an
        // exhaustive search finds it even where good fit would not look.
        self.large.allocate_exhaustive(size, align)
    }

    /// Maps pages at the top of the large heap so that its last free block
    /// holds `need` (≤ the range) bytes for `layout`: a growth step if the
    /// page source allows, else just enough.
    #[cold]
    fn grow_large(&mut self, layout: Layout, need: usize) -> Option<()> {
        let brk = self.large.brk();
        let room = self.floor - brk;
        // The step has slack beyond `need` (the whole alignment and 32
        // bytes) or is `GROW_MIN`; the heap's placement follows from it.
        let want = large::block_size(layout.size())?
            .checked_add(layout.align() + 32)?
            .max(GROW_MIN)
            .next_multiple_of(PAGE_SIZE);
        // The new pages merge with the free block at the top, if any.
        let exact = need
            .saturating_sub(self.large.free_top())
            .next_multiple_of(PAGE_SIZE)
            .max(PAGE_SIZE);
        for bytes in [want, exact] {
            if bytes <= room && self.source.map(brk, bytes / PAGE_SIZE).is_ok() {
                self.stats.pages_held += bytes / PAGE_SIZE;
                // SAFETY: the pages were just mapped, between brk and the slab floor.
                unsafe { self.large.extend(brk + bytes) };
                return Some(());
            }
        }
        None
    }

    /// Gives the large block `ptr` of `size` requested bytes back, trimming
    /// the heap's free top if it grew past `TRIM_TRIGGER`.
    ///
    /// # Safety
    /// `ptr` must be a live large block of this heap.
    #[inline]
    pub(super) unsafe fn deallocate_large(&mut self, ptr: NonNull<u8>, size: usize) {
        large::Large::prefetch_successor(ptr, size);
        // SAFETY: `ptr` is live and large (caller), and being freed.
        unsafe { self.hooks.on_large_freed(&self.large, ptr) };
        // SAFETY: forwarded from the caller.
        if unsafe { self.large.deallocate(ptr) }.is_some_and(|last| last >= TRIM_TRIGGER) {
            self.trim_large();
        }
    }

    /// Cuts the large heap's free top down to about `TRIM_KEEP`.
    #[inline(never)]
    pub(super) fn trim_large(&mut self) {
        if let Some(cut) = self.large.trim(TRIM_TRIGGER, TRIM_KEEP, PAGE_SIZE) {
            self.unmap_large(cut);
        }
    }

    fn unmap_large(&mut self, (from, to): (usize, usize)) {
        let pages = (to - from) / PAGE_SIZE;
        // SAFETY: the callers pass pages the large heap has just given up
        // (free space at its ends), which no block covers any more.
        unsafe { self.source.unmap(from, pages) };
        self.stats.pages_held -= pages;
    }

    /// Gives back every free page the heap holds, then runs `get` (a way of
    /// getting pages that just failed) once more. Both sides fall back to
    /// this one path: the frames one side keeps free (the large heap's free
    /// top; empty slabs and cached spans) are what the other side needs.
    /// A failed retry leaves the heap as before but for the pages given back.
    #[cold]
    #[inline(never)]
    pub(super) fn after_reclaim<T>(
        &mut self,
        get: impl FnOnce(&mut Self) -> Option<T>,
    ) -> Option<T> {
        self.trim();
        get(self)
    }

    /// Gives back every page not needed by a live allocation that can be:
    /// magazines drained, empty slabs and cached spans at the floor unmapped,
    /// the large heap's free top cut to one page.
    pub fn trim(&mut self) {
        self.drain_magazines();
        self.trim_spans(0);
        if let Some(cut) = self.large.trim(0, 0, PAGE_SIZE) {
            self.unmap_large(cut);
        }
    }
}
