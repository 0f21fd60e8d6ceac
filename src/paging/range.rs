//! Range operations: plan (read-only, may fail), reserve table frames, commit (cannot fail).
//!
//! Because nothing is written until the plan has succeeded and every frame the commit needs
//! is in hand, a failed operation leaves tables, translations and frame counts exactly as
//! they were: rollback by construction.

use core::convert::Infallible;

use x86_64::structures::paging::{FrameDeallocator, Size4KiB};
use x86_64::{PhysAddr, VirtAddr};

use super::entry::{
    canonical, index, is_leaf, leaf_bits, span, virt_addr, ACCESSED_DIRTY, ADDR_MASK, HALF, HUGE,
    LINEAR_MASK, PRESENT, TABLE_FLAGS, USER,
};
use super::page_tables::frame_of;
use super::reserve::Reserve;
use super::visit::{walk, Slot, Step, Visitor};
use super::{Flush, FrameSource, LeafSize, MapFlags, PageTables, PagingError, PhysMem};
use crate::{PAGE_SIZE, PHYS_LIMIT};

/// What a map commit writes.
struct MapJob {
    va0: u64,
    pa0: u64,
    leaf: u64,
    parent: u64,
    max_level: u8,
    /// Single-page map: a table where the leaf belongs is an error, not a place to descend.
    exact: bool,
}

impl MapJob {
    /// The physical address the range part of `slot` starts at, and whether one leaf of
    /// its level can map the whole entry.
    #[inline(always)]
    fn leaf_for(&self, slot: &Slot) -> (u64, bool) {
        let sp = span(slot.level);
        let pa = self.pa0 + (slot.start - self.va0);
        let whole = slot.level <= self.max_level && slot.whole() && pa.is_multiple_of(sp);
        (pa, whole)
    }
}

/// What an edit (unmap or protect) does to each fully covered leaf.
#[derive(Clone, Copy)]
enum Edit {
    Unmap,
    Protect { leaf: u64 },
}

/// A table the plan walks into that does not exist: a table still to be created (every
/// entry empty) for a map plan, a huge page to be split (every entry a huge leaf) for an
/// edit plan. Never a frame address: those are page-aligned.
const PLANNED: u64 = u64::MAX;

impl<P: PhysMem> PageTables<P> {
    /// Maps `len` bytes at `virt` to `phys`, each step with the largest page (up to 1 GiB)
    /// that the alignment of both addresses and the remaining length allow. Tables come from
    /// `alloc`; on any error nothing changed.
    ///
    /// # Safety
    /// On tables a CPU may use (active now, or loaded later), the new
    /// mapping must not let code reach memory in a way Rust's rules forbid:
    /// no frame that is in use as something else (a page table, the kernel
    /// image, a heap or stack page, another mapping's private frame) mapped
    /// writable or user-accessible, no device memory mapped by mistake. The
    /// `x86_64` crate's `Mapper::map_to` has the same contract.
    pub unsafe fn map_range<A: FrameSource + ?Sized>(
        &mut self,
        virt: VirtAddr,
        phys: PhysAddr,
        len: u64,
        flags: MapFlags,
        alloc: &mut A,
    ) -> Result<Flush, PagingError> {
        // SAFETY: the caller's promise, forwarded (same contract).
        unsafe { self.map_range_with(virt, phys, len, flags, LeafSize::Size1GiB, alloc) }
    }

    /// [`PageTables::map_range`] with pages no larger than `max`.
    ///
    /// # Safety
    /// As [`map_range`](Self::map_range).
    pub unsafe fn map_range_with<A: FrameSource + ?Sized>(
        &mut self,
        virt: VirtAddr,
        phys: PhysAddr,
        len: u64,
        flags: MapFlags,
        max: LeafSize,
        alloc: &mut A,
    ) -> Result<Flush, PagingError> {
        self.map_range_inner(virt.as_u64(), phys.as_u64(), len, flags, max, false, alloc)
    }

