//! One address space of the virtual-memory layer: its areas over a page
//! table hierarchy, `mmap`/`munmap`/`mprotect`-style operations,
//! copy-on-write fork and teardown (faults are resolved in `resolve.rs`).

use super::areas::AreaSet;
use super::gather::Gather;
use super::huge::pages_of;
use super::replace::ReplacementPolicy;
use super::{Area, AreaKind, Prot, Vm, VmError};
use crate::paging::Flush;
use crate::paging::{
    AddressSpace, CopyAs, CopyLeaf, FrameSource, Leaf, LeafSize, PageTables, PhysMem,
};
use crate::smp::{ActiveCpus, CachePadded, Tlb};
use alloc::boxed::Box;
use alloc::vec::Vec;
use core::sync::atomic::AtomicU64;
use x86_64::structures::paging::{Page, PhysFrame, Size4KiB};
use x86_64::VirtAddr;

use crate::PAGE_SIZE as PAGE;
/// The first address of the kernel half.
pub(super) const KERNEL_HALF_START: u64 = 0xffff_8000_0000_0000;

/// The range a user address space manages: the lower half without page 0
/// (so a null pointer never maps).
pub const USER_RANGE: (u64, u64) = (PAGE, 0x0000_8000_0000_0000);

/// Where a space places the areas it chooses the address of
/// ([`VmSpace::map_anonymous`] without a usable hint), as hardened kernels
/// do: never below `min_addr` (so that a null pointer plus an offset
/// faults; Linux's `mmap_min_addr`), top-down from `top` (below the room
/// kept for stacks), `top` lowered by a random amount the kernel supplies
/// ([`VmSpace::randomize`]: kmem takes the entropy, it does not invent it).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UserLayout {
    /// No area, chosen or fixed, starts below this (page-aligned).
    pub min_addr: u64,
    /// Chosen addresses end at or below this (page-aligned); hints and
    /// fixed areas above it (a stack) are allowed.
    pub top: u64,
}

/// The default [`UserLayout::min_addr`]: 64 KiB, as Linux.
pub const MMAP_MIN_ADDR: u64 = 0x1_0000;
/// Room kept at the top of the user range for stacks (1 GiB).
const STACK_ROOM: u64 = 1 << 30;
/// Pages of randomization at most: 2^28 pages (1 TiB), as Linux on x86_64.
const RANDOM_PAGES: u64 = 1 << 28;

impl UserLayout {
    /// The default layout of a space managing `[lo, hi)`: `min_addr` at
    /// least 64 KiB; `top` 1 GiB below `hi` for the whole user range
    /// (stacks go there), `hi` otherwise.
    pub fn for_range(lo: u64, hi: u64) -> Self {
        let top = if (lo, hi) == USER_RANGE {
            hi - STACK_ROOM
        } else {
            hi
        };
        Self {
            min_addr: lo.max(MMAP_MIN_ADDR).min(top),
            top,
        }
    }
}

/// An address space: areas, and the page tables that realize them.
///
/// Anonymous pages get frames on the first touch ([`handle_fault`]); a
/// [`fork`] shares every private frame copy-on-write. Every operation takes
/// the kernel's [`Vm`] (zero frame, share counts, counters), a frame
/// source and a [`Tlb`]: an operation that removes, downgrades or repoints
/// a translation invalidates it on every CPU that may cache the space
/// ([`cpus`](Self::cpus)) and waits for them before it frees a frame or a
/// page table the translation reached.
///
/// `vm` allocates its bookkeeping (areas, share counts) on the kernel
/// heap, so it runs once a global allocator exists; the layers below it do
/// not allocate.
///
/// [`handle_fault`]: Self::handle_fault
/// [`fork`]: Self::fork
pub struct VmSpace<P: PhysMem> {
    /// Locked only to look at or write entries, never across frame
    /// zeroing, copying or device I/O; `&mut self` operations reach it
    /// without locking.
    /// On cache lines of its own: CPUs faulting at once take it, and must
    /// not bounce the lines of the fields every fault only reads.
    /// (Boxed: keeps a space small enough to hand back by value in errors.)
    pub(super) mapper: Box<CachePadded<spin::Mutex<PageTables<P>>>>,
    /// The top-level table (what CR3 holds while the space is active).
    pub(super) pml4: PhysFrame,
    /// The mapper's access to physical memory, to zero, copy and write out
    /// frames with the page tables unlocked.
    pub(super) phys: P,
    /// Boxed: keeps a space small enough to hand back by value in errors.
    pub(super) areas: Box<AreaSet>,
    /// Where the reclaim scan goes on (CLOCK hand).
    pub(super) clock_hand: AtomicU64,
    /// The page of the last swap-in, to spot sequential refaults.
    pub(super) last_swap_in: AtomicU64,
    /// Chooses the pages reclaim gives up (page ids: virtual page numbers);
    /// without one, reclaim runs its own CLOCK over the Accessed bits.
    /// Locked after the page tables.
    /// Boxed, as `cpus`: keeps a space small enough to hand back by value
    /// in errors.
    pub(super) policy: Box<spin::Mutex<Option<Box<dyn ReplacementPolicy + Send>>>>,
    /// Whether `policy` holds one (set with `&mut self`, read unlocked).
    pub(super) has_policy: bool,
    /// The id this space joined global reclaim with (`u32::MAX`: none):
    /// its pages go to the `Vm`'s policy instead of `policy`. Not an
    /// `Option`: a space stays small enough to hand back in errors.
    pub(super) global: u32,
    /// The CPUs that have (or lazily may still have) the space loaded.
    pub(super) cpus: Box<ActiveCpus>,
    /// Where chosen addresses go.
    pub(super) layout: UserLayout,
}

