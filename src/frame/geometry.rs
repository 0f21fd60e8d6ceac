//! Sizing the allocator's storage from a memory map, and where to carve it.

use x86_64::PhysAddr;

use super::bitmap::Bitmap;
use super::ranges::RangeTable;
use crate::memory_map::{MemoryMap, FRAME_SIZE, PHYS_LIMIT};

/// Separate reservation ranges [`reserve`](super::BitmapFrameAllocator::reserve)
/// can record after init (adjacent reservations merge into one).
pub const RESERVATION_SLOTS: usize = 32;

/// Carving prefers memory at or above 16 MiB, keeping ISA DMA memory free.
const CARVE_PREFERRED_MIN: u64 = (16 << 20) / FRAME_SIZE;

/// Where the allocator's metadata goes and how big it is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct StoragePlan {
    /// Physical address of the carved storage (frame aligned).
    pub phys: PhysAddr,
    /// Storage size in `u64` words.
    pub words: usize,
}

impl StoragePlan {
    /// Whole frames the storage occupies.
    pub const fn frames(&self) -> u64 {
        (self.words as u64 * 8).div_ceil(FRAME_SIZE)
    }
}

/// The geometry of the allocator for one map: its span, bitmap and range table.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Geometry {
    /// Frame number of bitmap bit 0: the first usable frame rounded down to
    /// 512, so that frame-number alignment of 64 (512) and up is word
    /// (2 MiB block) alignment in the bitmap.
    pub(crate) base: u64,
    pub(crate) bitmap: Bitmap,
    pub(crate) table: RangeTable,
    /// Usable frames in the map.
    pub(crate) usable: u64,
}

/// Frames at or past this number are never managed: the frame just below
/// the 52-bit limit is left out so that every run's end address (and the
/// `x86_64` crate's `PhysFrame` arithmetic on it) stays below 2^52.
const FRAME_LIMIT: u64 = PHYS_LIMIT / FRAME_SIZE - 1;

/// Usable memory as frame-number ranges `[a, b)`, sorted.
pub(crate) fn usable_frames<const N: usize>(
    map: &MemoryMap<N>,
) -> impl Iterator<Item = (u64, u64)> + '_ {
    map.usable()
        .map(|r| {
            (
                r.start / FRAME_SIZE,
                (r.end() / FRAME_SIZE).min(FRAME_LIMIT),
            )
        })
        .filter(|(a, b)| a < b)
}

impl Geometry {
    /// The layout for `map`.
    pub(crate) fn of<const N: usize>(map: &MemoryMap<N>) -> Self {
        let first = usable_frames(map).next().map_or(0, |(a, _)| a);
        let last = usable_frames(map).last().map_or(0, |(_, b)| b);
        let base = first / 512 * 512;
        let (mut holes, mut usable, mut cursor) = (0, 0, base);
        for (a, b) in usable_frames(map) {
            holes += usize::from(a > cursor);
            usable += b - a;
            cursor = b;
        }
        let bitmap = Bitmap::new((last - base) as usize);
        let table = RangeTable::new(bitmap.words(), holes + 1 + RESERVATION_SLOTS);
        Self {
            base,
            bitmap,
            table,
            usable,
        }
    }

    /// Storage words for bitmap and table.
    pub(crate) fn words(&self) -> usize {
        self.bitmap.words() + self.table.words()
    }

    /// Holes of `map` inside the span, as bitmap index ranges.
    pub(crate) fn holes<'a, const N: usize>(
        &self,
        map: &'a MemoryMap<N>,
    ) -> impl Iterator<Item = (usize, usize)> + 'a {
        let base = self.base;
        let mut cursor = base;
        usable_frames(map).filter_map(move |(a, b)| {
            let hole = (a > cursor).then_some(((cursor - base) as usize, (a - base) as usize));
            cursor = b;
            hole
        })
    }

    /// Where to carve the storage: the lowest usable place at or above
    /// 16 MiB that fits, else the lowest anywhere.
    pub(crate) fn plan<const N: usize>(&self, map: &MemoryMap<N>) -> Option<StoragePlan> {
        let words = self.words();
        let need = StoragePlan {
            phys: PhysAddr::zero(),
            words,
        }
        .frames();
        let fits = |min: u64| {
            usable_frames(map).find_map(move |(a, b)| {
                let start = a.max(min);
                (b > start && b - start >= need).then_some(start)
            })
        };
        let frame = fits(CARVE_PREFERRED_MIN).or_else(|| fits(0))?;
        Some(StoragePlan {
            phys: PhysAddr::new(frame * FRAME_SIZE),
            words,
        })
    }
}
