//! The invariant checker, run after every step by property tests.

use core::fmt;

use super::ranges::Kind;
use super::BitmapFrameAllocator;

/// A broken allocator invariant (a kmem bug, never a caller error).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct InvariantError(pub &'static str);

impl fmt::Display for InvariantError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "frame allocator invariant broken: {}", self.0)
    }
}

impl BitmapFrameAllocator<'_> {
    /// Checks every invariant in O(frames): summaries agree with the bitmap,
    /// the free count equals the free bits, holes and reservations have no
    /// free bit, and the counts add up.
    pub fn check_invariants(&self) -> Result<(), InvariantError> {
        let s = &*self.storage;
        self.bitmap.check(s).map_err(InvariantError)?;
        self.table
            .check(s, self.bitmap.len())
            .map_err(InvariantError)?;
        if self.bitmap.count_free(s) != self.free {
            return Err(InvariantError("free count differs from free bits"));
        }
        let below = self.first_free.min(self.bitmap.len());
        if self.bitmap.first_with(s, 0, below, true).is_some() {
            return Err(InvariantError(
                "a free frame lies below the first-free hint",
            ));
        }
        let (mut holes, mut reserved) = (0u64, 0u64);
        for e in self.table.iter(s) {
            if self.bitmap.first_with(s, e.start, e.end, true).is_some() {
                return Err(InvariantError("a hole or reserved frame is marked free"));
            }
            match e.kind {
                Kind::Hole => holes += (e.end - e.start) as u64,
                Kind::Reserved => reserved += (e.end - e.start) as u64,
            }
        }
        if reserved != self.reserved {
            return Err(InvariantError(
                "reserved count differs from the reservation table",
            ));
        }
        if holes + self.usable != self.bitmap.len() as u64 {
            return Err(InvariantError(
                "holes and usable frames do not cover the span",
            ));
        }
        if self.free + self.reserved > self.usable {
            return Err(InvariantError(
                "more free and reserved frames than usable ones",
            ));
        }
        Ok(())
    }
}

impl core::error::Error for InvariantError {}
