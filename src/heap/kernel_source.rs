//! The kernel page source: the heap's pages backed by frames and mapped by kmem's own
//! mapper, so a kernel's heap is three calls (frames, mapper, `LockedHeap::init`).

use x86_64::structures::paging::{FrameAllocator, Page, Size4KiB};
use x86_64::VirtAddr;

use super::{PageSource, PageSourceError, PAGE_SIZE};
use crate::frame::LockedFrameAllocator;
use crate::paging::{
    FrameSource, KeepFreed, MapFlags, Mmu, OffsetPhysMem, PageTables, PhysMem, X86Mmu,
};

/// Backs heap pages with frames from `F`, mapped writable, non-executable, supervisor-only
/// and global through the kernel's shared [`PageTables`].
///
/// The mapper sits behind a `spin::Mutex` so the rest of the kernel keeps using it. Lock
/// order: heap, then mapper, then frames; code holding the mapper lock must not allocate
/// from the heap (the heap may need the mapper to grow).
///
/// ```no_run
/// use kmem::frame::{BitmapFrameAllocator, LockedFrameAllocator};
/// use kmem::heap::{KernelPageSource, LockedHeap};
/// use kmem::paging::{PageTables, OffsetPhysMem, X86Mmu};
/// use kmem::spin::{Mutex, Once};
///
/// static FRAMES: LockedFrameAllocator = LockedFrameAllocator::new(BitmapFrameAllocator::empty());
/// static MAPPER: Once<Mutex<PageTables<OffsetPhysMem>>> = Once::new();
/// static HEAP: LockedHeap<KernelPageSource<OffsetPhysMem, &LockedFrameAllocator>> =
///     LockedHeap::empty();
///
/// # fn init(phys: OffsetPhysMem) -> Result<(), kmem::heap::HeapInitError> {
/// // SAFETY: CR3 holds tables this kernel owns, reachable through `phys`.
/// let mapper = MAPPER.call_once(|| Mutex::new(unsafe { PageTables::from_current(&X86Mmu, phys) }));
/// // SAFETY: the range (PML4 slot 384) is used by nothing else.
/// unsafe { HEAP.init(KernelPageSource::new(mapper, &FRAMES), 0xffff_c000_0000_0000, 1 << 30) }
/// # }
/// ```
pub struct KernelPageSource<'m, P: PhysMem, F, M: Mmu = X86Mmu> {
    mapper: &'m spin::Mutex<PageTables<P>>,
    frames: F,
    mmu: M,
}

impl<'m, P: PhysMem, F: FrameSource> KernelPageSource<'m, P, F> {
    /// Frames from `frames` (given back when the heap shrinks), mapped by `mapper`, TLB
    /// entries flushed on the running CPU.
    pub const fn new(mapper: &'m spin::Mutex<PageTables<P>>, frames: F) -> Self {
        Self::with_mmu(mapper, frames, X86Mmu)
    }
}

impl<'m, P: PhysMem + Clone, F: FrameAllocator<Size4KiB>> KernelPageSource<'m, P, KeepFreed<F, P>> {
    /// Frames from an allocator that cannot take them back: pages the heap gives back
    /// keep their frames in the source, which hands them out again before asking `frames`.
    pub fn keeping(mapper: &'m spin::Mutex<PageTables<P>>, frames: F) -> Self {
        let phys = mapper.lock().phys_mem().clone();
        // SAFETY: `frames` becomes the frame source of a mapper over `phys`, and a mapper's
        // `PhysMem` reaches every frame its frame source hands out (the `PhysMem` contract).
        let frames = unsafe { KeepFreed::new(frames, phys) };
        Self::with_mmu(mapper, frames, X86Mmu)
    }
}

impl<'m, P: PhysMem, F, M: Mmu> KernelPageSource<'m, P, F, M> {
    /// As [`new`](KernelPageSource::new), with the privileged operations of `mmu`
    /// (a recording MMU on the host).
    pub const fn with_mmu(mapper: &'m spin::Mutex<PageTables<P>>, frames: F, mmu: M) -> Self {
        Self {
            mapper,
            frames,
            mmu,
        }
    }

    /// The same source with the privileged operations of `mmu` instead.
    pub fn using_mmu<N: Mmu>(self, mmu: N) -> KernelPageSource<'m, P, F, N> {
        KernelPageSource::with_mmu(self.mapper, self.frames, mmu)
    }

    /// The frame source (to read its statistics).
    pub fn frames(&self) -> &F {
        &self.frames
    }
}

/// The kernel heap over [`KernelPageSource`]: frames from a `'static`
/// [`LockedFrameAllocator`], mapped through a direct-mapped [`PageTables`].
///
/// ```ignore
/// #[global_allocator]
/// static HEAP: KernelHeap = KernelHeap::empty();
/// ```
pub type KernelHeap<P = OffsetPhysMem, F = &'static LockedFrameAllocator<'static>> =
    super::LockedHeap<KernelPageSource<'static, P, F>>;

fn page(addr: usize) -> Page<Size4KiB> {
    Page::containing_address(VirtAddr::new(addr as u64))
}

impl<P: PhysMem, F: FrameSource, M: Mmu> KernelPageSource<'_, P, F, M> {
    /// Unmaps `pages` pages from `start` and gives their frames back, each after its TLB
    /// entry is gone (a frame must not be reused while a stale translation can reach it).
    fn release(&mut self, mapper: &mut PageTables<P>, start: usize, pages: usize) {
        for i in 0..pages {
            if let Ok((frame, flush)) = mapper.unmap(page(start + i * PAGE_SIZE), &mut self.frames)
            {
                flush.flush(&mut self.mmu);
                // SAFETY: the page was the frame's only mapping and its TLB entry is gone.
                unsafe { self.frames.deallocate_frame(frame) };
            }
        }
    }
}

// SAFETY: every page gets a fresh frame from the frame source, mapped read-write; a failure
// unmaps and gives back what this call mapped, so the range is left unmapped.
unsafe impl<P: PhysMem, F: FrameSource, M: Mmu> PageSource for KernelPageSource<'_, P, F, M> {
    fn map(&mut self, start: usize, pages: usize) -> Result<(), PageSourceError> {
        let flags = MapFlags::READ_WRITE.global();
        let mut mapper = self.mapper.lock();
        for i in 0..pages {
            let addr = start + i * PAGE_SIZE;
            let err = match self.frames.allocate_frame() {
                None => PageSourceError::OutOfFrames { addr },
                Some(frame) => match mapper.map(page(addr), frame, flags, &mut self.frames) {
                    // A new mapping needs no flush: nothing cached a translation for it.
                    Ok(flush) => {
                        flush.ignore();
                        continue;
                    }
                    Err(_) => {
                        // SAFETY: the frame was just allocated and never mapped.
                        unsafe { self.frames.deallocate_frame(frame) };
                        PageSourceError::MapFailed { addr }
                    }
                },
            };
            self.release(&mut mapper, start, i);
            return Err(err);
        }
        Ok(())
    }

    unsafe fn unmap(&mut self, start: usize, pages: usize) {
        let mapper = self.mapper;
        self.release(&mut mapper.lock(), start, pages);
    }
}

impl<P: PhysMem, F, M: Mmu> core::fmt::Debug for KernelPageSource<'_, P, F, M> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("KernelPageSource").finish_non_exhaustive()
    }
}
