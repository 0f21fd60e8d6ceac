//! Where the heap's pages come from.
//!
//! The heap owns a virtual range chosen at init and decides *which* pages of
//! it are in use; a [`PageSource`] only backs them (maps frames behind them)
//! or takes the backing away. That split keeps the kernel implementation
//! small: [`MappedPageSource`] is a frame allocator plus a [`PageMapper`].

use x86_64::structures::paging::{FrameAllocator, FrameDeallocator, Page, PhysFrame, Size4KiB};
use x86_64::VirtAddr;

/// Size of the pages a [`PageSource`] maps: [`crate::PAGE_SIZE`] as the heap's `usize`.
pub const PAGE_SIZE: usize = crate::PAGE_SIZE as usize;

/// Why a page source could not back a range.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PageSourceError {
    /// No frame was left to back the page at `addr`.
    OutOfFrames {
        /// Virtual address of the first page that could not be backed.
        addr: usize,
    },
    /// The mapper refused to map the page at `addr`.
    MapFailed {
        /// Virtual address of the page.
        addr: usize,
    },
    /// The range `start..start + pages * PAGE_SIZE` is outside the source's span.
    OutOfRange {
        /// First address asked for.
        start: usize,
        /// Number of pages asked for.
        pages: usize,
    },
}

/// Backs pages of the heap's virtual range with memory.
///
/// # Safety
/// After `map(start, n)` returns `Ok`, the `n` pages from `start` must be
/// readable and writable memory that nothing else uses, until they are passed
/// to `unmap`. A failed `map` must leave every page of the range unmapped.
pub unsafe trait PageSource {
    /// Backs `pages` pages starting at the page-aligned address `start`.
    fn map(&mut self, start: usize, pages: usize) -> Result<(), PageSourceError>;
    /// Gives back the backing of `pages` pages at `start` (all mapped by `map`).
    ///
    /// # Safety
    /// Nothing may use the pages any more: their memory (and, in a kernel,
    /// their frames) goes back to the source.
    unsafe fn unmap(&mut self, start: usize, pages: usize);
}

/// The one mapping operation the kernel page source needs from a mapper.
///
/// A kernel implements it over its mapper (writable, non-executable,
/// supervisor, TLB flushed: `kernel-demo/src/mm/heap.rs` does it for kmem's
/// `paging::PageTables`); tests implement it over a fake.
///
/// # Safety
/// [`map`](Self::map) makes `page` a writable mapping of `frame` and of
/// nothing else; [`unmap`](Self::unmap) returns the frame only after no CPU
/// can reach it through `page` any more (the translation is gone from every
/// TLB that may hold it): [`MappedPageSource`] frees the frame at once.
///
/// ```compile_fail,E0200
/// // A safe impl is refused: freeing relies on the promise.
/// struct Fake;
/// impl kmem::heap::PageMapper for Fake {
///     type Error = ();
///     fn map(&mut self, _: x86_64::structures::paging::Page, _: x86_64::structures::paging::PhysFrame) -> Result<(), ()> { Ok(()) }
///     fn unmap(&mut self, _: x86_64::structures::paging::Page) -> Result<x86_64::structures::paging::PhysFrame, ()> { Err(()) }
/// }
/// ```
pub unsafe trait PageMapper {
    /// The mapper's error type.
    type Error;
    /// Maps `page` to `frame` (writable, no-execute, supervisor only).
    fn map(&mut self, page: Page<Size4KiB>, frame: PhysFrame<Size4KiB>) -> Result<(), Self::Error>;
    /// Unmaps `page`, returning the frame that backed it.
    fn unmap(&mut self, page: Page<Size4KiB>) -> Result<PhysFrame<Size4KiB>, Self::Error>;
}

/// The kernel page source: frames from `frames`, mapped by `mapper`.
pub struct MappedPageSource<F, M> {
    /// Where frames come from and go back to.
    pub frames: F,
    /// What maps them into the heap range.
    pub mapper: M,
}

impl<F, M> MappedPageSource<F, M> {
    /// Bundles a frame allocator and a mapper.
    pub const fn new(frames: F, mapper: M) -> Self {
        Self { frames, mapper }
    }

    fn page(addr: usize) -> Page<Size4KiB> {
        Page::containing_address(VirtAddr::new(addr as u64))
    }
}

impl<F, M> MappedPageSource<F, M>
where
    F: FrameAllocator<Size4KiB> + FrameDeallocator<Size4KiB>,
    M: PageMapper,
{
    /// Unmaps the pages and frees their frames (pages that fail to unmap are skipped).
    fn release(&mut self, start: usize, pages: usize) {
        for i in 0..pages {
            if let Ok(frame) = self.mapper.unmap(Self::page(start + i * PAGE_SIZE)) {
                // SAFETY: the frame backed a heap page that is now unmapped
                // on every CPU (the `PageMapper` contract).
                unsafe { self.frames.deallocate_frame(frame) };
            }
        }
    }
}

// SAFETY: every page is backed by a fresh frame from the frame allocator
// mapped writable; on failure the pages mapped so far are rolled back.
unsafe impl<F, M> PageSource for MappedPageSource<F, M>
where
    F: FrameAllocator<Size4KiB> + FrameDeallocator<Size4KiB>,
    M: PageMapper,
{
    fn map(&mut self, start: usize, pages: usize) -> Result<(), PageSourceError> {
        for i in 0..pages {
            let addr = start + i * PAGE_SIZE;
            let err = match self.frames.allocate_frame() {
                None => PageSourceError::OutOfFrames { addr },
                Some(frame) => match self.mapper.map(Self::page(addr), frame) {
                    Ok(()) => continue,
                    Err(_) => {
                        // SAFETY: the frame was just allocated and never mapped.
                        unsafe { self.frames.deallocate_frame(frame) };
                        PageSourceError::MapFailed { addr }
                    }
                },
            };
            self.release(start, i);
            return Err(err);
        }
        Ok(())
    }

    unsafe fn unmap(&mut self, start: usize, pages: usize) {
        self.release(start, pages);
    }
}
