//! Page-fault resolution in one address space: the decision (refuse, map the zero page, fill
//! a frame, copy on write, swap in) and its effect on the tables and the statistics.
//!
//! Faults take the space by shared reference, so faults of one space run at
//! once on several CPUs. The page tables are locked only to look at an entry
//! and to write one: a frame is allocated, zeroed or copied, and a page read
//! from swap, with no lock held; the entry is then checked again under the
//! lock, and a fault that lost the race to another one gives its frame back.
//! A page in transit (being read in, or written out by reclaim) is marked in
//! its entry; a fault on it returns at once and the access is retried.

use x86_64::structures::paging::{Page, PhysFrame, Size4KiB};
use x86_64::{PhysAddr, VirtAddr};

use super::contents::{copy_frame, fill_zero};
use super::gather::Gather;
use super::huge::HugeFill;
use super::reclaim::Shortage;
use super::space::KERNEL_HALF_START;
use super::stats::count;
use super::swap::{BUSY, CANCEL, WRITE_OUT};
use super::table::SpaceTable;
use super::{AreaKind, FaultAccess, FaultError, FaultOutcome, FaultReason, Prot, Vm, VmSpace};
use crate::paging::{same_entry, FrameSource, LeafSize, PagingError, PhysMem, ADDR_MASK};
use crate::smp::Tlb;

/// What a look at the page's entry decided, with the page tables unlocked again.
enum Step {
    Done(FaultOutcome),
    /// Needs a new frame, zeroed (`from` is `None`) or a copy of `from`, to
    /// replace the entry `expect` (0 for an empty one).
    Fill {
        from: Option<PhysFrame>,
        expect: u64,
    },
    /// The page is on swap, its entry now marked busy: read it in.
    SwapIn {
        entry: u64,
    },
    /// Another fault or reclaim is moving the page.
    Wait,
    /// A page of an object's area with no entry: map or copy the object's page.
    Object,
    /// The first touch of an empty 2 MiB slot: try a huge page.
    Huge,
    /// A huge page maps the address but not as the access needs: split it.
    Split,
    /// A write to a private area's page still mapping its object's cached
    /// `frame` (entry `entry`, counted once more): copy it.
    CopyObject {
        frame: PhysFrame,
        entry: u64,
        id: super::ObjectId,
        index: u64,
    },
}

impl<P: PhysMem> VmSpace<P> {
    /// Resolves a page fault at `addr` with the decoded error code: maps
    /// the zero page or a zeroed frame, copies on write, reads the page back
    /// from swap, or reports why the access is not allowed. Any address and
    /// any error code give a result; on error the page is as before (pages
    /// reclaimed to find a frame stay reclaimed). Translations it replaced
    /// are invalidated on the space's CPUs, and the running one, before it
    /// returns.
    ///
    /// Takes the space by shared reference: faults of one space may run on
    /// several CPUs at once (a kernel holds its address-space lock for
    /// reading); `unmap`, `protect` and `fork` take it exclusively. A fault
    /// on a page another CPU is moving returns [`FaultOutcome::InTransit`]
    /// at once: the access is retried, and meanwhile this CPU can take the
    /// shootdown the moving CPU may wait for.
    pub fn handle_fault<A: FrameSource + ?Sized>(
        &self,
        vm: &Vm,
        addr: VirtAddr,
        access: FaultAccess,
        frames: &mut A,
        tlb: &mut Tlb<'_>,
    ) -> Result<FaultOutcome, FaultError> {
        self.handle_fault_in(vm, None, addr, access, frames, tlb)
    }

    /// [`handle_fault`](Self::handle_fault) for a space that joined global
    /// reclaim, with the kernel's table of spaces (held as for
    /// [`Vm::reclaim_global`], this one among them): when fewer than the
    /// `min` watermark's frames are free, the fault first reclaims directly
    /// over every space of `spaces` (the global policy's coldest pages
    /// anywhere, up to `high`, a cluster at most), and so does a fault
    /// that finds no frame at all. Above `min` it takes a frame and leaves
    /// reclaim to the worker ([`Vm::reclaim_step`]). Without a global
    /// policy, or for a space that did not join, it is `handle_fault`.
    pub fn handle_fault_global<T: SpaceTable<P> + ?Sized, A: FrameSource + ?Sized>(
        &self,
        vm: &Vm,
        spaces: &T,
        addr: VirtAddr,
        access: FaultAccess,
        frames: &mut A,
        tlb: &mut Tlb<'_>,
    ) -> Result<FaultOutcome, FaultError> {
        let table = Table(spaces);
        self.handle_fault_in(vm, Some(&table), addr, access, frames, tlb)
    }

