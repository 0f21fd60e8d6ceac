//! `cargo bench --bench vm`: the virtual-memory layer against doing the
//! same work directly, same emulated memory, same run, interleaved trials.
//!
//! - `demand_zero`: first-write faults on N fresh pages through
//!   `VmSpace::handle_fault`, vs allocating a frame, zeroing it and mapping
//!   it with the mapper (`direct`). Ratio: direct time / fault time.
//! - `fork_64m`: fork of a space with 64 MiB touched (copy-on-write), vs an
//!   eager copy of every page into a new space (`eager_copy`). Ratio:
//!   eager time / fork time.
//! - `areas`: time per map, lookup and unmap with 1 000 and with 100 000
//!   areas in the space (printed, with the growth factor).
//! - `fault_2t_vs_1t`: page-fault throughput (demand-zero, and swap-in
//!   from a `MemSwap`) with 2 host threads vs 1, frames from
//!   `PerCpuFrames` over one `LockedFrameAllocator`, one shared `Vm`:
//!   each thread in its own space (`separate spaces`), or both in one
//!   space on separate areas (`one space`). Ratio: faults per second with
//!   2 threads / with 1 (2.0 is perfect scaling; needs 2 idle cores).
//!
//! - `global_reclaim`: eight spaces under one replacement policy
//!   (`kmem::vm::global`) fill 4x the frame limit, then two at a time are
//!   busy while six idle, the reclaim worker run whenever the watermarks
//!   ask: pages scanned per page freed (page tables no CPU walked since
//!   the last look are skipped), time per page freed, and the reverse
//!   map's bytes per mapped page.
//!
//! - `thp`: touching a 64 MiB aligned area one store a page with
//!   transparent huge pages on vs off: faults and time, ratios on/off.
//!
//! `KMEM_BENCH_QUICK=1` for a short run.

mod common;
mod thp;

use kmem::frame::{BitmapFrameAllocator, LockedFrameAllocator, NoInterruptMask};
use kmem::memory_map::{MemoryMap, Region, RegionKind};
use kmem::paging::{MapFlags, PageTables, PhysMem};
use kmem::smp::PerCpuFrames;
use kmem::smp::Tlb;
use kmem::testing::mmu::RecordingMmu;
use kmem::testing::phys_mem::{EmulatedFrameAllocator, EmulatedMemory, EmulatedPhysMem};
use kmem::testing::smp::{HostCpu, RecordingShootdown};
use kmem::vm::MemSwap;
use kmem::vm::{FaultAccess, Prot, Vm, VmSpace};
use std::hint::black_box;
use std::sync::Barrier;
use std::time::{Duration, Instant};
use x86_64::structures::paging::{FrameAllocator, FrameDeallocator, Page, PhysFrame, Size4KiB};
use x86_64::{PhysAddr, VirtAddr};

const PAGE: u64 = 4096;

fn quick() -> bool {
    std::env::var_os("KMEM_BENCH_QUICK").is_some()
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

struct World<'m> {
    mem: &'m EmulatedMemory,
    frames: EmulatedFrameAllocator,
    vm: Vm,
    kernel: PageTables<EmulatedPhysMem<'m>>,
}

impl<'m> World<'m> {
    fn new(mem: &'m EmulatedMemory) -> Self {
        let mut frames = mem.frame_allocator();
        let vm = Vm::new(&mem.phys_mem(), &mut frames).unwrap();
        let kernel = PageTables::new_empty(mem.phys_mem(), &mut frames).unwrap();
        Self {
            mem,
            frames,
            vm,
            kernel,
        }
    }

    fn space(&mut self) -> VmSpace<EmulatedPhysMem<'m>> {
        VmSpace::new_user(&self.kernel, &mut self.frames).unwrap()
    }

    fn drop_space(&mut self, s: VmSpace<EmulatedPhysMem<'m>>) {
        let mut mmu = idle_mmu();
        let mut tlb = Tlb::uniprocessor(&mut mmu);
        s.destroy(&self.vm, &mut self.frames, &mut tlb).unwrap();
    }
}

