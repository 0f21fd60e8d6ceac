//! Access to page tables by physical address, through a translation the caller supplies.

use core::ptr::NonNull;

use x86_64::structures::paging::{PageTable, PhysFrame};
use x86_64::VirtAddr;

/// Turns the physical frame of a page table into a pointer the mapper can read and write.
///
/// # Safety
///
/// An implementation promises, for every frame the mapper is handed (the top-level table,
/// every table reachable from it, every frame its frame source returns):
/// - the pointer is non-null, 4096-aligned and valid for reads and writes of 4096 bytes;
/// - distinct frames give non-overlapping memory, and the same frame always the same memory;
/// - nothing else reads or writes that memory through a Rust reference while the mapper
///   uses it (the mapper accesses it only through raw pointers).
pub unsafe trait PhysMem {
    /// The table stored in `frame`.
    fn table_ptr(&self, frame: PhysFrame) -> NonNull<PageTable>;

    /// Entry `i` (below 512) of the table at the 4096-aligned physical
    /// address `table`: what a walk reads at each level. The default goes
    /// through [`table_ptr`](Self::table_ptr); an implementation may give
    /// the same pointer with less work (the walk's hot path).
    #[inline(always)]
    fn entry_ptr(&self, table: u64, i: usize) -> *mut u64 {
        let frame = PhysFrame::containing_address(x86_64::PhysAddr::new_truncate(table));
        self.table_ptr(frame).as_ptr().cast::<u64>().wrapping_add(i)
    }
}

/// All physical memory mapped at `offset` (a direct map): frame `p` lives at `offset + p`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OffsetPhysMem {
    offset: u64,
}

impl OffsetPhysMem {
    /// A direct map at `offset`.
    ///
    /// # Safety
    ///
    /// Every physical frame the mapper may touch must be mapped read-write at `offset + phys`
    /// for as long as the value (or any mapper using it) lives, and the `PhysMem` aliasing
    /// rules above must hold. Use `VirtAddr::zero()` for an identity map; then frame 0 (the
    /// null address) must never reach the mapper: keep it reserved.
    pub const unsafe fn new(offset: VirtAddr) -> Self {
        Self {
            offset: offset.as_u64(),
        }
    }

    /// The offset of the direct map.
    pub const fn offset(&self) -> VirtAddr {
        VirtAddr::new_truncate(self.offset)
    }
}

impl super::PageTables<OffsetPhysMem> {
    /// The mapper of the running CPU's page tables (CR3), reached through a direct map of
    /// all RAM at `phys_offset`: what a kernel takes over from its bootloader.
    ///
    /// # Safety
    /// All RAM must stay mapped read-write at `phys_offset + phys`; the active tables must
    /// be valid, edited by nothing else while the mapper lives, and no table may have two
    /// parents (see [`PageTables::new`](super::PageTables::new)).
    pub unsafe fn active(phys_offset: VirtAddr) -> Self {
        // SAFETY: the caller's promises are `OffsetPhysMem::new`'s and `from_current`'s.
        unsafe { Self::from_current(&super::X86Mmu, OffsetPhysMem::new(phys_offset)) }
    }
}

// SAFETY: `new`'s contract makes every frame valid at `offset + phys`; a 4096-aligned frame
// plus a 4096-aligned offset stays aligned, and distinct frames map to distinct memory.
unsafe impl PhysMem for OffsetPhysMem {
    #[inline(always)]
    fn table_ptr(&self, frame: PhysFrame) -> NonNull<PageTable> {
        let addr = self.offset.wrapping_add(frame.start_address().as_u64());
        let ptr = core::ptr::with_exposed_provenance_mut::<PageTable>(addr as usize);
        // Frame 0 under an identity map is the null address, which no Rust
        // pointer may reach: a map must keep it reserved (the low 1 MiB
        // usually is). Panic rather than hand out an alias of another frame.
        NonNull::new(ptr).expect("frame 0 reached through an identity map: reserve it")
    }

    #[inline(always)]
    fn entry_ptr(&self, table: u64, i: usize) -> *mut u64 {
        // One add: `table` is a table the mapper reached, never frame 0 under an
        // identity map (`new`'s contract), so no null check on the walk.
        let addr = self.offset.wrapping_add(table) as usize;
        core::ptr::with_exposed_provenance_mut::<u64>(addr).wrapping_add(i)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use x86_64::PhysAddr;

    #[test]
    fn a_direct_map_reaches_each_frame_at_its_offset() {
        // SAFETY: only pointers are computed; nothing is dereferenced.
        let phys = unsafe { OffsetPhysMem::new(VirtAddr::new(0xffff_8000_0000_0000)) };
        let frame = PhysFrame::containing_address(PhysAddr::new(0x5000));
        assert_eq!(phys.table_ptr(frame).as_ptr() as u64, 0xffff_8000_0000_5000);
    }

    #[test]
    #[should_panic(expected = "frame 0")]
    fn frame_zero_through_an_identity_map_is_refused_not_aliased() {
        // SAFETY: only pointers are computed; the call panics before any use.
        let identity = unsafe { OffsetPhysMem::new(VirtAddr::zero()) };
        let _ = identity.table_ptr(PhysFrame::containing_address(PhysAddr::new(0)));
    }
}
