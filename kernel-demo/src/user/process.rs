//! User processes on `kmem::vm`: each one an address space with a code
//! area, a demand-paged heap and stack (with a guard page below it),
//! run in ring 3 round-robin until it exits, forks or is ended for a
//! fault the virtual-memory layer refuses.

use crate::arch::cpus;
use crate::arch::shootdown::{read_serving, write_serving, IpiShootdown};
use crate::arch::trap::{vector, Fault, TrapFrame};
use crate::mm::memory::{direct_map, with_memory, FRAMES};
use crate::user::programs::{self, Program};
use alloc::collections::VecDeque;
use alloc::vec::Vec;
use core::sync::atomic::{AtomicPtr, Ordering};
use kmem::paging::{AddressSpace, Mmu, OffsetPhysMem, X86Mmu};
use kmem::smp::Tlb;
use kmem::vm::{
    AreaKind, FaultAccess, FaultError, Prot, Vm, VmError, VmSpace, VmStats, USER_RANGE,
};
use x86_64::VirtAddr;

/// Where every process's code is.
pub const CODE_BASE: u64 = 0x40_0000;
/// Where every process's heap is (the same address in each process).
pub const HEAP_BASE: u64 = 0x1000_0000;
/// Heap size.
pub const HEAP_PAGES: u64 = 64;
/// Top of every process's stack.
pub const STACK_TOP: u64 = 0x7fff_0000_0000;
/// Stack size (demand-paged); a guard page lies below.
pub const STACK_PAGES: u64 = 16;

/// The kernel's virtual-memory state: the zero frame, share counts, swap,
/// counters. Faults on every CPU share it (read); setting it up (a frame
/// limit, a swap device) takes it alone (write).
static VM: spin::RwLock<Option<Vm>> = spin::RwLock::new(None);

/// Runs `f` with the kernel's [`Vm`], making it on first use. CPUs run it at
/// once; waiting, a CPU serves TLB shootdowns.
pub fn with_vm<R>(f: impl FnOnce(&Vm) -> R) -> R {
    loop {
        if let Some(vm) = read_serving(&VM).as_ref() {
            return f(vm);
        }
        configure_vm(|_| {});
    }
}

/// Runs `f` with the kernel's [`Vm`] alone (to set a limit, attach swap),
/// making it on first use.
pub fn configure_vm<R>(f: impl FnOnce(&mut Vm) -> R) -> R {
    let mut guard = write_serving(&VM);
    let vm = guard.get_or_insert_with(|| {
        Vm::new(&direct_map(), &mut &FRAMES).expect("a frame for the zero page")
    });
    f(vm)
}

/// Runs `f` with the TLB context of the running CPU: its MMU, its index,
/// and the IPI shootdown that reaches the other CPUs a space is active on.
pub fn with_tlb<R>(f: impl FnOnce(&mut Tlb<'_>) -> R) -> R {
    let (mut mmu, mut ipis) = (X86Mmu, IpiShootdown);
    f(&mut Tlb::new(&mut mmu, cpus::cpu_index(), &mut ipis))
}

/// The counters of the virtual-memory layer.
pub fn vm_stats() -> VmStats {
    with_vm(|vm| vm.stats())
}

/// How a process ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum End {
    /// It called exit with this code.
    Exited(u64),
    /// A fault the virtual-memory layer refused (the reason says why).
    Killed(FaultError),
    /// Another exception (general protection, invalid opcode, ...).
    Crashed(Fault),
}

/// A user process.
pub struct Process {
    /// Its id (a fork's child gets the next free one).
    pub pid: u64,
    /// Its address space.
    pub space: VmSpace<OffsetPhysMem>,
    /// User registers while it does not run.
    pub state: TrapFrame,
    /// Values it reported, in order.
    pub reports: Vec<u64>,
    /// How it ended, once it has.
    pub end: Option<End>,
    refused: Option<FaultError>,
}

