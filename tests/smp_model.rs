//! Model checking (shuttle) of the per-CPU cache protocol: many random
//! schedules of CPUs that allocate, free, free each other's objects and
//! drain, checking that no frame or block is ever handed out twice or
//! lost and that no lock order deadlocks.
//!
//! - `protocol_*`: the magazine / shared pool / drain protocol of
//!   `PerCpuFrames` step by step with shuttle's locks, so a schedule may
//!   switch CPUs between any two lock operations (small magazines, so
//!   refills, flushes and drains happen in a few steps).
//! - `real_*`: the real `PerCpuFrames` and `PerCpuHeap`, switching CPUs
//!   between operations (their spin locks are invisible to shuttle).
//!
//! Run: `cargo test --test smp_model` (a few seconds);
//! `KMEM_MODEL_ITERATIONS=<n>` for a longer run (default 300 random and 300 PCT schedules per
//! test, a third of that for the real caches).

use std::alloc::{GlobalAlloc, Layout};
use std::cell::Cell;
use std::collections::BTreeSet;

use kmem::frame::{BitmapFrameAllocator, LockedFrameAllocator, NoInterruptMask};
use kmem::heap::LockedHeap;
use kmem::memory_map::{MemoryMap, Region, RegionKind};
use kmem::smp::{CpuLocal, Magazine, PerCpuFrames, PerCpuHeap};
use kmem::testing::arena::ArenaPageSource;
use shuttle::scheduler::{PctScheduler, RandomScheduler};
use shuttle::sync::{Arc, Mutex};
use shuttle::thread;

/// Runs `f` under `iterations` random schedules and as many PCT ones
/// (depth 3), on stacks large enough for a heap.
fn check(f: impl Fn() + Send + Sync + 'static, iterations: usize) {
    let f = std::sync::Arc::new(f);
    let config = || {
        let mut config = shuttle::Config::new();
        // 8 MiB: a `LockedHeap` with `tracking` is 233 KB, built on the stack in debug builds.
        config.stack_size = 8 << 20;
        config
    };
    let g = f.clone();
    shuttle::Runner::new(RandomScheduler::new(iterations), config()).run(move || g());
    shuttle::Runner::new(PctScheduler::new(3, iterations), config()).run(move || f());
}

