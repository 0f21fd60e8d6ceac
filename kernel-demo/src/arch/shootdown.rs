//! TLB shootdown by IPI: the kernel's [`TlbShootdown`].
//!
//! One round is in flight at a time (the shooter holds `ROUND`): the
//! shooter publishes the [`Flush`] under round number `r` (a seqlock),
//! asks each target for round `r`, sends it one IPI on [`SHOOTDOWN_VECTOR`]
//! and waits until every target acknowledged round `r` or later. A target
//! acknowledges the number of the round whose request it flushed, from the
//! IPI handler or from [`serve_pending`], which every kernel spin that may
//! wait for a shooter calls: a CPU waiting with interrupts masked (for the
//! round, the mapper, the heap) still answers, so two CPUs shooting at
//! each other, or a shooter holding a lock another CPU spins on, cannot
//! deadlock.

use crate::arch::cpu::MAX_CPUS;
use crate::arch::cpus::{cpu_index, send_ipi};
use core::cell::UnsafeCell;
use core::sync::atomic::{AtomicU64, Ordering};
use kmem::paging::{Flush, X86Mmu};
use kmem::smp::{CpuSet, TlbShootdown};

/// How long a shooter waits for acknowledgements before it gives up with
/// a panic (a CPU that never answers is a kernel bug, not a slow CPU).
const ACK_TIMEOUT_MS: u64 = 5_000;

/// The IDT vector of shootdown requests.
pub const SHOOTDOWN_VECTOR: u8 = 0xF0;

const _: () = assert!(MAX_CPUS <= 64, "TARGETS is one 64-bit mask");

/// The published request, a seqlock: `SEQ` is odd while the `ROUND` holder
/// writes it and `2 × round` once round `round` is published. A reader
/// copies it between two reads of `SEQ` and keeps the copy only if they
/// match: a CPU late from a round that timed out can never mistake one
/// round's request for another's.
struct Request(UnsafeCell<Flush>);

// SAFETY: one writer at a time (the `ROUND` holder); readers copy it with
// volatile reads and discard any copy that overlapped a write (see `SEQ`).
unsafe impl Sync for Request {}

static ROUND: spin::Mutex<()> = spin::Mutex::new(());
static REQUEST: Request = Request(UnsafeCell::new(Flush::none()));
static SEQ: AtomicU64 = AtomicU64::new(0);
/// Per CPU: the last round it was asked to serve, and the last it served.
static WANTED: [AtomicU64; MAX_CPUS] = [const { AtomicU64::new(0) }; MAX_CPUS];
static SERVED_ROUND: [AtomicU64; MAX_CPUS] = [const { AtomicU64::new(0) }; MAX_CPUS];
/// CPUs shootdowns reach: the boot CPU, and each started CPU from before
/// it loads the kernel's tables ([`join`]), so that it misses no round.
static TARGETS: AtomicU64 = AtomicU64::new(1);

/// Makes CPU `cpu` a target of every round from now on. A starting CPU
/// calls it before loading the kernel's tables, then serves requests by
/// polling ([`serve_pending`]) until its interrupts are on.
pub fn join(cpu: usize) {
    TARGETS.fetch_or(1 << cpu, Ordering::SeqCst);
}

static ROUNDS: AtomicU64 = AtomicU64::new(0);
static IPIS: AtomicU64 = AtomicU64::new(0);
static SERVED: [AtomicU64; MAX_CPUS] = [const { AtomicU64::new(0) }; MAX_CPUS];

/// Shootdown counters: rounds, IPIs sent, requests each CPU served.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ShootdownStats {
    /// IPI rounds (one per [`TlbShootdown::shoot`]).
    pub rounds: u64,
    /// IPIs sent (one per target per round).
    pub ipis: u64,
    /// Requests served by each CPU.
    pub served: [u64; MAX_CPUS],
}

/// The counters now.
pub fn stats() -> ShootdownStats {
    ShootdownStats {
        rounds: ROUNDS.load(Ordering::SeqCst),
        ipis: IPIS.load(Ordering::SeqCst),
        served: core::array::from_fn(|c| SERVED[c].load(Ordering::SeqCst)),
    }
}

