//! The live bitmap: one bit per [`STEP`] bytes of the heap's range, in pages
//! the tracker maps from the heap's own page source.

use super::{BYTE_SPAN, STEP};
use crate::heap::page_source::{PageSource, PAGE_SIZE};

/// One bit per [`STEP`] bytes of the heap's range `[lo, ..)`, set where a
/// live allocation starts, in pages mapped from the bottom and the top of
/// the bitmap inwards (the heap grows from both ends of its range).
pub(super) struct LiveBitmap {
    /// First heap address covered (bit 0 of byte 0).
    lo: usize,
    /// Address of byte 0.
    base: usize,
    /// Pages the bitmap spans.
    pages: usize,
    /// Pages `[0, low)` and `[high, pages)` are mapped and hold the bitmap;
    /// the pages between are unmapped and read as all clear.
    low: usize,
    high: usize,
}

impl LiveBitmap {
    /// Bitmap bytes, in whole pages, covering `heap` bytes.
    pub(super) const fn bytes_for(heap: usize) -> usize {
        heap.div_ceil(BYTE_SPAN).next_multiple_of(PAGE_SIZE)
    }

    /// The bitmap for the heap range `[lo, top)`, at `top` (nothing mapped).
    pub(super) fn new(lo: usize, top: usize) -> Self {
        let pages = Self::bytes_for(top.saturating_sub(lo)) / PAGE_SIZE;
        Self {
            lo,
            base: top,
            pages,
            low: 0,
            high: pages,
        }
    }

    /// The byte index and bit mask of `addr`, if `addr` can start an
    /// allocation in the covered range.
    pub(super) fn bit(&self, addr: usize) -> Option<(usize, u8)> {
        let off = addr.checked_sub(self.lo)?;
        let byte = off / BYTE_SPAN;
        (off.is_multiple_of(STEP) && byte < self.pages * PAGE_SIZE)
            .then_some((byte, 1 << (off / STEP % 8)))
    }

    pub(super) fn is_mapped(&self, byte: usize) -> bool {
        let page = byte / PAGE_SIZE;
        page < self.low || page >= self.high
    }

    /// Byte `byte` of the bitmap.
    ///
    /// # Safety
    /// `byte` must be mapped ([`LiveBitmap::is_mapped`]).
    pub(super) unsafe fn read(&self, byte: usize) -> u8 {
        // SAFETY: the byte lies in a page this bitmap mapped (caller); the
        // bitmap's pages lie outside the heap's range, so nothing else
        // reads or writes them.
        unsafe { ((self.base + byte) as *const u8).read() }
    }

    /// Sets byte `byte` of the bitmap to `v`.
    ///
    /// # Safety
    /// As [`LiveBitmap::read`].
    pub(super) unsafe fn write(&mut self, byte: usize, v: u8) {
        // SAFETY: as in `read`.
        unsafe { ((self.base + byte) as *mut u8).write(v) }
    }

    /// Whether the bit of `addr` is set.
    pub(super) fn get(&self, addr: usize) -> bool {
        match self.bit(addr) {
            Some((byte, mask)) if self.is_mapped(byte) => {
                // SAFETY: the byte is mapped (checked).
                let v = unsafe { self.read(byte) };
                v & mask != 0
            }
            _ => false,
        }
    }

    /// Sets the bit of `addr`, mapping bitmap pages as needed; false if the
    /// address is not covered or the page source refused the pages.
    pub(super) fn set<P: PageSource>(&mut self, addr: usize, source: &mut P) -> bool {
        let Some((byte, mask)) = self.bit(addr) else {
            return false;
        };
        if !self.is_mapped(byte) && !self.map_through(byte / PAGE_SIZE, source) {
            return false;
        }
        // SAFETY: the byte is mapped (checked or just mapped).
        unsafe { self.write(byte, self.read(byte) | mask) };
        true
    }

    /// Clears the bit of `addr`; returns whether it was set.
    pub(super) fn clear(&mut self, addr: usize) -> bool {
        match self.bit(addr) {
            Some((byte, mask)) if self.is_mapped(byte) => {
                // SAFETY: the byte is mapped (checked).
                let v = unsafe { self.read(byte) };
                // SAFETY: as above.
                unsafe { self.write(byte, v & !mask) };
                v & mask != 0
            }
            _ => false,
        }
    }

    /// Maps the unmapped pages from the nearer mapped end through `page`:
    /// the heap's two ends grow contiguously, so the mapped part of the
    /// bitmap follows them without holes.
    pub(super) fn map_through<P: PageSource>(&mut self, page: usize, source: &mut P) -> bool {
        let (first, n) = if page - self.low <= self.high - 1 - page {
            (self.low, page + 1 - self.low)
        } else {
            (page, self.high - page)
        };
        let start = self.base + first * PAGE_SIZE;
        if source.map(start, n).is_err() {
            return false;
        }
        // SAFETY: the pages were just mapped for the bitmap alone; a fresh
        // frame may hold anything, and unmapped bitmap pages read as clear.
        unsafe { core::ptr::write_bytes(start as *mut u8, 0, n * PAGE_SIZE) };
        if first == self.low {
            self.low += n;
        } else {
            self.high = first;
        }
        true
    }

    pub(super) fn mapped_pages(&self) -> usize {
        self.low + (self.pages - self.high)
    }

    /// Addresses whose bit is set, ascending.
    pub(super) fn addrs(&self) -> impl Iterator<Item = usize> + '_ {
        let bytes = (0..self.low * PAGE_SIZE).chain(self.high * PAGE_SIZE..self.pages * PAGE_SIZE);
        bytes.flat_map(move |byte| {
            // SAFETY: the byte lies in the mapped bottom or top of the bitmap.
            let v = unsafe { self.read(byte) };
            (0..8)
                .filter(move |b| v & (1 << b) != 0)
                .map(move |b| self.lo + byte * BYTE_SPAN + b * STEP)
        })
    }
}
