//! Range operations: plan (read-only, may fail), reserve table frames, commit (cannot fail).
//!
//! Because nothing is written until the plan has succeeded and every frame the commit needs
//! is in hand, a failed operation leaves tables, translations and frame counts exactly as
//! they were: rollback by construction.

use x86_64::structures::paging::{FrameDeallocator, Size4KiB};
use x86_64::{PhysAddr, VirtAddr};

use super::entry::{
    canonical, index, is_leaf, leaf_bits, span, virt_addr, ADDR_MASK, ENTRIES, HALF, HUGE,
    LINEAR_MASK, PRESENT, TABLE_FLAGS, USER,
};
use super::mapper::frame_of;
use super::reserve::Reserve;
use super::{Flush, FrameSource, LeafSize, MapFlags, Mapper, PagingError, PhysMem};
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
    /// The entry of a table at `level` that covers `a`: its end (clipped to
    /// `e`), the physical address `a` maps to, and whether one leaf of this
    /// level can map the whole entry.
    #[inline(always)]
    fn step(&self, a: u64, e: u64, level: u8) -> (u64, u64, bool) {
        let sp = span(level);
        let b = e.min((a & !(sp - 1)) + sp);
        let pa = self.pa0 + (a - self.va0);
        let whole =
            level <= self.max_level && a.is_multiple_of(sp) && b - a == sp && pa.is_multiple_of(sp);
        (b, pa, whole)
    }
}

/// What an edit (unmap or protect) does to each fully covered leaf.
#[derive(Clone, Copy)]
enum Edit {
    Unmap,
    Protect { leaf: u64 },
}

impl<P: PhysMem> Mapper<P> {
    /// Maps `len` bytes at `virt` to `phys`, each step with the largest page (up to 1 GiB)
    /// that the alignment of both addresses and the remaining length allow. Tables come from
    /// `alloc`; on any error nothing changed.
    pub fn map_range<A: FrameSource + ?Sized>(
        &mut self,
        virt: VirtAddr,
        phys: PhysAddr,
        len: u64,
        flags: MapFlags,
        alloc: &mut A,
    ) -> Result<Flush, PagingError> {
        self.map_range_with(virt, phys, len, flags, LeafSize::Size1GiB, alloc)
    }

    /// [`Mapper::map_range`] with pages no larger than `max`.
    pub fn map_range_with<A: FrameSource + ?Sized>(
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
        let (s, e) = check_range(va, len)?;
        check_phys(pa, len)?;
        let leaf = flags.checked_bits(VirtAddr::new_truncate(va))?;
        let parent = TABLE_FLAGS | (leaf & USER);
        let job = MapJob {
            va0: s,
            pa0: pa,
            leaf,
            parent,
            max_level: max.level(),
            exact,
        };
        let needed = self.plan_map(Some(self.root()), 4, s, e, &job)?;
        let mut reserve = Reserve::fill(self, alloc, needed)?;
        self.commit_map(self.root(), 4, s, e, &job, &mut reserve);
        reserve.release(self, alloc);
        Ok(Flush::none())
    }

    /// Counts the tables a map needs, or finds the first conflict. `None` is a table still to
    /// be created (all entries empty).
    fn plan_map(
        &self,
        table: Option<u64>,
        level: u8,
        s: u64,
        e: u64,
        job: &MapJob,
    ) -> Result<usize, PagingError> {
        if level == 1 {
            return self.plan_leaves(table, s, e);
        }
        let (mut a, mut needed) = (s, 0);
        while a < e {
            let (b, _, whole) = job.step(a, e, level);
            let entry = table.map_or(0, |t| self.read(t, index(a, level)));
            if entry & PRESENT == 0 {
                if !whole {
                    needed += 1 + self.plan_map(None, level - 1, a, b, job)?;
                }
            } else if is_leaf(entry, level) {
                return Err(conflict(a, span(level), entry, level, whole));
            } else if whole && job.exact {
                return Err(PagingError::TableInTheWay {
                    addr: virt_addr(a),
                    size: LeafSize::from_level(level),
                });
            } else {
                needed += self.plan_map(Some(entry & ADDR_MASK), level - 1, a, b, job)?;
            }
            a = b;
        }
        Ok(needed)
    }

    fn plan_leaves(&self, table: Option<u64>, s: u64, e: u64) -> Result<usize, PagingError> {
        let Some(t) = table else { return Ok(0) };
        let i0 = index(s, 1);
        for i in i0..i0 + ((e - s) / PAGE_SIZE) as usize {
            let entry = self.read(t, i);
            if entry & PRESENT != 0 {
                let a = (s & !(span(2) - 1)) + i as u64 * PAGE_SIZE;
                return Err(conflict(a, PAGE_SIZE, entry, 1, true));
            }
        }
        Ok(0)
    }

