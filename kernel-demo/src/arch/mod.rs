//! The CPU: feature setup and timestamps, which CPU runs the caller, the
//! GDT and IDT with the exception and system-call entries, recovery from
//! expected faults and panics, the local APIC and TLB shootdown by IPI.
//! Nothing here maps memory or knows user mode: the layers above register
//! what the trap dispatcher calls ([`interrupts::set_user_traps`],
//! [`interrupts::set_fault_hook`]) and map the APIC ([`apic::init`]).

pub mod apic;
pub mod cpu;
pub mod cpus;
pub mod gdt;
pub mod interrupts;
pub mod recover;
pub mod shootdown;
pub mod trap;
