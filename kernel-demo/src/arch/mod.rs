//! The CPU: feature setup and timestamps, the IDT with its exception and
//! system-call entries, recovery from expected faults and panics, the
//! local APIC and the other CPUs (start-up, work, TLB shootdown).

pub mod apic;
pub mod cpu;
pub mod gdt;
pub mod interrupts;
pub mod recover;
pub mod smp;
pub mod trap;
