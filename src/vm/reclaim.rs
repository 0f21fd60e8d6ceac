//! Memory pressure: frames for anonymous pages under the limit, the
//! reclaim scan (CLOCK over the hardware Accessed bits), write-out to swap
//! in clusters, and swap-in with readahead.
//!
//! Reclaim unmaps before it looks: each victim's entry is cleared by an
//! atomic exchange, the space's CPUs invalidate it, and only then are the
//! Dirty bit (from the exchanged value) and the contents read (Linux's
//! `try_to_unmap` and `ptep_clear_flush`). A write from another CPU either
//! lands before the exchange (and is in Dirty and the contents) or faults.
//! Victim lists are bounded by a cluster and live on the stack: reclaim
//! runs when memory is short, so it must not need the heap.
//!
//! While a page's write to swap is in flight it is mapped again, read-only
//! and marked (`WRITE_OUT`): other CPUs keep reading it; a write faults,
//! marks the eviction cancelled and waits; when the write ends the page
//! goes (unmapped and invalidated again, then freed) unless cancelled, in
//! which case it stays writable and clean with its copy on swap cached.

use super::contents::{copy_frame, is_zero, page_ptr};
use super::replace::ReplacementPolicy;
use super::space::for_each_pageable_leaf;
use super::stats::count;
use super::swap::{
    slot_of, swap_entry, Claim, Swap, BUSY, CANCEL, CLUSTER, LAZY_FREE, PAGE_BYTES, WRITE_OUT,
};
use super::table::SpaceTable;
use super::{FaultOutcome, FaultReason, Prot, Vm, VmSpace};
use crate::paging::{
    Flush, FrameSource, LeafSize, PageTables, PhysMem, ACCESSED, ADDR_MASK, DIRTY, WRITABLE,
};
use crate::smp::Tlb;
use crate::PAGE_SIZE;
use alloc::vec::Vec;
use core::sync::atomic::Ordering;
use x86_64::structures::paging::{Page, PhysFrame, Size4KiB};
use x86_64::VirtAddr;

/// Up to a cluster of pages, on the stack.
pub(super) struct Batch {
    items: [(VirtAddr, PhysFrame, u64); CLUSTER],
    pub(super) len: usize,
}

impl Batch {
    pub(super) fn new() -> Self {
        let none = (
            VirtAddr::zero(),
            PhysFrame::containing_address(x86_64::PhysAddr::zero()),
            0,
        );
        Self {
            items: [none; CLUSTER],
            len: 0,
        }
    }

    pub(super) fn is_full(&self) -> bool {
        self.len == CLUSTER
    }

    pub(super) fn push(&mut self, va: VirtAddr, frame: PhysFrame, tag: u64) {
        if self.len < CLUSTER {
            self.items[self.len] = (va, frame, tag);
            self.len += 1;
        }
    }

    pub(super) fn as_slice(&self) -> &[(VirtAddr, PhysFrame, u64)] {
        &self.items[..self.len]
    }

    pub(super) fn as_mut_slice(&mut self) -> &mut [(VirtAddr, PhysFrame, u64)] {
        &mut self.items[..self.len]
    }
}

/// Why [`VmSpace::new_frame`] has no frame.
pub(super) enum Shortage {
    /// The fault fails with this reason.
    Fault(FaultReason),
    /// Reclaim freed frames, and other CPUs took them first: they made
    /// progress, so the fault is tried again.
    Raced,
}

