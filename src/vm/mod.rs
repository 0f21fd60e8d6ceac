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
//!   [`fork`](VmSpace::fork), [`destroy`](VmSpace::destroy),
//!   [`usage`](VmSpace::usage).
//! - [`global`]: one policy over the pages of every space, run by the
//!   kernel's reclaim worker between free-frame watermarks.
//! - [`oom`]: which process to end when nothing can be reclaimed.
//! - [`swap`]: the device interface, slots, the swap cache (by frame and
//!   by slot); [`zswap`]: a compressed cache in front of any device.
//! - Memory objects: [`Vm::create_object`] over a [`Pager`] the kernel
//!   implements (a file, a disk region) or [`Vm::create_shared_anonymous`];
//!   [`VmSpace::map_object`] maps one shared ([`AreaKind::Shared`]: the
//!   object's page cache, one frame per page for every space, written
//!   back when dirty) or private ([`AreaKind::Private`]: copy-on-write
//!   over the cache); [`VmSpace::sync`] is `msync`; [`Vm::close_object`].
//! - Transparent huge pages: with [`Vm::set_huge_frames`] (a
//!   [`HugeFrames`] source of 2 MiB runs), the first touch of an aligned
//!   2 MiB run of an anonymous area maps one 2 MiB leaf; it is split into
//!   4 KiB pages (same frames) before anything that needs them one by one
//!   (fork, a partial munmap, mprotect, advice, reclaim of a cold one).
//!
//! Page states: a page of an anonymous area is not present (never
//! touched), the zero frame read-only (read before any write), a private
//! frame, a frame shared read-only with other spaces after a fork, or on
//! swap (a non-present entry holding the slot, see [`swap`]); a resident
//! page read back from swap keeps its slot while it stays clean (the swap
//! cache). A page of a shared object area maps its object's cached frame
//! (or nothing); its Dirty bit is the object's until harvested (unmap,
//! eviction, `msync`); the cache counts the entries mapping each page. A
//! page of a private object area maps the cached frame read-only until its
//! first write, then a frame of its own, as anonymous memory.
//!
//! # Many CPUs
//! A space records the CPUs it is active on ([`VmSpace::cpus`]). Every
//! operation that removes, downgrades or repoints a translation (munmap,
//! mprotect, fork's write-protect, a copy-on-write break, reclaim,
//! destroy) takes a [`Tlb`](crate::smp::Tlb): it invalidates the changed
//! translations on those CPUs and waits for them before a frame or page
//! table they reached is freed or a shared frame is handed to its other
//! sharer. Entries the CPU may update (Accessed, Dirty) are edited with
//! atomic operations that keep what the CPU set: a protect never makes a
//! written page look clean, and reclaim reads Dirty only from the entry
//! it took out, after the invalidation.
//!
//! # Locks
//! The kernel's own lock per address space is the outer one (Linux's
//! `mmap_lock`): [`VmSpace::handle_fault`] and [`VmSpace::reclaim`] take
//! the space by shared reference (hold it for reading: faults of one space
//! run on several CPUs at once), `map_*`, `unmap`, `protect`, `fork` and
//! `destroy` by `&mut` (hold it for writing). The [`Vm`] is shared by
//! reference everywhere but its setup (`attach_swap`, `set_frame_limit`).
//! Inside, in this order, each held only for a few entry or list
//! operations and never across zeroing or copying a frame, device I/O or a
//! TLB shootdown:
//!
//! 1. the space's page tables (one lock per space);
//! 2. the space's replacement policy, then the `Vm`'s global one
//!    ([`global`]);
//! 3. the `Vm`'s share counts, then a swap-cache shard, then the swap
//!    slots (slot references are atomics: only a slot's first and last
//!    reference take the slot lock); or the object registry (read), then
//!    an object's page cache;
//! 4. the swap device (held for one request, nothing else held); a
//!    [`Pager`] is called with no lock held, the page it reads or writes
//!    marked in the cache (a fault on it waits).
//!
//! Two exceptions, both bounded: a swap-in that copies a frame another
//! sharer read from the same slot copies it under that frame's cache-shard
//! lock (so the frame can be neither written nor freed meanwhile); and
//! [`SwapDevice::discard`] and [`SwapDevice::copy_in_ram`], which must not
//! block on I/O, may be called with 1 held.
//!
//! Frame allocation (the caller's frame source) may happen under 1. Why
//! per space and not per page table: a fault holds the lock for a walk and
//! one entry write (tens of nanoseconds); the long parts of a fault run
//! unlocked, with the entry checked again before it is written, and a page
//! being read in or written out is marked busy in its entry, so faults on
//! other pages never wait for device I/O and a fault on that page returns
//! [`FaultOutcome::InTransit`] at once (the access is retried). Counters
//! and the resident count are per-CPU shards (by [`Tlb::cpu`](crate::smp::Tlb::cpu)),
//! so counting never bounces a cache line between CPUs.
//!
//! ```
//! # #[cfg(feature = "testing")]
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! use kmem::paging::PageTables;
//! use kmem::smp::Tlb;
//! use kmem::testing::{mmu::RecordingMmu, phys_mem::EmulatedMemory};
//! use kmem::vm::{FaultAccess, FaultOutcome, Prot, Vm, VmSpace};
//! use x86_64::VirtAddr;
//!
//! let mem = EmulatedMemory::new(64);
//! let mut frames = mem.frame_allocator();
//! let mut vm = Vm::new(&mem.phys_mem(), &mut frames).unwrap();
//! let kernel = PageTables::new_empty(mem.phys_mem(), &mut frames)?;
//! let mut space = VmSpace::new_user(&kernel, &mut frames)?;
//! // One CPU, running the kernel's tables (a kernel passes its CPU's MMU and IPIs).
//! let mut mmu = RecordingMmu::new(kernel.pml4());
//! let mut tlb = Tlb::uniprocessor(&mut mmu);
//! let heap = space.map_anonymous(None, 16 * 4096, Prot::RW | Prot::USER)?;
//! // A first read maps the zero page, a first write a private frame.
//! let at = VirtAddr::new(heap);
//! let r = space.handle_fault(&mut vm, at, FaultAccess::read(true), &mut frames, &mut tlb)?;
//! assert_eq!(r, FaultOutcome::ZeroPageMapped);
//! let w = space.handle_fault(&mut vm, at, FaultAccess::write(true), &mut frames, &mut tlb)?;
//! assert_eq!(w, FaultOutcome::ZeroFilled);
//! # Ok(())
//! # }
//! # #[cfg(not(feature = "testing"))]
//! # fn main() {}
//! ```

mod advice;
mod area;
mod areas;
mod contents;
mod error;
mod fault;
mod gather;
pub mod global;
mod huge;
mod invariants;
mod mapping;
mod object;
mod objects;
pub mod oom;
mod prot;
mod reclaim;
pub mod replace;
mod resolve;
mod shares;
mod space;
mod stats;
pub mod swap;
mod table;
#[allow(clippy::module_inception)]
mod vm;
pub mod zswap;

pub use advice::Advice;
pub use area::{Area, AreaKind};
pub use error::{FaultError, FaultReason, VmError};
pub use fault::{FaultAccess, FaultOutcome};
pub use huge::HugeFrames;
pub use invariants::VmInvariantError;
pub use object::{ObjectId, ObjectStats, Pager, PagerError};
pub use prot::Prot;
pub use space::{UserLayout, VmSpace, MMAP_MIN_ADDR, USER_RANGE};
pub use stats::VmStats;
pub use swap::{MemSwap, SwapDevice, SwapIoError};
pub use vm::Vm;
pub use zswap::{Zswap, ZswapStats};
