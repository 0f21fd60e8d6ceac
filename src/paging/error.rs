//! Typed errors of the mapper: each variant names what was wrong and carries the data.

use x86_64::{PhysAddr, VirtAddr};

use super::LeafSize;

/// Why a paging operation was refused. After any error the tables are exactly as before.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PagingError {
    /// The address (or the end of the range) is not canonical: bits 48..64 differ from bit 47,
    /// or the range crosses the hole between the two halves.
    NonCanonical {
        /// The offending raw address.
        addr: u64,
    },
    /// An address or length is not a multiple of the required alignment.
    Misaligned {
        /// The offending raw address or length.
        value: u64,
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
        /// The offending raw address.
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
        core::fmt::Debug::fmt(self, f)
    }
}

impl core::error::Error for PagingError {}