impl<P: PhysMem> VmSpace<P> {
    /// A frame for an anonymous page: under the limit at once, else after
    /// reclaiming some of this space's pages, or, with the kernel's table
    /// of `spaces` (a space under the global policy), the coldest pages of
    /// every space; with the table, below the `min` watermark first.
    pub(super) fn new_frame<A: FrameSource + ?Sized>(
        &self,
        vm: &Vm,
        spaces: Option<&dyn SpaceTable<P>>,
        frames: &mut A,
        tlb: &mut Tlb<'_>,
    ) -> Result<PhysFrame, Shortage> {
        if let Some(spaces) = spaces.filter(|_| vm.below_min()) {
            // Direct reclaim: the worker fell behind. Failure here is not
            // final: the allocation below may still find a frame.
            count(&vm.stats.at(tlb.cpu()).direct_reclaims, 1);
            let _ = vm.reclaim_step(spaces, frames, tlb);
        }
        if let Some(f) = vm.alloc_frame(tlb.cpu(), frames) {
            return Ok(f);
        }
        count(&vm.stats.at(tlb.cpu()).direct_reclaims, 1);
        let cancels = vm.cancels.load(Ordering::Acquire);
        let freed = match spaces {
            // Without swap, the object pages of every space.
            Some(spaces) => vm.reclaim_global(spaces, vm.reclaim_batch(), frames, tlb),
            None if vm.swap.is_some() => self.reclaim(vm, frames, vm.reclaim_batch(), tlb),
            None => Ok(0),
        };
        // No swap device is out of memory, as ever.
        let freed = match freed {
            Err(FaultReason::NoSwap) => Ok(0),
            other => other,
        };
        // The global policy ranks object pages with anonymous ones; without
        // it (or a swap device), or when it freed nothing, this space's own
        // shared object pages go (clean ones dropped, dirty ones written back).
        let freed = match freed {
            Ok(n) if n > 0 => n,
            other => match self.reclaim_objects(vm, vm.reclaim_batch(), frames, tlb) {
                0 => other.map_err(Shortage::Fault)?,
                n => n,
            },
        };
        if let Some(f) = vm.alloc_frame(tlb.cpu(), frames) {
            return Ok(f);
        }
        // Reclaim freed frames that another CPU took first, or found every
        // page in transit (another CPU's reclaim or swap-in): their frames
        // come back without waiting for this one. In this order: a CPU whose
        // frames are in transit counts them until after it freed them. Or
        // a write cancelled the eviction of the victims: they are in use
        // again, and the next reclaim takes others.
        if freed > 0 || vm.any_in_transit() || vm.cancels.load(Ordering::Acquire) != cancels {
            return Err(Shortage::Raced);
        }
        Err(Shortage::Fault(FaultReason::OutOfMemory))
    }

    /// Frees up to `want` (at most one cluster) of this space's anonymous
    /// pages that hold a frame alone: the CLOCK hand (or the policy) picks
    /// them; they are unmapped and invalidated on the space's CPUs first.
    /// A page of zeros is dropped (it reads back as zeros); a clean page
    /// whose copy on swap is still valid is dropped; the rest are written in
    /// clustered requests, with no lock held, mapped read-only meanwhile:
    /// reads go on, a write cancels that page's eviction and waits for the
    /// write to end. A failed write, or no slot left, puts the pages back
    /// as they were. Returns the pages freed; without a swap device,
    /// [`FaultReason::NoSwap`].
    pub fn reclaim<A: FrameSource + ?Sized>(
        &self,
        vm: &Vm,
        frames: &mut A,
        want: usize,
        tlb: &mut Tlb<'_>,
    ) -> Result<usize, FaultReason> {
        let Some(swap) = vm.swap.as_ref() else {
            return Err(FaultReason::NoSwap);
        };
        let want = want.clamp(1, CLUSTER);
        let cpu = tlb.cpu();
        self.age_huge(vm, frames, tlb);
        let mut flush = Flush::none();
        let mut victims = Batch::new();
        {
            let mut m = self.mapper.lock();
            let mut policy = self.policy.lock();
            match policy.as_mut() {
                Some(p) => {
                    self.victims_by_policy(cpu, &m, &mut **p, vm, want, &mut flush, &mut victims)
                }
                None => self.victims_by_clock(cpu, &m, vm, want, &mut flush, &mut victims),
            }
            // A joined space reclaiming for itself: the global policy must
            // not offer these pages again.
            if let Some(id) = self.global_id() {
                vm.forget_global(id, victims.as_slice().iter().map(|v| v.0.as_u64() >> 12));
            }
            // 1. Unmap every victim in one atomic exchange each; the mark
            // makes a fault on it wait instead of filling it with zeros.
            for v in victims.as_mut_slice() {
                v.2 = m
                    .exchange_pte(v.0, BUSY)
                    .expect("a resident page has its page table");
                flush.add(v.0.as_u64());
            }
        }
        match self.write_out(swap, &victims, flush, vm, frames, tlb) {
            (0, Some(e)) => Err(e),
            (freed, _) => Ok(freed),
        }
    }

