//! The kernel's memory on several CPUs: kmem's per-CPU caches in front of
//! the frame allocator and the heap, and unmapping from the kernel's
//! address space with a TLB shootdown on every CPU online.
//!
//! Lock order: the heap gate or the mapper, then a CPU's frame-cache slot,
//! then the frame allocator. A cache slot is held only for list operations
//! (the heap's never across a call into the heap, the frames' only with the
//! frame allocator, which waits for nothing), so draining the caches
//! ([`PerCpuFrames::drain_all`], [`PerCpuHeap::drain_all`]) never waits on a
//! CPU that is itself waiting for a shootdown.

use crate::arch::cpu::MAX_CPUS;
use crate::arch::cpus::{self, KernelCpu};
use crate::arch::shootdown::IpiShootdown;
use crate::mm::heap::Global;
use crate::mm::memory::{with_memory, FRAMES};
use kmem::frame::X86Interrupts;
use kmem::paging::PagingError;
use kmem::smp::{CpuSet, DeferredFrees, PerCpuFrames, PerCpuHeap, ReleaseReport};
use x86_64::structures::paging::{Page, PhysFrame, Size4KiB};

/// Per-CPU caches of single frames in front of [`FRAMES`].
pub static FRAME_CACHE: PerCpuFrames<'static, 'static, KernelCpu, X86Interrupts, MAX_CPUS> =
    PerCpuFrames::new(&FRAMES, KernelCpu);

/// Lets the kernel's other frame users (the mapper, the heap's page
/// source, which allocate from [`FRAMES`] directly) reach frames parked in
/// the CPUs' caches: an allocation that finds none drains every cache and
/// tries again, instead of reporting out of memory.
pub fn init() {
    FRAMES.set_on_empty(|| FRAME_CACHE.drain_all());
}

/// Per-CPU size-class caches in front of the kernel heap.
pub static HEAP_CACHE: PerCpuHeap<Global, KernelCpu, MAX_CPUS> = PerCpuHeap::new(Global, KernelCpu);

/// Page tables one unmap may empty: a page table per 2 MiB and the tables
/// above them. [`unmap_pages`] takes at most 512 pages (one table),
/// [`unmap_scattered`] at most 8 pages anywhere (up to three tables each).
const DEFERRED: usize = 3 * SCATTERED;

/// Unmaps `pages` consecutive 4 KiB pages from `first` in the kernel's
/// address space and shoots the translations down on every CPU online
/// (one IPI round for the whole range); the page tables the unmap
/// emptied are freed (to this CPU's cache) only after every CPU
/// acknowledged. Each leaf frame is passed to `leaf` first, while no CPU
/// may use it any more (after the round).
///
/// # Errors
/// The mapper's error for a page that is not mapped by a 4 KiB leaf; the
/// pages before it stay unmapped (and shot down).
pub fn unmap_pages(
    first: Page<Size4KiB>,
    pages: u64,
    leaf: impl FnMut(PhysFrame),
) -> Result<ReleaseReport, PagingError> {
    unmap_pages_on(first, pages, cpus::online(), leaf)
}

/// [`unmap_pages`] with the shootdown sent to the CPUs of `cpus` only
/// (e.g. this CPU alone, for pages no other CPU ever touched); when the
/// unmap frees page tables, every CPU online is shot anyway.
pub fn unmap_pages_on(
    first: Page<Size4KiB>,
    pages: u64,
    cpus: CpuSet,
    leaf: impl FnMut(PhysFrame),
) -> Result<ReleaseReport, PagingError> {
    assert!(pages <= 512, "unmap_pages takes at most 512 pages");
    unmap_each((0..pages).map(|i| first + i), cpus, leaf)
}

/// Pages [`unmap_scattered`] takes at once.
pub const SCATTERED: usize = 8;

/// Unmaps up to [`SCATTERED`] pages anywhere in the kernel's address space
/// with one shootdown round for all of them (every CPU online); then each
/// leaf frame goes to `leaf`, as [`unmap_pages`] does.
pub fn unmap_scattered(
    pages: &[Page<Size4KiB>],
    leaf: impl FnMut(PhysFrame),
) -> Result<ReleaseReport, PagingError> {
    assert!(
        pages.len() <= SCATTERED,
        "unmap_scattered takes at most {SCATTERED} pages"
    );
    unmap_each(pages.iter().copied(), cpus::online(), leaf)
}

/// The unmap of [`unmap_pages_on`] and [`unmap_scattered`]: the pages of
/// `pages` (at most 512), one round.
fn unmap_each(
    pages: impl Iterator<Item = Page<Size4KiB>>,
    cpus: CpuSet,
    mut leaf: impl FnMut(PhysFrame),
) -> Result<ReleaseReport, PagingError> {
    let mut frames = [None; 512];
    let mut cache = &FRAME_CACHE;
    let (report, result) = with_memory(|m| {
        let mut deferred = DeferredFrees::<_, DEFERRED>::new(&mut cache);
        let mut flush = kmem::paging::Flush::none();
        let mut result = Ok(());
        for (slot, page) in frames.iter_mut().zip(pages) {
            // SAFETY: the caller's pages are mapped by it alone and no longer used; the
            // frames and tables reach no one before the round below completes.
            match unsafe { m.mapper.unmap(page, &mut deferred) } {
                Ok((frame, f)) => {
                    *slot = Some(frame);
                    flush = flush.combine(f);
                }
                Err(e) => {
                    result = Err(e);
                    break;
                }
            }
        }
        // Freed page tables may sit in any CPU's paging-structure caches
        // (filled speculatively, even for addresses it never touched): then
        // every CPU online now, after the unmap, must acknowledge.
        let targets = if deferred.is_empty() {
            cpus
        } else {
            cpus::online()
        };
        let report = deferred.complete(
            flush,
            &mut m.mmu,
            cpus::cpu_index(),
            targets,
            &mut IpiShootdown,
        );
        (report, result)
    });
    frames.iter().flatten().for_each(|&f| leaf(f));
    result.map(|()| report)
}
