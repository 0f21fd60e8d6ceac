//! Reclaim over every address space: one replacement policy sees the
//! private anonymous pages of all spaces that joined it, and the cached
//! pages of memory objects they map (once each, however many spaces map
//! them: under the id `0xffff`), and picks the coldest anywhere, run by
//! the kernel's reclaim worker between free-frame watermarks. An object's
//! page it picks leaves every space of the table at once; a clean one is
//! dropped, a dirty one written back through its pager.
//!
//! Reclaiming only the faulting space (what [`VmSpace::reclaim`] does) is
//! local replacement: an active process evicts its own hot pages while
//! idle ones keep theirs. Here a space [`join`](VmSpace::join_global)s
//! with an id; its pages enter the [`Vm`]'s policy as
//! [`global_id`]`(id, page)`, the identity the simulator's
//! [`replay_global`](super::replace::multi::replay_global) uses, so the
//! kernel and the simulator decide alike. The kernel hands reclaim its spaces through a [`SpaceTable`],
//! holding each one for reading (its address-space lock) while reclaim
//! looks at it.
//!
//! Watermarks, as Linux's `min`, `low` and `high` (in free frames under
//! the frame limit): when fewer than `low` are free, [`Vm::needs_reclaim`]
//! says so and the kernel runs [`Vm::reclaim_step`] on a CPU of its choice
//! until `high` are free. Faults that the kernel hands its table too
//! ([`VmSpace::handle_fault_global`]) reclaim directly over every space
//! only when fewer than `min` are free (the worker fell behind) or none is;
//! a plain [`VmSpace::handle_fault`] finding no frame reclaims its own
//! space.
//!
//! A frame shared after a fork is mapped at the same address in every
//! sharer (a fork copies addresses), so its reverse map costs nothing per
//! page: the worker looks for it in each space of the table at that
//! address (O(spaces) for a shared victim, nothing for a private one),
//! takes every mapping out, writes the frame once and leaves each sharer
//! a reference to the one slot. A sharer outside the table (or holding
//! the page locked) keeps the frame where it is.

use super::object::{object_page_id, OBJECT_PAGES};
use super::objects::cached_page;
use super::reclaim::Batch;
use super::replace::multi::global_id;
use super::replace::{PageId, ReplacementPolicy};
use super::stats::count;
use super::swap::{BUSY, CLUSTER, WRITE_OUT};
pub use super::table::SpaceTable;
use super::{FaultReason, Vm, VmSpace};
use crate::paging::{Flush, FrameSource, PhysMem};
use crate::smp::Tlb;
use x86_64::structures::paging::PhysFrame;
use x86_64::VirtAddr;

/// The `Vm`'s global policy, behind its lock.
#[derive(Default)]
pub(super) struct GlobalPolicy(
    spin::Mutex<Option<alloc::boxed::Box<dyn ReplacementPolicy + Send>>>,
);

impl core::ops::Deref for GlobalPolicy {
    type Target = spin::Mutex<Option<alloc::boxed::Box<dyn ReplacementPolicy + Send>>>;
    fn deref(&self) -> &Self::Target {
        &self.0
    }
}

impl core::ops::DerefMut for GlobalPolicy {
    fn deref_mut(&mut self) -> &mut Self::Target {
        &mut self.0
    }
}

impl core::fmt::Debug for GlobalPolicy {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        let name = self.0.try_lock().map(|p| p.as_ref().map(|p| p.name()));
        f.debug_tuple("GlobalPolicy").field(&name).finish()
    }
}

/// The policy's identities of object pages an eviction found held by a
/// fault (mapped in no space of the table, yet counted), up to a cluster.
#[derive(Default)]
pub(super) struct Held {
    ids: [u64; CLUSTER],
    n: usize,
}

impl Held {
    pub(super) fn add(&mut self, id: u64) {
        if self.n < CLUSTER {
            self.ids[self.n] = id;
            self.n += 1;
        }
    }

    fn contains(&self, id: u64) -> bool {
        self.ids[..self.n].contains(&id)
    }
}

