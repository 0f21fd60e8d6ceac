//! The kmem heap as the kernels' `#[global_allocator]`: pages from the
//! kernel's frame allocator, mapped into the heap range by the kernel's
//! mapper (writable, non-executable, supervisor).
//!
//! Lock order: heap, then mapper, then frames. Code holding the mapper
//! ([`with_memory`]) must not allocate: the heap would need the mapper to
//! grow, and `with_memory` refuses the nested use with a panic.

use crate::memory::{with_memory, FRAMES};
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

impl PageMapper for KernelPageMapper {
    type Error = PagingError;

    fn map(&mut self, page: Page<Size4KiB>, frame: PhysFrame<Size4KiB>) -> Result<(), PagingError> {
        with_memory(|m| {
            let flags = MapFlags::READ_WRITE.global();
            m.mapper
                .map(page, frame, flags, &mut m.frames)
                .map(|flush| flush.flush(&mut m.mmu))
        })
    }

    fn unmap(&mut self, page: Page<Size4KiB>) -> Result<PhysFrame<Size4KiB>, PagingError> {
        with_memory(|m| {
            let (frame, flush) = m.mapper.unmap(page, &mut m.frames)?;
            flush.flush(&mut m.mmu);
            Ok(frame)
        })
    }
}

/// The kernel's page source.
pub type KernelPageSource =
    MappedPageSource<&'static LockedFrameAllocator<'static>, KernelPageMapper>;

/// The kernel heap: null for every request until [`init`].
#[global_allocator]
pub static HEAP: LockedHeap<KernelPageSource> = LockedHeap::empty();

/// Starts the heap over `[HEAP_START, HEAP_START + HEAP_SIZE)`.
/// Requires [`crate::memory::init`]. The heap is built in place, so any
/// stack will do.
pub fn init() -> Result<(), HeapInitError> {
    let source = MappedPageSource::new(&FRAMES, KernelPageMapper);
    // SAFETY: the heap range (PML4 slot 384) is used by nothing else; the
    // page source maps fresh frames there through the kernel's mapper.
    unsafe { HEAP.init(source, HEAP_START as usize, HEAP_SIZE as usize) }
}

/// Gives every wholly free heap page back to the frame allocator.
pub fn trim() {
    if let Some(heap) = HEAP.lock().heap_mut() {
        heap.trim();
    }
}
