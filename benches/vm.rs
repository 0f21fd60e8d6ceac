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
//!
//! `KMEM_BENCH_QUICK=1` for a short run.

mod common;

use kmem::paging::{MapFlags, PageTables, PhysMem};
use kmem::smp::Tlb;
use kmem::testing::mmu::RecordingMmu;
use kmem::testing::phys_mem::{EmulatedFrameAllocator, EmulatedMemory, EmulatedPhysMem};
use kmem::vm::{FaultAccess, Prot, Vm, VmSpace};
use std::hint::black_box;
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
        s.destroy(&mut self.vm, &mut self.frames, &mut tlb).unwrap();
    }
}

/// The MMU of a bench CPU that has no space loaded: nothing to invalidate.
fn idle_mmu() -> RecordingMmu {
    RecordingMmu::new(PhysFrame::containing_address(PhysAddr::new(0)))
}

/// First-write faults on `n` pages; returns the time of the faults alone.
fn demand_zero(w: &mut World<'_>, n: u64) -> Duration {
    let mut mmu = idle_mmu();
    let mut tlb = Tlb::uniprocessor(&mut mmu);
    let mut s = w.space();
    let base = s
        .map_anonymous(None, n * PAGE, Prot::RW | Prot::USER)
        .unwrap();
    let t = Instant::now();
    for i in 0..n {
        s.handle_fault(
            &mut w.vm,
            VirtAddr::new(base + i * PAGE),
            FaultAccess::write(true),
            &mut w.frames,
            &mut tlb,
        )
        .unwrap();
    }
    let d = t.elapsed();
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
        m.map(page, frame, flags, &mut w.frames).unwrap().ignore();
    }
    let d = t.elapsed();
    black_box(&m);
    free_hierarchy(w, m, base, n * PAGE);
    w.drop_space(s);
    d
}

/// A space with `bytes` written; returns it and its base.
fn touched<'m>(w: &mut World<'m>, bytes: u64) -> (VmSpace<EmulatedPhysMem<'m>>, u64) {
    let mut mmu = idle_mmu();
    let mut tlb = Tlb::uniprocessor(&mut mmu);
    let mut s = w.space();
    let base = s.map_anonymous(None, bytes, Prot::RW | Prot::USER).unwrap();
    for i in 0..bytes / PAGE {
        s.handle_fault(
            &mut w.vm,
            VirtAddr::new(base + i * PAGE),
            FaultAccess::write(true),
            &mut w.frames,
            &mut tlb,
        )
        .unwrap();
    }
    (s, base)
}

fn fork(w: &mut World<'_>, bytes: u64) -> Duration {
    let mut mmu = idle_mmu();
    let mut tlb = Tlb::uniprocessor(&mut mmu);
    let (mut s, _) = touched(w, bytes);
    let t = Instant::now();
    let child = s.fork(&mut w.vm, &mut w.frames, &mut tlb).unwrap();
    let d = t.elapsed();
    w.drop_space(child);
    w.drop_space(s);
    d
}

/// Every page copied into a new hierarchy: allocate, copy, map.
fn eager_copy(w: &mut World<'_>, bytes: u64) -> Duration {
    let (s, base) = touched(w, bytes);
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
        m.map(
            Page::<Size4KiB>::containing_address(page),
            new,
            flags,
            &mut w.frames,
        )
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
    m.unmap_range(VirtAddr::new(base), len, &mut w.frames)
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
        s.unmap(a, PAGE, &mut w.vm, &mut w.frames, &mut tlb)
            .unwrap();
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
}
