//! Translating one address: four unrolled levels, permissions combined as the MMU does.

use x86_64::structures::paging::PageTableFlags;
use x86_64::{PhysAddr, VirtAddr};

use super::entry::{canonical, index, span, ADDR_MASK, HUGE, NX, PRESENT, USER, WRITABLE};
use super::{LeafSize, PageTables, PagingError, PhysMem};

/// What the CPU would allow through a translation: W and U are ANDed over all four levels,
/// NX is ORed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Access {
    /// Writes allowed (at CPL 3, or with CR0.WP set).
    pub writable: bool,
    /// Reachable from ring 3.
    pub user: bool,
    /// Instruction fetches allowed (with EFER.NXE set).
    pub executable: bool,
}

impl Access {
    /// The access through a path whose entries ANDed give `and` and whose NX bits ORed give `nx`.
    #[inline(always)]
    pub(crate) const fn of_path(and: u64, nx: u64) -> Self {
        Self {
            writable: and & WRITABLE != 0,
            user: and & USER != 0,
            executable: nx == 0,
        }
    }
}

/// The mapping that covers an address.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Translation {
    /// Start of the page (of `size`) containing the address.
    pub page: VirtAddr,
    /// Start of the mapped frame.
    pub frame: PhysAddr,
    /// The physical address of the queried address.
    pub phys: PhysAddr,
    /// Size of the page.
    pub size: LeafSize,
    /// The raw flags of the leaf entry (HUGE_PAGE included for huge pages).
    pub flags: PageTableFlags,
    /// Effective permissions over all levels.
    pub access: Access,
}

impl<P: PhysMem> PageTables<P> {
    /// The mapping of `addr`: `NotMapped` when nothing maps it, `NonCanonical` for a forged address.
    #[inline]
    pub fn translate(&self, addr: VirtAddr) -> Result<Translation, PagingError> {
        let va = addr.as_u64();
        if canonical(va) != va {
            return Err(PagingError::NonCanonical { addr: va });
        }
        let not_mapped = Err(PagingError::NotMapped { addr });
        // Unrolled: four dependent loads, no loop-carried level counter.
        let e4 = self.read(self.root(), index(va, 4));
        if e4 & PRESENT == 0 {
            return not_mapped;
        }
        let e3 = self.read(e4 & ADDR_MASK, index(va, 3));
        if e3 & PRESENT == 0 {
            return not_mapped;
        }
        if e3 & HUGE != 0 {
            return Ok(leaf_translation(va, e3, 3, e4 & e3, (e4 | e3) & NX));
        }
        let e2 = self.read(e3 & ADDR_MASK, index(va, 2));
        if e2 & PRESENT == 0 {
            return not_mapped;
        }
        let (and, or) = (e4 & e3 & e2, (e4 | e3 | e2) & NX);
        if e2 & HUGE != 0 {
            return Ok(leaf_translation(va, e2, 2, and, or));
        }
        let e1 = self.read(e2 & ADDR_MASK, index(va, 1));
        if e1 & PRESENT == 0 {
            return not_mapped;
        }
        Ok(leaf_translation(va, e1, 1, and & e1, or | (e1 & NX)))
    }

    /// The physical address `addr` maps to, if any: the walk of
    /// [`translate`](Self::translate) with nothing else computed (no
    /// rights, no page), for the callers that only need the address.
    #[inline]
    pub fn translate_addr(&self, addr: VirtAddr) -> Option<PhysAddr> {
        let va = addr.as_u64();
        if canonical(va) != va {
            return None;
        }
        let mut e = self.read(self.root(), index(va, 4));
        for level in [3u8, 2, 1] {
            if e & PRESENT == 0 {
                return None;
            }
            e = self.read(e & ADDR_MASK, index(va, level));
            if level > 1 && e & HUGE != 0 && e & PRESENT != 0 {
                let size = span(level);
                return Some(PhysAddr::new_truncate(
                    (e & ADDR_MASK & !(size - 1)) | (va & (size - 1)),
                ));
            }
        }
        (e & PRESENT != 0).then(|| PhysAddr::new_truncate((e & ADDR_MASK) | (va & 0xfff)))
    }
}

fn leaf_translation(va: u64, e: u64, level: u8, and: u64, nx: u64) -> Translation {
    let size = span(level);
    let frame = (e & ADDR_MASK) & !(size - 1);
    Translation {
        page: VirtAddr::new_truncate(va & !(size - 1)),
        frame: PhysAddr::new_truncate(frame),
        phys: PhysAddr::new_truncate(frame + (va & (size - 1))),
        size: LeafSize::from_level(level),
        flags: PageTableFlags::from_bits_retain(e & !ADDR_MASK),
        access: Access::of_path(and, nx),
    }
}
