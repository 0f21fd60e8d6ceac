//! A process with a thread on every CPU: one address space loaded on all
//! CPUs at once, its threads writing and checking their own pages, reading
//! pages they share, and in turn changing the space under the others
//! (munmap, mprotect, fork) while memory is overcommitted onto swap.
//!
//! The threads are kernel code on the process's page tables (its areas are
//! supervisor-only, so SMAP stays out of the way); their faults go through
//! the fault hook to [`VmSpace::handle_fault`] on whichever CPU takes them.
//! The address-space lock is the kernel's: faults hold it for reading, the
//! calls that change areas for writing, and a CPU waiting for it serves
//! TLB shootdowns, so the CPU holding it can always finish.

use crate::arch::cpu;
use crate::arch::cpu::MAX_CPUS;
use crate::arch::cpus;
use crate::arch::interrupts;
use crate::arch::shootdown::{self, read_serving, write_serving};
use crate::arch::trap::{vector, Fault};
use crate::mm::memory::{with_memory, FRAMES};
use crate::mm::mixed::accounted;
use crate::smp;
use crate::user::probe_read;
use crate::user::process::{configure_vm, with_tlb, with_vm};
use alloc::boxed::Box;
use core::sync::atomic::{AtomicU64, Ordering};
use kmem::paging::{AddressSpace, Mmu, OffsetPhysMem, X86Mmu};
use kmem::vm::{FaultAccess, FaultOutcome, MemSwap, Prot, VmSpace, USER_RANGE};
use x86_64::structures::paging::PhysFrame;
use x86_64::{PhysAddr, VirtAddr};

/// Pages each thread owns.
pub const OWN_PAGES: u64 = 16;
/// Pages every thread reads (written once, before the threads start).
pub const SHARED_PAGES: u64 = 8;
/// Rounds each thread runs.
pub const ROUNDS: u64 = 4;
/// Frames the process may hold: fewer than its pages, so pages go to swap.
pub const FRAME_LIMIT: u64 = 32;
/// Where the shared pages are; each thread's pages follow, 1 MiB apart.
const SHARED: u64 = 0x3000_0000;
const OWN: u64 = 0x3100_0000;
const STRIDE: u64 = 0x10_0000;

/// The process's address space, while the threads run.
static SPACE: spin::RwLock<Option<VmSpace<OffsetPhysMem>>> = spin::RwLock::new(None);
/// Its top-level table, for the threads to load.
static PML4: AtomicU64 = AtomicU64::new(0);

/// What one thread did.
#[derive(Debug, Default, Clone, Copy)]
pub struct ThreadCounts {
    /// Page faults it took and resolved.
    pub faults: u64,
    /// Of those, faults on a page another CPU was moving (retried).
    pub in_transit: u64,
    /// Words it read back and checked.
    pub checks: u64,
    /// Words that were not the last value written (must stay 0).
    pub bad: u64,
    /// munmap, mprotect and fork calls it made.
    pub changes: u64,
    /// Accesses after munmap that faulted, as they must.
    pub refused: u64,
}

struct Slot {
    faults: AtomicU64,
    in_transit: AtomicU64,
    checks: AtomicU64,
    bad: AtomicU64,
    changes: AtomicU64,
    refused: AtomicU64,
}

static COUNTS: [Slot; MAX_CPUS] = [const {
    Slot {
        faults: AtomicU64::new(0),
        in_transit: AtomicU64::new(0),
        checks: AtomicU64::new(0),
        bad: AtomicU64::new(0),
        changes: AtomicU64::new(0),
        refused: AtomicU64::new(0),
    }
}; MAX_CPUS];

/// What a run measured.
#[derive(Debug, Clone)]
pub struct Report {
    /// Per CPU.
    pub threads: alloc::vec::Vec<ThreadCounts>,
    /// TLB shootdown rounds during the run.
    pub rounds: u64,
    /// Milliseconds the threads ran.
    pub ms: u64,
    /// Pages written to and read from swap.
    pub swap_outs: u64,
    /// Pages read back from swap.
    pub swap_ins: u64,
    /// Frames (free, heap, tables) and heap bytes before and after.
    pub accounted: ((u64, usize), (u64, usize)),
    /// Swap slots in use after the process ended (must be 0).
    pub slots_left: u64,
}

