//! Errors of the virtual-memory layer: typed, carrying the address.

use core::fmt;

use x86_64::{PhysAddr, VirtAddr};

use super::object::{ObjectId, PagerError};
use crate::paging::PagingError;

/// Why an area operation (map, unmap, protect, fork, destroy) failed.
/// After any error the address space is exactly as before. Virtual
/// addresses are the raw `u64`s the caller gave (they may be
/// non-canonical, which no `VirtAddr` holds).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VmError {
    /// The physical start of a fixed mapping is not page-aligned.
    UnalignedFrame {
        /// The physical address.
        phys: PhysAddr,
    },
    /// The address or length is not page-aligned, or the length is zero.
    Unaligned {
        /// The address.
        addr: u64,
        /// The length.
        len: u64,
    },
    /// The range leaves the address space's managed range.
    OutOfRange {
        /// The address.
        addr: u64,
        /// The length.
        len: u64,
    },
    /// A fixed mapping over memory that already has an area.
    Overlap {
        /// The start of the first area in the way.
        addr: u64,
    },
    /// Part of the range has no area (`mprotect` needs areas throughout).
    Unmapped {
        /// The start of the range.
        addr: u64,
    },
    /// No gap of this length is left.
    NoSpace {
        /// The length asked for.
        len: u64,
    },
    /// Writable and executable together (W^X).
    WriteExec {
        /// The address.
        addr: u64,
    },
    /// Frames ran out (for a page table, a copy or a zeroed page).
    OutOfMemory,
    /// The mapper refused; carries its error.
    Paging(PagingError),
    /// The address space is the active one (destroying it is refused).
    Active,
    /// A physical-memory area asked of the safe `map_fixed`: it goes
    /// through the `unsafe` `VmSpace::map_physical`.
    Physical {
        /// The physical address asked for.
        phys: PhysAddr,
    },
    /// Locking the range would pass the kernel's limit of locked pages
    /// (`Vm::set_lock_limit`).
    LockLimit {
        /// Pages locked now, in every space.
        locked: u64,
        /// Pages the range would add.
        wanted: u64,
        /// The limit.
        limit: u64,
    },
    /// The advice does not apply to locked memory (dropping its pages).
    Locked {
        /// The start of the locked area.
        addr: u64,
    },
    /// The advice applies to anonymous memory only.
    NotAnonymous {
        /// The start of the other area.
        addr: u64,
    },
    /// Writing pages out failed (no swap device, no slot left, a device
    /// error); the pages not written stay resident as they were.
    PageOut(FaultReason),
    /// Faulting a page of the range in failed (`VmSpace::lock`): a device
    /// error reading a swapped page, ...
    Populate(FaultReason),
    /// No such memory object (never made, or closed).
    NoObject {
        /// The id given.
        object: ObjectId,
    },
    /// The range of the object leaves it, or its offset is not
    /// page-aligned.
    BeyondObject {
        /// The offset in the object, in bytes.
        offset: u64,
        /// The length, in bytes.
        len: u64,
        /// The object's size, in bytes.
        size: u64,
    },
    /// The object is still mapped (closing it is refused).
    ObjectMapped {
        /// The object.
        object: ObjectId,
    },
    /// A page of the object is being read in or written by another CPU
    /// (a reclaim, a sync): closing it is refused, retry.
    ObjectBusy {
        /// The object.
        object: ObjectId,
    },
    /// The id is kept for the pages of memory objects (joining global
    /// reclaim with it is refused).
    GlobalId {
        /// The id given.
        id: u16,
    },
    /// Writing a dirty page back through its pager failed: the page stays
    /// dirty in the cache (nothing is lost), the operation did the rest.
    Pager(PagerError),
}

impl fmt::Display for VmError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::UnalignedFrame { phys } => write!(
                f,
                "physical address {:#x} is not page-aligned",
                phys.as_u64()
            ),
            Self::Unaligned { addr, len } => {
                write!(f, "range {addr:#x}+{len:#x} is not page-aligned or empty")
            }
            Self::OutOfRange { addr, len } => {
                write!(f, "range {addr:#x}+{len:#x} leaves the address space")
            }
            Self::Overlap { addr } => write!(f, "an area at {addr:#x} is in the way"),
            Self::Unmapped { addr } => write!(f, "part of the range at {addr:#x} has no area"),
            Self::NoSpace { len } => write!(f, "no free range of {len:#x} bytes"),
            Self::WriteExec { addr } => write!(f, "writable and executable at {addr:#x}"),
            Self::OutOfMemory => f.write_str("out of frames"),
            Self::Paging(e) => write!(f, "page tables: {e}"),
            Self::Active => f.write_str("the address space is active"),
            Self::Physical { phys } => write!(
                f,
                "mapping physical memory at {:#x} needs map_physical",
                phys.as_u64()
            ),
            Self::LockLimit {
                locked,
                wanted,
                limit,
            } => write!(
                f,
                "locking {wanted} more pages passes the limit of {limit} ({locked} locked)"
            ),
            Self::Locked { addr } => write!(f, "the area at {addr:#x} is locked"),
            Self::NotAnonymous { addr } => write!(f, "the area at {addr:#x} is not anonymous"),
            Self::PageOut(reason) => write!(f, "writing pages out: {reason:?}"),
            Self::Populate(reason) => write!(f, "faulting the range in: {reason:?}"),
            Self::NoObject { object } => write!(f, "no memory object {object:?}"),
            Self::BeyondObject { offset, len, size } => write!(
                f,
                "range {offset:#x}+{len:#x} of the object is unaligned or leaves its {size:#x} bytes"
            ),
            Self::ObjectMapped { object } => write!(f, "memory object {object:?} is still mapped"),
            Self::Pager(e) => write!(f, "writing back: {e}"),
            Self::ObjectBusy { object } => {
                write!(f, "a page of memory object {object:?} is being moved")
            }
            Self::GlobalId { id } => write!(f, "global reclaim id {id:#x} is kept for objects"),
        }
    }
}