    #[allow(clippy::too_many_arguments)]
    pub(crate) fn map_range_inner<A: FrameSource + ?Sized>(
        &mut self,
        va: u64,
        pa: u64,
        len: u64,
        flags: MapFlags,
        max: LeafSize,
        exact: bool,
        alloc: &mut A,
    ) -> Result<Flush, PagingError> {
        let (s, e) = check_range(va, Some(pa), len)?;
        let leaf = flags.checked_bits(VirtAddr::new_truncate(va))?;
        let job = MapJob {
            va0: s,
            pa0: pa,
            leaf,
            parent: TABLE_FLAGS | (leaf & USER),
            max_level: max.level(),
            exact,
        };
        let root = self.root();
        let mut plan = PlanMap {
            job: &job,
            needed: 0,
        };
        walk(&mut &*self, &mut plan, root, 4, s, e)?;
        let mut reserve = Reserve::fill(self, alloc, plan.needed)?;
        let mut commit = CommitMap {
            job: &job,
            reserve: &mut reserve,
        };
        let Ok(()) = walk(&mut &mut *self, &mut commit, root, 4, s, e);
        reserve.free_unused(self, alloc);
        Ok(Flush::none())
    }

    /// The hot loop: consecutive 4 KiB leaves with consecutive frames.
    #[inline]
    fn fill_leaves(&mut self, table: u64, s: u64, e: u64, first: u64) {
        let p = self.ptr(table);
        let i0 = index(s, 1);
        let mut v = first;
        for i in i0..i0 + ((e - s) / PAGE_SIZE) as usize {
            // SAFETY: `table` is a page table of this hierarchy; `i < 512` since [s, e) lies
            // within the 2 MiB this table covers.
            unsafe { p.add(i).write(v) };
            v += PAGE_SIZE;
        }
    }

    /// Unmaps every page in `[virt, virt + len)`, skipping holes; huge pages partly covered are
    /// split first (their frames for tables come from `alloc`), tables left empty go back to
    /// `alloc`. Mapped frames are not freed. On error nothing changed.
    ///
    /// ```
    /// # #[cfg(feature = "testing")]
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// use kmem::paging::{LeafSize, MapFlags, PageTables};
    /// use kmem::testing::{mmu::RecordingMmu, phys_mem::EmulatedMemory};
    /// use x86_64::{PhysAddr, VirtAddr};
    ///
    /// let mem = EmulatedMemory::new(64);
    /// let mut frames = mem.frame_allocator();
    /// let mut m = PageTables::new_empty(mem.phys_mem(), &mut frames).unwrap();
    /// let mut mmu = RecordingMmu::new(m.pml4());
    /// let v = VirtAddr::new(0x4000_0000);
    /// // SAFETY: example tables, mapping frames no Rust object uses.
    /// unsafe { m.map_range(v, PhysAddr::new(0x4000_0000), 0x40_0000, MapFlags::READ, &mut frames) }.unwrap().ignore();
    /// assert_eq!(frames.in_use(), 3); // PML4, PDPT, PD: two 2 MiB pages
    /// // Cut 4 KiB out of the first 2 MiB page: it is split into a page table.
    /// // SAFETY: example tables, mapping frames no Rust object uses.
    /// unsafe { m.unmap_range(v + 0x1000u64, 0x1000, &mut frames) }.unwrap().flush(&mut mmu);
    /// assert_eq!(frames.in_use(), 4);
    /// assert!(m.translate(v + 0x1000u64).is_err());
    /// assert_eq!(m.translate(v + 0x2000u64).unwrap().size, LeafSize::Size4KiB);
    /// // Unmapping the rest gives every table below the PML4 back.
    /// // SAFETY: example tables, mapping frames no Rust object uses.
    /// unsafe { m.unmap_range(v, 0x40_0000, &mut frames) }.unwrap().flush(&mut mmu);
    /// assert_eq!(frames.in_use(), 1);
    /// # Ok(())
    /// # }
    /// # #[cfg(not(feature = "testing"))]
    /// # fn main() {}
    /// ```
    ///
    /// # Safety
    /// On tables a CPU may use, nothing may still use the pages (no
    /// reference into them, no stack or heap on them); the caller flushes
    /// (or shoots down) the returned token before reusing what they mapped.
    pub unsafe fn unmap_range<A: FrameSource + ?Sized>(
        &mut self,
        virt: VirtAddr,
        len: u64,
        alloc: &mut A,
    ) -> Result<Flush, PagingError> {
        self.edit_range(virt.as_u64(), len, Edit::Unmap, alloc)
    }

