//! The mapper: owns a page-table hierarchy and performs single-page operations on it.

use x86_64::structures::paging::{
    FrameAllocator, FrameDeallocator, Page, PageSize, PhysFrame, Size4KiB,
};
use x86_64::{PhysAddr, VirtAddr};

use super::entry::{
    index, is_leaf, leaf_bits, span, ACCESSED_DIRTY, ADDR_MASK, DIRTY, ENTRIES, HALF, LINEAR_MASK,
    PRESENT, USER, WRITABLE,
};
use super::{Flush, LeafSize, MapFlags, Mmu, PagingError, PhysMem};

/// A frame source for the mapper: allocates table frames and takes freed ones back.
/// Any `x86_64` frame allocator that can also deallocate qualifies.
pub trait FrameSource: FrameAllocator<Size4KiB> + FrameDeallocator<Size4KiB> {}
impl<T: FrameAllocator<Size4KiB> + FrameDeallocator<Size4KiB>> FrameSource for T {}

/// A 4-level page-table hierarchy and the means to reach its tables.
///
/// Invariant: every table reachable from the PML4 belongs to this hierarchy alone (the kernel
/// half may be shared with other address spaces) and is reachable through `phys`.
#[derive(Debug)]
pub struct PageTables<P: PhysMem> {
    pml4: u64,
    phys: P,
}

impl<P: PhysMem> PageTables<P> {
    /// The mapper of an existing hierarchy rooted at `pml4`.
    ///
    /// # Safety
    ///
    /// `pml4` and every table reachable from it must be valid page tables reachable through
    /// `phys`, not modified by anything else while the mapper lives, and no table may be
    /// reachable from two parents within the hierarchy. Changing mappings the caller is using
    /// (its code, stack, the direct map) is the caller's responsibility.
    pub const unsafe fn new(pml4: PhysFrame, phys: P) -> Self {
        Self {
            pml4: pml4.start_address().as_u64(),
            phys,
        }
    }

    /// The mapper of the active hierarchy (CR3).
    ///
    /// # Safety
    ///
    /// As for [`PageTables::new`], for the frame CR3 holds.
    pub unsafe fn from_current<M: Mmu + ?Sized>(mmu: &M, phys: P) -> Self {
        // SAFETY: forwarded to the caller.
        unsafe { Self::new(mmu.cr3(), phys) }
    }

    /// A mapper over a fresh, empty PML4 taken from `alloc`.
    ///
    /// ```
    /// # #[cfg(feature = "testing")]
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// use kmem::paging::{PageTables, MapFlags, LeafSize};
    /// use kmem::testing::phys_mem::EmulatedMemory;
    /// use x86_64::{PhysAddr, VirtAddr};
    ///
    /// let mem = EmulatedMemory::new(64);
    /// let mut frames = mem.frame_allocator();
    /// let mut mapper = PageTables::new_empty(mem.phys_mem(), &mut frames).unwrap();
    /// let virt = VirtAddr::new(0xffff_8000_0000_0000);
    /// // 4 MiB, both addresses 2 MiB-aligned: two 2 MiB pages.
    /// // SAFETY: tables no CPU uses, mapping frames no Rust object uses.
    /// let flush = unsafe {
    ///     mapper.map_range(virt, PhysAddr::new(0x20_0000), 0x40_0000, MapFlags::READ_WRITE, &mut frames)
    /// };
    /// flush.unwrap().ignore();
    /// let t = mapper.translate(virt + 0x1234u64).unwrap();
    /// assert_eq!(t.phys, PhysAddr::new(0x20_1234));
    /// assert_eq!(t.size, LeafSize::Size2MiB);
    /// assert!(t.access.writable && !t.access.executable);
    /// # Ok(())
    /// # }
    /// # #[cfg(not(feature = "testing"))]
    /// # fn main() {}
    /// ```
    pub fn new_empty<A: FrameAllocator<Size4KiB> + ?Sized>(
        phys: P,
        alloc: &mut A,
    ) -> Result<Self, PagingError> {
        let frame = alloc.allocate_frame().ok_or(PagingError::OutOfFrames {
            needed: 1,
            obtained: 0,
        })?;
        let mut m = Self {
            pml4: frame.start_address().as_u64(),
            phys,
        };
        m.zero_table(m.pml4);
        Ok(m)
    }

