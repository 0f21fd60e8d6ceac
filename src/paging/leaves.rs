//! Visiting every mapping of a hierarchy: audits (W^X) and reports.

use x86_64::{PhysAddr, VirtAddr};

use core::convert::Infallible;

use super::entry::{is_leaf, virt_addr, ADDR_MASK, NX, PRESENT, USER, WRITABLE};
use super::visit::{linear_range, walk, Slot, Step, Visitor};
use super::{Access, LeafSize, PageTables, PhysMem};

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

impl<P: PhysMem> PageTables<P> {
    /// Calls `f` for every leaf mapping in address order, with effective
    /// permissions (writable and user ANDed over the levels, no-execute
    /// ORed), and counts tables and leaves. Allocates nothing: usable in a
    /// kernel to audit its live tables, e.g. for writable+executable pages.
    ///
    /// ```
    /// # #[cfg(feature = "testing")]
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// use kmem::paging::{PageTables, MapFlags};
    /// use kmem::testing::phys_mem::EmulatedMemory;
    /// use x86_64::{PhysAddr, VirtAddr};
    ///
    /// let mem = EmulatedMemory::new(16);
    /// let mut frames = mem.frame_allocator();
    /// let mut m = PageTables::new_empty(mem.phys_mem(), &mut frames).unwrap();
    /// let va = VirtAddr::new(0x40_0000);
    /// // SAFETY: example tables, mapping frames no Rust object uses.
    /// unsafe { m.map_range(va, PhysAddr::new(0), 0x2000, MapFlags::READ_WRITE, &mut frames) }.unwrap().ignore();
    /// let mut wx = 0;
    /// let census = m.for_each_leaf(|leaf| wx += usize::from(leaf.access.writable && leaf.access.executable));
    /// assert_eq!((wx, census.leaves, census.tables), (0, [2, 0, 0], 4));
    /// # Ok(())
    /// # }
    /// # #[cfg(not(feature = "testing"))]
    /// # fn main() {}
    /// ```
    pub fn for_each_leaf(&self, f: impl FnMut(&Leaf)) -> Census {
        self.for_each_leaf_in(VirtAddr::zero(), u64::MAX, f)
    }

    /// [`for_each_leaf`](Self::for_each_leaf) for the leaves that overlap the `len` bytes
    /// from `start` (to the end of the address space if that is shorter): subtrees outside
    /// the range are skipped, so a sparse range costs the tables it touches, not its size.
    pub fn for_each_leaf_in(&self, start: VirtAddr, len: u64, f: impl FnMut(&Leaf)) -> Census {
        let (lo, hi) = linear_range(start, len);
        let mut v = LeafVisitor {
            f,
            census: Census {
                tables: 1,
                leaves: [0; 3],
            },
            and: [0, 0, 0, 0, WRITABLE | USER],
            nx: [0; 5],
        };
        if lo < hi {
            let Ok(()) = walk(&mut &*self, &mut v, self.root(), 4, lo, hi);
        }
        v.census
    }
}

/// Calls `f` on each leaf with the permissions of its path.
struct LeafVisitor<F> {
    f: F,
    census: Census,
    /// Writable and user bits ANDed over the levels above each level.
    and: [u64; 5],
    /// No-execute bits ORed over the levels above each level.
    nx: [u64; 5],
}

impl<P: PhysMem, F: FnMut(&Leaf)> Visitor<P, &PageTables<P>> for LeafVisitor<F> {
    type Stop = Infallible;

    #[inline(always)]
    fn enter(&mut self, _m: &mut &PageTables<P>, slot: &Slot) -> Result<Step, Infallible> {
        let (e, level) = (slot.entry, slot.level);
        if e & PRESENT == 0 {
            return Ok(Step::Next);
        }
        let l = usize::from(level);
        let (and, nx) = (self.and[l] & e, self.nx[l] | (e & NX));
        if !is_leaf(e, level) {
            self.census.tables += 1;
            (self.and[l - 1], self.nx[l - 1]) = (and, nx);
            return Ok(Step::Descend(e & ADDR_MASK));
        }
        let size = LeafSize::from_level(level);
        self.census.leaves[l - 1] += 1;
        (self.f)(&Leaf {
            page: virt_addr(slot.base()),
            frame: PhysAddr::new_truncate(e & ADDR_MASK & !(size.bytes() - 1)),
            size,
            access: Access::of_path(and, nx),
        });
        Ok(Step::Next)
    }
}
