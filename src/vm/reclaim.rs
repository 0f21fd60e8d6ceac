//! Memory pressure: frames for anonymous pages under the limit, the
//! reclaim scan (CLOCK over the hardware Accessed bits), write-out to swap
//! in clusters, and swap-in with readahead.

use super::swap::{slot_of, swap_entry, CLUSTER, PAGE_BYTES};
use super::{FaultOutcome, FaultReason, Prot, Resolved, Vm, VmSpace};
use crate::paging::{Flush, FrameSource, PhysMem, DIRTY_BIT};
use crate::PAGE_SIZE;
use alloc::vec::Vec;
use x86_64::structures::paging::{Page, PhysFrame, Size4KiB};
use x86_64::VirtAddr;

impl<P: PhysMem> VmSpace<P> {
    /// A frame for an anonymous page: under the limit at once, else after
    /// reclaiming some of this space's pages (TLB work goes to `flush`).
    pub(crate) fn new_frame<A: FrameSource + ?Sized>(
        &mut self,
        vm: &mut Vm,
        frames: &mut A,
        flush: &mut Flush,
    ) -> Result<PhysFrame, FaultReason> {
        if let Some(f) = vm.alloc_frame(frames) {
            return Ok(f);
        }
        if vm.swap.is_none() {
            return Err(FaultReason::OutOfMemory);
        }
        let (freed, f) = self.reclaim(vm, frames, vm.reclaim_batch())?;
        flush.merge(f);
        if freed == 0 {
            return Err(FaultReason::OutOfMemory);
        }
        vm.alloc_frame(frames).ok_or(FaultReason::OutOfMemory)
    }

    /// Frees up to `want` (at most one cluster) of this space's anonymous
    /// pages that hold a frame alone: the CLOCK hand goes over them,
    /// clearing Accessed bits and taking pages whose bit was clear. A page
    /// of zeros is dropped (it reads back as zeros); a clean page whose copy
    /// on swap is still valid is dropped; the rest are written in clustered
    /// requests. A failed write keeps its pages resident and intact.
    /// Returns the pages freed and the TLB work (flush it before the space
    /// runs again).
    pub fn reclaim<A: FrameSource + ?Sized>(
        &mut self,
        vm: &mut Vm,
        frames: &mut A,
        want: usize,
    ) -> Result<(usize, Flush), FaultReason> {
        let want = want.clamp(1, CLUSTER);
        let mut flush = Flush::none();
        let victims = if self.policy.is_some() {
            self.victims_by_policy(vm, want, &mut flush)
        } else {
            self.victims_by_clock(vm, want, &mut flush)
        };
        let mut freed = 0;
        let mut to_write: Vec<(VirtAddr, PhysFrame)> = Vec::new();
        for (va, frame) in victims {
            let page = Page::<Size4KiB>::containing_address(va);
            let dirty = self
                .mapper
                .leaf_entry(va)
                .is_some_and(|e| e & DIRTY_BIT != 0);
            if is_zero(self.mapper.phys_mem(), frame) {
                if let Ok((_, f)) = self.mapper.unmap(page, frames) {
                    flush.merge(f);
                    vm.release_frame(frame, frames);
                    vm.stats.zero_elided += 1;
                    freed += 1;
                }
                continue;
            }
            let swap = vm.swap.as_mut().expect("reclaim needs swap");
            let cached = swap.uncache(frame.start_address().as_u64() / PAGE_SIZE);
            match cached {
                Some(slot) if !dirty => {
                    // The copy on swap is current: its reference moves to
                    // the page-table entry.
                    match self.mapper.set_soft_entry(va, swap_entry(slot)) {
                        Ok(f) => {
                            flush.merge(f);
                            vm.release_frame(frame, frames);
                            vm.stats.swap_cache_hits += 1;
                            freed += 1;
                        }
                        Err(_) => swap.cache(frame.start_address().as_u64() / PAGE_SIZE, slot),
                    }
                }
                Some(slot) => {
                    swap.drop_ref(slot); // stale copy
                    to_write.push((va, frame));
                }
                None => to_write.push((va, frame)),
            }
        }
        let mut rest = &to_write[..];
        let mut error = None;
        while !rest.is_empty() {
            let swap = vm.swap.as_mut().expect("reclaim needs swap");
            let Some((first, n)) = swap.take(rest.len()) else {
                if freed == 0 {
                    return Err(FaultReason::OutOfSwap);
                }
                break;
            };
            let (chunk, tail) = rest.split_at(n);
            let pages: Vec<&[u8; PAGE_BYTES]> = chunk
                .iter()
                // SAFETY: frames this space maps alone; nothing writes them
                // while the space reclaims.
                .map(|&(_, f)| unsafe { &*page_ptr(self.mapper.phys_mem(), f) })
                .collect();
            if let Err(e) = swap.device.write(first, &pages) {
                for s in first..first + n as u64 {
                    swap.drop_ref(s);
                }
                error = Some(e);
                // They stay resident: the policy knows them again.
                for &(va, _) in rest {
                    self.track(Page::containing_address(va));
                }
                break;
            }
            for (i, &(va, frame)) in chunk.iter().enumerate() {
                let f = self
                    .mapper
                    .set_soft_entry(va, swap_entry(first + i as u64))
                    .expect("a resident page has its page table");
                flush.merge(f);
                vm.release_frame(frame, frames);
                vm.stats.swap_outs += 1;
                freed += 1;
            }
            rest = tail;
        }
        vm.stats.reclaimed += freed as u64;
        match error {
            Some(e) if freed == 0 => Err(FaultReason::SwapIo(e)),
            _ => Ok((freed, flush)),
        }
    }

