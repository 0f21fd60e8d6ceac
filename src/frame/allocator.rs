//! The bitmap frame allocator: construction, single frames, frees, reservations.

use x86_64::structures::paging::{frame::PhysFrameRange, PhysFrame};
use x86_64::PhysAddr;

use super::bitmap::Bitmap;
use super::geometry::{usable_frames, Geometry, StoragePlan};
use super::hints::RunHints;
use super::ranges::{Kind, RangeTable};
use super::FrameError;
use crate::memory_map::{MemoryMap, FRAME_SIZE};

/// A physical frame allocator over one bit per 4 KiB frame.
///
/// Its storage (bitmap, summaries, hole and reservation table) is a `u64`
/// slice borrowed for `'m`: either carved out of the map's own usable memory
/// by [`init_carved`](Self::init_carved) (no heap needed: the kernel case), or
/// given by the caller to [`new`](Self::new) (a static array, or a host
/// buffer in tests). Single-frame allocation is O(log64 n) and returns the
/// lowest free frame; frees and reservations are checked and typed.
///
/// ```
/// use kmem::frame::BitmapFrameAllocator;
/// use kmem::memory_map::{MemoryMap, Region, RegionKind};
///
/// let map: MemoryMap = MemoryMap::from_regions([Region::new(0x10_0000, 0x40_0000, RegionKind::Usable)])?;
/// let mut storage = vec![0u64; BitmapFrameAllocator::storage_words(&map)];
/// // SAFETY: the map's memory is nothing's yet: this allocator's alone.
/// let mut frames = unsafe { BitmapFrameAllocator::new(&map, &mut storage) }?;
/// let frame = frames.allocate()?;
/// assert_eq!(frame.start_address().as_u64(), 0x10_0000);
/// // SAFETY: allocated just above, used by nothing.
/// unsafe { frames.free(frame) }?;
/// // SAFETY: as above; a double free is refused, not performed.
/// assert!(unsafe { frames.free(frame) }.is_err());
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub struct BitmapFrameAllocator<'m> {
    pub(crate) storage: &'m mut [u64],
    pub(crate) bitmap: Bitmap,
    pub(crate) table: RangeTable,
    /// Frame number of bit 0 (a multiple of 512).
    pub(crate) base: u64,
    /// Usable frames in the map.
    pub(crate) usable: u64,
    pub(crate) free: u64,
    pub(crate) reserved: u64,
    pub(crate) hints: RunHints,
    /// No frame below this bitmap index is free.
    pub(crate) first_free: usize,
}

/// A summary, not the (possibly 33 MiB) storage.
impl core::fmt::Debug for BitmapFrameAllocator<'_> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("BitmapFrameAllocator")
            .field("first_frame", &self.base)
            .field("span_frames", &self.bitmap.len())
            .field("usable", &self.usable)
            .field("free", &self.free)
            .field("reserved", &self.reserved)
            .field("metadata_words", &self.storage.len())
            .finish()
    }
}

impl<'m> BitmapFrameAllocator<'m> {
    /// An allocator with no memory: every allocation fails. A placeholder
    /// for statics, e.g. inside a [`LockedFrameAllocator`](super::LockedFrameAllocator).
    pub const fn empty() -> Self {
        Self {
            storage: &mut [],
            bitmap: Bitmap::new(0),
            table: RangeTable::new(0, 0),
            base: 0,
            usable: 0,
            free: 0,
            reserved: 0,
            hints: RunHints::new(),
            first_free: 0,
        }
    }

    /// Storage words [`new`](Self::new) needs for `map`.
    pub fn storage_words<const N: usize>(map: &MemoryMap<N>) -> usize {
        Geometry::of(map).words()
    }

    /// Where [`init_carved`](Self::init_carved) will put its storage for `map`.
    pub fn plan<const N: usize>(map: &MemoryMap<N>) -> Result<StoragePlan, FrameError> {
        let geometry = Geometry::of(map);
        let bytes = geometry.words() as u64 * 8;
        geometry
            .plan(map)
            .ok_or(FrameError::NoRoomForMetadata { bytes })
    }

    /// Builds an allocator over the usable memory of `map`, keeping its
    /// metadata in `storage` (at least [`storage_words`](Self::storage_words)
    /// words; its old contents are overwritten).
    ///
    /// If `storage` lies in usable memory of `map`, reserve it in the map
    /// first, or use [`init_carved`](Self::init_carved).
    ///
    /// ```compile_fail,E0133
    /// # fn f(map: &kmem::memory_map::MemoryMap, storage: &mut [u64]) {
    /// // A second allocator over the same map would hand frames out twice:
    /// let _ = kmem::frame::BitmapFrameAllocator::new(map, storage);
    /// # }
    /// ```
    ///
    /// # Safety
    /// The usable memory of `map` is this allocator's alone: nothing uses
    /// it, and no other allocator hands it out (two allocators over one map
    /// would hand out the same frame twice, which the `FrameAllocator`
    /// promise forbids).
    pub unsafe fn new<const N: usize>(
        map: &MemoryMap<N>,
        storage: &'m mut [u64],
    ) -> Result<Self, FrameError> {
        Self::build(map, storage, None)
    }