impl core::error::Error for VmError {}

impl From<PagingError> for VmError {
    fn from(e: PagingError) -> Self {
        match e {
            PagingError::OutOfFrames { .. } => Self::OutOfMemory,
            e => Self::Paging(e),
        }
    }
}

impl From<PagingError> for FaultReason {
    fn from(e: PagingError) -> Self {
        match e {
            PagingError::OutOfFrames { .. } => Self::OutOfMemory,
            e => Self::Paging(e),
        }
    }
}

/// Why a page fault could not be resolved: the kernel should end the
/// faulting program (or panic, for a kernel fault).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FaultError {
    /// The faulting address.
    pub addr: VirtAddr,
    /// Why.
    pub reason: FaultReason,
}

/// The reason in a [`FaultError`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FaultReason {
    /// No area covers the address.
    NoArea,
    /// The address is in a guard area.
    Guard,
    /// A write to an area without `WRITE`.
    WriteToReadOnly,
    /// An instruction fetch from an area without `EXEC`.
    ExecuteNoExec,
    /// Any access to an area without access rights (`PROT_NONE`).
    NoAccess,
    /// A ring-3 access to a kernel area.
    UserToKernel,
    /// A kernel access that the page allows, refused by SMAP/SMEP (a
    /// kernel read, write or fetch of a user page).
    KernelToUser,
    /// The CPU found a reserved bit set in a page-table entry.
    CorruptTable,
    /// Resolving it needed a frame and none was left: no free frame, and
    /// nothing could be reclaimed (no swap device).
    OutOfMemory,
    /// Resolving it needed a frame, and reclaiming one needed a swap slot:
    /// none is left.
    OutOfSwap,
    /// Reading the page back from swap failed; the page stays on swap.
    SwapIo(super::SwapIoError),
    /// Reclaim was asked for and no swap device is attached.
    NoSwap,
    /// The mapper refused (a huge page or table where a page was expected).
    Paging(PagingError),
    /// Reading the page of a memory object through its pager failed (the
    /// kernel's `SIGBUS`); nothing was mapped, the access may be retried.
    Pager(PagerError),
}

impl FaultReason {
    /// Whether the access itself is refused (the program is at fault), as
    /// opposed to the kernel failing to serve it (memory, swap, the mapper).
    pub const fn is_refusal(&self) -> bool {
        !matches!(
            self,
            Self::OutOfMemory
                | Self::OutOfSwap
                | Self::SwapIo(_)
                | Self::NoSwap
                | Self::Paging(_)
                | Self::Pager(_)
        )
    }
}

impl fmt::Display for FaultError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let why = match self.reason {
            FaultReason::NoArea => "no area",
            FaultReason::Guard => "guard area",
            FaultReason::WriteToReadOnly => "write to read-only memory",
            FaultReason::ExecuteNoExec => "execute of no-execute memory",
            FaultReason::NoAccess => "access to inaccessible memory",
            FaultReason::UserToKernel => "user access to kernel memory",
            FaultReason::KernelToUser => "kernel access to user memory",
            FaultReason::CorruptTable => "reserved bit set in a page-table entry",
            FaultReason::OutOfMemory => "out of memory",
            FaultReason::OutOfSwap => "out of memory and out of swap",
            FaultReason::NoSwap => "reclaim without a swap device",
            FaultReason::SwapIo(e) => return write!(f, "fault at {:#x}: {e}", self.addr.as_u64()),
            FaultReason::Paging(e) => return write!(f, "fault at {:#x}: {e}", self.addr.as_u64()),
            FaultReason::Pager(e) => return write!(f, "fault at {:#x}: {e}", self.addr.as_u64()),
        };
        write!(f, "fault at {:#x}: {why}", self.addr.as_u64())
    }
}

impl core::error::Error for FaultError {}
