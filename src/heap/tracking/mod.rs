//! Debug tracking of every outstanding allocation (feature `tracking`).
//!
//! Nothing is allocated from the heap being watched. Two records:
//! - A live bitmap with one bit per [`STEP`] bytes of the heap's range, set
//!   where a live allocation starts. The heap hands out only multiples of
//!   `STEP`, so the bitmap answers "is this pointer live?" at any number of
//!   live allocations, and a double free is refused however full the heap
//!   is. It takes the top 1/64 of the range given to the heap (the heap
//!   keeps the rest); its pages are mapped from the heap's page source as
//!   the heap grows from either end, zeroed, and kept for the heap's life,
//!   so they are not in the heap's `pages_held`: see
//!   [`TrackerStats::bitmap_pages`].
//! - A table of [`TRACK_CAPACITY`] allocations with their layouts, sorted by
//!   address (binary search; overlap is checked against the two neighbours),
//!   for layout checks and the leak report. Allocations made while it is
//!   full are known by address only: a double free of one is caught, a
//!   wrong layout is not, and the leak report lists it with size and
//!   alignment 0.
//!
//! If the table is full and the page source refuses a page for the bitmap,
//! an allocation goes unseen: [`TrackingError::Saturated`] is reported, and
//! while any unseen allocation is live, frees of unknown pointers must be let
//! through (one of them may be the unseen one). [`Tracker::stats`] counts
//! what the tracker cannot see.
//!
//! A ring of recently freed addresses tells a double free from a foreign
//! one, and a ring keeps the last errors. Freed memory is poisoned with
//! [`POISON`]; a slab object is checked for intact poison when handed out
//! again, so a write after free is reported.

use super::large;
use super::page_source::PageSource;
use super::size_class::CLASS_SIZES;
use super::slab::SLAB_SIZE;
use core::alloc::Layout;
use live_bitmap::LiveBitmap;

mod live_bitmap;

/// Live allocations the table records with their layouts.
pub const TRACK_CAPACITY: usize = 8192;
/// Errors kept (the most recent ones).
pub const ERROR_RING: usize = 32;
const FREED_RING: usize = 256;
/// Byte written over freed memory.
pub const POISON: u8 = 0xDD;
/// Every address the heap hands out is a multiple of this (the smallest
/// size class; slab objects sit at multiples of their class size, large
/// payloads at multiples of `large::GRANULE`): one live bit per step.
pub const STEP: usize = CLASS_SIZES[0];
/// Heap bytes one bitmap byte covers.
const BYTE_SPAN: usize = STEP * 8;

const _: () = {
    let mut i = 0;
    while i < CLASS_SIZES.len() {
        assert!(CLASS_SIZES[i].is_multiple_of(STEP));
        i += 1;
    }
    assert!(large::GRANULE.is_multiple_of(STEP) && SLAB_SIZE.is_multiple_of(STEP));
};

/// One outstanding allocation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Allocation {
    /// Address handed out.
    pub addr: usize,
    /// Size requested; 0 if not recorded (the table was full).
    pub size: usize,
    /// Alignment requested; 0 if not recorded (the table was full).
    pub align: usize,
}

impl Allocation {
    /// An allocation known by its address only.
    const fn address_only(addr: usize) -> Self {
        Self {
            addr,
            size: 0,
            align: 0,
        }
    }

    /// Whether the layout was recorded (recorded sizes and alignments are
    /// never 0).
    pub fn layout_recorded(&self) -> bool {
        self.align != 0
    }
}

