//! `cargo bench --bench smp`: throughput of alloc/free pairs with 1 and 2
//! host threads (`KMEM_SMP_THREADS` for another count) on kmem's per-CPU
//! caches, against the same allocators behind one lock.
//!
//! - heap: `PerCpuHeap` over kmem's `LockedHeap`, kmem's `LockedHeap`
//!   alone, and talc 5.1.1 in its spin lock (`TalcLock`), each thread
//!   replacing random members of its own 64 live objects (sizes 8-512).
//! - frames: `PerCpuFrames` over a `LockedFrameAllocator`, and the
//!   `LockedFrameAllocator` alone, each thread replacing random members of
//!   its own 32 live frames on a 1 GiB map.
//!
//! Each figure is the median of interleaved trials of a fixed duration;
//! throughput is operations (an alloc plus a free) per microsecond, summed
//! over threads. A calibration row (threads sharing nothing) shows what
//! the machine's idle cores allow: with fewer idle cores than threads the
//! 2-thread figures mean nothing, so check `uptime` and that row.
//! `KMEM_BENCH_QUICK=1` for a short iteration run.

mod common;
use common::Rng;

use std::alloc::{GlobalAlloc, Layout};
use std::hint::black_box;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::Barrier;
use std::time::{Duration, Instant};

use kmem::frame::{BitmapFrameAllocator, LockedFrameAllocator, NoInterruptMask};
use kmem::heap::{LockedHeap, PAGE_SIZE};
use kmem::memory_map::{MemoryMap, Region, RegionKind};
use kmem::smp::{PerCpuFrames, PerCpuHeap};
use kmem::testing::arena::ArenaPageSource;
use kmem::testing::smp::HostCpu;
use x86_64::structures::paging::PhysFrame;

const HEAP_SIZE: usize = 64 << 20;
const LIVE_OBJECTS: usize = 64;
const LIVE_FRAMES: usize = 32;

struct Config {
    trials: usize,
    duration: Duration,
    threads: usize,
}

fn config() -> Config {
    let threads = std::env::var("KMEM_SMP_THREADS")
        .ok()
        .and_then(|t| t.parse().ok())
        .unwrap_or(2);
    if std::env::var_os("KMEM_BENCH_QUICK").is_some() {
        Config {
            trials: 3,
            duration: Duration::from_millis(50),
            threads,
        }
    } else {
        Config {
            trials: 9,
            duration: Duration::from_millis(250),
            threads,
        }
    }
}

/// Runs `work(thread, stop)` on `threads` threads (thread `i` is CPU `i`)
/// for `duration`; each returns its operation count. Operations per µs.
fn run<W>(threads: usize, duration: Duration, work: W) -> f64
where
    W: Fn(usize, &AtomicBool) -> u64 + Sync,
{
    let stop = AtomicBool::new(false);
    let total = AtomicU64::new(0);
    let barrier = Barrier::new(threads + 1);
    let elapsed = std::thread::scope(|s| {
        for t in 0..threads {
            let (stop, total, barrier, work) = (&stop, &total, &barrier, &work);
            s.spawn(move || {
                HostCpu::pin(t);
                barrier.wait();
                total.fetch_add(work(t, stop), Relaxed);
            });
        }
        barrier.wait();
        let start = Instant::now();
        std::thread::sleep(duration);
        stop.store(true, Relaxed);
        start
    });
    // The threads stop within a few operations of the flag.
    let secs = elapsed.elapsed().as_secs_f64();
    total.load(Relaxed) as f64 / secs / 1e6
}

// ---------------------------------------------------------------- heap

const HEAP_NAMES: [&str; 3] = ["kmem per-CPU", "kmem locked", "talc"];

/// A fresh allocator `which` over `buf`.
fn make_heap(which: usize, buf: *mut u8) -> Box<dyn GlobalAlloc + Sync> {
    match which {
        0 | 1 => {
            let heap = LockedHeap::<ArenaPageSource>::empty();
            // SAFETY: the buffer is page-aligned, HEAP_SIZE long and used by
            // this allocator alone until the next `make_heap`.
            let mut arena = unsafe { ArenaPageSource::over(buf, HEAP_SIZE) };
            arena.set_poison(false);
            // SAFETY: as above.
            unsafe { heap.init(arena, buf as usize, HEAP_SIZE) }.unwrap();
            if which == 0 {
                Box::new(Reporting(PerCpuHeap::<_, HostCpu, 8>::new(heap, HostCpu)))
            } else {
                Box::new(heap)
            }
        }
        _ => {
            // SAFETY: as above.
            let claim = unsafe { talc::source::Claim::new(buf, HEAP_SIZE) };
            Box::new(talc::TalcLock::<spin::Mutex<()>, _>::new(claim))
        }
    }
}

