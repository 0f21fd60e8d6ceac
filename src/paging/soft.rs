//! Non-present 4 KiB entries that hold a value for the kernel (a swap
//! slot): the CPU ignores every bit of an entry whose present bit is
//! clear, and the mapper keeps such an entry (and its table) until the
//! kernel takes it back. An entry value must be non-zero with bit 0 clear.

use core::convert::Infallible;

use x86_64::VirtAddr;

use super::entry::{
    index, is_leaf, virt_addr, ACCESSED, ACCESSED_DIRTY, ADDR_MASK, DIRTY, LINEAR_MASK, PRESENT,
    USER,
};
use super::visit::{linear_range, walk, Slot, Step, Visitor};
use super::{MapFlags, PageTables, PagingError, PhysMem};
use x86_64::structures::paging::PhysFrame;

impl<P: PhysMem> PageTables<P> {
    /// The page table and index of the 4 KiB entry of `va`, when the page
    /// table exists (no huge page on the way).
    fn pte_slot(&self, va: VirtAddr) -> Option<(u64, usize)> {
        let lin = va.as_u64() & LINEAR_MASK;
        let path = self.path_to(lin, 1).ok()?;
        Some((path[1], index(lin, 1)))
    }

    /// The kernel value in the non-present 4 KiB entry of `va`, if any.
    pub(crate) fn soft_entry(&self, va: VirtAddr) -> Option<u64> {
        let (t, i) = self.pte_slot(va)?;
        let e = self.read(t, i);
        (e != 0 && e & PRESENT == 0).then_some(e)
    }

    /// Replaces the 4 KiB entry of `va` (present, soft or empty; its page table must exist)
    /// with `value` in one atomic exchange, and returns the entry replaced: its Dirty bit
    /// includes every write made through it before the exchange. A present entry replaced
    /// still needs its TLB entries invalidated. Needs no frame.
    pub(crate) fn exchange_pte(&mut self, va: VirtAddr, value: u64) -> Result<u64, PagingError> {
        let (t, i) = self
            .pte_slot(va)
            .ok_or(PagingError::NotMapped { addr: va })?;
        Ok(self.exchange(t, i, value))
    }

    /// Points the 4 KiB entry of `va` at `frame` with `flags` in one atomic
    /// compare-exchange, if the entry is still `expect` (Accessed and Dirty
    /// aside, which the CPU may have set): the fast path of a fault, one
    /// walk and one write. `Ok(Some(old))` with the entry replaced,
    /// `Ok(None)` when it changed meanwhile, `Err` when the slow path
    /// ([`map`](Self::map), [`remap`](Self::remap)) is needed: no page table
    /// yet, or a table above without the user bit `flags` needs. A present
    /// `expect` replaced still needs its TLB entries invalidated.
    pub(crate) fn replace_pte(
        &mut self,
        va: VirtAddr,
        expect: u64,
        frame: PhysFrame,
        flags: MapFlags,
    ) -> Result<Option<u64>, PagingError> {
        let bits = flags.checked_bits(va)?;
        let lin = va.as_u64() & LINEAR_MASK;
        let path = self
            .path_to(lin, 1)
            .map_err(|_| PagingError::NotMapped { addr: va })?;
        if bits & USER != 0
            && (2..=4).any(|l| self.read(path[l as usize], index(lin, l)) & USER == 0)
        {
            return Err(PagingError::NotMapped { addr: va });
        }
        let new = frame.start_address().as_u64() | bits;
        let (t, i) = (path[1], index(lin, 1));
        let old = self.update(t, i, |e| if same_entry(e, expect) { new } else { e });
        Ok(same_entry(old, expect).then_some(old))
    }

    /// Marks the soft (non-present, non-zero) 4 KiB entry of `va` with
    /// `mark` in one walk and one atomic update, unless it is marked
    /// already; returns the entry before, or `None` when there is no soft
    /// entry or it carries `mark`.
    pub(crate) fn mark_soft(&mut self, va: VirtAddr, mark: u64) -> Option<u64> {
        let (t, i) = self.pte_slot(va)?;
        let e = self.read(t, i);
        if e == 0 || e & PRESENT != 0 || e & mark != 0 {
            return None;
        }
        // Non-present: the CPU never writes it, kmem only under the lock.
        self.write(t, i, e | mark);
        Some(e)
    }