/// The MMU of a bench CPU that has no space loaded: nothing to invalidate.
fn idle_mmu() -> RecordingMmu {
    RecordingMmu::new(PhysFrame::containing_address(PhysAddr::new(0)))
}

/// First-write faults on `n` pages; returns the time of the faults alone.
fn demand_zero(w: &mut World<'_>, n: u64) -> Duration {
    let (s, _, d) = touched(w, n * PAGE);
    w.drop_space(s);
    d
}

/// The same pages done by hand: allocate, zero, map.
fn direct(w: &mut World<'_>, n: u64) -> Duration {
    let mut s = w.space();
    let base = s
        .map_anonymous(None, n * PAGE, Prot::RW | Prot::USER)
        .unwrap();
    let mut m = PageTables::new_empty(w.mem.phys_mem(), &mut w.frames).unwrap();
    let flags = MapFlags::READ_WRITE.user();
    let t = Instant::now();
    for i in 0..n {
        let frame = w.frames.allocate_frame().unwrap();
        let p = m.phys_mem().table_ptr(frame).as_ptr().cast::<u8>();
        // SAFETY: a fresh emulated frame, 4096 bytes.
        unsafe { p.write_bytes(0, 4096) };
        let page = Page::<Size4KiB>::containing_address(VirtAddr::new(base + i * PAGE));
        // SAFETY: bench tables, mapping frames no Rust object uses (emulated memory), pages no code uses when unmapped.
        unsafe { m.map(page, frame, flags, &mut w.frames) }
            .unwrap()
            .ignore();
    }
    let d = t.elapsed();
    black_box(&m);
    free_hierarchy(w, m, base, n * PAGE);
    w.drop_space(s);
    d
}

/// A space with `bytes` written by first-write faults; returns it, its
/// base and the time of the faults alone.
fn touched<'m>(w: &mut World<'m>, bytes: u64) -> (VmSpace<EmulatedPhysMem<'m>>, u64, Duration) {
    let mut mmu = idle_mmu();
    let mut tlb = Tlb::uniprocessor(&mut mmu);
    let mut s = w.space();
    let base = s.map_anonymous(None, bytes, Prot::RW | Prot::USER).unwrap();
    let t = Instant::now();
    for i in 0..bytes / PAGE {
        s.handle_fault(
            &w.vm,
            VirtAddr::new(base + i * PAGE),
            FaultAccess::write(true),
            &mut w.frames,
            &mut tlb,
        )
        .unwrap();
    }
    (s, base, t.elapsed())
}

fn fork(w: &mut World<'_>, bytes: u64) -> Duration {
    let mut mmu = idle_mmu();
    let mut tlb = Tlb::uniprocessor(&mut mmu);
    let (mut s, _, _) = touched(w, bytes);
    let t = Instant::now();
    let child = s.fork(&w.vm, &mut w.frames, &mut tlb).unwrap();
    let d = t.elapsed();
    w.drop_space(child);
    w.drop_space(s);
    d
}

/// Every page copied into a new hierarchy: allocate, copy, map.
fn eager_copy(w: &mut World<'_>, bytes: u64) -> Duration {
    let (s, base, _) = touched(w, bytes);
    let mut m = PageTables::new_empty(w.mem.phys_mem(), &mut w.frames).unwrap();
    let flags = MapFlags::READ_WRITE.user();
    let mut leaves = Vec::new();
    let t = Instant::now();
    s.mapper()
        .for_each_leaf_in(VirtAddr::new(base), bytes, |l| {
            leaves.push((l.page, l.frame))
        });
    let phys = *s.mapper().phys_mem();
    for &(page, frame) in &leaves {
        let new = w.frames.allocate_frame().unwrap();
        let src = phys
            .table_ptr(PhysFrame::containing_address(frame))
            .as_ptr()
            .cast::<u8>();
        let dst = phys.table_ptr(new).as_ptr().cast::<u8>();
        // SAFETY: distinct emulated frames of 4096 bytes.
        unsafe { core::ptr::copy_nonoverlapping(src, dst, 4096) };
        // SAFETY: bench tables, mapping frames no Rust object uses (emulated memory), pages no code uses when unmapped.
        unsafe {
            m.map(
                Page::<Size4KiB>::containing_address(page),
                new,
                flags,
                &mut w.frames,
            )
        }
        .unwrap()
        .ignore();
    }
    let d = t.elapsed();
    free_hierarchy(w, m, base, bytes);
    w.drop_space(s);
    d
}

