//! Ring 3: entering user mode with a saved register state and getting
//! back when the user code traps in a way the kernel must act on.
//!
//! [`run`] saves the kernel's callee-saved registers (a `setjmp`), loads
//! the user state and `iretq`s into ring 3. Every trap from ring 3 (system
//! call, fault) arrives on the TSS's RSP0 stack in [`trap`], which asks the
//! installed [`TrapPolicy`] whether the user code resumes (a report system
//! call, a resolved page fault) or leaves: then the user state is saved
//! back and the trap frame is rewritten to return into the `setjmp`, so
//! [`run`] returns the trap.

pub mod process;
pub mod programs;
pub mod threads;

use crate::arch::recover::{kmem_longjmp, kmem_setjmp_call, JmpBuf};
use crate::arch::trap::{Fault, TrapFrame};
use core::sync::atomic::{AtomicPtr, Ordering};

/// Decides, for a trap from ring 3, whether the user code resumes (true,
/// with `frame` possibly edited: a system call's result) or leaves [`run`].
pub type TrapPolicy = fn(frame: &mut TrapFrame, trap: &Fault) -> bool;

struct Running {
    buf: JmpBuf,
    state: *mut TrapFrame,
    left: Option<Fault>,
    policy: TrapPolicy,
}

/// The running user context, null in the kernel.
static RUNNING: AtomicPtr<Running> = AtomicPtr::new(core::ptr::null_mut());

/// Initial register state of user code: `rip`, `rsp` and the first two
/// arguments (`rdi`, `rsi`), ring-3 selectors, interrupts off.
pub fn initial_state(rip: u64, rsp: u64, arg0: u64, arg1: u64) -> TrapFrame {
    let (code, data) = crate::arch::gdt::user_selectors();
    TrapFrame {
        rip,
        rsp,
        rdi: arg0,
        rsi: arg1,
        cs: u64::from(code.0),
        ss: u64::from(data.0),
        rflags: 0x2,
        ..TrapFrame::default()
    }
}

/// Runs user code from `state` (in the address space that is active) until
/// `policy` lets a trap end the run; `state` then holds the user registers
/// at that trap (a system call's `rip` is past the `int`). Returns the trap.
pub fn run(state: &mut TrapFrame, policy: TrapPolicy) -> Fault {
    assert_eq!(state.cs & 3, 3, "user code runs in ring 3");
    let mut running = Running {
        buf: JmpBuf::default(),
        state,
        left: None,
        policy,
    };
    assert!(
        RUNNING.load(Ordering::SeqCst).is_null(),
        "user::run is not reentrant"
    );
    RUNNING.store(&mut running, Ordering::SeqCst);
    let arg = running.state.cast::<u8>();
    // SAFETY: `enter` never returns normally: it leaves through `iretq`,
    // and the run comes back only through `kmem_longjmp` on `running.buf`,
    // which lives until this call returns. `arg` points at the user state.
    unsafe { kmem_setjmp_call(enter, arg, &raw mut running.buf) };
    RUNNING.store(core::ptr::null_mut(), Ordering::SeqCst);
    running.left.expect("a user run ends with a trap")
}

/// Loads the user state at `arg` and returns to it with `iretq`.
extern "C" fn enter(arg: *mut u8) {
    // SAFETY: `arg` is a `TrapFrame`, laid out as `common_entry` pops it:
    // the registers, vector and error code, then the `iretq` frame with
    // ring-3 selectors. Nothing after the `iretq` runs on this stack.
    unsafe {
        core::arch::asm!(
            "mov rsp, {frame}",
            crate::arch::trap::return_from_trap_frame!(),
            frame = in(reg) arg,
            options(noreturn),
        )
    }
}

/// Called by the exception dispatcher for every trap from ring 3.
pub(crate) fn trap(frame: &mut TrapFrame, fault: Fault) {
    let running = RUNNING.load(Ordering::SeqCst);
    if running.is_null() {
        crate::dev::qemu::fatal(format_args!("trap from ring 3 outside user::run: {fault}"));
    }
    // SAFETY: `running` is the live `Running` of the current `run`, on the
    // kernel stack below the trap stack; single CPU, so nothing else uses it.
    let running = unsafe { &mut *running };
    if (running.policy)(frame, &fault) {
        return;
    }
    // SAFETY: `state` points at the caller's `TrapFrame`, alive for the run.
    unsafe { *running.state = *frame };
    running.left = Some(fault);
    let (code, data) = crate::arch::gdt::kernel_selectors();
    let longjmp: unsafe extern "C" fn(*const JmpBuf, u64) -> ! = kmem_longjmp;
    frame.rip = longjmp as usize as u64;
    frame.rdi = &raw const running.buf as u64;
    frame.rsi = 1;
    frame.cs = u64::from(code.0);
    frame.ss = u64::from(data.0);
    frame.rflags = 0x2;
    // Below the saved stack pointer: the kernel stack `run` was called on.
    frame.rsp = running.buf.rsp - 256;
}

