//! Which CPU runs the caller, which CPUs are online, and how to reach one
//! with an interrupt: the per-CPU identity every other layer indexes its
//! tables by. The start-up code ([`crate::smp`]) fills it in.
//!
//! CPUs get dense indices: 0 is the boot CPU, the others count up in the
//! order they started. A CPU finds its index with `rdtscp` (each writes
//! its index to `IA32_TSC_AUX`) or, without it, by its APIC id.

use crate::arch::apic;
use crate::arch::cpu::MAX_CPUS;
use core::sync::atomic::{AtomicBool, AtomicU32, AtomicUsize, Ordering};
use kmem::smp::{CpuLocal, CpuSet};
use x86_64::registers::model_specific::Msr;

const IA32_TSC_AUX: u32 = 0xC000_0103;
const NO_APIC_ID: u32 = u32::MAX;

static APIC_IDS: [AtomicU32; MAX_CPUS] = [const { AtomicU32::new(NO_APIC_ID) }; MAX_CPUS];
static ONLINE: [AtomicBool; MAX_CPUS] = [const { AtomicBool::new(false) }; MAX_CPUS];
/// CPUs online, the boot CPU included.
static ONLINE_COUNT: AtomicUsize = AtomicUsize::new(1);
/// Whether [`start_indexing`] ran (before: every caller is CPU 0).
static INDEXED: AtomicBool = AtomicBool::new(false);
static RDTSCP: AtomicBool = AtomicBool::new(false);

/// The index of the CPU running the caller: 0 on the boot CPU and before
/// [`start_indexing`].
#[inline]
pub fn cpu_index() -> usize {
    if !INDEXED.load(Ordering::Relaxed) {
        return 0;
    }
    if RDTSCP.load(Ordering::Relaxed) {
        let mut aux = 0u32;
        // SAFETY: rdtscp is supported (checked in `start_indexing`); it only reads.
        unsafe { core::arch::x86_64::__rdtscp(&mut aux) };
        return aux as usize;
    }
    let id = apic::id();
    APIC_IDS
        .iter()
        .position(|c| c.load(Ordering::Relaxed) == id)
        .unwrap_or_else(|| panic!("APIC id {id} belongs to no known CPU"))
}

/// Makes the boot CPU (APIC id `bsp_apic_id`) CPU 0 and turns on
/// [`cpu_index`]; from here on each CPU must call [`set_index`] before it
/// runs code that asks.
pub fn start_indexing(bsp_apic_id: u32) {
    let rdtscp = core::arch::x86_64::__cpuid(0x8000_0001).edx & (1 << 27) != 0;
    RDTSCP.store(rdtscp, Ordering::SeqCst);
    set_index(0);
    APIC_IDS[0].store(bsp_apic_id, Ordering::SeqCst);
    ONLINE[0].store(true, Ordering::SeqCst);
    INDEXED.store(true, Ordering::SeqCst);
}

/// Records on the running CPU that it is CPU `cpu` (for `rdtscp`).
pub fn set_index(cpu: usize) {
    if RDTSCP.load(Ordering::SeqCst) {
        // SAFETY: rdtscp and TSC_AUX exist (checked on the boot CPU, same
        // CPU model); only rdtscp reads it.
        unsafe { Msr::new(IA32_TSC_AUX).write(cpu as u64) };
    }
}

/// Assigns APIC id `apic_id` to CPU `cpu` (`None`: the CPU never started).
pub fn set_apic_id(cpu: usize, apic_id: Option<u32>) {
    APIC_IDS[cpu].store(apic_id.unwrap_or(NO_APIC_ID), Ordering::SeqCst);
}

/// The APIC id of CPU `cpu`.
pub fn apic_id_of(cpu: usize) -> Option<u32> {
    let id = APIC_IDS.get(cpu)?.load(Ordering::SeqCst);
    (id != NO_APIC_ID).then_some(id)
}

/// Marks CPU `cpu` online: a target of kernel-half shootdowns and work.
pub fn set_online(cpu: usize) {
    if !ONLINE[cpu].swap(true, Ordering::SeqCst) {
        ONLINE_COUNT.fetch_add(1, Ordering::SeqCst);
    }
}

/// Whether CPU `cpu` is online.
pub fn is_online(cpu: usize) -> bool {
    cpu == 0 || ONLINE.get(cpu).is_some_and(|o| o.load(Ordering::SeqCst))
}

/// How many CPUs are online (1 before the others start).
pub fn online_count() -> usize {
    ONLINE_COUNT.load(Ordering::SeqCst)
}

/// The CPUs online: the targets of a kernel-half shootdown.
pub fn online() -> CpuSet {
    let mut set = CpuSet::empty();
    for cpu in (0..MAX_CPUS).filter(|&c| is_online(c)) {
        set.insert(cpu);
    }
    set
}

/// Sends `vector` to CPU `cpu` (no effect for an unknown CPU).
pub fn send_ipi(cpu: usize, vector: u8) {
    if let Some(id) = apic_id_of(cpu) {
        apic::send_ipi(id, vector);
    }
}

/// The kernel's [`CpuLocal`]: [`cpu_index`], and `cli`/`sti` around `f`.
#[derive(Debug, Default, Clone, Copy)]
pub struct KernelCpu;

impl CpuLocal for KernelCpu {
    #[inline]
    fn cpu_id(&self) -> usize {
        cpu_index()
    }

    #[inline]
    fn without_interrupts<R>(&self, f: impl FnOnce() -> R) -> R {
        x86_64::instructions::interrupts::without_interrupts(f)
    }
}
