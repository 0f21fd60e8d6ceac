//! Copying the leaves of a range into another hierarchy table by table, as
//! a copy-on-write fork does: one walk, no per-page lookups.

use core::convert::Infallible;

use x86_64::{PhysAddr, VirtAddr};

use super::entry::{canonical, is_leaf, span, ADDR_MASK, PRESENT, WRITABLE};
use super::reserve::Reserve;
use super::visit::{linear_range, walk, Slot, Step, Visitor};
use super::{Flush, FrameSource, PageTables, PagingError, PhysMem};

/// A leaf entry as [`PageTables::copy_leaves_into`] shows it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum CopyLeaf {
    /// A mapping of `frame`.
    Mapped {
        /// The frame.
        frame: PhysAddr,
        /// Whether it is writable.
        writable: bool,
    },
    /// A non-present 4 KiB entry holding a kernel value (a swap slot):
    /// copied as it is.
    Soft(u64),
}

/// How one leaf is copied.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum CopyAs {
    /// The same entry in both hierarchies.
    Same,
    /// The entry in both, write access removed from both (copy-on-write).
    ReadOnly,
}

impl<P: PhysMem> PageTables<P> {
    /// Copies every leaf of `[start, start + len)` into `dst` at the same
    /// address. `f` sees each leaf (its canonical address, and its frame
    /// and write access, or its soft value) and says how to copy a mapping.
    /// `dst` must map nothing in the range. The tables `dst` needs are
    /// obtained before anything changes: on `OutOfFrames` neither
    /// hierarchy changed and `f` was never called. The flush covers the
    /// entries of this hierarchy that `f` changed.
    pub(crate) fn copy_leaves_into<A: FrameSource + ?Sized>(
        &mut self,
        dst: &mut PageTables<P>,
        start: VirtAddr,
        len: u64,
        alloc: &mut A,
        f: impl FnMut(u64, CopyLeaf) -> CopyAs,
    ) -> Result<Flush, PagingError> {
        let (lo, hi) = linear_range(start, len);
        let mut flush = Flush::none();
        if hi <= lo {
            return Ok(flush);
        }
        let tables = self.for_each_leaf_in(start, len, |_| {}).tables - 1;
        let mut reserve = Reserve::fill(dst, alloc, tables)?;
        let (src_root, dst_root) = (self.root(), dst.root());
        let mut v = Copier {
            dst,
            dst_tables: [0, 0, 0, 0, dst_root],
            reserve: &mut reserve,
            f,
            flush: &mut flush,
        };
        let Ok(()) = walk(&mut &mut *self, &mut v, src_root, 4, lo, hi);
        reserve.free_unused(dst, alloc);
        Ok(flush)
    }
}

/// Copies the entries the walk meets to the table at the same place in `dst`.
struct Copier<'a, P: PhysMem, F> {
    dst: &'a mut PageTables<P>,
    /// Per level, the table of `dst` matching the table of `src` being walked.
    dst_tables: [u64; 5],
    reserve: &'a mut Reserve,
    f: F,
    flush: &'a mut Flush,
}

impl<P, F> Visitor<P, &mut PageTables<P>> for Copier<'_, P, F>
where
    P: PhysMem,
    F: FnMut(u64, CopyLeaf) -> CopyAs,
{
    type Stop = Infallible;

    fn enter(&mut self, src: &mut &mut PageTables<P>, slot: &Slot) -> Result<Step, Infallible> {
        let (e, level, i) = (slot.entry, slot.level, slot.index);
        let dst_table = self.dst_tables[usize::from(level)];
        let va = canonical(slot.base());
        if e & PRESENT == 0 {
            if e != 0 && level == 1 {
                (self.f)(va, CopyLeaf::Soft(e));
                self.dst.write(dst_table, i, e);
            }
            return Ok(Step::Next);
        }
        if is_leaf(e, level) {
            let frame = PhysAddr::new_truncate(e & ADDR_MASK & !(span(level) - 1));
            let leaf = CopyLeaf::Mapped {
                frame,
                writable: e & WRITABLE != 0,
            };
            let copy = match (self.f)(va, leaf) {
                CopyAs::Same => e,
                CopyAs::ReadOnly if e & WRITABLE == 0 => e,
                CopyAs::ReadOnly => {
                    // Atomic: a Dirty bit another CPU sets up to now stays, in both copies.
                    let now = src.fetch_and(slot.table, i, !WRITABLE);
                    self.flush.add(va);
                    now & !WRITABLE
                }
            };
            self.dst.write(dst_table, i, copy);
            return Ok(Step::Next);
        }
        let d = self.dst.read(dst_table, i);
        let child = if d & PRESENT != 0 {
            d & ADDR_MASK
        } else {
            let t = self.reserve.take(self.dst);
            self.dst.write(dst_table, i, t | (e & !ADDR_MASK));
            t
        };
        self.dst_tables[usize::from(level) - 1] = child;
        Ok(Step::Descend(e & ADDR_MASK))
    }
}