/// Enables SMEP and SMAP when the CPU has them, so the kernel faults on
/// executing user pages and on touching them without `stac`. Returns which.
pub fn enable_smep_smap() -> (bool, bool) {
    use x86_64::registers::control::{Cr4, Cr4Flags};
    let leaf7 = core::arch::x86_64::__cpuid_count(7, 0);
    let (smep, smap) = (leaf7.ebx & (1 << 7) != 0, leaf7.ebx & (1 << 20) != 0);
    // SAFETY: each bit is set only when CPUID reports the feature; kernel
    // code reaches user memory only through the direct map.
    unsafe {
        Cr4::update(|f| {
            f.set(Cr4Flags::SUPERVISOR_MODE_EXECUTION_PROTECTION, smep);
            f.set(Cr4Flags::SUPERVISOR_MODE_ACCESS_PREVENTION, smap);
        })
    };
    (smep, smap)
}

impl Process {
    /// A new process running `program` with argument `arg`: code copied
    /// into its code area (read+execute), heap and stack demand-zero.
    pub fn spawn(pid: u64, program: Program, arg: u64) -> Result<Self, VmError> {
        let user = Prot::USER;
        // The tables first (under the mapper lock), the areas after: they
        // live on the heap, which takes the mapper lock to grow.
        let tables = with_memory(|m| AddressSpace::new(m.mapper, &mut m.frames))?;
        let mut space = VmSpace::with_mapper(tables.into_mapper(), USER_RANGE.0, USER_RANGE.1)
            .map_err(|(_, e)| e)
            .expect("a new address space maps nothing in its user half");
        let code = programs::code();
        let code_len = (code.len() as u64).next_multiple_of(4096);
        with_vm(|vm| -> Result<(), VmError> {
            let frames = &mut &FRAMES;
            space.map_anonymous(Some(CODE_BASE), code_len, Prot::RW | user)?;
            for (i, chunk) in code.chunks(4096).enumerate() {
                let page = CODE_BASE + i as u64 * 4096;
                // The kernel fills the page: a supervisor write fault.
                with_tlb(|tlb| {
                    space.handle_fault(
                        vm,
                        VirtAddr::new(page),
                        FaultAccess::write(false),
                        frames,
                        tlb,
                    )
                })
                .map_err(|_| VmError::OutOfMemory)?;
                let t = space.mapper().translate(VirtAddr::new(page))?;
                let dst = crate::boot::phys_to_virt(t.frame.as_u64());
                // SAFETY: a private frame of this new space, reached through
                // the direct map; nothing else refers to it yet.
                unsafe { core::ptr::copy_nonoverlapping(chunk.as_ptr(), dst, chunk.len()) };
            }
            with_tlb(|tlb| space.protect(CODE_BASE, code_len, Prot::RX | user, vm, frames, tlb))?;
            space.map_anonymous(Some(HEAP_BASE), HEAP_PAGES * 4096, Prot::RW | user)?;
            let stack = STACK_TOP - STACK_PAGES * 4096;
            space.map_fixed(stack - 4096, 4096, Prot::empty(), AreaKind::Guard, frames)?;
            space.map_anonymous(Some(stack), STACK_PAGES * 4096, Prot::RW | user)?;
            Ok(())
        })?;
        // The code was copied page by page from the blob's start.
        let state =
            crate::user::initial_state(CODE_BASE + program.entry(), STACK_TOP, HEAP_BASE, arg);
        Ok(Self {
            pid,
            space,
            state,
            reports: Vec::new(),
            end: None,
            refused: None,
        })
    }

    /// Reads a word of this process's memory as it sees it (through its
    /// page tables and the direct map, never through a user pointer).
    pub fn peek(&self, addr: u64) -> Option<u64> {
        let t = self.space.mapper().translate(VirtAddr::new(addr)).ok()?;
        // SAFETY: a mapped frame of this space, read through the direct
        // map; the process is not running.
        Some(unsafe {
            crate::boot::phys_to_virt(t.phys.as_u64())
                .cast::<u64>()
                .read_unaligned()
        })
    }
}

