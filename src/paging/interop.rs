//! The `x86_64` crate's paging traits over kmem's mapper, so code written against
//! `OffsetPageTable` (blog_os's `translate_addr`, `create_example_mapping`) runs unchanged.
//!
//! [`PageTables`] itself implements `Translate`. The `Mapper<S>` trait takes frame allocators
//! that cannot take frames back and promises that `unmap` frees nothing, while kmem's
//! mapper frees empty tables and gives back reserved tables on failure: [`X86Mapper`]
//! keeps such frames and hands them out again before asking the caller's allocator.

use x86_64::structures::paging::mapper::{
    FlagUpdateError, MapToError, MappedFrame, Mapper as X86MapperTrait, MapperFlush,
    MapperFlushAll, Translate, TranslateError, TranslateResult, UnmapError,
};
use x86_64::structures::paging::{
    FrameAllocator, FrameDeallocator, Page, PageSize, PageTableFlags, PhysFrame, Size1GiB,
    Size2MiB, Size4KiB,
};
use x86_64::{PhysAddr, VirtAddr};

use super::entry::{index, is_leaf, ADDR_MASK, LINEAR_MASK, PRESENT};
use super::spare::SpareFrames;
use super::{LeafSize, MapFlags, PageTables, PagingError, PhysMem};

impl<P: PhysMem> Translate for PageTables<P> {
    fn translate(&self, addr: VirtAddr) -> TranslateResult {
        let Ok(t) = PageTables::translate(self, addr) else {
            return TranslateResult::NotMapped;
        };
        let frame = match t.size {
            LeafSize::Size4KiB => MappedFrame::Size4KiB(PhysFrame::containing_address(t.frame)),
            LeafSize::Size2MiB => MappedFrame::Size2MiB(PhysFrame::containing_address(t.frame)),
            LeafSize::Size1GiB => MappedFrame::Size1GiB(PhysFrame::containing_address(t.frame)),
        };
        TranslateResult::Mapped {
            frame,
            offset: addr - t.page,
            flags: t.flags,
        }
    }

    /// kmem's lean walk (no rights, no page computed).
    fn translate_addr(&self, addr: VirtAddr) -> Option<PhysAddr> {
        PageTables::translate_addr(self, addr)
    }
}

/// kmem's [`PageTables`] as the `x86_64` crate's `Mapper<Size4KiB | Size2MiB | Size1GiB>` and
/// `Translate`, for code written against `OffsetPageTable`.
///
/// Differences from `OffsetPageTable`:
/// - a writable mapping is made non-executable, by `map_to` and by `update_flags` (kmem
///   refuses W+X without an explicit opt-in that these flags cannot express);
/// - flags without `PRESENT` keep the page present: unmap a page to make a guard page;
/// - parent table flags are kmem's (present, writable, user where a user leaf needs it);
/// - `unmap` takes emptied tables out of the hierarchy and keeps them for the next
///   `map_to` (see [`give_back_spares`]), so a lower-half table shared with another
///   address space would be reclaimed: share tables only in the kernel half;
/// - `map_to` over a non-present entry holding a value (a swap entry) replaces it.
///
/// [`give_back_spares`]: X86Mapper::give_back_spares
///
/// ```
/// # use kmem::paging::{PageTables, PhysMem, X86Mapper};
/// # use x86_64::structures::paging::{FrameAllocator, Mapper as _, Page, PageTableFlags, PhysFrame, Size4KiB};
/// # use x86_64::{PhysAddr, VirtAddr};
/// // blog_os's `create_example_mapping`, unchanged but for the mapper's type.
/// fn create_example_mapping(
///     page: Page,
///     mapper: &mut impl x86_64::structures::paging::Mapper<Size4KiB>,
///     frame_allocator: &mut impl FrameAllocator<Size4KiB>,
/// ) {
///     let frame = PhysFrame::containing_address(PhysAddr::new(0xb8000));
///     let flags = PageTableFlags::PRESENT | PageTableFlags::WRITABLE;
///     // SAFETY: (blog_os's example) the frame is the VGA buffer, used by nothing else.
///     let map_to_result = unsafe { mapper.map_to(page, frame, flags, frame_allocator) };
///     map_to_result.expect("map_to failed").ignore();
/// }
/// # fn demo<P: PhysMem + Clone>(m: PageTables<P>, frames: &mut impl FrameAllocator<Size4KiB>) {
/// let mut mapper = X86Mapper::new(m);
/// create_example_mapping(Page::containing_address(VirtAddr::new(0xdeadb000)), &mut mapper, frames);
/// # }
/// ```
#[derive(Debug)]
pub struct X86Mapper<P: PhysMem> {
    mapper: PageTables<P>,
    spares: SpareFrames,
}

impl<P: PhysMem + Clone> X86Mapper<P> {
    /// Wraps `mapper`.
    pub const fn new(mapper: PageTables<P>) -> Self {
        Self {
            mapper,
            spares: SpareFrames::new(),
        }
    }

