//! What a process tells the kernel about a range of its memory:
//! `madvise` (drop pages, write them out now) and `mlock`/`munlock`
//! (keep pages resident, within a system-wide limit).

use super::reclaim::Batch;
use super::swap::{BUSY, CLUSTER};
use super::{Area, AreaKind, FaultAccess, FaultOutcome, FaultReason, Vm, VmError, VmSpace};
use crate::paging::{Flush, FrameSource, PhysMem};
use crate::smp::Tlb;
use crate::PAGE_SIZE as PAGE;
use x86_64::structures::paging::PhysFrame;
use x86_64::VirtAddr;

/// Advice about a range of anonymous memory ([`VmSpace::advise`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Advice {
    /// `MADV_DONTNEED`: the contents are not needed: the pages and their
    /// swap slots are given back now, and the next touch of each reads
    /// zeros. Refused on locked areas.
    DontNeed,
    /// `MADV_PAGEOUT`: the pages will not be used soon: write them out to
    /// swap now (pages of zeros are dropped, shared ones stay), before
    /// reclaim would find them cold. Locked areas are skipped.
    PageOut,
    /// `MADV_FREE`: the contents may go: swapped pages give their slots
    /// back now (they read zeros), resident ones stay but reclaim drops
    /// them without writing unless they are written again first (a write
    /// keeps the page and its new contents). Locked areas are skipped.
    Free,
    /// `MADV_WILLNEED`: the pages will be used soon: the swapped ones are
    /// read back now.
    WillNeed,
    /// `MADV_COLD`: the pages will not be used soon, but keep them: their
    /// references are forgotten (Accessed bits cleared) and the
    /// replacement policy lets them go first ([`demote`](super::replace::ReplacementPolicy::demote)).
    /// Locked areas are skipped.
    Cold,
}

impl<P: PhysMem> VmSpace<P> {
    /// Applies `advice` to `[addr, addr + len)`, which areas must cover
    /// without holes, all anonymous. Returns the pages it gave back: frames
    /// and swap slots for [`Advice::DontNeed`], frames written out or
    /// dropped for [`Advice::PageOut`]. On a refusal nothing changed; a
    /// page-out that fails part-way keeps what it wrote and leaves the
    /// rest resident as it was ([`VmError::PageOut`]).
    pub fn advise<A: FrameSource + ?Sized>(
        &mut self,
        addr: u64,
        len: u64,
        advice: Advice,
        vm: &Vm,
        frames: &mut A,
        tlb: &mut Tlb<'_>,
    ) -> Result<u64, VmError> {
        let (a, b) = self.covered_range(addr, len)?;
        if let Some(area) = self
            .areas
            .overlapping(a, b)
            .find(|x| x.kind != AreaKind::Anonymous)
        {
            return Err(VmError::NotAnonymous { addr: area.start });
        }
        // Advice goes page by page.
        self.split_huge_in(vm, (a, b), frames, tlb)?;
        match advice {
            Advice::DontNeed => self.drop_pages(a, b, vm, frames, tlb),
            Advice::PageOut => self.page_out(a, b, vm, frames, tlb),
            Advice::Free => self.lazy_free(a, b, vm, frames, tlb),
            Advice::WillNeed => self.will_need(a, b, vm, frames, tlb),
            Advice::Cold => Ok(self.cold(a, b, vm, tlb)),
        }
    }

    fn drop_pages<A: FrameSource + ?Sized>(
        &mut self,
        a: u64,
        b: u64,
        vm: &Vm,
        frames: &mut A,
        tlb: &mut Tlb<'_>,
    ) -> Result<u64, VmError> {
        if let Some(area) = self.areas.overlapping(a, b).find(|x| x.locked) {
            return Err(VmError::Locked { addr: area.start });
        }
        // What goes back: frames and slots no other space (after a fork)
        // or swap-cache entry still holds.
        let mut given = 0;
        self.for_each_anonymous_leaf(a, b, |leaf| {
            given += u64::from(vm.held_alone(PhysFrame::containing_address(leaf.frame)));
        });
        self.mapper
            .get_mut()
            .for_each_soft_entry(VirtAddr::new(a), b - a, |_, e| {
                given += u64::from(vm.swap_refs(e) == 1);
            });
        let mut gather = super::gather::Gather::new();
        // Anonymous areas only (checked by `advise`): no object's page.
        let mut objects = alloc::vec::Vec::new();
        self.release(a, b, vm, frames, &mut gather, &mut objects)?;
        debug_assert!(objects.is_empty());
        self.finish(gather, vm, frames, tlb);
        Ok(given)
    }

