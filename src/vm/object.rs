//! Memory objects (FreeBSD's `vm_object`, Linux's `address_space`): what
//! areas of several spaces map page by page, and the page cache that holds
//! each of their pages once however many spaces map it.
//!
//! An object is anonymous (shared anonymous memory: zero-filled, its pages
//! live as long as the object, on swap when reclaim takes them, as Linux's
//! shmem) or backed by a [`Pager`] the kernel
//! implements over a file or a device: its pages are read in on their first
//! fault, written back when dirty (on eviction, [`VmSpace::sync`], unmap
//! and [`Vm::close_object`]) and dropped when clean, their eviction ranked
//! by the same system-wide policy as anonymous pages.
//!
//! A cached page counts the page-table entries that map it (`maps`, as
//! Linux's `_mapcount`): an entry is counted before it is written and
//! uncounted after it was removed and invalidated, so a page with no count
//! is reachable by no CPU. A page of a pager-backed object leaves the
//! cache when its count drops to zero (written back first when dirty); a
//! page being read in or written back is marked, and a fault on it waits
//! ([`FaultOutcome::InTransit`](super::FaultOutcome::InTransit)).
//!
//! [`VmSpace::sync`]: super::VmSpace::sync

use super::swap::PAGE_BYTES;
use alloc::boxed::Box;
use alloc::sync::Arc;
use alloc::vec::Vec;
use core::fmt;
use core::sync::atomic::{AtomicU64, Ordering};
use x86_64::structures::paging::PhysFrame;
use x86_64::PhysAddr;

/// Why a [`Pager`] request failed: reported to the faulting access as
/// [`FaultReason::Pager`](super::FaultReason::Pager) (a `SIGBUS`), or to
/// `msync`, unmap and close as [`VmError::Pager`](super::VmError::Pager).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum PagerError {
    /// The device failed at page `index` of the object.
    Io {
        /// The page of the object.
        index: u64,
    },
    /// The object refuses the write of page `index` (read-only medium, no
    /// space left): the page stays dirty in the cache.
    Refused {
        /// The page of the object.
        index: u64,
    },
}

impl fmt::Display for PagerError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Io { index } => write!(f, "pager I/O error at page {index}"),
            Self::Refused { index } => write!(f, "pager refused the write of page {index}"),
        }
    }
}

/// What backs the pages of an object: a file of the kernel's file system,
/// a region of a disk. kmem calls it with none of its locks held, for
/// different pages from several CPUs at once, never for one page twice at
/// once (a page being read in or written back is marked in the cache).
pub trait Pager: Send + Sync {
    /// The object's size in pages (fixed while the object exists).
    fn pages(&self) -> u64;

    /// Reads page `index` (below [`pages`](Self::pages)) into `page`.
    fn read(&self, index: u64, page: &mut [u8; PAGE_BYTES]) -> Result<(), PagerError>;

    /// Writes `page` back as page `index` of the object.
    fn write(&self, index: u64, page: &[u8; PAGE_BYTES]) -> Result<(), PagerError>;
}

/// An object of a [`Vm`](super::Vm): a registry index and the generation
/// of that index, so a closed object's id never names a later one.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ObjectId {
    pub(super) index: u16,
    pub(super) generation: u32,
}

/// Counters of one object.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ObjectStats {
    /// Its size in pages.
    pub pages: u64,
    /// Pages cached now.
    pub cached: u64,
    /// Cached pages known dirty now (written through a mapping whose
    /// entry was since harvested, or whose write-back failed).
    pub dirty: u64,
    /// Pages of an anonymous object on swap now.
    pub swapped: u64,
    /// Pages read through the pager (or zero-filled, for an anonymous object).
    pub reads: u64,
    /// Pages written back through the pager.
    pub writes: u64,
    /// Pager requests that failed.
    pub errors: u64,
}

/// No frame in a [`Cached`] entry.
const NO_FRAME: u64 = u64::MAX;
/// No swap slot in a [`Cached`] entry.
const NO_SLOT: u64 = u64::MAX;
/// States of a cached page.
const DIRTY: u8 = 1;
const READING: u8 = 2;
const WRITING: u8 = 4;

/// One page of the object in the cache.
#[derive(Debug, Clone, Copy)]
struct Cached {
    /// Frame number, [`NO_FRAME`] when not cached.
    frame: u64,
    /// The swap slot holding an anonymous object's page while it is not
    /// cached ([`NO_SLOT`]: none; the page reads as zeros).
    slot: u64,
    /// Page-table entries mapping it.
    maps: u32,
    state: u8,
}

