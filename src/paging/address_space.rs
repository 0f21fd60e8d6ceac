//! Address spaces: a new PML4 sharing the kernel half, switching to it, destroying it.

use core::convert::Infallible;

use x86_64::structures::paging::{FrameDeallocator, PhysFrame, Size4KiB};

use super::entry::{is_leaf, span, ADDR_MASK, ENTRIES, HALF, PRESENT, TABLE_FLAGS};
use super::page_tables::frame_of;
use super::reserve::Reserve;
use super::visit::{walk, Slot, Step, Visitor};
use super::{FrameSource, Mmu, PageTables, PagingError, PhysMem};
use crate::PAGE_SIZE;

/// The first PML4 index of the kernel half (0xffff_8000_0000_0000 and up).
pub const KERNEL_HALF: usize = 256;

/// A user address space: its own lower half, the kernel half shared with the mapper it was
/// created from (same PDPT frames, so kernel mappings made under an existing PML4 entry are
/// seen by all; a kernel PML4 entry created later is not propagated).
///
/// ```
/// # #[cfg(feature = "testing")]
/// # fn main() -> Result<(), Box<dyn std::error::Error>> {
/// use kmem::paging::{AddressSpace, MapFlags, PageTables};
/// use kmem::testing::{mmu::RecordingMmu, phys_mem::EmulatedMemory};
/// use x86_64::{PhysAddr, VirtAddr};
///
/// let mem = EmulatedMemory::new(64);
/// let mut frames = mem.frame_allocator();
/// let mut kernel = PageTables::new_empty(mem.phys_mem(), &mut frames).unwrap();
/// let kv = VirtAddr::new(0xffff_8000_0000_0000);
/// // SAFETY: example tables, mapping frames no Rust object uses.
/// unsafe { kernel.map_range(kv, PhysAddr::new(0), 0x20_0000, MapFlags::READ_WRITE, &mut frames) }.unwrap().ignore();
/// let mut mmu = RecordingMmu::new(kernel.pml4());
///
/// let mut user = AddressSpace::new(&kernel, &mut frames).unwrap();
/// let uv = VirtAddr::new(0x40_0000);
/// // SAFETY: a user-half edit.
/// let user_half = unsafe { user.mapper_mut() };
/// // SAFETY: example tables, mapping frames no Rust object uses.
/// unsafe { user_half.map_range(uv, PhysAddr::new(0x9000), 0x1000, MapFlags::READ.user(), &mut frames) }.unwrap().ignore();
/// assert!(user.mapper().translate(kv).is_ok(), "kernel half shared");
/// // SAFETY: the recording MMU executes nothing.
/// unsafe { user.switch(&mut mmu) };
/// // SAFETY: as above.
/// unsafe { kmem::paging::Mmu::set_cr3(&mut mmu, kernel.pml4()) };
/// // SAFETY: one CPU, and it loaded the kernel's tables again.
/// let stats = unsafe { user.destroy(&mmu, &mut frames, false) }.unwrap();
/// assert_eq!(stats.tables, 4); // PML4, PDPT, PD, PT of the user half
/// # Ok(())
/// # }
/// # #[cfg(not(feature = "testing"))]
/// # fn main() {}
/// ```
#[derive(Debug)]
pub struct AddressSpace<P: PhysMem> {
    mapper: PageTables<P>,
}

/// What [`AddressSpace::destroy`] gave back.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct DestroyStats {
    /// Table frames freed, the PML4 included.
    pub tables: usize,
    /// 4 KiB frames of user mappings freed (huge pages count 512 or 262144).
    pub mapped_frames: usize,
}

impl<P: PhysMem + Clone> AddressSpace<P> {
    /// A new address space whose kernel half (entries 256..512) is that of `kernel`.
    pub fn new<A: FrameSource + ?Sized>(
        kernel: &PageTables<P>,
        alloc: &mut A,
    ) -> Result<Self, PagingError> {
        let mut mapper = PageTables::new_empty(kernel.phys_mem().clone(), alloc)?;
        let (src, dst) = (kernel.root(), mapper.root());
        for i in KERNEL_HALF..ENTRIES {
            mapper.write(dst, i, kernel.read(src, i));
        }
        Ok(Self { mapper })
    }
}

impl<P: PhysMem> PageTables<P> {
    /// Gives every kernel-half PML4 entry (256..512) a PDPT, so kernel mappings made later
    /// appear in every address space created afterwards from this one. Costs up to 256 frames;
    /// returns how many were taken. On `OutOfFrames` nothing changed.
    pub fn prefill_kernel_half<A: FrameSource + ?Sized>(
        &mut self,
        alloc: &mut A,
    ) -> Result<usize, PagingError> {
        let root = self.root();
        let missing = (KERNEL_HALF..ENTRIES)
            .filter(|&i| self.read(root, i) & PRESENT == 0)
            .count();
        let mut reserve = Reserve::fill(self, alloc, missing)?;
        for i in KERNEL_HALF..ENTRIES {
            if self.read(root, i) & PRESENT == 0 {
                let table = reserve.take(self);
                self.write(root, i, table | TABLE_FLAGS);
            }
        }
        reserve.free_unused(self, alloc);
        Ok(missing)
    }
}

impl<P: PhysMem> AddressSpace<P> {
    /// Takes a mapper as an address space (e.g. one built by hand).
    pub fn from_mapper(mapper: PageTables<P>) -> Self {
        Self { mapper }
    }