/// Frees every frame `m` maps in the range, its tables and its PML4.
fn free_hierarchy(w: &mut World<'_>, mut m: PageTables<EmulatedPhysMem<'_>>, base: u64, len: u64) {
    let mut frames = Vec::new();
    m.for_each_leaf(|l| frames.push(PhysFrame::containing_address(l.frame)));
    // SAFETY: bench tables, mapping frames no Rust object uses (emulated memory), pages no code uses when unmapped.
    unsafe { m.unmap_range(VirtAddr::new(base), len, &mut w.frames) }
        .unwrap()
        .ignore();
    for f in frames.into_iter().chain([m.pml4()]) {
        // SAFETY: unmapped above (the PML4 is empty now); allocated here.
        unsafe { w.frames.deallocate_frame(f) };
    }
}

/// Time per map, lookup and unmap with `n` areas present.
fn areas(w: &mut World<'_>, n: u64, ops: u64) -> [Duration; 3] {
    let mut mmu = idle_mmu();
    let mut tlb = Tlb::uniprocessor(&mut mmu);
    let mut s = w.space();
    // Alternate protections so neighbours never merge.
    for i in 0..n {
        let prot = if i % 2 == 0 { Prot::READ } else { Prot::RW } | Prot::USER;
        s.map_anonymous(Some(0x1000_0000 + i * 2 * PAGE), PAGE, prot)
            .unwrap();
    }
    assert_eq!(s.area_count() as u64, n);
    let mut rng = 0x9e37_79b9_7f4a_7c15u64;
    let mut next = move || {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        rng
    };
    let t = Instant::now();
    let mut placed = Vec::with_capacity(ops as usize);
    for _ in 0..ops {
        placed.push(
            s.map_anonymous(None, PAGE, Prot::READ | Prot::USER)
                .unwrap(),
        );
    }
    let map = t.elapsed() / ops as u32;
    let t = Instant::now();
    for _ in 0..ops {
        let i = next() % n;
        black_box(s.area_at(0x1000_0000 + i * 2 * PAGE));
    }
    let lookup = t.elapsed() / ops as u32;
    let t = Instant::now();
    for a in placed {
        s.unmap(a, PAGE, &w.vm, &mut w.frames, &mut tlb).unwrap();
    }
    let unmap = t.elapsed() / ops as u32;
    w.drop_space(s);
    [map, lookup, unmap]
}