    /// The raw 4 KiB leaf entry of `va` when it is present.
    pub(crate) fn leaf_entry(&self, va: VirtAddr) -> Option<u64> {
        let (t, i) = self.pte_slot(va)?;
        let e = self.read(t, i);
        (e & PRESENT != 0).then_some(e)
    }

    /// Clears the Accessed bit of the 4 KiB leaf of `va`; returns whether
    /// it was set (the page was referenced since the last clear). The TLB
    /// entry must be flushed for the next reference to set it again.
    pub(crate) fn clear_accessed(&self, va: VirtAddr) -> bool {
        let Some((t, i)) = self.pte_slot(va) else {
            return false;
        };
        if self.read(t, i) & (PRESENT | ACCESSED) != PRESENT | ACCESSED {
            return false;
        }
        // One atomic and: a Dirty bit another CPU sets meanwhile stays.
        let old = self.fetch_and(t, i, !ACCESSED);
        old & PRESENT != 0 && old & ACCESSED != 0
    }

    /// Clears the Dirty bit of the 4 KiB leaf of `va`; returns whether it
    /// was set (the page was written since the last clear). The TLB entry
    /// must be flushed before the page's contents are taken as clean: a
    /// CPU caching it dirty writes without setting the bit again.
    pub(crate) fn clear_dirty(&self, va: VirtAddr) -> bool {
        let Some((t, i)) = self.pte_slot(va) else {
            return false;
        };
        if self.read(t, i) & (PRESENT | DIRTY) != PRESENT | DIRTY {
            return false;
        }
        // One atomic and: an Accessed bit another CPU sets meanwhile stays.
        let old = self.fetch_and(t, i, !DIRTY);
        old & PRESENT != 0 && old & DIRTY != 0
    }

    /// What the MMU does on an access through the 4 KiB leaf of `va`: sets
    /// Accessed in every entry of the walk, and Dirty in the leaf for a
    /// write. For emulated CPUs in tests.
    #[cfg(any(test, feature = "testing"))]
    pub fn simulate_access(&mut self, va: VirtAddr, write: bool) {
        let lin = va.as_u64() & LINEAR_MASK;
        let Ok(path) = self.path_to(lin, 1) else {
            return;
        };
        let (t, i) = (path[1], index(lin, 1));
        if self.read(t, i) & PRESENT != 0 {
            for level in 2..=4u8 {
                self.fetch_or(path[level as usize], index(lin, level), ACCESSED);
            }
            self.fetch_or(t, i, ACCESSED | if write { super::entry::DIRTY } else { 0 });
        }
    }

    /// The first step of a harvest of Accessed bits (the idea of Linux's
    /// MGLRU walks): from `start` up to `end`, each page table of 4 KiB
    /// leaves whose directory entry has Accessed clear is skipped (the CPU
    /// sets that bit on every walk through it, so no leaf below was
    /// reached since the last harvest cleared it); one whose bit is set
    /// has it cleared and its first address put in `young`, until `young`
    /// is full. The caller must then invalidate one address of each young
    /// table on every CPU that may use these tables (`invlpg` drops every
    /// paging-structure cache entry, so no CPU goes on walking through a
    /// cached copy of the entry without setting it again) before it scans
    /// them with [`harvest_leaves`](Self::harvest_leaves). Returns how
    /// many were put in `young`, where to go on from, and the tables
    /// skipped.
    pub(crate) fn young_tables(
        &self,
        start: u64,
        end: u64,
        young: &mut [u64],
    ) -> (usize, u64, usize) {
        let (mut lin, hi) = (start & LINEAR_MASK & !0xfff, end & LINEAR_MASK);
        let hi = if end != 0 && hi == 0 { 1 << 48 } else { hi };
        let (mut n, mut skipped) = (0, 0);
        while lin < hi && n < young.len() {
            let path = match self.path_to(lin, 1) {
                Ok(path) => path,
                Err((level, _)) => {
                    // Nothing mapped below this entry: on to the next one.
                    let span = 1u64 << (12 + 9 * u32::from(level - 1));
                    lin = (lin | (span - 1)).saturating_add(1);
                    continue;
                }
            };
            let (pd, slot) = (path[2], index(lin, 2));
            if self.fetch_and(pd, slot, !ACCESSED) & ACCESSED == 0 {
                skipped += 1;
            } else {
                young[n] = lin & !((1 << 21) - 1);
                n += 1;
            }
            lin = (lin | ((1 << 21) - 1)).saturating_add(1);
        }
        (n, lin.min(hi), skipped)
    }

