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

use super::large::{self, Large};
use super::magazine::{Magazine, MAG_CAP};
use super::page_source::{PageSource, PAGE_SIZE};
use super::size_class::{class_of, CLASS_SIZES, NUM_CLASSES};
use super::slab::{self, SlabHeader, SpanList, SLAB_SIZE};
use super::stats::{Counters, HeapStats};
use super::{AllocError, HeapInitError};
use core::alloc::Layout;
use core::mem::MaybeUninit;
use core::ptr::{addr_of_mut, NonNull};

/// Minimum growth of the large heap.
const GROW_MIN: usize = 64 * 1024;
/// The large heap's free top is trimmed when it exceeds this...
const TRIM_TRIGGER: usize = 512 * 1024;
/// ...down to about this much.
const TRIM_KEEP: usize = 128 * 1024;
/// Free slab spans cached before unmapping starts...
const SPAN_CACHE_HIGH: usize = 16;
/// ...and how many stay cached after.
const SPAN_CACHE_LOW: usize = 8;
const SPAN_PAGES: usize = SLAB_SIZE / PAGE_SIZE;

/// One size class: its magazine and the slabs that have free objects.
struct Class {
    mag: Magazine,
    partial: SpanList,
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
    pages_held: usize,
    counters: Counters,
    #[cfg(feature = "tracking")]
    tracker: super::tracking::Tracker,
}

// SAFETY: the heap exclusively owns its range; raw pointers point into it.
unsafe impl<P: PageSource + Send> Send for Heap<P> {}