/// Prints the cache counters when dropped (`KMEM_BENCH_STATS=1`).
struct Reporting(PerCpuHeap<LockedHeap<ArenaPageSource>, HostCpu, 8>);

impl Drop for Reporting {
    fn drop(&mut self) {
        if std::env::var_os("KMEM_BENCH_STATS").is_some() {
            let s = self.0.stats();
            let hit = s.hits as f64 / (s.hits + s.misses).max(1) as f64;
            println!("per-CPU heap: hit rate {:.3}, {s:?}", hit);
        }
    }
}

// SAFETY: forwards to the per-CPU heap.
unsafe impl GlobalAlloc for Reporting {
    unsafe fn alloc(&self, l: Layout) -> *mut u8 {
        // SAFETY: forwarded.
        unsafe { self.0.alloc(l) }
    }
    unsafe fn dealloc(&self, p: *mut u8, l: Layout) {
        // SAFETY: forwarded.
        unsafe { self.0.dealloc(p, l) }
    }
}

fn heap_pairs(heap: &(dyn GlobalAlloc + Sync), thread: usize, stop: &AtomicBool) -> u64 {
    let mut rng = Rng(thread as u64 * 0x9e37_79b9 + 1);
    let mut live = [(std::ptr::null_mut::<u8>(), Layout::new::<u8>()); LIVE_OBJECTS];
    let mut ops = 0;
    while !stop.load(Relaxed) {
        for _ in 0..256 {
            let r = rng.next();
            let slot = &mut live[r as usize % LIVE_OBJECTS];
            if !slot.0.is_null() {
                // SAFETY: a live block with its layout.
                unsafe { heap.dealloc(slot.0, slot.1) };
            }
            let size = 8 + (r >> 32) as usize % 505;
            let layout = Layout::from_size_align(size, 8).unwrap();
            // SAFETY: a non-zero layout.
            let p = unsafe { heap.alloc(layout) };
            assert!(!p.is_null());
            // SAFETY: the block is at least 8 bytes.
            unsafe { p.cast::<u64>().write(r) };
            *slot = (black_box(p), layout);
        }
        ops += 256;
    }
    for (p, l) in live {
        if !p.is_null() {
            // SAFETY: a live block with its layout.
            unsafe { heap.dealloc(p, l) };
        }
    }
    ops
}

// ---------------------------------------------------------------- frames

const FRAME_NAMES: [&str; 2] = ["kmem per-CPU", "kmem locked"];

fn frame_pairs(
    alloc: &(dyn Fn() -> PhysFrame + Sync),
    free: &(dyn Fn(PhysFrame) + Sync),
    thread: usize,
    stop: &AtomicBool,
) -> u64 {
    let mut rng = Rng(thread as u64 * 0x9e37_79b9 + 7);
    let mut live: [Option<PhysFrame>; LIVE_FRAMES] = [None; LIVE_FRAMES];
    let mut ops = 0;
    while !stop.load(Relaxed) {
        for _ in 0..256 {
            let slot = &mut live[rng.next() as usize % LIVE_FRAMES];
            if let Some(f) = slot.take() {
                free(f);
            }
            *slot = Some(black_box(alloc()));
        }
        ops += 256;
    }
    live.into_iter().flatten().for_each(free);
    ops
}

fn frames_trial(which: usize, threads: usize, duration: Duration) -> f64 {
    let map: MemoryMap =
        MemoryMap::from_regions([Region::new(0x10_0000, 1 << 30, RegionKind::Usable)]).unwrap();
    let mut storage = vec![0u64; BitmapFrameAllocator::storage_words(&map)];
    let shared: LockedFrameAllocator<'_, NoInterruptMask> =
        // SAFETY: the map's memory is this bench's alone, handed out by this allocator only.
        LockedFrameAllocator::new(unsafe { BitmapFrameAllocator::new(&map, &mut storage) }.unwrap());
    let result = if which == 0 {
        let cache: PerCpuFrames<'_, '_, HostCpu, NoInterruptMask, 8> =
            PerCpuFrames::new(&shared, HostCpu);
        let alloc = || cache.allocate().unwrap();
        // SAFETY: frames of this cache, no longer used.
        let free = |f| unsafe { cache.free(f) }.unwrap();
        let r = run(threads, duration, |t, stop| {
            frame_pairs(&alloc, &free, t, stop)
        });
        cache.drain_all();
        r
    } else {
        let alloc = || shared.with(|a| a.allocate()).unwrap();
        // SAFETY: a frame this bench owns and no longer uses.
        let free = |f| shared.with(|a| unsafe { a.free(f) }).unwrap();
        run(threads, duration, |t, stop| {
            frame_pairs(&alloc, &free, t, stop)
        })
    };
    assert_eq!(shared.with(|a| a.stats().used), 0);
    result
}

