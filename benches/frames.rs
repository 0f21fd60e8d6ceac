//! `cargo bench --bench frames`: kmem's bitmap frame allocator against the
//! blog_os `BootInfoFrameAllocator` design and `buddy_system_allocator` 0.13.
//!
//! Workloads (same map, same operation sequence for every contender):
//! (a) allocate every frame of a 256 MiB map one at a time;
//! (b) random single-frame alloc/free at 50 % occupancy on a 16 GiB map
//!     (`b_warm`: after warm-up; a `harness` row shows the loop's own cost);
//! (c) 2 MiB-aligned runs of 512 frames on a fragmented 16 GiB map
//!     (allocate a batch, free it; `c_light` is a less fragmented view);
//! (d) init for 1 TiB of RAM, and metadata bits per frame.
//! Medians over interleaved trials. `KMEM_BENCH_QUICK=1` shrinks everything
//! for iteration (ratios then are not the documented figures).
//! Host "physical memory" is never allocated: kmem touches only its
//! metadata (a host buffer standing in for the carved frames).

mod common;

use std::hint::black_box;
use std::time::{Duration, Instant};

use buddy_system_allocator::FrameAllocator as BuddyFrames;
use kmem::frame::BitmapFrameAllocator;
use kmem::memory_map::{MemoryMap, Region, RegionKind};
use kmem::testing::rng::Rng;
use x86_64::structures::paging::PhysFrame;
use x86_64::PhysAddr;

const F: u64 = 4096;
const MIB: u64 = 1 << 20;
const GIB: u64 = 1 << 30;

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn quick() -> bool {
    std::env::var_os("KMEM_BENCH_QUICK").is_some()
}

/// Trials per workload (`KMEM_BENCH_TRIALS` overrides, for profiling).
fn trials(quick: usize, full: usize) -> usize {
    let default = if self::quick() { quick } else { full };
    std::env::var("KMEM_BENCH_TRIALS")
        .ok()
        .and_then(|t| t.parse().ok())
        .unwrap_or(default)
}

/// `KMEM_BENCH_ONLY=b` runs one workload (for profiling).
fn wanted(w: &str) -> bool {
    std::env::var("KMEM_BENCH_ONLY").map_or(true, |o| o == w)
}

/// A PC-like map: low 636 KiB, a BIOS hole, then RAM from 1 MiB to `top`
/// (with the 3..4 GiB PCI hole when `top` is above it).
fn pc_map(top: u64) -> MemoryMap {
    let mut regions = vec![
        Region::new(0, 0x9f000, RegionKind::Usable),
        Region::new(0x9f000, 0x61000, RegionKind::Reserved),
        Region::new(MIB, top - MIB, RegionKind::Usable),
    ];
    if top > 4 * GIB {
        regions.push(Region::new(3 * GIB, GIB, RegionKind::Reserved));
    }
    MemoryMap::from_regions(regions).unwrap()
}

fn frame(n: u64) -> PhysFrame {
    PhysFrame::containing_address(PhysAddr::new(n * F))
}

// ---- blog_os BootInfoFrameAllocator, re-implemented faithfully ----------

/// Mirror of bootloader 0.9's `MemoryRegion` (frame-number range and type).
struct BootRegion {
    start_frame_number: u64,
    end_frame_number: u64,
    usable: bool,
}

/// blog_os: each allocation rebuilds the usable-frame iterator and walks it
/// to the `next`-th frame.
struct BootInfoFrameAllocator<'a> {
    memory_map: &'a [BootRegion],
    next: usize,
}

impl BootInfoFrameAllocator<'_> {
    fn usable_frames(&self) -> impl Iterator<Item = PhysFrame> + '_ {
        let regions = self.memory_map.iter();
        let usable_regions = regions.filter(|r| r.usable);
        let addr_ranges = usable_regions.map(|r| r.start_frame_number * F..r.end_frame_number * F);
        let frame_addresses = addr_ranges.flat_map(|r| r.step_by(4096));
        frame_addresses.map(|addr| PhysFrame::containing_address(PhysAddr::new(addr)))
    }

    fn allocate_frame(&mut self) -> Option<PhysFrame> {
        let frame = self.usable_frames().nth(self.next);
        self.next += 1;
        frame
    }
}

fn boot_regions(map: &MemoryMap) -> Vec<BootRegion> {
    map.regions()
        .iter()
        .map(|r| BootRegion {
            start_frame_number: r.start.div_ceil(F),
            end_frame_number: r.end() / F,
            usable: r.kind.is_usable(),
        })
        .collect()
}