impl<P: PageSource> Heap<P> {
    /// Builds a heap over `[start, start + len)`, mapping one page for the
    /// large heap. The first and last page of the range stay unmapped guards.
    ///
    /// # Safety
    /// The range must be reserved for this heap alone (nothing else maps or
    /// uses it) for the heap's whole life, and `source` must be able to map it.
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
        let p = slot.as_mut_ptr();
        // SAFETY: `p` points to `slot`, valid and aligned for a `Heap`;
        // every field is written once, through raw pointers, before the
        // slot is treated as initialised.
        unsafe {
            addr_of_mut!((*p).source).write(source);
            addr_of_mut!((*p).lo).write(lo);
            addr_of_mut!((*p).top).write(top);
            addr_of_mut!((*p).floor).write(top);
            Large::init_at(addr_of_mut!((*p).large));
            let classes = addr_of_mut!((*p).classes).cast::<Class>();
            for i in 0..NUM_CLASSES {
                classes.add(i).write(Class {
                    mag: Magazine::new(),
                    partial: SpanList::new(),
                });
            }
            addr_of_mut!((*p).free_spans).write(SpanList::new());
            addr_of_mut!((*p).slabs_live).write(0);
            addr_of_mut!((*p).pages_held).write(0);
            addr_of_mut!((*p).counters).write(Counters::new());
            #[cfg(feature = "tracking")]
            super::tracking::Tracker::init_at(addr_of_mut!((*p).tracker), lo, top);
        }
        // SAFETY: every field was just written.
        if let Err(e) = unsafe { slot.assume_init_mut() }.source.map(lo, 1) {
            // SAFETY: initialised above and not used after this.
            unsafe { slot.assume_init_drop() };
            return Err(HeapInitError::Map(e));
        }
        // SAFETY: as above.
        let heap = unsafe { slot.assume_init_mut() };
        heap.pages_held = 1;
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
        // The tracker's live bitmap takes the top of the range.
        #[cfg(feature = "tracking")]
        let top = super::tracking::Tracker::heap_top(lo, top);
        if top < lo + PAGE_SIZE + SLAB_SIZE {
            return Err(HeapInitError::TooSmall { start, len });
        }
        Ok((lo, top))
    }

    /// Allocates memory for `layout` (any alignment; size 0 gets a unique
    /// one-byte block). Fails when neither free blocks, nor the free pages
    /// the heap gives back, nor new pages can hold the request; the heap is
    /// then as before, but for the pages given back.
    ///
    /// ```
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
    /// ```
    #[inline(always)]
    pub fn allocate(&mut self, layout: Layout) -> Result<NonNull<u8>, AllocError> {
        self.alloc_ptr(layout).ok_or(AllocError::OutOfMemory {
            size: layout.size(),
            align: layout.align(),
        })
    }

    /// [`Heap::allocate`] as an `Option` (returned in a register, where the
    /// `Result` goes through memory). The common case, a small object in
    /// its class's magazine, is inline; everything else is one call away.
    #[inline(always)]
    pub(crate) fn alloc_ptr(&mut self, layout: Layout) -> Option<NonNull<u8>> {
        #[cfg(not(feature = "tracking"))]
        if let Some(c) = class_of(layout) {
            if let Some(p) = self.classes[c].mag.pop() {
                self.counters.on_alloc(layout.size());
                // SAFETY: magazine entries are non-null objects.
                return Some(unsafe { NonNull::new_unchecked(p) });
            }
        }
        self.alloc_slow(layout)
    }

    /// Every allocation the inline path of [`Heap::alloc_ptr`] does not
    /// finish: refills, large blocks, failures, tracking.
    #[inline(never)]
    fn alloc_slow(&mut self, layout: Layout) -> Option<NonNull<u8>> {
        let p = match class_of(layout) {
            Some(c) => self.alloc_small(c),
            None => {
                let p = self.alloc_large(layout);
                self.counters.large_live += p.is_some() as usize;
                p
            }
        };
        let Some(p) = p else {
            self.counters.failures += 1;
            return None;
        };
        self.counters.on_alloc(layout.size());
        #[cfg(feature = "tracking")]
        self.tracker
            .on_alloc(p.as_ptr() as usize, layout, &mut self.source);
        Some(p)
    }

    /// Frees `ptr`, allocated with `layout`. Under `tracking`, a bad free is
    /// reported and ignored.
    ///
    /// # Safety
    /// `ptr` must be live, from this heap, allocated with `layout`.
    #[inline(always)]
    pub unsafe fn deallocate(&mut self, ptr: NonNull<u8>, layout: Layout) {
        #[cfg(not(feature = "tracking"))]
        if self.in_slabs(ptr) {
            // A slab object always has a layout of its slab's class (realloc
            // keeps an object in a slab only within its class).
            let mag = &mut self.classes[class_of(layout).unwrap_or(0)].mag;
            if !mag.is_full() {
                // SAFETY: not full.
                unsafe { mag.push(ptr.as_ptr()) };
                self.counters.on_free(layout.size());
                return;
            }
        }
        // SAFETY: forwarded from the caller.
        unsafe { self.dealloc_slow(ptr, layout) }
    }

    /// Every free the inline path of [`Heap::deallocate`] does not finish:
    /// flushes, large blocks, tracking.
    ///
    /// # Safety
    /// As [`Heap::deallocate`].
    #[inline(never)]
    unsafe fn dealloc_slow(&mut self, ptr: NonNull<u8>, layout: Layout) {
        #[cfg(feature = "tracking")]
        if self.tracker.on_free(ptr.as_ptr() as usize, layout).is_err() {
            return;
        }
        self.counters.on_free(layout.size());
        if self.in_slabs(ptr) {
            let c = class_of(layout).unwrap_or(0);
            // SAFETY: forwarded from the caller; the layout names the class.
            unsafe { self.free_small(ptr, c) }
        } else {
            self.counters.large_live -= 1;
            // SAFETY: as above; everything below the slab floor is large.
            unsafe { self.free_large(ptr, layout.size()) }
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
        #[cfg(feature = "tracking")]
        if self.tracker.verify(ptr.as_ptr() as usize, layout).is_err() {
            return Err(AllocError::BadLayout {
                size: layout.size(),
                align,
            });
        }
        let in_slabs = self.in_slabs(ptr);
        // In place: `Some(free bytes the resize left at the heap's top)`.
        let in_place = if in_slabs {
            class_of(new)
                .is_some_and(|c| class_of(layout) == Some(c))
                .then_some(0)
        } else {
            Large::prefetch_successor(ptr, layout.size());
            // SAFETY: `ptr` is a live large block (it lies below the slab floor).
            unsafe { self.large.resize_in_place(ptr, new_size) }
        };
        if let Some(top_free) = in_place {
            self.counters.on_resize(layout.size(), new_size);
            #[cfg(feature = "tracking")]
            self.tracker.resize(ptr.as_ptr() as usize, new_size);
            if new_size < layout.size() && top_free >= TRIM_TRIGGER {
                self.trim_large();
            }
            return Ok(ptr);
        }
        if align <= large::GRANULE && !in_slabs {
            let keep = layout.size().min(new_size);
            // SAFETY: `ptr` is a live large block with alignment ≤ GRANULE.
            if let Some(p) = unsafe { self.large.resize_backward(ptr, new_size, keep) } {
                self.counters.on_resize(layout.size(), new_size);
                #[cfg(feature = "tracking")]
                self.tracker.moved(
                    ptr.as_ptr() as usize,
                    p.as_ptr() as usize,
                    new_size,
                    &mut self.source,
                );
                return Ok(p);
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

    #[inline(always)]
    fn alloc_small(&mut self, c: usize) -> Option<NonNull<u8>> {
        let p = match self.classes[c].mag.pop() {
            Some(p) => p,
            None => {
                self.refill(c)?;
                self.classes[c].mag.pop()?
            }
        };
        #[cfg(feature = "tracking")]
        // SAFETY: the object is free and `CLASS_SIZES[c]` bytes long.
        unsafe {
            self.tracker.check_poison(p, CLASS_SIZES[c])
        };
        // SAFETY: magazine entries are non-null objects.
        Some(unsafe { NonNull::new_unchecked(p) })
    }

    /// Moves up to half a magazine of objects from the class's slabs.
    #[cold]
    fn refill(&mut self, c: usize) -> Option<()> {
        let size = CLASS_SIZES[c];
        while self.classes[c].mag.len() < MAG_CAP / 2 {
            let mut s = self.classes[c].partial.head;
            if s.is_null() {
                if !self.classes[c].mag.is_empty() {
                    break;
                }
                s = self.new_slab(c)?;
            }
            let class = &mut self.classes[c];
            // SAFETY: `s` heads the partial list, so it is a live slab of
            // class `c`; the `n` objects pushed fill the magazine to half
            // at most, so it is never full before a push.
            unsafe {
                let n = (MAG_CAP / 2 - class.mag.len()).min((*s).free_count as usize);
                for _ in 0..n {
                    class.mag.push(slab::pop(s, size));
                }
                self.counters.class_out[c] += n;
                if (*s).free_count == 0 {
                    class.partial.remove(s);
                }
            }
        }
        Some(())
    }

    fn new_slab(&mut self, c: usize) -> Option<*mut SlabHeader> {
        let span = self.get_span()?;
        // SAFETY: the span is mapped, aligned and unused.
        let s = unsafe { slab::init_slab(span, c) };
        #[cfg(feature = "tracking")]
        // SAFETY: the objects lie inside the mapped span.
        unsafe {
            let (cap, first) = slab::layout_of(c);
            core::ptr::write_bytes(
                span.add(first),
                super::tracking::POISON,
                cap * CLASS_SIZES[c],
            );
        }
        // SAFETY: a fresh slab is in no list.
        unsafe { self.classes[c].partial.push(s) };
        self.slabs_live += 1;
        Some(s)
    }

    #[inline(always)]
    unsafe fn free_small(&mut self, ptr: NonNull<u8>, c: usize) {
        #[cfg(feature = "tracking")]
        // SAFETY: the object is ours again.
        unsafe {
            core::ptr::write_bytes(ptr.as_ptr(), super::tracking::POISON, CLASS_SIZES[c])
        };
        if self.classes[c].mag.is_full() {
            self.flush(c, MAG_CAP / 2);
        }
        // SAFETY: a full magazine was just flushed to half.
        unsafe { self.classes[c].mag.push(ptr.as_ptr()) };
    }

    /// Returns the `n` oldest magazine objects of class `c` to their slabs.
    #[cold]
    fn flush(&mut self, c: usize, n: usize) {
        let mut mag = core::mem::take(&mut self.classes[c].mag);
        self.counters.class_out[c] -= n.min(mag.len());
        mag.drain_oldest(n, |p| {
            let s = slab::slab_of(p);
            let class = &mut self.classes[c];
            // SAFETY: `p` is a free object of class `c`, so `s` is its live slab.
            unsafe {
                let free = slab::push(s, p);
                if free == 1 {
                    class.partial.push(s);
                } else if free == (*s).capacity && class.partial.len > 1 {
                    class.partial.remove(s);
                    self.release_span(s);
                }
            }
        });
        self.classes[c].mag = mag;
    }

    /// A free slab span (see [`Heap::try_get_span`]), reclaiming if need be.
    fn get_span(&mut self) -> Option<*mut u8> {
        self.try_get_span()
            .or_else(|| self.after_reclaim(Self::try_get_span))
    }

    /// A free slab span: cached, or newly mapped below the floor.
    fn try_get_span(&mut self) -> Option<*mut u8> {
        let s = self.free_spans.head;
        if !s.is_null() {
            // SAFETY: `s` is in the free span list.
            unsafe { self.free_spans.remove(s) };
            return Some(s.cast());
        }
        let below = self.floor - SLAB_SIZE;
        if below < self.large.brk() || self.source.map(below, SPAN_PAGES).is_err() {
            return None;
        }
        self.floor = below;
        self.pages_held += SPAN_PAGES;
        Some(below as *mut u8)
    }

    /// Gives back every free page the heap holds, then runs `get` (a way of
    /// getting pages that just failed) once more. Both sides fall back to
    /// this one path: the frames one side keeps free (the large heap's free
    /// top; empty slabs and cached spans) are what the other side needs.
    /// A failed retry leaves the heap as before but for the pages given back.
    #[cold]
    #[inline(never)]
    fn after_reclaim<T>(&mut self, get: impl FnOnce(&mut Self) -> Option<T>) -> Option<T> {
        self.trim();
        get(self)
    }

    fn release_span(&mut self, s: *mut SlabHeader) {
        self.slabs_live -= 1;
        // SAFETY: the span is mapped and no longer used by any slab.
        unsafe {
            let s = slab::init_free_span(s.cast());
            self.free_spans.push(s);
        }
        if self.free_spans.len > SPAN_CACHE_HIGH {
            self.trim_spans(SPAN_CACHE_LOW);
        }
    }

    /// Unmaps free spans at the floor while more than `keep` are cached.
    fn trim_spans(&mut self, keep: usize) {
        while self.floor < self.top && self.free_spans.len > keep {
            let s = self.floor as *mut SlabHeader;
            // SAFETY: every span in [floor, top) is mapped and has a header.
            if !unsafe { slab::is_free_span(s) } {
                break;
            }
            // SAFETY: free spans are in the free list.
            unsafe { self.free_spans.remove(s) };
            self.source.unmap(self.floor, SPAN_PAGES);
            self.pages_held -= SPAN_PAGES;
            self.floor += SLAB_SIZE;
        }
    }

    /// Empties every magazine into the slabs and releases empty slabs.
    fn drain_magazines(&mut self) {
        for c in 0..NUM_CLASSES {
            self.flush(c, MAG_CAP);
            let mut s = self.classes[c].partial.head;
            while !s.is_null() {
                // SAFETY: walking the partial list of live slabs.
                let (next, empty) = unsafe { ((*s).next, (*s).free_count == (*s).capacity) };
                if empty {
                    // SAFETY: `s` is in this list.
                    unsafe { self.classes[c].partial.remove(s) };
                    self.release_span(s);
                }
                s = next;
            }
        }
    }

    #[inline]
    fn alloc_large(&mut self, layout: Layout) -> Option<NonNull<u8>> {
        match self.large.allocate(layout.size(), layout.align()) {
            Some(p) => Some(p),
            None => self.alloc_large_slow(layout),
        }
    }

    /// The large heap had no fitting block: grow it, as a last resort scan
    /// exhaustively, and failing that reclaim and grow. Out of line so the
    /// common path stays short (with the growth inlined, LLVM hoisted the
    /// whole lookup into every call).
    #[cold]
    #[inline(never)]
    fn alloc_large_slow(&mut self, layout: Layout) -> Option<NonNull<u8>> {
        let (size, align) = (layout.size(), layout.align());
        let need = large::fit_size(size, align)?;
        if need > self.top - self.lo {
            // Not even the whole range would do: nothing to reclaim for.
            return None;
        }
        if self.grow_large(layout, need).is_none() {
            if let Some(p) = self.large.allocate_exhaustive(size, align) {
                return Some(p);
            }
            self.after_reclaim(|heap| heap.grow_large(layout, need))?;
        }
        // The free block ending the heap now holds `need` bytes; an
        // exhaustive search finds it even where good fit would not look.
        self.large.allocate_exhaustive(size, align)
    }

    /// Maps pages at the top of the large heap so that its last free block
    /// holds `need` (≤ the range) bytes for `layout`: a growth step if the
    /// page source allows, else just enough.
    #[cold]
    fn grow_large(&mut self, layout: Layout, need: usize) -> Option<()> {
        let brk = self.large.brk();
        let room = self.floor - brk;
        // The step has slack beyond `need` (the whole alignment and 32
        // bytes) or is `GROW_MIN`: the heap's placement, and the efficiency
        // measured in BENCHMARKS.md, follow from these steps.
        let want = large::block_size(layout.size())?
            .checked_add(layout.align() + 32)?
            .max(GROW_MIN)
            .next_multiple_of(PAGE_SIZE);
        // The new pages merge with the free block at the top, if any.
        let exact = need
            .saturating_sub(self.large.free_top())
            .next_multiple_of(PAGE_SIZE)
            .max(PAGE_SIZE);
        for bytes in [want, exact] {
            if bytes <= room && self.source.map(brk, bytes / PAGE_SIZE).is_ok() {
                self.pages_held += bytes / PAGE_SIZE;
                // SAFETY: the pages were just mapped, between brk and the slab floor.
                unsafe { self.large.extend(brk + bytes) };
                return Some(());
            }
        }
        None
    }

    #[inline]
    unsafe fn free_large(&mut self, ptr: NonNull<u8>, size: usize) {
        Large::prefetch_successor(ptr, size);
        #[cfg(feature = "tracking")]
        // SAFETY: the payload is ours again.
        unsafe {
            let n = self.large.usable(ptr);
            core::ptr::write_bytes(ptr.as_ptr(), super::tracking::POISON, n)
        };
        // SAFETY: forwarded from the caller.
        if unsafe { self.large.deallocate(ptr) }.is_some_and(|last| last >= TRIM_TRIGGER) {
            self.trim_large();
        }
    }

    #[inline(never)]
    fn trim_large(&mut self) {
        if let Some(cut) = self.large.trim(TRIM_TRIGGER, TRIM_KEEP, PAGE_SIZE) {
            self.unmap_large(cut);
        }
    }

    fn unmap_large(&mut self, (from, to): (usize, usize)) {
        let pages = (to - from) / PAGE_SIZE;
        self.source.unmap(from, pages);
        self.pages_held -= pages;
    }

    /// Gives back every page not needed by a live allocation that can be:
    /// magazines drained, empty slabs and cached spans at the floor unmapped,
    /// the large heap's free top cut to one page.
    pub fn trim(&mut self) {
        self.drain_magazines();
        self.trim_spans(0);
        if let Some(cut) = self.large.trim(0, 0, PAGE_SIZE) {
            self.unmap_large(cut);
        }
    }

    /// The accounting snapshot.
    pub fn stats(&self) -> HeapStats {
        let large_pages = (self.large.brk() - self.lo) / PAGE_SIZE;
        let class_live: [usize; NUM_CLASSES] =
            core::array::from_fn(|c| self.counters.class_out[c] - self.classes[c].mag.len());
        HeapStats {
            live_bytes: self.counters.live_bytes,
            live_allocs: class_live.iter().sum::<usize>() + self.counters.large_live,
            peak_bytes: self.counters.peak_bytes,
            total_allocs: self.counters.total_allocs,
            failures: self.counters.failures,
            class_live,
            pages_held: self.pages_held,
            slab_pages: self.slabs_live * SPAN_PAGES,
            large_pages,
            cached_pages: self.free_spans.len * SPAN_PAGES,
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
        &self.tracker
    }

    /// Checks the whole structure: large-heap blocks, bins and bitmaps; every
    /// slab's free count against its list; magazines holding only free objects
    /// of their class; per-class and total live counts against the slabs and
    /// blocks; pages held = slab + large + cached pages.
    pub fn check_invariants(&self) -> Result<(), &'static str> {
        let (large_used, _) = self.large.check()?;
        if self.large.brk() > self.floor
            || self.floor > self.top
            || !self.floor.is_multiple_of(SLAB_SIZE)
        {
            return Err("large heap and slab region overlap");
        }
        let mut slabs = 0;
        let mut free_spans = 0;
        let mut in_slabs = [0usize; NUM_CLASSES];
        let mut partial = [0usize; NUM_CLASSES];
        let mut base = self.floor;
        while base < self.top {
            let s = base as *const SlabHeader;
            // SAFETY: every span in [floor, top) is mapped with a header.
            if unsafe { slab::is_free_span(s) } {
                free_spans += 1;
            } else {
                // SAFETY: as above.
                let c = unsafe { slab::slab_class(s) }.ok_or("slab header corrupt")?;
                // SAFETY: as above.
                unsafe { slab::check_slab(s, c) }?;
                // SAFETY: as above.
                let free = unsafe { (*s).free_count as usize };
                // SAFETY: as above.
                in_slabs[c] += unsafe { (*s).capacity as usize } - free;
                partial[c] += (free > 0) as usize;
                slabs += 1;
            }
            base += SLAB_SIZE;
        }
        if slabs != self.slabs_live || free_spans != self.free_spans.len {
            return Err("span counts differ from the region");
        }
        // SAFETY: list members lie in the mapped region (checked first).
        self.check_span_list(&self.free_spans, |s| unsafe { slab::is_free_span(s) })?;
        for (c, class) in self.classes.iter().enumerate() {
            if class.partial.len != partial[c] {
                return Err("partial list length differs from slabs with free objects");
            }
            self.check_span_list(&class.partial, |s| {
                // SAFETY: list members lie in the mapped region (checked first).
                unsafe { slab::check_slab(s, c) }.is_ok()
            })?;
            for &p in class.mag.objects() {
                let s = slab::slab_of(p);
                if (s as usize) < self.floor
                    || s as usize >= self.top
                    // SAFETY: the span is in the region, hence mapped.
                    || unsafe { slab::check_slab(s, c) }.is_err()
                {
                    return Err("magazine holds an object outside its class's slabs");
                }
            }
            if in_slabs[c] != self.counters.class_out[c] || class.mag.len() > in_slabs[c] {
                return Err("class live count differs from the slabs");
            }
        }
        if large_used != self.counters.large_live {
            return Err("live allocations differ from the large blocks");
        }
        let region_pages = (self.top - self.floor) / PAGE_SIZE;
        let large_pages = (self.large.brk() - self.lo) / PAGE_SIZE;
        if self.pages_held != region_pages + large_pages {
            return Err("pages held differ from slab + large + cached pages");
        }
        Ok(())
    }

    fn check_span_list(
        &self,
        list: &SpanList,
        ok: impl Fn(*const SlabHeader) -> bool,
    ) -> Result<(), &'static str> {
        let mut s = list.head;
        let mut n = 0;
        while !s.is_null() {
            if (s as usize) < self.floor || s as usize >= self.top || !ok(s) || n >= list.len {
                return Err("span list corrupt");
            }
            n += 1;
            // SAFETY: `s` passed the checks above.
            s = unsafe { (*s).next };
        }
        if n != list.len {
            return Err("span list length wrong");
        }
        Ok(())
    }
}
