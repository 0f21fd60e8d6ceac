//! Page-fault resolution in one address space: the decision (refuse, map the zero page, fill
//! a frame, copy on write, swap in) and its effect on the tables and the statistics.

use x86_64::structures::paging::{Page, PhysFrame, Size4KiB};
use x86_64::VirtAddr;

use super::gather::Gather;
use super::space::KERNEL_HALF_START;
use super::vm::{copy_frame, fill_zero};
use super::{AreaKind, FaultAccess, FaultError, FaultOutcome, FaultReason, Prot, Vm, VmSpace};
use crate::paging::{Flush, FrameSource, LeafSize, PagingError, PhysMem};
use crate::smp::Tlb;

impl<P: PhysMem> VmSpace<P> {
    /// Resolves a page fault at `addr` with the decoded error code: maps
    /// the zero page or a zeroed frame, copies on write, or reports why the
    /// access is not allowed. Any address and any error code give a
    /// result; on error the page is as before (pages reclaimed to find a
    /// frame stay reclaimed). Translations it replaced are invalidated on
    /// the space's CPUs, and the running one, before it returns.
    pub fn handle_fault<A: FrameSource + ?Sized>(
        &mut self,
        vm: &mut Vm,
        addr: VirtAddr,
        access: FaultAccess,
        frames: &mut A,
        tlb: &mut Tlb<'_>,
    ) -> Result<FaultOutcome, FaultError> {
        vm.stats.faults += 1;
        let result = self.resolve(vm, (addr, access), frames, tlb);
        match &result {
            Ok(outcome) => {
                let s = &mut vm.stats;
                match outcome {
                    FaultOutcome::ZeroFilled => s.zero_fills += 1,
                    FaultOutcome::ZeroPageMapped => s.zero_page_maps += 1,
                    FaultOutcome::CopiedOnWrite => s.cow_copies += 1,
                    FaultOutcome::ReusedOnWrite => s.cow_reuses += 1,
                    FaultOutcome::Spurious => s.spurious += 1,
                    FaultOutcome::FixedMapped | FaultOutcome::SwappedIn => {}
                }
            }
            Err(e) if e.reason.is_refusal() => vm.stats.protection_faults += 1,
            Err(_) => {}
        }
        result
    }

    /// [`handle_fault`](Self::handle_fault) but for its statistics.
    fn resolve<A: FrameSource + ?Sized>(
        &mut self,
        vm: &mut Vm,
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
        let paging = |e: PagingError| {
            fail(match e {
                PagingError::OutOfFrames { .. } => FaultReason::OutOfMemory,
                e => FaultReason::Paging(e),
            })
        };
        // A new mapping over a non-present entry: no CPU caches it.
        let done = |outcome, flush: Flush| {
            flush.ignore();
            Ok(outcome)
        };
        let t = match self.mapper.translate(page.start_address()) {
            Ok(t) => t,
            Err(PagingError::NotMapped { .. }) => {
                return match area.kind {
                    AreaKind::Fixed { phys } => {
                        let frame = PhysFrame::containing_address(
                            phys + (page.start_address().as_u64() - area.start),
                        );
                        let flush = self
                            .mapper
                            .map(page, frame, prot.map_flags(true), frames)
                            .map_err(paging)?;
                        done(FaultOutcome::FixedMapped, flush)
                    }
                    _ => {
                        if let Some(entry) = self.mapper.soft_entry(page.start_address()) {
                            return self
                                .swap_in(vm, page, entry, prot, frames, tlb)
                                .map_err(fail);
                        }
                        if !access.write {
                            let flush = self
                                .mapper
                                .map(page, vm.zero_frame(), prot.map_flags(false), frames)
                                .map_err(paging)?;
                            return done(FaultOutcome::ZeroPageMapped, flush);
                        }
                        let frame = self.new_frame(vm, frames, tlb).map_err(fail)?;
                        fill_zero(self.mapper.phys_mem(), frame);
                        match self.mapper.map(page, frame, prot.map_flags(true), frames) {
                            Ok(flush) => {
                                self.track(page);
                                done(FaultOutcome::ZeroFilled, flush)
                            }
                            Err(e) => {
                                vm.release_frame(frame, frames);
                                Err(paging(e))
                            }
                        }
                    }
                };
            }
            Err(e) => return Err(paging(e)),
        };
        let allowed = (!access.write || t.access.writable)
            && (!access.exec || t.access.executable)
            && (!access.user || t.access.user);
        if allowed {
            if access.present && !access.user && t.access.user {
                // The page allows it, the CPU refused: SMAP or SMEP.
                return Err(fail(FaultReason::KernelToUser));
            }
            let mut flush = Flush::none();
            flush.add(page.start_address().as_u64());
            // Only this CPU's TLB can be stale for a fault it took.
            tlb.invalidate_local(flush, self.pml4(), &self.cpus);
            return Ok(FaultOutcome::Spurious);
        }
        if t.size != LeafSize::Size4KiB {
            return Err(paging(PagingError::HugePageInTheWay {
                addr: t.page,
                frame: t.frame,
                size: t.size,
            }));
        }
        let old = PhysFrame::containing_address(t.frame);
        if access.write && !t.access.writable && area.kind == AreaKind::Anonymous {
            let flags = prot.map_flags(true);
            if old != vm.zero_frame() && vm.share_count(old) == 1 {
                // Same frame, more rights: Dirty and Accessed stay; other CPUs
                // at worst take a spurious fault on their read-only entry.
                let flush = self.mapper.protect(page, flags).map_err(paging)?;
                tlb.invalidate_local(flush, self.pml4(), &self.cpus);
                self.track(page);
                return Ok(FaultOutcome::ReusedOnWrite);
            }
            let new = self.new_frame(vm, frames, tlb).map_err(fail)?;
            if old == vm.zero_frame() {
                fill_zero(self.mapper.phys_mem(), new);
            } else {
                copy_frame(self.mapper.phys_mem(), old, new);
            }
            // The page is mapped (translated above): remap needs no frame.
            let f = match self.mapper.remap(page, new, flags) {
                Ok((_, f)) => f,
                Err(e) => {
                    vm.release_frame(new, frames);
                    return Err(paging(e));
                }
            };
            self.track(page);
            // Other CPUs may still read the old frame through this page:
            // they must stop before its other sharer may reuse it in place.
            let mut gather = Gather::new();
            gather.flush(f);
            gather.page(old);
            self.finish(gather, vm, frames, tlb);
            if old == vm.zero_frame() {
                return Ok(FaultOutcome::ZeroFilled);
            }
            return Ok(FaultOutcome::CopiedOnWrite);
        }
        // The page is stricter than its area (fixed memory after a
        // protect, a user bit missing): bring it in line.
        let private = area.kind != AreaKind::Anonymous
            || (old != vm.zero_frame() && vm.share_count(old) == 1);
        let flush = self
            .mapper
            .protect(page, prot.map_flags(private))
            .map_err(paging)?;
        // Rare, and it may also remove a right: invalidate everywhere.
        let mut gather = Gather::new();
        gather.flush(flush);
        self.finish(gather, vm, frames, tlb);
        Ok(FaultOutcome::Spurious)
    }
}
