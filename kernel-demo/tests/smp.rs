//! Several CPUs on kmem: the application processors start on stacks kmem
//! mapped (guard pages below), all CPUs allocate, free, map and unmap at
//! once, a TLB shootdown stops another CPU's reads through an unmapped
//! page, page tables an unmap freed stay allocated until every CPU
//! acknowledged the shootdown, and a process with a thread on each CPU
//! keeps every value through munmap, mprotect, fork and swap.
// kmem-vm: mem=256M smp=4
#![no_std]
#![no_main]

extern crate alloc;

use core::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use kernel_demo::arch::cpu::MAX_CPUS;
use kernel_demo::arch::cpu::{rdtsc, tsc_per_ms};
use kernel_demo::arch::cpus;
use kernel_demo::arch::shootdown::{self, IpiShootdown};
use kernel_demo::boot::phys_to_virt;
use kernel_demo::mm::kernel_space::enter;
use kernel_demo::mm::memory::{with_memory, FRAMES};
use kernel_demo::mm::mixed::{accounted, counters, mixed_work, Counters, OPS};
use kernel_demo::mm::percpu::{unmap_pages, FRAME_CACHE};
use kernel_demo::smp;
use kernel_demo::user::probe_read;
use kmem::paging::MapFlags;
use kmem::smp::DeferredFrees;
use x86_64::structures::paging::{FrameAllocator, FrameDeallocator, Page, PhysFrame, Size4KiB};
use x86_64::VirtAddr;

/// The CPUs QEMU gives this kernel (`smp=4` above).
const CPUS: usize = 4;

/// Starts the other CPUs (once) and checks they all came.
fn cpus() -> usize {
    kernel_demo::mm::percpu::init();
    let n = smp::boot_aps(MAX_CPUS).unwrap_or_else(|e| panic!("starting the CPUs: {e}"));
    assert_eq!(n, CPUS, "CPUs online");
    n
}

/// What each CPU saw of itself in `online_with_own_stacks`.
static SEEN_INDEX: [AtomicUsize; MAX_CPUS] = [const { AtomicUsize::new(usize::MAX) }; MAX_CPUS];
static SEEN_RSP: [AtomicU64; MAX_CPUS] = [const { AtomicU64::new(0) }; MAX_CPUS];
static SEEN_APIC: [AtomicU64; MAX_CPUS] = [const { AtomicU64::new(u64::MAX) }; MAX_CPUS];
static GUARD_FAULTED: [AtomicUsize; MAX_CPUS] = [const { AtomicUsize::new(0) }; MAX_CPUS];

fn record_self(cpu: usize, _: u64) {
    let local = 0u8;
    SEEN_INDEX[cpu].store(cpus::cpu_index(), Ordering::SeqCst);
    SEEN_RSP[cpu].store(
        core::hint::black_box(&local) as *const u8 as u64,
        Ordering::SeqCst,
    );
    SEEN_APIC[cpu].store(u64::from(kernel_demo::arch::apic::id()), Ordering::SeqCst);
    if let Some(stack) = smp::stack_of(cpu) {
        let faulted = probe_read(stack.guard).is_err();
        GUARD_FAULTED[cpu].store(usize::from(faulted) + 1, Ordering::SeqCst);
    }
}

fn page(addr: u64) -> Page<Size4KiB> {
    Page::containing_address(VirtAddr::new(addr))
}

fn spin_ms(ms: u64) {
    let end = rdtsc() + tsc_per_ms().unwrap_or(1_000_000) * ms;
    while rdtsc() < end {
        core::hint::spin_loop();
    }
}

/// Waits until `cond` holds; panics after 10 s (a CPU that never gets
/// there would otherwise hang the run).
fn wait_until(what: &str, cond: impl Fn() -> bool) {
    let end = rdtsc() + tsc_per_ms().unwrap_or(1_000_000) * 10_000;
    while !cond() {
        assert!(rdtsc() < end, "timed out waiting for {what}");
        core::hint::spin_loop();
    }
}

fn direct(frame: PhysFrame) -> *mut u64 {
    phys_to_virt(frame.start_address().as_u64()).cast()
}

fn fill(frame: PhysFrame, value: u64) {
    // SAFETY: the frame is the caller's, in the direct map.
    unsafe { core::slice::from_raw_parts_mut(direct(frame), 512).fill(value) };
}

// ---- shootdown ----------------------------------------------------------

