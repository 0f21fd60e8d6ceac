//! The local APIC in xAPIC mode: its registers mapped uncached and
//! non-executable through kmem, end of interrupt, and inter-processor
//! interrupts (INIT, start-up, fixed vectors).
//!
//! xAPIC rather than x2APIC: QEMU 7.2's TCG does not offer x2APIC, and
//! every CPU that has one starts in xAPIC mode anyway.

use core::sync::atomic::{AtomicU64, Ordering};
use x86_64::registers::model_specific::Msr;
use x86_64::{PhysAddr, VirtAddr};

/// Where the register page is mapped (PML4 slot 464, unused otherwise).
pub const APIC_VIRT: u64 = 0xFFFF_E800_0000_0000;
/// The vector the APIC delivers spurious interrupts to (no EOI).
pub const SPURIOUS_VECTOR: u8 = 0xFF;

const IA32_APIC_BASE: u32 = 0x1B;
const BASE_ENABLE: u64 = 1 << 11;
const BASE_X2APIC: u64 = 1 << 10;

const REG_ID: usize = 0x20;
const REG_EOI: usize = 0xB0;
const REG_SVR: usize = 0xF0;
const REG_ICR_LOW: usize = 0x300;
const REG_ICR_HIGH: usize = 0x310;
const REG_LVT_LINT0: usize = 0x350;
const REG_LVT_LINT1: usize = 0x360;
const ICR_PENDING: u32 = 1 << 12;
const ICR_ASSERT: u32 = 1 << 14;
const LVT_MASKED: u32 = 1 << 16;

/// The mapped register page: 0 until [`init`].
static BASE: AtomicU64 = AtomicU64::new(0);

/// Why the local APIC cannot be used.
#[derive(Debug)]
pub enum ApicError {
    /// CPUID reports no local APIC.
    Missing,
    /// The firmware left it in x2APIC mode, which this driver does not speak.
    X2ApicMode,
    /// Mapping the register page failed.
    Map(kmem::paging::PagingError),
}

/// Has `map` map the register page (once: uncached, at [`APIC_VIRT`])
/// and enables this CPU's APIC. Call on the bootstrap CPU, with the
/// kernel's address space active; the mapping is the caller's, since the
/// kernel's mapper sits above this layer.
pub fn init(
    map: impl FnOnce(PhysAddr, VirtAddr) -> Result<(), kmem::paging::PagingError>,
) -> Result<(), ApicError> {
    if BASE.load(Ordering::Acquire) == 0 {
        if core::arch::x86_64::__cpuid(1).edx & (1 << 9) == 0 {
            return Err(ApicError::Missing);
        }
        // SAFETY: IA32_APIC_BASE exists on every CPU with a local APIC (checked).
        let msr = unsafe { Msr::new(IA32_APIC_BASE).read() };
        if msr & BASE_X2APIC != 0 {
            return Err(ApicError::X2ApicMode);
        }
        let phys = PhysAddr::new(msr & 0x000F_FFFF_FFFF_F000);
        map(phys, VirtAddr::new(APIC_VIRT)).map_err(ApicError::Map)?;
        BASE.store(APIC_VIRT, Ordering::Release);
    }
    enable();
    Ok(())
}

/// Whether [`init`] mapped the registers.
pub fn ready() -> bool {
    BASE.load(Ordering::Acquire) != 0
}

fn reg(offset: usize) -> *mut u32 {
    let base = BASE.load(Ordering::Acquire);
    assert!(base != 0, "the local APIC is used before apic::init");
    core::ptr::with_exposed_provenance_mut(base as usize + offset)
}

fn read(offset: usize) -> u32 {
    // SAFETY: `reg` points into the mapped, uncached register page; APIC
    // registers are 32-bit and 16-byte aligned.
    unsafe { reg(offset).read_volatile() }
}

fn write(offset: usize, value: u32) {
    // SAFETY: as in `read`.
    unsafe { reg(offset).write_volatile(value) }
}

/// Enables the running CPU's APIC (software enable, spurious vector) and
/// masks its LINT pins: interrupts come from IPIs only.
pub fn enable() {
    // SAFETY: the MSR exists (checked in `init`); setting the global
    // enable bit keeps the base address.
    unsafe {
        let mut msr = Msr::new(IA32_APIC_BASE);
        let v = msr.read();
        msr.write(v | BASE_ENABLE);
    }
    write(REG_LVT_LINT0, LVT_MASKED);
    write(REG_LVT_LINT1, LVT_MASKED);
    write(REG_SVR, 0x100 | u32::from(SPURIOUS_VECTOR));
}

/// The running CPU's APIC id.
pub fn id() -> u32 {
    read(REG_ID) >> 24
}

/// Signals the end of the interrupt being handled.
pub fn eoi() {
    write(REG_EOI, 0);
}

/// Writes the interrupt command register (destination first) and waits
/// until the APIC accepted the command. Interrupts are masked around the
/// two writes so a handler cannot slip its own command between them.
fn command(apic_id: u32, low: u32) {
    x86_64::instructions::interrupts::without_interrupts(|| {
        write(REG_ICR_HIGH, apic_id << 24);
        write(REG_ICR_LOW, low);
        while read(REG_ICR_LOW) & ICR_PENDING != 0 {
            core::hint::spin_loop();
        }
    });
}

/// Sends a fixed interrupt with `vector` to the CPU with `apic_id`.
pub fn send_ipi(apic_id: u32, vector: u8) {
    command(apic_id, ICR_ASSERT | u32::from(vector));
}

/// Sends INIT (assert) to `apic_id`: the CPU waits for a start-up IPI.
pub fn send_init(apic_id: u32) {
    command(apic_id, ICR_ASSERT | (0b101 << 8));
}

/// Sends a start-up IPI: the CPU starts in real mode at `page * 4096`.
pub fn send_startup(apic_id: u32, page: u8) {
    command(apic_id, ICR_ASSERT | (0b110 << 8) | u32::from(page));
}
