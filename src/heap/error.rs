//! Heap errors.

use super::PageSourceError;

/// Why the heap could not be set up over a range.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HeapInitError {
    /// The range cannot hold the guard pages, one large-heap page and one slab.
    TooSmall {
        /// Start of the range given.
        start: usize,
        /// Length of the range given.
        len: usize,
    },
    /// The range wraps around the address space.
    Overflow {
        /// Start of the range given.
        start: usize,
        /// Length of the range given.
        len: usize,
    },
    /// The first large-heap page could not be mapped.
    Map(PageSourceError),
}

/// Why an allocation failed. The heap is unchanged after a failure.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AllocError {
    /// Neither free blocks nor new pages could hold the request.
    OutOfMemory {
        /// Bytes requested.
        size: usize,
        /// Alignment requested.
        align: usize,
    },
    /// `size` rounded up to `align` overflows `isize`.
    BadLayout {
        /// Bytes requested.
        size: usize,
        /// Alignment requested.
        align: usize,
    },
}
