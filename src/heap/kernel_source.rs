//! The kernel page source: the heap's pages backed by frames and mapped by kmem's own
//! mapper, so a kernel's heap is three calls (frames, mapper, `LockedHeap::init`).

use x86_64::structures::paging::{FrameAllocator, Page, Size4KiB};
use x86_64::VirtAddr;

use super::{PageSource, PageSourceError, PAGE_SIZE};
use crate::frame::LockedFrameAllocator;
use crate::paging::{
    Flush, FrameSource, KeepFreed, MapFlags, Mmu, OffsetPhysMem, PageTables, PhysMem, X86Mmu,
    FLUSH_THRESHOLD,
};
use crate::smp::{CpuSet, DeferredFrees, TlbShootdown};

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
pub struct KernelPageSource<'m, P: PhysMem, F, M: Mmu = X86Mmu, S = OneCpu> {
    mapper: &'m spin::Mutex<PageTables<P>>,
    frames: F,
    mmu: M,
    others: S,
}

/// How a [`KernelPageSource`] reaches the other CPUs: heap pages are global
/// kernel mappings, which every CPU may cache, so a page given back is
/// invalidated on all of them before its frame is freed.
///
/// # Safety
/// [`shoot_others`](Self::shoot_others) returns only after every CPU but
/// the calling one that may cache a kernel translation has performed the
/// invalidation `flush` describes (as [`Flush::flush`] does).
///
/// It is called with the kernel's mapper locked: a CPU that waits for that
/// lock must still answer (serve requests while it spins).
pub unsafe trait KernelShootdown {
    /// Invalidates `flush` on every other CPU and waits for them.
    fn shoot_others(&mut self, flush: &Flush);
}

/// The other CPUs of a kernel that runs one: none. The default of
/// [`KernelPageSource::new`]; a kernel that starts other CPUs makes its
/// source with [`KernelPageSource::with_shootdown`] (the heap's `init`
/// contract requires it).
#[derive(Debug, Default, Clone, Copy)]
pub struct OneCpu;

// SAFETY: on a kernel with one CPU there is no other CPU to invalidate; the
// heap's `init` contract forbids this source on a kernel with more.
unsafe impl KernelShootdown for OneCpu {
    fn shoot_others(&mut self, _: &Flush) {}
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
            others: OneCpu,
        }
    }
}

impl<'m, P: PhysMem, F, M: Mmu, S> KernelPageSource<'m, P, F, M, S> {
    /// The same source with the privileged operations of `mmu` instead.
    pub fn using_mmu<N: Mmu>(self, mmu: N) -> KernelPageSource<'m, P, F, N, S> {
        KernelPageSource {
            mapper: self.mapper,
            frames: self.frames,
            mmu,
            others: self.others,
        }
    }

    /// The same source for a kernel with several CPUs: pages given back are
    /// invalidated on every other CPU through `others` (one round for up to
    /// 32 pages) before their frames are freed.
    pub fn with_shootdown<T: KernelShootdown>(self, others: T) -> KernelPageSource<'m, P, F, M, T> {
        KernelPageSource {
            mapper: self.mapper,
            frames: self.frames,
            mmu: self.mmu,
            others,
        }
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

impl<P: PhysMem, F: FrameSource, M: Mmu, S: KernelShootdown> KernelPageSource<'_, P, F, M, S> {
    /// Unmaps `pages` pages from `start` and gives their frames back, up to
    /// [`FLUSH_THRESHOLD`] at a time, each batch after its TLB entries are
    /// gone on every CPU (a frame must not be reused while a stale
    /// translation can reach it). Page tables the unmaps empty wait with
    /// the frames.
    fn release(&mut self, mapper: &mut PageTables<P>, start: usize, pages: usize) {
        let mut i = 0;
        while i < pages {
            let n = (pages - i).min(FLUSH_THRESHOLD);
            // Twice the pages: each unmap may also empty a page table (and,
            // rarely, the tables above); those that do not fit are kept.
            let mut held = DeferredFrees::<_, { 2 * FLUSH_THRESHOLD + 3 }>::new(&mut self.frames);
            let mut flush = Flush::none();
            for k in i..i + n {
                if let Ok((frame, f)) =
                    // SAFETY: `PageSource::unmap`'s contract: the heap no longer uses these pages.
                    unsafe { mapper.unmap(page(start + k * PAGE_SIZE), &mut held) }
                {
                    flush = flush.combine(f);
                    // SAFETY: the heap gave the page back (`PageSource::unmap`'s
                    // contract: unused), and `flush` covers its translation.
                    // Full only past what it was sized for: then the frame is kept.
                    let _ = unsafe { held.defer(frame) };
                }
            }
            let mut others = Others(&mut self.others);
            // One CPU as far as `complete` knows: the others are `Others`'s.
            let _ = held.complete(flush, &mut self.mmu, 0, CpuSet::first(2), &mut others);
            i += n;
        }
    }
}

/// A [`KernelShootdown`] as a [`TlbShootdown`] aimed at "every other CPU".
struct Others<'a, S>(&'a mut S);

// SAFETY: forwards to `S`, whose `shoot_others` reaches every other CPU (a
// superset of any `targets`).
unsafe impl<S: KernelShootdown> TlbShootdown for Others<'_, S> {
    fn shoot(&mut self, _targets: CpuSet, flush: &Flush) {
        self.0.shoot_others(flush);
    }
}

// SAFETY: every page gets a fresh frame from the frame source, mapped read-write; a failure
// unmaps and gives back what this call mapped, so the range is left unmapped.
unsafe impl<P: PhysMem, F: FrameSource, M: Mmu, S: KernelShootdown> PageSource
    for KernelPageSource<'_, P, F, M, S>
{
    fn map(&mut self, start: usize, pages: usize) -> Result<(), PageSourceError> {
        let flags = MapFlags::READ_WRITE.global();
        let mut mapper = self.mapper.lock();
        for i in 0..pages {
            let addr = start + i * PAGE_SIZE;
            let err = match self.frames.allocate_frame() {
                None => PageSourceError::OutOfFrames { addr },
                Some(frame) => {
                    // SAFETY: a fresh frame at a page of the heap's range, which
                    // `init`'s contract reserves for the heap alone.
                    match unsafe { mapper.map(page(addr), frame, flags, &mut self.frames) } {
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
                    }
                }
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

impl<P: PhysMem, F, M: Mmu, S> core::fmt::Debug for KernelPageSource<'_, P, F, M, S> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("KernelPageSource").finish_non_exhaustive()
    }
}