impl<P: PhysMem> core::fmt::Debug for VmSpace<P> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("VmSpace")
            .field("pml4", &self.pml4)
            .field("areas", &self.areas.len())
            .finish()
    }
}

impl<P: PhysMem + Clone> VmSpace<P> {
    /// Manages `[lo, hi)` of the hierarchy of `mapper`, which must map
    /// nothing there yet (checked: refused with the first address found,
    /// and the mapper handed back). The space owns the hierarchy from now
    /// on: [`destroy`](Self::destroy) frees its lower half and its PML4.
    pub fn with_mapper(
        mapper: PageTables<P>,
        lo: u64,
        hi: u64,
    ) -> Result<Self, (PageTables<P>, VmError)> {
        let (start, len) = (VirtAddr::new_truncate(lo), hi.saturating_sub(lo));
        let mut first: Option<u64> = None;
        mapper.for_each_leaf_in(start, len, |l| {
            first.get_or_insert(l.page.as_u64());
        });
        mapper.for_each_soft_entry(start, len, |va, _| {
            first = Some(first.map_or(va.as_u64(), |f| f.min(va.as_u64())));
        });
        if let Some(addr) = first {
            return Err((mapper, VmError::Overlap { addr }));
        }
        Ok(Self::from_empty(mapper, lo, hi))
    }

    /// [`with_mapper`](Self::with_mapper) for a hierarchy known to map
    /// nothing in `[lo, hi)` (one kmem just made).
    fn from_empty(mapper: PageTables<P>, lo: u64, hi: u64) -> Self {
        Self {
            pml4: mapper.pml4(),
            phys: mapper.phys_mem().clone(),
            mapper: Box::new(CachePadded(spin::Mutex::new(mapper))),
            areas: Box::new(AreaSet::new(lo, hi)),
            clock_hand: AtomicU64::new(lo),
            last_swap_in: AtomicU64::new(0),
            policy: Box::new(spin::Mutex::new(None)),
            has_policy: false,
            global: u32::MAX,
            cpus: Box::new(ActiveCpus::new()),
            layout: UserLayout::for_range(lo, hi),
        }
    }

    /// A new, empty user address space (managing [`USER_RANGE`]) whose
    /// kernel half is that of `kernel`.
    pub fn new_user<A: FrameSource + ?Sized>(
        kernel: &PageTables<P>,
        frames: &mut A,
    ) -> Result<Self, VmError> {
        let space = AddressSpace::new(kernel, frames)?;
        Ok(Self::from_empty(
            space.into_mapper(),
            USER_RANGE.0,
            USER_RANGE.1,
        ))
    }