/// The page CPU 0 unmaps while the others read it (PML4 slot 288).
const SHOT_PAGE: u64 = 0xFFFF_9000_0000_0000;
const OLD: u64 = 0x01d0_01d0_01d0_01d0;
const NEW: u64 = 0x0e11_0e11_0e11_0e11;
/// Successful reads each reader makes before CPU 0 unmaps.
const WARM_READS: u64 = 1000;

static SHOT_FRAME: AtomicU64 = AtomicU64::new(0);
static SHOT_DONE: AtomicU64 = AtomicU64::new(0);
static READS: [AtomicU64; MAX_CPUS] = [const { AtomicU64::new(0) }; MAX_CPUS];
static READS_AFTER_SHOT: [AtomicU64; MAX_CPUS] = [const { AtomicU64::new(0) }; MAX_CPUS];
static WRONG_VALUES: [AtomicU64; MAX_CPUS] = [const { AtomicU64::new(0) }; MAX_CPUS];
static FAULTED: [AtomicU64; MAX_CPUS] = [const { AtomicU64::new(0) }; MAX_CPUS];

fn shootdown_role(cpu: usize, _: u64) {
    if cpu == 0 {
        let n = cpus::online_count();
        wait_until("the readers", || {
            (1..n).all(|c| READS[c].load(Ordering::SeqCst) >= WARM_READS)
        });
        let mut leaf = None;
        let report = unmap_pages(page(SHOT_PAGE), 1, |f| leaf = Some(f)).expect("unmap");
        assert_eq!(report.rounds, 1, "one IPI round");
        assert_eq!(report.acked.len(), n - 1, "every other CPU acknowledged");
        SHOT_DONE.store(1, Ordering::SeqCst);
        // The frame is free now: new contents, as its next owner would write.
        let frame = leaf.expect("the leaf frame");
        fill(frame, NEW);
        wait_until("the readers' faults", || {
            (1..n).all(|c| FAULTED[c].load(Ordering::SeqCst) != 0)
        });
        // SAFETY: unmapped and shot down everywhere; nobody uses it.
        unsafe { FRAME_CACHE.free(frame) }.expect("free");
        return;
    }
    let mut reads = 0u64;
    let end = rdtsc() + tsc_per_ms().unwrap_or(1_000_000) * 10_000;
    loop {
        let shot = SHOT_DONE.load(Ordering::SeqCst) != 0;
        let offset = (reads % 512) * 8;
        match probe_read(SHOT_PAGE + offset) {
            Ok(v) => {
                if v != OLD {
                    WRONG_VALUES[cpu].fetch_add(1, Ordering::SeqCst);
                }
                if shot {
                    READS_AFTER_SHOT[cpu].fetch_add(1, Ordering::SeqCst);
                }
                reads += 1;
                READS[cpu].store(reads, Ordering::SeqCst);
            }
            Err(_) => {
                FAULTED[cpu].store(1, Ordering::SeqCst);
                return;
            }
        }
        assert!(rdtsc() < end, "CPU {cpu} never faulted");
    }
}

// ---- page tables held until acknowledged --------------------------------

/// A page whose unmap empties its page table and directory (slot 288, 1 GiB in).
const TABLE_PAGE: u64 = 0xFFFF_9000_4000_0000;
/// How long CPU 1 keeps interrupts masked (it cannot acknowledge meanwhile).
const MASKED_MS: u64 = 30;

static TABLE_READY: AtomicU64 = AtomicU64::new(0);
static B_MASKED: AtomicU64 = AtomicU64::new(0);
static B_UNMASK_TSC: AtomicU64 = AtomicU64::new(0);
static FREED_TABLES: [AtomicU64; 8] = [const { AtomicU64::new(0) }; 8];
static FREED_COUNT: AtomicUsize = AtomicUsize::new(0);
static CHECKS: AtomicU64 = AtomicU64::new(0);
static EARLY_FREE: AtomicU64 = AtomicU64::new(0);
static RELEASE_TSC: AtomicU64 = AtomicU64::new(0);

/// Records the page tables the mapper frees, in front of the deferred frees.
struct Recorder<'a, A>(&'a mut A);

// SAFETY: allocation forwards to `A`.
unsafe impl<A: FrameAllocator<Size4KiB>> FrameAllocator<Size4KiB> for Recorder<'_, A> {
    fn allocate_frame(&mut self) -> Option<PhysFrame> {
        self.0.allocate_frame()
    }
}

