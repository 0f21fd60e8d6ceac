//! Frames freed by an unmap, held until the TLB shootdown is acknowledged.

use x86_64::structures::paging::{FrameAllocator, FrameDeallocator, PhysFrame, Size4KiB};
use x86_64::PhysAddr;

use super::magazine::Magazine;
use super::{Acked, CpuSet, TlbShootdown};
use crate::paging::{Flush, Mmu};

/// A frame source for the mapper that allocates from `A` at once but holds
/// every freed frame (the page tables an unmap empties, and the leaf frames
/// the caller [`defer`](Self::defer)s) until a shootdown was acknowledged:
/// until then another CPU may still walk a freed table or write through a
/// stale TLB entry, so recycling the frame earlier is a use after free.
///
/// Holds up to `N` frames; past that, frees are counted as leaked (never
/// recycled: safe, reported by [`ReleaseReport::leaked`]). Size `N` for
/// the largest operation: an unmap empties at most one page table per
/// 2 MiB, plus the tables above. Dropping it unreleased leaks what it holds.
///
/// ```
/// # #[cfg(feature = "testing")]
/// # fn main() -> Result<(), Box<dyn std::error::Error>> {
/// use kmem::paging::{MapFlags, PageTables};
/// use kmem::smp::{CpuSet, DeferredFrees, TlbShootdown};
/// use kmem::paging::Flush;
/// use kmem::testing::{mmu::RecordingMmu, phys_mem::EmulatedMemory};
/// use x86_64::{structures::paging::{Page, PhysFrame, Size4KiB}, PhysAddr, VirtAddr};
///
/// struct Ipis(Vec<CpuSet>);
/// // SAFETY: a test double: the "other CPUs" are imaginary and cache nothing.
/// unsafe impl TlbShootdown for Ipis {
///     fn shoot(&mut self, cpus: CpuSet, _: &Flush) { self.0.push(cpus) }
/// }
///
/// let ram = EmulatedMemory::new(64);
/// let mut frames = ram.frame_allocator();
/// let mut m = PageTables::new_empty(ram.phys_mem(), &mut frames).unwrap();
/// let page = Page::<Size4KiB>::containing_address(VirtAddr::new(0x40_0000));
/// let leaf = PhysFrame::containing_address(PhysAddr::new(0x1000));
/// // SAFETY: example tables, mapping frames no Rust object uses.
/// unsafe { m.map(page, leaf, MapFlags::READ_WRITE, &mut frames) }.unwrap().ignore();
/// assert_eq!(frames.in_use(), 4);
///
/// let mut deferred = DeferredFrees::<_, 16>::new(&mut frames);
/// // SAFETY: example tables, mapping frames no Rust object uses.
/// let (_leaf, flush) = unsafe { m.unmap(page, &mut deferred) }.unwrap(); // empties 3 tables
/// assert_eq!(deferred.len(), 3);
/// let mut mmu = RecordingMmu::new(m.pml4());
/// let mut ipis = Ipis(Vec::new());
/// let report = deferred.complete(flush, &mut mmu, 0, CpuSet::first(3), &mut ipis);
/// assert_eq!((report.released, report.rounds), (3, 1));
/// assert_eq!(ipis.0, [CpuSet::first(3).without(0)]);
/// assert_eq!(frames.in_use(), 1);
/// # Ok(())
/// # }
/// # #[cfg(not(feature = "testing"))]
/// # fn main() {}
/// ```
#[must_use = "the frames it holds are recycled only by `complete`"]
pub struct DeferredFrees<'a, A: ?Sized, const N: usize> {
    alloc: &'a mut A,
    held: Magazine<N>,
    leaked: usize,
}

/// What a [`DeferredFrees`] did when released.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReleaseReport {
    /// Frames given back to the allocator.
    pub released: usize,
    /// Frames that did not fit and were never recycled.
    pub leaked: usize,
    /// The other CPUs that acknowledged the shootdown.
    pub acked: CpuSet,
    /// IPI rounds (0 or 1).
    pub rounds: u32,
}