    /// kmem's mapper (for ranges, huge-page picking, address spaces).
    ///
    /// ```compile_fail,E0133
    /// # fn f(m: &mut kmem::paging::X86Mapper<kmem::paging::OffsetPhysMem>) {
    /// // A way around `map_to`'s `unsafe` is itself `unsafe`:
    /// let _ = m.mapper_mut();
    /// # }
    /// ```
    ///
    /// # Safety
    /// As the `x86_64` crate's `Mapper::map_to`: every mapping made through
    /// it must not create aliases or reach memory in use in ways that break
    /// Rust's guarantees, and every unmapping must leave no live use of the
    /// pages; kmem's `PageTables` methods do not check this.
    pub unsafe fn mapper_mut(&mut self) -> &mut PageTables<P> {
        &mut self.mapper
    }

    /// Table frames kept for reuse (freed by `unmap` or by a failed `map_to`).
    pub const fn spare_frames(&self) -> usize {
        self.spares.len()
    }

    /// Hands every kept frame to `frames`; returns how many.
    pub fn give_back_spares(&mut self, frames: &mut impl FrameDeallocator<Size4KiB>) -> usize {
        let mut given = 0;
        while let Some(frame) = self.spares.pop(self.mapper.phys_mem()) {
            // SAFETY: kept frames are unused (freed tables or never-used reservations).
            unsafe { frames.deallocate_frame(frame) };
            given += 1;
        }
        given
    }

    /// Gives the kept frames to `frames` and returns kmem's mapper.
    pub fn into_inner(mut self, frames: &mut impl FrameDeallocator<Size4KiB>) -> PageTables<P> {
        self.give_back_spares(frames);
        self.mapper
    }

    /// Sets the flags of the table entry at `level` on the way to `page` (a table, not a leaf).
    fn set_table_flags<S: PageSize>(
        &mut self,
        page: Page<S>,
        level: u8,
        flags: PageTableFlags,
    ) -> Result<MapperFlushAll, FlagUpdateError> {
        if level <= LeafSize::of::<S>().level() {
            return Err(FlagUpdateError::ParentEntryHugePage);
        }
        let lin = page.start_address().as_u64() & LINEAR_MASK;
        let mut table = self.mapper.root();
        let mut l = 4;
        loop {
            let entry = self.mapper.read(table, index(lin, l));
            if entry & PRESENT == 0 {
                return Err(FlagUpdateError::PageNotMapped);
            }
            if is_leaf(entry, l) {
                return Err(FlagUpdateError::ParentEntryHugePage);
            }
            if l == level {
                let value = (entry & ADDR_MASK) | flags.bits() | PRESENT;
                self.mapper.write(table, index(lin, l), value);
                return Ok(MapperFlushAll::new());
            }
            table = entry & ADDR_MASK;
            l -= 1;
        }
    }
}

/// The flags kmem maps for `x86_64` leaf flags: literal, but never writable and executable.
fn leaf_flags(flags: PageTableFlags) -> MapFlags {
    let mut flags = flags;
    if flags.contains(PageTableFlags::WRITABLE) {
        flags |= PageTableFlags::NO_EXECUTE;
    }
    MapFlags::from_pte(flags)
}

/// The caller's allocator with the adapter's kept frames in front of it.
struct WithSpares<'a, A: ?Sized, P: PhysMem> {
    alloc: &'a mut A,
    spares: &'a mut SpareFrames,
    phys: P,
}

// SAFETY: kept frames are unused and handed out once (popped); the rest come from `alloc`.
unsafe impl<A: FrameAllocator<Size4KiB> + ?Sized, P: PhysMem> FrameAllocator<Size4KiB>
    for WithSpares<'_, A, P>
{
    fn allocate_frame(&mut self) -> Option<PhysFrame> {
        self.spares
            .pop(&self.phys)
            .or_else(|| self.alloc.allocate_frame())
    }
}

impl<A: ?Sized, P: PhysMem> FrameDeallocator<Size4KiB> for WithSpares<'_, A, P> {
    unsafe fn deallocate_frame(&mut self, frame: PhysFrame) {
        // SAFETY: the mapper gives back only table frames it no longer uses, all of them
        // from its frame source, which its `PhysMem` reaches.
        unsafe { self.spares.push(&self.phys, frame) };
    }
}