    /// Sets `flags` on every mapped page in `[virt, virt + len)`, splitting huge pages partly
    /// covered. Holes are skipped. On error nothing changed.
    ///
    /// # Safety
    /// As for a new mapping of the same frames with `flags` (see
    /// [`map`](Self::map)); taking a right away from pages in use is the
    /// caller's to order with their users.
    pub unsafe fn protect_range<A: FrameSource + ?Sized>(
        &mut self,
        virt: VirtAddr,
        len: u64,
        flags: MapFlags,
        alloc: &mut A,
    ) -> Result<Flush, PagingError> {
        check_range(virt.as_u64(), None, len)?;
        let leaf = flags.checked_bits(virt)?;
        self.edit_range(virt.as_u64(), len, Edit::Protect { leaf }, alloc)
    }

    fn edit_range<A: FrameSource + ?Sized>(
        &mut self,
        va: u64,
        len: u64,
        edit: Edit,
        alloc: &mut A,
    ) -> Result<Flush, PagingError> {
        let (s, e) = check_range(va, None, len)?;
        let root = self.root();
        let mut plan = PlanEdit { needed: 0 };
        let Ok(()) = walk(&mut &*self, &mut plan, root, 4, s, e);
        let mut reserve = Reserve::fill(self, alloc, plan.needed)?;
        let mut flush = Flush::none();
        let mut commit = CommitEdit {
            edit,
            reserve: &mut reserve,
            flush: &mut flush,
            alloc,
            kept: [false; 5],
        };
        let Ok(()) = walk(&mut &mut *self, &mut commit, root, 4, s, e);
        reserve.free_unused(self, alloc);
        Ok(flush)
    }

    /// The hot loop of unmap/protect: 4 KiB leaves of one page table. Returns whether a
    /// non-present entry in use (a swap slot) was met: it stays, and keeps the table.
    fn edit_leaves(&mut self, table: u64, s: u64, e: u64, edit: Edit, flush: &mut Flush) -> bool {
        let p = self.ptr(table);
        let (i0, n) = (index(s, 1), ((e - s) / PAGE_SIZE) as usize);
        // Non-present entries in use (swap slots) stay, and keep the table.
        let mut kept = false;
        for k in 0..n {
            // SAFETY: `table` is a page table of this hierarchy and `i0 + k < 512` since
            // [s, e) lies within the 2 MiB it covers.
            let slot = unsafe { p.add(i0 + k) };
            // SAFETY: as above.
            let entry = unsafe { slot.read() };
            if entry & PRESENT == 0 {
                kept |= entry != 0;
                continue;
            }
            match edit {
                // The data goes with the mapping: a Dirty bit set meanwhile does not matter.
                // SAFETY: as above.
                Edit::Unmap => unsafe { slot.write(0) },
                Edit::Protect { leaf } => {
                    self.update(table, i0 + k, |e| {
                        (e & ADDR_MASK) | leaf | (e & ACCESSED_DIRTY)
                    });
                }
            }
            flush.add(canonical(s + k as u64 * PAGE_SIZE));
        }
        kept
    }

