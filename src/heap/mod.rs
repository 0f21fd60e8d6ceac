//! The kernel heap: size-class slabs, a large-object heap, `GlobalAlloc`.
//!
//! - [`PageSource`] backs pages of the heap's virtual range
//!   ([`MappedPageSource`] = frame allocator + [`PageMapper`] in a kernel,
//!   `testing::arena::ArenaPageSource` on the host).
//! - Small objects (≤ [`MAX_SMALL`]) come from 16 KiB slabs of one size class
//!   each, with no per-object header, through per-class magazines.
//! - Larger ones come from a TLSF boundary-tag heap that reallocates in place.
//! - [`Heap`] ties them together with accounting ([`HeapStats`]) and an
//!   invariant checker; [`LockedHeap`] is the `#[global_allocator]`.
//! - Feature `tracking` records every live allocation (`tracking` module).

mod allocator;
mod error;
mod global;
pub mod large;
mod magazine;
mod page_source;
mod size_class;
pub mod slab;
mod stats;
#[cfg(feature = "tracking")]
pub mod tracking;

pub use allocator::Heap;
pub use error::{AllocError, HeapInitError};
pub use global::LockedHeap;
pub use page_source::{MappedPageSource, PageMapper, PageSource, PageSourceError, PAGE_SIZE};
pub use size_class::{class_align, class_of, CLASS_SIZES, MAX_SMALL, NUM_CLASSES};
pub use stats::HeapStats;