// ---------------------------------------------------------------- calibration

/// Shares nothing: what the machine's idle cores allow (2.0 on two idle
/// cores); the allocators' ratios are read against it.
fn baseline(_thread: usize, stop: &AtomicBool) -> u64 {
    let mut rng = Rng(1);
    let mut ops = 0;
    while !stop.load(Relaxed) {
        for _ in 0..256 {
            black_box(rng.next());
        }
        ops += 256;
    }
    ops
}

// ---------------------------------------------------------------- report

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn main() {
    common::print_provenance("smp");
    let cfg = config();
    let n = cfg.threads;
    println!(
        "alloc/free pairs per µs, all threads together; median of {} trials of {:?}; {} host threads vs 1",
        cfg.trials, cfg.duration, n
    );

    let layout = Layout::from_size_align(HEAP_SIZE, PAGE_SIZE).unwrap();
    // SAFETY: non-zero size.
    let buf = unsafe { std::alloc::alloc(layout) };
    assert!(!buf.is_null());
    for i in (0..HEAP_SIZE).step_by(PAGE_SIZE) {
        // SAFETY: inside the buffer: touch every page once.
        unsafe { buf.add(i).write_volatile(0xab) };
    }

    let mut base = [Vec::new(), Vec::new()];
    for _ in 0..cfg.trials {
        for (k, threads) in [1, n].into_iter().enumerate() {
            base[k].push(run(threads, cfg.duration / 4, baseline));
        }
    }
    let [b1, bn] = base.map(median);

    // heap[which][0] = 1 thread, [1] = n threads.
    let mut heap = vec![[Vec::new(), Vec::new()]; HEAP_NAMES.len()];
    for _ in 0..cfg.trials {
        for (which, samples) in heap.iter_mut().enumerate() {
            for (k, threads) in [1, n].into_iter().enumerate() {
                let a = make_heap(which, buf);
                let r = run(threads, cfg.duration, |t, stop| heap_pairs(&*a, t, stop));
                samples[k].push(r);
            }
        }
    }
    let heap: Vec<[f64; 2]> = heap
        .into_iter()
        .map(|[a, b]| [median(a), median(b)])
        .collect();

    let mut frames = vec![[Vec::new(), Vec::new()]; FRAME_NAMES.len()];
    for _ in 0..cfg.trials {
        for (which, samples) in frames.iter_mut().enumerate() {
            for (k, threads) in [1, n].into_iter().enumerate() {
                samples[k].push(frames_trial(which, threads, cfg.duration));
            }
        }
    }
    let frames: Vec<[f64; 2]> = frames
        .into_iter()
        .map(|[a, b]| [median(a), median(b)])
        .collect();

    println!();
    println!("| workload | allocator | 1 thread | {n} threads | {n}t / 1t |");
    println!("| --- | --- | ---: | ---: | ---: |");
    for (name, [one, many]) in HEAP_NAMES.iter().zip(&heap) {
        println!(
            "| heap | {name} | {one:.1} | {many:.1} | {:.2} |",
            many / one
        );
    }
    for (name, [one, many]) in FRAME_NAMES.iter().zip(&frames) {
        println!(
            "| frames | {name} | {one:.1} | {many:.1} | {:.2} |",
            many / one
        );
    }
    println!(
        "| none (calibration) | no shared state | {b1:.0} | {bn:.0} | {:.2} |",
        bn / b1
    );
    println!();
    println!("ratio machine_2t_vs_1t {:.2}", bn / b1);
    println!("ratio heap_2t_vs_1t kmem {:.2}", heap[0][1] / heap[0][0]);
    println!("ratio heap_2t talc {:.2}", heap[0][1] / heap[2][1]);
    println!("ratio heap_2t_vs_1t talc {:.2}", heap[2][1] / heap[2][0]);
    println!(
        "ratio frames_2t_vs_1t kmem {:.2}",
        frames[0][1] / frames[0][0]
    );
    println!(
        "ratio frames_2t_vs_1t locked {:.2}",
        frames[1][1] / frames[1][0]
    );
}