    /// Gives up the address space, returning its mapper (the hierarchy is kept).
    pub fn into_mapper(self) -> PageTables<P> {
        self.mapper
    }

    /// The mapper, to map and unmap in this address space.
    ///
    /// ```compile_fail,E0133
    /// # fn f(s: &mut kmem::paging::AddressSpace<kmem::paging::OffsetPhysMem>) {
    /// // The kernel half's shared tables are behind `unsafe`:
    /// let _ = s.mapper_mut();
    /// # }
    /// ```
    ///
    /// # Safety
    /// The kernel half's tables are shared with the kernel's own mapper and
    /// every other space: edit only the user half through this mapper (a
    /// kernel-half change here bypasses the lock and the shootdown the
    /// kernel's mapper holds and sends).
    pub unsafe fn mapper_mut(&mut self) -> &mut PageTables<P> {
        &mut self.mapper
    }

    /// Read-only access to the mapper (translation).
    pub fn mapper(&self) -> &PageTables<P> {
        &self.mapper
    }

    /// Its top-level table.
    pub fn pml4(&self) -> PhysFrame {
        self.mapper.pml4()
    }

    /// Whether this is the active address space.
    pub fn is_active<M: Mmu + ?Sized>(&self, mmu: &M) -> bool {
        mmu.cr3() == self.pml4()
    }

    /// Makes this the active address space.
    ///
    /// # Safety
    ///
    /// The kernel half must map the executing code, stack and all data in use (it does when
    /// created from the active mapper), and the address space must outlive its activity.
    pub unsafe fn switch<M: Mmu + ?Sized>(&self, mmu: &mut M) {
        // SAFETY: forwarded to the caller.
        unsafe { mmu.set_cr3(self.pml4()) };
    }

    /// Frees every user-half table (and, with `free_mapped`, every frame mapped there, huge
    /// pages as their 4 KiB frames) and the PML4. The kernel half is untouched. Refused while
    /// active on this CPU.
    ///
    /// ```compile_fail,E0133
    /// # fn f(s: kmem::paging::AddressSpace<kmem::paging::OffsetPhysMem>, a: &mut &kmem::frame::LockedFrameAllocator) {
    /// // Freeing the tables (and frames) of a space other CPUs may still use needs `unsafe`:
    /// let _ = s.destroy(&kmem::paging::X86Mmu, a, true);
    /// # }
    /// ```
    ///
    /// # Safety
    /// No other CPU may still hold a translation of this space (it never ran there, or that
    /// CPU loaded another CR3 since: kmem cannot see other CPUs here). With `free_mapped`,
    /// every frame mapped in the user half belongs to `alloc` and to this space alone: no
    /// device memory, no frame shared with another space, no frame in use elsewhere.
    pub unsafe fn destroy<M, A>(
        self,
        mmu: &M,
        alloc: &mut A,
        free_mapped: bool,
    ) -> Result<DestroyStats, (Self, PagingError)>
    where
        M: Mmu + ?Sized,
        A: FrameDeallocator<Size4KiB> + ?Sized,
    {
        if self.is_active(mmu) {
            let pml4 = self.pml4().start_address();
            return Err((self, PagingError::AddressSpaceActive { pml4 }));
        }
        let mut v = Destroyer {
            alloc,
            free_mapped,
            stats: DestroyStats::default(),
        };
        let root = self.mapper.root();
        let Ok(()) = walk(&mut &self.mapper, &mut v, root, 4, 0, HALF);
        let mut stats = v.stats;
        free(alloc, root);
        stats.tables += 1;
        Ok(stats)
    }
}

/// Frees the user half bottom up: each table after what lies below it.
struct Destroyer<'a, A: ?Sized> {
    alloc: &'a mut A,
    free_mapped: bool,
    stats: DestroyStats,
}

impl<P, A> Visitor<P, &PageTables<P>> for Destroyer<'_, A>
where
    P: PhysMem,
    A: FrameDeallocator<Size4KiB> + ?Sized,
{
    type Stop = Infallible;

    fn enter(&mut self, _m: &mut &PageTables<P>, slot: &Slot) -> Result<Step, Infallible> {
        let (e, level) = (slot.entry, slot.level);
        if e & PRESENT == 0 {
            return Ok(Step::Next);
        }
        if !is_leaf(e, level) {
            return Ok(Step::Descend(e & ADDR_MASK));
        }
        if self.free_mapped {
            let base = e & ADDR_MASK & !(span(level) - 1);
            for k in 0..span(level) / PAGE_SIZE {
                free(self.alloc, base + k * PAGE_SIZE);
            }
            self.stats.mapped_frames += (span(level) / PAGE_SIZE) as usize;
        }
        Ok(Step::Next)
    }

    fn leave(
        &mut self,
        _m: &mut &PageTables<P>,
        _slot: &Slot,
        child: u64,
    ) -> Result<(), Infallible> {
        free(self.alloc, child);
        self.stats.tables += 1;
        Ok(())
    }
}

fn free<A: FrameDeallocator<Size4KiB> + ?Sized>(alloc: &mut A, frame: u64) {
    // SAFETY: the address space is being destroyed (consumed, not active): nothing refers
    // to its user-half tables or, when asked, to the frames mapped there.
    unsafe { alloc.deallocate_frame(frame_of(frame)) };
}
