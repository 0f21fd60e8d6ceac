//! Physical frame allocation: a bitmap allocator with summary levels.
//!
//! One bit per 4 KiB frame over the usable span of a sanitized
//! [`MemoryMap`](crate::memory_map::MemoryMap), plus summaries so that no
//! search ever scans the whole bitmap: one bit per non-empty word
//! (recursively, up to a single word), one bit per entirely free word and one
//! per entirely free 2 MiB block (each with its own summary levels).
//!
//! - Single frames: the lowest free frame, found in O(log64 n) (5 levels for
//!   1 TiB) from a first-free hint; frees are O(1) plus a table lookup.
//! - Runs: lowest fit of any size, alignment and address limit; runs of
//!   64+ frames are searched a word or a 2 MiB block at a time, with
//!   per-alignment hints so repeated requests do not rescan.
//! - Metadata ≈ 1.035 bits per frame, carved out of usable memory at init;
//!   init writes only that metadata (never the frames it manages).
//!
//! # Storage and physical memory access
//! The allocator never allocates: its metadata is a `&'m mut [u64]`. Two
//! ways to get one:
//! - [`BitmapFrameAllocator::init_carved`] (unsafe): plans the storage inside
//!   the map's own usable memory ([`BitmapFrameAllocator::plan`]: the lowest
//!   fit at or above 16 MiB, else the lowest anywhere), marks those frames
//!   reserved, and writes them through `phys_base + phys`. `phys_base` is a
//!   `*mut u8`, the virtual address of physical 0: the kernel passes its
//!   direct-map offset (`core::ptr::with_exposed_provenance_mut(offset)`; offset 0
//!   under identity mapping), host tests pass `buffer` less the planned
//!   physical address, so a small `Vec` stands in for exactly the carved
//!   frames; pointer arithmetic keeps provenance, so Miri follows.
//! - [`BitmapFrameAllocator::new`] (safe): the caller lends the storage (a
//!   static array, a host buffer), [`BitmapFrameAllocator::storage_words`] long.
//!
//! A pointer rather than a trait or closure: the allocator touches memory at
//! init only, one contiguous range, so an offset is all it needs and the
//! unsafe contract fits in one sentence.
//!
//! - [`BitmapFrameAllocator`]: build, allocate, free, reserve, stats, the
//!   invariant checker.
//! - [`LockedFrameAllocator`]: a spin lock held with interrupts masked
//!   ([`InterruptMask`] chooses how: `cli`/`sti` in the kernel, nothing on
//!   the host).
//! - The `x86_64` crate's `FrameAllocator` / `FrameDeallocator` for 4 KiB,
//!   2 MiB and 1 GiB frames, on the allocator and on `&LockedFrameAllocator`.
//!
//! ```
//! use kmem::frame::{BitmapFrameAllocator, FrameStats};
//! use kmem::memory_map::{e820::E820Entry, MemoryMap};
//!
//! let map: MemoryMap = MemoryMap::from_e820(&[E820Entry { addr: 0x10_0000, size: 0x3f0_0000, kind: 1 }])?;
//! let plan = BitmapFrameAllocator::plan(&map)?;
//! // On the host, a buffer stands in for the carved physical frames.
//! let mut buf = vec![0u64; plan.words];
//! let phys_base = buf.as_mut_ptr().cast::<u8>().wrapping_sub(plan.phys.as_u64() as usize);
//! // SAFETY: `buf` backs exactly the planned range and outlives `frames`.
//! let mut frames = unsafe { BitmapFrameAllocator::init_carved(&map, phys_base) }?;
//! let run = frames.allocate_contiguous(512, 2 << 20, Some(1 << 32))?;
//! assert_eq!(run.start.start_address().as_u64() % (2 << 20), 0);
//! let FrameStats { used, reserved, .. } = frames.stats();
//! assert_eq!((used, reserved), (512, plan.frames()));
//! // SAFETY: allocated above, used by nothing.
//! unsafe { frames.free_range(run) }?;
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

mod allocator;
mod bitmap;
mod contiguous;
mod error;
mod geometry;
mod hints;
mod interop;
mod invariants;
mod locked;
mod ranges;
mod stats;
mod tree;

pub use allocator::BitmapFrameAllocator;
pub use error::FrameError;
pub use geometry::{StoragePlan, RESERVATION_SLOTS};
pub use invariants::FrameInvariantError;
pub use locked::{InterruptMask, LockedFrameAllocator, NoInterruptMask, X86Interrupts};
pub use stats::FrameStats;
