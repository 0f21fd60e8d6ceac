//! Adapter for the Multiboot2 memory map tag (feature `multiboot2`).
//!
//! Mirrors a Multiboot2 `mmap` entry so kmem needs no dependency on the
//! `multiboot2` crate.

use super::{MapError, MemoryMap, Region, RegionKind};

/// Mirror of a Multiboot2 memory area entry (24 bytes, as in the tag).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(C)]
pub struct MemoryArea {
    /// Physical start address.
    pub base_addr: u64,
    /// Length in bytes.
    pub length: u64,
    /// 1 available, 2 reserved, 3 ACPI reclaimable, 4 NVS, 5 defective.
    pub typ: u32,
    /// Reserved by the specification; ignored.
    pub reserved: u32,
}

/// The kmem region kind of a Multiboot2 type (the E820 numbering).
pub const fn kind(typ: u32) -> RegionKind {
    super::e820::kind(typ)
}

/// Sanitizes Multiboot2 memory areas into a map.
pub fn from_areas<const N: usize>(areas: &[MemoryArea]) -> Result<MemoryMap<N>, MapError> {
    MemoryMap::from_regions(
        areas
            .iter()
            .map(|a| Region::new(a.base_addr, a.length, kind(a.typ))),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defective_area_is_cut_out() {
        let areas = [
            MemoryArea {
                base_addr: 0,
                length: 0x4000,
                typ: 1,
                reserved: 0,
            },
            MemoryArea {
                base_addr: 0x2000,
                length: 0x1000,
                typ: 5,
                reserved: 0,
            },
        ];
        assert_eq!(from_areas::<4>(&areas).unwrap().usable_bytes(), 0x3000);
    }
}