core::arch::global_asm!(
    r#"
    .text
    .global kmem_probe_read
kmem_probe_read:
    xor edx, edx
    .global kmem_probe_read_insn
kmem_probe_read_insn:
    mov rax, [rdi]
    ret

    .global kmem_probe_read_stac
kmem_probe_read_stac:
    xor edx, edx
    stac
    .global kmem_probe_read_stac_insn
kmem_probe_read_stac_insn:
    mov rax, [rdi]
    clac
    ret

    .global kmem_probe_exec
kmem_probe_exec:
    xor edx, edx
    call rdi
    ret

    .global kmem_probe_fixup
kmem_probe_fixup:
    clac
    mov edx, 1
    xor eax, eax
    ret

    .global kmem_probe_exec_fixup
kmem_probe_exec_fixup:
    add rsp, 8
    mov edx, 1
    xor eax, eax
    ret
"#
);

extern "C" {
    fn kmem_probe_read(addr: u64) -> ProbeResult;
    fn kmem_probe_read_stac(addr: u64) -> ProbeResult;
    fn kmem_probe_exec(addr: u64) -> ProbeResult;
    static kmem_probe_read_insn: u8;
    static kmem_probe_read_stac_insn: u8;
    static kmem_probe_fixup: u8;
    static kmem_probe_exec_fixup: u8;
}

/// `rax` (the value) and `rdx` (0, or 1 after a fault) of a probe.
#[repr(C)]
struct ProbeResult {
    value: u64,
    faulted: u64,
}

/// The instruction `probe_exec` jumps to, while it runs (0 otherwise).
static EXEC_TARGET: core::sync::atomic::AtomicU64 = core::sync::atomic::AtomicU64::new(0);

/// Where a kernel fault in a probe resumes: the exception-table entry of
/// the faulting instruction, if it is one of the probes.
pub(crate) fn fixup(frame: &mut TrapFrame) -> bool {
    let read = &raw const kmem_probe_read_insn as u64;
    let read_stac = &raw const kmem_probe_read_stac_insn as u64;
    let exec = EXEC_TARGET.load(Ordering::SeqCst);
    if frame.rip == read || frame.rip == read_stac {
        frame.rip = &raw const kmem_probe_fixup as u64;
        true
    } else if exec != 0 && frame.rip == exec {
        frame.rip = &raw const kmem_probe_exec_fixup as u64;
        true
    } else {
        false
    }
}

/// A probe's access faulted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProbeFault;

/// Reads the word at `addr` from ring 0, as plain kernel code would:
/// `Err` when the CPU refuses (SMAP on a user page, nothing mapped).
pub fn probe_read(addr: u64) -> Result<u64, ProbeFault> {
    // SAFETY: a fault at the load resumes at the fixup (see `fixup`), so the
    // read either completes or reports; `addr` is only dereferenced there.
    let r = unsafe { kmem_probe_read(addr) };
    if r.faulted == 0 {
        Ok(r.value)
    } else {
        Err(ProbeFault)
    }
}

/// [`probe_read`] with `stac`: user pages are allowed under SMAP.
pub fn probe_read_user(addr: u64) -> Result<u64, ProbeFault> {
    // SAFETY: as in `probe_read`; `stac`/`clac` bracket the load.
    let r = unsafe { kmem_probe_read_stac(addr) };
    if r.faulted == 0 {
        Ok(r.value)
    } else {
        Err(ProbeFault)
    }
}

/// Calls `addr` from ring 0; `Err` when the fetch faults (SMEP on a user
/// page). The code at `addr`, if it runs, must return with `rdx` = 0.
pub fn probe_exec(addr: u64) -> Result<(), ProbeFault> {
    EXEC_TARGET.store(addr, Ordering::SeqCst);
    // SAFETY: a fetch fault at `addr` resumes at the exec fixup, which drops
    // the return address and returns; the caller vouches for code at `addr`.
    let r = unsafe { kmem_probe_exec(addr) };
    EXEC_TARGET.store(0, Ordering::SeqCst);
    if r.faulted == 0 {
        Ok(())
    } else {
        Err(ProbeFault)
    }
}