impl Cached {
    const EMPTY: Self = Self {
        frame: NO_FRAME,
        slot: NO_SLOT,
        maps: 0,
        state: 0,
    };
}

/// Where [`VmObject::begin_read`] says a page comes from.
pub(super) enum Source {
    /// The pager, or zeroes for an anonymous object's new page.
    Pager,
    /// The swap slot an anonymous object's page was written to.
    Swap(u64),
}

/// A page an unmap took out of a shared mapping: its object, its page
/// there, and whether the entry taken out was dirty. Settled once every
/// CPU dropped the entry (`VmSpace::settle_unmapped`).
pub(super) type Unmapped = (ObjectId, u64, bool);

/// What [`VmObject::pin`] found.
pub(super) enum Pin {
    /// The cached frame, counted for one more mapping.
    Frame(PhysFrame),
    /// Being read in or written back: retry later.
    Wait,
    /// Not cached: read it in ([`VmObject::begin_read`]).
    Absent,
}

/// What is left to do once a page lost mappings.
pub(super) enum Settle {
    /// Still mapped, or kept (an anonymous object's page): nothing.
    Kept,
    /// Left the cache, clean: free the frame.
    Free(PhysFrame),
    /// Unmapped and dirty, now marked as written back: write it, then
    /// [`VmObject::end_write`].
    Write(PhysFrame),
    /// An anonymous object's page reclaim unmapped everywhere, now marked
    /// as written: write it to a swap slot, then [`VmObject::end_swap`].
    Swap(PhysFrame),
}

/// A memory object: its pager and its cached pages.
pub struct VmObject {
    pager: Option<Box<dyn Pager>>,
    pages: u64,
    /// One entry per page of the object, made when the object is.
    cache: spin::Mutex<Vec<Cached>>,
    /// Pages of areas mapping the object, in every space.
    pub(super) area_pages: AtomicU64,
    reads: AtomicU64,
    writes: AtomicU64,
    errors: AtomicU64,
}

impl fmt::Debug for VmObject {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("VmObject")
            .field("pages", &self.pages)
            .field("pager", &self.pager.is_some())
            .finish()
    }
}

fn frame_at(n: u64) -> PhysFrame {
    PhysFrame::containing_address(PhysAddr::new(n * crate::PAGE_SIZE))
}

fn number(f: PhysFrame) -> u64 {
    f.start_address().as_u64() / crate::PAGE_SIZE
}

impl VmObject {
    /// An object of `pages` pages (`pager`'s size when it has one); `None`
    /// when its cache table (24 bytes a page) does not fit on the heap.
    pub(super) fn new(pager: Option<Box<dyn Pager>>, pages: u64) -> Option<Self> {
        let mut cache = Vec::new();
        cache.try_reserve_exact(usize::try_from(pages).ok()?).ok()?;
        cache.resize(pages as usize, Cached::EMPTY);
        Some(Self {
            pager,
            pages,
            cache: spin::Mutex::new(cache),
            area_pages: AtomicU64::new(0),
            reads: AtomicU64::new(0),
            writes: AtomicU64::new(0),
            errors: AtomicU64::new(0),
        })
    }

    /// Its size in pages.
    pub(super) fn pages(&self) -> u64 {
        self.pages
    }

    /// Whether its pages can leave the cache: a pager holds them, or, for
    /// an anonymous object, a swap device is attached (`swap`).
    pub(super) fn evictable(&self, swap: bool) -> bool {
        self.pager.is_some() || swap
    }

    /// Counts one more mapping of page `index` when it is cached.
    pub(super) fn pin(&self, index: u64) -> Pin {
        let mut cache = self.cache.lock();
        let c = &mut cache[index as usize];
        if c.frame == NO_FRAME {
            Pin::Absent
        } else if c.state & (READING | WRITING) != 0 {
            Pin::Wait
        } else {
            c.maps += 1;
            Pin::Frame(frame_at(c.frame))
        }
    }

    /// Counts page `index` once more if `frame` still caches it and it is
    /// not being read or written (an eviction working on it); whether it did.
    pub(super) fn pin_frame(&self, index: u64, frame: PhysFrame) -> bool {
        let mut cache = self.cache.lock();
        let c = &mut cache[index as usize];
        let ok = c.frame == number(frame) && c.state & (READING | WRITING) == 0;
        if ok {
            c.maps += 1;
        }
        ok
    }