    /// The frame of the top-level table (the CR3 value).
    pub fn pml4(&self) -> PhysFrame {
        frame_of(self.pml4)
    }

    /// The physical-memory access this mapper uses.
    pub fn phys_mem(&self) -> &P {
        &self.phys
    }

    /// Gives up the hierarchy, returning its root and memory access.
    pub fn into_parts(self) -> (PhysFrame, P) {
        (self.pml4(), self.phys)
    }

    #[inline(always)]
    pub(crate) fn root(&self) -> u64 {
        self.pml4
    }

    #[inline(always)]
    pub(crate) fn ptr(&self, table: u64) -> *mut u64 {
        self.phys.table_ptr(frame_of(table)).as_ptr().cast()
    }

    /// Where entry `i` of the table at `table` lies: one address computation,
    /// shared by every access to an entry.
    #[inline(always)]
    fn entry(&self, table: u64, i: usize) -> *mut u64 {
        debug_assert!(i < ENTRIES);
        self.phys.entry_ptr(table & ADDR_MASK, i)
    }

    /// Entry `i` of the table at `table`.
    #[inline(always)]
    pub(crate) fn read(&self, table: u64, i: usize) -> u64 {
        // SAFETY: `table` is a table of this hierarchy (or a frame we own), valid through
        // `PhysMem`; `i < 512` keeps the access inside the 4096-byte table.
        unsafe { self.entry(table, i).read() }
    }

    /// Sets entry `i` of the table at `table`.
    #[inline(always)]
    pub(crate) fn write(&mut self, table: u64, i: usize, value: u64) {
        // SAFETY: as in `read`; `&mut self` makes the mapper the only writer.
        unsafe { self.entry(table, i).write(value) }
    }

    /// Entry `i` of the table at `table` as the CPU sees it: an atomic word that page walks on
    /// other CPUs may update (Accessed, Dirty) at any time.
    #[inline(always)]
    fn atomic(&self, table: u64, i: usize) -> &core::sync::atomic::AtomicU64 {
        // SAFETY: as in `read`, the entry is valid, 8-aligned memory; every access to a live
        // entry that can race a page walk goes through this atomic view.
        unsafe { core::sync::atomic::AtomicU64::from_ptr(self.entry(table, i)) }
    }

    /// Replaces entry `i` of `table` by `new` in one atomic exchange and returns the value it
    /// held: a Dirty bit set by another CPU up to that instant is in the result.
    #[inline]
    pub(crate) fn exchange(&mut self, table: u64, i: usize, new: u64) -> u64 {
        self.atomic(table, i)
            .swap(new, core::sync::atomic::Ordering::AcqRel)
    }

    /// Clears the bits of `mask`'s complement in entry `i` of `table` atomically; returns the
    /// old value.
    #[inline]
    pub(crate) fn fetch_and(&self, table: u64, i: usize, mask: u64) -> u64 {
        self.atomic(table, i)
            .fetch_and(mask, core::sync::atomic::Ordering::AcqRel)
    }

    /// Sets `bits` in entry `i` of `table` atomically (what a page walk does to Accessed and
    /// Dirty); returns the old value.
    #[inline]
    pub(crate) fn fetch_or(&self, table: u64, i: usize, bits: u64) -> u64 {
        self.atomic(table, i)
            .fetch_or(bits, core::sync::atomic::Ordering::AcqRel)
    }

