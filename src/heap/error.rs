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

impl core::fmt::Display for HeapInitError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            Self::TooSmall { start, len } => {
                write!(
                    f,
                    "heap range {start:#x}+{len:#x} cannot hold the guard pages, a page and a slab"
                )
            }
            Self::Overflow { start, len } => {
                write!(f, "heap range {start:#x}+{len:#x} wraps around")
            }
            Self::Map(e) => write!(f, "the first heap page could not be mapped: {e}"),
        }
    }
}

impl core::error::Error for HeapInitError {}

impl core::fmt::Display for AllocError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            Self::OutOfMemory { size, align } => {
                write!(f, "out of memory for {size} bytes aligned to {align}")
            }
            Self::BadLayout { size, align } => {
                write!(f, "{size} bytes aligned to {align} overflow isize")
            }
        }
    }
}

impl core::error::Error for AllocError {}

impl core::fmt::Display for PageSourceError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            Self::OutOfFrames { addr } => write!(f, "no frame left for the heap page at {addr:#x}"),
            Self::MapFailed { addr } => write!(f, "the mapper refused the heap page at {addr:#x}"),
            Self::OutOfRange { start, pages } => {
                write!(f, "{pages} pages at {start:#x} lie outside the page source")
            }
        }
    }
}

impl core::error::Error for PageSourceError {}