macro_rules! impl_x86_mapper {
    ($($size:ty),*) => {$(
        impl<P: PhysMem + Clone> X86MapperTrait<$size> for X86Mapper<P> {
            unsafe fn map_to_with_table_flags<A>(
                &mut self,
                page: Page<$size>,
                frame: PhysFrame<$size>,
                flags: PageTableFlags,
                _parent_table_flags: PageTableFlags,
                frame_allocator: &mut A,
            ) -> Result<MapperFlush<$size>, MapToError<$size>>
            where
                Self: Sized,
                A: FrameAllocator<Size4KiB> + ?Sized,
            {
                let mut source = WithSpares {
                    alloc: frame_allocator,
                    spares: &mut self.spares,
                    phys: self.mapper.phys_mem().clone(),
                };
                // SAFETY: `map_to`'s contract (the caller's `unsafe`) is `map`'s.
                match unsafe { self.mapper.map(page, frame, leaf_flags(flags), &mut source) } {
                    // A new mapping needs no flush; `MapperFlush` carries the caller's promise.
                    Ok(flush) => {
                        flush.ignore();
                        Ok(MapperFlush::new(page))
                    }
                    Err(PagingError::AlreadyMapped { frame: mapped, .. }) => Err(
                        MapToError::PageAlreadyMapped(PhysFrame::containing_address(mapped)),
                    ),
                    Err(PagingError::TableInTheWay { .. }) => {
                        Err(MapToError::PageAlreadyMapped(frame))
                    }
                    Err(PagingError::HugePageInTheWay { .. }) => {
                        Err(MapToError::ParentEntryHugePage)
                    }
                    // Out of frames; pages and frames from `x86_64`'s checked constructors
                    // are canonical and aligned, so nothing else can fail here.
                    Err(_) => Err(MapToError::FrameAllocationFailed),
                }
            }

            fn unmap(
                &mut self,
                page: Page<$size>,
            ) -> Result<(PhysFrame<$size>, MapperFlush<$size>), UnmapError> {
                let mut source = WithSpares {
                    alloc: &mut NoFrames,
                    spares: &mut self.spares,
                    phys: self.mapper.phys_mem().clone(),
                };
                // SAFETY: the `x86_64` crate makes `Mapper::unmap` safe: the caller of this trait
                // method keeps the pages unused, as with any `Mapper` (kmem's own API makes it `unsafe`).
                match unsafe { self.mapper.unmap(page, &mut source) } {
                    Ok((frame, flush)) => {
                        // The caller flushes through the returned `MapperFlush`.
                        flush.ignore();
                        Ok((frame, MapperFlush::new(page)))
                    }
                    Err(PagingError::HugePageInTheWay { .. }) => {
                        Err(UnmapError::ParentEntryHugePage)
                    }
                    Err(_) => Err(UnmapError::PageNotMapped),
                }
            }

            unsafe fn update_flags(
                &mut self,
                page: Page<$size>,
                flags: PageTableFlags,
            ) -> Result<MapperFlush<$size>, FlagUpdateError> {
                // SAFETY: `update_flags`'s contract (the caller's `unsafe`) is `protect`'s.
                match unsafe { self.mapper.protect(page, leaf_flags(flags)) } {
                    Ok(flush) => {
                        flush.ignore();
                        Ok(MapperFlush::new(page))
                    }
                    Err(PagingError::HugePageInTheWay { .. }) => {
                        Err(FlagUpdateError::ParentEntryHugePage)
                    }
                    Err(_) => Err(FlagUpdateError::PageNotMapped),
                }
            }

            unsafe fn set_flags_p4_entry(
                &mut self,
                page: Page<$size>,
                flags: PageTableFlags,
            ) -> Result<MapperFlushAll, FlagUpdateError> {
                self.set_table_flags(page, 4, flags)
            }

            unsafe fn set_flags_p3_entry(
                &mut self,
                page: Page<$size>,
                flags: PageTableFlags,
            ) -> Result<MapperFlushAll, FlagUpdateError> {
                self.set_table_flags(page, 3, flags)
            }

            unsafe fn set_flags_p2_entry(
                &mut self,
                page: Page<$size>,
                flags: PageTableFlags,
            ) -> Result<MapperFlushAll, FlagUpdateError> {
                self.set_table_flags(page, 2, flags)
            }

            fn translate_page(&self, page: Page<$size>) -> Result<PhysFrame<$size>, TranslateError> {
                let t = self
                    .mapper
                    .translate(page.start_address())
                    .map_err(|_| TranslateError::PageNotMapped)?;
                let want = LeafSize::of::<$size>();
                if t.size.level() > want.level() {
                    Err(TranslateError::ParentEntryHugePage)
                } else if t.size != want {
                    Err(TranslateError::PageNotMapped)
                } else {
                    PhysFrame::from_start_address(t.frame)
                        .map_err(|_| TranslateError::InvalidFrameAddress(t.frame))
                }
            }
        }
    )*};
}

impl_x86_mapper!(Size4KiB, Size2MiB, Size1GiB);

impl<P: PhysMem> Translate for X86Mapper<P> {
    fn translate(&self, addr: VirtAddr) -> TranslateResult {
        Translate::translate(&self.mapper, addr)
    }

    fn translate_addr(&self, addr: VirtAddr) -> Option<PhysAddr> {
        self.mapper.translate_addr(addr)
    }
}

/// An allocator with nothing to give: `unmap` only ever frees frames.
struct NoFrames;

// SAFETY: hands out no frame at all.
unsafe impl FrameAllocator<Size4KiB> for NoFrames {
    fn allocate_frame(&mut self) -> Option<PhysFrame> {
        None
    }
}