/// Performs the published flush if this CPU was asked to and has not yet
/// served that round, then acknowledges it by its number. Harmless to call
/// at any time.
pub fn serve_pending() {
    x86_64::instructions::interrupts::without_interrupts(|| {
        let cpu = cpu_index();
        loop {
            let wanted = WANTED[cpu].load(Ordering::Acquire);
            if SERVED_ROUND[cpu].load(Ordering::Acquire) >= wanted {
                return;
            }
            let seq = SEQ.load(Ordering::Acquire);
            if seq % 2 == 1 {
                core::hint::spin_loop();
                continue;
            }
            // SAFETY: a volatile copy of the published request; kept only if
            // no write overlapped it (checked below), as a seqlock reader.
            let flush = unsafe { core::ptr::read_volatile(REQUEST.0.get()) };
            core::sync::atomic::fence(Ordering::Acquire);
            if SEQ.load(Ordering::Relaxed) != seq {
                continue;
            }
            flush.flush(&mut X86Mmu);
            SERVED[cpu].fetch_add(1, Ordering::Relaxed);
            // The request of round `seq / 2` is at least the one wanted:
            // rounds are published in order, each after the one before ended.
            SERVED_ROUND[cpu].fetch_max(seq / 2, Ordering::Release);
        }
    });
}

/// Takes `lock`, serving shootdown requests while it waits.
pub fn lock_serving<T>(lock: &spin::Mutex<T>) -> spin::MutexGuard<'_, T> {
    loop {
        if let Some(guard) = lock.try_lock() {
            return guard;
        }
        serve_pending();
        core::hint::spin_loop();
    }
}

/// Takes `lock` for reading, serving shootdown requests while it waits.
pub fn read_serving<T>(lock: &spin::RwLock<T>) -> spin::RwLockReadGuard<'_, T> {
    loop {
        if let Some(guard) = lock.try_read() {
            return guard;
        }
        serve_pending();
        core::hint::spin_loop();
    }
}

/// Takes `lock` for writing, serving shootdown requests while it waits.
pub fn write_serving<T>(lock: &spin::RwLock<T>) -> spin::RwLockWriteGuard<'_, T> {
    loop {
        if let Some(guard) = lock.try_write() {
            return guard;
        }
        serve_pending();
        core::hint::spin_loop();
    }
}

/// The kernel's shootdown: IPIs through the local APIC.
#[derive(Debug, Default, Clone, Copy)]
pub struct IpiShootdown;

// SAFETY: `shoot` returns only after every target cleared its bit, which
// it does only after performing the published flush on itself (the IPI
// handler or `serve_pending`, both through `Flush::flush` on `X86Mmu`).
unsafe impl TlbShootdown for IpiShootdown {
    fn shoot(&mut self, targets: CpuSet, flush: &Flush) {
        // Only CPUs that joined can answer; they take every round from then on.
        let joined = TARGETS.load(Ordering::SeqCst);
        let mask = targets
            .iter()
            .filter(|&c| c < MAX_CPUS && joined & (1 << c) != 0)
            .fold(0u64, |m, c| m | 1 << c);
        if mask == 0 {
            return;
        }
        let _round = lock_serving(&ROUND);
        let round = SEQ.load(Ordering::Relaxed) / 2 + 1;
        SEQ.store(2 * round - 1, Ordering::Release);
        // SAFETY: we hold ROUND, the only writer; readers discard a copy that
        // overlaps this write (SEQ is odd until it ends).
        unsafe { core::ptr::write_volatile(REQUEST.0.get(), flush.clone()) };
        SEQ.store(2 * round, Ordering::Release);
        ROUNDS.fetch_add(1, Ordering::Relaxed);
        let cpus = || (0..MAX_CPUS).filter(move |&c| mask & (1 << c) != 0);
        for cpu in cpus() {
            WANTED[cpu].fetch_max(round, Ordering::AcqRel);
            send_ipi(cpu, SHOOTDOWN_VECTOR);
            IPIS.fetch_add(1, Ordering::Relaxed);
        }
        let start = crate::arch::cpu::rdtsc();
        let limit = crate::arch::cpu::tsc_per_ms().unwrap_or(1_000_000) * ACK_TIMEOUT_MS;
        let late = || {
            cpus()
                .filter(|&c| SERVED_ROUND[c].load(Ordering::Acquire) < round)
                .fold(0u64, |m, c| m | 1 << c)
        };
        while late() != 0 {
            if crate::arch::cpu::rdtsc() - start > limit {
                let late = late();
                // Free the round before panicking: recovery does not unwind,
                // and a held round would hang every later shootdown. A late
                // CPU's acknowledgement names this round and satisfies no other.
                drop(_round);
                panic!("TLB shootdown: CPUs {late:#b} did not acknowledge round {round} in {ACK_TIMEOUT_MS} ms");
            }
            core::hint::spin_loop();
        }
    }
}