// ---- helpers --------------------------------------------------------------

fn kmem_storage(map: &MemoryMap) -> Vec<u64> {
    vec![0; BitmapFrameAllocator::storage_words(map)]
}

/// The frames a fragmentation pattern leaves free: `broken_per_4` in 4
/// 2 MiB blocks keep one random frame in use.
fn fragmented_free_ranges(frames: u64, broken_per_4: u64, rng: &mut Rng) -> Vec<(u64, u64)> {
    let mut out = Vec::new();
    for block in (0..frames / 512).map(|b| b * 512) {
        if rng.next() % 4 >= broken_per_4 {
            out.push((block, block + 512));
        } else {
            let keep = block + rng.next() % 512;
            out.extend(
                [(block, keep), (keep + 1, block + 512)]
                    .into_iter()
                    .filter(|(a, b)| a < b),
            );
        }
    }
    out
}

/// Workload (c): on a 16 GiB map fragmented by `broken_per_4`, allocate
/// half of the wholly free 2 MiB blocks as 2 MiB-aligned 512-frame runs,
/// then free them. Returns the median kmem and buddy times of that cycle
/// and the number of runs per cycle. kmem gets its fragmentation by
/// allocating everything and freeing the pattern; buddy by inserting the
/// free ranges (the same coalesced state its deallocations would reach).
fn bench_runs(broken_per_4: u64) -> (Duration, Duration, u64) {
    const CYCLES: u64 = 20;
    let map = pc_map(16 * GIB + GIB);
    let mut storage = kmem_storage(&map);
    // SAFETY: the map's memory is this bench's alone, handed out by this allocator only.
    let mut k = unsafe { BitmapFrameAllocator::new(&map, &mut storage) }.unwrap();
    while k.allocate().is_ok() {}
    let top = 17 * GIB / F;
    let free_ranges: Vec<(u64, u64)> = fragmented_free_ranges(top, broken_per_4, &mut Rng(7))
        .into_iter()
        .flat_map(|(a, b)| {
            map.usable()
                .map(move |u| (a.max(u.start / F), b.min(u.end() / F)))
        })
        .filter(|(a, b)| a < b)
        .collect();
    let mut buddy = BuddyFrames::<33>::new();
    for &(a, b) in &free_ranges {
        // SAFETY: frames this bench owns and no longer uses.
        unsafe { k.free_range(PhysFrame::range(frame(a), frame(b))) }.unwrap();
        buddy.add_frame(a as usize, b as usize);
    }
    let whole_blocks = free_ranges.iter().map(|(a, b)| (b - a) / 512).sum::<u64>();
    let runs = whole_blocks / 2;
    let (mut tk, mut tb) = (Vec::new(), Vec::new());
    let mut got_k = Vec::with_capacity(runs as usize);
    let mut got_b = Vec::with_capacity(runs as usize);
    for _ in 0..trials(3, 9) {
        let t = Instant::now();
        for _ in 0..CYCLES {
            for _ in 0..runs {
                got_k.push(k.allocate_contiguous(512, 2 * MIB, None).unwrap());
            }
            for r in got_k.drain(..) {
                // SAFETY: frames this bench owns and no longer uses.
                unsafe { k.free_range(r) }.unwrap();
            }
        }
        tk.push(t.elapsed());
        let t = Instant::now();
        for _ in 0..CYCLES {
            for _ in 0..runs {
                got_b.push(buddy.alloc(512).unwrap());
            }
            for f in got_b.drain(..) {
                buddy.dealloc(f, 512);
            }
        }
        tb.push(t.elapsed());
    }
    k.check_invariants().unwrap();
    (median(tk), median(tb), runs * CYCLES)
}

/// Single-frame operations, so one loop drives every contender identically.
trait Frames {
    fn alloc(&mut self) -> u64;
    fn free(&mut self, frame: u64);
}

impl Frames for BitmapFrameAllocator<'_> {
    fn alloc(&mut self) -> u64 {
        self.allocate().unwrap().start_address().as_u64() / F
    }
    fn free(&mut self, f: u64) {
        // SAFETY: a frame this bench owns and no longer uses.
        unsafe { BitmapFrameAllocator::free(self, frame(f)) }.unwrap();
    }
}

impl Frames for BuddyFrames<33> {
    fn alloc(&mut self) -> u64 {
        BuddyFrames::alloc(self, 1).unwrap() as u64
    }
    fn free(&mut self, f: u64) {
        self.dealloc(f as usize, 1);
    }
}