/// A misuse of the heap the tracker caught, or the point where it stopped
/// seeing every allocation. Bad frees are refused (the heap is left
/// untouched), so reporting never corrupts it further.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TrackingError {
    /// `addr` is not live and was freed recently: it is being freed (or
    /// reallocated) again.
    DoubleFree {
        /// The pointer passed to `dealloc`.
        addr: usize,
    },
    /// `addr` is not live and was never handed out (or was freed long ago).
    ForeignFree {
        /// The pointer passed to `dealloc`.
        addr: usize,
    },
    /// Freed or reallocated with a layout other than the one allocated.
    WrongLayout {
        /// The allocation as recorded.
        recorded: Allocation,
        /// Size given to `dealloc`/`realloc`.
        size: usize,
        /// Alignment given.
        align: usize,
    },
    /// The heap handed out memory that overlaps a live allocation (a heap bug).
    Overlap {
        /// The new allocation.
        new: Allocation,
        /// The live allocation it overlaps.
        live: Allocation,
    },
    /// Poison in a reused object was overwritten: someone wrote after free.
    UseAfterFree {
        /// Object address.
        addr: usize,
        /// Offset of the first changed byte.
        offset: usize,
    },
    /// The allocation at `addr` could not be recorded: the table was full
    /// and the page source refused a page for the live bitmap. Until every
    /// unseen allocation is freed, frees of pointers the tracker does not
    /// know are let through, so double and foreign frees go uncaught (see
    /// [`TrackerStats`]). Reported each time the tracker starts missing
    /// allocations.
    Saturated {
        /// The first allocation missed.
        addr: usize,
    },
}

/// What the tracker sees of the live allocations, and what it cannot.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TrackerStats {
    /// Live allocations recorded with their layout.
    pub recorded: usize,
    /// Live allocations known by address only (made while the table was
    /// full): double frees of them are caught, wrong layouts are not.
    pub address_only: usize,
    /// Live allocations not seen at all (see [`TrackingError::Saturated`]);
    /// while non-zero, double and foreign frees go uncaught.
    pub unseen: usize,
    /// Frees and reallocations of unknown pointers let through because of
    /// unseen allocations.
    pub unchecked: usize,
    /// Pages the live bitmap holds from the page source (besides the
    /// heap's own `pages_held`).
    pub bitmap_pages: usize,
}

/// The tracking state, embedded in the heap.
pub struct Tracker {
    live: [Allocation; TRACK_CAPACITY],
    len: usize,
    bitmap: LiveBitmap,
    address_only: usize,
    unseen: usize,
    unchecked: usize,
    freed: [usize; FREED_RING],
    freed_next: usize,
    errors: [Option<TrackingError>; ERROR_RING],
    error_count: usize,
}

impl Tracker {
    /// The top of the heap's own range when the tracker's bitmap must fit
    /// in `[lo, top)` above it: `top` lowered by the bitmap's pages (about
    /// 1/64 of the range), then to a multiple of `SLAB_SIZE`.
    pub(crate) const fn heap_top(lo: usize, top: usize) -> usize {
        let bitmap = LiveBitmap::bytes_for(top.saturating_sub(lo));
        top.saturating_sub(bitmap) & !(SLAB_SIZE - 1)
    }

    /// Writes an empty tracker for the heap range `[lo, top)` at `slot`
    /// without building one on the stack (it is about 200 KiB). The bitmap
    /// goes at `top`, which must come from [`Tracker::heap_top`].
    ///
    /// # Safety
    /// `slot` must be valid for writes of a `Tracker` and aligned. The
    /// bitmap's range above `top` must be reserved for the tracker, and
    /// the page source it later gets must be able to map it.
    pub(crate) unsafe fn init_at(slot: *mut Self, lo: usize, top: usize) {
        // SAFETY: the caller gives a writable, aligned slot. Each field is
        // written once through raw pointers; all-zero is a valid
        // `Allocation` and `usize`, and `errors` is filled with `None`.
        unsafe {
            core::ptr::addr_of_mut!((*slot).live).write_bytes(0, 1);
            core::ptr::addr_of_mut!((*slot).len).write(0);
            core::ptr::addr_of_mut!((*slot).bitmap).write(LiveBitmap::new(lo, top));
            core::ptr::addr_of_mut!((*slot).address_only).write(0);
            core::ptr::addr_of_mut!((*slot).unseen).write(0);
            core::ptr::addr_of_mut!((*slot).unchecked).write(0);
            core::ptr::addr_of_mut!((*slot).freed).write_bytes(0, 1);
            core::ptr::addr_of_mut!((*slot).freed_next).write(0);
            core::ptr::addr_of_mut!((*slot).errors).write([None; ERROR_RING]);
            core::ptr::addr_of_mut!((*slot).error_count).write(0);
        }
    }

