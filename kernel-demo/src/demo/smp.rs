//! The demo's SMP step: start the other CPUs, run the mixed workload on
//! all of them at once, and time a TLB shootdown.

use kernel_demo::arch::cpu;
use kernel_demo::arch::cpu::MAX_CPUS;
use kernel_demo::arch::{cpus, shootdown};
use kernel_demo::mm::kernel_space::STACK_PAGES;
use kernel_demo::mm::memory::with_memory;
use kernel_demo::mm::mixed::{self, accounted, counters, mixed_work};
use kernel_demo::mm::percpu::{unmap_pages_on, FRAME_CACHE, HEAP_CACHE};
use kernel_demo::println;
use kernel_demo::smp;
use kmem::paging::MapFlags;
use kmem::smp::CpuSet;
use x86_64::structures::paging::{Page, Size4KiB};
use x86_64::VirtAddr;

/// Where the shootdown benchmark works (PML4 slot 291).
const BENCH: u64 = 0xFFFF_9180_0000_0000;
/// The timed 2 MiB starts one page in, so it spans two page tables, each
/// kept alive by a sentinel page outside it: the unmap frees no table (a
/// freed table must be shot down on every CPU), and the single-CPU run is
/// the same work with no IPI.
const START: u64 = BENCH + 4096;
/// The sentinels: the page before the range and the page after it.
const SENTINELS: [u64; 2] = [BENCH, START + BENCH_PAGES * 4096];
/// 4 KiB pages in 2 MiB.
const BENCH_PAGES: u64 = 512;
/// Timed unmaps per configuration (the median is printed).
const RUNS: usize = 5;

pub fn run() {
    kernel_demo::mm::percpu::init();
    let n = match smp::boot_aps(MAX_CPUS) {
        Ok(n) => n,
        Err(e) => kernel_demo::dev::qemu::fatal(format_args!("starting the other CPUs: {e}")),
    };
    println!(
        "{n} CPUs online (INIT, start-up, start-up through the local APIC; trampoline at 0x8000)"
    );
    for cpu in 1..n {
        if let Some(s) = smp::stack_of(cpu) {
            println!(
                "  CPU {cpu}: APIC id {}, stack {:#x}..{:#x} ({STACK_PAGES} pages from kmem), guard page {:#x} unmapped",
                cpus::apic_id_of(cpu).unwrap_or(0),
                s.guard + 4096,
                s.top,
                s.guard
            );
        }
    }
    if n == 1 {
        println!("one CPU (KMEM_SMP=1): nothing runs concurrently; shootdowns need no IPI");
    }

    let (frames0, live0) = accounted();
    let rounds0 = shootdown::stats().rounds;
    let t0 = cpu::rdtsc();
    if let Err(e) = smp::run_on_all(mixed_work, 0x00c0_ffee) {
        kernel_demo::dev::qemu::fatal(format_args!("mixed workload: {e}"));
    }
    let ms = cpu::tsc_per_ms().map_or(0, |t| (cpu::rdtsc() - t0) / t);
    println!(
        "all CPUs at once, {} operations each (heap alloc/free, frame alloc/free, map/unmap, unmaps shot down in batches), {ms} ms:",
        mixed::OPS
    );
    println!("  cpu  heap-objs  frames  maps  unmaps  rounds  checks  bad  frame-cache hits/misses  heap-cache hits/misses");
    let mut bad = 0;
    for c in 0..n {
        let k = counters(c);
        let (f, h) = (FRAME_CACHE.cpu_stats(c), HEAP_CACHE.cpu_stats(c));
        println!(
            "  {c:>3}  {:>9}  {:>6}  {:>4}  {:>6}  {:>6}  {:>6}  {:>3}  {:>11}/{:<11} {:>10}/{}",
            k.heap,
            k.frames,
            k.maps,
            k.unmaps,
            k.rounds,
            k.verified,
            k.bad,
            f.hits,
            f.misses,
            h.hits,
            h.misses
        );
        bad += k.bad;
    }
    let (frames1, live1) = accounted();
    println!(
        "totals: {} shootdown rounds; frames (free + heap pages + page tables) {frames0} -> {frames1}, heap live bytes {live0} -> {live1}: {}",
        shootdown::stats().rounds - rounds0,
        if (frames0, live0) == (frames1, live1) && bad == 0 {
            "all back"
        } else {
            "LOST"
        }
    );
    if (frames0, live0) != (frames1, live1) || bad != 0 {
        kernel_demo::dev::qemu::fatal(format_args!("the concurrent section lost memory or data"));
    }
    threaded_process();
    shootdown_bench(n);
}