/// Free-frame watermarks under the frame limit ([`Vm::set_watermarks`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Watermarks {
    /// A reserve: below it, faults given the table of spaces
    /// ([`VmSpace::handle_fault_global`]) reclaim directly before they
    /// take a frame.
    pub min: u64,
    /// Below this, the reclaim worker should run.
    pub low: u64,
    /// The worker stops once this many are free.
    pub high: u64,
}

impl Watermarks {
    /// Linux's defaults in proportion: `min` 1/64 of the limit (at least
    /// 1), `low` 5/4 of `min`, `high` 3/2 of `min` (at least one cluster
    /// above `min` where the limit allows).
    pub fn for_limit(limit: u64) -> Self {
        let min = (limit / 64).max(1);
        let low = (min * 5 / 4).max(min + 1);
        let high = (min * 3 / 2)
            .max(low + 1)
            .max((min + CLUSTER as u64).min(limit / 4));
        Self { min, low, high }
    }
}

impl Vm {
    /// Makes `policy` (its capacity should be the frame limit) the one
    /// policy over the pages of every space that joins
    /// ([`VmSpace::join_global`]).
    pub fn set_global_policy(&mut self, policy: alloc::boxed::Box<dyn ReplacementPolicy + Send>) {
        *self.global.get_mut() = Some(policy);
        self.has_global = true;
    }

    /// Takes the global policy away (spaces that joined fall back to no
    /// policy: reclaim of the faulting space runs its CLOCK hand).
    pub fn take_global_policy(
        &mut self,
    ) -> Option<alloc::boxed::Box<dyn ReplacementPolicy + Send>> {
        self.has_global = false;
        self.global.get_mut().take()
    }

    /// Sets the watermarks (`None`: [`Watermarks::for_limit`] of the frame
    /// limit). They apply while a frame limit is set.
    pub fn set_watermarks(&mut self, marks: Option<Watermarks>) {
        self.marks = marks;
    }

    /// The watermarks in force, with a frame limit set.
    pub fn watermarks(&self) -> Option<Watermarks> {
        let limit = self.frame_limit()?;
        Some(self.marks.unwrap_or_else(|| Watermarks::for_limit(limit)))
    }

    /// Frames free under the limit (`None` without one).
    pub fn free_frames(&self) -> Option<u64> {
        Some(self.frame_limit()?.saturating_sub(self.resident()))
    }

    /// Whether fewer than `min` frames are free: faults given the table of
    /// spaces reclaim directly ([`VmSpace::handle_fault_global`]).
    pub fn below_min(&self) -> bool {
        match (self.free_frames(), self.watermarks()) {
            (Some(free), Some(m)) => free < m.min,
            _ => false,
        }
    }

    /// Whether a global policy is set ([`set_global_policy`](Self::set_global_policy)).
    pub fn has_global_policy(&self) -> bool {
        self.has_global
    }

    /// Whether fewer than `low` frames are free: the worker should run.
    pub fn needs_reclaim(&self) -> bool {
        match (self.free_frames(), self.watermarks()) {
            (Some(free), Some(m)) => free < m.low,
            _ => false,
        }
    }

    /// One step of the reclaim worker: unless `high` frames are free, the
    /// global policy harvests the Accessed bits of every space in `spaces`
    /// and evicts up to a cluster of the coldest pages anywhere (written
    /// to swap, or dropped when all zero). Returns the pages freed; the
    /// kernel calls it again while [`needs_reclaim`](Self::needs_reclaim)
    /// or until it returns 0.
    pub fn reclaim_step<P: PhysMem, T: SpaceTable<P> + ?Sized, A: FrameSource + ?Sized>(
        &self,
        spaces: &T,
        frames: &mut A,
        tlb: &mut Tlb<'_>,
    ) -> Result<usize, FaultReason> {
        let want = match (self.free_frames(), self.watermarks()) {
            (Some(free), Some(m)) if free < m.high => (m.high - free).min(CLUSTER as u64) as usize,
            (Some(_), Some(_)) => return Ok(0),
            _ => CLUSTER,
        };
        self.reclaim_global(spaces, want, frames, tlb)
    }

