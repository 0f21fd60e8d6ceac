//! The kmem heap the demo and test kernels allocate from: pages from the
//! kernel's frame allocator, mapped into the heap range by the kernel's
//! mapper (writable, non-executable, supervisor). [`crate::entry_point!`]
//! makes it the `#[global_allocator]` through [`Global`], so a kernel that
//! brings its own heap (the adoption example) can link this library too.
//!
//! Lock order: heap, then mapper, then frames. Code holding the mapper
//! ([`with_memory`]) must not allocate: the heap would need the mapper to
//! grow, and `with_memory` refuses the nested use with a panic.
//!
//! With several CPUs: [`Global`] takes a gate lock with interrupts masked
//! (an interrupt handler that allocates cannot find it held by the code it
//! interrupted) and serves TLB shootdowns while it waits; heap pages given
//! back are shot down on every CPU before their frames are freed.

use crate::arch::{cpus, shootdown};
use crate::mm::memory::{with_memory, FRAMES};
use kmem::frame::LockedFrameAllocator;
use kmem::heap::{HeapInitError, LockedHeap, MappedPageSource, PageMapper};
use kmem::paging::{MapFlags, PagingError};
use x86_64::structures::paging::{Page, PhysFrame, Size4KiB};

/// Start of the heap's virtual range (PML4 slot 384), guard page included.
pub const HEAP_START: u64 = 0xFFFF_C000_0000_0000;
/// Size of the heap's virtual range; pages are mapped on demand.
pub const HEAP_SIZE: u64 = 64 << 30;

/// Maps heap pages through the kernel's active mapper.
#[derive(Debug, Default)]
pub struct KernelPageMapper;

// SAFETY: `map` maps the page to the frame alone (kmem's mapper, writable);
// `unmap` returns the frame after the shootdown round completed on every
// CPU online (`DeferredFrees::complete` below).
unsafe impl PageMapper for KernelPageMapper {
    type Error = PagingError;

    fn map(&mut self, page: Page<Size4KiB>, frame: PhysFrame<Size4KiB>) -> Result<(), PagingError> {
        with_memory(|m| {
            let flags = MapFlags::READ_WRITE.global();
            // SAFETY: the heap's page source maps a fresh frame in the heap's range.
            unsafe { m.mapper.map(page, frame, flags, &mut m.frames) }
                .map(|flush| flush.flush(&mut m.mmu))
        })
    }

    fn unmap(&mut self, page: Page<Size4KiB>) -> Result<PhysFrame<Size4KiB>, PagingError> {
        with_memory(|m| {
            // Tables the unmap empties wait for the shootdown, like the
            // frame, which the page source frees once this returns.
            let mut deferred = kmem::smp::DeferredFrees::<_, 4>::new(&mut m.frames);
            // SAFETY: the heap gave the page back (`PageSource::unmap`: unused).
            let (frame, flush) = unsafe { m.mapper.unmap(page, &mut deferred) }?;
            let _ = deferred.complete(
                flush,
                &mut m.mmu,
                cpus::cpu_index(),
                cpus::online(),
                &mut shootdown::IpiShootdown,
            );
            Ok(frame)
        })
    }
}

/// The kernel's page source.
pub type KernelPageSource =
    MappedPageSource<&'static LockedFrameAllocator<'static>, KernelPageMapper>;

/// The kernel heap: null for every request until [`init`].
pub static HEAP: LockedHeap<KernelPageSource> = LockedHeap::empty();

/// [`HEAP`] as a global allocator (the type `#[global_allocator]` needs).
#[derive(Debug)]
pub struct Global;

/// Taken by every [`Global`] call (see the module docs).
static GATE: spin::Mutex<()> = spin::Mutex::new(());

/// Runs `f` holding the gate, interrupts masked.
#[inline]
fn gated<R>(f: impl FnOnce() -> R) -> R {
    x86_64::instructions::interrupts::without_interrupts(|| {
        let _gate = shootdown::lock_serving(&GATE);
        f()
    })
}

// SAFETY: forwards every call to HEAP, a `GlobalAlloc`, with the caller's arguments.
unsafe impl core::alloc::GlobalAlloc for Global {
    #[inline]
    unsafe fn alloc(&self, layout: core::alloc::Layout) -> *mut u8 {
        // SAFETY: the caller's contract is HEAP's.
        gated(|| unsafe { HEAP.alloc(layout) })
    }
    #[inline]
    unsafe fn dealloc(&self, ptr: *mut u8, layout: core::alloc::Layout) {
        // SAFETY: the caller's contract is HEAP's; every pointer came from HEAP.
        gated(|| unsafe { HEAP.dealloc(ptr, layout) })
    }
    #[inline]
    unsafe fn alloc_zeroed(&self, layout: core::alloc::Layout) -> *mut u8 {
        // SAFETY: the caller's contract is HEAP's.
        gated(|| unsafe { HEAP.alloc_zeroed(layout) })
    }
    #[inline]
    unsafe fn realloc(
        &self,
        ptr: *mut u8,
        layout: core::alloc::Layout,
        new_size: usize,
    ) -> *mut u8 {
        // SAFETY: the caller's contract is HEAP's; every pointer came from HEAP.
        gated(|| unsafe { HEAP.realloc(ptr, layout, new_size) })
    }
}

/// Starts the heap over `[HEAP_START, HEAP_START + HEAP_SIZE)`.
/// Requires [`crate::mm::memory::init`]. The heap is built in place, so any
/// stack will do.
pub fn init() -> Result<(), HeapInitError> {
    let source = MappedPageSource::new(&FRAMES, KernelPageMapper);
    // SAFETY: the heap range (PML4 slot 384) is used by nothing else; the
    // page source maps fresh frames there through the kernel's mapper.
    unsafe { HEAP.init(source, HEAP_START as usize, HEAP_SIZE as usize) }
}

/// Gives every wholly free heap page back to the frame allocator. Through
/// the gate, as every heap call: the unmaps shoot down, and a CPU spinning
/// on the heap's lock would not answer.
pub fn trim() {
    gated(|| {
        if let Some(heap) = HEAP.lock().heap_mut() {
            heap.trim();
        }
    });
}