    /// Counts `n` more mappings of page `index`, which is mapped already
    /// (a fork copying its entries).
    pub(super) fn add_maps(&self, index: u64, n: u32) {
        let mut cache = self.cache.lock();
        let c = &mut cache[index as usize];
        debug_assert!(c.frame != NO_FRAME && c.maps > 0, "a mapped page is cached");
        c.maps += n;
    }

    /// Whether some entry maps page `index` (or a fault is about to).
    pub(super) fn is_mapped(&self, index: u64) -> bool {
        self.cache.lock()[index as usize].maps > 0
    }

    /// The frame caching page `index`, if any (and not being read in).
    pub(super) fn frame_of(&self, index: u64) -> Option<PhysFrame> {
        let cache = self.cache.lock();
        let c = cache[index as usize];
        (c.frame != NO_FRAME && c.state & READING == 0).then(|| frame_at(c.frame))
    }

    /// Makes `frame` the page `index`, marked as being read in, and says
    /// where from; `None` when another fault cached it first (the frame
    /// stays the caller's).
    pub(super) fn begin_read(&self, index: u64, frame: PhysFrame) -> Option<Source> {
        let mut cache = self.cache.lock();
        let c = &mut cache[index as usize];
        if c.frame != NO_FRAME {
            return None;
        }
        *c = Cached {
            frame: number(frame),
            maps: 0,
            state: READING,
            slot: c.slot,
        };
        Some(match c.slot {
            NO_SLOT => Source::Pager,
            slot => Source::Swap(slot),
        })
    }

    /// Fills `page`, the frame [`begin_read`](Self::begin_read) marked,
    /// from the pager (zeroes for an anonymous object). No lock held.
    pub(super) fn read(&self, index: u64, page: &mut [u8; PAGE_BYTES]) -> Result<(), PagerError> {
        let r = match &self.pager {
            Some(p) => p.read(index, page),
            None => {
                page.fill(0);
                Ok(())
            }
        };
        let c = if r.is_ok() { &self.reads } else { &self.errors };
        c.fetch_add(1, Ordering::Relaxed);
        r
    }

    /// Ends the read of page `index`: cached and counted for one mapping
    /// (`ok`; a swap slot it was read from is no longer its, and is
    /// returned for the caller to give back), or out of the cache again,
    /// on its slot if it had one (the caller frees the frame).
    pub(super) fn end_read(&self, index: u64, ok: bool) -> Option<u64> {
        let mut cache = self.cache.lock();
        let c = &mut cache[index as usize];
        debug_assert!(c.state & READING != 0, "a page being read");
        let slot = c.slot;
        *c = if ok {
            Cached {
                maps: 1,
                state: 0,
                slot: NO_SLOT,
                ..*c
            }
        } else {
            Cached {
                slot,
                ..Cached::EMPTY
            }
        };
        (ok && slot != NO_SLOT).then_some(slot)
    }

    /// Uncounts `n` mappings of page `index`, removed and invalidated
    /// (`dirty`: one of them had been written). At no mapping a clean page
    /// of a pager-backed object leaves the cache, a dirty one is marked
    /// for its write-back; an anonymous object's page stays unless reclaim
    /// unmapped it (`evict`, with a swap device), then it is marked to be
    /// written to swap.
    pub(super) fn unpin(&self, index: u64, n: u32, dirty: bool, evict: bool) -> Settle {
        let mut cache = self.cache.lock();
        let c = &mut cache[index as usize];
        debug_assert!(c.maps >= n, "more mappings removed than counted");
        c.maps -= n.min(c.maps);
        if dirty {
            c.state |= DIRTY;
        }
        if self.pager.is_none()
            && evict
            && c.frame != NO_FRAME
            && c.maps == 0
            && c.state & (READING | WRITING) == 0
        {
            c.state = WRITING;
            return Settle::Swap(frame_at(c.frame));
        }
        self.settle(c)
    }

    /// Ends the write of an anonymous object's page `index` to swap:
    /// written to `slot`, it leaves the cache (its frame returned, to free:
    /// no mapping can have appeared meanwhile, a fault waits on a page
    /// being written); not written (`None`), it stays.
    pub(super) fn end_swap(&self, index: u64, slot: Option<u64>) -> Option<PhysFrame> {
        let mut cache = self.cache.lock();
        let c = &mut cache[index as usize];
        debug_assert!(
            c.state & WRITING != 0 && c.maps == 0,
            "a page being swapped"
        );
        match slot {
            Some(slot) => {
                let frame = frame_at(c.frame);
                *c = Cached {
                    slot,
                    ..Cached::EMPTY
                };
                Some(frame)
            }
            None => {
                c.state &= !WRITING;
                None
            }
        }
    }

