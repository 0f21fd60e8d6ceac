//! The IDT: exception entry stubs and the dispatcher that hands each trap
//! to the user-mode layer, the fault hook or recovery, and each interrupt
//! (IPIs from the local APIC) to its handler.
//!
//! Stable Rust has no `x86-interrupt` ABI, so each vector gets a naked
//! stub that pushes a uniform frame ([`TrapFrame`]) and calls one Rust
//! dispatcher. The dispatcher can edit the frame before `iretq`: that is
//! how a fault inside [`crate::arch::recover::protect`] resumes the caller.

use crate::arch::trap::{return_from_trap_frame, vector, Fault, TrapFrame};
use crate::arch::{apic, shootdown};
use core::sync::atomic::{AtomicUsize, Ordering};
use x86_64::registers::control::Cr2;
use x86_64::structures::gdt::SegmentSelector;
use x86_64::structures::DescriptorTablePointer;
use x86_64::VirtAddr;

/// What the user-mode layer handles, registered by the kernel at start-up
/// ([`set_user_traps`]): this layer sits below it.
#[derive(Clone, Copy)]
pub struct UserTraps {
    /// Every trap from ring 3 (resumes user mode or leaves it).
    pub trap: fn(&mut TrapFrame, Fault),
    /// A kernel fault inside a probe of user memory: moves the frame to
    /// the probe's recovery point and returns true, else returns false.
    pub fixup: fn(&mut TrapFrame) -> bool,
}

static USER_TRAPS: spin::Once<UserTraps> = spin::Once::new();

/// Registers the user-mode layer's handlers (the first call wins). Until
/// then a trap from ring 3 is unexpected.
pub fn set_user_traps(traps: UserTraps) {
    USER_TRAPS.call_once(|| traps);
}

/// A handler the kernel installs to repair a fault and retry the
/// instruction (return true), e.g. by mapping the missing page.
pub type FaultHook = fn(&Fault) -> bool;

/// The hook as an address (0: none): read without a lock, since several
/// CPUs fault at once.
static FAULT_HOOK: AtomicUsize = AtomicUsize::new(0);

/// Installs (or, with `None`, removes) the fault-repair hook.
pub fn set_fault_hook(hook: Option<FaultHook>) {
    FAULT_HOOK.store(hook.map_or(0, |h| h as usize), Ordering::SeqCst);
}

/// The installed hook.
fn fault_hook() -> Option<FaultHook> {
    match FAULT_HOOK.load(Ordering::SeqCst) {
        0 => None,
        // SAFETY: a non-zero value was stored from a `FaultHook` above.
        a => Some(unsafe { core::mem::transmute::<usize, FaultHook>(a) }),
    }
}

/// Whether an IDT vector is a device or inter-processor interrupt (not an
/// exception, not the system call).
fn is_interrupt_vector(vector: u64) -> bool {
    (0x20..=0xFF).contains(&vector) && vector != u64::from(vector::SYSCALL)
}

/// Handles an interrupt from the local APIC on this CPU and acknowledges
/// it: a shootdown request is served; any other vector (a wake-up) needs
/// only the EOI.
fn interrupt(vector: u8) {
    match vector {
        shootdown::SHOOTDOWN_VECTOR => {
            shootdown::serve_pending();
            apic::eoi();
        }
        apic::SPURIOUS_VECTOR => {} // no EOI for spurious interrupts
        _ => apic::eoi(),
    }
}

extern "C" fn dispatch(frame: &mut TrapFrame) {
    if is_interrupt_vector(frame.vector) {
        // From the local APIC (IPIs): handled and acknowledged, wherever
        // it interrupted.
        interrupt(frame.vector as u8);
        return;
    }
    let fault = Fault {
        vector: frame.vector as u8,
        error_code: frame.error_code,
        rip: frame.rip,
        addr: if frame.vector == u64::from(vector::PAGE_FAULT) {
            Cr2::read_raw()
        } else {
            0
        },
    };
    let user = USER_TRAPS.get();
    if frame.cs & 3 == 3 {
        if let Some(user) = user {
            // From ring 3: the user-mode layer decides (resume or leave).
            (user.trap)(frame, fault);
            return;
        }
    }
    if user.is_some_and(|user| (user.fixup)(frame)) {
        return;
    }
    if let Some(hook) = fault_hook() {
        if fault.vector != vector::DOUBLE_FAULT && hook(&fault) {
            return;
        }
    }
    if crate::arch::recover::catch_fault(frame, fault) {
        return;
    }
    crate::println!("\nUNEXPECTED {fault}");
    crate::println!("{frame:#x?}");
    crate::dev::qemu::exit(crate::dev::qemu::ExitCode::Failure);
}

