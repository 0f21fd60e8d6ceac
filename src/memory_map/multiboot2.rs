//! Adapter for the Multiboot2 memory-map tag (feature `multiboot2`).
//!
//! Takes the real crate's tag as GRUB hands it over:
//! `MemoryMap::from_multiboot2(boot_info.memory_map_tag().unwrap())`.

use super::{MapError, MemoryMap, Region, RegionKind};
use multiboot2::{MemoryArea, MemoryMapTag};

/// The kmem region kind of a Multiboot2 area type (the E820 numbering).
pub fn kind(area: &MemoryArea) -> RegionKind {
    super::e820::kind(u32::from(area.typ()))
}

impl<const N: usize> MemoryMap<N> {
    /// Sanitizes the areas of a Multiboot2 memory-map tag.
    pub fn from_multiboot2(tag: &MemoryMapTag) -> Result<Self, MapError> {
        Self::from_multiboot2_areas(tag.memory_areas())
    }

    /// Sanitizes Multiboot2 memory areas (the tag's contents).
    pub fn from_multiboot2_areas(areas: &[MemoryArea]) -> Result<Self, MapError> {
        Self::from_regions(
            areas
                .iter()
                .map(|a| Region::new(a.start_address(), a.size(), kind(a))),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defective_area_is_cut_out() {
        let tag = MemoryMapTag::new(&[
            MemoryArea::new(0, 0x4000, 1),
            MemoryArea::new(0x2000, 0x1000, 5),
        ]);
        assert_eq!(
            MemoryMap::<4>::from_multiboot2(&tag)
                .unwrap()
                .usable_bytes(),
            0x3000
        );
    }
}