    fn settle(&self, c: &mut Cached) -> Settle {
        // Not cached (any more: an object discarded under a reclaim that
        // had listed the page), mapped, moving, or an anonymous object's
        // (which goes only to swap, when reclaim asks).
        if c.frame == NO_FRAME
            || c.maps > 0
            || c.state & (READING | WRITING) != 0
            || self.pager.is_none()
        {
            return Settle::Kept;
        }
        let frame = frame_at(c.frame);
        if c.state & DIRTY != 0 {
            c.state = WRITING;
            Settle::Write(frame)
        } else {
            *c = Cached::EMPTY;
            Settle::Free(frame)
        }
    }

    /// Marks every cached dirty page of `[from, to)` not moving already as
    /// being written back, up to `out.len()`; returns how many
    /// it put in `out` (page, frame), and where to go on.
    pub(super) fn take_dirty(
        &self,
        from: u64,
        to: u64,
        out: &mut [(u64, PhysFrame)],
    ) -> (usize, u64) {
        let mut cache = self.cache.lock();
        let mut n = 0;
        let to = to.min(self.pages);
        let mut i = from;
        while i < to && n < out.len() {
            let c = &mut cache[i as usize];
            if c.frame != NO_FRAME && c.state == DIRTY {
                c.state = WRITING;
                out[n] = (i, frame_at(c.frame));
                n += 1;
            }
            i += 1;
        }
        (n, i)
    }

    /// Writes `page`, page `index` marked as being written back. No lock held.
    pub(super) fn write(&self, index: u64, page: &[u8; PAGE_BYTES]) -> Result<(), PagerError> {
        let r = match &self.pager {
            Some(p) => p.write(index, page),
            None => Ok(()),
        };
        let c = if r.is_ok() {
            &self.writes
        } else {
            &self.errors
        };
        c.fetch_add(1, Ordering::Relaxed);
        r
    }

    /// Ends the write-back of page `index`: written (`ok`), it is clean
    /// unless dirtied again meanwhile; failed, it is dirty again. Then, as
    /// [`unpin`](Self::unpin), what is left to do.
    pub(super) fn end_write(&self, index: u64, ok: bool) -> Settle {
        let mut cache = self.cache.lock();
        let c = &mut cache[index as usize];
        debug_assert!(c.state & WRITING != 0, "a page being written");
        c.state &= !WRITING;
        if !ok {
            c.state |= DIRTY;
            return Settle::Kept;
        }
        // Dirty again only if written meanwhile (the mark was taken off
        // when the write began).
        self.settle(c)
    }

    /// Marks page `index` dirty (a mapping's Dirty bit harvested).
    pub(super) fn mark_dirty(&self, index: u64) {
        let mut cache = self.cache.lock();
        let c = &mut cache[index as usize];
        if c.frame != NO_FRAME {
            c.state |= DIRTY;
        }
    }

    /// Takes every cached page out, for a closed object no area maps, into
    /// a list of frames and swap slots (the caller frees them, no lock
    /// held; dirty pages are lost); `Err(true)` while a page is mapped,
    /// read in or written (a reclaim or sync at work: nothing taken),
    /// `Err(false)` when the list does not fit on the heap.
    #[allow(clippy::type_complexity)]
    pub(super) fn take_all(&self) -> Result<Vec<(u64, Option<PhysFrame>, Option<u64>)>, bool> {
        let mut cache = self.cache.lock();
        if cache
            .iter()
            .any(|c| c.maps > 0 || c.state & (READING | WRITING) != 0)
        {
            return Err(true);
        }
        let held = cache
            .iter()
            .filter(|c| c.frame != NO_FRAME || c.slot != NO_SLOT)
            .count();
        let mut out = Vec::new();
        out.try_reserve_exact(held).map_err(|_| false)?;
        for (i, c) in cache.iter_mut().enumerate() {
            if c.frame != NO_FRAME || c.slot != NO_SLOT {
                let frame = (c.frame != NO_FRAME).then(|| frame_at(c.frame));
                out.push((i as u64, frame, (c.slot != NO_SLOT).then_some(c.slot)));
                *c = Cached::EMPTY;
            }
        }
        Ok(out)
    }