#[unsafe(naked)]
extern "C" fn common_entry() {
    core::arch::naked_asm!(
        "push rax",
        "push rbx",
        "push rcx",
        "push rdx",
        "push rsi",
        "push rdi",
        "push rbp",
        "push r8",
        "push r9",
        "push r10",
        "push r11",
        "push r12",
        "push r13",
        "push r14",
        "push r15",
        "mov rdi, rsp",
        "cld",
        // The CPU aligned rsp to 16 before pushing its 5-word frame; with
        // error code, vector and 15 registers (22 words) rsp is aligned.
        "call {dispatch}",
        return_from_trap_frame!(),
        dispatch = sym dispatch,
    )
}

macro_rules! stubs {
    ($($name:ident = $vec:literal $(, $err:ident)?;)*) => {
        $(
            #[unsafe(naked)]
            extern "C" fn $name() {
                core::arch::naked_asm!(
                    stubs!(@pad $($err)?),
                    concat!("push ", $vec),
                    "jmp {common}",
                    common = sym common_entry,
                )
            }
        )*
        const STUBS: [(u8, extern "C" fn()); 0 $(+ { let _ = $vec; 1 })*] = [$(($vec, $name)),*];
    };
    (@pad error_code) => { "" };
    (@pad) => { "push 0" };
}

stubs! {
    stub0 = 0; stub1 = 1; stub2 = 2; stub3 = 3; stub4 = 4; stub5 = 5; stub6 = 6; stub7 = 7;
    stub8 = 8, error_code; stub9 = 9; stub10 = 10, error_code; stub11 = 11, error_code;
    stub12 = 12, error_code; stub13 = 13, error_code; stub14 = 14, error_code; stub15 = 15;
    stub16 = 16; stub17 = 17, error_code; stub18 = 18; stub19 = 19; stub20 = 20;
    stub21 = 21, error_code; stub28 = 28; stub29 = 29, error_code; stub30 = 30, error_code;
    stub128 = 0x80; stub240 = 0xF0; stub241 = 0xF1; stub255 = 0xFF;
}

#[repr(C, align(16))]
#[derive(Clone, Copy)]
struct IdtEntry {
    offset_low: u16,
    selector: u16,
    ist: u8,
    attributes: u8,
    offset_mid: u16,
    offset_high: u32,
    reserved: u32,
}

impl IdtEntry {
    const MISSING: Self = Self {
        offset_low: 0,
        selector: 0,
        ist: 0,
        attributes: 0,
        offset_mid: 0,
        offset_high: 0,
        reserved: 0,
    };

    /// A present interrupt gate (interrupts stay off in handlers), usable
    /// by `int` from ring `dpl` and below.
    fn gate(handler: extern "C" fn(), selector: SegmentSelector, ist: u8, dpl: u8) -> Self {
        let addr = handler as usize as u64;
        Self {
            offset_low: addr as u16,
            selector: selector.0,
            ist,
            attributes: 0x8E | (dpl << 5),
            offset_mid: (addr >> 16) as u16,
            offset_high: (addr >> 32) as u32,
            reserved: 0,
        }
    }
}

static IDT: spin::Once<[IdtEntry; 256]> = spin::Once::new();

/// Loads the GDT and TSS, then the IDT.
pub fn init() {
    crate::arch::gdt::init();
    let code = crate::arch::gdt::kernel_code();
    let idt = IDT.call_once(|| {
        let mut idt = [IdtEntry::MISSING; 256];
        for (vec, stub) in STUBS {
            let ist = if vec == vector::DOUBLE_FAULT {
                crate::arch::gdt::DOUBLE_FAULT_IST
            } else {
                0
            };
            let dpl = if vec == vector::SYSCALL { 3 } else { 0 };
            idt[usize::from(vec)] = IdtEntry::gate(stub, code, ist, dpl);
        }
        idt
    });
    load(idt);
}

/// Loads the IDT [`init`] built on another CPU (all CPUs share it).
pub fn init_ap() {
    load(IDT.get().expect("interrupts::init ran on the boot CPU"));
}

fn load(idt: &'static [IdtEntry; 256]) {
    let ptr = DescriptorTablePointer {
        limit: (core::mem::size_of_val(idt) - 1) as u16,
        base: VirtAddr::from_ptr(idt.as_ptr()),
    };
    // SAFETY: `idt` is 'static and every present entry points at a stub
    // that saves all registers and ends in `iretq`.
    unsafe { x86_64::instructions::tables::lidt(&ptr) };
}

/// Loads an empty IDT and raises an exception: the CPU triple-faults.
/// Only the runner's self-tests use this.
pub fn triple_fault() -> ! {
    let ptr = DescriptorTablePointer {
        limit: 0,
        base: VirtAddr::zero(),
    };
    // SAFETY: deliberately invalid IDT: the next exception resets the
    // machine, which is the purpose of this function.
    unsafe {
        x86_64::instructions::tables::lidt(&ptr);
        core::arch::asm!("int3");
    }
    unreachable!("the CPU resets on a triple fault")
}