    /// Frees up to `want` (at most a cluster) of the coldest pages of every
    /// space in `spaces`, as the global policy ranks them.
    pub fn reclaim_global<P: PhysMem, T: SpaceTable<P> + ?Sized, A: FrameSource + ?Sized>(
        &self,
        spaces: &T,
        want: usize,
        frames: &mut A,
        tlb: &mut Tlb<'_>,
    ) -> Result<usize, FaultReason> {
        // Without a swap device only object pages can go (dropped clean,
        // written back through their pagers).
        let swap = self.swap.as_ref();
        if !self.has_global {
            return if swap.is_some() {
                Ok(0)
            } else {
                Err(FaultReason::NoSwap)
            };
        }
        let want = want.clamp(1, CLUSTER);
        spaces.for_each(&mut |s| {
            if swap.is_some() {
                // Split pages go to swap; without it splitting frees nothing.
                s.age_huge(self, frames, tlb);
            }
            s.harvest_global(self, tlb);
        });
        let (mut freed, mut error) = (0, None);
        // Object pages a fault holds (while it copies one for a private
        // mapping): a second look passes them over.
        let mut held = Held::default();
        for _ in 0..2 {
            let mut chosen = [(0u32, 0u64); CLUSTER];
            let mut n = 0;
            {
                let mut policy = self.global.lock();
                let Some(p) = policy.as_mut() else {
                    return Ok(0);
                };
                let mut tries = p.resident_len();
                // Pages passed over, at most a few clusters (the policy
                // lock is held).
                let mut passed = 0;
                while n < want && tries > 0 {
                    tries -= 1;
                    let Some(id) = p.evict() else { break };
                    let (space, page) = ((id >> 48) as u32, id & ((1 << 48) - 1));
                    if (swap.is_none() && space != OBJECT_PAGES) || held.contains(id) {
                        // Nowhere to put an anonymous page, or a page a
                        // fault holds: it stays, and the policy looks further.
                        let _ = p.insert(id);
                        passed += 1;
                        if passed == 4 * CLUSTER {
                            break;
                        }
                        continue;
                    }
                    chosen[n] = (space, page);
                    n += 1;
                }
            }
            // Out of the policy, not yet freed: a fault that finds no frame
            // meanwhile waits for them.
            let _transit = self.transit(tlb.cpu(), n as u64);
            let chosen = &mut chosen[..n];
            chosen.sort_unstable();
            let mut shared = Batch::new();
            let mut rest = &*chosen;
            while let Some(&(id, _)) = rest.first() {
                let k = rest.iter().take_while(|c| c.0 == id).count();
                let (group, tail) = rest.split_at(k);
                if id == OBJECT_PAGES {
                    freed += self.evict_object_pages(spaces, group, &mut held, frames, tlb);
                    rest = tail;
                    continue;
                }
                let Some(swap) = swap else {
                    debug_assert!(false, "without swap only object pages are chosen");
                    rest = tail;
                    continue;
                };
                let found = spaces.with(id, &mut |s| {
                    let (f, e) = s.evict_listed(self, swap, group, &mut shared, frames, tlb);
                    freed += f;
                    error = error.or(e);
                });
                if !found {
                    // Not in this table (held by the kernel now): offered again.
                    for &(id, page) in group {
                        self.track_global(id, page);
                    }
                }
                rest = tail;
            }
            for &(va, frame, id) in shared.as_slice() {
                let Some(swap) = swap else { break }; // (empty without one)
                let kept = match self.evict_shared(spaces, swap, va, frame, frames, tlb) {
                    Ok(freed_it) => {
                        freed += usize::from(freed_it);
                        !freed_it
                    }
                    Err(e) => {
                        error = error.or(Some(e));
                        true
                    }
                };
                if kept {
                    // A sharer outside the table, a lock or a failed write: the
                    // page stays, and the policy offers it again later.
                    self.track_global(id as u32, va.as_u64() >> 12);
                }
            }
            if freed > 0 || error.is_some() || n == 0 {
                break;
            }
        }
        match error {
            Some(e) if freed == 0 => Err(e),
            _ if freed == 0 && swap.is_none() => Err(FaultReason::NoSwap),
            _ => Ok(freed),
        }
    }