    /// Frees the pages of `victims`, whose entries the caller exchanged for
    /// busy marks (adding them to `flush`): invalidates them on the space's
    /// CPUs, then drops the pages of zeros and the clean ones whose copy on
    /// swap is current, and writes the rest out in clustered requests with
    /// no lock held. Pages not written go back as they were. Returns the
    /// pages freed and, if some could not be written, why.
    pub(super) fn write_out<A: FrameSource + ?Sized>(
        &self,
        swap: &Swap,
        victims: &Batch,
        flush: Flush,
        vm: &Vm,
        frames: &mut A,
        tlb: &mut Tlb<'_>,
    ) -> (usize, Option<FaultReason>) {
        let cpu = tlb.cpu();
        let _transit = vm.transit(cpu, victims.len as u64);
        // 2. No CPU can write them any more once this returns.
        self.invalidate(flush, vm, tlb);
        // 3. Dirty bits and contents are final: decide.
        let phys = &self.phys;
        let mut freed = 0;
        let mut to_write = Batch::new();
        for &(va, frame, old) in victims.as_slice() {
            if old & LAZY_FREE != 0 && old & DIRTY == 0 {
                // Given up with MADV_FREE and not written since: dropped;
                // the next touch reads zeros (its copy on swap goes with
                // the frame).
                self.put_entry(va, 0);
                vm.release_frame(tlb.cpu(), frame, frames);
                count(&vm.stats.at(tlb.cpu()).lazy_freed, 1);
                freed += 1;
                continue;
            }
            // A private copy of an object's page must stay: its next
            // touch would read the object again, not zeros.
            let anonymous = || {
                self.areas
                    .find(va.as_u64())
                    .is_some_and(|a| a.kind == super::AreaKind::Anonymous)
            };
            if anonymous() && is_zero(phys, frame) {
                // The entry becomes empty: the next touch is a demand-zero fault.
                self.put_entry(va, 0);
                vm.release_frame(tlb.cpu(), frame, frames);
                count(&vm.stats.at(tlb.cpu()).zero_elided, 1);
                freed += 1;
                continue;
            }
            let cached = swap.uncache(frame.start_address().as_u64() / PAGE_SIZE);
            match cached {
                Some(slot) if old & DIRTY == 0 => {
                    // The copy on swap is current: its reference moves to the entry.
                    self.put_entry(va, swap_entry(slot));
                    vm.release_frame(tlb.cpu(), frame, frames);
                    count(&vm.stats.at(tlb.cpu()).swap_cache_hits, 1);
                    freed += 1;
                }
                Some(slot) => {
                    swap.drop_ref(slot); // a stale copy
                    to_write.push(va, frame, old);
                }
                None => to_write.push(va, frame, old),
            }
        }
        // 4. Write the rest out in clustered requests, no page-table lock held.
        let mut rest = to_write.as_slice();
        let mut error = None;
        while !rest.is_empty() {
            let Some((first, n)) = swap.take(rest.len()) else {
                error = Some(FaultReason::OutOfSwap);
                break;
            };
            let (chunk, tail) = rest.split_at(n);
            rest = tail;
            self.map_for_write_out(chunk);
            let mut pages: Vec<&[u8; PAGE_BYTES]> = Vec::new();
            let written = if pages.try_reserve_exact(n).is_err() {
                Err(FaultReason::OutOfMemory)
            } else {
                // SAFETY: frames this space mapped alone, unmapped and invalidated
                // on every CPU above; mapped again read-only at most: nothing
                // writes them now.
                pages.extend(
                    chunk
                        .iter()
                        .map(|&(_, f, _)| unsafe { &*page_ptr(phys, f) }),
                );
                let w = swap.device.write(first, &pages);
                w.map_err(FaultReason::SwapIo)
            };
            drop(pages);
            let ok = written.is_ok();
            freed += self.finish_write_out((vm, swap), (chunk, first), ok, frames, tlb);
            if let Err(e) = written {
                error = Some(e);
                break;
            }
        }
        // Pages not written go back as they were (Dirty included); the
        // policy knows them again.
        for &(va, _, old) in rest {
            self.put_entry(va, old);
            self.track(vm, Page::containing_address(va));
        }
        count(&vm.stats.at(tlb.cpu()).reclaimed, freed as u64);
        (freed, error)
    }

