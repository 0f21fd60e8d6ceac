//! A `spin` lock around the allocator that interrupt handlers may share.
//!
//! A spin lock taken by code that an interrupt handler interrupts, and then
//! taken again by the handler, deadlocks. So the lock is held only with
//! interrupts masked. How to mask is a type parameter, [`InterruptMask`]:
//! [`X86Interrupts`] (the default) uses `cli`/`sti` through
//! `x86_64::instructions::interrupts::without_interrupts`, which is
//! privileged, so host tests use [`NoInterruptMask`] instead. A type
//! parameter rather than a `cfg` keeps the kernel's choice explicit and lets
//! host tests exercise exactly the same locking code.

use core::marker::PhantomData;
use core::sync::atomic::{AtomicUsize, Ordering};

use x86_64::structures::paging::{FrameAllocator, FrameDeallocator, PageSize, PhysFrame};

use x86_64::VirtAddr;

use super::{BitmapFrameAllocator, FrameError};
use crate::memory_map::MemoryMap;

/// How to keep interrupt handlers out while the lock is held.
pub trait InterruptMask {
    /// Runs `f` with interrupts masked, restoring the previous state after.
    fn without_interrupts<R>(f: impl FnOnce() -> R) -> R;
}

/// Masks interrupts on x86_64 with `cli`/`sti` (ring 0 only).
#[derive(Debug)]
pub enum X86Interrupts {}

impl InterruptMask for X86Interrupts {
    fn without_interrupts<R>(f: impl FnOnce() -> R) -> R {
        x86_64::instructions::interrupts::without_interrupts(f)
    }
}

/// Masks nothing: for host tests, or kernels whose handlers never allocate.
#[derive(Debug)]
pub enum NoInterruptMask {}

impl InterruptMask for NoInterruptMask {
    fn without_interrupts<R>(f: impl FnOnce() -> R) -> R {
        f()
    }
}

/// A [`BitmapFrameAllocator`] behind a spin lock held with interrupts masked.
///
/// ```
/// use kmem::frame::{BitmapFrameAllocator, LockedFrameAllocator, NoInterruptMask};
/// use kmem::memory_map::{MemoryMap, Region, RegionKind};
///
/// static FRAMES: LockedFrameAllocator<'static, NoInterruptMask> =
///     LockedFrameAllocator::new(BitmapFrameAllocator::empty());
///
/// let map: MemoryMap = MemoryMap::from_regions([Region::new(0, 0x10_0000, RegionKind::Usable)])?;
/// let storage = vec![0u64; BitmapFrameAllocator::storage_words(&map)].leak();
/// // SAFETY: the map's memory is this allocator's alone.
/// FRAMES.replace(unsafe { BitmapFrameAllocator::new(&map, storage) }?);
/// let frame = FRAMES.with(|f| f.allocate())?;
/// // SAFETY: allocated above, used by nothing.
/// FRAMES.with(|f| unsafe { f.free(frame) })?;
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Debug)]
pub struct LockedFrameAllocator<'m, M: InterruptMask = X86Interrupts> {
    inner: spin::Mutex<BitmapFrameAllocator<'m>>,
    mask: PhantomData<fn() -> M>,
    /// What to call when an allocation finds no frame (0: nothing).
    on_empty: AtomicUsize,
}

impl<'m, M: InterruptMask> LockedFrameAllocator<'m, M> {
    /// Wraps an allocator (`const`, for statics).
    pub const fn new(allocator: BitmapFrameAllocator<'m>) -> Self {
        Self {
            inner: spin::Mutex::new(allocator),
            mask: PhantomData,
            on_empty: AtomicUsize::new(0),
        }
    }

    /// An allocator with no frames (`const`, for statics), until [`init`](Self::init)
    /// or [`replace`](Self::replace).
    pub const fn empty() -> Self {
        Self::new(BitmapFrameAllocator::empty())
    }

    /// Installs an allocator over `map` whose storage is carved out of `map`'s usable
    /// memory and reached through the direct map at `phys_offset`
    /// ([`BitmapFrameAllocator::init_carved`]). On an error nothing changes.
    ///
    /// # Safety
    /// All RAM must stay mapped read-write at `phys_offset + phys` for `'m`, and the
    /// map's usable memory must be unused (the carved storage is written).
    pub unsafe fn init<const N: usize>(
        &self,
        map: &MemoryMap<N>,
        phys_offset: VirtAddr,
    ) -> Result<(), FrameError> {
        // SAFETY: the caller's promise is `init_carved`'s, with `phys_base` the direct map.
        let allocator =
            unsafe { BitmapFrameAllocator::init_carved(map, phys_offset.as_mut_ptr()) }?;
        self.replace(allocator);
        Ok(())
    }

    /// Runs `f` on the allocator with interrupts masked and the lock held.
    pub fn with<R>(&self, f: impl FnOnce(&mut BitmapFrameAllocator<'m>) -> R) -> R {
        M::without_interrupts(|| f(&mut self.inner.lock()))
    }

    /// Installs `allocator`, returning the previous one.
    pub fn replace(&self, allocator: BitmapFrameAllocator<'m>) -> BitmapFrameAllocator<'m> {
        self.with(|a| core::mem::replace(a, allocator))
    }
}

impl<M: InterruptMask> LockedFrameAllocator<'_, M> {
    /// Registers `refill`, called (without the lock held) when an
    /// allocation through the `FrameAllocator` impl finds no frame; it
    /// returns how many frames it gave back, and the allocation is tried
    /// once more. A kernel with per-CPU caches in front of this allocator
    /// passes `|| CACHE.drain_all()`, so that frames parked in other CPUs'
    /// caches are not reported as out of memory to the users of this
    /// allocator (the mapper, the heap's page source). The caches
    /// themselves allocate through [`with`](Self::with), which never calls it.
    pub fn set_on_empty(&self, refill: fn() -> usize) {
        self.on_empty.store(refill as usize, Ordering::Release);
    }

    fn refill(&self) -> bool {
        match self.on_empty.load(Ordering::Acquire) {
            0 => false,
            f => {
                // SAFETY: a non-zero value was stored from a `fn() -> usize` above.
                let refill = unsafe { core::mem::transmute::<usize, fn() -> usize>(f) };
                refill() > 0
            }
        }
    }
}

// SAFETY: forwards to `BitmapFrameAllocator`'s impl under the lock.
unsafe impl<S: PageSize, M: InterruptMask> FrameAllocator<S> for &LockedFrameAllocator<'_, M> {
    fn allocate_frame(&mut self) -> Option<PhysFrame<S>> {
        self.with(|a| a.allocate_frame())
            .or_else(|| self.refill().then(|| self.with(|a| a.allocate_frame()))?)
    }
}

impl<S: PageSize, M: InterruptMask> FrameDeallocator<S> for &LockedFrameAllocator<'_, M> {
    unsafe fn deallocate_frame(&mut self, frame: PhysFrame<S>) {
        // SAFETY: the caller's guarantee for `frame` carries over unchanged.
        self.with(|a| unsafe { a.deallocate_frame(frame) })
    }
}
