//! The 4-level page-table mapper: single pages, ranges, address spaces.
//!
//! - Tables are reached through [`PhysMem`] (a direct map in a kernel, a host buffer in tests);
//!   privileged operations go through [`Mmu`]. Everything else is plain, host-testable code.
//! - [`Mapper`] maps, unmaps, translates and protects 4 KiB / 2 MiB / 1 GiB pages, one at a time
//!   or as ranges ([`Mapper::map_range`] picks the largest page size alignment allows).
//! - Range operations plan first, reserve their table frames, then commit: a failure leaves
//!   everything as it was. Empty tables go back to the frame source.
//! - Every TLB-changing call returns a [`Flush`] token.
//! - [`MapFlags`] default to non-executable; writable + executable needs an explicit opt-in.
//!
//! Frames come from any `x86_64` `FrameAllocator<Size4KiB> + FrameDeallocator<Size4KiB>`
//! ([`FrameSource`]).

mod address_space;
mod entry;
mod error;
mod flags;
mod flush;
#[cfg(any(test, feature = "testing"))]
mod invariants;
mod leaves;
mod mapper;
mod mmu;
mod phys_mem;
mod range;
mod reserve;
mod size;
mod walk;

pub use address_space::{AddressSpace, DestroyStats, KERNEL_HALF};
pub use error::PagingError;
pub use flags::MapFlags;
pub use flush::{Flush, FLUSH_THRESHOLD};
#[cfg(any(test, feature = "testing"))]
pub use invariants::{InvariantViolation, TableReport};
pub use leaves::{Census, Leaf};
pub use mapper::{FrameSource, Mapper};
pub use mmu::{Mmu, X86Mmu};
pub use phys_mem::{OffsetPhysMem, PhysMem};
pub use size::LeafSize;
pub use walk::{Access, Translation};