    fn commit_map(
        &mut self,
        table: u64,
        level: u8,
        s: u64,
        e: u64,
        job: &MapJob,
        res: &mut Reserve,
    ) {
        if level == 1 {
            return self.fill_leaves(table, s, e, (job.pa0 + (s - job.va0)) | job.leaf);
        }
        let mut a = s;
        while a < e {
            let (b, pa, whole) = job.step(a, e, level);
            let i = index(a, level);
            let entry = self.read(table, i);
            if entry & PRESENT == 0 && whole {
                self.write(table, i, pa | leaf_bits(job.leaf, level));
            } else {
                let child = if entry & PRESENT == 0 {
                    let c = res.take(self);
                    self.write(table, i, c | job.parent);
                    c
                } else {
                    self.write(table, i, entry | job.parent);
                    entry & ADDR_MASK
                };
                self.commit_map(child, level - 1, a, b, job, res);
            }
            a = b;
        }
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
    /// use kmem::paging::{LeafSize, MapFlags, Mapper};
    /// use kmem::testing::{mmu::RecordingMmu, phys_mem::EmulatedMemory};
    /// use x86_64::{PhysAddr, VirtAddr};
    ///
    /// let mem = EmulatedMemory::new(64);
    /// let mut frames = mem.frame_allocator();
    /// let mut m = Mapper::new_empty(mem.phys_mem(), &mut frames).unwrap();
    /// let mut mmu = RecordingMmu::new(m.pml4());
    /// let v = VirtAddr::new(0x4000_0000);
    /// m.map_range(v, PhysAddr::new(0x4000_0000), 0x40_0000, MapFlags::READ, &mut frames).unwrap().ignore();
    /// assert_eq!(frames.in_use(), 3); // PML4, PDPT, PD: two 2 MiB pages
    /// // Cut 4 KiB out of the first 2 MiB page: it is split into a page table.
    /// m.unmap_range(v + 0x1000u64, 0x1000, &mut frames).unwrap().flush(&mut mmu);
    /// assert_eq!(frames.in_use(), 4);
    /// assert!(m.translate(v + 0x1000u64).is_err());
    /// assert_eq!(m.translate(v + 0x2000u64).unwrap().size, LeafSize::Size4KiB);
    /// // Unmapping the rest gives every table below the PML4 back.
    /// m.unmap_range(v, 0x40_0000, &mut frames).unwrap().flush(&mut mmu);
    /// assert_eq!(frames.in_use(), 1);
    /// ```
    pub fn unmap_range<A: FrameSource + ?Sized>(
        &mut self,
        virt: VirtAddr,
        len: u64,
        alloc: &mut A,
    ) -> Result<Flush, PagingError> {
        self.edit_range(virt.as_u64(), len, Edit::Unmap, alloc)
    }

    /// Sets `flags` on every mapped page in `[virt, virt + len)`, splitting huge pages partly
    /// covered. Holes are skipped. On error nothing changed.
    pub fn protect_range<A: FrameSource + ?Sized>(
        &mut self,
        virt: VirtAddr,
        len: u64,
        flags: MapFlags,
        alloc: &mut A,
    ) -> Result<Flush, PagingError> {
        check_range(virt.as_u64(), len)?;
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
        let (s, e) = check_range(va, len)?;
        let needed = self.plan_edit(self.root(), 4, s, e);
        let mut reserve = Reserve::fill(self, alloc, needed)?;
        let mut flush = Flush::none();
        self.commit_edit(self.root(), 4, s, e, edit, &mut reserve, &mut flush, alloc);
        reserve.release(self, alloc);
        Ok(flush)
    }

    /// Table frames needed to split the huge pages the range covers only partly.
    fn plan_edit(&self, table: u64, level: u8, s: u64, e: u64) -> usize {
        if level == 1 {
            return 0; // 4 KiB leaves never split
        }
        let sp = span(level);
        let (mut a, mut needed) = (s, 0);
        while a < e {
            let b = e.min((a & !(sp - 1)) + sp);
            let entry = self.read(table, index(a, level));
            if entry & PRESENT != 0 {
                if !is_leaf(entry, level) {
                    needed += self.plan_edit(entry & ADDR_MASK, level - 1, a, b);
                } else if b - a != sp {
                    needed += 1 + split_cost(level - 1, a, b);
                }
            }
            a = b;
        }
        needed
    }

    /// Applies the edit; returns whether the table is now empty (unmap only).
    #[allow(clippy::too_many_arguments)]
    fn commit_edit<A: FrameDeallocator<Size4KiB> + ?Sized>(
        &mut self,
        table: u64,
        level: u8,
        s: u64,
        e: u64,
        edit: Edit,
        res: &mut Reserve,
        flush: &mut Flush,
        alloc: &mut A,
    ) -> bool {
        if level == 1 {
            return self.edit_leaves(table, s, e, edit, flush);
        }
        let sp = span(level);
        let mut a = s;
        // A child kept because it still holds non-present entries in use.
        let mut kept = false;
        while a < e {
            let b = e.min((a & !(sp - 1)) + sp);
            let i = index(a, level);
            let mut entry = self.read(table, i);
            if entry & PRESENT != 0 && is_leaf(entry, level) {
                if b - a == sp {
                    self.edit_leaf(table, i, entry, level, edit);
                    flush.add(canonical(a));
                    a = b;
                    continue;
                }
                entry = self.split(table, i, entry, level, res);
                flush.add(canonical(a));
            }
            if entry & PRESENT != 0 {
                let child = entry & ADDR_MASK;
                if let Edit::Protect { leaf } = edit {
                    self.write(table, i, entry | (leaf & USER));
                }
                let empty = self.commit_edit(child, level - 1, a, b, edit, res, flush, alloc);
                if empty && self.may_free(a, level - 1) {
                    debug_assert!(self.is_empty_table(child));
                    self.write(table, i, 0);
                    // SAFETY: the child table is empty and its only parent entry is now clear.
                    unsafe { alloc.deallocate_frame(frame_of(child)) };
                } else {
                    kept = true;
                }
            }
            a = b;
        }
        match edit {
            Edit::Protect { .. } => false,
            Edit::Unmap if level == 4 => false,
            Edit::Unmap if s.is_multiple_of(sp * 512) && e - s == sp * 512 => !kept,
            Edit::Unmap => self.is_empty_table(table),
        }
    }

    /// The hot loop of unmap/protect: 4 KiB leaves of one page table. Returns whether the
    /// table is now empty (unmap only).
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
            let new = match edit {
                Edit::Unmap => 0,
                Edit::Protect { leaf } => (entry & ADDR_MASK) | leaf,
            };
            // SAFETY: as above.
            unsafe { slot.write(new) };
            flush.add(canonical(s + k as u64 * PAGE_SIZE));
        }
        match edit {
            Edit::Protect { .. } => false,
            Edit::Unmap => (n == ENTRIES && !kept) || self.is_empty_table(table),
        }
    }

    fn edit_leaf(&mut self, table: u64, i: usize, entry: u64, level: u8, edit: Edit) {
        let new = match edit {
            Edit::Unmap => 0,
            Edit::Protect { leaf } => {
                (entry & ADDR_MASK & !(span(level) - 1)) | leaf_bits(leaf, level)
            }
        };
        self.write(table, i, new);
    }

    /// Replaces the huge leaf `entry` by a table of 512 leaves one level down with the same
    /// frames and flags. Returns the new entry.
    fn split(&mut self, table: u64, i: usize, entry: u64, level: u8, res: &mut Reserve) -> u64 {
        let child = res.take(self);
        let flags = entry & !ADDR_MASK & !HUGE;
        let sub = level - 1;
        let (mut pa, step) = (entry & ADDR_MASK & !(span(level) - 1), span(sub));
        for j in 0..512 {
            self.write(child, j, pa | leaf_bits(flags, sub));
            pa += step;
        }
        let new = child | TABLE_FLAGS | (flags & USER);
        self.write(table, i, new);
        new
    }
}

