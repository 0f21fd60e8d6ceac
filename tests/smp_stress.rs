//! The per-CPU caches under `std::thread` stress: every object and frame
//! carries a checksum written at allocation and checked at free, a share
//! of them is freed by another thread than the one that allocated it
//! (remote frees), and at the end everything is back in the inner
//! allocator.
//!
//! Run: `cargo test --test smp_stress`; `KMEM_SMP_THREADS=<n>` sets the
//! thread count (default 2), `KMEM_SMP_OPS=<n>` the operations per thread.

use core::alloc::{GlobalAlloc, Layout};
use std::sync::Mutex;

use kmem::frame::{BitmapFrameAllocator, FrameError, LockedFrameAllocator, NoInterruptMask};
use kmem::heap::LockedHeap;
use kmem::memory_map::{MemoryMap, Region, RegionKind};
use kmem::smp::{PerCpuFrames, PerCpuHeap, FRAME_CACHE};
use kmem::testing::arena::ArenaPageSource;
use kmem::testing::phys_mem::EmulatedMemory;
use kmem::testing::rng::Rng;
use kmem::testing::smp::HostCpu;
use x86_64::structures::paging::PhysFrame;

fn env(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn threads() -> usize {
    env("KMEM_SMP_THREADS", 2).max(1)
}

fn ops() -> usize {
    env("KMEM_SMP_OPS", 20_000)
}

// ------------------------------------------------------------------ heap

type Heap = PerCpuHeap<LockedHeap<ArenaPageSource>, HostCpu, 4>;

#[derive(Debug)]
struct Obj {
    addr: usize,
    layout: Layout,
    tag: u64,
}

fn pattern(tag: u64, i: usize) -> u8 {
    (tag as u8).wrapping_add(i as u8).wrapping_mul(31) ^ (tag >> 8) as u8
}

fn fill(addr: usize, size: usize, tag: u64) {
    let p = addr as *mut u8;
    for i in 0..size {
        // SAFETY: a live block of at least `size` bytes, owned by the test.
        unsafe { p.add(i).write(pattern(tag, i)) };
    }
}

fn verify(o: &Obj) {
    let p = o.addr as *const u8;
    for i in 0..o.layout.size() {
        // SAFETY: as in `fill`.
        let got = unsafe { p.add(i).read() };
        assert_eq!(got, pattern(o.tag, i), "object {o:?} corrupted at byte {i}");
    }
}

/// On the heap of the process: with feature `tracking` a `LockedHeap` is
/// 233 KB, and debug builds copy it through the stack.
fn new_heap() -> Box<Heap> {
    let heap = Box::new(Heap::new(LockedHeap::empty(), HostCpu));
    let arena = ArenaPageSource::new(32 << 20);
    let (start, len) = arena.range();
    // SAFETY: the arena's range belongs to this heap alone.
    unsafe { heap.inner().init(arena, start, len) }.unwrap();
    heap
}

fn random_layout(rng: &mut Rng) -> Layout {
    let size = match rng.below(16) {
        0 => 1025 + rng.below(4096),
        1..=3 => 1 + rng.below(1024),
        _ => 1 + rng.below(256),
    };
    let align = 1 << rng.below(8).saturating_sub(3).min(6);
    Layout::from_size_align(size, align).unwrap()
}

fn heap_worker(heap: &Heap, mailbox: &Mutex<Vec<Obj>>, cpu: usize, ops: usize) {
    HostCpu::pin(cpu);
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15 ^ ((cpu as u64 + 1) * 0x1234_5678));
    let mut live: Vec<Obj> = Vec::new();
    for n in 0..ops {
        let roll = rng.below(16);
        if roll < 8 || live.is_empty() {
            let layout = random_layout(&mut rng);
            // SAFETY: a non-zero layout.
            let p = unsafe { heap.alloc(layout) };
            assert!(!p.is_null(), "out of memory at op {n}");
            assert_eq!(p as usize % layout.align(), 0);
            let tag = (cpu as u64) << 40 | n as u64;
            fill(p as usize, layout.size(), tag);
            live.push(Obj {
                addr: p as usize,
                layout,
                tag,
            });
        } else if roll < 13 {
            let o = live.swap_remove(rng.below(live.len()));
            verify(&o);
            // SAFETY: a live block with its layout.
            unsafe { heap.dealloc(o.addr as *mut u8, o.layout) };
        } else if roll < 14 {
            // Reallocate, keeping the common prefix.
            let i = rng.below(live.len());
            let o = &mut live[i];
            verify(o);
            let new = random_layout(&mut rng);
            let new = Layout::from_size_align(new.size(), o.layout.align()).unwrap();
            // SAFETY: a live block with its layout; a non-zero new size.
            let p = unsafe { heap.realloc(o.addr as *mut u8, o.layout, new.size()) };
            assert!(!p.is_null());
            let kept = o.layout.size().min(new.size());
            for k in 0..kept {
                // SAFETY: the new block holds at least `kept` bytes.
                assert_eq!(unsafe { (p as *const u8).add(k).read() }, pattern(o.tag, k));
            }
            fill(p as usize, new.size(), o.tag);
            o.addr = p as usize;
            o.layout = new;
        } else if roll < 15 {
            // Hand an object to another thread.
            let o = live.swap_remove(rng.below(live.len()));
            mailbox.lock().unwrap().push(o);
        } else if let Some(o) = mailbox.lock().unwrap().pop() {
            // A remote free (possibly of our own object: also fine).
            verify(&o);
            // SAFETY: a live block with its layout, handed over by its owner.
            unsafe { heap.dealloc(o.addr as *mut u8, o.layout) };
        }
    }
    for o in live {
        verify(&o);
        // SAFETY: a live block with its layout.
        unsafe { heap.dealloc(o.addr as *mut u8, o.layout) };
    }
}

