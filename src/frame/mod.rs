//! Physical frame allocation: a bitmap allocator with summary levels.
//!
//! One bit per 4 KiB frame over the usable span of a sanitized
//! [`MemoryMap`](crate::memory_map::MemoryMap), plus summaries (one bit per
//! non-empty word, one bit per entirely free word, recursively) so that no
//! search ever scans the whole bitmap: single frames are found in
//! O(log64 n), runs skip fragmented areas a word at a time. Metadata costs
//! about 1.03 bits per frame and is carved out of usable memory at init.
//!
//! - [`BitmapFrameAllocator`]: build, allocate, free, reserve, stats.
//! - [`LockedFrameAllocator`]: a spin lock held with interrupts masked.
//! - The `x86_64` crate's `FrameAllocator` / `FrameDeallocator` for 4 KiB,
//!   2 MiB and 1 GiB frames, on both.

mod allocator;
mod bitmap;
mod contiguous;
mod error;
mod hints;
mod interop;
mod invariants;
mod layout;
mod locked;
mod ranges;
mod stats;
mod tree;

pub use allocator::BitmapFrameAllocator;
pub use error::FrameError;
pub use invariants::InvariantError;
pub use layout::{StoragePlan, RESERVATION_SLOTS};
pub use locked::{InterruptMask, LockedFrameAllocator, NoInterruptMask, X86Interrupts};
pub use stats::FrameStats;
