//! The heap's tracking hooks, one call per event the tracker watches. With
//! feature `tracking` they forward to the [`Tracker`](super::tracking::Tracker)
//! and poison freed memory; without it `Hooks` is empty and every hook
//! inlines to nothing, so the heap's own code carries no `cfg`.

use super::large::Large;
use super::page_source::PageSource;
use core::alloc::Layout;
use core::ptr::NonNull;

#[cfg(not(feature = "tracking"))]
pub(crate) use off::Hooks;
#[cfg(feature = "tracking")]
pub(crate) use on::Hooks;

#[cfg(not(feature = "tracking"))]
mod off {
    use super::*;

    /// No tracking: nothing to record, nothing to refuse.
    pub(crate) struct Hooks;

    impl Hooks {
        /// Whether the hooks watch every operation, so that the inline fast
        /// paths (which call none) must not be taken.
        pub(crate) const ACTIVE: bool = false;

        /// The top of the heap's own range: all of it.
        #[inline(always)]
        pub(crate) const fn heap_top(_lo: usize, top: usize) -> usize {
            top
        }

        /// Writes the hooks' state at `slot`.
        ///
        /// # Safety
        /// `slot` must be valid for writes of `Hooks` and aligned.
        #[inline(always)]
        pub(crate) unsafe fn init_at(slot: *mut Self, _lo: usize, _top: usize) {
            // SAFETY: the caller gives a writable, aligned slot.
            unsafe { slot.write(Self) }
        }

        #[inline(always)]
        pub(crate) fn on_allocate<P: PageSource>(&mut self, _: NonNull<u8>, _: Layout, _: &mut P) {}

        /// Whether the deallocation may go ahead.
        #[inline(always)]
        pub(crate) fn on_deallocate(&mut self, _: NonNull<u8>, _: Layout) -> bool {
            true
        }

        /// Whether the reallocation may go ahead.
        #[inline(always)]
        pub(crate) fn on_reallocate(&mut self, _: NonNull<u8>, _: Layout) -> bool {
            true
        }

        #[inline(always)]
        pub(crate) fn on_resize(&mut self, _: NonNull<u8>, _: usize) {}

        #[inline(always)]
        pub(crate) fn on_move<P: PageSource>(
            &mut self,
            _: NonNull<u8>,
            _: NonNull<u8>,
            _: usize,
            _: &mut P,
        ) {
        }

        /// # Safety
        /// `objects` must be `bytes` bytes of a new slab's unused objects.
        #[inline(always)]
        pub(crate) unsafe fn on_new_slab(&mut self, _objects: *mut u8, _bytes: usize) {}

        /// # Safety
        /// `object` must be a slab object of `size` bytes that was just freed.
        #[inline(always)]
        pub(crate) unsafe fn on_small_freed(&mut self, _object: NonNull<u8>, _size: usize) {}

        /// # Safety
        /// `object` must be a free slab object of `size` bytes being handed out.
        #[inline(always)]
        pub(crate) unsafe fn on_small_reused(&mut self, _object: *mut u8, _size: usize) {}

        /// # Safety
        /// `ptr` must be a live large payload of `large` that is being freed.
        #[inline(always)]
        pub(crate) unsafe fn on_large_freed(&mut self, _large: &Large, _ptr: NonNull<u8>) {}
    }
}

#[cfg(feature = "tracking")]
mod on {
    use super::*;
    use crate::heap::tracking::{Tracker, POISON};
    use core::ptr::addr_of_mut;

    /// The tracker, and poison over freed memory.
    pub(crate) struct Hooks {
        tracker: Tracker,
    }

    impl Hooks {
        /// Whether the hooks watch every operation, so that the inline fast
        /// paths (which call none) must not be taken.
        pub(crate) const ACTIVE: bool = true;

        /// The top of the heap's own range: the tracker's live bitmap takes
        /// the top of the range.
        pub(crate) const fn heap_top(lo: usize, top: usize) -> usize {
            Tracker::heap_top(lo, top)
        }

        /// Writes an empty tracker for the heap range `[lo, top)` at `slot`.
        ///
        /// # Safety
        /// As [`Tracker::init_at`].
        pub(crate) unsafe fn init_at(slot: *mut Self, lo: usize, top: usize) {
            // SAFETY: forwarded from the caller.
            unsafe { Tracker::init_at(addr_of_mut!((*slot).tracker), lo, top) }
        }

        /// The tracker: leak report and caught misuse.
        pub(crate) fn tracker(&self) -> &Tracker {
            &self.tracker
        }

        pub(crate) fn on_allocate<P: PageSource>(
            &mut self,
            ptr: NonNull<u8>,
            layout: Layout,
            source: &mut P,
        ) {
            self.tracker
                .on_allocate(ptr.as_ptr() as usize, layout, source);
        }

        /// Whether the deallocation may go ahead (a bad one is reported
        /// and refused).
        pub(crate) fn on_deallocate(&mut self, ptr: NonNull<u8>, layout: Layout) -> bool {
            self.tracker
                .on_deallocate(ptr.as_ptr() as usize, layout)
                .is_ok()
        }

        /// Whether the reallocation may go ahead (a bad one is reported
        /// and refused).
        pub(crate) fn on_reallocate(&mut self, ptr: NonNull<u8>, layout: Layout) -> bool {
            self.tracker.verify(ptr.as_ptr() as usize, layout).is_ok()
        }

        pub(crate) fn on_resize(&mut self, ptr: NonNull<u8>, new_size: usize) {
            self.tracker.resize(ptr.as_ptr() as usize, new_size);
        }

        pub(crate) fn on_move<P: PageSource>(
            &mut self,
            from: NonNull<u8>,
            to: NonNull<u8>,
            new_size: usize,
            source: &mut P,
        ) {
            self.tracker.moved(
                from.as_ptr() as usize,
                to.as_ptr() as usize,
                new_size,
                source,
            );
        }

        /// Poisons a new slab's objects, so their first use is checked too.
        ///
        /// # Safety
        /// `objects` must be `bytes` bytes of a new slab's unused objects.
        pub(crate) unsafe fn on_new_slab(&mut self, objects: *mut u8, bytes: usize) {
            // SAFETY: the objects lie inside the mapped span (caller).
            unsafe { core::ptr::write_bytes(objects, POISON, bytes) }
        }

        /// # Safety
        /// `object` must be a slab object of `size` bytes that was just freed.
        pub(crate) unsafe fn on_small_freed(&mut self, object: NonNull<u8>, size: usize) {
            // SAFETY: the object is the heap's again (caller).
            unsafe { core::ptr::write_bytes(object.as_ptr(), POISON, size) }
        }

        /// Reports a write after free into `object`.
        ///
        /// # Safety
        /// `object` must be a free slab object of `size` bytes being handed out.
        pub(crate) unsafe fn on_small_reused(&mut self, object: *mut u8, size: usize) {
            // SAFETY: the object is free and `size` bytes long (caller).
            unsafe { self.tracker.check_poison(object, size) }
        }

        /// # Safety
        /// `ptr` must be a live large payload of `large` that is being freed.
        pub(crate) unsafe fn on_large_freed(&mut self, large: &Large, ptr: NonNull<u8>) {
            // SAFETY: the payload is the heap's again (caller).
            unsafe {
                let usable = large.usable(ptr);
                core::ptr::write_bytes(ptr.as_ptr(), POISON, usable)
            }
        }
    }
}