/// No allocator at all: what the loop itself (PRNG, the held-frame vector)
/// costs, to read the allocators' own share off the totals.
struct Harness(u64);

impl Frames for Harness {
    fn alloc(&mut self) -> u64 {
        self.0 += 1;
        black_box(self.0)
    }
    fn free(&mut self, f: u64) {
        black_box(f);
    }
}

/// `ops` coin flips: allocate one frame, or free a random held frame.
fn random_ops(a: &mut impl Frames, held: &mut Vec<u64>, seed: u64, ops: u64) -> Duration {
    let mut rng = Rng(seed);
    let t = Instant::now();
    for _ in 0..ops {
        let r = rng.next();
        if r & 1 == 0 {
            held.push(a.alloc());
        } else {
            let i = ((r >> 1) % held.len() as u64) as usize;
            a.free(held.swap_remove(i));
        }
    }
    t.elapsed()
}

struct RandomResult {
    kmem: Duration,
    buddy: Duration,
    harness: Duration,
    ops: u64,
}

/// Workload (b) on a 16 GiB map: fill it, free a random half (a randomly
/// half-occupied map), then time `ops` random alloc/free operations. With
/// `warm`, the state is set up once and run through 4 × `ops` untimed
/// operations first: lowest-first allocation then gathers the free frames
/// at the top, where buddy's free lists coalesce and shrink (over millions
/// of operations buddy approaches kmem's speed; see BENCHMARKS.md).
fn bench_random(warm: bool) -> RandomResult {
    let map = pc_map(16 * GIB + GIB); // 16 GiB of RAM around the PCI hole
    let ops: u64 = if quick() { 100_000 } else { 200_000 };
    let mut storage = kmem_storage(&map);
    let (mut tk, mut tb, mut tn) = (Vec::new(), Vec::new(), Vec::new());
    let mut setup = None;
    for trial in 0..trials(3, 5) as u64 {
        if !warm || setup.is_none() {
            drop(setup.take());
            // SAFETY: the map's memory is this bench's alone, handed out by this allocator only.
            let mut k = unsafe { BitmapFrameAllocator::new(&map, &mut storage) }.unwrap();
            let mut buddy = BuddyFrames::<33>::new();
            for r in map.usable() {
                buddy.add_frame((r.start / F) as usize, (r.end() / F) as usize);
            }
            let mut null = Harness(0);
            let (mut kh, mut bh, mut nh) = (Vec::new(), Vec::new(), Vec::new());
            for _ in 0..k.free_frames() {
                kh.push(Frames::alloc(&mut k));
                bh.push(Frames::alloc(&mut buddy));
                nh.push(null.alloc());
            }
            let mut rng = Rng(0x1234_5678 + trial);
            for _ in 0..kh.len() / 2 {
                let i = (rng.next() % kh.len() as u64) as usize;
                Frames::free(&mut k, kh.swap_remove(i));
                Frames::free(&mut buddy, bh.swap_remove(i));
                null.free(nh.swap_remove(i));
            }
            if warm {
                random_ops(&mut k, &mut kh, 1, 4 * ops);
                random_ops(&mut buddy, &mut bh, 1, 4 * ops);
                random_ops(&mut null, &mut nh, 1, 4 * ops);
            }
            setup = Some((k, buddy, null, kh, bh, nh));
        }
        let (k, buddy, null, kh, bh, nh) = setup.as_mut().unwrap();
        tk.push(random_ops(k, kh, 99 + trial, ops));
        tb.push(random_ops(buddy, bh, 99 + trial, ops));
        tn.push(random_ops(null, nh, 99 + trial, ops));
        k.check_invariants().unwrap();
    }
    RandomResult {
        kmem: median(tk),
        buddy: median(tb),
        harness: median(tn),
        ops,
    }
}

struct Row {
    workload: &'static str,
    contender: &'static str,
    per_op_ns: f64,
    total: Duration,
}