/// A process with a thread on every CPU, overcommitted onto swap.
fn threaded_process() {
    use kernel_demo::user::threads::{self, FRAME_LIMIT, OWN_PAGES, ROUNDS, SHARED_PAGES};
    let r = threads::run(0x7ead_5eed);
    let n = r.threads.len() as u64;
    println!(
        "a process with a thread on each of {n} CPUs: {OWN_PAGES} pages each + {SHARED_PAGES} shared over {FRAME_LIMIT} frames (swap in kernel memory), {ROUNDS} rounds of write/check, each thread in turn unmapping, protecting and forking the space under the others, {} ms:",
        r.ms
    );
    println!("  cpu  faults  in-transit  checks  bad  changes  refused-after-munmap");
    let mut faults = 0;
    for (c, t) in r.threads.iter().enumerate() {
        println!(
            "  {c:>3}  {:>6}  {:>10}  {:>6}  {:>3}  {:>7}  {:>20}",
            t.faults, t.in_transit, t.checks, t.bad, t.changes, t.refused
        );
        faults += t.faults;
    }
    let rate = (faults * 1000).checked_div(r.ms).unwrap_or(0);
    println!(
        "totals: {faults} faults ({rate} per second), {} shootdown rounds, {} pages swapped out, {} in; frames and heap {:?} -> {:?}, swap slots left {}: {}",
        r.rounds,
        r.swap_outs,
        r.swap_ins,
        r.accounted.0,
        r.accounted.1,
        r.slots_left,
        if r.clean() { "all back, every value as last written" } else { "LOST" }
    );
    if !r.clean() {
        kernel_demo::dev::qemu::fatal(format_args!("the threaded process lost memory or data"));
    }
}

/// Maps `pages` pages of 4 KiB at `start` with fresh frames.
fn map_pages(start: u64, pages: u64) {
    with_memory(|m| {
        for i in 0..pages {
            let frame = FRAME_CACHE.allocate().expect("a frame");
            let page = Page::<Size4KiB>::containing_address(VirtAddr::new(start + i * 4096));
            let mut cache = &FRAME_CACHE;
            // SAFETY: a fresh frame at a page of the benchmark's own window.
            unsafe {
                m.mapper
                    .map(page, frame, MapFlags::READ_WRITE.global(), &mut cache)
            }
            .expect("map")
            .ignore();
        }
    });
    // Touch every page so each CPU that walks it caches translations.
    for i in 0..pages {
        // SAFETY: just mapped, writable.
        unsafe { ((start + i * 4096) as *mut u64).write_volatile(i) };
    }
}

/// TSC ticks of unmapping the range with a shootdown to `cpus`; rounds and
/// IPIs it took.
fn timed_unmap(cpus: CpuSet) -> (u64, u64, u64) {
    map_pages(START, BENCH_PAGES);
    let before = shootdown::stats();
    let t0 = cpu::rdtsc();
    let report = unmap_pages_on(
        Page::containing_address(VirtAddr::new(START)),
        BENCH_PAGES,
        cpus,
        |f| {
            // SAFETY: unmapped and shot down on every CPU that could cache it.
            let _ = unsafe { FRAME_CACHE.free(f) };
        },
    )
    .expect("unmap");
    let ticks = cpu::rdtsc() - t0;
    let after = shootdown::stats();
    assert_eq!(u64::from(report.rounds), after.rounds - before.rounds);
    (
        ticks,
        after.rounds - before.rounds,
        after.ipis - before.ipis,
    )
}

fn median(mut v: [u64; RUNS]) -> u64 {
    v.sort_unstable();
    v[RUNS / 2]
}

fn shootdown_bench(n: usize) {
    let all = cpus::online();
    let me = CpuSet::first(1);
    let mut multi = [0; RUNS];
    let mut single = [0; RUNS];
    let (mut rounds, mut ipis) = (0, 0);
    for s in SENTINELS {
        map_pages(s, 1);
    }
    for i in 0..RUNS {
        let (t, r, p) = timed_unmap(all);
        multi[i] = t;
        rounds += r;
        ipis += p;
        single[i] = timed_unmap(me).0;
    }
    for s in SENTINELS {
        unmap_pages_on(Page::containing_address(VirtAddr::new(s)), 1, all, |f| {
            // SAFETY: unmapped and shot down on every CPU online.
            let _ = unsafe { FRAME_CACHE.free(f) };
        })
        .expect("unmap a sentinel");
    }
    let (m, s) = (median(multi), median(single));
    let us = |t: u64| cpu::tsc_per_ms().map_or(0, |per_ms| t * 1000 / per_ms);
    println!(
        "shootdown: unmapping 2 MiB of 4 KiB pages ({BENCH_PAGES} pages), median of {RUNS}: {n} CPUs {m} ticks (~{} us), {} IPI round(s) and {} IPIs per unmap; this CPU alone {s} ticks (~{} us)",
        us(m),
        rounds / RUNS as u64,
        ipis / RUNS as u64,
        us(s)
    );
    let ratio = m * 100 / s.max(1);
    println!(
        "ratio shootdown_{n}cpu_vs_1cpu {}.{:02}",
        ratio / 100,
        ratio % 100
    );
}