#[test]
fn heap_threads_checksums_remote_frees_no_leak() {
    let heap = new_heap();
    let mailbox = Mutex::new(Vec::new());
    let (n, ops) = (threads(), ops());
    std::thread::scope(|s| {
        for cpu in 0..n {
            let (heap, mailbox) = (&heap, &mailbox);
            s.spawn(move || heap_worker(heap, mailbox, cpu, ops));
        }
    });
    for o in mailbox.into_inner().unwrap() {
        verify(&o);
        // SAFETY: a live block with its layout.
        unsafe { heap.dealloc(o.addr as *mut u8, o.layout) };
    }
    let stats = heap.stats();
    assert!(stats.hits > stats.misses, "caches hardly used: {stats:?}");
    assert!(heap.drain_all() > 0);
    assert_eq!(heap.stats().cached, 0);
    let inner = heap.inner().stats().unwrap();
    assert_eq!((inner.live_allocs, inner.live_bytes), (0, 0), "{inner:?}");
    heap.inner()
        .lock()
        .heap()
        .unwrap()
        .check_invariants()
        .unwrap();
}

/// With more threads than CPU slots, threads share slots (and their locks).
#[test]
fn heap_more_threads_than_slots() {
    let heap = new_heap();
    let mailbox = Mutex::new(Vec::new());
    std::thread::scope(|s| {
        for t in 0..6 {
            let (heap, mailbox) = (&heap, &mailbox);
            s.spawn(move || heap_worker(heap, mailbox, t, 3_000));
        }
    });
    for o in mailbox.into_inner().unwrap() {
        // SAFETY: a live block with its layout.
        unsafe { heap.dealloc(o.addr as *mut u8, o.layout) };
    }
    heap.drain_all();
    assert_eq!(heap.inner().stats().unwrap().live_allocs, 0);
}

