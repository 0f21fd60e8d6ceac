//! GDT with a TSS, the IDT, exception entry stubs and fault reporting.
//!
//! Stable Rust has no `x86-interrupt` ABI, so each vector gets a naked
//! stub that pushes a uniform frame ([`TrapFrame`]) and calls one Rust
//! dispatcher. The dispatcher can edit the frame before `iretq`: that is
//! how a fault inside [`crate::recover::protect`] resumes the caller.

use core::fmt;
use x86_64::registers::control::Cr2;
use x86_64::structures::gdt::{Descriptor, GlobalDescriptorTable, SegmentSelector};
use x86_64::structures::idt::PageFaultErrorCode;
use x86_64::structures::tss::TaskStateSegment;
use x86_64::structures::DescriptorTablePointer;
use x86_64::VirtAddr;

/// IST slot (1-based in the IDT, 0-based in the TSS) for double faults.
const DOUBLE_FAULT_IST: u8 = 1;
const IST_STACK_SIZE: usize = 32 * 1024;

/// A 16-byte aligned stack for one IST slot.
#[repr(C, align(16))]
struct Stack([u8; IST_STACK_SIZE]);

static mut DOUBLE_FAULT_STACK: Stack = Stack([0; IST_STACK_SIZE]);
/// The stack the CPU switches to (TSS RSP0) on a trap from ring 3.
static mut USER_TRAP_STACK: Stack = Stack([0; IST_STACK_SIZE]);

/// Exception vectors.
pub mod vector {
    /// Divide error.
    pub const DIVIDE: u8 = 0;
    /// Breakpoint (`int3`).
    pub const BREAKPOINT: u8 = 3;
    /// Invalid opcode (`ud2`).
    pub const INVALID_OPCODE: u8 = 6;
    /// Double fault.
    pub const DOUBLE_FAULT: u8 = 8;
    /// General protection.
    pub const GENERAL_PROTECTION: u8 = 13;
    /// Page fault.
    pub const PAGE_FAULT: u8 = 14;
    /// System call (`int 0x80`), the one gate ring 3 may use.
    pub const SYSCALL: u8 = 0x80;
}

/// Saved state on the stack of an exception, lowest address first.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default)]
#[allow(missing_docs)]
pub struct TrapFrame {
    pub r15: u64,
    pub r14: u64,
    pub r13: u64,
    pub r12: u64,
    pub r11: u64,
    pub r10: u64,
    pub r9: u64,
    pub r8: u64,
    pub rbp: u64,
    pub rdi: u64,
    pub rsi: u64,
    pub rdx: u64,
    pub rcx: u64,
    pub rbx: u64,
    pub rax: u64,
    pub vector: u64,
    pub error_code: u64,
    pub rip: u64,
    pub cs: u64,
    pub rflags: u64,
    pub rsp: u64,
    pub ss: u64,
}

/// A CPU exception, as reported and as compared with test expectations.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Fault {
    /// Exception vector.
    pub vector: u8,
    /// Error code (0 for vectors without one).
    pub error_code: u64,
    /// Faulting instruction.
    pub rip: u64,
    /// CR2: the faulting address, for page faults.
    pub addr: u64,
}

impl Fault {
    /// The decoded page-fault error code.
    pub fn page_fault_bits(&self) -> PageFaultErrorCode {
        PageFaultErrorCode::from_bits_truncate(self.error_code)
    }

    fn name(&self) -> &'static str {
        match self.vector {
            vector::DIVIDE => "divide error",
            vector::BREAKPOINT => "breakpoint",
            vector::INVALID_OPCODE => "invalid opcode",
            vector::DOUBLE_FAULT => "double fault",
            vector::GENERAL_PROTECTION => "general protection fault",
            vector::PAGE_FAULT => "page fault",
            _ => "exception",
        }
    }
}

impl fmt::Display for Fault {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} (vector {})", self.name(), self.vector)?;
        if self.vector == vector::PAGE_FAULT {
            write!(f, " at {:#x}: ", self.addr)?;
            write_page_fault_bits(f, self.page_fault_bits())?;
        } else if self.error_code != 0 {
            write!(f, ", error code {:#x}", self.error_code)?;
        }
        write!(f, ", rip {:#x}", self.rip)
    }
}

/// Writes the error bits as words: `present write user reserved fetch`.
pub fn write_page_fault_bits(f: &mut dyn fmt::Write, bits: PageFaultErrorCode) -> fmt::Result {
    let names = [
        (
            PageFaultErrorCode::PROTECTION_VIOLATION,
            "present",
            "not-present",
        ),
        (PageFaultErrorCode::CAUSED_BY_WRITE, "write", "read"),
        (PageFaultErrorCode::USER_MODE, "user", "supervisor"),
        (PageFaultErrorCode::MALFORMED_TABLE, "reserved-bit", ""),
        (
            PageFaultErrorCode::INSTRUCTION_FETCH,
            "instruction-fetch",
            "",
        ),
    ];
    let mut first = true;
    for (bit, set, clear) in names {
        let word = if bits.contains(bit) { set } else { clear };
        if word.is_empty() {
            continue;
        }
        if !first {
            f.write_str(" ")?;
        }
        f.write_str(word)?;
        first = false;
    }
    Ok(())
}