fn main() {
    common::print_provenance("vm");
    let q = quick();
    let trials = if q { 3 } else { 9 };
    let mem = EmulatedMemory::new(if q { 20_000 } else { 40_000 });
    let mut w = World::new(&mem);
    let pages = if q { 2_000 } else { 8_192 };
    let fork_bytes = if q { 16 << 20 } else { 64 << 20 };
    let (mut tf, mut td, mut tk, mut te) = (vec![], vec![], vec![], vec![]);
    for i in 0..trials {
        if i % 2 == 0 {
            tf.push(demand_zero(&mut w, pages));
            td.push(direct(&mut w, pages));
        } else {
            td.push(direct(&mut w, pages));
            tf.push(demand_zero(&mut w, pages));
        }
        tk.push(fork(&mut w, fork_bytes));
        te.push(eager_copy(&mut w, fork_bytes));
    }
    let (f, d, k, e) = (median(tf), median(td), median(tk), median(te));
    println!("vm benchmark (emulated memory, medians of {trials} interleaved trials)");
    println!("| workload | kmem::vm | peer | peer time | ratio (peer/vm) | target |");
    println!("|---|---|---|---|---|---|");
    let per = |t: Duration, n: u64| t.as_nanos() as f64 / n as f64;
    println!(
        "| demand_zero ({pages} first-write faults) | {:.0} ns/page | direct (alloc+zero+map) | {:.0} ns/page | {:.2} | >= 0.8 |",
        per(f, pages),
        per(d, pages),
        d.as_secs_f64() / f.as_secs_f64()
    );
    println!(
        "| fork_{}m (touched, COW) | {:.2} ms | eager_copy | {:.2} ms | {:.1} | >= 20 |",
        fork_bytes >> 20,
        k.as_secs_f64() * 1e3,
        e.as_secs_f64() * 1e3,
        e.as_secs_f64() / k.as_secs_f64()
    );
    let ops = if q { 2_000 } else { 20_000 };
    let small = areas(&mut w, 1_000, ops);
    let big = areas(&mut w, if q { 20_000 } else { 100_000 }, ops);
    println!("\nareas: ns per operation with 1 000 vs 100 000 areas (target: at most 2x growth)");
    let mut worst: f64 = 0.0;
    for (i, name) in ["map (gap search)", "lookup", "unmap"].iter().enumerate() {
        let g = big[i].as_nanos() as f64 / small[i].as_nanos().max(1) as f64;
        worst = worst.max(g);
        println!(
            "{name:<18} {:>8} {:>8}  x{g:.2}",
            small[i].as_nanos(),
            big[i].as_nanos()
        );
    }
    println!();
    println!(
        "ratio demand_zero direct {:.2}",
        d.as_secs_f64() / f.as_secs_f64()
    );
    println!(
        "ratio fork_{}m eager_copy {:.1}",
        fork_bytes >> 20,
        e.as_secs_f64() / k.as_secs_f64()
    );
    println!("ratio areas_growth_100k_vs_1k worst {worst:.2}");
    global_reclaim(q);
    parallel_faults(q, trials);
    thp::run(q, trials);
}