impl Report {
    /// Whether every value read was the last written and everything came back.
    pub fn clean(&self) -> bool {
        self.threads.iter().all(|t| t.bad == 0)
            && self.accounted.0 == self.accounted.1
            && self.slots_left == 0
    }
}

fn bump(c: &AtomicU64) {
    c.fetch_add(1, Ordering::Relaxed);
}

/// Resolves the threads' faults on any CPU.
fn hook(f: &Fault) -> bool {
    if f.vector != vector::PAGE_FAULT || f.addr >= USER_RANGE.1 {
        return false;
    }
    let guard = read_serving(&SPACE);
    let Some(space) = guard.as_ref() else {
        return false;
    };
    let access = FaultAccess::from_error_code(f.error_code);
    let addr = VirtAddr::new_truncate(f.addr);
    let r = with_vm(|vm| with_tlb(|tlb| space.handle_fault(vm, addr, access, &mut &FRAMES, tlb)));
    let slot = &COUNTS[cpus::cpu_index()];
    match r {
        Ok(outcome) => {
            bump(&slot.faults);
            if outcome == FaultOutcome::InTransit {
                bump(&slot.in_transit);
                drop(guard);
                // Give the CPU moving the page time to finish (and answer its
                // shootdowns) before the access faults again.
                for _ in 0..256 {
                    shootdown::serve_pending();
                    core::hint::spin_loop();
                }
            }
            true
        }
        Err(e) => {
            // Kept for the report: a refused fault ends the run on this CPU.
            *REFUSED.lock() = Some(e);
            false
        }
    }
}

/// The last fault `handle_fault` refused, for the failure message.
static REFUSED: spin::Mutex<Option<kmem::vm::FaultError>> = spin::Mutex::new(None);

/// The value thread `cpu` writes into word `w` of its page `page` in round `round`.
fn value(cpu: u64, page: u64, round: u64, w: u64) -> u64 {
    (cpu << 56) ^ (page << 40) ^ (round << 20) ^ w.wrapping_mul(0x9e37_79b9) ^ 1
}

fn shared_value(page: u64, w: u64) -> u64 {
    (page << 32) ^ w ^ 0x5eed
}

/// Words of a page the threads write and check: the first, the last, one between.
const WORDS: [u64; 3] = [0, 255, 511];

fn write(addr: u64, v: u64) {
    // SAFETY: a page of the process's area, loaded on this CPU; a fault maps it.
    unsafe { (addr as *mut u64).write_volatile(v) };
}

fn read(addr: u64) -> u64 {
    // SAFETY: as in `write`.
    unsafe { (addr as *const u64).read_volatile() }
}

/// Runs `f` on the space alone (munmap, mprotect, fork), serving
/// shootdowns while it waits for the other threads' faults to finish.
fn change<R>(f: impl FnOnce(&mut VmSpace<OffsetPhysMem>) -> R) -> R {
    let mut guard = write_serving(&SPACE);
    f(guard.as_mut().expect("the process's space"))
}

