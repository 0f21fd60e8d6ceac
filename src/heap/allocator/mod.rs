//! [`Heap`]: slabs with magazines for small objects, TLSF for large ones,
//! both fed pages from one [`PageSource`] over a fixed virtual range.
//!
//! The range (minus a guard page at each end) is used from both ends:
//! ```text
//! guard | large heap [lo, brk) → ...free virtual space... ← [floor, top) slabs | guard
//! ```
//! The large heap grows upward by mapping pages at `brk` and gives back its
//! free top beyond a hysteresis band; slab spans are mapped downward from
//! `top`, and free spans at the floor are unmapped once more than a few are
//! cached. Slab pages are never carved out of the large heap.
//!
//! The free pages kept for hysteresis must not cause an out-of-memory: when
//! either side cannot get pages (the page source refuses, or the sides
//! meet), the heap gives back every free page it can ([`Heap::trim`]) and
//! tries once more, so the frames the other side kept free come back to it.
//!
//! This file dispatches each operation to a side; `init` builds the heap in
//! place, `slabs` runs the slab region, `growth` grows and trims the large
//! heap and reclaims, `invariants` checks the whole structure.

mod growth;
mod init;
mod invariants;
mod slabs;

use super::hooks::Hooks;
use super::large::{self, Large};
use super::magazine::Magazine;
use super::page_source::{PageSource, PAGE_SIZE};
use super::size_class::{class_of, NUM_CLASSES};
use super::slab::{SpanList, SLAB_SIZE};
use super::stats::HeapStats;
use super::AllocError;
use core::alloc::Layout;
use core::ptr::NonNull;

use growth::TRIM_TRIGGER;

/// Pages of one slab span.
const SPAN_PAGES: usize = SLAB_SIZE / PAGE_SIZE;

/// One size class: its magazine and the slabs that have free objects.
struct Class {
    mag: Magazine,
    partial: SpanList,
    /// Objects of the class out of their slabs: live or in the magazine.
    /// Counted per refill and flush, so the magazine's fast paths do not
    /// count; live objects are this minus the magazine's.
    out: usize,
}

/// The heap over a virtual range. Not thread-safe: wrap it in
/// [`LockedHeap`](super::LockedHeap) for a `#[global_allocator]`.
pub struct Heap<P: PageSource> {
    source: P,
    lo: usize,
    top: usize,
    floor: usize,
    large: Large,
    classes: [Class; NUM_CLASSES],
    free_spans: SpanList,
    slabs_live: usize,
    /// Live blocks of the large heap.
    large_live: usize,
    /// The accounting kept as it happens (bytes, counts, pages held);
    /// [`Heap::stats`] fills in the fields read off the structure.
    stats: HeapStats,
    hooks: Hooks,
}

// SAFETY: the heap exclusively owns its range; raw pointers point into it.
unsafe impl<P: PageSource + Send> Send for Heap<P> {}

impl<P: PageSource> Heap<P> {
    /// Allocates memory for `layout` (any alignment; size 0 gets a unique
    /// one-byte block). Fails when neither free blocks, nor the free pages
    /// the heap gives back, nor new pages can hold the request; the heap is
    /// then as before, but for the pages given back.
    ///
    /// ```
    /// # #[cfg(feature = "testing")]
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// use core::alloc::Layout;
    /// use kmem::heap::Heap;
    /// use kmem::testing::arena::ArenaPageSource;
    ///
    /// let arena = ArenaPageSource::new(1 << 20);
    /// let (start, len) = arena.range();
    /// // SAFETY: the arena's range belongs to this heap alone.
    /// let mut heap = unsafe { Heap::new(arena, start, len) }.unwrap();
    /// let layout = Layout::from_size_align(100, 64).unwrap();
    /// let p = heap.allocate(layout).unwrap();
    /// assert_eq!(p.as_ptr() as usize % 64, 0);
    /// assert_eq!(heap.stats().live_bytes, 100);
    /// // SAFETY: `p` is live and was allocated with `layout`.
    /// unsafe { heap.deallocate(p, layout) };
    /// assert_eq!(heap.stats().live_allocs, 0);
    /// # Ok(())
    /// # }
    /// # #[cfg(not(feature = "testing"))]
    /// # fn main() {}
    /// ```
    #[inline(always)]
    pub fn allocate(&mut self, layout: Layout) -> Result<NonNull<u8>, AllocError> {
        self.allocate_ptr(layout).ok_or(AllocError::OutOfMemory {
            size: layout.size(),
            align: layout.align(),
        })
    }

    /// [`Heap::allocate`] as an `Option` (returned in a register, where the
    /// `Result` goes through memory). The common case, a small object in
    /// its class's magazine, is inline; everything else is one call away.
    #[inline(always)]
    pub(crate) fn allocate_ptr(&mut self, layout: Layout) -> Option<NonNull<u8>> {
        if !Hooks::ACTIVE {
            if let Some(class) = class_of(layout) {
                if let Some(object) = self.classes[class].mag.pop() {
                    self.stats.record_allocate(layout.size());
                    // SAFETY: magazine entries are non-null objects.
                    return Some(unsafe { NonNull::new_unchecked(object) });
                }
            }
        }
        self.allocate_slow(layout)
    }

    /// Every allocation the inline path of [`Heap::allocate_ptr`] does not
    /// finish: refills, large blocks, failures, tracking.
    #[inline(never)]
    fn allocate_slow(&mut self, layout: Layout) -> Option<NonNull<u8>> {
        let ptr = match class_of(layout) {
            Some(class) => self.allocate_small(class),
            None => {
                let ptr = self.allocate_large(layout);
                self.large_live += ptr.is_some() as usize;
                ptr
            }
        };
        let Some(ptr) = ptr else {
            self.stats.failures += 1;
            return None;
        };
        self.stats.record_allocate(layout.size());
        self.hooks.on_allocate(ptr, layout, &mut self.source);
        Some(ptr)
    }