/// Eight spaces joined to one policy fill four times the frame limit.
fn global_reclaim(q: bool) {
    use kmem::vm::replace::ClockPro;
    let (spaces_n, pages, limit) = if q {
        (8u64, 512u64, 1024u64)
    } else {
        (8, 2048, 4096)
    };
    let mem = EmulatedMemory::new((limit + 2048) as usize);
    let mut frames = mem.frame_allocator();
    let mut vm = Vm::new(&mem.phys_mem(), &mut frames).unwrap();
    vm.set_frame_limit(Some(limit));
    vm.set_global_policy(Box::new(ClockPro::new(limit as usize)));
    assert!(vm
        .attach_swap(Box::new(MemSwap::new(spaces_n * pages)))
        .is_ok());
    let kernel = PageTables::new_empty(mem.phys_mem(), &mut frames).unwrap();
    let base = 0x4000_0000u64;
    let spaces: Vec<VmSpace<EmulatedPhysMem<'_>>> = (0..spaces_n)
        .map(|i| {
            let mut s = VmSpace::new_user(&kernel, &mut frames).unwrap();
            s.map_anonymous(Some(base), pages * PAGE, Prot::RW | Prot::USER)
                .unwrap();
            s.join_global(i as u16).unwrap();
            s
        })
        .collect();
    let refs: Vec<&VmSpace<EmulatedPhysMem<'_>>> = spaces.iter().collect();
    let mut mmu = idle_mmu();
    let mut tlb = Tlb::uniprocessor(&mut mmu);
    let mut worker = Duration::ZERO;
    let mut freed = 0u64;
    // Every space fills its pages, then two at a time touch theirs over
    // and over (a hit sets Accessed as the MMU would, a miss faults) while
    // the other six idle; the worker runs whenever the watermarks ask.
    let mut touch = |s: &VmSpace<EmulatedPhysMem<'_>>, p: u64, tlb: &mut Tlb<'_>| {
        let at = VirtAddr::new(base + p * PAGE);
        if s.mapper().translate(at).is_ok() {
            s.simulate_access(at, true);
            return;
        }
        if vm.needs_reclaim() {
            let t0 = Instant::now();
            while vm.needs_reclaim() {
                let n = vm.reclaim_step(&refs[..], &mut frames, tlb).unwrap();
                freed += n as u64;
                if n == 0 {
                    break;
                }
            }
            worker += t0.elapsed();
        }
        s.handle_fault(&vm, at, FaultAccess::write(true), &mut frames, tlb)
            .unwrap();
        // A non-zero word, so the page is written out rather than dropped.
        let phys = s.mapper().translate(at).unwrap().phys;
        mem.write_u64(phys, p + 1);
    };
    for s in &spaces {
        for p in 0..pages {
            touch(s, p, &mut tlb);
        }
    }
    let hot_pages = limit / 4;
    for phase in 0..4usize {
        for _round in 0..4 {
            for k in 0..2 {
                let s = &spaces[(2 * phase + k) % spaces.len()];
                for p in 0..hot_pages {
                    touch(s, p, &mut tlb);
                }
            }
        }
    }
    let st = vm.stats();
    println!(
        "\nglobal_reclaim: {spaces_n} spaces x {pages} pages over {limit} frames, then two spaces at a time touching {hot_pages} pages: {freed} pages freed by the worker, {} scanned, {} page tables skipped, {:.0} ns per page freed",
        st.scanned,
        st.tables_skipped,
        worker.as_nanos() as f64 / freed.max(1) as f64
    );
    println!(
        "ratio reclaim scanned_per_freed {:.2}",
        st.scanned as f64 / freed.max(1) as f64
    );
    // Sharers of a frame are found at its address in each space: nothing
    // is kept per mapped page for the reverse map.
    println!("rmap bytes_per_mapped_page 0");
    for s in spaces {
        s.destroy(&vm, &mut frames, &mut tlb)
            .map_err(|(_, e)| e)
            .unwrap();
    }
}

/// How the threads of `fault_2t_vs_1t` share address spaces.
#[derive(Clone, Copy, PartialEq)]
enum Sharing {
    SeparateSpaces,
    OneSpace,
}

/// Which faults `fault_2t_vs_1t` times.
#[derive(Clone, Copy, PartialEq)]
enum FaultKind {
    DemandZero,
    SwapIn,
}