/// One thread: `ROUNDS` rounds over its own pages and the shared ones.
fn thread(cpu: usize, seed: u64) {
    let slot = &COUNTS[cpu];
    let me = cpu as u64;
    let base = OWN + me * STRIDE;
    // Written in the last round, or `None` when unmapped since (reads 0).
    let mut last: [Option<u64>; OWN_PAGES as usize] = [None; OWN_PAGES as usize];
    let pml4 = PhysFrame::containing_address(PhysAddr::new(PML4.load(Ordering::SeqCst)));
    read_serving(&SPACE)
        .as_ref()
        .expect("space")
        .cpus()
        .enter(cpu);
    let kernel = X86Mmu.cr3();
    // SAFETY: the process's tables share the kernel half; this CPU goes back below.
    unsafe { X86Mmu.set_cr3(pml4) };
    let mut rng = seed ^ (me + 1).wrapping_mul(0x9e37_79b9_7f4a_7c15);
    for round in 0..ROUNDS {
        for page in 0..OWN_PAGES {
            let a = base + page * 4096;
            // A page never written (or unmapped since) is written first, not
            // read: a read would map the zero page, and the write after it
            // a copy-on-write break with a shootdown round on every CPU.
            if let Some(r) = last[page as usize] {
                for w in WORDS {
                    bump(&slot.checks);
                    if read(a + w * 8) != value(me, page, r, w) {
                        bump(&slot.bad);
                    }
                }
            }
            for w in WORDS {
                write(a + w * 8, value(me, page, round, w));
            }
            last[page as usize] = Some(round);
            // A shared page now and then: it must read as written at the start.
            rng ^= rng << 13;
            rng ^= rng >> 7;
            rng ^= rng << 17;
            let sp = rng % SHARED_PAGES;
            let w = WORDS[(rng >> 8) as usize % WORDS.len()];
            bump(&slot.checks);
            if read(SHARED + sp * 4096 + w * 8) != shared_value(sp, w) {
                bump(&slot.bad);
            }
        }
        match (round + me) % 4 {
            // Read-only for a while: reads still see the last write.
            0 => {
                let len = OWN_PAGES * 4096;
                change(|s| {
                    with_vm(|vm| {
                        with_tlb(|tlb| s.protect(base, len, Prot::READ, vm, &mut &FRAMES, tlb))
                    })
                })
                .expect("mprotect read-only");
                for page in 0..OWN_PAGES {
                    bump(&slot.checks);
                    let want = last[page as usize].map_or(0, |r| value(me, page, r, 0));
                    if read(base + page * 4096) != want {
                        bump(&slot.bad);
                    }
                }
                change(|s| {
                    with_vm(|vm| {
                        with_tlb(|tlb| s.protect(base, len, Prot::RW, vm, &mut &FRAMES, tlb))
                    })
                })
                .expect("mprotect read-write");
                bump(&slot.changes);
                bump(&slot.changes);
            }
            // Unmap a quarter, check that it faults, map it back (zeros).
            1 => {
                let first = (rng >> 16) % (OWN_PAGES - OWN_PAGES / 4);
                let (at, len) = (base + first * 4096, OWN_PAGES / 4 * 4096);
                change(|s| with_vm(|vm| with_tlb(|tlb| s.unmap(at, len, vm, &mut &FRAMES, tlb))))
                    .expect("munmap");
                for p in 0..OWN_PAGES / 4 {
                    if probe_read(at + p * 4096).is_err() {
                        bump(&slot.refused);
                    } else {
                        bump(&slot.bad);
                    }
                    last[(first + p) as usize] = None;
                }
                change(|s| s.map_anonymous(Some(at), len, Prot::RW)).expect("mmap");
                // Mapped again: it reads as zeros (one page, the zero page).
                bump(&slot.checks);
                if read(at) != 0 {
                    bump(&slot.bad);
                }
                bump(&slot.changes);
                bump(&slot.changes);
            }
            // A fork whose child ends at once: every shared page goes
            // read-only on every CPU, the next writes copy or reuse.
            2 => {
                change(|s| {
                    with_vm(|vm| {
                        with_tlb(|tlb| {
                            let child = s.fork(vm, &mut &FRAMES, tlb).expect("fork");
                            child
                                .destroy(vm, &mut &FRAMES, tlb)
                                .map_err(|e| e.1)
                                .expect("exit");
                        })
                    })
                });
                bump(&slot.changes);
            }
            _ => {}
        }
    }
    // SAFETY: the kernel's own tables.
    unsafe { X86Mmu.set_cr3(kernel) };
    read_serving(&SPACE)
        .as_ref()
        .expect("space")
        .cpus()
        .leave(cpu);
}

fn thread_entry(cpu: usize, seed: u64) {
    thread(cpu, seed);
}

