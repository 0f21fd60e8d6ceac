//! Adapter for the `bootloader_api` crate's memory regions (feature `bootloader_api`).
//!
//! Takes the real crate's `BootInfo::memory_regions` as it is handed over, so a kernel
//! booted by `bootloader` writes `MemoryMap::from_bootloader_api(&boot_info.memory_regions)`.

use super::{MapError, MemoryMap, Region, RegionKind};
use bootloader_api::info::{MemoryRegion, MemoryRegionKind};

/// The kmem region of a bootloader region. An inverted range (`end < start`)
/// becomes a wrapping length, which [`MemoryMap::add`] refuses.
pub fn region(r: &MemoryRegion) -> Region {
    let kind = match r.kind {
        MemoryRegionKind::Usable => RegionKind::Usable,
        MemoryRegionKind::Bootloader => RegionKind::Bootloader,
        MemoryRegionKind::UnknownBios(t) => super::e820::kind(t),
        // UEFI types the bootloader did not classify, and kinds added by later
        // versions of the crate, are never handed out.
        _ => RegionKind::Reserved,
    };
    Region::new(r.start, r.end.wrapping_sub(r.start), kind)
}

impl<const N: usize> MemoryMap<N> {
    /// Sanitizes the regions a `bootloader` kernel receives in `BootInfo`.
    ///
    /// `&boot_info.memory_regions` coerces to the slice this takes.
    pub fn from_bootloader_api(regions: &[MemoryRegion]) -> Result<Self, MapError> {
        Self::from_regions(regions.iter().map(region))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bootloader_api::info::MemoryRegions;

    fn regions(rs: &[MemoryRegion]) -> MemoryRegions {
        // `MemoryRegions` is built from a `'static` slice, as the bootloader does.
        MemoryRegions::from(&mut *Box::leak(rs.to_vec().into_boxed_slice()))
    }

    fn r(start: u64, end: u64, kind: MemoryRegionKind) -> MemoryRegion {
        let mut region = MemoryRegion::empty();
        region.start = start;
        region.end = end;
        region.kind = kind;
        region
    }

    #[test]
    fn inverted_region_is_refused() {
        let bad = regions(&[r(0x2000, 0x1000, MemoryRegionKind::Usable)]);
        assert!(matches!(
            MemoryMap::<4>::from_bootloader_api(&bad),
            Err(MapError::Wraps { .. })
        ));
    }

    #[test]
    fn bootloader_wins_over_usable() {
        let rs = regions(&[
            r(0, 0x4000, MemoryRegionKind::Usable),
            r(0x1000, 0x2000, MemoryRegionKind::Bootloader),
            r(0x3000, 0x4000, MemoryRegionKind::UnknownUefi(7)),
        ]);
        let map = MemoryMap::<4>::from_bootloader_api(&rs).unwrap();
        assert_eq!(map.usable_bytes(), 0x2000);
    }

    #[test]
    fn bios_types_keep_their_meaning() {
        let rs = regions(&[
            r(0, 0x4000, MemoryRegionKind::Usable),
            r(0x1000, 0x2000, MemoryRegionKind::UnknownBios(3)),
        ]);
        let map = MemoryMap::<4>::from_bootloader_api(&rs).unwrap();
        assert!(map
            .regions()
            .iter()
            .any(|g| g.kind == RegionKind::AcpiReclaimable && g.start == 0x1000));
    }
}
