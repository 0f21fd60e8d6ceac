//! The kernel heap: size-class slabs, a large-object heap, `GlobalAlloc`.
//!
//! - [`PageSource`] backs pages of the heap's virtual range
//!   ([`MappedPageSource`] = frame allocator + [`PageMapper`] in a kernel,
//!   `testing::arena::ArenaPageSource` on the host).
//! - Small objects (≤ [`MAX_SMALL`]) come from 16 KiB slabs of one size class
//!   each, with no per-object header, through per-class magazines.
//! - Larger ones come from a TLSF boundary-tag heap (good fit; tails and
//!   alignment gaps under 1 KiB stay in their block as slack, since no
//!   request that reaches it could use them) that reallocates in place.
//!   Its payloads are cache-line (64-byte) aligned.
//! - [`Heap`] ties them together with accounting ([`HeapStats`]) and an
//!   invariant checker; [`LockedHeap`] is the `#[global_allocator]`.
//! - Feature `tracking` records every live allocation (`tracking` module).
//!
//! # In a kernel
//! ```ignore
//! use kmem::heap::{LockedHeap, MappedPageSource, PageMapper};
//!
//! // `Frames`: FrameAllocator<Size4KiB> + FrameDeallocator<Size4KiB>;
//! // `HeapMapper`: PageMapper (maps writable + NX + supervisor, flushes).
//! #[global_allocator]
//! static HEAP: LockedHeap<MappedPageSource<Frames, HeapMapper>> = LockedHeap::empty();
//!
//! // SAFETY: [HEAP_START, HEAP_START + HEAP_LEN) is reserved for the heap.
//! unsafe { HEAP.init(MappedPageSource::new(frames, mapper), HEAP_START, HEAP_LEN) }?;
//! let stats = HEAP.stats().unwrap();           // live bytes, pages held, ...
//! HEAP.lock().heap_mut().unwrap().trim();      // give every free page back
//! // feature "tracking": HEAP.lock().heap().unwrap().tracker().leaks()
//! ```
//! The first and last page of the range are never mapped (guards). Pages
//! are mapped on demand and unmapped (frames freed) when whole spans become
//! free, with hysteresis: the large heap keeps up to 512 KiB of free top,
//! the slab region up to 16 free 16 KiB spans. When the page source runs
//! dry, those pages are given back before an allocation fails.

mod allocator;
mod error;
mod global;
mod hooks;
mod kernel_source;
mod large;
mod magazine;
mod page_source;
mod size_class;
mod slab;
mod stats;
#[cfg(feature = "tracking")]
pub mod tracking;

pub use allocator::Heap;
pub use error::{AllocError, HeapInitError, HeapInvariantError};
pub use global::{HeapSlot, LockedHeap};
pub use kernel_source::{KernelHeap, KernelPageSource, KernelShootdown, OneCpu};
pub use page_source::{MappedPageSource, PageMapper, PageSource, PageSourceError, PAGE_SIZE};
pub use size_class::{class_align, class_of, CLASS_SIZES, MAX_SMALL, NUM_CLASSES};
pub use stats::HeapStats;