    fn edit_leaf(&mut self, table: u64, i: usize, entry: u64, level: u8, edit: Edit) {
        match edit {
            Edit::Unmap => self.write(table, i, 0),
            Edit::Protect { leaf } => {
                let frame = entry & ADDR_MASK & !(span(level) - 1);
                self.update(table, i, |e| {
                    frame | leaf_bits(leaf, level) | (e & ACCESSED_DIRTY)
                });
            }
        }
    }

    /// Replaces the huge leaf `entry` by a table of 512 leaves one level down with the same
    /// frames and flags. Returns the new entry.
    pub(super) fn split(
        &mut self,
        table: u64,
        i: usize,
        entry: u64,
        level: u8,
        res: &mut Reserve,
    ) -> u64 {
        let child = res.take(self);
        let flags = entry & !ADDR_MASK & !HUGE;
        let sub = level - 1;
        let (mut pa, step) = (entry & ADDR_MASK & !(span(level) - 1), span(sub));
        for j in 0..512 {
            self.write(child, j, pa | leaf_bits(flags, sub));
            pa += step;
        }
        let new = child | TABLE_FLAGS | (flags & USER);
        // Atomic: Accessed or Dirty set on the huge page since `entry` was
        // read carry over to every page of the split.
        let old = self.exchange(table, i, new);
        let late = old & !entry & ACCESSED_DIRTY;
        if late != 0 {
            for j in 0..512 {
                self.fetch_or(child, j, late);
            }
        }
        new
    }
}

/// The error for a leaf found in the way of a map.
fn conflict(a: u64, sp: u64, entry: u64, level: u8, same_size: bool) -> PagingError {
    let start = a & !(sp - 1);
    let frame = PhysAddr::new_truncate(entry & ADDR_MASK & !(sp - 1));
    let size = LeafSize::from_level(level);
    if same_size || level == 1 {
        PagingError::AlreadyMapped {
            addr: virt_addr(start),
            frame,
            size,
        }
    } else {
        PagingError::HugePageInTheWay {
            addr: virt_addr(start),
            frame,
            size,
        }
    }
}

/// Validates `len` bytes at `va` and, for a map, at `pa`: canonical, page-aligned starts, a
/// non-zero page-multiple length, an end in the half of `va` and within the 52-bit physical
/// address space. Returns the range as 48-bit linear `[s, e)`.
pub(crate) fn check_range(va: u64, pa: Option<u64>, len: u64) -> Result<(u64, u64), PagingError> {
    let addr = VirtAddr::try_new(va).map_err(|e| PagingError::NonCanonical { addr: e.0 })?;
    if !va.is_multiple_of(PAGE_SIZE) {
        return Err(PagingError::MisalignedVirtAddr {
            addr,
            align: PAGE_SIZE,
        });
    }
    if len == 0 {
        return Err(PagingError::InvalidLength { len });
    }
    if !len.is_multiple_of(PAGE_SIZE) {
        return Err(PagingError::MisalignedLength {
            len,
            align: PAGE_SIZE,
        });
    }
    let s = va & LINEAR_MASK;
    let limit = if s < HALF { HALF } else { LINEAR_MASK + 1 };
    if len > limit - s {
        let addr = va.wrapping_add(len);
        return Err(PagingError::NonCanonical { addr });
    }
    if let Some(pa) = pa {
        let addr = PhysAddr::try_new(pa).map_err(|e| PagingError::InvalidPhysAddr { addr: e.0 })?;
        if !pa.is_multiple_of(PAGE_SIZE) {
            return Err(PagingError::MisalignedPhysAddr {
                addr,
                align: PAGE_SIZE,
            });
        }
        if len > PHYS_LIMIT - pa {
            return Err(PagingError::InvalidLength { len });
        }
    }
    Ok((s, s + len))
}

/// A map's plan: counts the tables the map needs, or finds the first conflict.
struct PlanMap<'a> {
    job: &'a MapJob,
    needed: usize,
}