    /// CLOCK: a first round from the hand clears Accessed bits and takes
    /// the pages found unreferenced; a second takes the ones it cleared.
    fn victims_by_clock(
        &mut self,
        vm: &mut Vm,
        want: usize,
        flush: &mut Flush,
    ) -> Vec<(VirtAddr, PhysFrame)> {
        let candidates = self.candidates(vm);
        let mut victims: Vec<(VirtAddr, PhysFrame)> = Vec::new();
        let mut second: Vec<(VirtAddr, PhysFrame)> = Vec::new();
        for &(va, frame) in &candidates {
            if victims.len() == want {
                break;
            }
            vm.stats.scanned += 1;
            if self.mapper.clear_accessed(va) {
                flush.add(va.as_u64());
                second.push((va, frame));
            } else {
                victims.push((va, frame));
            }
        }
        for &c in &second {
            if victims.len() == want {
                break;
            }
            vm.stats.scanned += 1;
            victims.push(c);
        }
        if let Some(&(va, _)) = victims.last() {
            self.clock_hand = va.as_u64() + PAGE_SIZE;
        }
        victims
    }

    /// The policy's choice: every Accessed bit of the space's private pages
    /// is harvested (in address order) and reported, then the policy
    /// evicts. A page it names that cannot go (shared by a fork since) is
    /// left resident and untracked until its next fault.
    fn victims_by_policy(
        &mut self,
        vm: &mut Vm,
        want: usize,
        flush: &mut Flush,
    ) -> Vec<(VirtAddr, PhysFrame)> {
        let mut resident: Vec<(VirtAddr, PhysFrame)> = self.candidates(vm);
        resident.sort_unstable_by_key(|&(va, _)| va);
        let mut policy = self.policy.take().expect("checked by the caller");
        for &(va, _) in &resident {
            vm.stats.scanned += 1;
            if self.mapper.clear_accessed(va) {
                flush.add(va.as_u64());
                policy.referenced(va.as_u64() >> 12);
            }
        }
        let mut victims = Vec::new();
        while victims.len() < want {
            let Some(id) = policy.evict() else { break };
            let va = VirtAddr::new(id << 12);
            if let Ok(i) = resident.binary_search_by_key(&va, |&(v, _)| v) {
                victims.push(resident[i]);
            }
        }
        self.policy = Some(policy);
        victims
    }

