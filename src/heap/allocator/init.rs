//! Building the heap in place over its range.

use super::{Class, Heap, Hooks, Large, SpanList};
use crate::heap::large;
use crate::heap::magazine::Magazine;
use crate::heap::page_source::{PageSource, PAGE_SIZE};
use crate::heap::size_class::NUM_CLASSES;
use crate::heap::slab::SLAB_SIZE;
use crate::heap::stats::HeapStats;
use crate::heap::HeapInitError;
use core::mem::MaybeUninit;
use core::ptr::addr_of_mut;

impl<P: PageSource> Heap<P> {
    /// Builds a heap over `[start, start + len)`, mapping one page for the
    /// large heap. The first and last page of the range stay unmapped guards.
    ///
    /// # Safety
    /// The range must be reserved for this heap alone (nothing else maps or
    /// uses it) for the heap's whole life, and `source` must be able to map it.
    /// On a kernel that runs several CPUs, `source` must invalidate the pages
    /// it unmaps on every CPU before their frames are reused (a
    /// [`KernelPageSource`](crate::heap::KernelPageSource) made
    /// `with_shootdown`, or a `MappedPageSource` whose mapper shoots down).
    pub unsafe fn new(source: P, start: usize, len: usize) -> Result<Self, HeapInitError> {
        let mut slot = MaybeUninit::uninit();
        // SAFETY: forwarded from the caller.
        unsafe { Self::init_in_place(&mut slot, source, start, len) }?;
        // SAFETY: `init_in_place` returned Ok, so the slot is initialised.
        Ok(unsafe { slot.assume_init() })
    }

    /// [`Heap::new`] building the heap directly in `slot`: the heap's state
    /// (about 32 KiB, about 240 KiB with `tracking`) never passes through
    /// the stack, so a kernel can set its heap up from a small stack.
    /// On error `slot` is left uninitialised (and `source` dropped).
    ///
    /// # Safety
    /// As [`Heap::new`].
    pub unsafe fn init_in_place(
        slot: &mut MaybeUninit<Self>,
        source: P,
        start: usize,
        len: usize,
    ) -> Result<&mut Self, HeapInitError> {
        let (lo, top) = Self::usable_bounds(start, len)?;
        let heap = slot.as_mut_ptr();
        // SAFETY: `heap` points to `slot`, valid and aligned for a `Heap`;
        // every field is written once, through raw pointers, before the
        // slot is treated as initialised.
        unsafe {
            addr_of_mut!((*heap).source).write(source);
            addr_of_mut!((*heap).lo).write(lo);
            addr_of_mut!((*heap).top).write(top);
            addr_of_mut!((*heap).floor).write(top);
            Large::init_at(addr_of_mut!((*heap).large));
            let classes = addr_of_mut!((*heap).classes).cast::<Class>();
            for i in 0..NUM_CLASSES {
                classes.add(i).write(Class {
                    mag: Magazine::new(),
                    partial: SpanList::new(),
                    out: 0,
                });
            }
            addr_of_mut!((*heap).free_spans).write(SpanList::new());
            addr_of_mut!((*heap).slabs_live).write(0);
            addr_of_mut!((*heap).large_live).write(0);
            addr_of_mut!((*heap).stats).write(HeapStats::new());
            Hooks::init_at(addr_of_mut!((*heap).hooks), lo, top);
        }
        // SAFETY: every field was just written.
        if let Err(e) = unsafe { slot.assume_init_mut() }.source.map(lo, 1) {
            // SAFETY: initialised above and not used after this.
            unsafe { slot.assume_init_drop() };
            return Err(HeapInitError::Map(e));
        }
        // SAFETY: as above.
        let heap = unsafe { slot.assume_init_mut() };
        heap.stats.pages_held = 1;
        // SAFETY: the page was just mapped for us.
        unsafe { heap.large.init(lo, lo + PAGE_SIZE) };
        Ok(heap)
    }

    /// The first and last usable addresses of `[start, start + len)` after
    /// the guard pages, or why the range cannot hold a heap.
    fn usable_bounds(start: usize, len: usize) -> Result<(usize, usize), HeapInitError> {
        let end = start
            .checked_add(len)
            .ok_or(HeapInitError::Overflow { start, len })?;
        let lo = start.next_multiple_of(PAGE_SIZE) + PAGE_SIZE;
        let top = (end / PAGE_SIZE * PAGE_SIZE).saturating_sub(PAGE_SIZE) & !(SLAB_SIZE - 1);
        // The large heap's span must stay under `large::MAX_BLOCK` (256
        // TiB); a larger range is used only that far.
        let top = top.min(lo.saturating_add(large::MAX_BLOCK) & !(SLAB_SIZE - 1));
        let top = Hooks::heap_top(lo, top);
        if top < lo + PAGE_SIZE + SLAB_SIZE {
            return Err(HeapInitError::TooSmall { start, len });
        }
        Ok((lo, top))
    }
}