    /// Writes out the pageable private pages of `[a, b)`, one cluster of
    /// pages (at most) at a time.
    fn page_out<A: FrameSource + ?Sized>(
        &mut self,
        a: u64,
        b: u64,
        vm: &Vm,
        frames: &mut A,
        tlb: &mut Tlb<'_>,
    ) -> Result<u64, VmError> {
        let Some(swap) = vm.swap.as_ref() else {
            return Err(VmError::PageOut(FaultReason::NoSwap));
        };
        let mut freed = 0;
        let mut at = a;
        while at < b {
            // A window of a cluster of pages holds at most a cluster of victims.
            let end = b.min(at + CLUSTER as u64 * PAGE);
            let mut victims = Batch::new();
            let mut flush = Flush::none();
            {
                let mut m = self.mapper.lock();
                let mut policy = self.policy.lock();
                super::space::for_each_pageable_leaf(vm, &self.areas, &m, at, end, |leaf| {
                    let frame = PhysFrame::containing_address(leaf.frame);
                    if vm.held_alone(frame) {
                        victims.push(leaf.page, frame, 0);
                    }
                });
                for v in victims.as_mut_slice() {
                    if let Some(p) = policy.as_mut() {
                        p.remove(v.0.as_u64() >> 12);
                    }
                    if let Some(id) = self.global_id() {
                        vm.forget_global(id, [v.0.as_u64() >> 12]);
                    }
                    v.2 = m
                        .exchange_pte(v.0, BUSY)
                        .expect("a resident page has its page table");
                    flush.add(v.0.as_u64());
                }
            }
            if victims.len > 0 {
                let (n, error) = self.write_out(swap, &victims, flush, vm, frames, tlb);
                freed += n as u64;
                if let Some(e) = error {
                    return Err(VmError::PageOut(e));
                }
            }
            at = end;
        }
        Ok(freed)
    }

    /// `MADV_FREE` over `[a, b)`: slots of swapped pages go now; each
    /// resident private page is taken out (a busy mark, invalidated on the
    /// space's CPUs, so no CPU writes it through a stale dirty
    /// translation) and put back clean and marked. Returns the pages
    /// affected.
    fn lazy_free<A: FrameSource + ?Sized>(
        &mut self,
        a: u64,
        b: u64,
        vm: &Vm,
        frames: &mut A,
        tlb: &mut Tlb<'_>,
    ) -> Result<u64, VmError> {
        let _ = frames;
        let mut affected = 0;
        let pageable: alloc::vec::Vec<(u64, u64)> = self
            .areas
            .overlapping(a, b)
            .filter(|x| x.pageable())
            .map(|x| (x.start.max(a), x.end.min(b)))
            .collect();
        for &(s, e) in &pageable {
            // With `&mut self` nothing is in transit here: every soft entry
            // is a swap entry.
            self.mapper
                .get_mut()
                .take_soft_entries(VirtAddr::new(s), e - s, |_, entry| {
                    vm.drop_swap(entry);
                    affected += 1;
                });
        }
        for (s, e) in pageable {
            let mut at = s;
            while at < e {
                let end = e.min(at + CLUSTER as u64 * PAGE);
                let mut pages = Batch::new();
                let mut flush = Flush::none();
                {
                    let m = self.mapper.get_mut();
                    m.for_each_leaf_in(VirtAddr::new(at), end - at, |leaf| {
                        let frame = PhysFrame::containing_address(leaf.frame);
                        if vm.held_alone(frame) {
                            pages.push(leaf.page, frame, 0);
                        }
                    });
                    for p in pages.as_mut_slice() {
                        p.2 = m.exchange_pte(p.0, BUSY).expect("a mapped page");
                        flush.add(p.0.as_u64());
                    }
                }
                self.invalidate(flush, vm, tlb);
                for &(va, frame, old) in pages.as_slice() {
                    // A copy on swap from before the advice would come back
                    // if reclaim reused it: the contents may go, so it goes.
                    vm.drop_cached(frame);
                    self.put_entry(va, (old & !crate::paging::DIRTY) | super::swap::LAZY_FREE);
                    affected += 1;
                }
                at = end;
            }
        }
        Ok(affected)
    }