    /// Maps the pages of `chunk` (busy, about to be written) again,
    /// read-only and clean with Accessed clear, marked [`WRITE_OUT`], while
    /// their write is in flight: reads go on; a write faults, asks for the
    /// eviction to be cancelled ([`CANCEL`]) and waits for the write to end.
    fn map_for_write_out(&self, chunk: &[(VirtAddr, PhysFrame, u64)]) {
        for &(va, _, old) in chunk {
            // Non-present to present: no CPU caches the entry, nothing to invalidate.
            let readable = old & !(WRITABLE | ACCESSED | DIRTY | LAZY_FREE) | WRITE_OUT;
            self.put_entry(va, readable);
        }
    }

    /// After the write of `chunk` to the slots from `first` on (`ok`: it
    /// succeeded): a page whose eviction no write cancelled goes (its
    /// entry names its slot, the frame is freed once no CPU caches it); a
    /// cancelled one stays, writable and clean, its copy on swap cached (the
    /// write to come makes it dirty). After a failed write every page is as
    /// before, Dirty included. Returns the pages freed.
    fn finish_write_out<A: FrameSource + ?Sized>(
        &self,
        (vm, swap): (&Vm, &Swap),
        (chunk, first): (&[(VirtAddr, PhysFrame, u64)], u64),
        ok: bool,
        frames: &mut A,
        tlb: &mut Tlb<'_>,
    ) -> usize {
        let cpu = tlb.cpu();
        let mut flush = Flush::none();
        let (mut goes, mut lost) = (0u32, 0u32);
        let mut cancelled = 0;
        {
            let mut m = self.mapper.lock();
            for (i, &(va, frame, old)) in chunk.iter().enumerate() {
                let e = m.leaf_entry(va).unwrap_or(0);
                if e & ADDR_MASK != frame.start_address().as_u64() || e & WRITE_OUT == 0 {
                    // Not the entry this write-out left (no path should
                    // change it: a reclaim elsewhere skips pages under
                    // write-out): whoever changed it owns the frame now;
                    // only the slot is ours to give back.
                    debug_assert!(false, "the entry of a page under write-out changed: {e:#x}");
                    lost |= 1 << i;
                    continue;
                }
                let now = if !ok {
                    old | (e & ACCESSED)
                } else if e & CANCEL != 0 {
                    // Clean, its copy on swap cached (before the lock lets
                    // another reclaim take it), no longer given up: the
                    // write to come is kept.
                    cancelled += 1;
                    swap.cache(frame.start_address().as_u64() / PAGE_SIZE, first + i as u64);
                    (old & !(DIRTY | LAZY_FREE)) | (e & ACCESSED)
                } else {
                    goes |= 1 << i;
                    BUSY
                };
                // A CPU that cached the read-only entry set its Accessed
                // bit, clear when the page was mapped for the write-out and
                // cleared by nobody since (the harvests and the CLOCK hand
                // leave pages under write-out alone, and they run under
                // this lock): only then is there a translation to
                // invalidate. Most pages under write-out are not touched.
                let was = m.exchange_pte(va, now).unwrap_or(e);
                if was & ACCESSED != 0 {
                    flush.add(va.as_u64());
                }
            }
        }
        // CPUs that read a page meanwhile may cache it: not after this.
        self.invalidate(flush, vm, tlb);
        let mut freed = 0;
        for (i, &(va, frame, _)) in chunk.iter().enumerate() {
            let slot = first + i as u64;
            if goes & (1 << i) != 0 {
                self.put_entry(va, swap_entry(slot));
                vm.release_frame(cpu, frame, frames);
                count(&vm.stats.at(cpu).swap_outs, 1);
                freed += 1;
                continue;
            }
            if !ok || lost & (1 << i) != 0 {
                swap.drop_ref(slot);
            }
            if lost & (1 << i) == 0 {
                self.track(vm, Page::containing_address(va));
            }
        }
        if cancelled > 0 {
            count(&vm.stats.at(cpu).writeback_cancelled, cancelled);
            vm.cancels.fetch_add(cancelled, Ordering::AcqRel);
        }
        freed
    }