/// The process in ring 3 now, for the trap policy.
static CURRENT: AtomicPtr<Process> = AtomicPtr::new(core::ptr::null_mut());

/// Resolves page faults through `kmem::vm` and answers report calls in
/// place; exit, fork, refused faults and other exceptions leave the run.
fn policy(frame: &mut TrapFrame, trap: &Fault) -> bool {
    // SAFETY: set by `run_all` around `user::run` to the running process,
    // which it does not touch meanwhile; single CPU.
    let p = unsafe { &mut *CURRENT.load(Ordering::SeqCst) };
    match trap.vector {
        vector::SYSCALL if frame.rax == 1 => {
            p.reports.push(frame.rdi);
            frame.rax = 0;
            true
        }
        vector::PAGE_FAULT => {
            let access = FaultAccess::from_error_code(trap.error_code);
            let r = with_vm(|vm| {
                with_tlb(|tlb| {
                    let addr = VirtAddr::new_truncate(trap.addr);
                    p.space.handle_fault(vm, addr, access, &mut &FRAMES, tlb)
                })
            });
            match r {
                Ok(_) => true,
                Err(e) => {
                    p.refused = Some(e);
                    false
                }
            }
        }
        _ => false,
    }
}

/// Runs `procs` round-robin until every one (and every child they fork)
/// has ended; returns them all, address spaces destroyed, in pid order.
pub fn run_all(procs: Vec<Process>) -> Vec<(u64, Vec<u64>, End)> {
    let mut queue: VecDeque<Process> = procs.into();
    let mut next_pid = queue.iter().map(|p| p.pid).max().unwrap_or(0) + 1;
    let mut done = Vec::new();
    let kernel_cr3 = X86Mmu.cr3();
    while let Some(mut p) = queue.pop_front() {
        // The space's CPU set names this CPU before its CR3 holds the space.
        let cpu = cpus::cpu_index();
        p.space.cpus().enter(cpu);
        // SAFETY: the space maps the kernel half (shared with the kernel's
        // tables) and its own user pages; the kernel runs on in it.
        unsafe { X86Mmu.set_cr3(p.space.pml4()) };
        CURRENT.store(&mut p, Ordering::SeqCst);
        let trap = crate::user::run(&mut p.state, policy);
        CURRENT.store(core::ptr::null_mut(), Ordering::SeqCst);
        // SAFETY: back to the kernel's own tables.
        unsafe { X86Mmu.set_cr3(kernel_cr3) };
        p.space.cpus().leave(cpu);
        match (trap.vector, p.state.rax) {
            (vector::SYSCALL, 0) => p.end = Some(End::Exited(p.state.rdi)),
            (vector::SYSCALL, 2) => {
                match with_vm(|vm| with_tlb(|tlb| p.space.fork(vm, &mut &FRAMES, tlb))) {
                    Ok(space) => {
                        let mut child = Process {
                            pid: next_pid,
                            space,
                            state: p.state,
                            reports: Vec::new(),
                            end: None,
                            refused: None,
                        };
                        child.state.rax = 0;
                        p.state.rax = next_pid;
                        next_pid += 1;
                        queue.push_back(child);
                    }
                    Err(_) => p.state.rax = u64::MAX,
                }
                queue.push_back(p);
                continue;
            }
            (vector::SYSCALL, _) => p.end = Some(End::Crashed(trap)),
            (vector::PAGE_FAULT, _) if p.refused.is_some() => p.end = p.refused.map(End::Killed),
            _ => p.end = Some(End::Crashed(trap)),
        }
        done.push(finish(p));
    }
    done.sort_by_key(|d| d.0);
    done
}

/// Destroys an ended process's address space.
fn finish(p: Process) -> (u64, Vec<u64>, End) {
    let end = p.end.expect("ended");
    with_vm(|vm| with_tlb(|tlb| p.space.destroy(vm, &mut &FRAMES, tlb))).unwrap_or_else(
        |(_, e)| crate::dev::qemu::fatal(format_args!("destroying pid {}: {e}", p.pid)),
    );
    (p.pid, p.reports, end)
}
