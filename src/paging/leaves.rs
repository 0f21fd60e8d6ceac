//! Visiting every mapping of a hierarchy: audits (W^X) and reports.

use x86_64::{PhysAddr, VirtAddr};

use super::entry::{is_leaf, span, ADDR_MASK, ENTRIES, LINEAR_MASK, NX, PRESENT, USER, WRITABLE};
use super::{Access, LeafSize, Mapper, PhysMem};

/// One mapped page, as the MMU sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Leaf {
    /// Its first virtual address.
    pub page: VirtAddr,
    /// The frame it maps.
    pub frame: PhysAddr,
    /// Its size.
    pub size: LeafSize,
    /// Effective permissions over all four levels.
    pub access: Access,
}

/// Counts of what a walk saw.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Census {
    /// Table frames, the PML4 included.
    pub tables: usize,
    /// Leaves per size: 4 KiB, 2 MiB, 1 GiB.
    pub leaves: [usize; 3],
}

impl Census {
    /// Bytes mapped by all leaves.
    pub fn mapped_bytes(&self) -> u64 {
        let sizes = [LeafSize::Size4KiB, LeafSize::Size2MiB, LeafSize::Size1GiB];
        sizes
            .iter()
            .zip(self.leaves)
            .map(|(s, n)| s.bytes() * n as u64)
            .sum()
    }
}

impl<P: PhysMem> Mapper<P> {
    /// Calls `f` for every leaf mapping in address order, with effective
    /// permissions (writable and user ANDed over the levels, no-execute
    /// ORed), and counts tables and leaves. Allocates nothing: usable in a
    /// kernel to audit its live tables, e.g. for writable+executable pages.
    ///
    /// ```
    /// use kmem::paging::{Mapper, MapFlags};
    /// use kmem::testing::phys_mem::EmulatedMemory;
    /// use x86_64::{PhysAddr, VirtAddr};
    ///
    /// let mem = EmulatedMemory::new(16);
    /// let mut frames = mem.frame_allocator();
    /// let mut m = Mapper::new_empty(mem.phys_mem(), &mut frames).unwrap();
    /// let va = VirtAddr::new(0x40_0000);
    /// m.map_range(va, PhysAddr::new(0), 0x2000, MapFlags::READ_WRITE, &mut frames).unwrap().ignore();
    /// let mut wx = 0;
    /// let census = m.for_each_leaf(|leaf| wx += usize::from(leaf.access.writable && leaf.access.executable));
    /// assert_eq!((wx, census.leaves, census.tables), (0, [2, 0, 0], 4));
    /// ```
    pub fn for_each_leaf(&self, f: impl FnMut(&Leaf)) -> Census {
        self.for_each_leaf_in(VirtAddr::zero(), u64::MAX, f)
    }

    /// [`for_each_leaf`](Self::for_each_leaf) for the leaves that overlap the `len` bytes
    /// from `start` (to the end of the address space if that is shorter): subtrees outside
    /// the range are skipped, so a sparse range costs the tables it touches, not its size.
    pub fn for_each_leaf_in(&self, start: VirtAddr, len: u64, mut f: impl FnMut(&Leaf)) -> Census {
        let mut census = Census {
            tables: 1,
            leaves: [0; 3],
        };
        let lo = start.as_u64() & LINEAR_MASK;
        let hi = lo.saturating_add(len).min(LINEAR_MASK + 1);
        if hi <= lo {
            return census;
        }
        self.visit(
            self.root(),
            4,
            0,
            (lo, hi),
            WRITABLE | USER,
            0,
            &mut f,
            &mut census,
        );
        census
    }

    #[allow(clippy::too_many_arguments)]
    fn visit(
        &self,
        table: u64,
        level: u8,
        base: u64,
        (lo, hi): (u64, u64),
        and: u64,
        nx: u64,
        f: &mut impl FnMut(&Leaf),
        census: &mut Census,
    ) {
        let first = lo.saturating_sub(base) / span(level);
        let last = (hi - base).div_ceil(span(level)).min(ENTRIES as u64);
        for i in first as usize..last as usize {
            let e = self.read(table, i);
            if e & PRESENT == 0 {
                continue;
            }
            let lin = base + i as u64 * span(level);
            let (and, nx) = (and & e, nx | (e & NX));
            if is_leaf(e, level) {
                let size = LeafSize::from_level(level);
                census.leaves[usize::from(level - 1)] += 1;
                f(&Leaf {
                    page: VirtAddr::new_truncate(lin),
                    frame: PhysAddr::new_truncate(e & ADDR_MASK & !(size.bytes() - 1)),
                    size,
                    access: Access {
                        writable: and & WRITABLE != 0,
                        user: and & USER != 0,
                        executable: nx == 0,
                    },
                });
            } else {
                census.tables += 1;
                self.visit(e & ADDR_MASK, level - 1, lin, (lo, hi), and, nx, f, census);
            }
        }
    }
}