    /// `MADV_COLD` over `[a, b)`: returns the pages made cold.
    fn cold(&mut self, a: u64, b: u64, vm: &Vm, tlb: &mut Tlb<'_>) -> u64 {
        let mut flush = Flush::none();
        let mut pages = alloc::vec::Vec::new();
        {
            let m = self.mapper.get_mut();
            super::space::for_each_pageable_leaf(vm, &self.areas, m, a, b, |leaf| {
                let frame = PhysFrame::containing_address(leaf.frame);
                if vm.held_alone(frame) {
                    if m.clear_accessed(leaf.page) {
                        flush.add(leaf.page.as_u64());
                    }
                    pages.push(leaf.page.as_u64() >> 12);
                }
            });
        }
        self.invalidate(flush, vm, tlb);
        // Without a policy the CLOCK hand reads the cleared bits.
        if let Some(id) = self.global_id() {
            if let Some(p) = vm.global.lock().as_mut() {
                for &v in &pages {
                    p.demote(super::replace::multi::global_id(id, v));
                }
            }
        } else if let Some(p) = self.policy.get_mut().as_mut() {
            for &v in &pages {
                p.demote(v);
            }
        }
        pages.len() as u64
    }

    /// `MADV_WILLNEED` over `[a, b)`: reads back every swapped page (as
    /// the area's owner would fault on it). Returns the pages read.
    fn will_need<A: FrameSource + ?Sized>(
        &mut self,
        a: u64,
        b: u64,
        vm: &Vm,
        frames: &mut A,
        tlb: &mut Tlb<'_>,
    ) -> Result<u64, VmError> {
        let mut swapped = alloc::vec::Vec::new();
        // Inaccessible areas stay as they are (no access could read them).
        for x in self.areas.overlapping(a, b).filter(|x| x.prot.accessible()) {
            let (s, e) = (x.start.max(a), x.end.min(b));
            let user = x.prot.contains(super::Prot::USER);
            self.mapper
                .get_mut()
                .for_each_soft_entry(VirtAddr::new(s), e - s, |va, entry| {
                    if super::swap::slot_of(entry).is_some() {
                        swapped.push((va, user));
                    }
                });
        }
        let mut read = 0;
        for (va, user) in swapped {
            self.fault_in(vm, va, FaultAccess::read(user), frames, tlb)
                .map_err(VmError::Populate)?;
            read += 1;
        }
        Ok(read)
    }

    /// Locks `[addr, addr + len)` in memory (`mlock`): areas must cover it
    /// without holes; its anonymous pages are faulted in now (written ones
    /// become private frames, as a write would make them) and reclaim never
    /// takes them until [`unlock`](Self::unlock), an unmap or the space's
    /// end. Pages newly locked count against [`Vm::set_lock_limit`]; past
    /// it, [`VmError::LockLimit`]. A fork's child does not inherit locks.
    /// If a page cannot be faulted in, the range is left unlocked as it
    /// was (pages faulted in so far stay resident, as plain pages) and the
    /// fault's reason is returned as [`VmError::OutOfMemory`] or
    /// [`VmError::Populate`].
    pub fn lock<A: FrameSource + ?Sized>(
        &mut self,
        addr: u64,
        len: u64,
        vm: &Vm,
        frames: &mut A,
        tlb: &mut Tlb<'_>,
    ) -> Result<(), VmError> {
        let (a, b) = self.covered_range(addr, len)?;
        // The areas split at the ends: so do huge pages there.
        self.split_huge_ends(vm, (a, b), frames, tlb)?;
        let newly = self.pages_locked(a, b, false);
        vm.charge_locked(newly)?;
        let before: alloc::vec::Vec<Area> = self.areas.overlapping(a, b).copied().collect();
        self.areas.update(a, b, |x| Area { locked: true, ..x });
        if let Err(e) = self.populate(a, b, vm, frames, tlb) {
            // Back as it was: each piece with its old lock.
            for x in before {
                let (s, t) = (x.start.max(a), x.end.min(b));
                self.areas.update(s, t, |y| Area {
                    locked: x.locked,
                    ..y
                });
            }
            vm.uncharge_locked(newly);
            return Err(e);
        }
        // Reclaim looks for victims through the policy: forget the pages.
        let mut ids = alloc::vec::Vec::new();
        if self.has_policy || self.global_id().is_some() {
            self.for_each_anonymous_leaf(a, b, |leaf| ids.push(leaf.page.as_u64() >> 12));
            if let Some(p) = self.policy.get_mut().as_mut() {
                for &id in &ids {
                    p.remove(id);
                }
            }
            if let Some(g) = self.global_id() {
                vm.forget_global(g, ids);
            }
        }
        Ok(())
    }