impl<A: FrameDeallocator<Size4KiB>> FrameDeallocator<Size4KiB> for Recorder<'_, A> {
    unsafe fn deallocate_frame(&mut self, frame: PhysFrame) {
        let i = FREED_COUNT.fetch_add(1, Ordering::SeqCst);
        FREED_TABLES[i % 8].store(frame.start_address().as_u64(), Ordering::SeqCst);
        // SAFETY: forwarded from the mapper, which makes the promise.
        unsafe { self.0.deallocate_frame(frame) };
    }
}

fn freed_table_is_free() -> bool {
    let n = FREED_COUNT.load(Ordering::SeqCst).min(8);
    FRAMES.with(|f| {
        FREED_TABLES[..n].iter().any(|a| {
            f.is_free(PhysFrame::containing_address(x86_64::PhysAddr::new(
                a.load(Ordering::SeqCst),
            )))
        })
    })
}

fn table_role(cpu: usize, _: u64) {
    match cpu {
        0 => {
            wait_until("CPU 1 masked", || B_MASKED.load(Ordering::SeqCst) == 1);
            let report = with_memory(|m| {
                let mut frames = &FRAMES;
                let mut deferred = DeferredFrees::<_, 8>::new(&mut frames);
                // SAFETY: test tables or pages this test owns: the frames mapped are no Rust object's, the pages unmapped are used by nothing.
                let (leaf, flush) = unsafe {
                    m.mapper
                        .unmap(page(TABLE_PAGE), &mut Recorder(&mut deferred))
                }
                .expect("unmap");
                // SAFETY: the leaf was just unmapped; `flush` covers it.
                unsafe { deferred.defer(leaf) }.expect("room for the leaf");
                TABLE_READY.store(1, Ordering::SeqCst);
                deferred.complete(flush, &mut m.mmu, 0, cpus::online(), &mut IpiShootdown)
            });
            RELEASE_TSC.store(rdtsc(), Ordering::SeqCst);
            assert_eq!(report.rounds, 1);
            assert_eq!(report.leaked, 0);
            assert_eq!(report.released, FREED_COUNT.load(Ordering::SeqCst) + 1);
        }
        1 => {
            assert_eq!(probe_read(TABLE_PAGE), Ok(OLD), "CPU 1 reads the page");
            x86_64::instructions::interrupts::disable();
            B_MASKED.store(1, Ordering::SeqCst);
            wait_until("the unmap", || TABLE_READY.load(Ordering::SeqCst) == 1);
            // Still cached: this CPU has not flushed, the walk is not redone.
            let stale = probe_read(TABLE_PAGE);
            spin_ms(MASKED_MS);
            B_MASKED.store(2, Ordering::SeqCst);
            B_UNMASK_TSC.store(rdtsc(), Ordering::SeqCst);
            x86_64::instructions::interrupts::enable();
            assert_eq!(
                stale,
                Ok(OLD),
                "a stale translation still reads the old frame"
            );
        }
        2 => {
            wait_until("the unmap", || TABLE_READY.load(Ordering::SeqCst) == 1);
            // While CPU 1 cannot have acknowledged (masked before and after
            // the check), the freed tables must not be free.
            loop {
                let before = B_MASKED.load(Ordering::SeqCst);
                let free = freed_table_is_free();
                let after = B_MASKED.load(Ordering::SeqCst);
                if before != 1 || after != 1 {
                    break;
                }
                CHECKS.fetch_add(1, Ordering::SeqCst);
                if free {
                    EARLY_FREE.fetch_add(1, Ordering::SeqCst);
                }
            }
        }
        _ => {}
    }
}