    /// Builds an allocator whose storage is carved out of `map`'s usable
    /// memory (see [`plan`](Self::plan)) and marked reserved. Writes only the
    /// storage, never the frames it manages.
    ///
    /// # Safety
    /// Physical memory must be mapped at `phys_base`: for the planned storage
    /// range `p`, `phys_base + p` must be valid for reads and writes, aligned
    /// to 8, and not accessed by anything else for `'m`. In a kernel,
    /// `phys_base` is the direct-map offset (0 under identity mapping); on the
    /// host it may be `buffer.wrapping_sub(plan.phys.as_u64() as usize)`.
    pub unsafe fn init_carved<const N: usize>(
        map: &MemoryMap<N>,
        phys_base: *mut u8,
    ) -> Result<Self, FrameError> {
        let plan = Self::plan(map)?;
        let ptr = phys_base
            .wrapping_add(plan.phys.as_u64() as usize)
            .cast::<u64>();
        // SAFETY: the caller guarantees that the planned storage range is
        // mapped at `phys_base`, valid, aligned and exclusively ours for 'm.
        let storage = unsafe { core::slice::from_raw_parts_mut(ptr, plan.words) };
        Self::build(map, storage, Some(plan))
    }

    fn build<const N: usize>(
        map: &MemoryMap<N>,
        storage: &'m mut [u64],
        carved: Option<StoragePlan>,
    ) -> Result<Self, FrameError> {
        let Geometry {
            base,
            bitmap,
            table,
            usable,
        } = Geometry::of(map);
        let needed = bitmap.words() + table.words();
        if storage.len() < needed {
            return Err(FrameError::StorageTooSmall {
                needed,
                given: storage.len(),
            });
        }
        let index = move |(a, b): (u64, u64)| ((a - base) as usize, (b - base) as usize);
        bitmap.init(storage, usable_frames(map).map(index));
        let mut this = Self {
            storage,
            bitmap,
            table,
            base,
            usable,
            free: usable,
            reserved: 0,
            hints: RunHints::new(),
            first_free: 0,
        };
        for (a, b) in Geometry::of(map).holes(map) {
            this.table
                .insert(this.storage, a, b, Kind::Hole)
                .map_err(too_full)?;
        }
        if let Some(plan) = carved {
            let a = (plan.phys.as_u64() / FRAME_SIZE - base) as usize;
            this.take_reserved(a, a + plan.frames() as usize)?;
        }
        Ok(this)
    }

    /// Allocates the lowest free frame.
    pub fn allocate(&mut self) -> Result<PhysFrame, FrameError> {
        let i = self
            .bitmap
            .next_free(self.storage, 0)
            .ok_or(FrameError::OutOfFrames {
                frames: 1,
                align: FRAME_SIZE,
                below: None,
            })?;
        self.bitmap.set(self.storage, i, false);
        self.free -= 1;
        self.first_free = i + 1;
        Ok(self.frame(i))
    }

    /// Frees one allocated frame. See [`free_range`](Self::free_range).
    ///
    /// # Safety
    /// As [`free_range`](Self::free_range), for `frame`.
    ///
    /// ```compile_fail,E0133
    /// # fn f(a: &mut kmem::frame::BitmapFrameAllocator, frame: x86_64::structures::paging::PhysFrame) {
    /// // Freeing a frame (a live page table?) needs `unsafe`:
    /// let _ = a.free(frame);
    /// # }
    /// ```
    pub unsafe fn free(&mut self, frame: PhysFrame) -> Result<(), FrameError> {
        let f = frame_number(frame);
        self.free_frames_at(f, f + 1)
    }

    /// Frees allocated frames. Fails, changing nothing, if any frame is
    /// outside the map, reserved, or already free.
    ///
    /// # Safety
    /// Nothing uses the frames any more: no mapping reaches them (on any
    /// CPU's TLB either), no page table is in them. The allocator catches a
    /// double or foreign free, not a free of memory still in use.
    pub unsafe fn free_range(&mut self, range: PhysFrameRange) -> Result<(), FrameError> {
        self.free_frames_at(frame_number(range.start), frame_number(range.end))
    }

    /// Frees frame numbers `[a, b)`.
    #[inline]
    pub(crate) fn free_frames_at(&mut self, a: u64, b: u64) -> Result<(), FrameError> {
        let (a, b) = self.indices(a, b)?;
        self.check_not_in_table(a, b)?;
        if let Some(i) = self.bitmap.first_with(self.storage, a, b, true) {
            return Err(FrameError::AlreadyFree {
                frame: self.frame(i),
            });
        }
        if b == a + 1 {
            self.bitmap.set(self.storage, a, true);
        } else {
            self.bitmap.set_range(self.storage, a, b, true);
        }
        self.free += (b - a) as u64;
        self.hints.freed(a);
        self.first_free = self.first_free.min(a);
        Ok(())
    }

