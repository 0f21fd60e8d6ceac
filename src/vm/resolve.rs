//! Page-fault resolution in one address space: the decision (refuse, map the zero page, fill
//! a frame, copy on write, swap in) and its effect on the tables and the statistics.

use x86_64::structures::paging::{Page, PhysFrame, Size4KiB};
use x86_64::VirtAddr;

use super::space::KERNEL_HALF_START;
use super::vm::{copy_frame, fill_zero};
use super::{
    AreaKind, FaultAccess, FaultError, FaultOutcome, FaultReason, Prot, Resolved, Vm, VmSpace,
};
use crate::paging::{Flush, FrameSource, LeafSize, PagingError, PhysMem};

impl<P: PhysMem> VmSpace<P> {
    /// Resolves a page fault at `addr` with the decoded error code: maps
    /// the zero page or a zeroed frame, copies on write, or reports why the
    /// access is not allowed. Any address and any error code give a
    /// result; on error nothing changed.
    pub fn handle_fault<A: FrameSource + ?Sized>(
        &mut self,
        vm: &mut Vm,
        addr: VirtAddr,
        access: FaultAccess,
        frames: &mut A,
    ) -> Result<Resolved, FaultError> {
        vm.stats.faults += 1;
        let result = self.resolve(vm, (addr, access), frames);
        match &result {
            Ok(r) => {
                let s = &mut vm.stats;
                match r.outcome {
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
    ) -> Result<Resolved, FaultError> {
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
        let done = |outcome, flush| Ok(Resolved { outcome, flush });
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
                            return self.swap_in(vm, page, entry, prot, frames).map_err(fail);
                        }
                        if !access.write {
                            let flush = self
                                .mapper
                                .map(page, vm.zero_frame(), prot.map_flags(false), frames)
                                .map_err(paging)?;
                            return done(FaultOutcome::ZeroPageMapped, flush);
                        }
                        let mut flush = Flush::none();
                        let frame = self.new_frame(vm, frames, &mut flush).map_err(fail)?;
                        fill_zero(self.mapper.phys_mem(), frame);
                        match self.mapper.map(page, frame, prot.map_flags(true), frames) {
                            Ok(f) => {
                                flush.merge(f);
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
            return done(FaultOutcome::Spurious, flush);
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
                let flush = self.mapper.protect(page, flags).map_err(paging)?;
                self.track(page);
                return done(FaultOutcome::ReusedOnWrite, flush);
            }
            let mut flush = Flush::none();
            let new = self.new_frame(vm, frames, &mut flush).map_err(fail)?;
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
            flush.merge(f);
            self.track(page);
            if old == vm.zero_frame() {
                return done(FaultOutcome::ZeroFilled, flush);
            }
            let last = vm.unshare(old);
            debug_assert!(!last, "a shared frame had one sharer");
            return done(FaultOutcome::CopiedOnWrite, flush);
        }
        // The page is stricter than its area (fixed memory after a
        // protect, a user bit missing): bring it in line.
        let private = area.kind != AreaKind::Anonymous
            || (old != vm.zero_frame() && vm.share_count(old) == 1);
        let flush = self
            .mapper
            .protect(page, prot.map_flags(private))
            .map_err(paging)?;
        done(FaultOutcome::Spurious, flush)
    }
}