    /// Evicts `frame`, mapped at `va` in several spaces since a fork, from
    /// all of them at once: each mapping is exchanged for a busy mark and
    /// invalidated on its space's CPUs (so nobody writes the frame any
    /// more), the frame is written to one slot, and every mark becomes that
    /// slot, one reference each. When a mapping lies outside `spaces`, in
    /// a locked area, or the write fails, the marks are put back and the
    /// frame stays. Returns whether the frame was freed.
    fn evict_shared<P: PhysMem, T: SpaceTable<P> + ?Sized, A: FrameSource + ?Sized>(
        &self,
        spaces: &T,
        swap: &super::swap::Swap,
        va: VirtAddr,
        frame: PhysFrame,
        frames: &mut A,
        tlb: &mut Tlb<'_>,
    ) -> Result<bool, FaultReason> {
        let _transit = self.transit(tlb.cpu(), 1);
        let mark = frame.start_address().as_u64() | BUSY;
        let mut found = 0u32;
        let mut page = core::ptr::null_mut();
        spaces.for_each(&mut |s| {
            if s.mark_shared(self, va, frame, mark, tlb) {
                found += 1;
                page = super::contents::page_ptr(&s.phys, frame);
            }
        });
        if found == 0 {
            return Ok(false);
        }
        // Every mapping is marked, or the frame stays.
        let complete = self.share_count(frame) == found;
        let slot = if complete {
            self.write_frame(swap, page)
        } else {
            Ok(None)
        };
        let entry = match slot {
            Ok(Some(slot)) => super::swap::swap_entry(slot),
            Ok(None) | Err(_) => {
                spaces.for_each(&mut |s| {
                    s.unmark_shared(va, mark, None);
                });
                return slot.map(|_| false);
            }
        };
        let mut placed = 0;
        spaces.for_each(&mut |s| {
            if s.unmark_shared(va, mark, Some(entry)) {
                if placed > 0 {
                    self.share_swap(entry);
                }
                placed += 1;
            }
        });
        debug_assert_eq!(placed, found, "marks placed and found");
        let mut last = false;
        for _ in 0..found {
            last = self.unshare(frame);
        }
        debug_assert!(last, "every mapping of the frame was replaced");
        self.release_frame(tlb.cpu(), frame, frames);
        count(&self.stats.at(tlb.cpu()).swap_outs, 1);
        count(&self.stats.at(tlb.cpu()).reclaimed, 1);
        Ok(true)
    }

    /// Writes the frame at `page` to a new slot. (A copy the swap cache
    /// holds goes when the frame is released.)
    fn write_frame(
        &self,
        swap: &super::swap::Swap,
        page: *mut [u8; super::swap::PAGE_BYTES],
    ) -> Result<Option<u64>, FaultReason> {
        let Some((slot, _)) = swap.take(1) else {
            return Err(FaultReason::OutOfSwap);
        };
        // SAFETY: `page` is the frame through a space's `PhysMem`; every
        // mapping of the frame is a busy mark, invalidated on every CPU that
        // could reach it: nothing writes the frame now.
        let page = unsafe { &*page };
        if let Err(e) = swap.device.write(slot, &[page]) {
            swap.drop_ref(slot);
            return Err(FaultReason::SwapIo(e));
        }
        Ok(Some(slot))
    }

    /// Tells the global policy that `page` of the space `id` holds a frame
    /// of its own.
    pub(super) fn track_global(&self, id: u32, page: PageId) {
        if !self.has_global {
            return;
        }
        if let Some(policy) = self.global.lock().as_mut() {
            let g = global_id(id, page);
            if !policy.is_resident(g) {
                while policy.resident_len() >= policy.capacity() && policy.evict().is_some() {}
                let _ = policy.insert(g);
            }
        }
    }

    /// Forgets pages of the space `id` (unmapped, dropped, locked, or
    /// reclaimed by the space itself), resident or in history.
    pub(super) fn forget_global(&self, id: u32, pages: impl IntoIterator<Item = PageId>) {
        if !self.has_global {
            return;
        }
        if let Some(policy) = self.global.lock().as_mut() {
            for page in pages {
                policy.remove(global_id(id, page));
            }
        }
    }
}