    fn handle_fault_in<A: FrameSource + ?Sized>(
        &self,
        vm: &Vm,
        spaces: Option<&dyn SpaceTable<P>>,
        addr: VirtAddr,
        access: FaultAccess,
        frames: &mut A,
        tlb: &mut Tlb<'_>,
    ) -> Result<FaultOutcome, FaultError> {
        count(&vm.stats.at(tlb.cpu()).faults, 1);
        let spaces = spaces.filter(|_| self.global_id().is_some() && vm.has_global_policy());
        let result = self.resolve(vm, spaces, (addr, access), frames, tlb);
        let s = vm.stats.at(tlb.cpu());
        match &result {
            Ok(outcome) => match outcome {
                FaultOutcome::ZeroFilled => count(&s.zero_fills, 1),
                FaultOutcome::ZeroPageMapped => count(&s.zero_page_maps, 1),
                FaultOutcome::CopiedOnWrite => count(&s.cow_copies, 1),
                FaultOutcome::ReusedOnWrite => count(&s.cow_reuses, 1),
                FaultOutcome::Spurious => count(&s.spurious, 1),
                FaultOutcome::FixedMapped
                | FaultOutcome::SwappedIn
                | FaultOutcome::InTransit
                | FaultOutcome::ObjectMapped
                | FaultOutcome::ObjectCopied
                | FaultOutcome::HugeFilled => {}
            },
            Err(e) if e.reason.is_refusal() => count(&s.protection_faults, 1),
            Err(_) => {}
        }
        result
    }

    /// [`handle_fault`](Self::handle_fault) but for its statistics.
    fn resolve<A: FrameSource + ?Sized>(
        &self,
        vm: &Vm,
        spaces: Option<&dyn SpaceTable<P>>,
        (addr, access): (VirtAddr, FaultAccess),
        frames: &mut A,
        tlb: &mut Tlb<'_>,
    ) -> Result<FaultOutcome, FaultError> {
        let a = addr.as_u64();
        let fail = |reason| FaultError { addr, reason };
        if access.reserved_bit {
            return Err(fail(FaultReason::CorruptTable));
        }
        if access.user && a >= KERNEL_HALF_START {
            // Ring 3 never owns the upper half, whatever it maps there.
            return Err(fail(FaultReason::UserToKernel));
        }
        let area = *self.areas.find(a).ok_or(fail(FaultReason::NoArea))?;
        let prot = area.prot;
        if area.kind == AreaKind::Guard {
            return Err(fail(FaultReason::Guard));
        }
        if access.user && !prot.contains(Prot::USER) {
            return Err(fail(FaultReason::UserToKernel));
        }
        if !prot.accessible() {
            return Err(fail(FaultReason::NoAccess));
        }
        if access.write && !prot.contains(Prot::WRITE) {
            return Err(fail(FaultReason::WriteToReadOnly));
        }
        if access.exec && !prot.contains(Prot::EXEC) {
            return Err(fail(FaultReason::ExecuteNoExec));
        }
        let page = Page::<Size4KiB>::containing_address(addr);
        let mut huge = self.huge_fits(vm, a, area.kind);
        // A fill that lost its race, or whose frame another CPU took, looks
        // again; a few times, then the access is retried from the start.
        for _ in 0..4 {
            let step = self
                .decide(vm, page, (area.kind, huge), prot, access, frames, tlb)
                .map_err(fail)?;
            match step {
                Step::Done(outcome) => return Ok(outcome),
                Step::Wait => return Ok(FaultOutcome::InTransit),
                Step::Huge => match self.fill_huge(vm, page, prot, frames, tlb).map_err(fail)? {
                    HugeFill::Mapped => return Ok(FaultOutcome::HugeFilled),
                    HugeFill::Fallback => huge = false,
                    HugeFill::Raced => {}
                },
                Step::Split => {
                    self.split_huge_at(vm, page.start_address(), frames, tlb)
                        .map_err(|e| fail(e.into()))?;
                }
                Step::Object => {
                    return self
                        .fault_object((vm, spaces), (page, access.write), &area, frames, tlb)
                        .or_else(|e| waited(vm, e))
                        .map_err(fail);
                }
                Step::CopyObject {
                    frame,
                    entry,
                    id,
                    index,
                } => {
                    let step = (frame, entry, id, index);
                    match self.copy_object_page((vm, spaces), page, prot, step, frames, tlb) {
                        Ok(Some(outcome)) => return Ok(outcome),
                        Ok(None) => {}
                        Err(e) => return waited(vm, e).map_err(fail),
                    }
                }
                Step::SwapIn { entry } => {
                    return self
                        .swap_in((vm, spaces), page, entry, prot, frames, tlb)
                        .or_else(|e| waited(vm, e))
                        .map_err(fail);
                }
                Step::Fill { from, expect } => {
                    match self.fill((vm, spaces), page, prot, from, expect, frames, tlb) {
                        Ok(Some(outcome)) => return Ok(outcome),
                        Ok(None) => {}
                        Err(e) => return waited(vm, e).map_err(fail),
                    }
                }
            }
        }
        Ok(FaultOutcome::InTransit)
    }