impl<'a, A: ?Sized, const N: usize> DeferredFrees<'a, A, N> {
    /// Holds the frees of one operation in front of `alloc`.
    pub fn new(alloc: &'a mut A) -> Self {
        Self {
            alloc,
            held: Magazine::new(),
            leaked: 0,
        }
    }

    /// Frames held.
    pub fn len(&self) -> usize {
        self.held.len()
    }

    /// Whether no frame is held.
    pub fn is_empty(&self) -> bool {
        self.held.is_empty()
    }

    /// Holds `frame` (e.g. the leaf frame an unmap returned) until release;
    /// gives it back when full.
    ///
    /// ```compile_fail,E0133
    /// # fn f(d: &mut kmem::smp::DeferredFrees<'_, &kmem::frame::LockedFrameAllocator, 4>, frame: x86_64::structures::paging::PhysFrame) {
    /// // Any frame held for a free needs `unsafe`:
    /// let _ = d.defer(frame);
    /// # }
    /// ```
    ///
    /// # Safety
    /// `frame` belongs to the allocator and nothing uses it any more but
    /// through translations the flush passed to [`complete`](Self::complete)
    /// covers: it is freed once that flush was done on every CPU.
    pub unsafe fn defer(&mut self, frame: PhysFrame) -> Result<(), PhysFrame> {
        self.held
            .push(frame.start_address().as_u64())
            .map_err(|_| frame)
    }
}

impl<A: FrameDeallocator<Size4KiB> + ?Sized, const N: usize> DeferredFrees<'_, A, N> {
    /// Gives the held frames to the allocator, now that every CPU that may
    /// have cached a translation to them acknowledged the flush. Private:
    /// only [`complete`](Self::complete) makes the `Acked` it needs, from
    /// the flush that covers these frames.
    fn release(mut self, acked: Acked) -> ReleaseReport {
        let released = self.held.len();
        let alloc = &mut *self.alloc;
        self.held.take_oldest(N, |f| {
            let frame = PhysFrame::containing_address(PhysAddr::new(f));
            // SAFETY: the frame was freed to us by the mapper (or deferred
            // by the caller) as unused, and `acked` proves no CPU can reach
            // it through a stale translation any more.
            unsafe { alloc.deallocate_frame(frame) };
        });
        ReleaseReport {
            released,
            leaked: self.leaked,
            acked: acked.cpus(),
            rounds: acked.rounds(),
        }
    }

    /// [`Flush::shoot`], then the held frames back to the allocator: the
    /// only way to release them, so a free cannot come before its flush.
    pub fn complete<M, T>(
        self,
        flush: Flush,
        mmu: &mut M,
        this_cpu: usize,
        cpus: CpuSet,
        shootdown: &mut T,
    ) -> ReleaseReport
    where
        M: Mmu + ?Sized,
        T: TlbShootdown + ?Sized,
    {
        let acked = flush.shoot(mmu, this_cpu, cpus, shootdown);
        self.release(acked)
    }
}

// SAFETY: allocation forwards to `A`, which makes the promise.
unsafe impl<A: FrameAllocator<Size4KiB> + ?Sized, const N: usize> FrameAllocator<Size4KiB>
    for DeferredFrees<'_, A, N>
{
    fn allocate_frame(&mut self) -> Option<PhysFrame> {
        self.alloc.allocate_frame()
    }
}

impl<A: ?Sized, const N: usize> FrameDeallocator<Size4KiB> for DeferredFrees<'_, A, N> {
    /// Holds the frame until release (counts it as leaked when full).
    unsafe fn deallocate_frame(&mut self, frame: PhysFrame) {
        // SAFETY: the mapper freed it (`deallocate_frame`'s contract: unused),
        // reachable only through the translations its unmap's flush covers.
        if unsafe { self.defer(frame) }.is_err() {
            self.leaked += 1;
        }
    }
}
