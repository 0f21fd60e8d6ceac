//! # kmem — a memory manager for x86_64 kernels
//!
//! Three layers, each usable alone, data flowing one way:
//!
//! ```text
//! boot memory map ──► memory_map (sanitize, reserve) ──► frame (bitmap allocator)
//!                                                           │ frames for tables
//!                                                           ▼
//!                  paging (mapper over a PhysMem + an Mmu) ──► AddressSpace
//!                                                           │ pages for the heap
//!                                                           ▼
//!                            heap (PageSource → slabs / large) ──► GlobalAlloc
//! ```
//!
//! - [`memory_map`] sanitizes any bootloader's map (sorts, merges, resolves
//!   overlaps, trims to whole frames) and takes the kernel's reservations.
//! - [`frame`] is a bitmap allocator with summary levels whose metadata is
//!   carved out of the map itself: no heap needed. Frees are checked.
//! - [`paging`] maps, unmaps, protects and translates 4 KiB / 2 MiB / 1 GiB
//!   pages and whole ranges, transactionally; every TLB-changing call
//!   returns a `#[must_use]` [`paging::Flush`]. Tables are reached through
//!   a [`paging::PhysMem`] and privileged instructions go through a
//!   [`paging::Mmu`], so everything but those two runs on the host.
//! - [`heap`] is a `GlobalAlloc` with size-class slabs and a large-object
//!   heap, fed pages by a [`heap::PageSource`] (in a kernel: frames mapped
//!   by the mapper).
//! - [`smp`] is for several CPUs: per-CPU caches in front of the frame
//!   allocator and the heap, and TLB shootdown with deferred frees.
//!
//! Errors are typed and carry the data that was wrong; after a failed
//! operation every structure is exactly as before.
//!
//! # The soundness line
//! Safe code cannot cause undefined behaviour through kmem. The line sits
//! where kmem can still see what memory is for:
//!
//! - **Safe**: [`vm`] for user memory (areas, faults, fork, swap: user pages
//!   hold no Rust objects, and kmem frees a frame only after every CPU that
//!   may reach it invalidated it, which the types enforce); the [`heap`] for
//!   kernel objects (`GlobalAlloc`); translation, audits and statistics.
//! - **`unsafe`, with a `# Safety` contract on each function**: editing page
//!   tables a CPU may use ([`paging::PageTables::map`], `unmap`, `protect`,
//!   `remap` and the range calls, as the `x86_64` crate's `map_to`),
//!   building or freeing into a frame allocator
//!   ([`frame::BitmapFrameAllocator::new`], `free`, `free_range`), mapping
//!   physical memory into a user space ([`vm::VmSpace::map_physical`]),
//!   tearing down an address space ([`paging::AddressSpace::destroy`]),
//!   reaching a space's shared tables ([`paging::AddressSpace::mapper_mut`]),
//!   holding a frame for a deferred free ([`smp::DeferredFrees::defer`]),
//!   loading CR3.
//! - **`unsafe trait`s** for what kmem trusts a kernel to do:
//!   [`paging::PhysMem`] (table pointers), [`paging::Mmu`] (TLB
//!   invalidation), [`smp::TlbShootdown`] and [`heap::KernelShootdown`]
//!   (other CPUs'), [`heap::PageSource`] and [`heap::PageMapper`].
//!
//! Compile-fail doctests keep each of these from drifting back to safe; the
//! README lists every entry point with its contract.
//!
//! # Example
//!
//! The three layers on the host, over emulated physical memory and an arena
//! (feature `testing`); a kernel uses the same calls with a direct map.
//!
//! ```
//! # #[cfg(feature = "testing")]
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! use kmem::frame::BitmapFrameAllocator;
//! use kmem::heap::Heap;
//! use kmem::memory_map::{MemoryMap, Region, RegionKind};
//! use kmem::paging::{MapFlags, PageTables};
//! use kmem::testing::{arena::ArenaPageSource, phys_mem::EmulatedMemory};
//! use x86_64::{PhysAddr, VirtAddr};
//!
//! // Frames: a map of 1 MiB of "RAM", with its first page reserved.
//! let ram = EmulatedMemory::new(256);
//! let (start, end) = (ram.start().as_u64(), ram.end().as_u64());
//! let mut map: MemoryMap = MemoryMap::from_regions([Region::new(start, end - start, RegionKind::Usable)])?;
//! map.reserve(start, 4096)?;
//! let mut storage = vec![0u64; BitmapFrameAllocator::storage_words(&map)];
//! // SAFETY: the map's usable memory is nothing's yet: the allocator's alone.
//! let mut frames = unsafe { BitmapFrameAllocator::new(&map, &mut storage) }?;
//!
//! // Paging: an empty hierarchy; 4 MiB mapped with two 2 MiB pages, NX by default.
//! let mut mapper = PageTables::new_empty(ram.phys_mem(), &mut frames)?;
//! let virt = VirtAddr::new(0xffff_8000_0000_0000);
//! // SAFETY: example tables, mapping frames no Rust object uses.
//! unsafe { mapper.map_range(virt, PhysAddr::new(0x20_0000), 4 << 20, MapFlags::READ_WRITE, &mut frames) }?.ignore();
//! assert!(!mapper.translate(virt)?.access.executable);
//!
//! // Heap: pages from an arena (in a kernel: `MappedPageSource` over frames + mapper).
//! let arena = ArenaPageSource::new(1 << 20);
//! let (base, len) = arena.range();
//! // SAFETY: the arena's range belongs to this heap alone.
//! let mut heap = unsafe { Heap::new(arena, base, len) }?;
//! let p = heap.allocate(core::alloc::Layout::new::<[u64; 4]>())?;
//! // SAFETY: `p` is live and was allocated with this layout.
//! unsafe { heap.deallocate(p, core::alloc::Layout::new::<[u64; 4]>()) };
//! assert_eq!(heap.stats().live_allocs, 0);
//! # Ok(())
//! # }
//! # #[cfg(not(feature = "testing"))]
//! # fn main() {}
//! ```
#![cfg_attr(not(test), no_std)]
#![warn(missing_docs)]
#![deny(unsafe_op_in_unsafe_fn, clippy::undocumented_unsafe_blocks)]

#[cfg(feature = "vm")]
extern crate alloc;
#[cfg(feature = "testing")]
extern crate std;

/// The `spin` crate of kmem's locked types.
pub use spin;
/// The `x86_64` crate kmem's API is written in (addresses, frames, pages,
/// page-table flags): use this one to avoid two versions in a kernel.
pub use x86_64;

pub use error::Error;

/// Size of a 4 KiB page and of a physical frame: the unit of every layer.
pub const PAGE_SIZE: u64 = 4096;
/// First physical address past what x86_64 can address (52 bits).
pub const PHYS_LIMIT: u64 = 1 << 52;

mod error;
pub mod frame;
pub mod heap;
pub mod memory_map;
pub mod paging;
pub mod smp;
#[cfg(feature = "testing")]
pub mod testing;
#[cfg(feature = "vm")]
pub mod vm;