    /// Duplicates this address space: the child gets the same areas; every
    /// anonymous page is shared read-only by both, and the first write on
    /// either side copies it (or, once it is no longer shared, just regains
    /// write access). Fixed areas map the same frames in both; shared
    /// object areas the same cached frames. On error nothing changed and no
    /// frame was taken, but for huge pages split first (each into 4 KiB
    /// pages over the same frames, a page table taken), which stay split.
    /// This space's pages that lost write access are invalidated on its
    /// CPUs before it returns.
    pub fn fork<A: FrameSource + ?Sized>(
        &mut self,
        vm: &Vm,
        frames: &mut A,
        tlb: &mut Tlb<'_>,
    ) -> Result<Self, VmError> {
        let (lo, hi) = self.areas.bounds();
        if hi > USER_RANGE.1 {
            return Err(VmError::OutOfRange {
                addr: lo,
                len: hi - lo,
            });
        }
        // Huge pages are shared page by page: split first (they stay
        // split if the fork fails).
        self.split_huge_in(vm, (lo, hi), frames, tlb)?;
        // Share counts first: a fork must not need the heap halfway.
        let zero_frame = vm.zero_frame();
        let mut reserved = Ok(());
        let m = self.mapper.get_mut();
        for area in self.areas.iter().filter(|a| a.kind.is_private_memory()) {
            m.for_each_leaf_in(VirtAddr::new(area.start), area.len(), |leaf| {
                let frame = PhysFrame::containing_address(leaf.frame);
                let va = leaf.page.as_u64();
                // An object's cached frame is not shared: it is counted by
                // its object.
                if reserved.is_ok()
                    && frame != zero_frame
                    && super::objects::cached_page(vm, area, va, frame).is_none()
                {
                    reserved = vm.reserve_share(frame);
                }
            });
        }
        let space = match reserved.map(|()| AddressSpace::new(self.mapper.get_mut(), frames)) {
            Ok(Ok(space)) => space,
            failed => {
                vm.trim_shares();
                return Err(match failed {
                    Ok(Err(e)) => e.into(),
                    _ => VmError::OutOfMemory,
                });
            }
        };
        let mut child = Self::from_empty(space.into_mapper(), USER_RANGE.0, USER_RANGE.1);
        child.areas = self.areas.clone();
        // A child does not inherit locks (as mlock(2) says).
        let locked: Vec<(u64, u64)> = self
            .areas
            .iter()
            .filter(|a| a.locked)
            .map(|a| (a.start, a.end))
            .collect();
        for (s, e) in locked {
            child.areas.update(s, e, |a| Area { locked: false, ..a });
        }
        child.layout = self.layout;
        // Leaves come in address order: walk the areas alongside.
        let mut areas = self.areas.iter().peekable();
        let zero = vm.zero_frame().start_address();
        let mut object: Option<(super::ObjectId, alloc::sync::Arc<super::object::VmObject>)> = None;
        let copied = self.mapper.get_mut().copy_leaves_into(
            child.mapper.get_mut(),
            VirtAddr::new(lo),
            hi - lo,
            frames,
            |va, leaf| {
                while areas.next_if(|a| a.end <= va).is_some() {}
                match (areas.peek().map(|a| a.kind), leaf) {
                    (Some(k), CopyLeaf::Mapped { frame, .. })
                        if k.is_private_memory()
                            && frame != zero
                            && areas.peek().is_none_or(|a| {
                                let f = PhysFrame::containing_address(frame);
                                super::objects::cached_page(vm, a, va, f).is_none()
                            }) =>
                    {
                        vm.share(PhysFrame::containing_address(frame));
                        CopyAs::ReadOnly
                    }
                    // An object's cached frame: a shared area's page, or a
                    // private area's not copied yet (read-only already).
                    (
                        Some(AreaKind::Shared { .. } | AreaKind::Private { .. }),
                        CopyLeaf::Mapped { .. },
                    ) => {
                        // The child maps the object's cached frame too.
                        if let Some((id, index)) = areas.peek().and_then(|a| a.object_page(va)) {
                            if object.as_ref().is_none_or(|o| o.0 != id) {
                                object = vm.object(id).map(|o| (id, o));
                            }
                            if let Some((_, o)) = &object {
                                o.add_maps(index, 1);
                            }
                        }
                        CopyAs::Same
                    }
                    (_, CopyLeaf::Soft(entry)) => {
                        vm.share_swap(entry);
                        CopyAs::Same
                    }
                    _ => CopyAs::Same,
                }
            },
        );
        match copied {
            Ok(flush) => {
                // Other threads of this space must stop writing the frames now shared.
                self.invalidate(flush, vm, tlb);
                Self::count_object_areas(vm, child.areas.iter(), true);
                Ok(child)
            }
            Err(e) => {
                // Nothing was copied: only the child's PML4 exists.
                child.drop_empty(frames);
                vm.trim_shares();
                Err(e.into())
            }
        }
    }
}

impl<P: PhysMem> VmSpace<P> {
    /// The CPUs that may cache this space's translations: a kernel
    /// [`enter`](ActiveCpus::enter)s a CPU before loading [`pml4`](Self::pml4)
    /// into its CR3 and [`leave`](ActiveCpus::leave)s it after loading
    /// another one. Operations shoot down exactly these CPUs (and the
    /// running one when it has the space loaded).
    pub fn cpus(&self) -> &ActiveCpus {
        &self.cpus
    }

    /// Invalidates what `gather` holds on this space's CPUs, then frees it.
    pub(super) fn finish<A: FrameSource + ?Sized>(
        &self,
        gather: Gather,
        vm: &Vm,
        frames: &mut A,
        tlb: &mut Tlb<'_>,
    ) {
        gather.finish(tlb, self.pml4(), &self.cpus, vm, frames);
    }

