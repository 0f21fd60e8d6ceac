//! One CPU's slot on cache lines of its own.

use core::ops::{Deref, DerefMut};

/// Aligns `T` to 128 bytes: two cache lines, since x86's adjacent-line
/// prefetcher pulls lines in pairs, so neighbouring CPUs' slots never share
/// what the hardware moves between cores.
#[derive(Debug, Default)]
#[repr(align(128))]
pub(crate) struct CachePadded<T>(pub(crate) T);

impl<T> Deref for CachePadded<T> {
    type Target = T;

    #[inline(always)]
    fn deref(&self) -> &T {
        &self.0
    }
}

impl<T> DerefMut for CachePadded<T> {
    #[inline(always)]
    fn deref_mut(&mut self) -> &mut T {
        &mut self.0
    }
}
