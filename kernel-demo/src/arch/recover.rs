//! Running code so that a fault or a panic inside it comes back as a value.
//!
//! [`protect`] saves the callee-saved registers and the stack pointer (a
//! `setjmp`), then calls the closure. When the closure faults, the
//! exception handler rewrites its return frame so that `iretq` lands in
//! `kmem_longjmp`, which restores the saved registers and returns from the
//! `setjmp` a second time with a non-zero value; a panic calls
//! `kmem_longjmp` directly. The closure's stack frames are abandoned, not
//! dropped: whatever they owned leaks, as with `panic = "abort"`.
//!
//! Each CPU has its own jump buffer, fault and panic message, so a fault
//! on one CPU resumes the `protect` running on that CPU.

use crate::arch::cpu::MAX_CPUS;
use crate::arch::cpus::cpu_index;
use crate::arch::trap::Fault;
use crate::text::FixedStr;
use core::sync::atomic::{AtomicPtr, Ordering};

/// Registers a `setjmp` saves (the System V callee-saved set).
#[repr(C)]
#[derive(Default)]
pub(crate) struct JmpBuf {
    rbx: u64,
    rbp: u64,
    r12: u64,
    r13: u64,
    r14: u64,
    r15: u64,
    /// Stack pointer at entry of `kmem_setjmp_call`: points at its
    /// return address.
    pub(crate) rsp: u64,
}

const RETURNED: u64 = 0;
const FAULTED: u64 = 1;
const PANICKED: u64 = 2;

/// How a protected call ended.
#[derive(Debug, Clone, Copy)]
pub enum Outcome {
    /// The closure returned normally.
    Returned,
    /// A CPU exception interrupted it.
    Faulted(Fault),
    /// It panicked; the message is in [`panic_message`].
    Panicked,
}

/// Each CPU's active jump buffer, null outside [`protect`].
static ACTIVE: [AtomicPtr<JmpBuf>; MAX_CPUS] =
    [const { AtomicPtr::new(core::ptr::null_mut()) }; MAX_CPUS];
static LAST_FAULT: [spin::Mutex<Option<Fault>>; MAX_CPUS] =
    [const { spin::Mutex::new(None) }; MAX_CPUS];
static PANIC_MESSAGE: [spin::Mutex<FixedStr<512>>; MAX_CPUS] =
    [const { spin::Mutex::new(FixedStr::new()) }; MAX_CPUS];

fn this_cpu() -> usize {
    cpu_index() % MAX_CPUS
}

/// Calls `f`, turning a CPU exception or a panic inside it into an
/// [`Outcome`]. Not reentrant: a nested call is refused with a panic.
pub fn protect(mut f: impl FnMut()) -> Outcome {
    let mut buf = JmpBuf::default();
    let mut closure: &mut dyn FnMut() = &mut f;
    // A nested call is refused before the outer buffer is replaced, so the
    // panic unwinds (by longjmp) to the outer call, whose buffer is valid.
    assert!(!active(), "recover::protect is not reentrant");
    let cpu = this_cpu();
    ACTIVE[cpu].store(&mut buf, Ordering::SeqCst);
    // SAFETY: `trampoline` matches the callee contract of
    // `kmem_setjmp_call` and receives a pointer to `closure`, which lives
    // until the call returns (either way). `buf` outlives the call and is
    // registered in ACTIVE only for its duration.
    let code = unsafe { kmem_setjmp_call(trampoline, (&raw mut closure).cast(), &raw mut buf) };
    ACTIVE[cpu].store(core::ptr::null_mut(), Ordering::SeqCst);
    match code {
        RETURNED => Outcome::Returned,
        FAULTED => match LAST_FAULT[cpu].lock().take() {
            Some(fault) => Outcome::Faulted(fault),
            None => Outcome::Panicked,
        },
        _ => Outcome::Panicked,
    }
}

extern "C" fn trampoline(arg: *mut u8) {
    // SAFETY: `protect` passes a pointer to a live `&mut dyn FnMut()`.
    let f = unsafe { &mut *arg.cast::<&mut dyn FnMut()>() };
    f();
}

/// Whether a [`protect`] call is running on this CPU.
pub fn active() -> bool {
    !ACTIVE[this_cpu()].load(Ordering::SeqCst).is_null()
}

