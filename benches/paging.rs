//! `cargo bench --bench paging` — kmem's mapper vs the `x86_64` crate's `OffsetPageTable`,
//! same emulated physical memory type, same frame allocator type, same run, interleaved
//! trials, medians. `KMEM_BENCH_QUICK=1` for a short run.
//!
//! (a) map 1 GiB as 4 KiB pages: `map_range_with(.., Size4KiB)` vs `map_to` per page;
//! (b) 64 GiB direct map: automatic huge pages vs 4 KiB pages via `map_to` (times + table frames);
//! (c) unmap 1 GiB of 4 KiB pages: `unmap_range` (reclaims tables) vs per-page `unmap` + `clean_up`;
//! (d) `translate` throughput over 1 GiB of 4 KiB pages, random addresses.

mod common;

use std::hint::black_box;
use std::time::{Duration, Instant};

use kmem::paging::{LeafSize, MapFlags, OffsetPhysMem, PageTables};
use kmem::testing::phys_mem::{EmulatedFrameAllocator, EmulatedMemory};
use x86_64::structures::paging::mapper::{CleanUp, TranslateResult};
use x86_64::structures::paging::{
    FrameAllocator, Mapper as _, OffsetPageTable, Page, PageTableFlags as F, PhysFrame, Size4KiB,
    Translate,
};
use x86_64::{PhysAddr, VirtAddr};

const K4: u64 = 4096;
const G1: u64 = 1 << 30;
const BASE: u64 = 0xffff_9000_0000_0000;

fn quick() -> bool {
    std::env::var_os("KMEM_BENCH_QUICK").is_some()
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn ours(mem: &EmulatedMemory, a: &mut EmulatedFrameAllocator) -> PageTables<OffsetPhysMem> {
    // SAFETY: emulated memory maps physical address p at host address p (offset zero).
    let phys = unsafe { OffsetPhysMem::new(mem.phys_offset()) };
    PageTables::new_empty(phys, a).unwrap()
}

/// Maps `[BASE, BASE + len)` to physical 0.. with 4 KiB pages, read-write.
fn ours_map_4k(m: &mut PageTables<OffsetPhysMem>, a: &mut EmulatedFrameAllocator, len: u64) {
    // SAFETY: bench tables, mapping frames no Rust object uses (emulated memory), pages no code uses when unmapped.
    unsafe {
        m.map_range_with(
            VirtAddr::new(BASE),
            PhysAddr::new(0),
            len,
            MapFlags::READ_WRITE,
            LeafSize::Size4KiB,
            a,
        )
    }
    .unwrap()
    .ignore();
}

fn theirs<'a>(mem: &'a EmulatedMemory, a: &mut EmulatedFrameAllocator) -> OffsetPageTable<'a> {
    let root = a.allocate_frame().unwrap();
    // SAFETY: `root` is a fresh frame of `mem`; physical p lives at host address p.
    unsafe {
        let t = mem.table_mut(root);
        t.zero();
        OffsetPageTable::new(t, mem.phys_offset())
    }
}

fn opt_map_4k(
    opt: &mut OffsetPageTable,
    a: &mut EmulatedFrameAllocator,
    va: u64,
    pa: u64,
    len: u64,
) {
    let flags = F::PRESENT | F::WRITABLE | F::NO_EXECUTE;
    for off in (0..len).step_by(K4 as usize) {
        let page = Page::<Size4KiB>::containing_address(VirtAddr::new(va + off));
        let frame = PhysFrame::containing_address(PhysAddr::new(pa + off));
        // SAFETY: leaf frames are never dereferenced in emulation.
        unsafe { opt.map_to(page, frame, flags, a).unwrap().ignore() };
    }
}

struct Row {
    name: &'static str,
    ours: Duration,
    peer: Duration,
    note: String,
}

/// (a) Map 1 GiB as 4 KiB pages.
fn map_1g(trials: usize) -> Row {
    let (mut o, mut p) = (vec![], vec![]);
    for t in 0..trials {
        let run_ours = || {
            let mem = EmulatedMemory::new(520);
            let mut a = mem.frame_allocator();
            let mut m = ours(&mem, &mut a);
            let start = Instant::now();
            ours_map_4k(&mut m, &mut a, G1);
            let d = start.elapsed();
            assert_eq!(a.in_use(), 515);
            d
        };
        let run_peer = || {
            let mem = EmulatedMemory::new(520);
            let mut a = mem.frame_allocator();
            let mut opt = theirs(&mem, &mut a);
            let start = Instant::now();
            opt_map_4k(&mut opt, &mut a, BASE, 0, G1);
            let d = start.elapsed();
            assert_eq!(a.in_use(), 515);
            d
        };
        interleave(t, &mut o, &mut p, run_ours, run_peer);
    }
    Row {
        name: "map_1g_4k",
        ours: median(o),
        peer: median(p),
        note: "515 table frames each".into(),
    }
}