impl<P: PhysMem> VmSpace<P> {
    /// Puts this space's private pages under the [`Vm`]'s global policy as
    /// `id` (unique among the spaces that join) instead of a policy of its
    /// own; reclaim over every space ([`Vm::reclaim_step`]) may then take
    /// them. As with [`set_policy`](Self::set_policy), pages already
    /// resident are not known to the policy: join on a new space (a fork's
    /// child holds no private page yet). Ids are 16 bits: the policy's page
    /// identity keeps the id above a 48-bit page number; the last one,
    /// `0xffff`, names the pages of memory objects and is refused
    /// ([`VmError::GlobalId`](super::VmError::GlobalId)).
    pub fn join_global(&mut self, id: u16) -> Result<(), super::VmError> {
        if u32::from(id) == OBJECT_PAGES {
            return Err(super::VmError::GlobalId { id });
        }
        self.global = u32::from(id);
        Ok(())
    }

    /// The id this space joined global reclaim with.
    pub fn global_id(&self) -> Option<u32> {
        (self.global != u32::MAX).then_some(self.global)
    }

    /// Reports every Accessed bit set in this space's pageable areas to the
    /// global policy, clearing them. Page tables no CPU walked since the
    /// last look are skipped whole; the others have their directory
    /// entries cleared and invalidated on the space's CPUs before their
    /// leaves are read (a CPU walking through a cached directory entry
    /// would not set it again), then the leaves cleared are invalidated.
    /// One walk covers the space's whole range, so pageable areas sharing a
    /// table are read together; locks are taken per table, the policy's
    /// for a few dozen reports at a time.
    fn harvest_global(&self, vm: &Vm, tlb: &mut Tlb<'_>) {
        let Some(id) = self.global_id() else { return };
        if !vm.has_global {
            return;
        }
        const TABLES: usize = 16;
        let zero = vm.zero_frame();
        // The policy's identity of the page at `va`: an object's cached
        // page (a shared area's, or a private one's not copied yet) goes
        // under the object, a private page of a pageable area under this
        // space.
        let identity = |va: VirtAddr, frame: PhysFrame| {
            let area = self.areas.find(va.as_u64())?;
            if let Some((object, index)) = cached_page(vm, area, va.as_u64(), frame) {
                return Some(global_id(OBJECT_PAGES, object_page_id(object.index, index)));
            }
            (frame != zero && area.pageable()).then(|| global_id(id, va.as_u64() >> 12))
        };
        let (lo, hi) = self.areas.bounds();
        let (mut at, mut scanned, mut skipped) = (lo, 0, 0);
        while at < hi {
            let mut young = [0u64; TABLES];
            let (n, next, k) = self.mapper.lock().young_tables(at, hi, &mut young);
            skipped += k;
            if n > 0 {
                let mut flush = Flush::none();
                for &t in &young[..n] {
                    flush.add(VirtAddr::new_truncate(t).as_u64());
                }
                self.invalidate(flush, vm, tlb);
                let mut cleared = Flush::none();
                for &t in &young[..n] {
                    let mut ids = [0u64; 64];
                    let mut k = 0;
                    let feed = |ids: &[u64]| {
                        if let Some(p) = vm.global.lock().as_mut() {
                            for &g in ids {
                                p.referenced(g);
                            }
                        }
                    };
                    let m = self.mapper.lock();
                    scanned += m.harvest_leaves(t, WRITE_OUT, |va, frame| {
                        cleared.add(va.as_u64());
                        if let Some(g) = identity(va, frame) {
                            ids[k] = g;
                            k += 1;
                            if k == ids.len() {
                                feed(&ids);
                                k = 0;
                            }
                        }
                    });
                    drop(m);
                    feed(&ids[..k]);
                }
                self.invalidate(cleared, vm, tlb);
            }
            if next <= at {
                break;
            }
            at = next;
        }
        count(&vm.stats.at(tlb.cpu()).scanned, scanned as u64);
        count(&vm.stats.at(tlb.cpu()).tables_skipped, skipped as u64);
    }