/// The message of the last panic caught by [`protect`] on this CPU.
pub fn panic_message() -> FixedStr<512> {
    let mut out = FixedStr::new();
    let _ = core::fmt::Write::write_str(&mut out, &PANIC_MESSAGE[this_cpu()].lock());
    out
}

/// Called by the exception handler: when a protected call is running,
/// redirects `frame` so that `iretq` resumes in the `setjmp` with
/// [`Outcome::Faulted`], and returns true.
pub(crate) fn catch_fault(frame: &mut crate::arch::trap::TrapFrame, fault: Fault) -> bool {
    let cpu = this_cpu();
    let buf = ACTIVE[cpu].load(Ordering::SeqCst);
    if buf.is_null() {
        return false;
    }
    // The handler may have interrupted a holder of this lock; only this
    // CPU takes it, so taking it by force is sound.
    // SAFETY: the lock is this CPU's own, exceptions are the only
    // reentrancy, and the interrupted holder never resumes (we jump past it).
    unsafe { LAST_FAULT[cpu].force_unlock() };
    *LAST_FAULT[cpu].lock() = Some(fault);
    let longjmp: unsafe extern "C" fn(*const JmpBuf, u64) -> ! = kmem_longjmp;
    frame.rip = longjmp as usize as u64;
    frame.rdi = buf as u64;
    frame.rsi = FAULTED;
    // SAFETY: `buf` is the live jump buffer of the running `protect`.
    // A stack below the saved pointer was in use by the closure, so it is
    // mapped; `kmem_longjmp` switches to the saved pointer at once.
    frame.rsp = unsafe { (*buf).rsp } - 256;
    true
}

/// The kernel's panic handler: a panic inside a protected call resumes
/// it ([`escape_panic`]); any other is fatal.
#[panic_handler]
fn panic(info: &core::panic::PanicInfo<'_>) -> ! {
    escape_panic(info);
    crate::dev::qemu::fatal(format_args!("kernel panic: {info}"))
}

/// When a protected call is running, records the panic's message and
/// resumes the `setjmp` with [`Outcome::Panicked`].
fn escape_panic(info: &core::panic::PanicInfo<'_>) {
    let cpu = this_cpu();
    let buf = ACTIVE[cpu].load(Ordering::SeqCst);
    if buf.is_null() {
        return;
    }
    // SAFETY: see `catch_fault`: this CPU's own lock, the holder never resumes.
    unsafe { PANIC_MESSAGE[cpu].force_unlock() };
    {
        let mut msg = PANIC_MESSAGE[cpu].lock();
        *msg = FixedStr::new();
        let _ = core::fmt::write(&mut *msg, format_args!("{info}"));
    }
    // SAFETY: `buf` is the live jump buffer of the running `protect`,
    // whose frame is below us on this stack.
    unsafe { kmem_longjmp(buf, PANICKED) }
}

/// `setjmp` and call: saves the callee-saved registers in `buf`, calls
/// `f(arg)` and returns 0; returns again with `kmem_longjmp`'s value.
#[unsafe(naked)]
pub(crate) unsafe extern "C" fn kmem_setjmp_call(
    f: extern "C" fn(*mut u8),
    arg: *mut u8,
    buf: *mut JmpBuf,
) -> u64 {
    core::arch::naked_asm!(
        "mov [rdx], rbx",
        "mov [rdx + 8], rbp",
        "mov [rdx + 16], r12",
        "mov [rdx + 24], r13",
        "mov [rdx + 32], r14",
        "mov [rdx + 40], r15",
        "mov [rdx + 48], rsp",
        "mov rax, rdi",
        "mov rdi, rsi",
        "sub rsp, 8",
        "call rax",
        "add rsp, 8",
        "xor eax, eax",
        "ret",
    )
}

/// `longjmp`: restores `buf` and returns `value` from its `setjmp`.
#[unsafe(naked)]
pub(crate) unsafe extern "C" fn kmem_longjmp(buf: *const JmpBuf, value: u64) -> ! {
    core::arch::naked_asm!(
        "mov rbx, [rdi]",
        "mov rbp, [rdi + 8]",
        "mov r12, [rdi + 16]",
        "mov r13, [rdi + 24]",
        "mov r14, [rdi + 32]",
        "mov r15, [rdi + 40]",
        "mov rsp, [rdi + 48]",
        "mov rax, rsi",
        "ret",
    )
}