    /// The second step: clears the Accessed bit of every present leaf of
    /// the page table that maps the 2 MiB at linear address `table` (from
    /// [`young_tables`](Self::young_tables)) and calls `f` with each leaf
    /// that had it set and its frame; returns the present leaves looked at.
    /// Leaves with any bit of `keep` set keep their Accessed bit (a page
    /// under write-out: its owner reads the bit to know whether a CPU
    /// cached it). The caller invalidates the leaves reported.
    pub(crate) fn harvest_leaves(
        &self,
        table: u64,
        keep: u64,
        mut f: impl FnMut(VirtAddr, PhysFrame),
    ) -> usize {
        let Ok(path) = self.path_to(table, 1) else {
            return 0;
        };
        let pt = path[1];
        let mut scanned = 0;
        for i in 0..512usize {
            let e = self.read(pt, i);
            if e & PRESENT == 0 {
                continue;
            }
            scanned += 1;
            if e & ACCESSED == 0 || e & keep != 0 {
                continue;
            }
            let old = self.fetch_and(pt, i, !ACCESSED);
            if old & PRESENT != 0 && old & ACCESSED != 0 {
                let frame = PhysFrame::containing_address(x86_64::PhysAddr::new(old & ADDR_MASK));
                f(virt_addr(table + i as u64 * 4096), frame);
            }
        }
        scanned
    }

    /// Calls `f` with every soft entry in `[start, start + len)` (4 KiB
    /// steps) and clears it. Tables stay: an unmap of the range frees them.
    pub(crate) fn take_soft_entries(
        &mut self,
        start: VirtAddr,
        len: u64,
        mut f: impl FnMut(VirtAddr, u64),
    ) {
        let this = &*self;
        this.walk_soft(start, len, |table, i, va, e| {
            // SAFETY: `&mut self` makes this the only writer of the hierarchy;
            // `table` is one of its page tables and `i < 512`.
            unsafe { this.ptr(table).add(i).write(0) };
            f(va, e);
        });
    }

    /// Calls `f` with every soft entry in `[start, start + len)`.
    pub(crate) fn for_each_soft_entry(
        &self,
        start: VirtAddr,
        len: u64,
        mut f: impl FnMut(VirtAddr, u64),
    ) {
        self.walk_soft(start, len, |_, _, va, e| f(va, e));
    }

    /// The walk of both: page tables that exist, 4 KiB entries that are
    /// soft, with their table and index.
    fn walk_soft(&self, start: VirtAddr, len: u64, f: impl FnMut(u64, usize, VirtAddr, u64)) {
        let (lo, hi) = linear_range(start, len);
        let Ok(()) = walk(&mut &*self, &mut SoftVisitor { f }, self.root(), 4, lo, hi);
    }
}

/// Whether entry `e` is `expect` but for Accessed and Dirty, which the CPU
/// may set at any time.
pub(crate) fn same_entry(e: u64, expect: u64) -> bool {
    (e ^ expect) & !ACCESSED_DIRTY == 0
}

/// Finds the soft entries of the page tables that exist.
struct SoftVisitor<F> {
    f: F,
}

impl<P, F> Visitor<P, &PageTables<P>> for SoftVisitor<F>
where
    P: PhysMem,
    F: FnMut(u64, usize, VirtAddr, u64),
{
    type Stop = Infallible;

    fn enter(&mut self, _m: &mut &PageTables<P>, slot: &Slot) -> Result<Step, Infallible> {
        let e = slot.entry;
        if slot.level == 1 {
            if e != 0 && e & PRESENT == 0 {
                (self.f)(slot.table, slot.index, virt_addr(slot.start), e);
            }
            return Ok(Step::Next);
        }
        Ok(match e & PRESENT != 0 && !is_leaf(e, slot.level) {
            true => Step::Descend(e & ADDR_MASK),
            false => Step::Next,
        })
    }
}
