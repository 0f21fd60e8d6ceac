//! Per-CPU size-class caches in front of any `GlobalAlloc`.

use core::alloc::{GlobalAlloc, Layout};
use core::ptr::{self, null_mut};

use super::magazine::CacheStats;
use super::pad::CachePadded;
use super::CpuLocal;
use crate::heap::{class_align, class_of, CLASS_SIZES, NUM_CLASSES};

/// Bytes one CPU caches per size class, roughly: see [`class_cache_limit`].
pub const HEAP_CACHE_BYTES: usize = 4096;

/// Blocks of size class `class` one CPU caches at most:
/// [`HEAP_CACHE_BYTES`] worth, between 16 and 64 blocks (at most
/// 144 KiB per CPU over all classes).
pub const fn class_cache_limit(class: usize) -> usize {
    let n = HEAP_CACHE_BYTES / CLASS_SIZES[class];
    if n < 16 {
        16
    } else if n > 64 {
        64
    } else {
        n
    }
}

/// [`class_cache_limit`] of every class, computed once (no division on
/// the free path).
static LIMITS: [u32; NUM_CLASSES] = {
    let mut t = [0; NUM_CLASSES];
    let mut c = 0;
    while c < NUM_CLASSES {
        t[c] = class_cache_limit(c) as u32;
        c += 1;
    }
    t
};

/// The most blocks one refill obtains: half the largest class limit.
const MAX_BATCH: usize = 32;
const _: () = assert!(class_cache_limit(0) / 2 <= MAX_BATCH && 64 / 2 == MAX_BATCH);

/// One CPU's free lists: singly linked through the first word of each
/// cached block, so caching needs no memory of its own.
struct Lists {
    heads: [*mut u8; NUM_CLASSES],
    counts: [u32; NUM_CLASSES],
    stats: CacheStats,
}

// SAFETY: the blocks in the lists belong to the cache, not to a thread;
// they are reached only under the slot's lock.
unsafe impl Send for Lists {}

impl Lists {
    #[inline(always)]
    fn pop(&mut self, class: usize) -> Option<*mut u8> {
        let p = self.heads[class];
        if p.is_null() {
            return None;
        }
        // SAFETY: `p` is a cached block of this class: at least 8 bytes,
        // 8-aligned, its first word the next link, written by `push`.
        self.heads[class] = unsafe { p.cast::<*mut u8>().read() };
        self.counts[class] -= 1;
        Some(p)
    }

    /// # Safety
    /// `p` is a block of `class`'s canonical layout that nothing else uses.
    #[inline(always)]
    unsafe fn push(&mut self, class: usize, p: *mut u8) {
        // SAFETY: the caller hands over the block, at least 8 bytes, 8-aligned.
        unsafe { p.cast::<*mut u8>().write(self.heads[class]) };
        self.heads[class] = p;
        self.counts[class] += 1;
    }

    /// Detaches all but the first `keep` blocks of `class`.
    fn split_off(&mut self, class: usize, keep: usize) -> *mut u8 {
        if keep == 0 {
            self.counts[class] = 0;
            return core::mem::replace(&mut self.heads[class], null_mut());
        }
        let mut last = self.heads[class];
        for _ in 1..keep.min(self.counts[class] as usize) {
            // SAFETY: `last` is a cached block of this list (see `pop`).
            last = unsafe { last.cast::<*mut u8>().read() };
        }
        if last.is_null() {
            return null_mut();
        }
        // SAFETY: as above; the list is cut after `last`.
        let rest = unsafe { last.cast::<*mut u8>().replace(null_mut()) };
        self.counts[class] = self.counts[class].min(keep as u32);
        rest
    }

    fn cached(&self) -> u64 {
        self.counts.iter().map(|&c| u64::from(c)).sum()
    }
}

/// The layout every block of `class` is allocated and freed with.
#[inline(always)]
fn canonical(class: usize) -> Layout {
    // SAFETY: class sizes are non-zero multiples of their power-of-two alignment.
    unsafe { Layout::from_size_align_unchecked(CLASS_SIZES[class], class_align(class)) }
}