/// Frames to split a table of leaves at `level` for a range covering `[s, e)` of it.
fn split_cost(level: u8, s: u64, e: u64) -> usize {
    if level == 1 {
        return 0;
    }
    let sp = span(level);
    let (mut a, mut n) = (s, 0);
    while a < e {
        let b = e.min((a & !(sp - 1)) + sp);
        if b - a != sp {
            n += 1 + split_cost(level - 1, a, b);
        }
        a = b;
    }
    n
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

/// Validates a virtual range; returns it as 48-bit linear `[s, e)` within one half.
pub(crate) fn check_range(va: u64, len: u64) -> Result<(u64, u64), PagingError> {
    if canonical(va) != va {
        return Err(PagingError::NonCanonical { addr: va });
    }
    if !va.is_multiple_of(PAGE_SIZE) {
        return Err(PagingError::Misaligned {
            value: va,
            align: PAGE_SIZE,
        });
    }
    if len == 0 {
        return Err(PagingError::InvalidLength { len });
    }
    if !len.is_multiple_of(PAGE_SIZE) {
        return Err(PagingError::Misaligned {
            value: len,
            align: PAGE_SIZE,
        });
    }
    let s = va & LINEAR_MASK;
    let limit = if s < HALF { HALF } else { LINEAR_MASK + 1 };
    if len > limit - s {
        return Err(PagingError::NonCanonical {
            addr: va.wrapping_add(len),
        });
    }
    Ok((s, s + len))
}

fn check_phys(pa: u64, len: u64) -> Result<(), PagingError> {
    if pa >= PHYS_LIMIT {
        return Err(PagingError::InvalidPhysAddr { addr: pa });
    }
    if !pa.is_multiple_of(PAGE_SIZE) {
        return Err(PagingError::Misaligned {
            value: pa,
            align: PAGE_SIZE,
        });
    }
    if len > PHYS_LIMIT - pa {
        return Err(PagingError::InvalidLength { len });
    }
    Ok(())
}