impl<P: PhysMem> Visitor<P, &PageTables<P>> for PlanMap<'_> {
    type Stop = PagingError;

    #[inline(always)]
    fn read(&self, m: &&PageTables<P>, table: u64, i: usize) -> u64 {
        if table == PLANNED {
            0
        } else {
            m.read(table, i)
        }
    }

    #[inline(always)]
    fn enter(&mut self, _m: &mut &PageTables<P>, slot: &Slot) -> Result<Step, PagingError> {
        let (entry, level) = (slot.entry, slot.level);
        let (_, whole) = self.job.leaf_for(slot);
        if entry & PRESENT == 0 {
            if whole {
                return Ok(Step::Next);
            }
            self.needed += 1;
            return Ok(Step::Descend(PLANNED));
        }
        if is_leaf(entry, level) {
            return Err(conflict(slot.start, span(level), entry, level, whole));
        }
        if whole && self.job.exact {
            return Err(PagingError::TableInTheWay {
                addr: virt_addr(slot.start),
                size: LeafSize::from_level(level),
            });
        }
        Ok(Step::Descend(entry & ADDR_MASK))
    }

    fn page_table(
        &mut self,
        m: &mut &PageTables<P>,
        slot: &Slot,
        t: u64,
    ) -> Result<(), PagingError> {
        if t == PLANNED {
            return Ok(());
        }
        let (s, e) = (slot.start, slot.end);
        let i0 = index(s, 1);
        for i in i0..i0 + ((e - s) / PAGE_SIZE) as usize {
            let entry = m.read(t, i);
            if entry & PRESENT != 0 {
                let a = (s & !(span(2) - 1)) + i as u64 * PAGE_SIZE;
                return Err(conflict(a, PAGE_SIZE, entry, 1, true));
            }
        }
        Ok(())
    }
}

/// A map's commit: writes leaves and links new tables, which the reserve holds.
struct CommitMap<'a> {
    job: &'a MapJob,
    reserve: &'a mut Reserve,
}

impl<P: PhysMem> Visitor<P, &mut PageTables<P>> for CommitMap<'_> {
    type Stop = Infallible;

    #[inline(always)]
    fn enter(&mut self, m: &mut &mut PageTables<P>, slot: &Slot) -> Result<Step, Infallible> {
        let (entry, table, i) = (slot.entry, slot.table, slot.index);
        let (pa, whole) = self.job.leaf_for(slot);
        if entry & PRESENT == 0 && whole {
            m.write(table, i, pa | leaf_bits(self.job.leaf, slot.level));
            return Ok(Step::Next);
        }
        let child = if entry & PRESENT == 0 {
            let c = self.reserve.take(m);
            m.write(table, i, c | self.job.parent);
            c
        } else {
            // Written only when a bit is missing: every CPU mapping in this
            // hierarchy reads the upper tables, and a store would take their
            // cache lines away from all of them.
            if entry | self.job.parent != entry {
                m.write(table, i, entry | self.job.parent);
            }
            entry & ADDR_MASK
        };
        Ok(Step::Descend(child))
    }

    #[inline(always)]
    fn page_table(
        &mut self,
        m: &mut &mut PageTables<P>,
        s: &Slot,
        t: u64,
    ) -> Result<(), Infallible> {
        let first = (self.job.pa0 + (s.start - self.job.va0)) | self.job.leaf;
        m.fill_leaves(t, s.start, s.end, first);
        Ok(())
    }
}

/// An edit's plan: counts the table frames to split the huge pages the range covers only
/// partly.
struct PlanEdit {
    needed: usize,
}

impl<P: PhysMem> Visitor<P, &PageTables<P>> for PlanEdit {
    type Stop = Infallible;

    #[inline(always)]
    fn read(&self, m: &&PageTables<P>, table: u64, i: usize) -> u64 {
        if table == PLANNED {
            PRESENT | HUGE
        } else {
            m.read(table, i)
        }
    }