/// When the inner heap runs dry, the caches of every CPU are drained
/// before an allocation fails.
#[test]
fn heap_drains_caches_before_failing() {
    let heap = Box::new(Heap::new(LockedHeap::empty(), HostCpu));
    let mut arena = ArenaPageSource::new(1 << 20);
    arena.set_frame_limit(8);
    let (start, len) = arena.range();
    // SAFETY: the arena's range belongs to this heap alone.
    unsafe { heap.inner().init(arena, start, len) }.unwrap();
    let layout = Layout::from_size_align(512, 8).unwrap();
    // CPU 1 fills the heap, then frees everything into its cache.
    let all: Vec<usize> = std::thread::scope(|s| {
        s.spawn(|| {
            HostCpu::pin(1);
            let mut got = Vec::new();
            loop {
                // SAFETY: a non-zero layout.
                let p = unsafe { heap.alloc(layout) };
                if p.is_null() {
                    break got;
                }
                got.push(p as usize);
            }
        })
        .join()
        .unwrap()
    });
    assert!(all.len() > 16);
    std::thread::scope(|s| {
        s.spawn(|| {
            HostCpu::pin(1);
            for &p in &all {
                // SAFETY: live blocks with their layout.
                unsafe { heap.dealloc(p as *mut u8, layout) };
            }
        });
    });
    assert!(heap.cpu_stats(1).cached > 0);
    // CPU 0 asks for a different class: served only once CPU 1's cache is drained.
    HostCpu::pin(0);
    let big = Layout::from_size_align(1024, 8).unwrap();
    // SAFETY: a non-zero layout.
    let p = unsafe { heap.alloc(big) };
    assert!(!p.is_null());
    assert!(heap.cpu_stats(1).drains >= 1);
    // SAFETY: live, with its layout.
    unsafe { heap.dealloc(p, big) };
    heap.drain_all();
    assert_eq!(heap.inner().stats().unwrap().live_allocs, 0);
}

// ------------------------------------------------------------------ frames

struct Frames {
    ram: EmulatedMemory,
    shared: &'static LockedFrameAllocator<'static, NoInterruptMask>,
}

impl Frames {
    fn new(frames: usize) -> Self {
        let ram = EmulatedMemory::new(frames);
        let (start, end) = (ram.start().as_u64(), ram.end().as_u64());
        let map: MemoryMap =
            MemoryMap::from_regions([Region::new(start, end - start, RegionKind::Usable)]).unwrap();
        let storage = vec![0u64; BitmapFrameAllocator::storage_words(&map)].leak();
        let map = Box::leak(Box::new(map));
        let shared = Box::leak(Box::new(LockedFrameAllocator::new(
            // SAFETY: the map's memory is this test's alone, handed out by this allocator only.
            unsafe { BitmapFrameAllocator::new(map, storage) }.unwrap(),
        )));
        Self { ram, shared }
    }

    fn used(&self) -> u64 {
        self.shared.with(|a| a.stats().used)
    }
}

type Cache = PerCpuFrames<'static, 'static, HostCpu, NoInterruptMask, 4>;

/// The frame's words, through the emulated physical memory.
fn words(frame: PhysFrame) -> *mut u64 {
    std::ptr::with_exposed_provenance_mut(frame.start_address().as_u64() as usize)
}

/// `[start, end)` of the emulated memory (which is not `Sync`).
type Ram = (u64, u64);

fn ram_of(ram: &EmulatedMemory) -> Ram {
    (ram.start().as_u64(), ram.end().as_u64())
}

fn stamp(ram: Ram, frame: PhysFrame, tag: u64) {
    let a = frame.start_address().as_u64();
    assert!(a >= ram.0 && a < ram.1, "{frame:?} outside the memory");
    for i in 0..512 {
        // SAFETY: an allocated frame of the emulated memory, owned by the test.
        unsafe { words(frame).add(i).write(tag ^ i as u64) };
    }
}

fn check_stamp(frame: PhysFrame, tag: u64) {
    for i in 0..512 {
        // SAFETY: as in `stamp`.
        let got = unsafe { words(frame).add(i).read() };
        assert_eq!(got, tag ^ i as u64, "frame {frame:?} corrupted at word {i}");
    }
}

