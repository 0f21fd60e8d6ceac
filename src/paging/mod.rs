//! The 4-level page-table mapper: single pages, ranges, address spaces.
//!
//! - Tables are reached through [`PhysMem`] (a direct map in a kernel, a host buffer in tests);
//!   privileged operations go through [`Mmu`]. Everything else is plain, host-testable code.
//! - [`PageTables`] maps, unmaps, translates and protects 4 KiB / 2 MiB / 1 GiB pages, one at a time
//!   or as ranges ([`PageTables::map_range`] picks the largest page size alignment allows).
//! - Range operations plan first, reserve their table frames, then commit: a failure leaves
//!   everything as it was. Empty tables go back to the frame source.
//! - Every TLB-changing call returns a [`Flush`] token.
//! - [`MapFlags`] default to non-executable; writable + executable needs an explicit opt-in.
//!
//! Frames come from any `x86_64` `FrameAllocator<Size4KiB> + FrameDeallocator<Size4KiB>`
//! ([`FrameSource`]).
//!
//! A kernel's bring-up, sketched (identity-mapped low memory at boot, then a direct map at a
//! higher-half offset, a W^X kernel image and a CR3 switch):
//!
//! ```no_run
//! use kmem::paging::{FrameSource, MapFlags, PageTables, Mmu, OffsetPhysMem, X86Mmu};
//! use x86_64::{PhysAddr, VirtAddr};
//!
//! const DIRECT_MAP: u64 = 0xffff_8800_0000_0000;
//! fn bring_up(frames: &mut impl FrameSource, ram_end: u64, text: (u64, u64), data: (u64, u64), kbase: u64) {
//!     // SAFETY: at boot, physical memory is identity-mapped.
//!     let identity = unsafe { OffsetPhysMem::new(VirtAddr::zero()) };
//!     let mut m = PageTables::new_empty(identity, frames).unwrap();
//!     let rw = MapFlags::READ_WRITE.global();
//!     // The direct map: 1 GiB / 2 MiB pages wherever alignment allows.
//!     // SAFETY: example tables, mapping frames no Rust object uses.
//!     unsafe { m.map_range(VirtAddr::new(DIRECT_MAP), PhysAddr::new(0), ram_end, rw, frames) }.unwrap().ignore();
//!     // The kernel image: text read-execute, data read-write (never both).
//!     let (tp, tlen) = text;
//!     // SAFETY: example tables, mapping frames no Rust object uses.
//!     unsafe { m.map_range(VirtAddr::new(kbase), PhysAddr::new(tp), tlen, MapFlags::READ_EXEC.global(), frames) }.unwrap().ignore();
//!     let (dp, dlen) = data;
//!     // SAFETY: example tables, mapping frames no Rust object uses.
//!     unsafe { m.map_range(VirtAddr::new(kbase + tlen), PhysAddr::new(dp), dlen, rw, frames) }.unwrap().ignore();
//!     let mut mmu = X86Mmu;
//!     // SAFETY: the new tables map the running kernel (code, stack, data) as before.
//!     unsafe { mmu.set_cr3(m.pml4()) };
//!     // From now on reach the tables through the direct map.
//!     let (pml4, _) = m.into_parts();
//!     // SAFETY: all RAM is mapped read-write at DIRECT_MAP + phys.
//!     let _m = unsafe { PageTables::new(pml4, OffsetPhysMem::new(VirtAddr::new(DIRECT_MAP))) };
//! }
//! ```

mod address_space;
mod copy;
mod entry;
mod error;
mod flags;
mod flush;
mod huge;
mod interop;
#[cfg(any(test, feature = "testing"))]
mod invariants;
mod leaves;
mod mmu;
mod page_tables;
mod phys_mem;
mod range;
mod reserve;
mod size;
mod soft;
mod spare;
pub(crate) use entry::{ACCESSED, ADDR_MASK, DIRTY, PRESENT, WRITABLE};
pub(crate) use soft::same_entry;
mod translate;
mod visit;

pub use address_space::{AddressSpace, DestroyStats, KERNEL_HALF};
pub(crate) use copy::{CopyAs, CopyLeaf};
pub use error::PagingError;
pub use flags::MapFlags;
pub use flush::{Flush, FLUSH_THRESHOLD};
pub use interop::X86Mapper;
#[cfg(any(test, feature = "testing"))]
pub use invariants::{PagingInvariantError, TableReport};
pub use leaves::{Census, Leaf};
pub use mmu::{Mmu, X86Mmu};
pub use page_tables::{FrameSource, PageTables};
pub use phys_mem::{OffsetPhysMem, PhysMem};
pub use size::LeafSize;
pub use spare::KeepFreed;
pub use translate::{Access, Translation};