fn main() {
    common::print_provenance("frames");
    let q = quick();
    let mut rows: Vec<Row> = Vec::new();
    let mut ratios: Vec<(&str, &str, f64)> = Vec::new();

    if wanted("a") {
        // (a) every frame of a 256 MiB map, one at a time.
        {
            let size = if q { 64 * MIB } else { 256 * MIB };
            let map = pc_map(size);
            let boot = boot_regions(&map);
            let frames = map.usable_bytes() / F;
            let mut storage = kmem_storage(&map);
            let (mut tk, mut tb) = (Vec::new(), Vec::new());
            for _ in 0..trials(2, 3) {
                // SAFETY: the map's memory is this bench's alone, handed out by this allocator only.
                let mut a = unsafe { BitmapFrameAllocator::new(&map, &mut storage) }.unwrap();
                let t = Instant::now();
                while let Ok(f) = a.allocate() {
                    black_box(f);
                }
                tk.push(t.elapsed());
                assert_eq!(a.stats().used, frames);
                let mut b = BootInfoFrameAllocator {
                    memory_map: &boot,
                    next: 0,
                };
                let t = Instant::now();
                let mut n = 0;
                while let Some(f) = b.allocate_frame() {
                    black_box(f);
                    n += 1;
                }
                tb.push(t.elapsed());
                assert_eq!(n, frames);
            }
            let (k, b) = (median(tk), median(tb));
            rows.push(Row {
                workload: "a",
                contender: "kmem",
                per_op_ns: ns(k, frames),
                total: k,
            });
            rows.push(Row {
                workload: "a",
                contender: "blog_os",
                per_op_ns: ns(b, frames),
                total: b,
            });
            ratios.push(("a", "blog_os", b.as_secs_f64() / k.as_secs_f64()));
        }
    }

    if wanted("b") {
        // (b) random single-frame alloc/free at 50 % occupancy, 16 GiB:
        // on a randomly half-occupied map, and after warm-up operations.
        for (workload, warm) in [("b", false), ("b_warm", true)] {
            let r = bench_random(warm);
            for (contender, t) in [("kmem", r.kmem), ("buddy", r.buddy), ("harness", r.harness)] {
                rows.push(Row {
                    workload,
                    contender,
                    per_op_ns: ns(t, r.ops),
                    total: t,
                });
            }
            ratios.push((
                workload,
                "buddy",
                r.buddy.as_secs_f64() / r.kmem.as_secs_f64(),
            ));
        }
    }

    if wanted("c") {
        // (c) 2 MiB-aligned runs of 512 frames on a fragmented 16 GiB map:
        // 3 in 4 blocks hold one used frame (and, as a second view, 1 in 4).
        for (workload, broken) in [("c", 3), ("c_light", 1)] {
            let (k, b, runs) = bench_runs(broken);
            rows.push(Row {
                workload,
                contender: "kmem",
                per_op_ns: ns(k, runs),
                total: k,
            });
            rows.push(Row {
                workload,
                contender: "buddy",
                per_op_ns: ns(b, runs),
                total: b,
            });
            ratios.push((workload, "buddy", b.as_secs_f64() / k.as_secs_f64()));
        }
    }

    // (d) init for 1 TiB of RAM, storage carved (a host buffer stands in).
    let (mut init_ms, mut bits_per_frame, mut frames_1t) = (0.0, 0.0, 0);
    if wanted("d") {
        let map = pc_map(GIB << 10);
        let plan = BitmapFrameAllocator::plan(&map).unwrap();
        let mut buf = vec![0u64; plan.words];
        let mut times = Vec::new();
        let mut bits = 0.0;
        let mut total = 0;
        for _ in 0..trials(3, 7) {
            let base = buf
                .as_mut_ptr()
                .cast::<u8>()
                .wrapping_sub(plan.phys.as_u64() as usize);
            let t = Instant::now();
            // SAFETY: `buf` backs exactly the planned storage and outlives `a`.
            let a = unsafe { BitmapFrameAllocator::init_carved(&map, base) }.unwrap();
            times.push(t.elapsed());
            total = a.free_frames() + plan.frames();
            bits = a.metadata_bytes() as f64 * 8.0 / total as f64;
        }
        let t = median(times);
        rows.push(Row {
            workload: "d",
            contender: "kmem",
            per_op_ns: ns(t, total),
            total: t,
        });
        init_ms = t.as_secs_f64() * 1e3;
        bits_per_frame = bits;
        frames_1t = total;
    }

    println!(
        "{:<10} {:<10} {:>14} {:>14}",
        "workload", "allocator", "ns/op", "total ms"
    );
    for r in &rows {
        println!(
            "{:<10} {:<10} {:>14.2} {:>14.3}",
            r.workload,
            r.contender,
            r.per_op_ns,
            r.total.as_secs_f64() * 1e3
        );
    }
    println!("init 1 TiB ({frames_1t} frames): {init_ms:.2} ms (target <= 50)");
    for (w, p, x) in ratios {
        println!("ratio {w} {p} {x:.2}");
    }
    println!("bits_per_frame {bits_per_frame:.4}");
}

fn ns(d: Duration, n: u64) -> f64 {
    d.as_secs_f64() * 1e9 / n.max(1) as f64
}