/// Per-CPU free lists for kmem's size classes (up to
/// [`MAX_SMALL`](crate::heap::MAX_SMALL) bytes) in front of any
/// `GlobalAlloc` `A`; larger requests go straight to `A`.
///
/// - A small block is obtained from `A` with its class's canonical layout
///   (class size, class alignment) and returned to `A` with that same
///   layout, whatever the caller's layout was: blocks of a class are
///   interchangeable, so a block freed on another CPU (a remote free)
///   simply joins that CPU's list, and any `A` sees matching calls.
/// - Alloc pops this CPU's list; an empty list is refilled with half its
///   limit ([`class_cache_limit`]). Free pushes; a full list keeps its
///   hottest half and returns the rest to `A`.
/// - When `A` fails, every CPU's lists are drained into `A` and the
///   request is retried before it fails; [`drain_all`](Self::drain_all)
///   does the same on demand (memory pressure, before trimming `A`).
///
/// Locks: this CPU's slot, then `A`'s own lock (and whatever `A`'s page
/// source takes). See the [module docs](super) for interrupt context.
///
/// ```
/// # #[cfg(feature = "testing")]
/// # fn main() -> Result<(), Box<dyn std::error::Error>> {
/// use core::alloc::{GlobalAlloc, Layout};
/// use kmem::frame::NoInterruptMask;
/// use kmem::heap::LockedHeap;
/// use kmem::smp::{PerCpuHeap, UniCpu};
/// use kmem::testing::arena::ArenaPageSource;
///
/// static HEAP: PerCpuHeap<LockedHeap<ArenaPageSource>, UniCpu<NoInterruptMask>, 8> =
///     PerCpuHeap::new(LockedHeap::empty(), UniCpu::new());
///
/// let arena = ArenaPageSource::new(1 << 20);
/// let (start, len) = arena.range();
/// // SAFETY: the arena's range belongs to this heap alone.
/// unsafe { HEAP.inner().init(arena, start, len) }.unwrap();
/// let layout = Layout::new::<[u64; 3]>();
/// // SAFETY: a non-zero layout; the block goes back with it.
/// unsafe { HEAP.dealloc(HEAP.alloc(layout), layout) };
/// HEAP.drain_all();
/// assert_eq!(HEAP.inner().stats().unwrap().live_allocs, 0);
/// # Ok(())
/// # }
/// # #[cfg(not(feature = "testing"))]
/// # fn main() {}
/// ```
pub struct PerCpuHeap<A: GlobalAlloc, C: CpuLocal, const CPUS: usize> {
    inner: A,
    cpu: C,
    slots: [CachePadded<spin::Mutex<Lists>>; CPUS],
}

impl<A: GlobalAlloc, C: CpuLocal, const CPUS: usize> PerCpuHeap<A, C, CPUS> {
    /// Empty caches for `CPUS` CPUs in front of `inner` (`const`, for statics).
    pub const fn new(inner: A, cpu: C) -> Self {
        Self {
            inner,
            cpu,
            slots: [const {
                CachePadded(spin::Mutex::new(Lists {
                    heads: [null_mut(); NUM_CLASSES],
                    counts: [0; NUM_CLASSES],
                    stats: CacheStats::ZERO,
                }))
            }; CPUS],
        }
    }

    /// The allocator behind the caches (to initialise it, read its stats,
    /// trim it after [`drain_all`](Self::drain_all)).
    pub fn inner(&self) -> &A {
        &self.inner
    }

    /// The CPU seam.
    pub fn cpu(&self) -> &C {
        &self.cpu
    }

    #[inline(always)]
    fn slot(&self) -> &spin::Mutex<Lists> {
        &self.slots[self.cpu.cpu_id() % CPUS]
    }

