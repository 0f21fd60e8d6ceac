//! CPU feature setup done once at boot.

use x86_64::registers::control::{Cr0, Cr0Flags, Cr4, Cr4Flags};
use x86_64::registers::model_specific::{Efer, EferFlags};

/// Whether the CPU supports the no-execute bit.
pub fn has_nx() -> bool {
    let ext = core::arch::x86_64::__cpuid(0x8000_0001);
    ext.edx & (1 << 20) != 0
}

/// Whether the CPU supports 1 GiB pages.
pub fn has_1gib_pages() -> bool {
    let ext = core::arch::x86_64::__cpuid(0x8000_0001);
    ext.edx & (1 << 26) != 0
}

/// Turns on what memory protection relies on: CR0.WP (ring 0 honours
/// read-only pages), EFER.NXE (the NX bit is honoured) when supported, and
/// CR4.PGE (global kernel mappings survive address-space switches).
pub fn init() {
    // SAFETY: setting WP only makes the kernel's own writes to read-only
    // pages fault, which is what the protection tests expect.
    unsafe { Cr0::update(|f| f.insert(Cr0Flags::WRITE_PROTECT)) };
    // SAFETY: global pages only keep kernel TLB entries across CR3 writes;
    // every full flush goes through a PGE toggle.
    unsafe { Cr4::update(|f| f.insert(Cr4Flags::PAGE_GLOBAL)) };
    if has_nx() {
        // SAFETY: NXE is supported (checked); no page has NX set yet, so
        // nothing that runs now becomes non-executable.
        unsafe { Efer::update(|f| f.insert(EferFlags::NO_EXECUTE_ENABLE)) };
    }
}

/// Reads the time-stamp counter.
pub fn rdtsc() -> u64 {
    // SAFETY: RDTSC has no side effects and is available on x86_64.
    unsafe { core::arch::x86_64::_rdtsc() }
}