kernel_demo::test_kernel! {
    setup = enter;

    /// The working-set workload (six processes, one policy over all of
    /// them) with its reclaim worker on a CPU of its own, asleep until a
    /// fault wakes it, while faults on this CPU reclaim directly only
    /// under `min`: every page reads back as last written (checked
    /// inside), the runaway is the one ended, every frame comes back.
    fn reclaim_worker_on_its_own_cpu() {
        let n = cpus();
        kernel_demo::user::process::with_vm(|_| {}); // its zero frame, made once
        let before = kernel_demo::overcommit::accounted_frames();
        let r = kernel_demo::workingsets::run(alloc::boxed::Box::new(kmem::vm::MemSwap::new(160)), 40, 160);
        kernel_demo::println!("\n    worker on {:?}: {} steps", r.worker_cpu, r.worker_steps);
        assert_eq!(r.worker_cpu.is_some(), n > 1, "a CPU of its own when there is one");
        assert_ne!(r.worker_cpu, Some(kernel_demo::arch::cpus::cpu_index()));
        assert!(r.worker_steps > 0);
        assert_eq!(r.oom.map(|c| c.id), Some(kernel_demo::workingsets::PROCESSES as u64));
        assert_eq!(kernel_demo::overcommit::accounted_frames(), before, "every frame back");
    }

    /// Every CPU QEMU has comes online; each runs on its own kmem-mapped
    /// stack, whose guard page below is unmapped (a read of it faults on
    /// that CPU), knows its own index and has its own APIC id.
    fn online_with_own_stacks() {
        let n = cpus();
        smp::run_on_all(record_self, 0).unwrap_or_else(|e| panic!("{e}"));
        for cpu in 0..n {
            assert_eq!(SEEN_INDEX[cpu].load(Ordering::SeqCst), cpu, "CPU {cpu}'s index");
            let id = SEEN_APIC[cpu].load(Ordering::SeqCst);
            for (other, seen) in SEEN_APIC.iter().enumerate().take(cpu) {
                assert_ne!(id, seen.load(Ordering::SeqCst), "CPUs {other} and {cpu} share an APIC id");
            }
        }
        for cpu in 1..n {
            let stack = smp::stack_of(cpu).expect("a started CPU has a stack");
            let rsp = SEEN_RSP[cpu].load(Ordering::SeqCst);
            assert!(
                (stack.guard + 4096..stack.top).contains(&rsp),
                "CPU {cpu} runs at {rsp:#x}, outside its stack {:#x}..{:#x}",
                stack.guard + 4096,
                stack.top
            );
            with_memory(|m| {
                assert!(m.mapper.translate(VirtAddr::new(stack.guard)).is_err());
                assert!(m.mapper.translate(VirtAddr::new(stack.top - 8)).is_ok());
            });
            assert_eq!(GUARD_FAULTED[cpu].load(Ordering::SeqCst), 2, "CPU {cpu} read its guard page");
        }
    }

    /// All CPUs at once: heap objects through the per-CPU heap caches,
    /// frames through the per-CPU frame caches, pages mapped and unmapped
    /// in the kernel's address space (each unmap one IPI round, tables
    /// freed after it); every object carries a pattern checked before it
    /// is freed. Frames and heap bytes are all back at the end.
    fn stress_all_cpus() {
        let n = cpus();
        let (frames0, live0) = accounted();
        let t0 = rdtsc();
        smp::run_on_all(mixed_work, 0x1234_5678).unwrap_or_else(|e| panic!("{e}"));
        let ms = tsc_per_ms().map_or(0, |t| (rdtsc() - t0) / t);
        let mut total = Counters::default();
        for cpu in 0..n {
            let c = counters(cpu);
            assert!(c.heap > 0 && c.frames > 0 && c.maps > 0, "CPU {cpu} did every kind of work");
            // Every batch of this workload's unmaps frees page tables, so with
            // other CPUs online each one must have taken one IPI round.
            if n > 1 {
                assert_eq!(c.rounds, c.batches, "CPU {cpu}: one shootdown round per batch");
                assert!(c.batches < c.unmaps, "CPU {cpu}: unmaps were batched");
            }
            assert_eq!(c.bad, 0, "CPU {cpu}: {} of {} checks failed", c.bad, c.verified);
            total.verified += c.verified;
            total.maps += c.maps;
            total.rounds += c.rounds;
        }
        let (frames1, live1) = accounted();
        assert_eq!(live1, live0, "heap live bytes back to the start");
        assert_eq!(frames1, frames0, "free + heap + page-table frames back to the start");
        kernel_demo::println!(
            "{n} CPUs x {OPS} operations in {ms} ms: {} checks, {} mappings, {} shootdown rounds",
            total.verified, total.maps, total.rounds
        );
    }

    /// CPU 0 unmaps a page the other CPUs keep reading; once its unmap
    /// (and shootdown) returned, it writes new contents into the freed
    /// frame. Every reader faults, none reads after the call returned, and
    /// none ever sees the new contents.
    fn shootdown_stops_other_cpus_reads() {
        let n = cpus();
        let frame = FRAME_CACHE.allocate().expect("a frame");
        fill(frame, OLD);
        SHOT_FRAME.store(frame.start_address().as_u64(), Ordering::SeqCst);
        with_memory(|m| {
            let mut cache = &FRAME_CACHE;
            // SAFETY: test tables or pages this test owns: the frames mapped are no Rust object's, the pages unmapped are used by nothing.
            unsafe { m.mapper
                .map(page(SHOT_PAGE), frame, MapFlags::READ.global(), &mut cache) }
                .expect("map")
                .ignore();
        });
        let rounds0 = shootdown::stats().rounds;
        smp::run_on_all(shootdown_role, 0).unwrap_or_else(|e| panic!("{e}"));
        for cpu in 1..n {
            assert!(READS[cpu].load(Ordering::SeqCst) >= WARM_READS, "CPU {cpu} read first");
            assert_eq!(FAULTED[cpu].load(Ordering::SeqCst), 1, "CPU {cpu} faulted");
            assert_eq!(READS_AFTER_SHOT[cpu].load(Ordering::SeqCst), 0, "CPU {cpu} read after the shootdown");
            assert_eq!(WRONG_VALUES[cpu].load(Ordering::SeqCst), 0, "CPU {cpu} read the new contents");
        }
        assert_eq!(shootdown::stats().rounds - rounds0, 1, "one IPI round");
    }

    /// A page table freed by CPU 0's unmap is not handed out again while
    /// CPU 1, interrupts masked, could still walk it: CPU 2 watches the
    /// allocator all that time; CPU 0's release comes after CPU 1 unmasked.
    fn freed_tables_wait_for_every_cpu() {
        let n = cpus();
        assert!(n >= 3, "needs three CPUs");
        let frame = FRAME_CACHE.allocate().expect("a frame");
        fill(frame, OLD);
        with_memory(|m| {
            let mut frames = &FRAMES;
            // SAFETY: test tables or pages this test owns: the frames mapped are no Rust object's, the pages unmapped are used by nothing.
            unsafe { m.mapper
                .map(page(TABLE_PAGE), frame, MapFlags::READ.global(), &mut frames) }
                .expect("map")
                .ignore();
        });
        smp::run_on_all(table_role, 0).unwrap_or_else(|e| panic!("{e}"));
        let freed = FREED_COUNT.load(Ordering::SeqCst);
        assert!(freed >= 1, "the unmap emptied a page table");
        assert!(CHECKS.load(Ordering::SeqCst) > 0, "CPU 2 watched while CPU 1 was masked");
        assert_eq!(EARLY_FREE.load(Ordering::SeqCst), 0, "a table was free before CPU 1 acknowledged");
        assert!(
            RELEASE_TSC.load(Ordering::SeqCst) > B_UNMASK_TSC.load(Ordering::SeqCst),
            "released before CPU 1 could acknowledge"
        );
        assert!(freed_table_is_free(), "the tables are free after the release");
    }

    /// A process with a thread on every CPU, overcommitted onto swap: the
    /// threads write and check their own pages and read shared ones while
    /// each in turn unmaps, protects and forks the space under the others.
    /// Every value read is the last one written, every access after munmap
    /// faults, and every frame, heap byte and swap slot comes back.
    fn threaded_process_with_swap() {
        let n = cpus();
        let r = kernel_demo::user::threads::run(0x7ead_5eed);
        let (faults, changes, refused, bad): (u64, u64, u64, u64) = r.threads.iter().fold((0, 0, 0, 0), |a, t| {
            (a.0 + t.faults, a.1 + t.changes, a.2 + t.refused, a.3 + t.bad)
        });
        assert_eq!(r.threads.len(), n);
        assert_eq!(bad, 0, "a read saw another value than the last written: {:?}", r.threads);
        assert!(r.threads.iter().all(|t| t.faults > 0 && t.changes > 0), "every thread faulted and changed the space");
        assert!(refused > 0, "accesses after munmap were tried");
        assert!(r.swap_outs > 0 && r.swap_ins > 0, "pages went to swap and came back");
        assert!(r.rounds > 0, "changes were shot down on the other CPUs");
        assert_eq!(r.slots_left, 0, "swap slots left in use");
        assert_eq!(r.accounted.0, r.accounted.1, "frames or heap bytes lost");
        let _ = (faults, changes);
    }
}
