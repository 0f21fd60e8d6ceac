//! The locked heap: `GlobalAlloc` for `#[global_allocator]`.

use super::{AllocError, Heap, HeapInitError, HeapStats, PageSource};
use core::alloc::{GlobalAlloc, Layout};
use core::mem::MaybeUninit;
use core::ptr::{null_mut, NonNull};
use spin::{Mutex, MutexGuard};

/// A [`Heap`] behind a spin lock, usable as `#[global_allocator]`: starts
/// empty (every allocation fails with null) until [`LockedHeap::init`].
///
/// It is large (about 32 KB; 233 KB with feature `tracking`, whose tracker
/// lives inline): keep it in a `static`, where `empty` is evaluated at
/// compile time, rather than building one on a small stack.
///
/// ```
/// # #[cfg(feature = "testing")]
/// # fn main() -> Result<(), Box<dyn std::error::Error>> {
/// use core::alloc::{GlobalAlloc, Layout};
/// use kmem::heap::LockedHeap;
/// use kmem::testing::arena::ArenaPageSource;
///
/// static HEAP: LockedHeap<ArenaPageSource> = LockedHeap::empty();
///
/// let arena = ArenaPageSource::new(4 << 20);
/// let (start, len) = arena.range();
/// // SAFETY: the arena's range belongs to this heap alone.
/// unsafe { HEAP.init(arena, start, len) }.unwrap();
/// let layout = Layout::from_size_align(24, 4096).unwrap();
/// // SAFETY: the layout is non-zero; the pointer goes back with it.
/// unsafe {
///     let p = HEAP.alloc(layout);
///     assert_eq!(p as usize % 4096, 0);
///     HEAP.dealloc(p, layout);
/// }
/// assert_eq!(HEAP.stats().unwrap().live_allocs, 0);
/// # Ok(())
/// # }
/// # #[cfg(not(feature = "testing"))]
/// # fn main() {}
/// ```
pub struct LockedHeap<P: PageSource> {
    inner: Mutex<HeapSlot<P>>,
}

/// The storage of a [`LockedHeap`]: a heap, or none before
/// [`LockedHeap::init`]. Not an `Option<Heap>` because the heap is built in
/// place here, never on the stack; [`HeapSlot::heap`] and
/// [`HeapSlot::heap_mut`] give it as an `Option`.
pub struct HeapSlot<P: PageSource> {
    ready: bool,
    heap: MaybeUninit<Heap<P>>,
}

impl<P: PageSource> HeapSlot<P> {
    /// The heap, or `None` before [`LockedHeap::init`].
    pub fn heap(&self) -> Option<&Heap<P>> {
        // SAFETY: `ready` is set only after the heap was initialised.
        self.ready.then(|| unsafe { self.heap.assume_init_ref() })
    }

    /// The heap, or `None` before [`LockedHeap::init`].
    pub fn heap_mut(&mut self) -> Option<&mut Heap<P>> {
        // SAFETY: as in `heap`.
        self.ready.then(|| unsafe { self.heap.assume_init_mut() })
    }

    fn clear(&mut self) {
        if core::mem::take(&mut self.ready) {
            // SAFETY: `ready` said the heap was initialised; it is cleared
            // first, so the heap is dropped once.
            unsafe { self.heap.assume_init_drop() };
        }
    }
}

impl<P: PageSource> Drop for HeapSlot<P> {
    fn drop(&mut self) {
        self.clear();
    }
}

impl<P: PageSource> LockedHeap<P> {
    /// A heap with no memory yet, for a `static`.
    pub const fn empty() -> Self {
        Self {
            inner: Mutex::new(HeapSlot {
                ready: false,
                heap: MaybeUninit::uninit(),
            }),
        }
    }

    /// Sets the heap up over `[start, start + len)` fed by `source`
    /// (replacing any previous heap, which must have nothing live).
    ///
    /// The heap is built in place (see [`Heap::init_in_place`]): a small
    /// kernel stack is enough.
    ///
    /// # Safety
    /// As [`Heap::new`].
    pub unsafe fn init(&self, source: P, start: usize, len: usize) -> Result<(), HeapInitError> {
        let mut slot = self.inner.lock();
        slot.clear();
        // SAFETY: forwarded from the caller.
        unsafe { Heap::init_in_place(&mut slot.heap, source, start, len) }?;
        slot.ready = true;
        Ok(())
    }

    /// Locks the heap for direct use (stats, trim, leak report, checks).
    pub fn lock(&self) -> MutexGuard<'_, HeapSlot<P>> {
        self.inner.lock()
    }

    /// The accounting snapshot, if initialised.
    pub fn stats(&self) -> Option<HeapStats> {
        self.inner.lock().heap().map(Heap::stats)
    }
}

// SAFETY: every operation runs under the lock on a heap that upholds the
// `GlobalAlloc` contract (fresh, aligned, non-overlapping blocks; null on failure).
unsafe impl<P: PageSource> GlobalAlloc for LockedHeap<P> {
    #[inline]
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        match self.inner.lock().heap_mut() {
            Some(heap) => heap
                .allocate_ptr(layout)
                .map_or(null_mut(), NonNull::as_ptr),
            None => null_mut(),
        }
    }

    #[inline]
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        if let (Some(heap), Some(ptr)) = (self.inner.lock().heap_mut(), NonNull::new(ptr)) {
            // SAFETY: the caller passes a live block of this heap with its layout.
            unsafe { heap.deallocate(ptr, layout) }
        }
    }

    #[inline]
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        // SAFETY: forwarded.
        let p = unsafe { self.alloc(layout) };
        if !p.is_null() {
            // SAFETY: the block is ours and `layout.size()` bytes long.
            unsafe { p.write_bytes(0, layout.size()) };
        }
        p
    }

    #[inline]
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        let mut guard = self.inner.lock();
        let (Some(heap), Some(ptr)) = (guard.heap_mut(), NonNull::new(ptr)) else {
            return null_mut();
        };
        // SAFETY: the caller passes a live block of this heap with its layout.
        match unsafe { heap.reallocate(ptr, layout, new_size) } {
            Ok(moved) => moved.as_ptr(),
            Err(AllocError::OutOfMemory { .. } | AllocError::BadLayout { .. }) => null_mut(),
        }
    }
}
