//! Frames an operation unmapped, held until every CPU that may cache a
//! translation to them has invalidated it (Linux's `mmu_gather`).
//!
//! A [`Gather`] is the only place a vm operation puts what it took out of
//! the page tables: anonymous frames whose mapping went (one reference
//! each: unshared, freed with the last) and page tables left empty. The
//! only way to give them back is [`Gather::finish`], which invalidates the
//! gathered translations on every CPU of the space first: "free before
//! flush" cannot be written. A gather dropped unfinished keeps its frames
//! (a leak, never a use after free).

use alloc::vec::Vec;
use x86_64::structures::paging::{FrameAllocator, FrameDeallocator, PhysFrame, Size4KiB};

use super::stats::count;
use super::Vm;
use crate::paging::{Flush, FrameSource};
use crate::smp::{ActiveCpus, Tlb};

/// Frames a gather holds inline before it needs the heap.
const INLINE: usize = 32;

/// A list of frames: a few inline, more on the heap (reserved up front by
/// the operations that can gather many, so that pushing never fails).
#[derive(Default)]
struct FrameList {
    inline: [Option<PhysFrame>; INLINE],
    len: usize,
    spill: Vec<PhysFrame>,
}

impl FrameList {
    fn push(&mut self, frame: PhysFrame) -> Result<(), PhysFrame> {
        if self.len < INLINE {
            self.inline[self.len] = Some(frame);
            self.len += 1;
            return Ok(());
        }
        if self.spill.len() == self.spill.capacity() && self.spill.try_reserve(1).is_err() {
            return Err(frame);
        }
        self.spill.push(frame);
        Ok(())
    }

    fn reserve(&mut self, n: usize) -> Result<(), ()> {
        // `try_reserve` counts from `spill.len()`, and `spill` is empty until `inline` is full.
        self.spill
            .try_reserve((self.len + n).saturating_sub(INLINE))
            .map_err(|_| ())
    }

    fn is_empty(&self) -> bool {
        self.len == 0
    }

    fn drain(&mut self) -> impl Iterator<Item = PhysFrame> + '_ {
        let n = core::mem::take(&mut self.len);
        self.inline[..n]
            .iter_mut()
            .filter_map(Option::take)
            .chain(self.spill.drain(..))
    }
}

/// Translations an operation removed, downgraded or repointed, and the
/// frames they reached; see the module docs.
#[must_use = "the frames it holds are given back only by `finish`"]
#[derive(Default)]
pub(crate) struct Gather {
    flush: Flush,
    pages: FrameList,
    tables: FrameList,
    /// Frames that found no room (the heap was full): never reused.
    leaked: u64,
}

impl Gather {
    pub(crate) fn new() -> Self {
        Self::default()
    }

    /// Makes room for `pages` anonymous frames and `tables` table frames,
    /// so that gathering them cannot fail: call before changing anything.
    pub(crate) fn reserve(&mut self, pages: usize, tables: usize) -> Result<(), ()> {
        self.pages.reserve(pages)?;
        self.tables.reserve(tables)
    }

    /// Records a changed translation.
    pub(crate) fn flush(&mut self, flush: Flush) {
        self.flush.merge(flush);
    }

    /// Records that the translation of `addr` changed.
    pub(crate) fn add(&mut self, addr: u64) {
        self.flush.add(addr);
    }

    /// Holds one reference to the anonymous frame of a removed mapping.
    pub(crate) fn page(&mut self, frame: PhysFrame) {
        if self.pages.push(frame).is_err() {
            self.leaked += 1;
        }
    }

    /// A frame source for the mapper whose frees land in this gather.
    pub(crate) fn tables<'g, A: FrameSource + ?Sized>(
        &'g mut self,
        frames: &'g mut A,
    ) -> GatherTables<'g, A> {
        GatherTables {
            gather: self,
            frames,
        }
    }

    /// Invalidates the gathered translations on every CPU that may cache
    /// the space (`pml4`, `cpus`), waits for them, and only then gives the
    /// page tables back and drops the page references (freeing frames
    /// whose last reference went).
    pub(crate) fn finish<A: FrameSource + ?Sized>(
        mut self,
        tlb: &mut Tlb<'_>,
        pml4: PhysFrame,
        cpus: &ActiveCpus,
        vm: &Vm,
        frames: &mut A,
    ) {
        let flush = core::mem::take(&mut self.flush);
        let (mut tables, mut pages) = (
            core::mem::take(&mut self.tables),
            core::mem::take(&mut self.pages),
        );
        let pending = !tables.is_empty() || !pages.is_empty();
        debug_assert!(
            !pending || !flush.is_empty(),
            "frames gathered without an invalidation"
        );
        invalidate(tlb, flush, pml4, cpus, vm);
        for table in tables.drain() {
            // SAFETY: the mapper freed the table (empty, unlinked) into this gather, and
            // every CPU that may have cached a walk through it has invalidated it.
            unsafe { frames.deallocate_frame(table) };
        }
        for frame in pages.drain() {
            if frame != vm.zero_frame() && vm.unshare(frame) {
                vm.release_frame(tlb.cpu(), frame, frames);
            }
        }
        count(&vm.stats.at(tlb.cpu()).leaked_frames, self.leaked);
    }
}

impl Drop for Gather {
    fn drop(&mut self) {
        debug_assert!(
            self.pages.is_empty() && self.tables.is_empty(),
            "a gather holding frames was dropped without `finish`: they leak"
        );
    }
}

/// The mapper's frame source during a gathering operation: tables come
/// from the frame source, tables freed go to the gather.
pub(crate) struct GatherTables<'g, A: ?Sized> {
    gather: &'g mut Gather,
    frames: &'g mut A,
}

// SAFETY: allocation forwards to `A`, which makes the promise.
unsafe impl<A: FrameSource + ?Sized> FrameAllocator<Size4KiB> for GatherTables<'_, A> {
    fn allocate_frame(&mut self) -> Option<PhysFrame> {
        self.frames.allocate_frame()
    }
}

impl<A: FrameSource + ?Sized> FrameDeallocator<Size4KiB> for GatherTables<'_, A> {
    /// Holds the table until the gather's invalidation completes.
    unsafe fn deallocate_frame(&mut self, frame: PhysFrame) {
        if self.gather.tables.push(frame).is_err() {
            self.gather.leaked += 1;
        }
    }
}

/// Invalidates `flush` on every CPU that may cache the space (`pml4`,
/// `cpus`), waits for them, and counts the shootdown rounds.
pub(super) fn invalidate(
    tlb: &mut Tlb<'_>,
    flush: Flush,
    pml4: PhysFrame,
    cpus: &ActiveCpus,
    vm: &Vm,
) {
    let acked = tlb.invalidate(flush, pml4, cpus);
    count(
        &vm.stats.at(tlb.cpu()).shootdowns,
        u64::from(acked.rounds()),
    );
}