fn interleave(
    t: usize,
    o: &mut Vec<Duration>,
    p: &mut Vec<Duration>,
    a: impl Fn() -> Duration,
    b: impl Fn() -> Duration,
) {
    if t.is_multiple_of(2) {
        o.push(a());
        p.push(b());
    } else {
        p.push(b());
        o.push(a());
    }
}

/// (b) 64 GiB direct map: huge pages (kmem, automatic) vs 4 KiB pages (OffsetPageTable).
fn direct_map(trials: usize) -> (Row, Row) {
    let len = 64 * G1;
    let frames_4k = (len / (2 << 20)) as usize + 64 + 2;
    let (mut o, mut p, mut o4) = (vec![], vec![], vec![]);
    let (mut ours_tables, mut peer_tables, mut ours4_tables) = (0, 0, 0);
    for t in 0..trials {
        let run_ours = || {
            let mem = EmulatedMemory::new(8);
            let mut a = mem.frame_allocator();
            let mut m = ours(&mem, &mut a);
            let start = Instant::now();
            // SAFETY: bench tables, mapping frames no Rust object uses (emulated memory), pages no code uses when unmapped.
            unsafe {
                m.map_range(
                    VirtAddr::new(BASE),
                    PhysAddr::new(0),
                    len,
                    MapFlags::READ_WRITE,
                    &mut a,
                )
            }
            .unwrap()
            .ignore();
            (start.elapsed(), a.in_use())
        };
        let run_peer = || {
            let mem = EmulatedMemory::new(frames_4k);
            let mut a = mem.frame_allocator();
            let mut opt = theirs(&mem, &mut a);
            let start = Instant::now();
            opt_map_4k(&mut opt, &mut a, BASE, 0, len);
            (start.elapsed(), a.in_use())
        };
        let run_ours_4k = || {
            let mem = EmulatedMemory::new(frames_4k);
            let mut a = mem.frame_allocator();
            let mut m = ours(&mem, &mut a);
            let start = Instant::now();
            ours_map_4k(&mut m, &mut a, len);
            (start.elapsed(), a.in_use())
        };
        let order: [u8; 3] = if t.is_multiple_of(2) {
            [0, 1, 2]
        } else {
            [2, 1, 0]
        };
        for which in order {
            match which {
                0 => {
                    let (d, n) = run_ours();
                    o.push(d);
                    ours_tables = n;
                }
                1 => {
                    let (d, n) = run_peer();
                    p.push(d);
                    peer_tables = n;
                }
                _ => {
                    let (d, n) = run_ours_4k();
                    o4.push(d);
                    ours4_tables = n;
                }
            }
        }
    }
    let huge = Row {
        name: "direct_map_64g",
        ours: median(o),
        peer: median(p.clone()),
        note: format!("table frames: kmem(huge) {ours_tables}, OffsetPageTable(4K) {peer_tables}"),
    };
    let small = Row {
        name: "direct_map_64g_4k",
        ours: median(o4),
        peer: median(p),
        note: format!("table frames: kmem(4K) {ours4_tables}, OffsetPageTable(4K) {peer_tables}"),
    };
    (huge, small)
}

/// (c) Unmap 1 GiB of 4 KiB pages, reclaiming tables.
fn unmap_1g(trials: usize) -> Row {
    let (mut o, mut p) = (vec![], vec![]);
    for t in 0..trials {
        let run_ours = || {
            let mem = EmulatedMemory::new(520);
            let mut a = mem.frame_allocator();
            let mut m = ours(&mem, &mut a);
            ours_map_4k(&mut m, &mut a, G1);
            let start = Instant::now();
            // SAFETY: bench tables, mapping frames no Rust object uses (emulated memory), pages no code uses when unmapped.
            unsafe { m.unmap_range(VirtAddr::new(BASE), G1, &mut a) }
                .unwrap()
                .ignore();
            let d = start.elapsed();
            assert_eq!(a.in_use(), 2, "PML4 + kernel-half PDPT remain");
            d
        };
        let run_peer = || {
            let mem = EmulatedMemory::new(520);
            let mut a = mem.frame_allocator();
            let mut opt = theirs(&mem, &mut a);
            opt_map_4k(&mut opt, &mut a, BASE, 0, G1);
            let start = Instant::now();
            for off in (0..G1).step_by(K4 as usize) {
                let page = Page::<Size4KiB>::containing_address(VirtAddr::new(BASE + off));
                opt.unmap(page).unwrap().1.ignore();
            }
            // SAFETY: only the emptied tables of this emulated hierarchy are freed.
            unsafe { opt.clean_up(&mut a) };
            let d = start.elapsed();
            assert_eq!(a.in_use(), 1);
            d
        };
        interleave(t, &mut o, &mut p, run_ours, run_peer);
    }
    Row {
        name: "unmap_1g_4k",
        ours: median(o),
        peer: median(p),
        note: "all 513 lower tables freed".into(),
    }
}