    /// Invalidates `flush` on this space's CPUs and waits for them.
    pub(super) fn invalidate(&self, flush: Flush, vm: &Vm, tlb: &mut Tlb<'_>) {
        super::gather::invalidate(tlb, flush, self.pml4(), &self.cpus, vm);
    }

    /// The page tables, locked, to audit the space's mappings or translate
    /// an address: drop the guard before the next call on the space.
    pub fn mapper(&self) -> spin::MutexGuard<'_, PageTables<P>> {
        self.mapper.lock()
    }

    /// What the MMU does on an access to the page of `va`: sets its
    /// Accessed bit, and Dirty for a write. For emulated CPUs in tests.
    #[cfg(feature = "testing")]
    pub fn simulate_access(&self, va: VirtAddr, write: bool) {
        self.mapper.lock().simulate_access(va, write);
    }

    /// The top-level table (what CR3 holds while the space is active).
    pub fn pml4(&self) -> PhysFrame {
        self.pml4
    }

    /// The area holding `addr`.
    pub fn area_at(&self, addr: u64) -> Option<Area> {
        self.areas.find(addr).copied()
    }

    /// Every area, in address order.
    pub fn areas(&self) -> impl Iterator<Item = &Area> {
        self.areas.iter()
    }

    /// How many areas there are.
    pub fn area_count(&self) -> usize {
        self.areas.len()
    }

    /// `[addr, addr + len)` checked: page-aligned, non-empty, inside the
    /// managed range.
    pub(super) fn range(&self, addr: u64, len: u64) -> Result<(u64, u64), VmError> {
        if len == 0 || !addr.is_multiple_of(PAGE) || !len.is_multiple_of(PAGE) {
            return Err(VmError::Unaligned { addr, len });
        }
        let (lo, hi) = self.areas.bounds();
        match addr.checked_add(len) {
            Some(end) if addr >= lo && end <= hi => Ok((addr, end)),
            _ => Err(VmError::OutOfRange { addr, len }),
        }
    }

    /// Maps `len` bytes of anonymous, demand-zero memory: at `hint` when
    /// that range is free and at or above the layout's `min_addr`, else
    /// where the [`UserLayout`] places it (top-down below its `top`, in the
    /// smallest gap that holds it). Takes no frame until touched. Returns
    /// the address.
    pub fn map_anonymous(
        &mut self,
        hint: Option<u64>,
        len: u64,
        prot: Prot,
    ) -> Result<u64, VmError> {
        self.place_area(hint, len, prot, AreaKind::Anonymous)
    }

    /// Creates an area of `kind` at `hint` or where the layout places it
    /// (see [`map_anonymous`](Self::map_anonymous)); its address.
    pub(super) fn place_area(
        &mut self,
        hint: Option<u64>,
        len: u64,
        prot: Prot,
        kind: AreaKind,
    ) -> Result<u64, VmError> {
        let at = hint.unwrap_or(0);
        if len == 0 || !len.is_multiple_of(PAGE) {
            return Err(VmError::Unaligned { addr: at, len });
        }
        if prot.is_write_exec() {
            return Err(VmError::WriteExec { addr: at });
        }
        let fits = |h: u64| {
            h.is_multiple_of(PAGE)
                && h >= self.layout.min_addr
                && h.checked_add(len).is_some_and(|e| self.areas.is_free(h, e))
        };
        let start = match hint {
            Some(h) if fits(h) => h,
            _ => self
                .areas
                .place(len, self.layout.min_addr, self.layout.top)
                .ok_or(VmError::NoSpace { len })?,
        };
        self.areas.insert(Area {
            start,
            end: start + len,
            prot,
            kind,
            locked: false,
        });
        Ok(start)
    }

    /// The layout chosen addresses follow.
    pub fn layout(&self) -> UserLayout {
        self.layout
    }

    /// Sets the layout; refused (nothing changed) unless both bounds are
    /// page-aligned, inside the managed range, and `min_addr < top`.
    pub fn set_layout(&mut self, layout: UserLayout) -> Result<(), VmError> {
        let (lo, hi) = self.areas.bounds();
        let UserLayout { min_addr, top } = layout;
        let aligned = min_addr.is_multiple_of(PAGE) && top.is_multiple_of(PAGE);
        if !aligned || min_addr < lo || top > hi || min_addr >= top {
            return Err(VmError::OutOfRange {
                addr: min_addr,
                len: top.saturating_sub(min_addr),
            });
        }
        self.layout = layout;
        Ok(())
    }

    /// Lowers the layout's `top` by a random number of pages drawn from
    /// `seed` (up to 2^28 pages, 1 TiB, as Linux's mmap randomization on
    /// x86_64, and never below `min_addr` plus a quarter of the window):
    /// address-space layout randomization with the kernel's entropy.
    /// Returns the new `top`.
    pub fn randomize(&mut self, seed: u64) -> u64 {
        let UserLayout { min_addr, top } = self.layout;
        let room = (top - min_addr) / 4 / PAGE * 3;
        let pages = (seed % RANDOM_PAGES).min(room);
        self.layout.top = top - pages * PAGE;
        self.layout.top
    }

    /// Creates an area at exactly `[addr, addr + len)`, which must be free
    /// (`MAP_FIXED_NOREPLACE`): anonymous memory or a guard. Physical
    /// memory ([`AreaKind::Fixed`]) is refused here ([`VmError::Physical`]):
    /// it maps frames kmem does not own, so it goes through the `unsafe`
    /// [`map_physical`](Self::map_physical); objects go through
    /// [`map_object`](Self::map_object) ([`VmError::NoObject`] here). On
    /// error nothing changed.
    ///
    /// ```compile_fail,E0133
    /// # fn f(s: &mut kmem::vm::VmSpace<kmem::paging::OffsetPhysMem>, a: &mut &kmem::frame::LockedFrameAllocator) {
    /// // Mapping any physical address needs `unsafe`:
    /// s.map_physical(0x1000_0000, 4096, kmem::vm::Prot::RW, x86_64::PhysAddr::new(0), a);
    /// # }
    /// ```
    pub fn map_fixed<A: FrameSource + ?Sized>(
        &mut self,
        addr: u64,
        len: u64,
        prot: Prot,
        kind: AreaKind,
        frames: &mut A,
    ) -> Result<(), VmError> {
        match kind {
            AreaKind::Fixed { phys } => return Err(VmError::Physical { phys }),
            // Counted in their objects' areas: through `map_object`.
            AreaKind::Shared { object, .. } | AreaKind::Private { object, .. } => {
                return Err(VmError::NoObject { object })
            }
            AreaKind::Anonymous | AreaKind::Guard => {}
        }
        self.map_at(addr, len, prot, kind, frames)
    }

    /// [`map_fixed`](Self::map_fixed) for every kind of area.
    fn map_at<A: FrameSource + ?Sized>(
        &mut self,
        addr: u64,
        len: u64,
        prot: Prot,
        kind: AreaKind,
        frames: &mut A,
    ) -> Result<(), VmError> {
        let (a, b) = self.range(addr, len)?;
        if a < self.layout.min_addr {
            // Below `mmap_min_addr`: refused, as Linux refuses MAP_FIXED there.
            return Err(VmError::OutOfRange { addr, len });
        }
        if prot.is_write_exec() {
            return Err(VmError::WriteExec { addr });
        }
        if let Some(x) = self.areas.overlapping(a, b).next() {
            return Err(VmError::Overlap { addr: x.start });
        }
        if let AreaKind::Fixed { phys } = kind {
            if !phys.as_u64().is_multiple_of(PAGE) {
                return Err(VmError::UnalignedFrame { phys });
            }
            if prot.accessible() {
                // SAFETY: `map_physical`'s caller vouched for the frames; the
                // pages are user memory of this space, no Rust object's.
                unsafe {
                    self.mapper.get_mut().map_range_with(
                        VirtAddr::new(a),
                        phys,
                        len,
                        prot.map_flags(true),
                        LeafSize::Size4KiB,
                        frames,
                    )
                }?
                .ignore(); // over non-present entries only
            }
        }
        self.areas.insert(Area {
            start: a,
            end: b,
            prot,
            kind,
            locked: false,
        });
        Ok(())
    }

    /// Maps `len` bytes of physical memory from `phys` at exactly
    /// `[addr, addr + len)` (an [`AreaKind::Fixed`] area, mapped now with
    /// 4 KiB pages, never freed by the space). On error nothing changed.
    ///
    /// # Safety
    /// `[phys, phys + len)` is memory this space may reach with `prot` for
    /// as long as the area exists: device memory given to it, or frames
    /// nothing else uses as Rust objects, page tables or heap (a user
    /// mapping of such frames breaks every guarantee kmem and the kernel
    /// rely on). kmem never frees these frames.
    pub unsafe fn map_physical<A: FrameSource + ?Sized>(
        &mut self,
        addr: u64,
        len: u64,
        prot: Prot,
        phys: x86_64::PhysAddr,
        frames: &mut A,
    ) -> Result<(), VmError> {
        self.map_at(addr, len, prot, AreaKind::Fixed { phys }, frames)
    }

    /// Removes every mapping in `[addr, addr + len)`, splitting areas at
    /// the ends (`munmap`): the translations are invalidated on the space's
    /// CPUs, then anonymous frames go back to `frames` (or lose one
    /// sharer), page tables left empty too; an object's page no mapping
    /// holds any more leaves its cache, written back first when dirty.
    /// Holes are skipped. On error nothing changed, but for a pager that
    /// refused a write-back ([`VmError::Pager`]): the range is unmapped,
    /// the refused pages stay dirty in their object's cache; and a huge
    /// page the range covers in part is split first (same frames), and
    /// stays split.
    pub fn unmap<A: FrameSource + ?Sized>(
        &mut self,
        addr: u64,
        len: u64,
        vm: &Vm,
        frames: &mut A,
        tlb: &mut Tlb<'_>,
    ) -> Result<(), VmError> {
        let (a, b) = self.range(addr, len)?;
        self.split_huge_ends(vm, (a, b), frames, tlb)?;
        let mut gather = Gather::new();
        let mut objects = Vec::new();
        self.release(a, b, vm, frames, &mut gather, &mut objects)?;
        let removed = self.areas.remove(a, b);
        vm.uncharge_locked(removed.iter().filter(|r| r.locked).map(Area::pages).sum());
        let cpu = tlb.cpu();
        self.finish(gather, vm, frames, tlb);
        let settled = self.settle_unmapped(vm, &objects, cpu, frames);
        // Only now may an object be closed: its pages are settled.
        Self::count_object_areas(vm, removed.iter(), false);
        settled
    }

    /// Has reclaim choose its victims with `policy` (its capacity should be
    /// the frame limit); pages already resident are not known to it, so set
    /// it on a new space.
    pub fn set_policy(&mut self, policy: Box<dyn ReplacementPolicy + Send>) {
        *self.policy.get_mut() = Some(policy);
        self.has_policy = true;
    }

    /// The policy's name and its counters.
    pub fn policy_stats(&self) -> Option<(&'static str, super::replace::ReplaceStats)> {
        self.policy.lock().as_ref().map(|p| (p.name(), p.stats()))
    }

    /// Tells the policy (the space's, or the `Vm`'s global one) that the
    /// page now holds a frame of its own, unless its area is locked:
    /// reclaim never takes those.
    pub(super) fn track(&self, vm: &Vm, page: Page<Size4KiB>) {
        if !self.has_policy && (self.global_id().is_none() || !vm.has_global) {
            return; // no lock taken: faults on other CPUs do not wait here
        }
        if self
            .areas
            .find(page.start_address().as_u64())
            .is_some_and(|a| a.locked)
        {
            return;
        }
        if let Some(id) = self.global_id() {
            vm.track_global(id, page.start_address().as_u64() >> 12);
            return;
        }
        if let Some(policy) = self.policy.lock().as_mut() {
            let id = page.start_address().as_u64() >> 12;
            if !policy.is_resident(id) {
                while policy.resident_len() >= policy.capacity() && policy.evict().is_some() {}
                let _ = policy.insert(id);
            }
        }
    }

    /// Calls `f` with every mapped page of anonymous areas within `[a, b)`.
    pub(super) fn for_each_anonymous_leaf(&mut self, a: u64, b: u64, f: impl FnMut(&Leaf)) {
        for_each_anonymous_leaf(&self.areas, self.mapper.get_mut(), a, b, f)
    }

    /// Unmaps the pages of `[a, b)` into `gather`: the anonymous frames
    /// among them (one reference each) and the tables left empty, freed by
    /// the gather's `finish`; the pages of shared object areas into
    /// `objects`, for [`settle_unmapped`](Self::settle_unmapped) after it.
    /// On error nothing changed.
    pub(super) fn release<A: FrameSource + ?Sized>(
        &mut self,
        a: u64,
        b: u64,
        vm: &Vm,
        frames: &mut A,
        gather: &mut Gather,
        objects: &mut Vec<super::object::Unmapped>,
    ) -> Result<(), VmError> {
        // Frames: a huge page inside the range gives back its 512 (the
        // caller split those it covers only in part).
        let mut leaves = 0;
        self.for_each_anonymous_leaf(a, b, |l| leaves += pages_of(l.size) as usize);
        let tables = self
            .mapper
            .get_mut()
            .for_each_leaf_in(VirtAddr::new(a), b - a, |_| {})
            .tables;
        gather
            .reserve(leaves, tables)
            .map_err(|()| VmError::OutOfMemory)?;
        let shared = Self::object_leaves(&self.areas, self.mapper.get_mut(), a, b);
        objects
            .try_reserve_exact(shared)
            .map_err(|_| VmError::OutOfMemory)?;
        let global = self.global_id();
        let Self {
            mapper,
            areas,
            policy,
            ..
        } = self;
        let (mapper, policy) = (mapper.get_mut(), policy.get_mut());
        let mut flush = Flush::none();
        Self::take_object_pages(vm, areas, mapper, (a, b), &mut flush, objects);
        gather.flush(flush);
        for_each_anonymous_leaf(areas, mapper, a, b, |leaf| {
            let first = PhysFrame::containing_address(leaf.frame);
            for k in 0..pages_of(leaf.size) {
                gather.page(first + k);
                let page = (leaf.page.as_u64() >> 12) + k;
                if let Some(policy) = policy.as_mut() {
                    policy.remove(page);
                }
                if let Some(id) = global {
                    vm.forget_global(id, [page]);
                }
            }
        });
        // Swapped-out pages: their entries go, with their slot references
        // (no CPU caches a non-present entry).
        for area in areas.overlapping(a, b) {
            if area.kind.is_private_memory() {
                let (s, e) = (area.start.max(a), area.end.min(b));
                mapper.take_soft_entries(VirtAddr::new(s), e - s, |va, entry| {
                    vm.drop_swap(entry);
                    // The global policy may remember the page as history.
                    if let Some(id) = global {
                        vm.forget_global(id, [va.as_u64() >> 12]);
                    }
                });
            }
        }
        // Pages are 4 KiB (anonymous, object or fixed, all mapped by the
        // page), so no split is needed and this cannot fail after a partial
        // change.
        // SAFETY: the user's munmap of its own memory: no Rust object lives there; the gather
        // frees what it reached only after every CPU of the space invalidated it.
        let flush =
            unsafe { mapper.unmap_range(VirtAddr::new(a), b - a, &mut gather.tables(frames)) }?;
        gather.flush(flush);
        Ok(())
    }

    /// Changes the protection of `[addr, addr + len)`, which areas must
    /// cover without holes, splitting and merging areas (`mprotect`).
    /// Mapped pages follow at once; a page shared copy-on-write or the
    /// zero page stays read-only until its next write fault. Without
    /// access rights (`PROT_NONE`) pages keep their contents but lose the
    /// user bit: ring 3 faults on them. Huge pages in the range are split
    /// first (same frames; they stay split if a later step fails).
    pub fn protect<A: FrameSource + ?Sized>(
        &mut self,
        addr: u64,
        len: u64,
        prot: Prot,
        vm: &Vm,
        frames: &mut A,
        tlb: &mut Tlb<'_>,
    ) -> Result<(), VmError> {
        let (a, b) = self.range(addr, len)?;
        if prot.is_write_exec() {
            return Err(VmError::WriteExec { addr });
        }
        if !self.areas.covered(a, b) {
            return Err(VmError::Unmapped { addr });
        }
        // Protected page by page.
        self.split_huge_in(vm, (a, b), frames, tlb)?;
        let mut count = 0;
        let mapper = self.mapper.get_mut();
        for area in self.areas.overlapping(a, b) {
            let (s, e) = (area.start.max(a), area.end.min(b));
            mapper.for_each_leaf_in(VirtAddr::new(s), e - s, |_| count += 1);
        }
        let mut pages: Vec<(VirtAddr, PhysFrame, AreaKind)> = Vec::new();
        pages
            .try_reserve_exact(count)
            .map_err(|_| VmError::OutOfMemory)?;
        for area in self.areas.overlapping(a, b) {
            let (s, e) = (area.start.max(a), area.end.min(b));
            let kind = area.kind;
            mapper.for_each_leaf_in(VirtAddr::new(s), e - s, |leaf| {
                pages.push((leaf.page, PhysFrame::containing_address(leaf.frame), kind));
            });
        }
        let mut gather = Gather::new();
        for (page, frame, kind) in pages {
            // A private area's page on its object's cached frame stays
            // read-only: its first write copies it.
            let va = page.as_u64();
            let cached = matches!(kind, AreaKind::Private { .. })
                && self
                    .areas
                    .find(va)
                    .and_then(|a| super::objects::cached_page(vm, a, va, frame))
                    .is_some();
            let private = !cached && (!kind.is_private_memory() || vm.held_alone(frame));
            if private && prot.contains(Prot::WRITE) {
                vm.drop_cached(frame); // made writable: out of the swap cache first
            }
            let flags = if prot.accessible() {
                prot.map_flags(private)
            } else {
                crate::paging::MapFlags::READ
            };
            // Keeps Accessed and Dirty: a written page stays dirty.
            // SAFETY: the user's mprotect of its own memory, never more than its area allows.
            let f = unsafe { mapper.protect(Page::<Size4KiB>::containing_address(page), flags) }?;
            gather.flush(f);
        }
        self.areas.update(a, b, |area| Area { prot, ..area });
        self.finish(gather, vm, frames, tlb);
        Ok(())
    }

    /// Unmaps every area, gives back every anonymous frame this space
    /// holds alone (and one share of each shared one), every page table and
    /// the PML4. Refused while the space is loaded on the running CPU or
    /// any CPU is still in its [`cpus`](Self::cpus).
    pub fn destroy<A: FrameSource + ?Sized>(
        mut self,
        vm: &Vm,
        frames: &mut A,
        tlb: &mut Tlb<'_>,
    ) -> Result<(), (Self, VmError)> {
        if tlb.mmu().cr3() == self.pml4() || !self.cpus.snapshot().is_empty() {
            return Err((self, VmError::Active));
        }
        let areas: Vec<(u64, u64)> = self.areas.iter().map(|a| (a.start, a.end)).collect();
        for (a, b) in areas {
            let mut gather = Gather::new();
            let mut objects = Vec::new();
            // A huge page across two areas (an unlock of part of it).
            if let Err(e) = self.split_huge_ends(vm, (a, b), frames, tlb) {
                return Err((self, e));
            }
            if let Err(e) = self.release(a, b, vm, frames, &mut gather, &mut objects) {
                return Err((self, e));
            }
            let removed = self.areas.remove(a, b);
            vm.uncharge_locked(removed.iter().filter(|r| r.locked).map(Area::pages).sum());
            let cpu = tlb.cpu();
            self.finish(gather, vm, frames, tlb);
            // A refused write-back leaves its page dirty in the object's
            // cache (closing the object reports it again).
            let _ = self.settle_unmapped(vm, &objects, cpu, frames);
            Self::count_object_areas(vm, removed.iter(), false);
        }
        let Self {
            mapper,
            areas,
            clock_hand,
            policy,
            has_policy,
            global,
            cpus,
            pml4,
            phys,
            layout,
            ..
        } = self;
        let space = AddressSpace::from_mapper(mapper.0.into_inner());
        // SAFETY: no CPU is in the space's set (checked above), so none holds
        // its translations; leaf frames are not freed here.
        match unsafe { space.destroy(&*tlb.mmu(), frames, false) } {
            Ok(_) => Ok(()),
            Err((space, e)) => Err((
                Self {
                    mapper: Box::new(CachePadded(spin::Mutex::new(space.into_mapper()))),
                    pml4,
                    phys,
                    areas,
                    clock_hand,
                    last_swap_in: AtomicU64::new(0),
                    policy,
                    has_policy,
                    global,
                    cpus,
                    layout,
                },
                e.into(),
            )),
        }
    }

    /// Frees the PML4 of a fork that failed before it copied anything.
    fn drop_empty<A: FrameSource + ?Sized>(self, frames: &mut A) {
        // SAFETY: the space maps nothing in its user half (the copy made no
        // table); the PML4 is this space's own and was never active.
        unsafe { frames.deallocate_frame(self.pml4) };
    }
}

