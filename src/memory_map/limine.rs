//! Adapter for the Limine boot protocol memory map (feature `limine`).
//!
//! Mirrors a Limine `memmap` entry (`base`, `length`, `type`) so kmem needs
//! no dependency on the `limine` crate.

use super::{MapError, MemoryMap, Region, RegionKind};

/// Mirror of a Limine memory map entry.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(C)]
pub struct MemmapEntry {
    /// Physical start address.
    pub base: u64,
    /// Length in bytes.
    pub length: u64,
    /// One of the `*` type constants of this module.
    pub typ: u64,
}

/// Usable RAM.
pub const USABLE: u64 = 0;
/// Reserved.
pub const RESERVED: u64 = 1;
/// ACPI reclaimable.
pub const ACPI_RECLAIMABLE: u64 = 2;
/// ACPI NVS.
pub const ACPI_NVS: u64 = 3;
/// Bad memory.
pub const BAD_MEMORY: u64 = 4;
/// Bootloader reclaimable.
pub const BOOTLOADER_RECLAIMABLE: u64 = 5;
/// Kernel (executable) and modules.
pub const EXECUTABLE_AND_MODULES: u64 = 6;
/// Framebuffer.
pub const FRAMEBUFFER: u64 = 7;

/// The kmem region kind of a Limine type; unknown types are reserved.
pub const fn kind(typ: u64) -> RegionKind {
    match typ {
        USABLE => RegionKind::Usable,
        ACPI_RECLAIMABLE => RegionKind::AcpiReclaimable,
        ACPI_NVS => RegionKind::AcpiNvs,
        BAD_MEMORY => RegionKind::Bad,
        BOOTLOADER_RECLAIMABLE => RegionKind::Bootloader,
        EXECUTABLE_AND_MODULES => RegionKind::Kernel,
        _ => RegionKind::Reserved,
    }
}

/// Sanitizes Limine entries into a map.
pub fn from_entries<const N: usize>(entries: &[MemmapEntry]) -> Result<MemoryMap<N>, MapError> {
    MemoryMap::from_regions(
        entries
            .iter()
            .map(|e| Region::new(e.base, e.length, kind(e.typ))),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kernel_and_framebuffer_are_not_usable() {
        let es = [
            MemmapEntry {
                base: 0,
                length: 0x10000,
                typ: USABLE,
            },
            MemmapEntry {
                base: 0x1000,
                length: 0x1000,
                typ: EXECUTABLE_AND_MODULES,
            },
            MemmapEntry {
                base: 0x8000,
                length: 0x1000,
                typ: FRAMEBUFFER,
            },
        ];
        assert_eq!(from_entries::<8>(&es).unwrap().usable_bytes(), 0xe000);
    }
}
