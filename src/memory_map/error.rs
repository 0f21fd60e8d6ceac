//! Why a memory map refused a region.

use core::fmt;

/// A region the map cannot honor. The map is unchanged after any error.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MapError {
    /// Recording the region would need more than `capacity` sanitized regions.
    TooManyRegions {
        /// The fixed capacity of the map.
        capacity: usize,
    },
    /// The region ends past the 52-bit physical address limit.
    BeyondPhysLimit {
        /// Start of the offending region.
        start: u64,
        /// Length of the offending region.
        len: u64,
    },
    /// `start + len` overflows `u64`.
    Wraps {
        /// Start of the offending region.
        start: u64,
        /// Length of the offending region.
        len: u64,
    },
}

impl fmt::Display for MapError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            Self::TooManyRegions { capacity } => {
                write!(f, "memory map needs more than {capacity} regions")
            }
            Self::BeyondPhysLimit { start, len } => {
                write!(
                    f,
                    "region {start:#x}+{len:#x} ends past the 52-bit physical limit"
                )
            }
            Self::Wraps { start, len } => write!(f, "region {start:#x}+{len:#x} wraps around"),
        }
    }
}

impl core::error::Error for MapError {}