    /// Returns every CPU's cached blocks to the inner allocator; the number
    /// of blocks moved.
    pub fn drain_all(&self) -> usize {
        self.cpu.without_interrupts(|| self.drain_slots())
    }

    fn drain_slots(&self) -> usize {
        let mut moved = 0;
        for s in &self.slots {
            // Detach under the slot lock, give back after it: a slot lock is
            // never held across a call into the inner allocator, so waiting
            // for one never waits for anything else (a shootdown, say).
            let mut chains = [null_mut(); NUM_CLASSES];
            {
                let mut lists = s.lock();
                let n = lists.cached();
                if n == 0 {
                    continue;
                }
                lists.stats.drains += 1;
                moved += n as usize;
                for (class, chain) in chains.iter_mut().enumerate() {
                    *chain = lists.split_off(class, 0);
                }
            }
            for (class, chain) in chains.into_iter().enumerate() {
                // SAFETY: the chain was detached from the lists: cached
                // blocks of `class`, owned by nobody else.
                unsafe { self.release_chain(class, chain) };
            }
        }
        moved
    }

    /// Returns a detached chain of cached blocks of `class` to the inner allocator.
    ///
    /// # Safety
    /// `chain` is null or a null-terminated list of blocks of `class`'s
    /// canonical layout from the inner allocator, used by nothing else.
    unsafe fn release_chain(&self, class: usize, mut chain: *mut u8) {
        while !chain.is_null() {
            // SAFETY: `chain` is a block of the list (read its link first).
            let next = unsafe { chain.cast::<*mut u8>().read() };
            // SAFETY: obtained from the inner allocator with this very layout.
            unsafe { self.inner.dealloc(chain, canonical(class)) };
            chain = next;
        }
    }

    /// Allocates a block of `class` on a miss: one for the caller plus a
    /// batch for this CPU's list, obtained before the slot lock is taken
    /// again (the lock is never held across a call into the inner allocator).
    #[cold]
    fn refill(&self, class: usize) -> *mut u8 {
        let layout = canonical(class);
        // SAFETY: a non-zero layout.
        let first = unsafe { self.inner.alloc(layout) };
        if first.is_null() {
            return first;
        }
        let batch = LIMITS[class] as usize / 2;
        let mut fresh = [null_mut(); MAX_BATCH];
        let mut got = 0;
        while got < batch.min(MAX_BATCH) {
            // SAFETY: as above.
            let p = unsafe { self.inner.alloc(layout) };
            if p.is_null() {
                break;
            }
            fresh[got] = p;
            got += 1;
        }
        if got > 0 {
            let mut lists = self.slot().lock();
            for &p in &fresh[..got] {
                // SAFETY: a fresh block of the canonical layout.
                unsafe { lists.push(class, p) };
            }
            lists.stats.refills += 1;
        }
        first
    }

    #[inline]
    fn alloc_small(&self, class: usize) -> *mut u8 {
        self.cpu.without_interrupts(|| {
            {
                let mut lists = self.slot().lock();
                if let Some(p) = lists.pop(class) {
                    lists.stats.hits += 1;
                    return p;
                }
                lists.stats.misses += 1;
            }
            let p = self.refill(class);
            if !p.is_null() {
                return p;
            }
            self.drain_slots();
            // SAFETY: a non-zero layout.
            unsafe { self.inner.alloc(canonical(class)) }
        })
    }

    /// # Safety
    /// `p` is a live block of `class` from this cache.
    #[inline]
    unsafe fn dealloc_small(&self, p: *mut u8, class: usize) {
        self.cpu.without_interrupts(|| {
            let rest = {
                let mut lists = self.slot().lock();
                // Freeing the block just freed would make it its own successor
                // and hand it out forever: refuse it (a caller bug, caught
                // where it costs one compare).
                assert!(
                    lists.heads[class] != p,
                    "double free of {p:p} (class {class})"
                );
                // SAFETY: the caller gives the block up.
                unsafe { lists.push(class, p) };
                let limit = LIMITS[class];
                if lists.counts[class] <= limit {
                    return;
                }
                lists.stats.flushes += 1;
                lists.split_off(class, limit as usize / 2)
            };
            // SAFETY: detached cached blocks of `class`, given back after
            // the slot lock (never held across the inner allocator).
            unsafe { self.release_chain(class, rest) };
        })
    }

