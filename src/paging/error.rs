//! Typed errors of the mapper: each variant names what was wrong and carries the data.

use x86_64::{PhysAddr, VirtAddr};

use super::LeafSize;

/// Why a paging operation was refused. After any error the tables are exactly as before.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PagingError {
    /// The address (or the end of the range) is not canonical: bits 48..64 differ from bit 47,
    /// or the range crosses the hole between the two halves.
    NonCanonical {
        /// The offending value: raw bits, as no `VirtAddr` can hold a non-canonical address.
        addr: u64,
    },
    /// A virtual address is not a multiple of the required alignment.
    MisalignedVirtAddr {
        /// The offending address.
        addr: VirtAddr,
        /// The required alignment.
        align: u64,
    },
    /// A physical address is not a multiple of the required alignment.
    MisalignedPhysAddr {
        /// The offending address.
        addr: PhysAddr,
        /// The required alignment.
        align: u64,
    },
    /// A length is not a multiple of the required alignment.
    MisalignedLength {
        /// The offending length.
        len: u64,
        /// The required alignment.
        align: u64,
    },
    /// A range of zero length, or one whose physical end exceeds 52 bits.
    InvalidLength {
        /// The length that was asked for.
        len: u64,
    },
    /// The physical address does not fit the 52-bit physical address space.
    InvalidPhysAddr {
        /// The offending value: raw bits, as no `PhysAddr` can hold it.
        addr: u64,
    },
    /// A page in the way is already mapped.
    AlreadyMapped {
        /// The virtual start of the existing mapping.
        addr: VirtAddr,
        /// The frame it maps.
        frame: PhysAddr,
        /// Its size.
        size: LeafSize,
    },
    /// A huge page covers the address where a smaller page (or a table) was needed.
    HugePageInTheWay {
        /// The virtual start of the huge page.
        addr: VirtAddr,
        /// The frame it maps.
        frame: PhysAddr,
        /// Its size.
        size: LeafSize,
    },
    /// A page table (with mappings below it) sits where a huge page of exactly this size was asked for.
    TableInTheWay {
        /// The virtual start of the region that table covers.
        addr: VirtAddr,
        /// The size of that region.
        size: LeafSize,
    },
    /// Nothing is mapped at this address with the requested page size.
    NotMapped {
        /// The address asked for.
        addr: VirtAddr,
    },
    /// The frame source ran out while table frames were needed.
    OutOfFrames {
        /// Frames this operation needed.
        needed: usize,
        /// Frames obtained before the source failed (all returned).
        obtained: usize,
    },
    /// Writable and executable together, without the explicit opt-in.
    WriteExecute {
        /// The start of the mapping that was refused.
        addr: VirtAddr,
    },
    /// The address space is the active one (CR3) and cannot be destroyed.
    AddressSpaceActive {
        /// Its top-level table.
        pml4: PhysAddr,
    },
}

impl core::fmt::Display for PagingError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match *self {
            Self::NonCanonical { addr } => write!(
                f,
                "address {addr:#x} is not canonical or the range crosses the non-canonical hole"
            ),
            Self::MisalignedVirtAddr { addr, align } => write!(
                f,
                "virtual address {:#x} is not a multiple of {align:#x}",
                addr.as_u64()
            ),
            Self::MisalignedPhysAddr { addr, align } => write!(
                f,
                "physical address {:#x} is not a multiple of {align:#x}",
                addr.as_u64()
            ),
            Self::MisalignedLength { len, align } => {
                write!(f, "length {len:#x} is not a multiple of {align:#x}")
            }
            Self::InvalidLength { len } => write!(
                f,
                "length {len:#x} is zero or runs past the 52-bit physical address space"
            ),
            Self::InvalidPhysAddr { addr } => write!(
                f,
                "physical address {addr:#x} is outside the 52-bit physical address space"
            ),
            Self::AlreadyMapped { addr, frame, size } => write!(
                f,
                "{:#x} is already mapped by a {} page to frame {:#x}",
                addr.as_u64(),
                size,
                frame.as_u64()
            ),
            Self::HugePageInTheWay { addr, frame, size } => write!(
                f,
                "a {} page at {:#x} (frame {:#x}) is in the way of a smaller mapping",
                size,
                addr.as_u64(),
                frame.as_u64()
            ),
            Self::TableInTheWay { addr, size } => write!(
                f,
                "a page table with mappings sits where a {} page at {:#x} was asked for",
                size,
                addr.as_u64()
            ),
            Self::NotMapped { addr } => write!(
                f,
                "nothing is mapped at {:#x} with the requested page size",
                addr.as_u64()
            ),
            Self::OutOfFrames { needed, obtained } => write!(
                f,
                "out of frames for page tables: needed {needed}, obtained {obtained} (all returned)"
            ),
            Self::WriteExecute { addr } => write!(
                f,
                "mapping at {:#x} would be writable and executable without the opt-in",
                addr.as_u64()
            ),
            Self::AddressSpaceActive { pml4 } => write!(
                f,
                "the address space with PML4 {:#x} is active (in CR3) and cannot be destroyed",
                pml4.as_u64()
            ),
        }
    }
}

impl core::error::Error for PagingError {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn display_is_a_sentence_with_hex_addresses() {
        let e = PagingError::AlreadyMapped {
            addr: VirtAddr::new(0xffff_8000_0020_0000),
            frame: PhysAddr::new(0x4000),
            size: LeafSize::Size2MiB,
        };
        assert_eq!(
            e.to_string(),
            "0xffff800000200000 is already mapped by a 2 MiB page to frame 0x4000"
        );
        let e = PagingError::MisalignedLength {
            len: 0x1234,
            align: 0x1000,
        };
        assert_eq!(e.to_string(), "length 0x1234 is not a multiple of 0x1000");
    }
}
