//! Search hints for contiguous runs, so repeated run allocations do not
//! rescan the same fragmented prefix of the bitmap.
//!
//! Per alignment class, a hint `(pos, count)` means: no run of `count` or
//! more free frames with this alignment starts below bitmap index `pos`.
//! Allocations only make this more true; a search that finds its run at
//! `cand` proves it for `cand`; freeing frame `a` can only create runs
//! starting at `a + 1 - count` or later, so frees pull `pos` down to there.
//! The hints never change which run is returned (always the lowest), only
//! where the search starts.

/// Alignment classes with a hint: 4 KiB up to 2^31 frames (8 TiB).
const CLASSES: usize = 32;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Hint {
    pos: usize,
    count: usize,
}

/// One hint per alignment class.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct RunHints {
    hints: [Hint; CLASSES],
    /// Classes whose hint claims something (`pos > 0`).
    active: u32,
    /// No hint is affected by frees at or above this index.
    reach: usize,
}

impl RunHints {
    /// Hints that claim nothing.
    pub(crate) const fn new() -> Self {
        Self {
            hints: [Hint { pos: 0, count: 1 }; CLASSES],
            active: 0,
            reach: 0,
        }
    }

    /// Where a search for `count` frames aligned to `1 << shift` frames may start.
    #[inline]
    pub(crate) fn start(&self, shift: u32, count: usize) -> usize {
        match self.hints.get(shift as usize) {
            Some(h) if count >= h.count => h.pos,
            _ => 0,
        }
    }

    /// A search for `count` frames aligned to `1 << shift` found its lowest run at `cand`.
    #[inline]
    pub(crate) fn found(&mut self, shift: u32, count: usize, cand: usize) {
        if let Some(h) = self.hints.get_mut(shift as usize) {
            *h = Hint { pos: cand, count };
            self.active |= 1 << shift;
            self.reach = self.reach.max(cand + count - 1);
        }
    }

    /// Frames from index `a` on were freed.
    #[inline]
    pub(crate) fn freed(&mut self, a: usize) {
        if a >= self.reach {
            return;
        }
        self.reach = 0;
        let mut active = self.active;
        while active != 0 {
            let class = active.trailing_zeros() as usize;
            active &= active - 1;
            let h = &mut self.hints[class];
            h.pos = h.pos.min((a + 1).saturating_sub(h.count));
            if h.pos == 0 {
                self.active &= !(1 << class);
            }
            self.reach = self.reach.max(h.pos + h.count - 1);
        }
    }
}