    /// Exchanges the mapping of `frame` at `va` (if this space has one, in
    /// a pageable area) for `mark` with the old entry's flags kept in its
    /// high bits (ignored in a non-present entry), and invalidates it on
    /// the space's CPUs; whether it did.
    fn mark_shared(
        &self,
        vm: &Vm,
        va: VirtAddr,
        frame: PhysFrame,
        mark: u64,
        tlb: &mut Tlb<'_>,
    ) -> bool {
        if !self
            .areas
            .find(va.as_u64())
            .is_some_and(super::Area::pageable)
        {
            return false;
        }
        {
            let mut m = self.mapper.lock();
            let Ok(t) = m.translate(va) else { return false };
            // A page another reclaim is writing out is its to settle (the
            // frame became private since this one listed it as shared).
            if PhysFrame::containing_address(t.frame) != frame
                || t.size != crate::paging::LeafSize::Size4KiB
                || super::reclaim::under_write_out(&m, va)
            {
                return false;
            }
            // The entry taken out has every Accessed and Dirty bit; once it
            // is a mark the CPU sets none, so the flags can go in after.
            let old = m
                .exchange_pte(va, mark)
                .expect("a mapped page has its page table");
            let stashed = mark | ((old >> 1) & 0x7ff) << 52 | (old & (1 << 63));
            m.exchange_pte(va, stashed).expect("the same page table");
        }
        let mut flush = Flush::none();
        flush.add(va.as_u64());
        self.invalidate(flush, vm, tlb);
        true
    }

    /// Replaces `mark` at `va` with `entry`, or with the entry it stood for
    /// (`None`); whether the mark was there.
    fn unmark_shared(&self, va: VirtAddr, mark: u64, entry: Option<u64>) -> bool {
        const STASH: u64 = 0xfff << 52;
        let mut m = self.mapper.lock();
        let Some(e) = m.soft_entry(va).filter(|e| e & !STASH == mark) else {
            return false;
        };
        let old = (mark & !BUSY) | 1 | ((e >> 52) & 0x7ff) << 1 | (e & (1 << 63));
        m.exchange_pte(va, entry.unwrap_or(old))
            .expect("a marked page has its page table");
        true
    }

    /// Evicts the pages `chosen` of this space (page numbers, with the
    /// space's id) that can go now: private, resident, not locked; frames
    /// shared with other spaces go to `shared`, to be taken from every
    /// sharer at once. The others are left as they are (the policy learns
    /// them again when they become private). Returns the pages freed and,
    /// if some could not be written, why.
    fn evict_listed<A: FrameSource + ?Sized>(
        &self,
        vm: &Vm,
        swap: &super::swap::Swap,
        chosen: &[(u32, u64)],
        shared: &mut Batch,
        frames: &mut A,
        tlb: &mut Tlb<'_>,
    ) -> (usize, Option<FaultReason>) {
        let zero = vm.zero_frame();
        let mut victims = Batch::new();
        let mut flush = Flush::none();
        let id = chosen.first().map_or(0, |c| c.0);
        {
            let mut m = self.mapper.lock();
            for &(_, page) in chosen {
                let va = VirtAddr::new(page << 12);
                if !self
                    .areas
                    .find(va.as_u64())
                    .is_some_and(super::Area::pageable)
                {
                    continue;
                }
                let Ok(t) = m.translate(va) else { continue };
                let frame = PhysFrame::containing_address(t.frame);
                if frame == zero || t.size != crate::paging::LeafSize::Size4KiB {
                    continue;
                }
                let area = self.areas.find(va.as_u64());
                if area.is_some_and(|a| cached_page(vm, a, va.as_u64(), frame).is_some()) {
                    continue; // an object's cached page: the object's to evict
                }
                if super::reclaim::under_write_out(&m, va) {
                    continue; // another reclaim's: it tracks the page again
                }
                if vm.share_count(frame) != 1 {
                    shared.push(va, frame, u64::from(id));
                    continue;
                }
                let old = m
                    .exchange_pte(va, BUSY)
                    .expect("a resident page has its page table");
                victims.push(va, frame, old);
                flush.add(va.as_u64());
            }
        }
        if victims.len == 0 {
            return (0, None);
        }
        self.write_out(swap, &victims, flush, vm, frames, tlb)
    }
}
