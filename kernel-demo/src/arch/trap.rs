//! What a trap leaves behind: the saved registers ([`TrapFrame`]), the
//! exception ([`Fault`]), the vectors, and the way back (`iretq` from a
//! frame). Handlers (recovery, user mode) read these; `interrupts` fills them.

use core::fmt;
use x86_64::structures::idt::PageFaultErrorCode;

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