    /// Looks at the page's entry under the page-table lock and does what
    /// needs no frame and no I/O at once.
    #[allow(clippy::too_many_arguments)]
    fn decide<A: FrameSource + ?Sized>(
        &self,
        vm: &Vm,
        page: Page<Size4KiB>,
        (kind, huge): (AreaKind, bool),
        prot: Prot,
        access: FaultAccess,
        frames: &mut A,
        tlb: &mut Tlb<'_>,
    ) -> Result<Step, FaultReason> {
        let va = page.start_address();
        let mut m = self.mapper.lock();
        let t = match m.translate(va) {
            Ok(t) => t,
            Err(PagingError::NotMapped { .. }) => {
                if let AreaKind::Fixed { phys } = kind {
                    let area = self.areas.find(va.as_u64()).expect("checked by the caller");
                    let frame = PhysFrame::containing_address(phys + (va.as_u64() - area.start));
                    // A new mapping over a non-present entry: no CPU caches it.
                    // SAFETY: a `Fixed` area's frame, vouched for by `map_physical`'s caller.
                    unsafe { m.map(page, frame, prot.map_flags(true), frames) }
                        .map_err(FaultReason::from)?
                        .ignore();
                    return Ok(Step::Done(FaultOutcome::FixedMapped));
                }
                if huge && m.huge_slot_empty(va) {
                    return Ok(Step::Huge);
                }
                // On swap: this fault reads it in, others wait for the mark to go.
                return match m.soft_entry(va) {
                    Some(e) if e & BUSY != 0 => Ok(Step::Wait), // marked by another CPU
                    Some(_) => Ok(Step::SwapIn {
                        entry: m.mark_soft(va, BUSY).expect("soft, unmarked, lock held"),
                    }),
                    None if matches!(kind, AreaKind::Shared { .. } | AreaKind::Private { .. }) => {
                        Ok(Step::Object)
                    }
                    None if access.write => Ok(Step::Fill {
                        from: None,
                        expect: 0,
                    }),
                    None => {
                        // SAFETY: the zero frame, read-only: every first read of anonymous memory sees it.
                        unsafe { m.map(page, vm.zero_frame(), prot.map_flags(false), frames) }
                            .map_err(FaultReason::from)?
                            .ignore();
                        Ok(Step::Done(FaultOutcome::ZeroPageMapped))
                    }
                };
            }
            Err(e) => return Err(e.into()),
        };
        let allowed = (!access.write || t.access.writable)
            && (!access.exec || t.access.executable)
            && (!access.user || t.access.user);
        if allowed {
            drop(m);
            if access.present && !access.user && t.access.user {
                // The page allows it, the CPU refused: SMAP or SMEP.
                return Err(FaultReason::KernelToUser);
            }
            // Only this CPU's TLB can be stale for a fault it took.
            let mut flush = crate::paging::Flush::none();
            flush.add(va.as_u64());
            tlb.invalidate_local(flush, self.pml4(), &self.cpus);
            return Ok(Step::Done(FaultOutcome::Spurious));
        }
        if t.size == LeafSize::Size2MiB && kind == AreaKind::Anonymous {
            return Ok(Step::Split); // a huge page, stricter than its area
        }
        if t.size != LeafSize::Size4KiB {
            return Err(FaultReason::from(PagingError::HugePageInTheWay {
                addr: t.page,
                frame: t.frame,
                size: t.size,
            }));
        }
        let old = PhysFrame::containing_address(t.frame);
        let entry = m.leaf_entry(va).unwrap_or(0);
        if entry & WRITE_OUT != 0 {
            // Being written to swap: its write-out settles it first. A write
            // cancels the eviction (the page stays, writable) and waits.
            if access.write {
                let _ = m.exchange_pte(va, entry | CANCEL);
            }
            return Ok(Step::Wait);
        }
        // A private area's page still on its object's cached frame.
        let cached = match kind {
            AreaKind::Private { .. } => self
                .areas
                .find(va.as_u64())
                .and_then(|a| super::objects::cached_page(vm, a, va.as_u64(), old)),
            _ => None,
        };
        if let (Some((id, index)), true) = (cached, access.write) {
            // Copy on write over the cache: counted once more (under this
            // lock, so an eviction cannot free it) while it is copied.
            if let Some(o) = vm.object(id) {
                o.add_maps(index, 1);
                return Ok(Step::CopyObject {
                    frame: old,
                    entry,
                    id,
                    index,
                });
            }
        }
        if access.write && !t.access.writable && kind.is_private_memory() {
            if old != vm.zero_frame() && vm.share_count(old) == 1 {
                // Same frame, more rights: Dirty and Accessed stay; other CPUs
                // at worst take a spurious fault on their read-only entry.
                // It leaves the swap cache first: sharers of its slot copy
                // cached frames, which must not change under them.
                vm.drop_cached(old);
                // SAFETY: the frame is this page's alone (one sharer): writable is its area's right.
                let flush =
                    unsafe { m.protect(page, prot.map_flags(true)) }.map_err(FaultReason::from)?;
                drop(m);
                tlb.invalidate_local(flush, self.pml4(), &self.cpus);
                self.track(vm, page);
                return Ok(Step::Done(FaultOutcome::ReusedOnWrite));
            }
            let from = (old != vm.zero_frame()).then_some(old);
            return Ok(Step::Fill {
                from,
                expect: entry,
            });
        }
        // The page is stricter than its area (fixed memory after a
        // protect, a user bit missing): bring it in line.
        let private = cached.is_none()
            && (!kind.is_private_memory() || (old != vm.zero_frame() && vm.share_count(old) == 1));
        if private && prot.contains(Prot::WRITE) {
            vm.drop_cached(old); // made writable: out of the swap cache first
        }
        // SAFETY: the page's own frame, with its area's rights (never more).
        let flush =
            unsafe { m.protect(page, prot.map_flags(private)) }.map_err(FaultReason::from)?;
        drop(m);
        // Rare, and it may also remove a right: invalidate everywhere.
        self.invalidate(flush, vm, tlb);
        Ok(Step::Done(FaultOutcome::Spurious))
    }

