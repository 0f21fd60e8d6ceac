//! TLB shootdown by IPI: the kernel's [`TlbShootdown`].
//!
//! One round is in flight at a time (the shooter holds `ROUND`): the
//! shooter publishes the [`Flush`], sets the targets' bits in `PENDING`,
//! sends each target one IPI on [`SHOOTDOWN_VECTOR`] and waits until every
//! bit is clear. A target clears its bit after flushing, from the IPI
//! handler or from [`serve_pending`], which every kernel spin that may wait
//! for a shooter calls: a CPU waiting with interrupts masked (for the
//! round, the mapper, the heap) still answers, so two CPUs shooting at
//! each other, or a shooter holding a lock another CPU spins on, cannot
//! deadlock.

use super::{cpu_index, MAX_CPUS};
use core::cell::UnsafeCell;
use core::sync::atomic::{AtomicU64, Ordering};
use kmem::paging::{Flush, X86Mmu};
use kmem::smp::{CpuSet, TlbShootdown};

/// How long a shooter waits for acknowledgements before it gives up with
/// a panic (a CPU that never answers is a kernel bug, not a slow CPU).
const ACK_TIMEOUT_MS: u64 = 5_000;

/// The IDT vector of shootdown requests.
pub const SHOOTDOWN_VECTOR: u8 = 0xF0;

const _: () = assert!(MAX_CPUS <= 64, "PENDING is one 64-bit mask");

/// The published request: written only by the `ROUND` holder while no bit
/// of `PENDING` is set, read only by CPUs whose bit is set.
struct Request(UnsafeCell<Flush>);

// SAFETY: access follows the protocol above: one writer at a time, never
// concurrently with a reader (a reader's bit is set between the write and
// its own clear, and the writer waits for every clear before writing again).
unsafe impl Sync for Request {}

static ROUND: spin::Mutex<()> = spin::Mutex::new(());
static REQUEST: Request = Request(UnsafeCell::new(Flush::none()));
static PENDING: AtomicU64 = AtomicU64::new(0);

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

/// Performs the published flush if this CPU is a target of the round in
/// flight, then acknowledges. Harmless to call at any time.
pub fn serve_pending() {
    x86_64::instructions::interrupts::without_interrupts(|| {
        let cpu = cpu_index();
        let bit = 1u64 << cpu;
        if PENDING.load(Ordering::Acquire) & bit == 0 {
            return;
        }
        // SAFETY: our bit is set, so the request is published and the
        // writer waits for our clear before touching it again.
        let flush = unsafe { (*REQUEST.0.get()).clone() };
        flush.flush(&mut X86Mmu);
        SERVED[cpu].fetch_add(1, Ordering::Relaxed);
        PENDING.fetch_and(!bit, Ordering::Release);
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
        // Only CPUs that are online can answer.
        let online = super::online();
        let targets = {
            let mut set = CpuSet::empty();
            targets
                .iter()
                .filter(|&c| online.contains(c))
                .for_each(|c| set.insert(c));
            set
        };
        let mut mask = 0u64;
        for cpu in targets.iter().filter(|&c| c < MAX_CPUS) {
            mask |= 1 << cpu;
        }
        if mask == 0 {
            return;
        }
        let _round = lock_serving(&ROUND);
        // SAFETY: we hold ROUND and PENDING is 0 (the previous holder waited
        // for it): no CPU reads the request now.
        unsafe { *REQUEST.0.get() = flush.clone() };
        PENDING.store(mask, Ordering::Release);
        ROUNDS.fetch_add(1, Ordering::Relaxed);
        for cpu in targets.iter().filter(|&c| c < MAX_CPUS) {
            super::send_ipi(cpu, SHOOTDOWN_VECTOR);
            IPIS.fetch_add(1, Ordering::Relaxed);
        }
        let start = crate::arch::cpu::rdtsc();
        let limit = crate::arch::cpu::tsc_per_ms().unwrap_or(1_000_000) * ACK_TIMEOUT_MS;
        while PENDING.load(Ordering::Acquire) != 0 {
            if crate::arch::cpu::rdtsc() - start > limit {
                // Withdraw the request and free the round before panicking:
                // recovery does not unwind, and a held round would hang every
                // later shootdown instead of failing this one.
                let late = PENDING.swap(0, Ordering::AcqRel);
                drop(_round);
                panic!("TLB shootdown: CPUs {late:#b} did not acknowledge in {ACK_TIMEOUT_MS} ms");
            }
            core::hint::spin_loop();
        }
    }
}
