//! Copying the leaves of a range into another hierarchy table by table, as
//! a copy-on-write fork does: one walk, no per-page lookups.

use super::entry::{
    canonical, index, is_leaf, span, ADDR_MASK, ENTRIES, LINEAR_MASK, PRESENT, WRITABLE,
};
use super::reserve::Reserve;
use super::{Flush, FrameSource, Mapper, PagingError, PhysMem};
use x86_64::{PhysAddr, VirtAddr};

/// A leaf entry as [`Mapper::copy_leaves_into`] shows it.
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

impl<P: PhysMem> Mapper<P> {
    /// Copies every leaf of `[start, start + len)` into `dst` at the same
    /// address. `f` sees each leaf (its canonical address, and its frame
    /// and write access, or its soft value) and says how to copy a mapping.
    /// `dst` must map nothing in the range. The tables `dst` needs are
    /// obtained before anything changes: on `OutOfFrames` neither
    /// hierarchy changed and `f` was never called. The flush covers the
    /// entries of this hierarchy that `f` changed.
    pub(crate) fn copy_leaves_into<A: FrameSource + ?Sized>(
        &mut self,
        dst: &mut Mapper<P>,
        start: VirtAddr,
        len: u64,
        alloc: &mut A,
        mut f: impl FnMut(u64, CopyLeaf) -> CopyAs,
    ) -> Result<Flush, PagingError> {
        let lo = start.as_u64() & LINEAR_MASK;
        let hi = lo.saturating_add(len).min(LINEAR_MASK + 1);
        let mut flush = Flush::none();
        if hi <= lo {
            return Ok(flush);
        }
        let tables = self.for_each_leaf_in(start, len, |_| {}).tables - 1;
        let mut reserve = Reserve::fill(dst, alloc, tables)?;
        let (src_root, dst_root) = (self.root(), dst.root());
        self.copy_table(
            dst,
            src_root,
            dst_root,
            4,
            0,
            (lo, hi),
            &mut reserve,
            &mut f,
            &mut flush,
        );
        reserve.release(dst, alloc);
        Ok(flush)
    }

    #[allow(clippy::too_many_arguments)]
    fn copy_table(
        &mut self,
        dst: &mut Mapper<P>,
        table: u64,
        dst_table: u64,
        level: u8,
        base: u64,
        (lo, hi): (u64, u64),
        reserve: &mut Reserve,
        f: &mut impl FnMut(u64, CopyLeaf) -> CopyAs,
        flush: &mut Flush,
    ) {
        let first = lo.saturating_sub(base) / span(level);
        let last = (hi - base).div_ceil(span(level)).min(ENTRIES as u64);
        for i in first as usize..last as usize {
            let e = self.read(table, i);
            let lin = base + i as u64 * span(level);
            if e & PRESENT == 0 {
                if e != 0 && level == 1 {
                    f(canonical(lin), CopyLeaf::Soft(e));
                    dst.write(dst_table, i, e);
                }
                continue;
            }
            if is_leaf(e, level) {
                let va = canonical(lin);
                let frame = PhysAddr::new_truncate(e & ADDR_MASK & !(span(level) - 1));
                let leaf = CopyLeaf::Mapped {
                    frame,
                    writable: e & WRITABLE != 0,
                };
                let copy = match f(va, leaf) {
                    CopyAs::Same => e,
                    CopyAs::ReadOnly => e & !WRITABLE,
                };
                if copy != e {
                    self.write(table, i, copy);
                    flush.add(va);
                }
                dst.write(dst_table, i, copy);
                continue;
            }
            let d = dst.read(dst_table, index(lin, level));
            let child = if d & PRESENT != 0 {
                d & ADDR_MASK
            } else {
                let t = reserve.take(dst);
                dst.write(dst_table, i, t | (e & !ADDR_MASK));
                t
            };
            self.copy_table(
                dst,
                e & ADDR_MASK,
                child,
                level - 1,
                lin,
                (lo, hi),
                reserve,
                f,
                flush,
            );
        }
    }
}