/// (d) Translate random addresses of the first `window` bytes of 1 GiB mapped as 4 KiB pages:
/// the whole GiB (table walks miss the caches) or 2 MiB (tables stay in L1: pure walk cost).
fn translate(trials: usize, name: &'static str, window: u64, addr_only: bool) -> Row {
    const N: usize = 1 << 18;
    let mem_o = EmulatedMemory::new(520);
    let mut ao = mem_o.frame_allocator();
    let mut m = ours(&mem_o, &mut ao);
    ours_map_4k(&mut m, &mut ao, G1);
    let mem_p = EmulatedMemory::new(520);
    let mut ap = mem_p.frame_allocator();
    let mut opt = theirs(&mem_p, &mut ap);
    opt_map_4k(&mut opt, &mut ap, BASE, 0, G1);
    let mut x = 0x2545_f491_4f6c_dd1du64;
    let addrs: Vec<VirtAddr> = (0..N)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            VirtAddr::new(BASE + x % window)
        })
        .collect();
    let (mut o, mut p) = (vec![], vec![]);
    for t in 0..trials {
        let run_ours = || {
            let start = Instant::now();
            let sum = addrs.iter().fold(0u64, |s, &v| {
                s ^ if addr_only {
                    black_box(m.translate_addr(v)).map_or(0, |p| p.as_u64())
                } else {
                    black_box(m.translate(v)).map_or(0, |t| t.phys.as_u64())
                }
            });
            let d = start.elapsed();
            black_box(sum);
            d
        };
        let run_peer = || {
            let start = Instant::now();
            let sum = addrs.iter().fold(0u64, |s, &v| {
                if addr_only {
                    s ^ black_box(opt.translate_addr(v)).map_or(0, |p| p.as_u64())
                } else {
                    match black_box(opt.translate(v)) {
                        TranslateResult::Mapped { frame, offset, .. } => {
                            s ^ (frame.start_address().as_u64() + offset)
                        }
                        _ => s,
                    }
                }
            });
            let d = start.elapsed();
            black_box(sum);
            d
        };
        interleave(t, &mut o, &mut p, run_ours, run_peer);
    }
    let (so, sp) = (median(o.clone()), median(p.clone()));
    Row {
        name,
        ours: so,
        peer: sp,
        note: format!(
            "{N} random addresses: {:.1} vs {:.1} Mtranslations/s",
            mops(N, so),
            mops(N, sp)
        ),
    }
}

fn mops(n: usize, d: Duration) -> f64 {
    n as f64 / d.as_secs_f64() / 1e6
}

fn main() {
    common::print_provenance("paging");
    let trials = if quick() { 3 } else { 11 };
    let direct_trials = if quick() { 1 } else { 5 };
    println!("paging benchmark (emulated physical memory; medians of {trials} interleaved trials, {direct_trials} for (b))");
    let a = map_1g(trials);
    let (b, b4) = direct_map(direct_trials);
    let c = unmap_1g(trials);
    let d = translate(3 * trials, "translate", G1, false);
    let d2 = translate(3 * trials, "translate_hot_2m", 2 << 20, false);
    let e = translate(3 * trials, "translate_addr", G1, true);
    let e2 = translate(3 * trials, "translate_addr_hot_2m", 2 << 20, true);
    let rows = [a, b, b4, c, d, d2, e, e2];
    println!(
        "{:<20} {:>14} {:>18} {:>8}  note",
        "workload", "kmem", "OffsetPageTable", "ratio"
    );
    for r in &rows {
        println!(
            "{:<20} {:>11.3} ms {:>15.3} ms {:>7.1}x  {}",
            r.name,
            r.ours.as_secs_f64() * 1e3,
            r.peer.as_secs_f64() * 1e3,
            ratio(r),
            r.note
        );
    }
    for r in &rows {
        println!("ratio {} OffsetPageTable {:.2}", r.name, ratio(r));
    }
}

fn ratio(r: &Row) -> f64 {
    r.peer.as_secs_f64() / r.ours.as_secs_f64()
}