    /// Private resident anonymous pages, from the CLOCK hand on, wrapping.
    fn candidates(&self, vm: &Vm) -> Vec<(VirtAddr, PhysFrame)> {
        let (lo, hi) = self.areas.bounds();
        let hand = self.clock_hand.clamp(lo, hi);
        let mut out = Vec::new();
        for (a, b) in [(hand, hi), (lo, hand)] {
            self.for_each_anonymous_leaf(a, b, |leaf| {
                let frame = PhysFrame::containing_address(leaf.frame);
                if frame != vm.zero_frame() && vm.share_count(frame) == 1 {
                    out.push((leaf.page, frame));
                }
            });
        }
        out
    }

    /// Reads a swapped-out page back (and, after a sequential refault, the
    /// pages whose entries name the next slots, in the same request).
    pub(crate) fn swap_in<A: FrameSource + ?Sized>(
        &mut self,
        vm: &mut Vm,
        page: Page<Size4KiB>,
        entry: u64,
        prot: Prot,
        frames: &mut A,
    ) -> Result<Resolved, FaultReason> {
        let bad = crate::paging::PagingError::NotMapped {
            addr: page.start_address(),
        };
        let (Some(slot), true) = (slot_of(entry), vm.swap.is_some()) else {
            return Err(FaultReason::Paging(bad));
        };
        let mut flush = Flush::none();
        let first = self.new_frame(vm, frames, &mut flush)?;
        let va = page.start_address().as_u64();
        let mut run = alloc::vec![(page, first)];
        let area_end = self.areas.find(va).map_or(va + PAGE_SIZE, |a| a.end);
        if self.last_swap_in + PAGE_SIZE == va {
            for k in 1..vm.readahead() {
                let next = va + k * PAGE_SIZE;
                let ahead = VirtAddr::new(next);
                if next >= area_end || self.mapper.soft_entry(ahead) != Some(swap_entry(slot + k)) {
                    break;
                }
                let Some(f) = vm.alloc_frame(frames) else {
                    break;
                };
                run.push((Page::containing_address(ahead), f));
            }
        }
        let mut bufs: Vec<&mut [u8; PAGE_BYTES]> = run
            .iter()
            // SAFETY: frames just allocated, distinct, used by nothing else yet.
            .map(|&(_, f)| unsafe { &mut *page_ptr(self.mapper.phys_mem(), f) })
            .collect();
        let swap = vm.swap.as_mut().expect("checked above");
        if let Err(e) = swap.device.read(slot, &mut bufs) {
            drop(bufs);
            for &(_, f) in &run {
                vm.release_frame(f, frames);
            }
            return Err(FaultReason::SwapIo(e));
        }
        drop(bufs);
        let mut mapped = 0;
        for (i, &(p, f)) in run.iter().enumerate() {
            match self.mapper.map(p, f, prot.map_flags(true), frames) {
                Ok(fl) => {
                    flush.merge(fl);
                    // The entry's reference to the slot moves to the cache.
                    let swap = vm.swap.as_mut().expect("checked above");
                    swap.cache(f.start_address().as_u64() / PAGE_SIZE, slot + i as u64);
                    self.track(p);
                    mapped += 1;
                }
                Err(e) => {
                    vm.release_frame(f, frames);
                    if i == 0 {
                        return Err(FaultReason::Paging(e));
                    }
                }
            }
        }
        self.last_swap_in = run[mapped - 1].0.start_address().as_u64();
        vm.stats.major_faults += 1;
        vm.stats.refaults += 1;
        vm.stats.swap_ins += mapped as u64;
        vm.stats.readahead += mapped as u64 - 1;
        Ok(Resolved {
            outcome: FaultOutcome::SwappedIn,
            flush,
        })
    }
}

/// The page in `frame`, through `phys`. Dereferencing it needs the frame
/// to come from the frame source behind `phys` and nothing else to access it.
fn page_ptr<P: PhysMem>(phys: &P, frame: PhysFrame) -> *mut [u8; PAGE_BYTES] {
    phys.table_ptr(frame).as_ptr().cast()
}

/// Whether `frame` holds only zeros.
fn is_zero<P: PhysMem>(phys: &P, frame: PhysFrame) -> bool {
    let p = phys.table_ptr(frame).as_ptr().cast::<[u64; 512]>();
    // SAFETY: a frame of the frame source, readable for 4096 bytes through
    // `PhysMem`; the space is not running while it reclaims.
    unsafe { (*p).iter().all(|&w| w == 0) }
}
