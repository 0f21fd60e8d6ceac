//! Adapter for the `bootloader_api` crate's memory regions (feature `bootloader_api`).
//!
//! Mirrors `bootloader_api::info::{MemoryRegion, MemoryRegionKind}` (0.11) so
//! kmem needs no dependency on it: convert field by field.

use super::{MapError, MemoryMap, Region, RegionKind};

/// Mirror of `bootloader_api::info::MemoryRegionKind`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MemoryRegionKind {
    /// Unused conventional memory.
    Usable,
    /// Memory mappings created by the bootloader, including the kernel and boot info.
    Bootloader,
    /// An unknown UEFI memory type.
    UnknownUefi(u32),
    /// An unknown BIOS (E820) memory type.
    UnknownBios(u32),
}

/// Mirror of `bootloader_api::info::MemoryRegion`: `[start, end)`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MemoryRegion {
    /// Physical start address.
    pub start: u64,
    /// Physical end address (exclusive).
    pub end: u64,
    /// What the region holds.
    pub kind: MemoryRegionKind,
}

/// The kmem region of a bootloader region. An inverted range (`end < start`)
/// becomes a wrapping length, which [`MemoryMap::add`] refuses.
pub fn region(r: &MemoryRegion) -> Region {
    let kind = match r.kind {
        MemoryRegionKind::Usable => RegionKind::Usable,
        MemoryRegionKind::Bootloader => RegionKind::Bootloader,
        MemoryRegionKind::UnknownBios(t) => super::e820::kind(t),
        MemoryRegionKind::UnknownUefi(_) => RegionKind::Reserved,
    };
    Region::new(r.start, r.end.wrapping_sub(r.start), kind)
}

/// Sanitizes bootloader regions into a map.
pub fn from_regions<const N: usize>(regions: &[MemoryRegion]) -> Result<MemoryMap<N>, MapError> {
    MemoryMap::from_regions(regions.iter().map(region))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn inverted_region_is_refused() {
        let bad = MemoryRegion {
            start: 0x2000,
            end: 0x1000,
            kind: MemoryRegionKind::Usable,
        };
        assert!(matches!(
            from_regions::<4>(&[bad]),
            Err(MapError::Wraps { .. })
        ));
    }

    #[test]
    fn bootloader_wins_over_usable() {
        let rs = [
            MemoryRegion {
                start: 0,
                end: 0x4000,
                kind: MemoryRegionKind::Usable,
            },
            MemoryRegion {
                start: 0x1000,
                end: 0x2000,
                kind: MemoryRegionKind::Bootloader,
            },
        ];
        let map = from_regions::<4>(&rs).unwrap();
        assert_eq!(map.usable_bytes(), 0x3000);
    }
}
