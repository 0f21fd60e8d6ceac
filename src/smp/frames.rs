//! Per-CPU frame caches in front of the shared, locked frame allocator.

use x86_64::structures::paging::{FrameAllocator, FrameDeallocator, PhysFrame, Size4KiB};
use x86_64::PhysAddr;

use super::magazine::{CacheStats, Magazine};
use super::pad::CachePadded;
use super::CpuLocal;
use crate::frame::{FrameError, InterruptMask, LockedFrameAllocator};

/// Frames one CPU caches at most.
pub const FRAME_CACHE: usize = 64;
/// Frames moved between a CPU's cache and the shared allocator at once.
pub const FRAME_BATCH: usize = FRAME_CACHE / 2;

struct Slot {
    mag: Magazine<FRAME_CACHE>,
    stats: CacheStats,
}

/// A bounded cache of single 4 KiB frames per CPU in front of a
/// [`LockedFrameAllocator`], so the common allocate/free takes only the
/// running CPU's own (uncontended) lock.
///
/// - Allocate pops from this CPU's cache; when empty, one acquisition of
///   the shared lock takes the frame plus a batch of [`FRAME_BATCH`] - 1
///   (just the frame once the shared allocator is down to a batch per CPU,
///   so caches stop growing under pressure).
/// - Free pushes onto this CPU's cache (any CPU may free any frame); a full
///   cache sends its [`FRAME_BATCH`] oldest frames back under one lock.
/// - When the shared allocator is empty, every CPU's cache is drained into
///   it and the allocation is retried before it fails: no CPU hoards frames
///   while another fails. [`drain_all`](Self::drain_all) does the same on
///   demand (e.g. before a contiguous allocation).
///
/// Runs and huge frames go to the shared allocator directly (`shared()`).
/// See the [module docs](super) for interrupt context.
///
/// ```
/// use kmem::frame::{BitmapFrameAllocator, LockedFrameAllocator, NoInterruptMask};
/// use kmem::memory_map::{MemoryMap, Region, RegionKind};
/// use kmem::smp::{PerCpuFrames, UniCpu};
///
/// let map: MemoryMap = MemoryMap::from_regions([Region::new(0, 0x100_0000, RegionKind::Usable)])?;
/// let storage = vec![0u64; BitmapFrameAllocator::storage_words(&map)].leak();
/// let shared: LockedFrameAllocator<'_, NoInterruptMask> =
///     // SAFETY: the map's memory is this allocator's alone.
///     LockedFrameAllocator::new(unsafe { BitmapFrameAllocator::new(&map, storage) }?);
/// let frames: PerCpuFrames<'_, '_, _, _, 4> = PerCpuFrames::new(&shared, UniCpu::<NoInterruptMask>::new());
/// let f = frames.allocate()?;
/// // SAFETY: `f` came from this allocator and is no longer used.
/// unsafe { frames.free(f) }?;
/// assert_eq!(frames.cpu_stats(0).hits, 0); // the first allocation refilled the cache
/// frames.drain_all();
/// assert_eq!(shared.with(|a| a.stats().used), 0);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub struct PerCpuFrames<'a, 'm, C: CpuLocal, M: InterruptMask, const CPUS: usize> {
    shared: &'a LockedFrameAllocator<'m, M>,
    cpu: C,
    slots: [CachePadded<spin::Mutex<Slot>>; CPUS],
}

impl<'a, 'm, C: CpuLocal, M: InterruptMask, const CPUS: usize> PerCpuFrames<'a, 'm, C, M, CPUS> {
    /// Empty caches for `CPUS` CPUs in front of `shared` (`const`, for statics).
    pub const fn new(shared: &'a LockedFrameAllocator<'m, M>, cpu: C) -> Self {
        Self {
            shared,
            cpu,
            slots: [const {
                CachePadded(spin::Mutex::new(Slot {
                    mag: Magazine::new(),
                    stats: CacheStats::ZERO,
                }))
            }; CPUS],
        }
    }

    /// The shared allocator behind the caches.
    pub fn shared(&self) -> &'a LockedFrameAllocator<'m, M> {
        self.shared
    }

    /// The CPU seam.
    pub fn cpu(&self) -> &C {
        &self.cpu
    }

    #[inline(always)]
    fn slot(&self) -> &spin::Mutex<Slot> {
        &self.slots[self.cpu.cpu_id() % CPUS]
    }

    /// Allocates a 4 KiB frame, from this CPU's cache when it has one.
    ///
    /// # Errors
    /// [`FrameError::OutOfFrames`] when neither the shared allocator nor,
    /// after draining them, any CPU's cache has a frame.
    pub fn allocate(&self) -> Result<PhysFrame, FrameError> {
        self.cpu.without_interrupts(|| {
            self.allocate_cached().or_else(|_| {
                self.drain_slots();
                self.shared.with(|a| a.allocate())
            })
        })
    }