fn frame_worker(
    cache: &Cache,
    ram: Ram,
    mailbox: &Mutex<Vec<(PhysFrame, u64)>>,
    cpu: usize,
    ops: usize,
) {
    HostCpu::pin(cpu);
    let mut rng = Rng(0xdead_beef ^ ((cpu as u64 + 7) * 0x9e37_79b9));
    let mut live: Vec<(PhysFrame, u64)> = Vec::new();
    for n in 0..ops {
        let roll = rng.below(16);
        if (roll < 8 || live.is_empty()) && live.len() < 300 {
            let f = cache.allocate().expect("out of frames");
            let tag = (cpu as u64) << 48 | (n as u64) << 9;
            stamp(ram, f, tag);
            live.push((f, tag));
        } else if roll < 14 && !live.is_empty() {
            let (f, tag) = live.swap_remove(rng.below(live.len()));
            check_stamp(f, tag);
            // SAFETY: allocated from this cache, no longer used.
            unsafe { cache.free(f) }.unwrap();
        } else if roll < 15 && !live.is_empty() {
            let item = live.swap_remove(rng.below(live.len()));
            mailbox.lock().unwrap().push(item);
        } else if let Some((f, tag)) = mailbox.lock().unwrap().pop() {
            check_stamp(f, tag);
            // SAFETY: handed over by its owner, no longer used.
            unsafe { cache.free(f) }.unwrap();
        }
    }
    for (f, tag) in live {
        check_stamp(f, tag);
        // SAFETY: allocated from this cache, no longer used.
        unsafe { cache.free(f) }.unwrap();
    }
}

#[test]
fn frames_threads_checksums_remote_frees_no_leak() {
    let frames = Frames::new(4096);
    let cache = Cache::new(frames.shared, HostCpu);
    let mailbox = Mutex::new(Vec::new());
    let (n, ops) = (threads(), ops());
    std::thread::scope(|s| {
        for cpu in 0..n {
            let (cache, ram, mailbox) = (&cache, ram_of(&frames.ram), &mailbox);
            s.spawn(move || frame_worker(cache, ram, mailbox, cpu, ops));
        }
    });
    for (f, tag) in mailbox.into_inner().unwrap() {
        check_stamp(f, tag);
        // SAFETY: no longer used.
        unsafe { cache.free(f) }.unwrap();
    }
    let stats = cache.stats();
    assert!(stats.hits > stats.misses, "caches hardly used: {stats:?}");
    assert_eq!(frames.used(), stats.cached);
    cache.drain_all();
    assert_eq!(frames.used(), 0);
    frames.shared.with(|a| a.check_invariants()).unwrap();
}

/// Threads allocate until the memory is exhausted, holding everything:
/// afterwards one more CPU drains the others' caches, and together every
/// frame was handed out exactly once.
#[test]
fn frames_exhaustion_no_hoarding() {
    const TOTAL: usize = 1024;
    let frames = Frames::new(TOTAL);
    let usable = frames.shared.with(|a| a.free_frames()) as usize;
    let cache = Cache::new(frames.shared, HostCpu);
    let n = threads();
    let barrier = std::sync::Barrier::new(n);
    let mut held: Vec<PhysFrame> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..n)
            .map(|cpu| {
                let (cache, barrier) = (&cache, &barrier);
                s.spawn(move || {
                    HostCpu::pin(cpu);
                    let mut got = Vec::new();
                    // Churn a little so caches hold frames, then grab all.
                    for _ in 0..50 {
                        let f = cache.allocate().unwrap();
                        got.push(f);
                    }
                    for f in got.drain(..25) {
                        // SAFETY: allocated here, unused.
                        unsafe { cache.free(f) }.unwrap();
                    }
                    barrier.wait();
                    while let Ok(f) = cache.allocate() {
                        got.push(f);
                    }
                    got
                })
            })
            .collect();
        handles
            .into_iter()
            .flat_map(|h| h.join().unwrap())
            .collect()
    });
    // A CPU that never ran: gets whatever the others' caches still hold.
    HostCpu::pin(n);
    while let Ok(f) = cache.allocate() {
        held.push(f);
    }
    assert_eq!(
        cache.allocate(),
        Err(FrameError::OutOfFrames {
            frames: 1,
            align: 4096,
            below: None
        })
    );
    held.sort();
    held.dedup();
    assert_eq!(held.len(), usable, "every frame handed out exactly once");
    assert_eq!(cache.stats().cached, 0);
    for f in held {
        // SAFETY: allocated here, unused.
        unsafe { cache.free(f) }.unwrap();
    }
    cache.drain_all();
    assert_eq!(frames.used(), 0);
}