    /// Faults in every page of the anonymous areas of `[a, b)` that is not
    /// resident as a private frame (a write fault where the area is
    /// writable, else a read).
    fn populate<A: FrameSource + ?Sized>(
        &mut self,
        a: u64,
        b: u64,
        vm: &Vm,
        frames: &mut A,
        tlb: &mut Tlb<'_>,
    ) -> Result<(), VmError> {
        // Inaccessible areas (PROT_NONE) are locked without faulting their
        // pages in, as mlock(2) does: no access could fault them in.
        let ranges: alloc::vec::Vec<(u64, u64, super::Prot)> = self
            .areas
            .overlapping(a, b)
            .filter(|x| x.kind == AreaKind::Anonymous && x.prot.accessible())
            .map(|x| (x.start.max(a), x.end.min(b), x.prot))
            .collect();
        for (s, e, prot) in ranges {
            // The access the area's owner makes: from ring 3 to user memory.
            let user = prot.contains(super::Prot::USER);
            for va in (s..e).step_by(PAGE as usize) {
                let access = if prot.contains(super::Prot::WRITE) {
                    FaultAccess::write(user)
                } else {
                    FaultAccess::read(user)
                };
                self.fault_in(vm, VirtAddr::new(va), access, frames, tlb)
                    .map_err(|r| match r {
                        FaultReason::OutOfMemory => VmError::OutOfMemory,
                        r => VmError::Populate(r),
                    })?;
            }
        }
        Ok(())
    }

    /// Resolves a fault on `va` as an access would, retrying while the
    /// page is in transit on another CPU.
    fn fault_in<A: FrameSource + ?Sized>(
        &self,
        vm: &Vm,
        va: VirtAddr,
        access: FaultAccess,
        frames: &mut A,
        tlb: &mut Tlb<'_>,
    ) -> Result<(), FaultReason> {
        loop {
            match self.handle_fault(vm, va, access, frames, tlb) {
                Ok(FaultOutcome::InTransit) => core::hint::spin_loop(),
                Ok(_) => return Ok(()),
                Err(e) => return Err(e.reason),
            }
        }
    }

    /// The page-aligned `[addr, addr + len)`, which areas must cover
    /// without holes.
    fn covered_range(&self, addr: u64, len: u64) -> Result<(u64, u64), VmError> {
        let (a, b) = self.range(addr, len)?;
        if !self.areas.covered(a, b) {
            return Err(VmError::Unmapped { addr });
        }
        Ok((a, b))
    }

    /// Pages of `[a, b)` in areas whose lock is `locked`.
    fn pages_locked(&self, a: u64, b: u64, locked: bool) -> u64 {
        self.areas
            .overlapping(a, b)
            .filter(|x| x.locked == locked)
            .map(|x| (x.end.min(b) - x.start.max(a)) / PAGE)
            .sum()
    }

    /// Unlocks `[addr, addr + len)` (`munlock`): areas must cover it
    /// without holes; its resident pages become reclaimable again.
    pub fn unlock(&mut self, addr: u64, len: u64, vm: &Vm) -> Result<(), VmError> {
        let (a, b) = self.covered_range(addr, len)?;
        let unlocked = self.pages_locked(a, b, true);
        self.areas.update(a, b, |x| Area { locked: false, ..x });
        vm.uncharge_locked(unlocked);
        if self.has_policy || self.global_id().is_some() {
            let mut pages = alloc::vec::Vec::new();
            self.for_each_anonymous_leaf(a, b, |leaf| {
                let frame = PhysFrame::containing_address(leaf.frame);
                if vm.held_alone(frame) {
                    pages.push(x86_64::structures::paging::Page::containing_address(
                        leaf.page,
                    ));
                }
            });
            for page in pages {
                self.track(vm, page);
            }
        }
        Ok(())
    }

    /// Pages of this space's locked areas.
    pub fn locked_pages(&self) -> u64 {
        self.areas
            .iter()
            .filter(|x| x.locked)
            .map(Area::pages)
            .sum()
    }
}
