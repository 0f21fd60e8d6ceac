//! The one page-table walker: visits the entries that cover a linear range, table by table.
//!
//! Every operation over a range of tables (map, unmap, protect, copy, audit, destroy, the
//! invariant checker, the swap-slot scan) is a [`Visitor`]: the walker decides which entries
//! cover the range and descends where the visitor says so; the visitor decides what an entry
//! means. One way to walk, many operations, as Asterinas's page-table cursor.

use core::ops::Deref;

use x86_64::VirtAddr;

use super::entry::{index, span, LINEAR_MASK};
use super::{PageTables, PhysMem};

/// One entry met by the walk, with the part `[start, end)` of the range it covers.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Slot {
    /// Level of the table holding the entry (1 = page table .. 4 = PML4).
    pub(crate) level: u8,
    /// The table holding the entry.
    pub(crate) table: u64,
    /// The entry's index in `table`.
    pub(crate) index: usize,
    /// The entry as read when the walk reached it.
    pub(crate) entry: u64,
    /// First linear address of the range inside this entry.
    pub(crate) start: u64,
    /// End (exclusive) of the range inside this entry.
    pub(crate) end: u64,
}

impl Slot {
    /// The first linear address the entry covers (`start` rounded down to its span).
    #[inline(always)]
    pub(crate) const fn base(&self) -> u64 {
        self.start & !(span(self.level) - 1)
    }

    /// Whether the range covers everything the entry covers.
    #[inline(always)]
    pub(crate) const fn whole(&self) -> bool {
        self.end - self.start == span(self.level)
    }
}

/// What the walk does after [`Visitor::enter`].
#[derive(Clone, Copy, Debug)]
pub(crate) enum Step {
    /// Walk the table one level down (its address), then call [`Visitor::leave`].
    Descend(u64),
    /// Go on with the next entry.
    Next,
}

/// An operation over the entries of a range. `M` is the access to the hierarchy the walk
/// gets, `&PageTables` or `&mut PageTables`, and lends to each call. `Stop` ends the walk early (an
/// error, or `Infallible` for walks that always finish).
pub(crate) trait Visitor<P: PhysMem, M: Deref<Target = PageTables<P>>> {
    type Stop;

    /// Entry `i` of `table` (a visitor may walk tables that do not exist yet).
    #[inline(always)]
    fn read(&self, m: &M, table: u64, i: usize) -> u64 {
        m.read(table, i)
    }

    /// An entry of the range, present or not, at any level.
    fn enter(&mut self, m: &mut M, slot: &Slot) -> Result<Step, Self::Stop>;

    /// After the table below `slot` (at `child`) was walked: the place to free it when empty.
    #[inline(always)]
    fn leave(&mut self, _m: &mut M, _slot: &Slot, _child: u64) -> Result<(), Self::Stop> {
        Ok(())
    }

    /// The 4 KiB entries of the page table `pt` below `slot` (a level-2 entry) that cover the
    /// range. By default [`enter`](Self::enter) for each; operations with a hot loop over
    /// leaves override it.
    #[inline(always)]
    fn page_table(&mut self, m: &mut M, slot: &Slot, pt: u64) -> Result<(), Self::Stop> {
        walk(m, self, pt, 1, slot.start, slot.end)
    }
}

/// Walks the entries of `table` at `level` that cover `[start, end)` (48-bit linear, inside
/// the region `table` covers) in address order, and the tables below where the visitor
/// descends; page tables go to [`Visitor::page_table`].
#[inline]
pub(crate) fn walk<P, M, V>(
    m: &mut M,
    v: &mut V,
    table: u64,
    level: u8,
    start: u64,
    end: u64,
) -> Result<(), V::Stop>
where
    P: PhysMem,
    M: Deref<Target = PageTables<P>>,
    V: Visitor<P, M> + ?Sized,
{
    let sp = span(level);
    let mut a = start;
    while a < end {
        let b = end.min((a & !(sp - 1)) + sp);
        let i = index(a, level);
        let slot = Slot {
            level,
            table,
            index: i,
            entry: v.read(m, table, i),
            start: a,
            end: b,
        };
        // A 4 KiB entry is always a leaf: nothing below it to walk.
        if let (Step::Descend(child), 2..) = (v.enter(m, &slot)?, level) {
            if level == 2 {
                v.page_table(m, &slot, child)?;
            } else {
                walk(m, v, child, level - 1, a, b)?;
            }
            v.leave(m, &slot, child)?;
        }
        a = b;
    }
    Ok(())
}

/// The 48-bit linear range of the `len` bytes from `start`, clipped to the end of the
/// address space (empty when `len` is 0).
#[inline]
pub(crate) fn linear_range(start: VirtAddr, len: u64) -> (u64, u64) {
    let lo = start.as_u64() & LINEAR_MASK;
    (lo, lo.saturating_add(len).min(LINEAR_MASK + 1))
}
