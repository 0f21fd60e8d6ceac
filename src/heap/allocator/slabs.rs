//! The slab region: small objects through per-class magazines, slabs made
//! from spans mapped downward from the top, and empty spans cached, then
//! unmapped at the floor.

use super::{Heap, SPAN_PAGES};
use crate::heap::magazine::MAG_CAP;
use crate::heap::page_source::PageSource;
use crate::heap::size_class::{CLASS_SIZES, NUM_CLASSES};
use crate::heap::slab::{self, SlabHeader, SLAB_SIZE};
use core::ptr::NonNull;

/// Free slab spans cached before unmapping starts...
const SPAN_CACHE_HIGH: usize = 16;
/// ...and how many stay cached after.
const SPAN_CACHE_LOW: usize = 8;

impl<P: PageSource> Heap<P> {
    #[inline(always)]
    pub(super) fn allocate_small(&mut self, class: usize) -> Option<NonNull<u8>> {
        let object = match self.classes[class].mag.pop() {
            Some(object) => object,
            None => {
                self.refill(class)?;
                self.classes[class].mag.pop()?
            }
        };
        // SAFETY: the object is free and `CLASS_SIZES[class]` bytes long.
        unsafe { self.hooks.on_small_reused(object, CLASS_SIZES[class]) };
        // SAFETY: magazine entries are non-null objects.
        Some(unsafe { NonNull::new_unchecked(object) })
    }

    /// Moves up to half a magazine of objects from the class's slabs.
    #[cold]
    fn refill(&mut self, class: usize) -> Option<()> {
        let size = CLASS_SIZES[class];
        while self.classes[class].mag.len() < MAG_CAP / 2 {
            let mut slab = self.classes[class].partial.head;
            if slab.is_null() {
                if !self.classes[class].mag.is_empty() {
                    break;
                }
                slab = self.new_slab(class)?;
            }
            let entry = &mut self.classes[class];
            // SAFETY: `slab` heads the partial list, so it is a live slab of
            // class `class`; the `n` objects pushed fill the magazine to
            // half at most, so it is never full before a push.
            unsafe {
                let n = (MAG_CAP / 2 - entry.mag.len()).min((*slab).free_count as usize);
                for _ in 0..n {
                    entry.mag.push(slab::pop(slab, size));
                }
                entry.out += n;
                if (*slab).free_count == 0 {
                    entry.partial.remove(slab);
                }
            }
        }
        Some(())
    }

    fn new_slab(&mut self, class: usize) -> Option<*mut SlabHeader> {
        let span = self.get_span()?;
        // SAFETY: the span is mapped, aligned and unused.
        let slab = unsafe { slab::init_slab(span, class) };
        let (capacity, first) = slab::layout_of(class);
        // SAFETY: the objects lie inside the mapped span, unused.
        unsafe {
            self.hooks
                .on_new_slab(span.add(first), capacity * CLASS_SIZES[class])
        };
        // SAFETY: a fresh slab is in no list.
        unsafe { self.classes[class].partial.push(slab) };
        self.slabs_live += 1;
        Some(slab)
    }

    /// Gives the slab object `ptr` of `class` back, to its magazine.
    ///
    /// # Safety
    /// `ptr` must be a live object of a slab of `class`.
    #[inline(always)]
    pub(super) unsafe fn deallocate_small(&mut self, ptr: NonNull<u8>, class: usize) {
        // SAFETY: the object is ours again.
        unsafe { self.hooks.on_small_freed(ptr, CLASS_SIZES[class]) };
        if self.classes[class].mag.is_full() {
            self.flush(class, MAG_CAP / 2);
        }
        // SAFETY: a full magazine was just flushed to half.
        unsafe { self.classes[class].mag.push(ptr.as_ptr()) };
    }

    /// Returns the `n` oldest magazine objects of `class` to their slabs.
    #[cold]
    fn flush(&mut self, class: usize, n: usize) {
        let mut mag = core::mem::take(&mut self.classes[class].mag);
        self.classes[class].out -= n.min(mag.len());
        mag.drain_oldest(n, |object| {
            let slab = slab::slab_of(object);
            let entry = &mut self.classes[class];
            // SAFETY: `object` is a free object of `class`, so `slab` is its
            // live slab.
            unsafe {
                let free = slab::push(slab, object);
                if free == 1 {
                    entry.partial.push(slab);
                } else if free == (*slab).capacity && entry.partial.len > 1 {
                    entry.partial.remove(slab);
                    self.release_span(slab);
                }
            }
        });
        self.classes[class].mag = mag;
    }

    /// A free slab span (see [`Heap::try_get_span`]), reclaiming if need be.
    fn get_span(&mut self) -> Option<*mut u8> {
        self.try_get_span()
            .or_else(|| self.after_reclaim(Self::try_get_span))
    }

    /// A free slab span: cached, or newly mapped below the floor.
    fn try_get_span(&mut self) -> Option<*mut u8> {
        let span = self.free_spans.head;
        if !span.is_null() {
            // SAFETY: `span` is in the free span list.
            unsafe { self.free_spans.remove(span) };
            return Some(span.cast());
        }
        let below = self.floor - SLAB_SIZE;
        if below < self.large.brk() || self.source.map(below, SPAN_PAGES).is_err() {
            return None;
        }
        self.floor = below;
        self.stats.pages_held += SPAN_PAGES;
        Some(below as *mut u8)
    }

    /// Turns the empty slab `slab`, in no list, into a cached free span.
    fn release_span(&mut self, slab: *mut SlabHeader) {
        self.slabs_live -= 1;
        // SAFETY: the span is mapped and no longer used by any slab.
        unsafe {
            let span = slab::init_free_span(slab.cast());
            self.free_spans.push(span);
        }
        if self.free_spans.len > SPAN_CACHE_HIGH {
            self.trim_spans(SPAN_CACHE_LOW);
        }
    }

    /// Unmaps free spans at the floor while more than `keep` are cached.
    pub(super) fn trim_spans(&mut self, keep: usize) {
        while self.floor < self.top && self.free_spans.len > keep {
            let span = self.floor as *mut SlabHeader;
            // SAFETY: every span in [floor, top) is mapped and has a header.
            if !unsafe { slab::is_free_span(span) } {
                break;
            }
            // SAFETY: free spans are in the free list.
            unsafe { self.free_spans.remove(span) };
            // SAFETY: the span is free (checked above) and out of the free
            // list: no object lives in its pages.
            unsafe { self.source.unmap(self.floor, SPAN_PAGES) };
            self.stats.pages_held -= SPAN_PAGES;
            self.floor += SLAB_SIZE;
        }
    }

    /// Empties every magazine into the slabs and releases empty slabs.
    pub(super) fn drain_magazines(&mut self) {
        for class in 0..NUM_CLASSES {
            self.flush(class, MAG_CAP);
            let mut slab = self.classes[class].partial.head;
            while !slab.is_null() {
                // SAFETY: walking the partial list of live slabs.
                let (next, empty) =
                    unsafe { ((*slab).next, (*slab).free_count == (*slab).capacity) };
                if empty {
                    // SAFETY: `slab` is in this list.
                    unsafe { self.classes[class].partial.remove(slab) };
                    self.release_span(slab);
                }
                slab = next;
            }
        }
    }
}