    /// Marks page `index` dirty when the entry taken out of a mapping was
    /// (`dirty`): called under the page-table lock where it was taken, so
    /// that an `msync` or close never misses it.
    pub(super) fn note_dirty(&self, index: u64, dirty: bool) {
        if dirty {
            self.mark_dirty(index);
        }
    }

    /// Its counters.
    pub(super) fn stats(&self) -> ObjectStats {
        let cache = self.cache.lock();
        let cached = cache.iter().filter(|c| c.frame != NO_FRAME).count() as u64;
        let dirty = cache
            .iter()
            .filter(|c| c.frame != NO_FRAME && c.state & DIRTY != 0)
            .count() as u64;
        let swapped = cache.iter().filter(|c| c.slot != NO_SLOT).count() as u64;
        ObjectStats {
            pages: self.pages,
            cached,
            dirty,
            swapped,
            reads: self.reads.load(Ordering::Relaxed),
            writes: self.writes.load(Ordering::Relaxed),
            errors: self.errors.load(Ordering::Relaxed),
        }
    }
}

/// The objects of a [`Vm`](super::Vm), by index: a slot keeps the
/// generation its object was made in, so an id outlives its object without
/// naming the next one there.
#[derive(Debug, Default)]
pub(super) struct Objects {
    slots: Vec<(u32, Option<Arc<VmObject>>)>,
    /// The generation of the next object (wrapping after 2^32 objects).
    next: u32,
}

impl Objects {
    /// The object `id` names, if it still exists.
    pub(super) fn get(&self, id: ObjectId) -> Option<&Arc<VmObject>> {
        match self.slots.get(id.index as usize) {
            Some((g, Some(o))) if *g == id.generation => Some(o),
            _ => None,
        }
    }

    /// The object at registry index `index`, with its id.
    pub(super) fn at(&self, index: u16) -> Option<(ObjectId, &Arc<VmObject>)> {
        match self.slots.get(index as usize) {
            Some((g, Some(o))) => Some((
                ObjectId {
                    index,
                    generation: *g,
                },
                o,
            )),
            _ => None,
        }
    }

    /// Adds `object`; `None` when 65 536 objects exist or the heap is full.
    pub(super) fn add(&mut self, object: Arc<VmObject>) -> Option<ObjectId> {
        let generation = self.next;
        let index = match self.slots.iter().position(|s| s.1.is_none()) {
            Some(i) => i,
            None => {
                u16::try_from(self.slots.len()).ok()?;
                self.slots.try_reserve(1).ok()?;
                self.slots.push((0, None));
                self.slots.len() - 1
            }
        };
        self.slots[index] = (generation, Some(object));
        self.next = generation.wrapping_add(1);
        Some(ObjectId {
            index: index as u16,
            generation,
        })
    }

    /// Removes the object `id`; the table goes with the last object.
    pub(super) fn remove(&mut self, id: ObjectId) -> Option<Arc<VmObject>> {
        let o = match self.slots.get_mut(id.index as usize) {
            Some((g, o)) if *g == id.generation => o.take(),
            _ => None,
        };
        if self.slots.iter().all(|s| s.1.is_none()) {
            self.slots = Vec::new();
        }
        o
    }
}

/// The policy's page identity of page `index` of the object at registry
/// index `object` (under the space id [`OBJECT_PAGES`]): 16 + 32 bits.
pub(super) fn object_page_id(object: u16, index: u64) -> u64 {
    (u64::from(object) << 32) | index
}

/// The space id object pages go under in the global policy (no space
/// joins with it).
pub(super) const OBJECT_PAGES: u32 = 0xffff;

/// Most pages an object may have: its page number fits 32 bits of the
/// policy's page identity.
pub(super) const MAX_OBJECT_PAGES: u64 = 1 << 32;

/// A pager behind a pointer is a pager: boxed, or shared with the kernel
/// (an `Arc`, to reach the file's own state while the vm uses it).
macro_rules! forward_pager {
    ($($ptr:ident),*) => {$(
        impl<T: Pager + ?Sized> Pager for $ptr<T> {
            fn pages(&self) -> u64 {
                (**self).pages()
            }
            fn read(&self, index: u64, page: &mut [u8; PAGE_BYTES]) -> Result<(), PagerError> {
                (**self).read(index, page)
            }
            fn write(&self, index: u64, page: &[u8; PAGE_BYTES]) -> Result<(), PagerError> {
                (**self).write(index, page)
            }
        }
    )*};
}

forward_pager!(Box, Arc);