    /// A new frame, zeroed or a copy of `from`, made with no lock held,
    /// then mapped if the entry is still `expect`. `None`: another fault
    /// changed the entry first (the frame went back): look again.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn fill<A: FrameSource + ?Sized>(
        &self,
        (vm, spaces): (&Vm, Option<&dyn SpaceTable<P>>),
        page: Page<Size4KiB>,
        prot: Prot,
        from: Option<PhysFrame>,
        expect: u64,
        frames: &mut A,
        tlb: &mut Tlb<'_>,
    ) -> Result<Option<FaultOutcome>, FaultReason> {
        let new = match self.new_frame(vm, spaces, frames, tlb) {
            Ok(f) => f,
            Err(Shortage::Raced) => return Ok(None),
            Err(Shortage::Fault(e)) => return Err(e),
        };
        if from == Some(new) {
            // The reclaim that found this frame evicted the page to copy
            // (and freed its frame): the entry changed, look again.
            vm.release_frame(tlb.cpu(), new, frames);
            return Ok(None);
        }
        let _transit = vm.transit(tlb.cpu(), 1);
        match from {
            Some(old) => copy_frame(&self.phys, old, new),
            None => fill_zero(&self.phys, new),
        }
        let va = page.start_address();
        let flags = prot.map_flags(true);
        let mut m = self.mapper.lock();
        // The fast path: the page table exists, one compare-exchange.
        match m.replace_pte(va, expect, new, flags) {
            Ok(None) => {
                // Lost a race to another fault or to reclaim.
                drop(m);
                vm.release_frame(tlb.cpu(), new, frames);
                return Ok(None);
            }
            Ok(Some(_)) if expect == 0 => {
                drop(m);
                self.track(vm, page);
                return Ok(Some(FaultOutcome::ZeroFilled)); // over an empty entry
            }
            Ok(Some(old)) => {
                drop(m);
                self.track(vm, page);
                return Ok(Some(self.copied(vm, page, old, from, frames, tlb)));
            }
            Err(_) => {} // no page table yet: the general path below
        }
        let now = m.leaf_entry(va).or_else(|| m.soft_entry(va)).unwrap_or(0);
        if now != expect && (expect == 0 || !same_entry(now, expect)) {
            // Lost a race (ignoring Accessed and Dirty, which the CPU sets).
            drop(m);
            vm.release_frame(tlb.cpu(), new, frames);
            return Ok(None);
        }
        if expect == 0 {
            // SAFETY: a fresh frame (zeroed or a copy) for this page of a user area: user memory,
            // no Rust object's.
            match unsafe { m.map(page, new, flags, frames) } {
                Ok(flush) => {
                    drop(m);
                    flush.ignore(); // over an empty entry
                    self.track(vm, page);
                    return Ok(Some(FaultOutcome::ZeroFilled));
                }
                Err(e) => {
                    drop(m);
                    vm.release_frame(tlb.cpu(), new, frames);
                    return Err(e.into());
                }
            }
        }
        // The page is mapped (checked above): remap needs no frame.
        // SAFETY: as above, over the page's shared (or zero) frame, which stays in use elsewhere.
        let (old, _) =
            unsafe { m.remap(page, new, flags) }.expect("a mapped 4 KiB page can be remapped");
        drop(m);
        self.track(vm, page);
        let old = old.start_address().as_u64();
        Ok(Some(self.copied(vm, page, old, from, frames, tlb)))
    }

    /// After a copy-on-write replaced the entry `old`: other CPUs may still
    /// read the old frame through this page, and must stop before its other
    /// sharer may reuse it in place.
    fn copied<A: FrameSource + ?Sized>(
        &self,
        vm: &Vm,
        page: Page<Size4KiB>,
        old: u64,
        from: Option<PhysFrame>,
        frames: &mut A,
        tlb: &mut Tlb<'_>,
    ) -> FaultOutcome {
        let mut gather = Gather::new();
        gather.add(page.start_address().as_u64());
        gather.page(PhysFrame::containing_address(PhysAddr::new(
            old & ADDR_MASK,
        )));
        self.finish(gather, vm, frames, tlb);
        if from.is_none() {
            FaultOutcome::ZeroFilled
        } else {
            FaultOutcome::CopiedOnWrite
        }
    }
}

/// A table of any kind behind a reference: sized, so the fault path passes
/// it on as `&dyn SpaceTable`.
struct Table<'t, T: ?Sized>(&'t T);

impl<P: PhysMem, T: SpaceTable<P> + ?Sized> SpaceTable<P> for Table<'_, T> {
    fn for_each(&self, f: &mut dyn FnMut(&VmSpace<P>)) {
        self.0.for_each(f);
    }

    fn with(&self, id: u32, f: &mut dyn FnMut(&VmSpace<P>)) -> bool {
        self.0.with(id, f)
    }
}

/// Out of memory while other CPUs hold frames in transit is not final:
/// those frames are mapped or freed without waiting for this CPU, so the
/// access is retried ([`FaultOutcome::InTransit`]).
fn waited(vm: &Vm, e: FaultReason) -> Result<FaultOutcome, FaultReason> {
    match e {
        FaultReason::OutOfMemory if vm.any_in_transit() => Ok(FaultOutcome::InTransit),
        e => Err(e),
    }
}
