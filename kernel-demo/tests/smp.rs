//! Several CPUs on kmem: the application processors start on stacks kmem
//! mapped (guard pages below), all CPUs allocate, free, map and unmap at
//! once, a TLB shootdown stops another CPU's reads through an unmapped
//! page, and page tables an unmap freed stay allocated until every CPU
//! acknowledged the shootdown.
// kmem-vm: mem=256M smp=4
#![no_std]
#![no_main]

extern crate alloc;

use core::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use kernel_demo::arch::smp::{self, MAX_CPUS};
use kernel_demo::mm::kernel_space::enter;
use kernel_demo::mm::memory::with_memory;
use kernel_demo::user::probe_read;
use x86_64::VirtAddr;

/// The CPUs QEMU gives this kernel (`smp=4` above).
const CPUS: usize = 4;

/// Starts the other CPUs (once) and checks they all came.
fn cpus() -> usize {
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
    SEEN_INDEX[cpu].store(smp::cpu_index(), Ordering::SeqCst);
    SEEN_RSP[cpu].store(core::hint::black_box(&local) as *const u8 as u64, Ordering::SeqCst);
    SEEN_APIC[cpu].store(
        u64::from(kernel_demo::arch::apic::id()),
        Ordering::SeqCst,
    );
    if let Some(stack) = smp::stack_of(cpu) {
        let faulted = probe_read(stack.guard).is_err();
        GUARD_FAULTED[cpu].store(usize::from(faulted) + 1, Ordering::SeqCst);
    }
}

kernel_demo::test_kernel! {
    setup = enter;

    /// Every CPU QEMU has comes online; each runs on its own kmem-mapped
    /// stack, whose guard page below is unmapped (a read of it faults on
    /// that CPU), knows its own index and has its own APIC id.
    fn online_with_own_stacks() {
        let n = cpus();
        smp::run_on_all(record_self, 0).unwrap_or_else(|e| panic!("{e}"));
        for cpu in 0..n {
            assert_eq!(SEEN_INDEX[cpu].load(Ordering::SeqCst), cpu, "CPU {cpu}'s index");
            for other in 0..cpu {
                assert_ne!(
                    SEEN_APIC[cpu].load(Ordering::SeqCst),
                    SEEN_APIC[other].load(Ordering::SeqCst),
                    "CPUs {other} and {cpu} share an APIC id"
                );
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
}
