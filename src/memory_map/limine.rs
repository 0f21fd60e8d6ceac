//! Adapter for the Limine boot protocol's memory map (feature `limine`).
//!
//! Takes the real crate's entries as the memory-map response hands them over:
//! `MemoryMap::from_limine(MEMMAP.get_response().unwrap().entries())`.

use super::{MapError, MemoryMap, Region, RegionKind};
use limine::memory_map::{Entry, EntryType};

/// The kmem region kind of a Limine entry type; unknown types are reserved.
pub fn kind(typ: EntryType) -> RegionKind {
    match typ {
        EntryType::USABLE => RegionKind::Usable,
        EntryType::ACPI_RECLAIMABLE => RegionKind::AcpiReclaimable,
        EntryType::ACPI_NVS => RegionKind::AcpiNvs,
        EntryType::BAD_MEMORY => RegionKind::Bad,
        EntryType::BOOTLOADER_RECLAIMABLE => RegionKind::Bootloader,
        EntryType::EXECUTABLE_AND_MODULES => RegionKind::Kernel,
        _ => RegionKind::Reserved,
    }
}

impl<const N: usize> MemoryMap<N> {
    /// Sanitizes the entries of a Limine memory-map response.
    pub fn from_limine(entries: &[&Entry]) -> Result<Self, MapError> {
        Self::from_regions(
            entries
                .iter()
                .map(|e| Region::new(e.base, e.length, kind(e.entry_type))),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(base: u64, length: u64, entry_type: EntryType) -> Entry {
        Entry {
            base,
            length,
            entry_type,
        }
    }

    #[test]
    fn kernel_and_framebuffer_are_not_usable() {
        let es = [
            entry(0, 0x10000, EntryType::USABLE),
            entry(0x1000, 0x1000, EntryType::EXECUTABLE_AND_MODULES),
            entry(0x8000, 0x1000, EntryType::FRAMEBUFFER),
        ];
        let refs: Vec<&Entry> = es.iter().collect();
        assert_eq!(
            MemoryMap::<8>::from_limine(&refs).unwrap().usable_bytes(),
            0xe000
        );
    }
}