/// `threads` threads take `pages` faults each of `kind`; returns the
/// wall time of the faults alone (set-up and teardown excluded).
fn fault_run(
    mem: &EmulatedMemory,
    frames: &PerCpuFrames<'_, '_, HostCpu, NoInterruptMask, 4>,
    sharing: Sharing,
    kind: FaultKind,
    threads: usize,
    pages: u64,
) -> Duration {
    let mut vm = Vm::new(&mem.phys_mem(), &mut &*frames).unwrap();
    if kind == FaultKind::SwapIn {
        let slots = threads as u64 * pages + 64;
        assert!(vm.attach_swap(Box::new(MemSwap::new(slots))).is_ok());
        vm.set_reclaim(None, 1); // every swap-in a fault of its own
    }
    let kernel = PageTables::new_empty(mem.phys_mem(), &mut &*frames).unwrap();
    let spaces_n = if sharing == Sharing::OneSpace {
        1
    } else {
        threads
    };
    let mut spaces: Vec<VmSpace<EmulatedPhysMem<'_>>> = (0..spaces_n)
        .map(|_| VmSpace::new_user(&kernel, &mut &*frames).unwrap())
        .collect();
    let area = |t: usize| 0x1000_0000 + t as u64 * 0x1000_0000;
    for t in 0..threads {
        let s = &mut spaces[t % spaces_n];
        s.map_anonymous(Some(area(t)), pages * PAGE, Prot::RW | Prot::USER)
            .unwrap();
    }
    let fault = |s: &VmSpace<EmulatedPhysMem<'_>>, vm: &Vm, va: u64, tlb: &mut Tlb<'_>| {
        s.handle_fault(
            vm,
            VirtAddr::new(va),
            FaultAccess::write(true),
            &mut &*frames,
            tlb,
        )
        .unwrap();
    };
    if kind == FaultKind::SwapIn {
        // Every page written (non-zero), then written out.
        let mut mmu = idle_mmu();
        let mut tlb = Tlb::uniprocessor(&mut mmu);
        for t in 0..threads {
            let s = &spaces[t % spaces_n];
            for i in 0..pages {
                let va = area(t) + i * PAGE;
                fault(s, &vm, va, &mut tlb);
                let pa = s.mapper().translate(VirtAddr::new(va)).unwrap().frame;
                let phys = *s.mapper().phys_mem();
                let p = phys
                    .table_ptr(PhysFrame::containing_address(pa))
                    .as_ptr()
                    .cast::<u8>();
                // SAFETY: an emulated frame of 4096 bytes, this space's alone.
                unsafe { p.write(1) };
            }
        }
        for s in &spaces {
            while s.reclaim(&vm, &mut &*frames, 32, &mut tlb).unwrap() > 0 {}
        }
    }
    let barrier = Barrier::new(threads + 1);
    let elapsed = std::thread::scope(|sc| {
        for t in 0..threads {
            let (s, vm, barrier) = (&spaces[t % spaces_n], &vm, &barrier);
            sc.spawn(move || {
                HostCpu::pin(t);
                let (mut mmu, mut ipis) = (idle_mmu(), RecordingShootdown::new());
                let mut tlb = Tlb::new(&mut mmu, t, &mut ipis);
                barrier.wait();
                for i in 0..pages {
                    fault(s, vm, area(t) + i * PAGE, &mut tlb);
                }
                barrier.wait();
            });
        }
        barrier.wait();
        let t0 = Instant::now();
        barrier.wait();
        t0.elapsed()
    });
    let mut mmu = idle_mmu();
    let mut tlb = Tlb::uniprocessor(&mut mmu);
    for s in spaces {
        s.destroy(&vm, &mut &*frames, &mut tlb).unwrap();
    }
    free_hierarchy_root(kernel, frames);
    // SAFETY: every space is gone: nothing maps the zero frame.
    unsafe { vm.destroy(&mut &*frames) };
    frames.drain_all();
    elapsed
}

/// Gives the kernel's empty PML4 back.
fn free_hierarchy_root(
    kernel: PageTables<EmulatedPhysMem<'_>>,
    frames: &PerCpuFrames<'_, '_, HostCpu, NoInterruptMask, 4>,
) {
    let (pml4, _) = kernel.into_parts();
    // SAFETY: a PML4 that maps nothing, never loaded.
    unsafe { (&*frames).deallocate_frame(pml4) };
}

