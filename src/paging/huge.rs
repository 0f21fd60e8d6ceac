//! 2 MiB leaves as the virtual-memory layer's transparent huge pages use
//! them: whether a 2 MiB slot is empty, the 2 MiB leaves of a range, their
//! Accessed bit, and splitting one into 512 4 KiB leaves.

use core::convert::Infallible;

use x86_64::VirtAddr;

use super::entry::{
    canonical, index, is_leaf, ACCESSED, ADDR_MASK, DIRTY, LINEAR_MASK, PRESENT, WRITABLE,
};
use super::reserve::Reserve;
use super::visit::{linear_range, walk, Slot, Step, Visitor};
use super::{Flush, FrameSource, PageTables, PagingError, PhysMem};

/// Bytes a 2 MiB leaf maps.
const HUGE: u64 = 2 << 20;

impl<P: PhysMem> PageTables<P> {
    /// Calls `f` with the address and entry of every 2 MiB leaf that
    /// `[start, start + len)` touches, walking directories only (never a
    /// page table): the cost follows the directories, not the pages mapped.
    pub(crate) fn for_each_huge_in(&self, start: VirtAddr, len: u64, f: impl FnMut(VirtAddr, u64)) {
        let (lo, hi) = linear_range(start, len);
        if hi <= lo {
            return;
        }
        let mut v = Huge(f);
        let Ok(()) = walk(&mut &*self, &mut v, self.root(), 4, lo, hi);
    }

    /// Whether nothing maps the 2 MiB slot holding `va`: its directory
    /// entry (or one above it) is empty, so no page table, leaf or swap
    /// entry is there.
    pub(crate) fn huge_slot_empty(&self, va: VirtAddr) -> bool {
        let lin = va.as_u64() & LINEAR_MASK;
        match self.path_to(lin, 2) {
            Ok(path) => self.read(path[2], index(lin, 2)) == 0,
            Err((_, e)) => e == 0,
        }
    }

    /// Clears the Accessed bit of the 2 MiB leaf mapping `va`; whether it
    /// was set. The 2 MiB translation must be invalidated for the next
    /// reference to set it again.
    pub(crate) fn clear_accessed_huge(&self, va: VirtAddr) -> bool {
        let lin = va.as_u64() & LINEAR_MASK;
        let Ok(path) = self.path_to(lin, 2) else {
            return false;
        };
        let (t, i) = (path[2], index(lin, 2));
        let e = self.read(t, i);
        if e & PRESENT == 0 || !is_leaf(e, 2) || e & ACCESSED == 0 {
            return false;
        }
        self.fetch_and(t, i, !ACCESSED) & ACCESSED != 0
    }

    /// The 512 entries of the page table that maps the 2 MiB slot holding
    /// `va`, if one does (a copy).
    pub(crate) fn slot_entries(&self, va: VirtAddr) -> Option<[u64; 512]> {
        let lin = va.as_u64() & LINEAR_MASK;
        let path = self.path_to(lin, 2).ok()?;
        let e = self.read(path[2], index(lin, 2));
        if e & PRESENT == 0 || is_leaf(e, 2) {
            return None;
        }
        let pt = e & ADDR_MASK;
        Some(core::array::from_fn(|i| self.read(pt, i)))
    }

    /// Takes the page table mapping the 2 MiB slot holding `va` out of the
    /// hierarchy (its directory entry cleared), adding the slot's 512 pages
    /// to `flush`; returns the table's frame, to free once `flush` is done
    /// on every CPU that may cache the slot. `None` when no page table maps
    /// the slot.
    pub(crate) fn detach_page_table(
        &mut self,
        va: VirtAddr,
        flush: &mut Flush,
    ) -> Option<x86_64::structures::paging::PhysFrame> {
        let lin = va.as_u64() & LINEAR_MASK;
        let path = self.path_to(lin, 2).ok()?;
        let (t, i) = (path[2], index(lin, 2));
        let e = self.read(t, i);
        if e & PRESENT == 0 || is_leaf(e, 2) {
            return None;
        }
        self.exchange(t, i, 0);
        let base = lin & !(HUGE - 1);
        for k in 0..512 {
            flush.add(canonical(base + k * 4096));
        }
        Some(x86_64::structures::paging::PhysFrame::containing_address(
            x86_64::PhysAddr::new(e & ADDR_MASK),
        ))
    }

    /// Splits the 2 MiB leaf mapping `va` into a page table of 512 4 KiB
    /// leaves with the same frames and flags; a writable one's leaves are
    /// all marked Dirty (a CPU still caching the 2 MiB translation writes
    /// without setting the bit in the new entries). Returns the flush that
    /// drops the 2 MiB translation, `None` when no 2 MiB leaf maps `va`.
    /// Takes one frame for the table; on error nothing changed.
    pub(crate) fn split_huge<A: FrameSource + ?Sized>(
        &mut self,
        va: VirtAddr,
        alloc: &mut A,
    ) -> Result<Option<Flush>, PagingError> {
        let lin = va.as_u64() & LINEAR_MASK;
        let Ok(path) = self.path_to(lin, 2) else {
            return Ok(None);
        };
        let (t, i) = (path[2], index(lin, 2));
        let entry = self.read(t, i);
        if entry & PRESENT == 0 || !is_leaf(entry, 2) {
            return Ok(None);
        }
        let mut reserve = Reserve::fill(self, alloc, 1)?;
        let entry = if entry & WRITABLE != 0 {
            entry | DIRTY
        } else {
            entry
        };
        self.split(t, i, entry, 2, &mut reserve);
        reserve.free_unused(self, alloc);
        let mut flush = Flush::none();
        flush.add(canonical(lin & !(HUGE - 1)));
        Ok(Some(flush))
    }
}

/// The walker of [`PageTables::for_each_huge_in`].
struct Huge<F>(F);

impl<'a, P: PhysMem, F: FnMut(VirtAddr, u64)> Visitor<P, &'a PageTables<P>> for Huge<F> {
    type Stop = Infallible;

    fn enter(&mut self, _: &mut &'a PageTables<P>, slot: &Slot) -> Result<Step, Infallible> {
        let e = slot.entry;
        if e & PRESENT == 0 || slot.level == 1 {
            return Ok(Step::Next);
        }
        if is_leaf(e, slot.level) {
            if slot.level == 2 {
                (self.0)(VirtAddr::new_truncate(canonical(slot.base())), e);
            }
            return Ok(Step::Next);
        }
        if slot.level == 2 {
            return Ok(Step::Next); // a page table: 4 KiB leaves only
        }
        Ok(Step::Descend(e & ADDR_MASK))
    }
}