/// Runs the process: a thread on every online CPU. Panics if the space
/// cannot be made; reports what it saw (check [`Report::clean`]).
pub fn run(seed: u64) -> Report {
    for s in &COUNTS {
        for c in [
            &s.faults,
            &s.in_transit,
            &s.checks,
            &s.bad,
            &s.changes,
            &s.refused,
        ] {
            c.store(0, Ordering::Relaxed);
        }
    }
    with_vm(|_| {}); // the zero frame, made on first use
    let before = accounted();
    // Overcommitted onto a swap device in kernel memory.
    let saved = configure_vm(|vm| {
        let old = vm.detach_swap();
        assert!(
            vm.attach_swap(Box::new(MemSwap::new(1024))).is_ok(),
            "no slot in use"
        );
        let limit = vm.frame_limit();
        vm.set_frame_limit(Some(FRAME_LIMIT));
        // A cluster per reclaim pass: one shootdown round frees 32 frames.
        vm.set_reclaim(Some(32), 8);
        (old, limit)
    });
    let stats0 = with_vm(|vm| vm.stats());
    let tables = with_memory(|m| AddressSpace::new(m.mapper, &mut m.frames)).expect("a PML4");
    let mut space = VmSpace::with_mapper(tables.into_mapper(), USER_RANGE.0, USER_RANGE.1)
        .map_err(|(_, e)| e)
        .expect("a new address space maps nothing in its user half");
    let n = cpus::online_count() as u64;
    space
        .map_anonymous(Some(SHARED), SHARED_PAGES * 4096, Prot::RW)
        .expect("shared area");
    for c in 0..n {
        space
            .map_anonymous(Some(OWN + c * STRIDE), OWN_PAGES * 4096, Prot::RW)
            .expect("a thread's area");
    }
    PML4.store(space.pml4().start_address().as_u64(), Ordering::SeqCst);
    *write_serving(&SPACE) = Some(space);
    interrupts::set_fault_hook(Some(hook));
    // The shared pages, written once by this CPU before the threads start.
    {
        let kernel = X86Mmu.cr3();
        let pml4 = PhysFrame::containing_address(PhysAddr::new(PML4.load(Ordering::SeqCst)));
        let me = cpus::cpu_index();
        read_serving(&SPACE)
            .as_ref()
            .expect("space")
            .cpus()
            .enter(me);
        // SAFETY: the process's tables share the kernel half; switched back below.
        unsafe { X86Mmu.set_cr3(pml4) };
        for p in 0..SHARED_PAGES {
            for w in WORDS {
                write(SHARED + p * 4096 + w * 8, shared_value(p, w));
            }
        }
        // SAFETY: the kernel's own tables.
        unsafe { X86Mmu.set_cr3(kernel) };
        read_serving(&SPACE)
            .as_ref()
            .expect("space")
            .cpus()
            .leave(me);
    }
    let rounds0 = shootdown::stats().rounds;
    let t0 = cpu::rdtsc();
    let ran = smp::run_on_all(thread_entry, seed);
    let ms = cpu::tsc_per_ms().map_or(0, |t| (cpu::rdtsc() - t0) / t);
    let rounds = shootdown::stats().rounds - rounds0;
    interrupts::set_fault_hook(None);
    if let Err(e) = ran {
        let why = REFUSED.lock().take();
        crate::dev::qemu::fatal(format_args!("threaded process: {e} (kmem: {why:?})"));
    }
    let space = write_serving(&SPACE).take().expect("the space");
    let stats1 = with_vm(|vm| vm.stats());
    with_vm(|vm| with_tlb(|tlb| space.destroy(vm, &mut &FRAMES, tlb)))
        .map_err(|e| e.1)
        .expect("teardown");
    let slots_left = with_vm(|vm| vm.stats().swap_slots_used);
    configure_vm(|vm| {
        drop(vm.detach_swap());
        vm.set_frame_limit(saved.1);
        vm.set_reclaim(None, 8);
        if let Some(old) = saved.0 {
            let _ = vm.attach_swap(old);
        }
    });
    let after = accounted();
    Report {
        threads: (0..n as usize)
            .map(|c| {
                let s = &COUNTS[c];
                ThreadCounts {
                    faults: s.faults.load(Ordering::Relaxed),
                    in_transit: s.in_transit.load(Ordering::Relaxed),
                    checks: s.checks.load(Ordering::Relaxed),
                    bad: s.bad.load(Ordering::Relaxed),
                    changes: s.changes.load(Ordering::Relaxed),
                    refused: s.refused.load(Ordering::Relaxed),
                }
            })
            .collect(),
        rounds,
        ms,
        swap_outs: stats1.swap_outs - stats0.swap_outs,
        swap_ins: stats1.swap_ins - stats0.swap_ins,
        accounted: (before, after),
        slots_left,
    }
}
