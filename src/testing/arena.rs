//! An arena-backed heap page source for host tests and benchmarks.
//!
//! The arena is one page-aligned host allocation; "mapping" a page marks it
//! backed, "unmapping" marks it unbacked and (optionally) poisons it so a
//! heap that keeps using a page it gave back is caught by fill checks.
//! A frame limit emulates the frame allocator running out.

use crate::heap::{PageSource, PageSourceError, PAGE_SIZE};
use std::alloc::{alloc_zeroed, dealloc, Layout};
use std::vec::Vec;

/// Byte written over pages when they are unmapped.
pub const UNMAPPED_POISON: u8 = 0x6b;

/// A fixed host arena that hands out its pages as a [`PageSource`].
pub struct ArenaPageSource {
    base: *mut u8,
    owned: bool,
    pages: usize,
    mapped: Vec<bool>,
    mapped_count: usize,
    frame_limit: usize,
    poison: bool,
    maps: usize,
    unmaps: usize,
}

// SAFETY: the arena exclusively owns its buffer; moving it across threads
// moves that ownership.
unsafe impl Send for ArenaPageSource {}

impl ArenaPageSource {
    /// An arena of `bytes` (rounded up to whole pages), all unmapped.
    ///
    /// # Panics
    /// If the host cannot allocate the arena (test setup only).
    pub fn new(bytes: usize) -> Self {
        let pages = bytes.div_ceil(PAGE_SIZE).max(1);
        let layout = Self::layout(pages);
        // SAFETY: the layout has a non-zero size.
        let base = unsafe { alloc_zeroed(layout) };
        assert!(!base.is_null(), "host allocation of the arena failed");
        Self::with_buffer(base, pages, true)
    }

    /// An arena over caller-provided memory (not freed on drop), so a
    /// benchmark can give every allocator the same pre-touched buffer.
    ///
    /// # Safety
    /// `base` must be page-aligned, `bytes` long, writable, and used by
    /// nothing else while the arena lives.
    pub unsafe fn over(base: *mut u8, bytes: usize) -> Self {
        Self::with_buffer(base, bytes / PAGE_SIZE, false)
    }

    fn with_buffer(base: *mut u8, pages: usize, owned: bool) -> Self {
        Self {
            base,
            owned,
            pages,
            mapped: std::vec![false; pages],
            mapped_count: 0,
            frame_limit: usize::MAX,
            poison: true,
            maps: 0,
            unmaps: 0,
        }
    }

    fn layout(pages: usize) -> Layout {
        Layout::from_size_align(pages * PAGE_SIZE, PAGE_SIZE).expect("arena layout")
    }

    /// The virtual range the heap should manage: `(start, len)`.
    pub fn range(&self) -> (usize, usize) {
        (self.base as usize, self.pages * PAGE_SIZE)
    }

    /// Emulates a frame allocator holding only `frames` frames in total.
    pub fn set_frame_limit(&mut self, frames: usize) {
        self.frame_limit = frames;
    }

    /// Whether unmapped pages are overwritten with [`UNMAPPED_POISON`] (default on).
    pub fn set_poison(&mut self, on: bool) {
        self.poison = on;
    }

    /// Pages currently mapped.
    pub fn mapped_pages(&self) -> usize {
        self.mapped_count
    }

    /// Whether the page containing `addr` is mapped.
    pub fn is_mapped(&self, addr: usize) -> bool {
        self.index(addr).is_some_and(|i| self.mapped[i])
    }

    /// Number of `map` and `unmap` calls so far (hysteresis checks).
    pub fn calls(&self) -> (usize, usize) {
        (self.maps, self.unmaps)
    }

    fn index(&self, addr: usize) -> Option<usize> {
        let off = addr.checked_sub(self.base as usize)?;
        (off < self.pages * PAGE_SIZE).then_some(off / PAGE_SIZE)
    }

    fn span(&self, start: usize, pages: usize) -> Option<core::ops::Range<usize>> {
        let first = self.index(start)?;
        (start.is_multiple_of(PAGE_SIZE) && first + pages <= self.pages)
            .then_some(first..first + pages)
    }
}

// SAFETY: pages are handed out only inside the owned buffer, and a page is
// never mapped twice (a double map panics: it is a heap bug).
unsafe impl PageSource for ArenaPageSource {
    fn map(&mut self, start: usize, pages: usize) -> Result<(), PageSourceError> {
        let span = self
            .span(start, pages)
            .ok_or(PageSourceError::OutOfRange { start, pages })?;
        if self.mapped_count + pages > self.frame_limit {
            let addr =
                start + (self.frame_limit - self.mapped_count.min(self.frame_limit)) * PAGE_SIZE;
            return Err(PageSourceError::OutOfFrames { addr });
        }
        for i in span {
            assert!(!self.mapped[i], "heap mapped page {i} twice");
            self.mapped[i] = true;
        }
        self.mapped_count += pages;
        self.maps += 1;
        Ok(())
    }

    unsafe fn unmap(&mut self, start: usize, pages: usize) {
        let span = self
            .span(start, pages)
            .expect("heap unmapped outside the arena");
        for i in span {
            assert!(self.mapped[i], "heap unmapped page {i} that was not mapped");
            self.mapped[i] = false;
        }
        if self.poison {
            // SAFETY: the span lies inside the owned buffer (checked above).
            unsafe { core::ptr::write_bytes(start as *mut u8, UNMAPPED_POISON, pages * PAGE_SIZE) };
        }
        self.mapped_count -= pages;
        self.unmaps += 1;
    }
}

impl Drop for ArenaPageSource {
    fn drop(&mut self) {
        if !self.owned {
            return;
        }
        // SAFETY: `base` came from `alloc_zeroed` with this same layout.
        unsafe { dealloc(self.base, Self::layout(self.pages)) };
    }
}
