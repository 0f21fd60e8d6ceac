//! Virtual memory: areas per address space, demand-zero pages,
//! copy-on-write fork and page faults turned into typed decisions.
//!
//! This layer sits on [`paging`](crate::paging) and [`frame`](crate::frame)
//! and, unlike them, uses `alloc` (areas and share counts live on the
//! kernel heap): enable it with the `vm` feature (on by default) once the
//! kernel has a global allocator.
//!
//! - [`Vm`]: what all address spaces share: the zero frame, the counts of
//!   frames shared after a fork, the [`VmStats`] counters.
//! - [`VmSpace`]: one address space: [`Area`]s with `mmap`/`munmap`/
//!   `mprotect` semantics ([`map_anonymous`](VmSpace::map_anonymous) at a
//!   hint or in a gap, [`map_fixed`](VmSpace::map_fixed),
//!   [`unmap`](VmSpace::unmap) and [`protect`](VmSpace::protect) of any
//!   sub-range), [`handle_fault`](VmSpace::handle_fault),
//!   [`fork`](VmSpace::fork), [`destroy`](VmSpace::destroy).
//!
//! Page states: a page of an anonymous area is not present (never
//! touched), the zero frame read-only (read before any write), a private
//! frame, or a frame shared read-only with other spaces after a fork.
//! Non-present entries are all zero today; a later page state (a swap
//! slot) can live in the other bits of a non-present entry without
//! changing these.
//!
//! ```
//! # #[cfg(feature = "testing")]
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! use kmem::paging::PageTables;
//! use kmem::testing::phys_mem::EmulatedMemory;
//! use kmem::vm::{FaultAccess, FaultOutcome, Prot, Vm, VmSpace};
//! use x86_64::VirtAddr;
//!
//! let mem = EmulatedMemory::new(64);
//! let mut frames = mem.frame_allocator();
//! let mut vm = Vm::new(&mem.phys_mem(), &mut frames).unwrap();
//! let kernel = PageTables::new_empty(mem.phys_mem(), &mut frames)?;
//! let mut space = VmSpace::new_user(&kernel, &mut frames)?;
//! let heap = space.map_anonymous(None, 16 * 4096, Prot::RW | Prot::USER)?;
//! // A first read maps the zero page, a first write a private frame.
//! let r = space.handle_fault(&mut vm, VirtAddr::new(heap), FaultAccess::read(true), &mut frames)?;
//! assert_eq!(r.outcome, FaultOutcome::ZeroPageMapped);
//! r.flush.ignore(); // the space is not active
//! let w = space.handle_fault(&mut vm, VirtAddr::new(heap), FaultAccess::write(true), &mut frames)?;
//! assert_eq!(w.outcome, FaultOutcome::ZeroFilled);
//! w.flush.ignore();
//! # Ok(())
//! # }
//! # #[cfg(not(feature = "testing"))]
//! # fn main() {}
//! ```

mod area;
mod areas;
mod error;
mod fault;
mod invariants;
mod prot;
mod reclaim;
pub mod replace;
mod resolve;
mod shares;
mod space;
mod stats;
pub mod swap;
#[allow(clippy::module_inception)]
mod vm;

pub use area::{Area, AreaKind};
pub use error::{FaultError, FaultReason, VmError};
pub use fault::{FaultAccess, FaultOutcome, Resolved};
pub use invariants::VmInvariantError;
pub use prot::Prot;
pub use space::{VmSpace, USER_RANGE};
pub use stats::VmStats;
pub use swap::{MemSwap, SwapDevice, SwapIoError};
pub use vm::Vm;
