//! Boot memory maps: region kinds, the sanitizer, bootloader adapters.
//!
//! A bootloader hands over a list of physical regions that may be unsorted,
//! overlapping, unaligned or plain wrong. [`MemoryMap`] takes such regions one
//! by one (or from an adapter), and keeps a sorted, merged, non-overlapping
//! view in which a non-usable kind always wins over usable memory and usable
//! regions cover whole 4 KiB frames only. What cannot be honored (too many
//! regions, addresses past the 52-bit physical limit, wrapping regions) is
//! refused with a [`MapError`], leaving the map unchanged.
//!
//! Adapters, one constructor per boot protocol: [`MemoryMap::from_e820`] (PVH start
//! info, BIOS E820) always; `from_bootloader_api`, `from_limine` and `from_multiboot2`
//! behind cargo features of the same name, over those crates' own types.
//!
//! ```
//! use kmem::memory_map::{e820::{self, E820Entry}, MemoryMap, Region, RegionKind};
//!
//! let raw = [
//!     E820Entry { addr: 0, size: 0x9fc00, kind: 1 },
//!     E820Entry { addr: 0x10_0000, size: 0x7ff_0000, kind: 1 },
//!     E820Entry { addr: 0xf0000, size: 0x10000, kind: 2 },
//! ];
//! let mut map: MemoryMap = MemoryMap::from_e820(&raw)?;
//! // Keep the low 1 MiB and the kernel image away from the allocator.
//! map.reserve(0, 0x10_0000)?;
//! map.add(Region::new(0x10_0000, 0x20_0000, RegionKind::Kernel))?;
//! assert_eq!(map.usable_bytes(), 0x7ff_0000 - 0x20_0000);
//! # Ok::<(), kmem::memory_map::MapError>(())
//! ```

mod error;
mod map;
mod region;

pub mod e820;

#[cfg(feature = "bootloader_api")]
pub mod bootloader_api;
#[cfg(feature = "limine")]
pub mod limine;
#[cfg(feature = "multiboot2")]
pub mod multiboot2;

pub use error::MapError;
pub use map::{MemoryMap, DEFAULT_CAPACITY};
pub use region::{Region, RegionKind, FRAME_SIZE, PHYS_LIMIT};