    /// Rewrites entry `i` of `table` with `f(old)` without losing a hardware update: an entry
    /// the CPU may still mark Dirty (present, writable, clean) is replaced by compare-exchange;
    /// for any other entry only Accessed can change meanwhile, and `f` decides it. Returns the
    /// value replaced.
    #[inline]
    pub(crate) fn update(&mut self, table: u64, i: usize, f: impl Fn(u64) -> u64) -> u64 {
        use core::sync::atomic::Ordering::{AcqRel, Acquire};
        let cell = self.atomic(table, i);
        let mut old = cell.load(Acquire);
        loop {
            let racy = old & (PRESENT | WRITABLE | DIRTY) == PRESENT | WRITABLE;
            if !racy {
                cell.store(f(old), core::sync::atomic::Ordering::Release);
                return old;
            }
            match cell.compare_exchange_weak(old, f(old), AcqRel, Acquire) {
                Ok(_) => return old,
                Err(now) => old = now,
            }
        }
    }

    pub(crate) fn zero_table(&mut self, table: u64) {
        // SAFETY: `table` is a whole 4096-byte frame we own, valid through `PhysMem`.
        unsafe { self.ptr(table).write_bytes(0, ENTRIES) }
    }

    /// Whether no entry is in use: neither present nor holding a kernel
    /// value in a non-present entry (a swap slot).
    pub(crate) fn is_empty_table(&self, table: u64) -> bool {
        (0..ENTRIES).all(|i| self.read(table, i) == 0)
    }

    /// Maps one page of size `S` exactly. A new mapping needs no TLB flush, so the token is empty.
    ///
    /// ```compile_fail,E0133
    /// # fn f(m: &mut kmem::paging::PageTables<kmem::paging::OffsetPhysMem>, a: &mut &kmem::frame::LockedFrameAllocator) {
    /// use x86_64::structures::paging::{Page, PhysFrame, Size4KiB};
    /// // Mapping a frame on tables that may be live needs `unsafe`:
    /// let page = Page::<Size4KiB>::containing_address(x86_64::VirtAddr::new(0x1000));
    /// let frame = PhysFrame::containing_address(x86_64::PhysAddr::new(0x1000));
    /// m.map(page, frame, kmem::paging::MapFlags::READ_WRITE, a);
    /// # }
    /// ```
    ///
    /// # Safety
    /// On tables a CPU may use (active now, or loaded later), the new
    /// mapping must not let code reach memory in a way Rust's rules forbid:
    /// no frame that is in use as something else (a page table, the kernel
    /// image, a heap or stack page, another mapping's private frame) mapped
    /// writable or user-accessible, no device memory mapped by mistake. The
    /// `x86_64` crate's `Mapper::map_to` has the same contract.
    pub unsafe fn map<S: PageSize, A: FrameSource + ?Sized>(
        &mut self,
        page: Page<S>,
        frame: PhysFrame<S>,
        flags: MapFlags,
        alloc: &mut A,
    ) -> Result<Flush, PagingError> {
        let (va, pa) = (
            page.start_address().as_u64(),
            frame.start_address().as_u64(),
        );
        // Forged (`*_unchecked`) pages or frames may be non-canonical or misaligned for `S`.
        let addr = VirtAddr::try_new(va).map_err(|e| PagingError::NonCanonical { addr: e.0 })?;
        if !va.is_multiple_of(S::SIZE) {
            let align = S::SIZE;
            return Err(PagingError::MisalignedVirtAddr { addr, align });
        }
        if !pa.is_multiple_of(S::SIZE) {
            let (addr, align) = (frame.start_address(), S::SIZE);
            return Err(PagingError::MisalignedPhysAddr { addr, align });
        }
        self.map_range_inner(va, pa, S::SIZE, flags, LeafSize::of::<S>(), true, alloc)
    }