    #[inline(always)]
    fn enter(&mut self, _m: &mut &PageTables<P>, slot: &Slot) -> Result<Step, Infallible> {
        let entry = slot.entry;
        if entry & PRESENT == 0 {
            return Ok(Step::Next);
        }
        if !is_leaf(entry, slot.level) {
            return Ok(Step::Descend(entry & ADDR_MASK));
        }
        if slot.whole() {
            return Ok(Step::Next);
        }
        self.needed += 1;
        Ok(Step::Descend(PLANNED))
    }

    #[inline(always)]
    fn page_table(&mut self, _: &mut &PageTables<P>, _: &Slot, _: u64) -> Result<(), Infallible> {
        Ok(()) // 4 KiB leaves never split
    }
}

/// An edit's commit: edits whole leaves, splits partly covered huge pages, frees the tables
/// an unmap leaves empty.
struct CommitEdit<'a, A: ?Sized> {
    edit: Edit,
    reserve: &'a mut Reserve,
    flush: &'a mut Flush,
    alloc: &'a mut A,
    /// Per level, whether the table being walked there keeps an entry in use that the edit
    /// did not clear (a child table, a swap slot).
    kept: [bool; 5],
}

impl<P, A> Visitor<P, &mut PageTables<P>> for CommitEdit<'_, A>
where
    P: PhysMem,
    A: FrameDeallocator<Size4KiB> + ?Sized,
{
    type Stop = Infallible;

    #[inline(always)]
    fn enter(&mut self, m: &mut &mut PageTables<P>, slot: &Slot) -> Result<Step, Infallible> {
        let (level, table, i, a) = (slot.level, slot.table, slot.index, slot.start);
        let mut entry = slot.entry;
        if entry & PRESENT == 0 {
            return Ok(Step::Next);
        }
        if is_leaf(entry, level) {
            if slot.whole() {
                m.edit_leaf(table, i, entry, level, self.edit);
                self.flush.add(canonical(a));
                return Ok(Step::Next);
            }
            entry = m.split(table, i, entry, level, self.reserve);
            self.flush.add(canonical(a));
        }
        if let Edit::Protect { leaf } = self.edit {
            m.write(table, i, entry | (leaf & USER));
        }
        self.kept[usize::from(level) - 1] = false;
        Ok(Step::Descend(entry & ADDR_MASK))
    }

    #[inline(always)]
    fn leave(
        &mut self,
        m: &mut &mut PageTables<P>,
        slot: &Slot,
        child: u64,
    ) -> Result<(), Infallible> {
        let level = slot.level;
        let empty = match self.edit {
            Edit::Protect { .. } => false,
            // A wholly covered child is empty unless something in it was kept.
            Edit::Unmap if slot.whole() => !self.kept[usize::from(level) - 1],
            Edit::Unmap => m.is_empty_table(child),
        };
        if empty && m.may_free(slot.start, level - 1) {
            debug_assert!(m.is_empty_table(child));
            m.write(slot.table, slot.index, 0);
            // Paging-structure caches may hold the entry that pointed at the table: an
            // invalidation inside its range drops it (SDM vol. 3, 4.10.4.1), even when no
            // leaf was present to flush.
            self.flush.add(canonical(slot.start));
            // SAFETY: the child table is empty and its only parent entry is now clear.
            unsafe { self.alloc.deallocate_frame(frame_of(child)) };
        } else {
            self.kept[usize::from(level)] = true;
        }
        Ok(())
    }

    #[inline(always)]
    fn page_table(
        &mut self,
        m: &mut &mut PageTables<P>,
        s: &Slot,
        t: u64,
    ) -> Result<(), Infallible> {
        self.kept[1] = m.edit_leaves(t, s.start, s.end, self.edit, self.flush);
        Ok(())
    }
}