    /// Allocates a large block from the inner allocator, draining the caches
    /// and retrying once if it fails. Interrupts stay masked while the inner
    /// allocator runs, as on the small path: a handler on this CPU must not
    /// find the inner allocator's lock held by the code it interrupted.
    fn alloc_large(&self, layout: Layout, zeroed: bool) -> *mut u8 {
        let once = || {
            // SAFETY: the caller of `alloc` passes a non-zero layout.
            unsafe {
                if zeroed {
                    self.inner.alloc_zeroed(layout)
                } else {
                    self.inner.alloc(layout)
                }
            }
        };
        self.cpu.without_interrupts(|| {
            let p = once();
            if !p.is_null() {
                return p;
            }
            self.drain_slots();
            once()
        })
    }

    /// The counters of CPU `cpu`'s cache (`cpu` wraps around `CPUS`).
    pub fn cpu_stats(&self, cpu: usize) -> CacheStats {
        self.cpu.without_interrupts(|| {
            let lists = self.slots[cpu % CPUS].lock();
            CacheStats {
                cached: lists.cached(),
                ..lists.stats
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

// SAFETY: a small block is a block of its class's canonical layout (at least
// the size and alignment asked for, by `class_of`) that the inner allocator
// handed out and that sits in no list while live; a block is put in a list
// only when freed, with the layout that maps to the same class. Large
// requests are the inner allocator's.
unsafe impl<A: GlobalAlloc, C: CpuLocal, const CPUS: usize> GlobalAlloc for PerCpuHeap<A, C, CPUS> {
    #[inline]
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        match class_of(layout) {
            Some(class) => self.alloc_small(class),
            None => self.alloc_large(layout, false),
        }
    }

    #[inline]
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        match class_of(layout) {
            // SAFETY: a live block of this class (the caller's contract).
            Some(class) => unsafe { self.dealloc_small(ptr, class) },
            // SAFETY: forwarded; large blocks came from the inner allocator.
            // Interrupts masked as in `alloc_large`.
            None => self
                .cpu
                .without_interrupts(|| unsafe { self.inner.dealloc(ptr, layout) }),
        }
    }

    #[inline]
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        match class_of(layout) {
            Some(class) => {
                let p = self.alloc_small(class);
                if !p.is_null() {
                    // SAFETY: the block is ours and at least `layout.size()` long.
                    unsafe { p.write_bytes(0, layout.size()) };
                }
                p
            }
            None => self.alloc_large(layout, true),
        }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        // SAFETY: the caller guarantees `new_size`, rounded up to `align`, fits `isize`.
        let new = unsafe { Layout::from_size_align_unchecked(new_size, layout.align()) };
        match (class_of(layout), class_of(new)) {
            (Some(a), Some(b)) if a == b => ptr,
            (None, None) => self.cpu.without_interrupts(|| {
                // SAFETY: forwarded: a large block of the inner allocator.
                let p = unsafe { self.inner.realloc(ptr, layout, new_size) };
                if !p.is_null() {
                    return p;
                }
                self.drain_slots();
                // SAFETY: as above; the failed call left the block as it was.
                unsafe { self.inner.realloc(ptr, layout, new_size) }
            }),
            _ => {
                // SAFETY: a non-zero layout (the caller's contract).
                let p = unsafe { self.alloc(new) };
                if !p.is_null() {
                    // SAFETY: both blocks are live, distinct, and at least
                    // this long; the old one goes back with its layout.
                    unsafe {
                        ptr::copy_nonoverlapping(ptr, p, layout.size().min(new_size));
                        self.dealloc(ptr, layout);
                    }
                }
                p
            }
        }
    }
}