    /// Takes free frames out of service after init (e.g. memory found to be
    /// in use later). Fails, changing nothing, if any frame is outside the
    /// map, reserved, allocated, or the reservation table is full.
    pub fn reserve(&mut self, range: PhysFrameRange) -> Result<(), FrameError> {
        let (a, b) = self.indices(frame_number(range.start), frame_number(range.end))?;
        self.check_not_in_table(a, b)?;
        self.take_reserved(a, b)
    }

    /// Puts frames that were out of service into service, free: memory
    /// whose use has ended, such as a kernel's boot-only code and boot page
    /// tables, or firmware data it has consumed. The range must lie inside
    /// one reservation, or inside one hole of the memory map within the
    /// allocator's span. Fails, changing nothing, if it does not, or if a
    /// reservation would have to be split and the table is full.
    ///
    /// Not a [`free`](Self::free): that takes back frames [`allocate`](Self::allocate) gave
    /// out, this one hands over frames the allocator never gave out.
    ///
    /// # Safety
    /// Nothing may use the frames any more: they are handed out from now on.
    pub unsafe fn release(&mut self, range: PhysFrameRange) -> Result<(), FrameError> {
        let (a, b) = self.indices(frame_number(range.start), frame_number(range.end))?;
        let Some((i, entry)) = self.table.containing(self.storage, a, b) else {
            // Free or allocated frames, or a range spanning several entries.
            let frame = match self.table.first_overlap(self.storage, a, b) {
                Some(e) if e.start > a => self.frame(a),
                Some(e) => self.frame(e.end),
                None => self.frame(a),
            };
            return Err(FrameError::NotReserved { frame });
        };
        self.table.cut(self.storage, i, a, b).map_err(too_full)?;
        let n = (b - a) as u64;
        match entry.kind {
            Kind::Hole => self.usable += n,
            Kind::Reserved => self.reserved -= n,
        }
        self.bitmap.set_range(self.storage, a, b, true);
        self.free += n;
        self.hints.freed(a);
        self.first_free = self.first_free.min(a);
        Ok(())
    }

    /// Whether `frame` is free.
    pub fn is_free(&self, frame: PhysFrame) -> bool {
        let f = frame_number(frame);
        f >= self.base && ((f - self.base) as usize) < self.bitmap.len() && {
            self.bitmap.is_free(self.storage, (f - self.base) as usize)
        }
    }

    /// Free frames, in O(1).
    pub fn free_frames(&self) -> u64 {
        self.free
    }

    /// Marks free `[a, b)` reserved.
    fn take_reserved(&mut self, a: usize, b: usize) -> Result<(), FrameError> {
        if let Some(i) = self.bitmap.first_with(self.storage, a, b, false) {
            return Err(FrameError::InUse {
                frame: self.frame(i),
            });
        }
        self.table
            .insert(self.storage, a, b, Kind::Reserved)
            .map_err(too_full)?;
        self.bitmap.set_range(self.storage, a, b, false);
        self.free -= (b - a) as u64;
        self.reserved += (b - a) as u64;
        Ok(())
    }

    /// Fails if `[a, b)` overlaps a hole or a reservation.
    #[inline]
    fn check_not_in_table(&self, a: usize, b: usize) -> Result<(), FrameError> {
        match self.table.first_overlap(self.storage, a, b) {
            None => Ok(()),
            Some(e) => {
                let frame = self.frame(e.start.max(a));
                Err(match e.kind {
                    Kind::Hole => FrameError::OutsideMap { frame },
                    Kind::Reserved => FrameError::Reserved { frame },
                })
            }
        }
    }

    /// Bitmap indices of frame numbers `[a, b)`, which must lie in the span.
    #[inline]
    fn indices(&self, a: u64, b: u64) -> Result<(usize, usize), FrameError> {
        if a >= b {
            return Err(FrameError::ZeroFrames);
        }
        let end = self.base + self.bitmap.len() as u64;
        if a < self.base || a >= end {
            return Err(FrameError::OutsideMap { frame: frame_at(a) });
        }
        if b > end {
            return Err(FrameError::OutsideMap {
                frame: frame_at(end),
            });
        }
        Ok(((a - self.base) as usize, (b - self.base) as usize))
    }

    /// The frame at bitmap index `i`.
    #[inline]
    pub(crate) fn frame(&self, i: usize) -> PhysFrame {
        frame_at(self.base + i as u64)
    }
}

/// The frame of frame number `n` (below the 52-bit limit: a managed frame or the end of
/// the span).
#[inline]
fn frame_at(n: u64) -> PhysFrame {
    PhysFrame::containing_address(PhysAddr::new(n * FRAME_SIZE))
}

/// The frame number of `frame`.
fn frame_number(frame: PhysFrame) -> u64 {
    frame.start_address().as_u64() / FRAME_SIZE
}

fn too_full(capacity: usize) -> FrameError {
    FrameError::ReservationTableFull { capacity }
}
