//! The E820 memory map, as found in the PVH start info (`hvm_memmap_table_entry`)
//! and the BIOS `int 15h, e820h` call.

use super::{MapError, MemoryMap, Region, RegionKind};

/// One raw E820 entry. `#[repr(C)]`: its 24 bytes match a PVH
/// `hvm_memmap_table_entry` (the trailing padding is that entry's reserved word).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(C)]
pub struct E820Entry {
    /// Physical start address.
    pub addr: u64,
    /// Length in bytes.
    pub size: u64,
    /// E820 type: 1 usable, 2 reserved, 3 ACPI reclaimable, 4 ACPI NVS, 5 bad.
    pub kind: u32,
}

/// The region kind of an E820 type; unknown types are reserved.
pub const fn kind(e820_type: u32) -> RegionKind {
    match e820_type {
        1 => RegionKind::Usable,
        3 => RegionKind::AcpiReclaimable,
        4 => RegionKind::AcpiNvs,
        5 => RegionKind::Bad,
        _ => RegionKind::Reserved,
    }
}

impl From<&E820Entry> for Region {
    fn from(e: &E820Entry) -> Self {
        Region::new(e.addr, e.size, kind(e.kind))
    }
}

impl<const N: usize> MemoryMap<N> {
    /// Sanitizes raw E820 entries (a PVH start info's map, BIOS `e820h`) into a map.
    ///
    /// ```
    /// use kmem::memory_map::{e820::E820Entry, MemoryMap};
    /// let map = MemoryMap::<64>::from_e820(&[E820Entry { addr: 0x10_0000, size: 0x10_0000, kind: 1 }])?;
    /// assert_eq!(map.usable_bytes(), 0x10_0000);
    /// # Ok::<(), kmem::memory_map::MapError>(())
    /// ```
    pub fn from_e820(entries: &[E820Entry]) -> Result<Self, MapError> {
        Self::from_regions(entries.iter().map(Region::from))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn types_map_to_kinds() {
        let kinds: [RegionKind; 7] = [0, 1, 2, 3, 4, 5, 99].map(kind);
        use RegionKind::*;
        assert_eq!(
            kinds,
            [
                Reserved,
                Usable,
                Reserved,
                AcpiReclaimable,
                AcpiNvs,
                Bad,
                Reserved
            ]
        );
    }

    #[test]
    fn entry_layout_matches_pvh() {
        assert_eq!(core::mem::size_of::<E820Entry>(), 24);
    }
}