    /// Replaces the busy mark reclaim or a swap-in left in the 4 KiB entry
    /// of `va`: no CPU caches a non-present entry, and faults on it wait.
    pub(super) fn put_entry(&self, va: VirtAddr, value: u64) {
        let old = self
            .mapper
            .lock()
            .exchange_pte(va, value)
            .expect("a page in transit keeps its page table");
        debug_assert!(old & BUSY != 0, "the entry at {va:?} changed in transit");
    }

    /// CLOCK: a first round from the hand clears Accessed bits and takes
    /// the pages found unreferenced; a second takes the ones it cleared.
    #[allow(clippy::too_many_arguments)]
    fn victims_by_clock(
        &self,
        cpu: usize,
        m: &PageTables<P>,
        vm: &Vm,
        want: usize,
        flush: &mut Flush,
        victims: &mut Batch,
    ) {
        let mut second = Batch::new();
        let mut scanned = 0;
        let (lo, hi) = self.areas.bounds();
        let hand = self.clock_hand.load(Ordering::Relaxed).clamp(lo, hi);
        for (a, b) in [(hand, hi), (lo, hand)] {
            for_each_pageable_leaf(vm, &self.areas, m, a, b, |leaf| {
                let frame = PhysFrame::containing_address(leaf.frame);
                if victims.len == want
                    || leaf.size != LeafSize::Size4KiB // a huge page: split when cold
                    || !vm.held_alone(frame)
                    || under_write_out(m, leaf.page)
                {
                    return;
                }
                scanned += 1;
                if m.clear_accessed(leaf.page) {
                    flush.add(leaf.page.as_u64());
                    if second.len < want {
                        second.push(leaf.page, frame, 0);
                    }
                } else {
                    victims.push(leaf.page, frame, 0);
                }
            });
        }
        for &(va, frame, _) in second.as_slice() {
            if victims.len == want {
                break;
            }
            scanned += 1;
            victims.push(va, frame, 0);
        }
        count(&vm.stats.at(cpu).scanned, scanned);
        if let Some(&(va, _, _)) = victims.as_slice().last() {
            self.clock_hand
                .store(va.as_u64() + PAGE_SIZE, Ordering::Relaxed);
        }
    }

    /// The policy's choice: every Accessed bit of the space's private pages
    /// is harvested (in address order) and reported, then the policy
    /// evicts. A page it names that cannot go now (shared by a fork since)
    /// is given back to the policy, which offers it again later.
    #[allow(clippy::too_many_arguments)]
    fn victims_by_policy(
        &self,
        cpu: usize,
        m: &PageTables<P>,
        policy: &mut (dyn ReplacementPolicy + Send),
        vm: &Vm,
        want: usize,
        flush: &mut Flush,
        victims: &mut Batch,
    ) {
        let zero = vm.zero_frame();
        let mut scanned = 0;
        let (lo, hi) = self.areas.bounds();
        for_each_pageable_leaf(vm, &self.areas, m, lo, hi, |leaf| {
            let frame = PhysFrame::containing_address(leaf.frame);
            if leaf.size != LeafSize::Size4KiB
                || !vm.held_alone(frame)
                || under_write_out(m, leaf.page)
            {
                return;
            }
            scanned += 1;
            if m.clear_accessed(leaf.page) {
                flush.add(leaf.page.as_u64());
                policy.referenced(leaf.page.as_u64() >> 12);
            }
        });
        count(&vm.stats.at(cpu).scanned, scanned);
        let mut kept = Batch::new();
        let mut tries = policy.resident_len();
        while victims.len < want && tries > 0 && !kept.is_full() {
            tries -= 1;
            let Some(id) = policy.evict() else { break };
            let va = VirtAddr::new(id << 12);
            if self.areas.find(va.as_u64()).is_some_and(|a| a.locked) {
                continue; // locked since the policy learned it: forgotten
            }
            let Ok(t) = m.translate(va) else {
                continue; // gone: nothing to track
            };
            let f = PhysFrame::containing_address(t.frame);
            let cached = self
                .areas
                .find(va.as_u64())
                .and_then(|a| super::objects::cached_page(vm, a, va.as_u64(), f));
            if cached.is_some() {
                continue; // its object's to evict: forgotten here
            }
            if t.size == LeafSize::Size4KiB && vm.held_alone(f) && !under_write_out(m, va) {
                victims.push(va, f, 0);
            } else {
                kept.push(va, zero, 0);
            }
        }
        for &(va, _, _) in kept.as_slice() {
            let _ = policy.insert(va.as_u64() >> 12);
        }
    }

