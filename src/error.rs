//! One error for a kernel's memory bring-up, so `?` works across the layers.

use core::fmt;

use crate::frame::FrameError;
use crate::heap::HeapInitError;
use crate::memory_map::MapError;
use crate::paging::PagingError;

/// Any layer's refusal, as a kernel's `init_memory` returns it. Each variant is that
/// layer's own typed error; after it, the layer is exactly as before the call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Error {
    /// The boot memory map was refused.
    MemoryMap(MapError),
    /// The frame allocator refused.
    Frame(FrameError),
    /// The mapper refused.
    Paging(PagingError),
    /// The heap could not start.
    Heap(HeapInitError),
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::MemoryMap(e) => write!(f, "memory map: {e}"),
            Self::Frame(e) => write!(f, "frame allocator: {e}"),
            Self::Paging(e) => write!(f, "paging: {e}"),
            Self::Heap(e) => write!(f, "heap: {e}"),
        }
    }
}

impl core::error::Error for Error {
    fn source(&self) -> Option<&(dyn core::error::Error + 'static)> {
        Some(match self {
            Self::MemoryMap(e) => e,
            Self::Frame(e) => e,
            Self::Paging(e) => e,
            Self::Heap(e) => e,
        })
    }
}

macro_rules! from_layer {
    ($($variant:ident($err:ty)),*) => {$(
        impl From<$err> for Error {
            fn from(e: $err) -> Self {
                Self::$variant(e)
            }
        }
    )*};
}

from_layer!(
    MemoryMap(MapError),
    Frame(FrameError),
    Paging(PagingError),
    Heap(HeapInitError)
);
