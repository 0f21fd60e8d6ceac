//! Page sizes as a value, for translations, errors and range limits.

use x86_64::structures::paging::{PageSize, Size1GiB, Size2MiB, Size4KiB};

/// The size of one leaf mapping.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum LeafSize {
    /// 4 KiB, a page-table entry.
    Size4KiB,
    /// 2 MiB, a huge page-directory entry.
    Size2MiB,
    /// 1 GiB, a huge PDPT entry.
    Size1GiB,
}

impl LeafSize {
    /// Bytes covered.
    pub const fn bytes(self) -> u64 {
        match self {
            Self::Size4KiB => Size4KiB::SIZE,
            Self::Size2MiB => Size2MiB::SIZE,
            Self::Size1GiB => Size1GiB::SIZE,
        }
    }

    /// The table level holding such a leaf (1 = page table).
    pub(crate) const fn level(self) -> u8 {
        match self {
            Self::Size4KiB => 1,
            Self::Size2MiB => 2,
            Self::Size1GiB => 3,
        }
    }

    /// The size of a leaf at `level` (1..=3).
    pub(crate) const fn from_level(level: u8) -> Self {
        match level {
            1 => Self::Size4KiB,
            2 => Self::Size2MiB,
            _ => Self::Size1GiB,
        }
    }

    /// The size of the `x86_64` page-size type `S`.
    pub const fn of<S: PageSize>() -> Self {
        match S::SIZE {
            Size4KiB::SIZE => Self::Size4KiB,
            Size2MiB::SIZE => Self::Size2MiB,
            _ => Self::Size1GiB,
        }
    }
}

/// A leaf size as people write it: "4 KiB", "2 MiB", "1 GiB".
impl core::fmt::Display for LeafSize {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str(match self {
            Self::Size4KiB => "4 KiB",
            Self::Size2MiB => "2 MiB",
            Self::Size1GiB => "1 GiB",
        })
    }
}