/// A handler the kernel installs to repair a fault and retry the
/// instruction (return true), e.g. by mapping the missing page.
pub type FaultHook = fn(&Fault) -> bool;

static FAULT_HOOK: spin::Mutex<Option<FaultHook>> = spin::Mutex::new(None);

/// Installs (or, with `None`, removes) the fault-repair hook.
pub fn set_fault_hook(hook: Option<FaultHook>) {
    *FAULT_HOOK.lock() = hook;
}

extern "C" fn dispatch(frame: &mut TrapFrame) {
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
    if frame.cs & 3 == 3 {
        // From ring 3: the user-mode layer decides (resume or leave).
        crate::user::trap(frame, fault);
        return;
    }
    if crate::user::fixup(frame) {
        return;
    }
    let hook = FAULT_HOOK.try_lock().and_then(|h| *h);
    if let Some(hook) = hook {
        if fault.vector != vector::DOUBLE_FAULT && hook(&fault) {
            return;
        }
    }
    if crate::recover::catch_fault(frame, fault) {
        return;
    }
    crate::println!("\nUNEXPECTED {fault}");
    crate::println!("{frame:#x?}");
    crate::qemu::exit(crate::qemu::ExitCode::Failure);
}

/// The instructions that pop a [`TrapFrame`] from `rsp` and return to it
/// with `iretq`: the exit of every trap, and the way into ring 3.
macro_rules! return_from_trap_frame {
    () => {
        "pop r15\npop r14\npop r13\npop r12\npop r11\npop r10\npop r9\npop r8\n\
         pop rbp\npop rdi\npop rsi\npop rdx\npop rcx\npop rbx\npop rax\n\
         add rsp, 16\niretq"
    };
}
pub(crate) use return_from_trap_frame;

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
    stub128 = 0x80;
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

struct Tables {
    gdt: GlobalDescriptorTable,
    code: SegmentSelector,
    data: SegmentSelector,
    tss: SegmentSelector,
    user_code: SegmentSelector,
    user_data: SegmentSelector,
}

/// The selectors of ring 3: (code, data), RPL 3.
pub fn user_selectors() -> (SegmentSelector, SegmentSelector) {
    let t = TABLES.get().expect("interrupts::init ran at boot");
    (t.user_code, t.user_data)
}

/// The selectors of ring 0: (code, data).
pub fn kernel_selectors() -> (SegmentSelector, SegmentSelector) {
    let t = TABLES.get().expect("interrupts::init ran at boot");
    (t.code, t.data)
}

static TSS: spin::Once<TaskStateSegment> = spin::Once::new();
static TABLES: spin::Once<Tables> = spin::Once::new();
static IDT: spin::Once<[IdtEntry; 256]> = spin::Once::new();

/// Loads the GDT (with a TSS providing the double-fault stack) and the IDT.
pub fn init() {
    let tss = TSS.call_once(|| {
        let mut tss = TaskStateSegment::new();
        let stack = &raw const DOUBLE_FAULT_STACK;
        tss.interrupt_stack_table[usize::from(DOUBLE_FAULT_IST - 1)] =
            VirtAddr::from_ptr(stack) + IST_STACK_SIZE as u64;
        let trap_stack = &raw const USER_TRAP_STACK;
        tss.privilege_stack_table[0] = VirtAddr::from_ptr(trap_stack) + IST_STACK_SIZE as u64;
        tss
    });
    let tables = TABLES.call_once(|| {
        let mut gdt = GlobalDescriptorTable::new();
        let code = gdt.append(Descriptor::kernel_code_segment());
        let data = gdt.append(Descriptor::kernel_data_segment());
        let tss = gdt.append(Descriptor::tss_segment(tss));
        let user_data = gdt.append(Descriptor::user_data_segment());
        let user_code = gdt.append(Descriptor::user_code_segment());
        Tables {
            gdt,
            code,
            data,
            tss,
            user_code,
            user_data,
        }
    });
    tables.gdt.load();
    // SAFETY: the selectors index the GDT just loaded, which is 'static;
    // code is 64-bit ring 0, data is writable, the TSS descriptor is valid.
    unsafe {
        use x86_64::instructions::segmentation::{Segment, CS, DS, ES, SS};
        CS::set_reg(tables.code);
        SS::set_reg(tables.data);
        DS::set_reg(tables.data);
        ES::set_reg(tables.data);
        x86_64::instructions::tables::load_tss(tables.tss);
    }
    let idt = IDT.call_once(|| {
        let mut idt = [IdtEntry::MISSING; 256];
        for (vec, stub) in STUBS {
            let ist = if vec == vector::DOUBLE_FAULT {
                DOUBLE_FAULT_IST
            } else {
                0
            };
            let dpl = if vec == vector::SYSCALL { 3 } else { 0 };
            idt[usize::from(vec)] = IdtEntry::gate(stub, tables.code, ist, dpl);
        }
        idt
    });
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