/// `fault_2t_vs_1t`: faults per second with 2 threads over 1, for each
/// sharing and fault kind, interleaved trials, medians.
fn parallel_faults(q: bool, trials: usize) {
    let pages: u64 = if q { 2_000 } else { 32_768 };
    let frames_n = 4 * pages as usize + 4_096;
    let mem = EmulatedMemory::new(frames_n);
    let map: MemoryMap = MemoryMap::from_regions([Region::new(
        mem.start().as_u64(),
        frames_n as u64 * PAGE,
        RegionKind::Usable,
    )])
    .unwrap();
    let mut storage = vec![0u64; BitmapFrameAllocator::storage_words(&map)];
    let shared: LockedFrameAllocator<'_, NoInterruptMask> =
        // SAFETY: the map's memory is this bench's alone, handed out by this allocator only.
        LockedFrameAllocator::new(unsafe { BitmapFrameAllocator::new(&map, &mut storage) }.unwrap());
    let frames: PerCpuFrames<'_, '_, HostCpu, NoInterruptMask, 4> =
        PerCpuFrames::new(&shared, HostCpu);
    let free_before = shared.with(|a| a.free_frames());
    println!(
        "\nfault_2t_vs_1t: faults per second with 2 threads / with 1 ({pages} faults a thread, medians of {trials} interleaved trials; 2.0 = perfect scaling, needs 2 idle cores)"
    );
    println!("| faults | sharing | 1 thread | 2 threads | ratio | target |");
    println!("|---|---|---|---|---|---|");
    let mut rows = Vec::new();
    for kind in [FaultKind::DemandZero, FaultKind::SwapIn] {
        for sharing in [Sharing::SeparateSpaces, Sharing::OneSpace] {
            let (mut one, mut two) = (Vec::new(), Vec::new());
            // A first run of each, not counted: the host maps the memory in.
            fault_run(&mem, &frames, sharing, kind, 2, pages);
            for i in 0..trials {
                let order: [usize; 2] = if i % 2 == 0 { [1, 2] } else { [2, 1] };
                for t in order {
                    let d = fault_run(&mem, &frames, sharing, kind, t, pages);
                    if t == 1 {
                        one.push(d)
                    } else {
                        two.push(d)
                    }
                }
            }
            let (d1, d2) = (median(one), median(two));
            let rate = |d: Duration, n: u64| n as f64 / d.as_secs_f64() / 1e6;
            let (r1, r2) = (rate(d1, pages), rate(d2, 2 * pages));
            let k = if kind == FaultKind::DemandZero {
                "demand-zero"
            } else {
                "swap-in"
            };
            let (sh, target) = if sharing == Sharing::SeparateSpaces {
                ("separate spaces", ">= 1.8")
            } else {
                ("one space", ">= 1.5")
            };
            println!(
                "| {k} | {sh} | {r1:.2} M/s | {r2:.2} M/s | {:.2} | {target} |",
                r2 / r1
            );
            rows.push((k, sh, r2 / r1));
        }
    }
    // What the machine allows: the copy a swap-in makes (4 KiB from one
    // large buffer into another), with no kmem at all.
    let (mut one, mut two) = (Vec::new(), Vec::new());
    let copy_run = |threads: usize| {
        let bufs: Vec<(Vec<u8>, Vec<u8>)> = (0..threads)
            .map(|_| {
                (
                    vec![1u8; pages as usize * 4096],
                    vec![2u8; pages as usize * 4096],
                )
            })
            .collect();
        let barrier = Barrier::new(threads + 1);
        std::thread::scope(|sc| {
            for (src, dst) in bufs {
                let barrier = &barrier;
                sc.spawn(move || {
                    let mut dst = dst;
                    barrier.wait();
                    for (d, s) in dst.chunks_mut(4096).zip(src.chunks(4096)) {
                        d.copy_from_slice(s);
                    }
                    black_box(&dst);
                    barrier.wait();
                });
            }
            barrier.wait();
            let t0 = Instant::now();
            barrier.wait();
            t0.elapsed()
        })
    };
    for i in 0..trials {
        for t in if i % 2 == 0 { [1, 2] } else { [2, 1] } {
            let d = copy_run(t);
            if t == 1 {
                one.push(d)
            } else {
                two.push(d)
            }
        }
    }
    let (d1, d2) = (median(one), median(two));
    let (c1, c2) = (
        pages as f64 / d1.as_secs_f64() / 1e6,
        2.0 * pages as f64 / d2.as_secs_f64() / 1e6,
    );
    println!(
        "| (calibration: 4 KiB copies, no kmem) | separate buffers | {c1:.2} M/s | {c2:.2} M/s | {:.2} | what the machine allows |",
        c2 / c1
    );
    rows.push(("copy", "calibration", c2 / c1));
    assert_eq!(
        shared.with(|a| a.free_frames()),
        free_before,
        "every frame back"
    );
    println!();
    for (k, sh, r) in rows {
        println!("ratio fault_2t_vs_1t {k} {sh} {r:.2}");
    }
}
