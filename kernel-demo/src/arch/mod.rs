//! The CPU: feature setup and timestamps, the IDT with its exception and
//! system-call entries, and recovery from expected faults and panics.

pub mod cpu;
pub mod gdt;
pub mod interrupts;
pub mod recover;
pub mod trap;