    /// Unmaps one page of size `S`, returning its frame; tables left empty go back to `alloc`.
    ///
    /// # Safety
    /// On tables a CPU may use, nothing may still use the pages (no
    /// reference into them, no stack or heap on them); the caller flushes
    /// (or shoots down) the returned token before reusing what they mapped.
    pub unsafe fn unmap<S: PageSize, A: FrameDeallocator<Size4KiB> + ?Sized>(
        &mut self,
        page: Page<S>,
        alloc: &mut A,
    ) -> Result<(PhysFrame<S>, Flush), PagingError> {
        let va = page.start_address().as_u64();
        let level = LeafSize::of::<S>().level();
        let (path, _) = self.leaf_path(va, level)?;
        let leaf = self.exchange(path[level as usize], index(va & LINEAR_MASK, level), 0);
        self.reclaim_path(va & LINEAR_MASK, level, &path, alloc);
        let mut flush = Flush::none();
        flush.add(va);
        Ok((
            PhysFrame::containing_address(PhysAddr::new(leaf & ADDR_MASK)),
            flush,
        ))
    }

    /// Changes the flags of one page of size `S`.
    ///
    /// # Safety
    /// As for a new mapping of the same frames with `flags` (see
    /// [`map`](Self::map)); taking a right away from pages in use is the
    /// caller's to order with their users.
    pub unsafe fn protect<S: PageSize>(
        &mut self,
        page: Page<S>,
        flags: MapFlags,
    ) -> Result<Flush, PagingError> {
        self.rewrite_leaf(page, None, flags).map(|(_, flush)| flush)
    }

    /// Points one mapped page of size `S` at another frame with new flags, returning the
    /// frame it mapped before. Needs no table frame, so it cannot run out of memory: a
    /// copy-on-write fault swaps in its copy this way after the only fallible step.
    ///
    /// # Safety
    /// On tables a CPU may use (active now, or loaded later), the new
    /// mapping (and the unmapping of the old frame) must not let code reach memory in a way Rust's rules forbid:
    /// no frame that is in use as something else (a page table, the kernel
    /// image, a heap or stack page, another mapping's private frame) mapped
    /// writable or user-accessible, no device memory mapped by mistake. The
    /// `x86_64` crate's `Mapper::map_to` has the same contract.
    pub unsafe fn remap<S: PageSize>(
        &mut self,
        page: Page<S>,
        frame: PhysFrame<S>,
        flags: MapFlags,
    ) -> Result<(PhysFrame<S>, Flush), PagingError> {
        self.rewrite_leaf(page, Some(frame), flags)
    }

    fn rewrite_leaf<S: PageSize>(
        &mut self,
        page: Page<S>,
        frame: Option<PhysFrame<S>>,
        flags: MapFlags,
    ) -> Result<(PhysFrame<S>, Flush), PagingError> {
        self.rewrite_leaf_entry(page, frame, flags)
            .map(|(old, flush)| {
                let frame = PhysAddr::new(old & ADDR_MASK & !(S::SIZE - 1));
                (PhysFrame::containing_address(frame), flush)
            })
    }

    /// [`protect`](Self::protect) or [`remap`](Self::remap) returning the whole entry it
    /// replaced. The entry is rewritten atomically: with the frame unchanged, the Accessed
    /// and Dirty bits the CPU set are kept (a protect must not make a written page look
    /// clean); with a new frame they start clear, and the caller reads the old frame's in the
    /// result.
    pub(crate) fn rewrite_leaf_entry<S: PageSize>(
        &mut self,
        page: Page<S>,
        frame: Option<PhysFrame<S>>,
        flags: MapFlags,
    ) -> Result<(u64, Flush), PagingError> {
        let va = page.start_address().as_u64();
        let bits = flags.checked_bits(page.start_address())?;
        if let Some(addr) = frame.map(|f| f.start_address()) {
            if !addr.is_aligned(S::SIZE) {
                let align = S::SIZE;
                return Err(PagingError::MisalignedPhysAddr { addr, align });
            }
        }
        let level = LeafSize::of::<S>().level();
        let (path, _) = self.leaf_path(va, level)?;
        let lin = va & LINEAR_MASK;
        for l in level + 1..=4 {
            if bits & USER != 0 {
                let i = index(lin, l);
                let e = self.read(path[l as usize], i);
                self.write(path[l as usize], i, e | USER);
            }
        }
        let new_frame = frame.map(|f| f.start_address().as_u64());
        let old = self.update(path[level as usize], index(lin, level), |e| {
            let old_frame = e & ADDR_MASK & !(S::SIZE - 1);
            match new_frame {
                Some(f) if f != old_frame => f | leaf_bits(bits, level),
                _ => old_frame | leaf_bits(bits, level) | (e & ACCESSED_DIRTY),
            }
        });
        let mut flush = Flush::none();
        flush.add(va);
        Ok((old, flush))
    }