/// Double frees are caught in the cache, and by the shared allocator when
/// the frame reaches it.
#[test]
fn frames_double_free_detected() {
    let frames = Frames::new(256);
    let cache = Cache::new(frames.shared, HostCpu);
    HostCpu::pin(0);
    let f = cache.allocate().unwrap();
    // SAFETY: allocated here, unused.
    unsafe { cache.free(f) }.unwrap();
    let result = {
        // SAFETY: a breach on purpose (the frame is cached), refused before
        // anything changes; no memory of the frame is in use.
        unsafe { cache.free(f) }
    };
    assert_eq!(result, Err(FrameError::AlreadyFree { frame: f }));
    cache.drain_all();
    // Back in the shared allocator: a free there is refused when the
    // cache flushes it.
    // SAFETY: a breach on purpose (the frame is free in the shared
    // allocator), caught when the cache flushes; no memory of it is in use.
    unsafe { cache.free(f) }.unwrap();
    let mut errors = 0;
    for _ in 0..FRAME_CACHE {
        let g = frames.shared.with(|a| a.allocate()).unwrap();
        // SAFETY: allocated here, unused.
        errors += usize::from(unsafe { cache.free(g) }.is_err());
    }
    assert_eq!(errors, 1);
}

/// Freeing the block this CPU freed last is refused: it would become its
/// own successor in the free list and be handed out forever.
#[test]
#[should_panic(expected = "double free")]
fn heap_refuses_a_double_free_of_the_last_freed_block() {
    let heap = new_heap();
    HostCpu::pin(0);
    let layout = Layout::from_size_align(48, 8).unwrap();
    // SAFETY: a non-zero layout.
    let p = unsafe { heap.alloc(layout) };
    assert!(!p.is_null());
    // SAFETY: live, with its layout.
    unsafe { heap.dealloc(p, layout) };
    // SAFETY: a breach on purpose, refused before anything changes.
    unsafe { heap.dealloc(p, layout) };
}

static ON_EMPTY_CACHE: std::sync::OnceLock<&'static Cache> = std::sync::OnceLock::new();

/// Frames parked in a CPU's cache are out of reach of the shared
/// allocator's other users (the mapper, the heap's page source) unless the
/// caches' drain is registered; with it, such an allocation gets a frame
/// instead of out of memory.
#[test]
fn shared_allocator_drains_the_caches_before_failing() {
    use x86_64::structures::paging::{FrameAllocator, Size4KiB};
    let map: MemoryMap =
        MemoryMap::from_regions([Region::new(0x10_0000, 8 * 4096, RegionKind::Usable)]).unwrap();
    let map: &'static MemoryMap = Box::leak(Box::new(map));
    let storage = vec![0u64; BitmapFrameAllocator::storage_words(map)].leak();
    let shared: &'static LockedFrameAllocator<'static, NoInterruptMask> = Box::leak(Box::new(
        // SAFETY: the map's memory is this test's alone, handed out by this allocator only.
        LockedFrameAllocator::new(unsafe { BitmapFrameAllocator::new(map, storage) }.unwrap()),
    ));
    let cache: &'static Cache = Box::leak(Box::new(PerCpuFrames::new(shared, HostCpu)));
    HostCpu::pin(0);
    let all: Vec<PhysFrame> = (0..8).map(|_| cache.allocate().unwrap()).collect();
    for f in all {
        // SAFETY: allocated above, used by nothing.
        unsafe { cache.free(f) }.unwrap();
    }
    let mut direct = shared;
    let none: Option<PhysFrame<Size4KiB>> = direct.allocate_frame();
    assert!(none.is_none(), "every frame sits in CPU 0's cache");
    ON_EMPTY_CACHE.set(cache).ok().unwrap();
    shared.set_on_empty(|| ON_EMPTY_CACHE.get().map_or(0, |c| c.drain_all()));
    let got: Option<PhysFrame<Size4KiB>> = direct.allocate_frame();
    assert!(got.is_some(), "the drain gave the cached frames back");
}