    /// Reads a swapped-out page back (and, after a sequential refault, the
    /// pages whose entries name the next slots, in the same request), with
    /// no lock held: the caller marked the page's entry busy, readahead
    /// marks the others. On error every frame taken is given back and every
    /// entry is as before.
    pub(crate) fn swap_in<A: FrameSource + ?Sized>(
        &self,
        (vm, spaces): (&Vm, Option<&dyn SpaceTable<P>>),
        page: Page<Size4KiB>,
        entry: u64,
        prot: Prot,
        frames: &mut A,
        tlb: &mut Tlb<'_>,
    ) -> Result<FaultOutcome, FaultReason> {
        let va = page.start_address();
        let unmark = |this: &Self| this.put_entry(va, entry);
        let (Some(slot), Some(swap)) = (slot_of(entry), vm.swap.as_ref()) else {
            unmark(self);
            return Err(FaultReason::Paging(crate::paging::PagingError::NotMapped {
                addr: va,
            }));
        };
        let first = match self.new_frame(vm, spaces, frames, tlb) {
            Ok(f) => f,
            Err(e) => {
                unmark(self);
                return match e {
                    Shortage::Fault(e) => Err(e),
                    Shortage::Raced => Ok(FaultOutcome::InTransit),
                };
            }
        };
        let cpu = tlb.cpu();
        let phys = &self.phys;
        // A sharer of the slot may hold its page already: copy it, no read.
        let reading = match swap.claim(slot, |f| copy_frame(phys, frame_at(f), first)) {
            Claim::Wait => {
                vm.release_frame(cpu, first, frames);
                unmark(self);
                return Ok(FaultOutcome::InTransit);
            }
            Claim::Copied => None,
            Claim::Read(r) => Some(r),
        };
        let mut run = Batch::new();
        run.push(va, first, entry);
        let v = va.as_u64();
        let area_end = self.areas.find(v).map_or(v + PAGE_SIZE, |a| a.end);
        if reading.is_some()
            && vm.readahead() > 1
            && self.last_swap_in.load(Ordering::Relaxed) + PAGE_SIZE == v
        {
            for k in 1..vm.readahead().min(CLUSTER as u64) {
                let next = v + k * PAGE_SIZE;
                if next >= area_end {
                    break;
                }
                let ahead = VirtAddr::new(next);
                let want = swap_entry(slot + k);
                let mut m = self.mapper.lock();
                // Past the slot in use (or the device's end), or a slot
                // another sharer holds.
                if m.soft_entry(ahead) != Some(want) || swap.held(slot + k) {
                    break;
                }
                let Some(f) = vm.alloc_frame(tlb.cpu(), frames) else {
                    break;
                };
                m.exchange_pte(ahead, want | BUSY).expect("checked above");
                run.push(ahead, f, want);
            }
        }
        let _transit = vm.transit(tlb.cpu(), run.len as u64);
        let give_back = |this: &Self, frames: &mut A, run: &[(VirtAddr, PhysFrame, u64)]| {
            for &(va, f, e) in run {
                this.put_entry(va, e);
                vm.release_frame(cpu, f, frames);
            }
        };
        let read = if reading.is_none() {
            Ok(())
        } else if let [(_, f, _)] = run.as_slice() {
            // One page (no readahead): no list to build.
            // SAFETY: a frame just allocated, used by nothing else yet.
            let page = unsafe { &mut *page_ptr(phys, *f) };
            swap.device.read(slot, &mut [page])
        } else {
            let mut bufs: Vec<&mut [u8; PAGE_BYTES]> = Vec::new();
            if bufs.try_reserve_exact(run.len).is_err() {
                give_back(self, frames, run.as_slice());
                return Err(FaultReason::OutOfMemory);
            }
            // SAFETY: frames just allocated, distinct, used by nothing else yet.
            bufs.extend(
                run.as_slice()
                    .iter()
                    .map(|&(_, f, _)| unsafe { &mut *page_ptr(phys, f) }),
            );
            swap.device.read(slot, &mut bufs)
        };
        if let Err(e) = read {
            give_back(self, frames, run.as_slice());
            return Err(FaultReason::SwapIo(e));
        }
        // A page whose slot other entries still name is mapped read-only,
        // so that they can copy the frame while it stays cached (a write
        // takes a fault that reuses it and leaves the cache first). Our own
        // entry is one reference; no new one can appear while it is busy.
        let exclusive: u32 = (0..run.len).fold(0, |bits, i| {
            bits | (u32::from(swap.refs(slot + i as u64) == 1) << i)
        });
        let mut mapped = 0;
        for (i, &(p, f, e)) in run.as_slice().iter().enumerate() {
            let p = Page::<Size4KiB>::containing_address(p);
            // Over the busy mark: a non-present entry, which no CPU caches;
            // it is ours, so the exchange cannot miss (the table exists).
            let flags = prot.map_flags(exclusive & (1 << i) != 0);
            let r = {
                let mut m = self.mapper.lock();
                let r = match m.replace_pte(p.start_address(), e | BUSY, f, flags) {
                    Ok(old) => {
                        debug_assert!(old.is_some(), "a busy entry changed");
                        Ok(())
                    }
                    // A table above lacks the user bit: the general map sets it.
                    // SAFETY: a frame just filled from swap for this page of a user area: user memory,
                    // no Rust object's; its entry is this swap-in's busy mark.
                    Err(_) => unsafe { m.map(p, f, flags, frames) }.map(Flush::ignore),
                };
                let slot_i = slot + i as u64;
                if r.is_ok() && exclusive & (1 << i) != 0 && swap.device.copy_in_ram(slot_i) {
                    // A second copy of a page now resident would take RAM
                    // (a compressed pool): the slot goes.
                    swap.drop_ref(slot_i);
                } else if r.is_ok() {
                    // The entry's reference to the slot moves to the cache,
                    // before the lock lets another reclaim take the page
                    // (which would free the frame first).
                    swap.cache(f.start_address().as_u64() / PAGE_SIZE, slot_i);
                }
                r
            };
            match r {
                Ok(()) => {
                    self.track(vm, p);
                    mapped += 1;
                }
                Err(e) => {
                    // This page and the ones after it stay on swap.
                    give_back(self, frames, &run.as_slice()[i..]);
                    if i == 0 {
                        return Err(FaultReason::Paging(e));
                    }
                    break;
                }
            }
        }
        if vm.readahead() > 1 {
            // Shared by the space's CPUs: written only when readahead uses it.
            let last = run.as_slice()[mapped - 1].0.as_u64();
            self.last_swap_in.store(last, Ordering::Relaxed);
        }
        let copied = reading.is_none();
        drop(reading); // the page is cached: sharers copy it from now on
        if copied {
            count(&vm.stats.at(tlb.cpu()).swap_in_copies, 1);
        } else {
            count(&vm.stats.at(tlb.cpu()).major_faults, 1);
        }
        count(&vm.stats.at(tlb.cpu()).refaults, 1);
        count(&vm.stats.at(tlb.cpu()).swap_ins, mapped as u64);
        count(&vm.stats.at(tlb.cpu()).readahead, mapped as u64 - 1);
        Ok(FaultOutcome::SwappedIn)
    }
}

/// Whether the page at `va` is being written out by a reclaim (mapped
/// read-only meanwhile): no other reclaim takes it.
pub(super) fn under_write_out<P: PhysMem>(m: &PageTables<P>, va: VirtAddr) -> bool {
    m.leaf_entry(va).is_some_and(|e| e & WRITE_OUT != 0)
}

/// The frame of frame number `n`.
fn frame_at(n: u64) -> PhysFrame {
    PhysFrame::containing_address(x86_64::PhysAddr::new(n * PAGE_SIZE))
}