    fn report(&mut self, e: TrackingError) {
        self.errors[self.error_count % ERROR_RING] = Some(e);
        self.error_count += 1;
    }

    fn find(&self, addr: usize) -> Result<usize, usize> {
        self.live[..self.len].binary_search_by_key(&addr, |a| a.addr)
    }

    /// Records a new allocation, checking it overlaps nothing live.
    pub(crate) fn on_allocate<P: PageSource>(
        &mut self,
        addr: usize,
        layout: Layout,
        source: &mut P,
    ) {
        let new = Allocation {
            addr,
            size: layout.size().max(1),
            align: layout.align(),
        };
        self.record(new, source);
    }

    /// Records `new` (address only if its alignment is 0), in the table
    /// while it has room, in the bitmap always.
    fn record<P: PageSource>(&mut self, new: Allocation, source: &mut P) {
        let Some(i) = self.check_overlap(new) else {
            return;
        };
        let marked = self.bitmap.set(new.addr, source);
        if new.layout_recorded() && self.len < TRACK_CAPACITY {
            self.live.copy_within(i..self.len, i + 1);
            self.live[i] = new;
            self.len += 1;
        } else if marked {
            self.address_only += 1;
        } else {
            self.unseen += 1;
            if self.unseen == 1 {
                self.report(TrackingError::Saturated { addr: new.addr });
            }
        }
    }

    /// Reports live allocations `new` overlaps; returns where it goes in
    /// the table, or `None` if a live allocation starts at the same address
    /// (the new one is then not recorded).
    fn check_overlap(&mut self, new: Allocation) -> Option<usize> {
        let i = match self.find(new.addr) {
            Ok(i) => {
                self.report(TrackingError::Overlap {
                    new,
                    live: self.live[i],
                });
                return None;
            }
            Err(i) => i,
        };
        if self.bitmap.get(new.addr) {
            self.report(TrackingError::Overlap {
                new,
                live: Allocation::address_only(new.addr),
            });
            return None;
        }
        if i > 0 && self.live[i - 1].addr + self.live[i - 1].size > new.addr {
            self.report(TrackingError::Overlap {
                new,
                live: self.live[i - 1],
            });
        }
        if i < self.len && self.live[i].addr < new.addr + new.size {
            self.report(TrackingError::Overlap {
                new,
                live: self.live[i],
            });
        }
        Some(i)
    }

    /// Checks that `addr` is live with `layout` (the old side of a realloc).
    pub(crate) fn verify(&mut self, addr: usize, layout: Layout) -> Result<(), TrackingError> {
        match self.find(addr) {
            Ok(i) => self.check_layout(self.live[i], layout),
            Err(_) if self.bitmap.get(addr) => Ok(()),
            Err(_) if self.unseen > 0 => {
                self.unchecked += 1;
                Ok(())
            }
            Err(_) => Err(self.unknown(addr)),
        }
    }

    /// Reports a layout that differs from the recorded one.
    fn check_layout(&mut self, rec: Allocation, layout: Layout) -> Result<(), TrackingError> {
        if rec.size == layout.size().max(1) && rec.align == layout.align() {
            return Ok(());
        }
        let e = TrackingError::WrongLayout {
            recorded: rec,
            size: layout.size(),
            align: layout.align(),
        };
        self.report(e);
        Err(e)
    }

    /// Reports a free of `addr`, which is not live.
    fn unknown(&mut self, addr: usize) -> TrackingError {
        let e = if self.freed.contains(&addr) {
            TrackingError::DoubleFree { addr }
        } else {
            TrackingError::ForeignFree { addr }
        };
        self.report(e);
        e
    }

    /// Records an in-place resize of the live allocation at `addr`.
    pub(crate) fn resize(&mut self, addr: usize, new_size: usize) {
        if let Ok(i) = self.find(addr) {
            self.live[i].size = new_size.max(1);
        }
    }