/// Calls `f` with every mapped page of the private-memory areas of `areas`
/// (anonymous, or private copies of objects) within `[a, b)`.
pub(super) fn for_each_anonymous_leaf<P: PhysMem>(
    areas: &AreaSet,
    mapper: &PageTables<P>,
    a: u64,
    b: u64,
    f: impl FnMut(&Leaf),
) {
    for_each_leaf_where(areas, mapper, a, b, |area| area.kind.is_private_memory(), f)
}

/// As [`for_each_anonymous_leaf`], for the pages reclaim may take to
/// swap: those of private-memory areas that are not locked, but for a
/// private area's pages still on their object's cached frames (the
/// object's to evict).
pub(super) fn for_each_pageable_leaf<P: PhysMem>(
    vm: &Vm,
    areas: &AreaSet,
    mapper: &PageTables<P>,
    a: u64,
    b: u64,
    mut f: impl FnMut(&Leaf),
) {
    if a >= b {
        return;
    }
    for area in areas.overlapping(a, b).filter(|x| x.pageable()) {
        let (s, e) = (area.start.max(a), area.end.min(b));
        let private_object = matches!(area.kind, AreaKind::Private { .. });
        mapper.for_each_leaf_in(VirtAddr::new(s), e - s, |leaf| {
            let frame = PhysFrame::containing_address(leaf.frame);
            let va = leaf.page.as_u64();
            if !private_object || super::objects::cached_page(vm, area, va, frame).is_none() {
                f(leaf);
            }
        });
    }
}

fn for_each_leaf_where<P: PhysMem>(
    areas: &AreaSet,
    mapper: &PageTables<P>,
    a: u64,
    b: u64,
    which: impl Fn(&Area) -> bool,
    mut f: impl FnMut(&Leaf),
) {
    if a >= b {
        return;
    }
    for area in areas.overlapping(a, b) {
        if which(area) {
            let (s, e) = (area.start.max(a), area.end.min(b));
            mapper.for_each_leaf_in(VirtAddr::new(s), e - s, &mut f);
        }
    }
}