fn iterations() -> usize {
    std::env::var("KMEM_MODEL_ITERATIONS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(300)
}

// ---------------------------------------------------------------- the protocol

const CPUS: usize = 2;
const TOTAL: u64 = 10;
const CAP: usize = 4;
const BATCH: usize = CAP / 2;

/// The shared allocator, per-CPU magazines, and a ledger of who owns what.
struct Model {
    pool: Mutex<Vec<u64>>,
    slots: Vec<Mutex<Magazine<CAP>>>,
    /// Frames handed out and not yet freed: an allocation must be new here.
    owned: Mutex<BTreeSet<u64>>,
}

impl Model {
    fn new() -> Self {
        Self {
            pool: Mutex::new((0..TOTAL).collect()),
            slots: (0..CPUS).map(|_| Mutex::new(Magazine::new())).collect(),
            owned: Mutex::new(BTreeSet::new()),
        }
    }

    fn take(&self, f: u64) -> u64 {
        assert!(
            self.owned.lock().unwrap().insert(f),
            "frame {f} handed out twice"
        );
        f
    }

    /// `PerCpuFrames::allocate_cached`: pop; else the frame plus a batch
    /// above the low-water mark, under one pool lock.
    fn allocate_cached(&self, cpu: usize) -> Option<u64> {
        let mut slot = self.slots[cpu].lock().unwrap();
        if let Some(f) = slot.pop() {
            return Some(f);
        }
        let mut pool = self.pool.lock().unwrap();
        let first = pool.pop()?;
        if pool.len() > BATCH * CPUS {
            for _ in 1..BATCH {
                let Some(f) = pool.pop() else { break };
                slot.push(f).unwrap();
            }
        }
        Some(first)
    }

    /// `PerCpuFrames::allocate`: on failure drain everything and retry.
    fn allocate(&self, cpu: usize) -> Option<u64> {
        let f = self.allocate_cached(cpu).or_else(|| {
            self.drain();
            self.pool.lock().unwrap().pop()
        })?;
        Some(self.take(f))
    }

    /// `PerCpuFrames::free`.
    fn free(&self, cpu: usize, f: u64) {
        assert!(
            self.owned.lock().unwrap().remove(&f),
            "frame {f} freed but not owned"
        );
        let mut slot = self.slots[cpu].lock().unwrap();
        assert!(!slot.contains(f));
        if slot.push(f).is_err() {
            let mut pool = self.pool.lock().unwrap();
            slot.take_oldest(BATCH, |g| pool.push(g));
            slot.push(f).unwrap();
        }
    }

    /// `PerCpuFrames::drain_slots`: slot lock, then pool lock, per CPU.
    fn drain(&self) {
        for s in &self.slots {
            let mut slot = s.lock().unwrap();
            let mut pool = self.pool.lock().unwrap();
            slot.take_oldest(CAP, |g| pool.push(g));
        }
    }

    /// Every frame is in exactly one place.
    fn check_conservation(&self, held: &[u64]) {
        let mut all: Vec<u64> = self.pool.lock().unwrap().clone();
        for s in &self.slots {
            let mut slot = s.lock().unwrap().clone();
            while let Some(f) = slot.pop() {
                all.push(f);
            }
        }
        all.extend_from_slice(held);
        all.sort_unstable();
        assert_eq!(
            all,
            (0..TOTAL).collect::<Vec<_>>(),
            "a frame was lost or duplicated"
        );
    }
}

/// Two CPUs churn (allocating, freeing their own and each other's frames
/// through a mailbox); afterwards every frame is somewhere exactly once.
#[test]
fn protocol_churn_and_remote_frees_conserve_frames() {
    check(
        || {
            let model = Arc::new(Model::new());
            let mailbox = Arc::new(Mutex::new(Vec::new()));
            let handles: Vec<_> = (0..CPUS)
                .map(|cpu| {
                    let (model, mailbox) = (model.clone(), mailbox.clone());
                    thread::spawn(move || {
                        let mut mine = Vec::new();
                        for step in 0..12 {
                            match (step + cpu) % 4 {
                                0 | 1 => mine.extend(model.allocate(cpu)),
                                2 => {
                                    if let Some(f) = mine.pop() {
                                        mailbox.lock().unwrap().push(f);
                                    }
                                }
                                _ => {
                                    let remote = mailbox.lock().unwrap().pop();
                                    if let Some(f) = remote.or_else(|| mine.pop()) {
                                        model.free(cpu, f);
                                    }
                                }
                            }
                        }
                        mine
                    })
                })
                .collect();
            let mut held: Vec<u64> = handles
                .into_iter()
                .flat_map(|h| h.join().unwrap())
                .collect();
            held.extend(mailbox.lock().unwrap().iter());
            model.check_conservation(&held);
        },
        iterations(),
    );
}

/// CPU 0 allocates until it fails while CPU 1 churns and finally frees all
/// it has: once CPU 1 is done, CPU 0 (draining CPU 1's cache) gets every
/// frame, so no frame stays hoarded in a cache.
#[test]
fn protocol_pressure_drains_every_cache() {
    check(
        || {
            let model = Arc::new(Model::new());
            let churner = {
                let model = model.clone();
                thread::spawn(move || {
                    let mut mine = Vec::new();
                    for step in 0..8 {
                        if step % 3 == 2 {
                            if let Some(f) = mine.pop() {
                                model.free(1, f);
                            }
                        } else {
                            mine.extend(model.allocate(1));
                        }
                    }
                    mine.into_iter().for_each(|f| model.free(1, f));
                })
            };
            let mut got = Vec::new();
            while let Some(f) = model.allocate(0) {
                got.push(f);
            }
            churner.join().unwrap();
            while let Some(f) = model.allocate(0) {
                got.push(f);
            }
            assert_eq!(got.len() as u64, TOTAL, "frames hoarded in a cache");
            model.check_conservation(&got);
        },
        iterations(),
    );
}

// ---------------------------------------------------------------- the real caches

shuttle::thread_local! {
    static CPU: Cell<usize> = Cell::new(0);
}

/// Shuttle threads as CPUs; every cache operation is a scheduling point.
struct ModelCpu;

impl CpuLocal for ModelCpu {
    fn cpu_id(&self) -> usize {
        CPU.with(Cell::get)
    }

    fn without_interrupts<R>(&self, f: impl FnOnce() -> R) -> R {
        thread::yield_now();
        f()
    }
}

/// The real `PerCpuFrames`: two CPUs allocate, stamp, free remotely and
/// drain in random orders; no frame is handed out twice and all return.
#[test]
fn real_frames_remote_frees_and_drains() {
    check(
        || {
            let map: MemoryMap =
                MemoryMap::from_regions([Region::new(0x10_0000, 512 * 4096, RegionKind::Usable)])
                    .unwrap();
            // 'static for shuttle's threads: leak this iteration's allocator.
            let storage = vec![0u64; BitmapFrameAllocator::storage_words(&map)].leak();
            let map = Box::leak(Box::new(map));
            let shared: &'static LockedFrameAllocator<'static, NoInterruptMask> =
                Box::leak(Box::new(LockedFrameAllocator::new(
                    // SAFETY: the map's memory is this test's alone, handed out by this allocator only.
                    unsafe { BitmapFrameAllocator::new(map, storage) }.unwrap(),
                )));
            let free_before = shared.with(|a| a.free_frames());
            let cache: &'static PerCpuFrames<'static, 'static, ModelCpu, NoInterruptMask, 2> =
                Box::leak(Box::new(PerCpuFrames::new(shared, ModelCpu)));
            let owned = Arc::new(Mutex::new(BTreeSet::new()));
            let mailbox = Arc::new(Mutex::new(Vec::new()));
            let handles: Vec<_> = (0..2)
                .map(|cpu| {
                    let (owned, mailbox) = (owned.clone(), mailbox.clone());
                    thread::spawn(move || {
                        CPU.with(|c| c.set(cpu));
                        let mut mine = Vec::new();
                        for step in 0..90 {
                            match (step * 7 + cpu * 3) % 9 {
                                0..=4 => {
                                    let f = cache.allocate().unwrap();
                                    assert!(owned.lock().unwrap().insert(f), "{f:?} twice");
                                    mine.push(f);
                                }
                                5 | 6 => {
                                    if let Some(f) = mine.pop() {
                                        mailbox.lock().unwrap().push(f);
                                    }
                                }
                                7 => {
                                    let f = mailbox.lock().unwrap().pop();
                                    if let Some(f) = f {
                                        assert!(owned.lock().unwrap().remove(&f));
                                        // SAFETY: owned by this test and unused.
                                        unsafe { cache.free(f) }.unwrap();
                                    }
                                }
                                _ if step % 30 == 8 => {
                                    cache.drain_all();
                                }
                                _ => {}
                            }
                        }
                        for f in mine {
                            assert!(owned.lock().unwrap().remove(&f));
                            // SAFETY: owned by this test and unused.
                            unsafe { cache.free(f) }.unwrap();
                        }
                    })
                })
                .collect();
            handles.into_iter().for_each(|h| h.join().unwrap());
            for f in mailbox.lock().unwrap().drain(..) {
                // SAFETY: owned by this test and unused.
                unsafe { cache.free(f) }.unwrap();
            }
            cache.drain_all();
            assert_eq!(shared.with(|a| a.free_frames()), free_before);
        },
        iterations() / 3,
    );
}

/// The real `PerCpuHeap` over kmem's heap: objects carry their owner's
/// stamp, are freed by either CPU, and all bytes return.
#[test]
fn real_heap_remote_frees_and_drains() {
    type Heap = PerCpuHeap<LockedHeap<ArenaPageSource>, ModelCpu, 2>;
    check(
        || {
            let heap: &'static Heap = Box::leak(Box::new(Heap::new(LockedHeap::empty(), ModelCpu)));
            let arena = ArenaPageSource::new(1 << 20);
            let (start, len) = arena.range();
            // SAFETY: the arena's range belongs to this heap alone.
            unsafe { heap.inner().init(arena, start, len) }.unwrap();
            let mailbox = Arc::new(Mutex::new(Vec::<(usize, Layout, u8)>::new()));
            let handles: Vec<_> = (0..2)
                .map(|cpu| {
                    let mailbox = mailbox.clone();
                    thread::spawn(move || {
                        CPU.with(|c| c.set(cpu));
                        let mut mine = Vec::new();
                        for step in 0..80usize {
                            let layout =
                                Layout::from_size_align(8 + (step * 37 + cpu * 11) % 200, 8)
                                    .unwrap();
                            match (step + cpu) % 5 {
                                0..=2 => {
                                    // SAFETY: a non-zero layout.
                                    let p = unsafe { heap.alloc(layout) };
                                    assert!(!p.is_null());
                                    let stamp = (step as u8) ^ (cpu as u8 * 0x80);
                                    // SAFETY: a fresh block of this size.
                                    unsafe { p.write_bytes(stamp, layout.size()) };
                                    mine.push((p as usize, layout, stamp));
                                }
                                3 => {
                                    if let Some(o) = mine.pop() {
                                        mailbox.lock().unwrap().push(o);
                                    }
                                }
                                _ => {
                                    let o = mailbox.lock().unwrap().pop();
                                    if let Some(o) = o.or_else(|| mine.pop()) {
                                        free_stamped(heap, o);
                                    }
                                }
                            }
                        }
                        mine.into_iter().for_each(|o| free_stamped(heap, o));
                    })
                })
                .collect();
            handles.into_iter().for_each(|h| h.join().unwrap());
            let rest: Vec<_> = mailbox.lock().unwrap().drain(..).collect();
            rest.into_iter().for_each(|o| free_stamped(heap, o));
            heap.drain_all();
            assert_eq!(heap.inner().stats().unwrap().live_allocs, 0);
        },
        iterations() / 3,
    );
}

fn free_stamped(heap: &impl GlobalAlloc, (p, layout, stamp): (usize, Layout, u8)) {
    let p = p as *mut u8;
    for i in 0..layout.size() {
        // SAFETY: a live block of this size.
        assert_eq!(unsafe { p.add(i).read() }, stamp, "block overwritten");
    }
    // SAFETY: a live block with its layout.
    unsafe { heap.dealloc(p, layout) };
}