    /// Frees `ptr`, allocated with `layout`. Under `tracking`, a bad free is
    /// reported and ignored.
    ///
    /// # Safety
    /// `ptr` must be live, from this heap, allocated with `layout`.
    #[inline(always)]
    pub unsafe fn deallocate(&mut self, ptr: NonNull<u8>, layout: Layout) {
        if !Hooks::ACTIVE && self.in_slabs(ptr) {
            // A slab object always has a layout of its slab's class (realloc
            // keeps an object in a slab only within its class).
            let mag = &mut self.classes[class_of(layout).unwrap_or(0)].mag;
            if !mag.is_full() {
                // SAFETY: not full.
                unsafe { mag.push(ptr.as_ptr()) };
                self.stats.record_deallocate(layout.size());
                return;
            }
        }
        // SAFETY: forwarded from the caller.
        unsafe { self.deallocate_slow(ptr, layout) }
    }

    /// Every free the inline path of [`Heap::deallocate`] does not finish:
    /// flushes, large blocks, tracking.
    ///
    /// # Safety
    /// As [`Heap::deallocate`].
    #[inline(never)]
    unsafe fn deallocate_slow(&mut self, ptr: NonNull<u8>, layout: Layout) {
        if !self.hooks.on_deallocate(ptr, layout) {
            return;
        }
        self.stats.record_deallocate(layout.size());
        if self.in_slabs(ptr) {
            let class = class_of(layout).unwrap_or(0);
            // SAFETY: forwarded from the caller; the layout names the class.
            unsafe { self.deallocate_small(ptr, class) }
        } else {
            self.large_live -= 1;
            // SAFETY: as above; everything below the slab floor is large.
            unsafe { self.deallocate_large(ptr, layout.size()) }
        }
    }

    /// Resizes `ptr` to `new_size` bytes (same alignment), in place when the
    /// class stays the same or the next large block has room; otherwise it
    /// moves. On error the old block is untouched.
    ///
    /// # Safety
    /// As [`Heap::deallocate`].
    pub unsafe fn reallocate(
        &mut self,
        ptr: NonNull<u8>,
        layout: Layout,
        new_size: usize,
    ) -> Result<NonNull<u8>, AllocError> {
        let align = layout.align();
        let new = Layout::from_size_align(new_size, align).map_err(|_| AllocError::BadLayout {
            size: new_size,
            align,
        })?;
        if !self.hooks.on_reallocate(ptr, layout) {
            return Err(AllocError::BadLayout {
                size: layout.size(),
                align,
            });
        }
        let in_slabs = self.in_slabs(ptr);
        // In place: `Some(free bytes the resize left at the heap's top)`.
        let in_place = if in_slabs {
            class_of(new)
                .is_some_and(|class| class_of(layout) == Some(class))
                .then_some(0)
        } else {
            Large::prefetch_successor(ptr, layout.size());
            // SAFETY: `ptr` is a live large block (it lies below the slab floor).
            unsafe { self.large.resize_in_place(ptr, new_size) }
        };
        if let Some(top_free) = in_place {
            self.stats.record_resize(layout.size(), new_size);
            self.hooks.on_resize(ptr, new_size);
            if new_size < layout.size() && top_free >= TRIM_TRIGGER {
                self.trim_large();
            }
            return Ok(ptr);
        }
        if align <= large::GRANULE && !in_slabs {
            let keep = layout.size().min(new_size);
            // SAFETY: `ptr` is a live large block with alignment ≤ GRANULE.
            if let Some(moved) = unsafe { self.large.resize_backward(ptr, new_size, keep) } {
                self.stats.record_resize(layout.size(), new_size);
                self.hooks.on_move(ptr, moved, new_size, &mut self.source);
                return Ok(moved);
            }
        }
        let to = self.allocate(new)?;
        // SAFETY: both blocks are live, distinct, and hold at least the copied bytes.
        unsafe {
            core::ptr::copy_nonoverlapping(ptr.as_ptr(), to.as_ptr(), layout.size().min(new_size));
            self.deallocate(ptr, layout);
        }
        Ok(to)
    }

    /// Whether `ptr` lies in the slab region (else it is a large block; a
    /// large block may have a small layout after shrinking in place).
    #[inline(always)]
    fn in_slabs(&self, ptr: NonNull<u8>) -> bool {
        ptr.as_ptr() as usize >= self.floor
    }

    /// The accounting snapshot.
    pub fn stats(&self) -> HeapStats {
        let class_live: [usize; NUM_CLASSES] =
            core::array::from_fn(|c| self.classes[c].out - self.classes[c].mag.len());
        HeapStats {
            live_allocs: class_live.iter().sum::<usize>() + self.large_live,
            class_live,
            slab_pages: self.slabs_live * SPAN_PAGES,
            large_pages: (self.large.brk() - self.lo) / PAGE_SIZE,
            cached_pages: self.free_spans.len * SPAN_PAGES,
            ..self.stats
        }
    }

    /// The page source (e.g. to read its counters in tests).
    pub fn source(&self) -> &P {
        &self.source
    }

    /// The virtual range the heap may map, guards excluded: `(lo, top)`.
    pub fn bounds(&self) -> (usize, usize) {
        (self.lo, self.top)
    }

    /// The tracker: leak report and caught misuse (feature `tracking`).
    #[cfg(feature = "tracking")]
    pub fn tracker(&self) -> &super::tracking::Tracker {
        self.hooks.tracker()
    }
}