    #[inline]
    fn allocate_cached(&self) -> Result<PhysFrame, FrameError> {
        let mut guard = self.slot().lock();
        let slot = &mut *guard;
        if let Some(f) = slot.mag.pop() {
            slot.stats.hits += 1;
            return Ok(frame_at(f));
        }
        slot.stats.misses += 1;
        // Keep one batch per CPU in the shared allocator before caching more.
        let low_water = (FRAME_BATCH * CPUS) as u64;
        let first = self.shared.with(|a| {
            let first = a.allocate()?;
            if a.free_frames() > low_water {
                for _ in 1..FRAME_BATCH {
                    let Ok(f) = a.allocate() else { break };
                    // The cache was empty: the batch fits.
                    let _ = slot.mag.push(f.start_address().as_u64());
                }
            }
            Ok(first)
        })?;
        if !slot.mag.is_empty() {
            slot.stats.refills += 1;
        }
        Ok(first)
    }

    /// Frees a 4 KiB frame into this CPU's cache (whichever CPU allocated it).
    ///
    /// # Errors
    /// [`FrameError::AlreadyFree`] if the frame is already in this CPU's
    /// cache (changing nothing); the shared allocator's error for a frame of
    /// the batch a full cache sent back (that frame is dropped from the
    /// cache, the others are freed). The shared allocator's checks (outside
    /// the map, reserved, already free) happen when a frame reaches it.
    ///
    /// # Safety
    /// `frame` was allocated from this cache or its shared allocator and is
    /// no longer used (mapped nowhere, reachable by no TLB): a cached frame
    /// is handed out again without the shared allocator's checks.
    pub unsafe fn free(&self, frame: PhysFrame) -> Result<(), FrameError> {
        let addr = frame.start_address().as_u64();
        self.cpu.without_interrupts(|| {
            let mut guard = self.slot().lock();
            let slot = &mut *guard;
            if slot.mag.contains(addr) {
                return Err(FrameError::AlreadyFree { frame });
            }
            if slot.mag.push(addr).is_ok() {
                return Ok(());
            }
            slot.stats.flushes += 1;
            let mut result = Ok(());
            self.shared.with(|a| {
                slot.mag.take_oldest(FRAME_BATCH, |f| {
                    // SAFETY: a cached frame, freed to the cache under `free`'s
                    // contract (no longer used).
                    if let Err(e) = unsafe { a.free(frame_at(f)) } {
                        result = Err(e);
                    }
                });
            });
            // Half the cache was just emptied.
            let _ = slot.mag.push(addr);
            result
        })
    }

    /// Returns every CPU's cached frames to the shared allocator; the
    /// number of frames moved.
    pub fn drain_all(&self) -> usize {
        self.cpu.without_interrupts(|| self.drain_slots())
    }

    fn drain_slots(&self) -> usize {
        let mut moved = 0;
        for s in &self.slots {
            let mut guard = s.lock();
            let slot = &mut *guard;
            if slot.mag.is_empty() {
                continue;
            }
            slot.stats.drains += 1;
            moved += slot.mag.len();
            self.shared.with(|a| {
                // A frame the shared allocator refuses was freed wrongly
                // (see `free`); it leaves the cache either way.
                slot.mag.take_oldest(FRAME_CACHE, |f| {
                    // SAFETY: as in `free`: cached frames are unused.
                    let _ = unsafe { a.free(frame_at(f)) };
                });
            });
        }
        moved
    }

    /// The counters of CPU `cpu`'s cache (`cpu` wraps around `CPUS`).
    pub fn cpu_stats(&self, cpu: usize) -> CacheStats {
        self.cpu.without_interrupts(|| {
            let slot = self.slots[cpu % CPUS].lock();
            CacheStats {
                cached: slot.mag.len() as u64,
                ..slot.stats
            }
        })
    }

    /// The counters summed over all CPUs.
    pub fn stats(&self) -> CacheStats {
        let mut total = CacheStats::default();
        (0..CPUS).for_each(|c| total.add(&self.cpu_stats(c)));
        total
    }
}

fn frame_at(addr: u64) -> PhysFrame {
    PhysFrame::containing_address(PhysAddr::new(addr))
}

// SAFETY: every frame handed out is either fresh from the shared allocator
// (whose impl makes the same promise) or was freed to a cache, which under
// `free`'s contract means no longer used; each cached frame is popped once.
unsafe impl<C: CpuLocal, M: InterruptMask, const CPUS: usize> FrameAllocator<Size4KiB>
    for &PerCpuFrames<'_, '_, C, M, CPUS>
{
    fn allocate_frame(&mut self) -> Option<PhysFrame> {
        self.allocate().ok()
    }
}

impl<C: CpuLocal, M: InterruptMask, const CPUS: usize> FrameDeallocator<Size4KiB>
    for &PerCpuFrames<'_, '_, C, M, CPUS>
{
    /// Frees into this CPU's cache; an invalid free found then or later is
    /// ignored (use [`PerCpuFrames::free`] to see it).
    unsafe fn deallocate_frame(&mut self, frame: PhysFrame) {
        // SAFETY: the trait's contract (unused, allocated by this allocator) is `free`'s.
        let _ = unsafe { self.free(frame) };
    }
}
