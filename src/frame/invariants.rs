//! The frame allocator's invariant checker, run after every step by property tests, and its
//! error.

use core::fmt;

use x86_64::structures::paging::PhysFrame;

use super::ranges::Kind;
use super::BitmapFrameAllocator;

/// A broken allocator invariant (a kmem bug, never a caller error), with the data that was
/// wrong. Bit and frame indices count from the first frame of the allocator's span.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FrameInvariantError {
    /// A bit past the end of a bitmap level is set.
    BitPastEnd {
        /// The level (0 = the bits themselves).
        level: usize,
        /// Bits in that level.
        len: usize,
    },
    /// A summary bit disagrees with the word below it.
    SummaryBit {
        /// The summary's level.
        level: usize,
        /// The bit (the index of the word below).
        bit: usize,
    },
    /// A 2 MiB block's bit disagrees with the full-word bits of its eight words.
    BlockSummary {
        /// The block.
        block: usize,
    },
    /// A full-word bit disagrees with its frame word.
    FullWordSummary {
        /// The frame word.
        word: usize,
    },
    /// A hole or reservation entry is empty or leaves the span.
    BadRange {
        /// Its first frame index.
        start: usize,
        /// Its end.
        end: usize,
    },
    /// Hole and reservation entries are unsorted, overlap, or touch with the same kind.
    UnsortedRanges {
        /// The first frame index of the entry out of place.
        start: usize,
    },
    /// The free count differs from the free bits.
    FreeCount {
        /// Free bits.
        bits: u64,
        /// The count kept.
        count: u64,
    },
    /// A free frame lies below the first-free hint.
    FreeBelowHint {
        /// The frame.
        frame: PhysFrame,
    },
    /// A frame of a hole or a reservation is marked free.
    FreeOutOfService {
        /// The frame.
        frame: PhysFrame,
    },
    /// The reserved count differs from the reservation table.
    ReservedCount {
        /// Frames in reservations.
        table: u64,
        /// The count kept.
        count: u64,
    },
    /// Holes and usable frames do not add up to the span.
    SpanNotCovered {
        /// Frames in holes.
        holes: u64,
        /// Usable frames.
        usable: u64,
        /// Frames in the span.
        span: u64,
    },
    /// More frames are free and reserved than usable.
    Overcommitted {
        /// Free frames.
        free: u64,
        /// Reserved frames.
        reserved: u64,
        /// Usable frames.
        usable: u64,
    },
}

impl fmt::Display for FrameInvariantError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("frame allocator invariant broken: ")?;
        match *self {
            Self::BitPastEnd { level, len } => {
                write!(f, "a bit past the {len} bits of level {level} is set")
            }
            Self::SummaryBit { level, bit } => {
                write!(f, "summary bit {bit} of level {level} is wrong")
            }
            Self::BlockSummary { block } => {
                write!(f, "the summary bit of 2 MiB block {block} is wrong")
            }
            Self::FullWordSummary { word } => {
                write!(f, "the full-word bit of word {word} is wrong")
            }
            Self::BadRange { start, end } => {
                write!(f, "range [{start}, {end}) is empty or leaves the span")
            }
            Self::UnsortedRanges { start } => {
                write!(f, "range at {start} is out of order or unmerged")
            }
            Self::FreeCount { bits, count } => {
                write!(f, "{bits} free bits but a free count of {count}")
            }
            Self::FreeBelowHint { frame } => write!(
                f,
                "free frame {:#x} lies below the first-free hint",
                frame.start_address().as_u64()
            ),
            Self::FreeOutOfService { frame } => write!(
                f,
                "frame {:#x} of a hole or reservation is marked free",
                frame.start_address().as_u64()
            ),
            Self::ReservedCount { table, count } => write!(
                f,
                "{table} frames in reservations but a reserved count of {count}"
            ),
            Self::SpanNotCovered {
                holes,
                usable,
                span,
            } => write!(
                f,
                "{holes} hole frames and {usable} usable ones do not make the span of {span}"
            ),
            Self::Overcommitted {
                free,
                reserved,
                usable,
            } => write!(
                f,
                "{free} free and {reserved} reserved frames exceed the {usable} usable ones"
            ),
        }
    }
}

impl core::error::Error for FrameInvariantError {}

impl BitmapFrameAllocator<'_> {
    /// Checks every invariant in O(frames): summaries agree with the bitmap,
    /// the free count equals the free bits, holes and reservations have no
    /// free bit, and the counts add up.
    pub fn check_invariants(&self) -> Result<(), FrameInvariantError> {
        let s = &*self.storage;
        self.bitmap.check(s)?;
        self.table.check(s, self.bitmap.len())?;
        let bits = self.bitmap.count_free(s);
        if bits != self.free {
            let count = self.free;
            return Err(FrameInvariantError::FreeCount { bits, count });
        }
        let below = self.first_free.min(self.bitmap.len());
        if let Some(i) = self.bitmap.first_with(s, 0, below, true) {
            let frame = self.frame(i);
            return Err(FrameInvariantError::FreeBelowHint { frame });
        }
        let (mut holes, mut reserved) = (0u64, 0u64);
        for e in self.table.iter(s) {
            if let Some(i) = self.bitmap.first_with(s, e.start, e.end, true) {
                let frame = self.frame(i);
                return Err(FrameInvariantError::FreeOutOfService { frame });
            }
            match e.kind {
                Kind::Hole => holes += (e.end - e.start) as u64,
                Kind::Reserved => reserved += (e.end - e.start) as u64,
            }
        }
        if reserved != self.reserved {
            let (table, count) = (reserved, self.reserved);
            return Err(FrameInvariantError::ReservedCount { table, count });
        }
        let span = self.bitmap.len() as u64;
        if holes + self.usable != span {
            let usable = self.usable;
            return Err(FrameInvariantError::SpanNotCovered {
                holes,
                usable,
                span,
            });
        }
        if self.free + self.reserved > self.usable {
            return Err(FrameInvariantError::Overcommitted {
                free: self.free,
                reserved: self.reserved,
                usable: self.usable,
            });
        }
        Ok(())
    }
}