    /// Walks to the leaf of size `level` at `va`: the tables on the way (indexed by level)
    /// and the leaf entry.
    fn leaf_path(&self, va: u64, level: u8) -> Result<([u64; 5], u64), PagingError> {
        let addr = VirtAddr::try_new(va).map_err(|e| PagingError::NonCanonical { addr: e.0 })?;
        let lin = va & LINEAR_MASK;
        let path = self.path_to(lin, level).map_err(|(l, e)| {
            if e & PRESENT == 0 {
                PagingError::NotMapped { addr }
            } else {
                PagingError::HugePageInTheWay {
                    addr: VirtAddr::new_truncate(lin & !(span(l) - 1)),
                    frame: PhysAddr::new(e & ADDR_MASK),
                    size: LeafSize::from_level(l),
                }
            }
        })?;
        let e = self.read(path[level as usize], index(lin, level));
        if e & PRESENT == 0 {
            return Err(PagingError::NotMapped { addr });
        }
        if !is_leaf(e, level) {
            let size = LeafSize::from_level(level);
            return Err(PagingError::TableInTheWay { addr, size });
        }
        Ok((path, e))
    }

    /// The tables from the PML4 down to the one at `level` on the way to the linear address
    /// `lin`, indexed by level; or, when an entry above stops the way (not present, or a huge
    /// leaf), its level and value. The one descent to a single address besides the unrolled
    /// [`translate`](Self::translate).
    pub(crate) fn path_to(&self, lin: u64, level: u8) -> Result<[u64; 5], (u8, u64)> {
        let mut path = [0u64; 5];
        path[4] = self.pml4;
        for l in (level + 1..=4).rev() {
            let e = self.read(path[l as usize], index(lin, l));
            if e & PRESENT == 0 || is_leaf(e, l) {
                return Err((l, e));
            }
            path[l as usize - 1] = e & ADDR_MASK;
        }
        Ok(path)
    }

    /// Frees the tables on `path` that the removal at `level` left empty, bottom up.
    fn reclaim_path<A: FrameDeallocator<Size4KiB> + ?Sized>(
        &mut self,
        lin: u64,
        level: u8,
        path: &[u64; 5],
        alloc: &mut A,
    ) {
        for l in level..4 {
            if !self.may_free(lin, l) || !self.is_empty_table(path[l as usize]) {
                return;
            }
            self.write(path[l as usize + 1], index(lin, l + 1), 0);
            // SAFETY: the table is empty and its only parent entry was just cleared.
            unsafe { alloc.deallocate_frame(frame_of(path[l as usize])) };
        }
    }

    /// Whether the table at `level` covering `lin` may be freed when empty: kernel-half PDPTs
    /// are shared with other address spaces and stay.
    #[inline]
    pub(crate) fn may_free(&self, lin: u64, level: u8) -> bool {
        !(level == 3 && lin >= HALF)
    }
}

#[inline(always)]
pub(crate) fn frame_of(addr: u64) -> PhysFrame {
    PhysFrame::containing_address(PhysAddr::new_truncate(addr))
}
