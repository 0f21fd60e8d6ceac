//! Debug tracking of every outstanding allocation (feature `tracking`).
//!
//! No allocation of its own: a fixed table of [`TRACK_CAPACITY`] live
//! allocations kept sorted by address (binary search; overlap is checked
//! against the two neighbours), a ring of recently freed addresses to tell a
//! double free from a foreign one, and a ring of the last errors. When the
//! table is full, further allocations go untracked (counted in
//! [`Tracker::untracked`]) and frees of unknown pointers are then no longer
//! reported, to avoid false alarms.
//!
//! Freed memory is poisoned with [`POISON`]; a slab object is checked for
//! intact poison when handed out again, so a write after free is reported.

use core::alloc::Layout;

/// Live allocations the table can record.
pub const TRACK_CAPACITY: usize = 8192;
/// Errors kept (the most recent ones).
pub const ERROR_RING: usize = 32;
const FREED_RING: usize = 256;
/// Byte written over freed memory.
pub const POISON: u8 = 0xDD;

/// One outstanding allocation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Allocation {
    /// Address handed out.
    pub addr: usize,
    /// Size requested.
    pub size: usize,
    /// Alignment requested.
    pub align: usize,
}

/// A misuse of the heap the tracker caught. Bad frees are refused (the heap
/// is left untouched), so reporting never corrupts it further.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TrackingError {
    /// `addr` was freed again after a recent free.
    DoubleFree {
        /// The pointer passed to `dealloc`.
        addr: usize,
    },
    /// `addr` was never handed out (or freed long ago).
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
}

/// The tracking state, embedded in the heap.
pub struct Tracker {
    live: [Allocation; TRACK_CAPACITY],
    len: usize,
    freed: [usize; FREED_RING],
    freed_next: usize,
    errors: [Option<TrackingError>; ERROR_RING],
    error_count: usize,
    untracked: usize,
}

impl Tracker {
    /// An empty tracker.
    pub const fn new() -> Self {
        Self {
            live: [Allocation {
                addr: 0,
                size: 0,
                align: 0,
            }; TRACK_CAPACITY],
            len: 0,
            freed: [0; FREED_RING],
            freed_next: 0,
            errors: [None; ERROR_RING],
            error_count: 0,
            untracked: 0,
        }
    }

    /// Writes an empty tracker at `slot` without building one on the stack
    /// (it is about 200 KiB).
    ///
    /// # Safety
    /// `slot` must be valid for writes of a `Tracker` and aligned.
    pub(crate) unsafe fn init_at(slot: *mut Self) {
        // SAFETY: the caller gives a writable, aligned slot. Each field is
        // written once through raw pointers; all-zero is a valid
        // `Allocation` and `usize`, and `errors` is filled with `None`.
        unsafe {
            core::ptr::addr_of_mut!((*slot).live).write_bytes(0, 1);
            core::ptr::addr_of_mut!((*slot).len).write(0);
            core::ptr::addr_of_mut!((*slot).freed).write_bytes(0, 1);
            core::ptr::addr_of_mut!((*slot).freed_next).write(0);
            core::ptr::addr_of_mut!((*slot).errors).write([None; ERROR_RING]);
            core::ptr::addr_of_mut!((*slot).error_count).write(0);
            core::ptr::addr_of_mut!((*slot).untracked).write(0);
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
    pub fn on_alloc(&mut self, addr: usize, layout: Layout) {
        let new = Allocation {
            addr,
            size: layout.size().max(1),
            align: layout.align(),
        };
        let i = match self.find(addr) {
            Ok(i) => {
                self.report(TrackingError::Overlap {
                    new,
                    live: self.live[i],
                });
                return;
            }
            Err(i) => i,
        };
        let end = addr + new.size;
        if i > 0 && self.live[i - 1].addr + self.live[i - 1].size > addr {
            self.report(TrackingError::Overlap {
                new,
                live: self.live[i - 1],
            });
        }
        if i < self.len && self.live[i].addr < end {
            self.report(TrackingError::Overlap {
                new,
                live: self.live[i],
            });
        }
        if self.len == TRACK_CAPACITY {
            self.untracked += 1;
            return;
        }
        self.live.copy_within(i..self.len, i + 1);
        self.live[i] = new;
        self.len += 1;
    }

    /// Checks that `addr` is live with `layout` (the old side of a realloc).
    pub fn verify(&mut self, addr: usize, layout: Layout) -> Result<(), TrackingError> {
        match self.find(addr) {
            Ok(i) => self.check_layout(self.live[i], layout),
            Err(_) if self.untracked > 0 => Ok(()),
            Err(_) => {
                let e = TrackingError::ForeignFree { addr };
                self.report(e);
                Err(e)
            }
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

    /// Records an in-place resize of the live allocation at `addr`.
    pub fn resize(&mut self, addr: usize, new_size: usize) {
        if let Ok(i) = self.find(addr) {
            self.live[i].size = new_size.max(1);
        }
    }

    /// Records that the live allocation at `from` moved to `to` with `new_size`.
    pub fn moved(&mut self, from: usize, to: usize, new_size: usize) {
        if let Ok(i) = self.find(from) {
            let align = self.live[i].align;
            self.live.copy_within(i + 1..self.len, i);
            self.len -= 1;
            let layout = Layout::from_size_align(new_size, align).unwrap_or(Layout::new::<u8>());
            self.on_alloc(to, layout);
        }
    }

    /// Checks a free (or the old side of a realloc); on `Ok` the record is removed.
    pub fn on_free(&mut self, addr: usize, layout: Layout) -> Result<(), TrackingError> {
        let i = match self.find(addr) {
            Ok(i) => i,
            Err(_) if self.untracked > 0 => {
                self.untracked -= 1;
                return Ok(());
            }
            Err(_) => {
                let e = if self.freed.contains(&addr) {
                    TrackingError::DoubleFree { addr }
                } else {
                    TrackingError::ForeignFree { addr }
                };
                self.report(e);
                return Err(e);
            }
        };
        self.check_layout(self.live[i], layout)?;
        self.live.copy_within(i + 1..self.len, i);
        self.len -= 1;
        self.freed[self.freed_next % FREED_RING] = addr;
        self.freed_next += 1;
        Ok(())
    }

    /// Checks that `bytes` bytes at `obj` (past the free-list link) still
    /// hold poison.
    ///
    /// # Safety
    /// `obj..obj + bytes` must be readable.
    pub unsafe fn check_poison(&mut self, obj: *const u8, bytes: usize) {
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

    /// Outstanding allocations, by address: the leak report.
    pub fn leaks(&self) -> impl Iterator<Item = Allocation> + '_ {
        self.live[..self.len].iter().copied()
    }

    /// Outstanding allocations recorded.
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

    /// Allocations not recorded because the table was full.
    pub fn untracked(&self) -> usize {
        self.untracked
    }
}

impl Default for Tracker {
    fn default() -> Self {
        Self::new()
    }
}