    /// Records that the live allocation at `from` moved to `to` with `new_size`.
    pub(crate) fn moved<P: PageSource>(
        &mut self,
        from: usize,
        to: usize,
        new_size: usize,
        source: &mut P,
    ) {
        let new = match self.find(from) {
            Ok(i) => {
                let align = self.live[i].align;
                self.live.copy_within(i + 1..self.len, i);
                self.len -= 1;
                self.bitmap.clear(from);
                Allocation {
                    addr: to,
                    size: new_size.max(1),
                    align,
                }
            }
            Err(_) if self.bitmap.clear(from) => {
                self.address_only -= 1;
                Allocation::address_only(to)
            }
            // An unseen allocation stays unseen.
            Err(_) => return,
        };
        self.remember_freed(from);
        self.record(new, source);
    }

    /// Checks a free (or the old side of a realloc); on `Ok` the record is removed.
    pub(crate) fn on_deallocate(
        &mut self,
        addr: usize,
        layout: Layout,
    ) -> Result<(), TrackingError> {
        match self.find(addr) {
            Ok(i) => {
                self.check_layout(self.live[i], layout)?;
                self.live.copy_within(i + 1..self.len, i);
                self.len -= 1;
                self.bitmap.clear(addr);
            }
            Err(_) if self.bitmap.clear(addr) => self.address_only -= 1,
            Err(_) if self.unseen > 0 => {
                self.unseen -= 1;
                self.unchecked += 1;
                return Ok(());
            }
            Err(_) => return Err(self.unknown(addr)),
        }
        self.remember_freed(addr);
        Ok(())
    }

    fn remember_freed(&mut self, addr: usize) {
        self.freed[self.freed_next % FREED_RING] = addr;
        self.freed_next += 1;
    }

    /// Checks that `bytes` bytes at `obj` (past the free-list link) still
    /// hold poison.
    ///
    /// # Safety
    /// `obj..obj + bytes` must be readable.
    pub(crate) unsafe fn check_poison(&mut self, obj: *const u8, bytes: usize) {
        for off in 8..bytes {
            // SAFETY: inside the object (caller).
            if unsafe { obj.add(off).read() } != POISON {
                self.report(TrackingError::UseAfterFree {
                    addr: obj as usize,
                    offset: off,
                });
                return;
            }
        }
    }

    /// The leak report: every live allocation the tracker saw, by address;
    /// those known by address only have size and alignment 0. Allocations
    /// it did not see are counted in [`TrackerStats::unseen`].
    pub fn leaks(&self) -> impl Iterator<Item = Allocation> + '_ {
        let mut table = self.live[..self.len].iter().copied().peekable();
        let mut marked = self.bitmap.addrs().peekable();
        core::iter::from_fn(
            move || match (table.peek().map(|a| a.addr), marked.peek().copied()) {
                (Some(t), Some(m)) if t == m => {
                    marked.next();
                    table.next()
                }
                (Some(t), Some(m)) if t < m => table.next(),
                (Some(_), None) => table.next(),
                (_, Some(_)) => marked.next().map(Allocation::address_only),
                (None, None) => None,
            },
        )
    }

    /// Live allocations recorded with their layout.
    pub fn live_count(&self) -> usize {
        self.len
    }

    /// Errors reported since init.
    pub fn error_count(&self) -> usize {
        self.error_count
    }

    /// The most recent errors (up to [`ERROR_RING`]), oldest first.
    pub fn errors(&self) -> impl Iterator<Item = TrackingError> + '_ {
        let n = self.error_count.min(ERROR_RING);
        (self.error_count - n..self.error_count).filter_map(|i| self.errors[i % ERROR_RING])
    }

    /// Live allocations whose layout is not recorded because the table was
    /// full (known by address only, or unseen).
    pub fn untracked(&self) -> usize {
        self.address_only + self.unseen
    }

    /// Whether some live allocation went unseen, so that double and foreign
    /// frees are not caught now.
    pub fn saturated(&self) -> bool {
        self.unseen > 0
    }

    /// What the tracker sees and what it cannot.
    pub fn stats(&self) -> TrackerStats {
        TrackerStats {
            recorded: self.len,
            address_only: self.address_only,
            unseen: self.unseen,
            unchecked: self.unchecked,
            bitmap_pages: self.bitmap.mapped_pages(),
        }
    }
}
