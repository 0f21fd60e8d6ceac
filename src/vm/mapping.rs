//! Areas of a space that map memory objects: `mmap` of an object, the
//! fault that maps (shared) or copies (private) an object's page, `msync`,
//! the pages an unmap takes from the cache's counts, and their eviction
//! (this space's CLOCK, or the global policy over every space).

use super::contents::page_ptr;
use super::object::{object_page_id, ObjectId, Pin, Source, Unmapped, VmObject, OBJECT_PAGES};
use super::objects::cached_page;
use super::reclaim::{Batch, Shortage};
use super::replace::multi::global_id;
use super::stats::count;
use super::table::SpaceTable;
use super::{Area, AreaKind, FaultOutcome, FaultReason, Prot, Vm, VmError, VmSpace};
use crate::paging::{Flush, FrameSource, PageTables, PhysMem, ADDR_MASK, DIRTY};
use crate::smp::Tlb;
use crate::PAGE_SIZE as PAGE;
use alloc::vec::Vec;
use core::sync::atomic::Ordering;
use x86_64::structures::paging::{Page, PhysFrame, Size4KiB};
use x86_64::VirtAddr;

impl<P: PhysMem> VmSpace<P> {
    /// Maps `len` bytes of the object `object` from byte `offset` on
    /// (`mmap` of a file or a shared anonymous object), at `hint` or where
    /// the layout places it, as [`map_anonymous`](Self::map_anonymous):
    /// shared (`MAP_SHARED`: writes reach the object and every space
    /// mapping it; a fork's child shares it) or private (`MAP_PRIVATE`:
    /// the cached pages read-only, each copied on its first write, never
    /// written back). The range
    /// must lie inside the object. Takes no frame until touched. Returns the
    /// address.
    #[allow(clippy::too_many_arguments)]
    pub fn map_object(
        &mut self,
        vm: &Vm,
        hint: Option<u64>,
        len: u64,
        prot: Prot,
        object: ObjectId,
        offset: u64,
        shared: bool,
    ) -> Result<u64, VmError> {
        // Counted under the registry's lock, where a close looks: from
        // here the object cannot be closed under the new area.
        let o = {
            let objects = vm.objects.read();
            let o = objects.get(object).ok_or(VmError::NoObject { object })?;
            let size = o.pages() * PAGE;
            if !offset.is_multiple_of(PAGE) || offset.checked_add(len).is_none_or(|e| e > size) {
                return Err(VmError::BeyondObject { offset, len, size });
            }
            o.area_pages.fetch_add(len / PAGE, Ordering::AcqRel);
            o.clone()
        };
        let offset = offset / PAGE;
        let kind = if shared {
            AreaKind::Shared { object, offset }
        } else {
            AreaKind::Private { object, offset }
        };
        self.place_area(hint, len, prot, kind).inspect_err(|_| {
            o.area_pages.fetch_sub(len / PAGE, Ordering::AcqRel);
        })
    }

    /// Counts the pages of `areas` (removed from this space, or copied
    /// into a fork's child: `added`) in their objects' area counts.
    pub(super) fn count_object_areas<'a>(
        vm: &Vm,
        areas: impl IntoIterator<Item = &'a Area>,
        added: bool,
    ) {
        for area in areas {
            if let Some((id, _)) = area.object_page(area.start) {
                if let Some(o) = vm.object(id) {
                    if added {
                        o.area_pages.fetch_add(area.pages(), Ordering::AcqRel);
                    } else {
                        o.area_pages.fetch_sub(area.pages(), Ordering::AcqRel);
                    }
                }
            }
        }
    }

    /// Resolves a fault on a page of `area`, an object's, with no entry:
    /// maps the object's cached page (reading it in first), writable as the
    /// area allows for a shared mapping, read-only for a private one; a
    /// write to a private one copies it into a frame of the space's own.
    pub(super) fn fault_object<A: FrameSource + ?Sized>(
        &self,
        (vm, spaces): (&Vm, Option<&dyn SpaceTable<P>>),
        (page, write): (Page<Size4KiB>, bool),
        area: &Area,
        frames: &mut A,
        tlb: &mut Tlb<'_>,
    ) -> Result<FaultOutcome, FaultReason> {
        let va = page.start_address();
        let Some((id, index)) = area.object_page(va.as_u64()) else {
            return Err(FaultReason::NoArea);
        };
        // An object is not closed while an area maps it.
        let object = vm.object(id).ok_or(FaultReason::NoArea)?;
        let cpu = tlb.cpu();
        let Some(frame) = self.pin_object_page((vm, spaces), (id, &object), index, frames, tlb)?
        else {
            return Ok(FaultOutcome::InTransit);
        };
        let private = matches!(area.kind, AreaKind::Private { .. });
        if private && write {
            let copied = self.fill((vm, spaces), page, area.prot, Some(frame), 0, frames, tlb);
            let settle = object.unpin(index, 1, false, false);
            // Freed or kept; a page left dirty by a refused write-back is
            // written again here, and a refusal stays with the page.
            let _ = vm.settle_object((id, &object), index, settle, &self.phys, cpu, frames);
            return match copied {
                Ok(Some(_)) => {
                    count(&vm.stats.at(cpu).object_copies, 1);
                    Ok(FaultOutcome::ObjectCopied)
                }
                Ok(None) => Ok(FaultOutcome::InTransit),
                Err(e) => Err(e),
            };
        }
        let mapped = {
            let mut m = self.mapper.lock();
            if m.leaf_entry(va).is_some() || m.soft_entry(va).is_some() {
                Ok(false) // another CPU's fault mapped it first
            } else {
                // Shared: as the area allows; private: read-only, the first
                // write copies it.
                // SAFETY: the object's cached frame, counted for this mapping
                // (so it stays cached while mapped): user memory, no Rust
                // object's; over an empty entry, which no CPU caches.
                unsafe { m.map(page, frame, area.prot.map_flags(!private), frames) }.map(|f| {
                    f.ignore();
                    true
                })
            }
        };
        match mapped {
            Ok(true) => {
                count(&vm.stats.at(cpu).object_maps, 1);
                Ok(FaultOutcome::ObjectMapped)
            }
            lost => {
                let settle = object.unpin(index, 1, false, false);
                let _ = vm.settle_object((id, &object), index, settle, &self.phys, cpu, frames);
                match lost {
                    Err(e) => Err(e.into()),
                    _ => Ok(FaultOutcome::InTransit),
                }
            }
        }
    }

    /// Page `index` of `object`, cached, counted for one more mapping:
    /// read in first if absent. `None` when another CPU is reading or
    /// writing it (retry the access).
    fn pin_object_page<A: FrameSource + ?Sized>(
        &self,
        (vm, spaces): (&Vm, Option<&dyn SpaceTable<P>>),
        (id, object): (ObjectId, &VmObject),
        index: u64,
        frames: &mut A,
        tlb: &mut Tlb<'_>,
    ) -> Result<Option<PhysFrame>, FaultReason> {
        match object.pin(index) {
            Pin::Frame(f) => return Ok(Some(f)),
            Pin::Wait => return Ok(None),
            Pin::Absent => {}
        }
        let cpu = tlb.cpu();
        let frame = match self.new_frame(vm, spaces, frames, tlb) {
            Ok(f) => f,
            Err(Shortage::Raced) => return Ok(None),
            // Another CPU may have read the page in meanwhile (with the
            // frame this fault looked for).
            Err(Shortage::Fault(e)) => {
                return match object.pin(index) {
                    Pin::Frame(f) => Ok(Some(f)),
                    Pin::Wait => Ok(None),
                    Pin::Absent => Err(e),
                }
            }
        };
        let Some(source) = object.begin_read(index, frame) else {
            vm.release_frame(cpu, frame, frames); // cached by another fault first
            return Ok(None);
        };
        let read = {
            let _transit = vm.transit(cpu, 1);
            // SAFETY: a frame just allocated and marked as being read in:
            // nothing else reaches it.
            let page = unsafe { &mut *page_ptr(&self.phys, frame) };
            match (source, vm.swap.as_ref()) {
                (Source::Pager, _) => object.read(index, page).map_err(FaultReason::Pager),
                (Source::Swap(slot), Some(swap)) => swap
                    .device
                    .read(slot, &mut [page])
                    .map_err(FaultReason::SwapIo),
                // A slot of a device detached since: not possible while a
                // slot is in use (detach is refused).
                (Source::Swap(_), None) => Err(FaultReason::NoSwap),
            }
        };
        let slot = object.end_read(index, read.is_ok());
        match read {
            Ok(()) => {
                if let (Some(slot), Some(swap)) = (slot, vm.swap.as_ref()) {
                    swap.drop_ref(slot); // the page is resident again, maybe to be written
                    count(&vm.stats.at(cpu).swap_ins, 1);
                    count(&vm.stats.at(cpu).major_faults, 1);
                } else {
                    count(&vm.stats.at(cpu).object_reads, 1);
                }
                if object.evictable(vm.swap.is_some()) {
                    vm.track_global(OBJECT_PAGES, object_page_id(id.index, index));
                }
                Ok(Some(frame))
            }
            Err(e) => {
                vm.release_frame(cpu, frame, frames);
                if let FaultReason::Pager(_) = e {
                    count(&vm.stats.at(cpu).pager_errors, 1);
                }
                Err(e)
            }
        }
    }

    /// `msync(MS_SYNC)`: takes the Dirty bits of the shared object pages
    /// this space maps in `[addr, addr + len)` (cleared, then invalidated
    /// on the space's CPUs so the next write sets them again), then writes
    /// back every dirty cached page of the objects' ranges. Private and
    /// anonymous areas need nothing. Returns the pages written; on a pager
    /// error the refused pages stay dirty, the others are written, and the
    /// first error is returned ([`VmError::Pager`]). Writes made through
    /// other spaces' mappings count once their Dirty bits were harvested
    /// (their own `sync`, unmap or reclaim). A page another CPU is writing
    /// back at this moment (its eviction, another sync) is left to that
    /// write: this call does not wait for it, so a write made to the page
    /// after that write began reaches the object at the next sync or
    /// eviction (kmem has no way to sleep on another CPU's I/O).
    pub fn sync<A: FrameSource + ?Sized>(
        &self,
        vm: &Vm,
        addr: u64,
        len: u64,
        frames: &mut A,
        tlb: &mut Tlb<'_>,
    ) -> Result<u64, VmError> {
        let (a, b) = self.range(addr, len)?;
        if !self.areas.covered(a, b) {
            return Err(VmError::Unmapped { addr });
        }
        let shared = || {
            self.areas
                .overlapping(a, b)
                .filter(|x| matches!(x.kind, AreaKind::Shared { .. }))
                .map(|x| (x.start.max(a), x.end.min(b), *x))
        };
        let mut flush = Flush::none();
        {
            let m = self.mapper.lock();
            for (s, e, area) in shared() {
                let AreaKind::Shared { object, .. } = area.kind else {
                    continue;
                };
                let Some(o) = vm.object(object) else { continue };
                m.for_each_leaf_in(VirtAddr::new(s), e - s, |leaf| {
                    if m.clear_dirty(leaf.page) {
                        flush.add(leaf.page.as_u64());
                        // Under the page-table lock: a reclaim unmapping
                        // the page now finds its entry clean, and must find
                        // the object's page dirty.
                        if let Some((_, index)) = area.object_page(leaf.page.as_u64()) {
                            o.mark_dirty(index);
                        }
                    }
                });
            }
        }
        // Writes through entries cached dirty land before this returns.
        self.invalidate(flush, vm, tlb);
        let (mut written, mut error) = (0, None);
        for (s, e, area) in shared() {
            let (Some((id, from)), Some((_, to))) =
                (area.object_page(s), area.object_page(e - PAGE))
            else {
                continue;
            };
            let Some(o) = vm.object(id) else { continue };
            match vm.write_dirty((id, &o), from, to + 1, &self.phys, tlb.cpu(), frames) {
                Ok(n) => written += n,
                Err(e) => error = error.or(Some(e)),
            }
        }
        match error {
            Some(e) => Err(VmError::Pager(e)),
            None => Ok(written),
        }
    }

    /// Takes the shared object pages of `[a, b)` out of the tables (each
    /// entry exchanged for an empty one, its Dirty bit kept in `out`), their
    /// addresses added to `flush`: an unmap's first step. `out` must have
    /// room for every page (see [`object_leaves`](Self::object_leaves)).
    pub(super) fn take_object_pages(
        vm: &Vm,
        areas: &super::areas::AreaSet,
        mapper: &mut PageTables<P>,
        (a, b): (u64, u64),
        flush: &mut Flush,
        out: &mut Vec<Unmapped>,
    ) {
        for area in areas.overlapping(a, b) {
            let (AreaKind::Shared { object, .. } | AreaKind::Private { object, .. }) = area.kind
            else {
                continue;
            };
            let o = vm.object(object);
            let (s, e) = (area.start.max(a), area.end.min(b));
            let mut pages: [u64; 64] = [0; 64];
            let mut at = s;
            while at < e {
                // Leaves in chunks: exchanging needs the tables unborrowed.
                let mut n = 0;
                let mut next = e;
                mapper.for_each_leaf_in(VirtAddr::new(at), e - at, |leaf| {
                    // A private area's own copies are anonymous memory.
                    let page = leaf.page.as_u64();
                    let frame = PhysFrame::containing_address(leaf.frame);
                    if cached_page(vm, area, page, frame).is_none() {
                        return;
                    }
                    if n < pages.len() {
                        pages[n] = page;
                        n += 1;
                    } else if next == e {
                        next = page;
                    }
                });
                for &va in &pages[..n] {
                    let old = mapper
                        .exchange_pte(VirtAddr::new(va), 0)
                        .expect("a mapped page has its page table");
                    flush.add(va);
                    if let Some((id, index)) = area.object_page(va) {
                        if let Some(o) = &o {
                            o.note_dirty(index, old & DIRTY != 0);
                        }
                        out.push((id, index, old & DIRTY != 0));
                    }
                }
                at = next;
            }
        }
    }

    /// How many pages of shared object areas `[a, b)` maps.
    pub(super) fn object_leaves(
        areas: &super::areas::AreaSet,
        mapper: &PageTables<P>,
        a: u64,
        b: u64,
    ) -> usize {
        areas
            .overlapping(a, b)
            .filter(|x| matches!(x.kind, AreaKind::Shared { .. } | AreaKind::Private { .. }))
            .map(|x| {
                let (s, e) = (x.start.max(a), x.end.min(b));
                mapper
                    .for_each_leaf_in(VirtAddr::new(s), e - s, |_| {})
                    .leaves[0]
            })
            .sum()
    }

    /// Uncounts the mappings an unmap removed, once every CPU dropped them:
    /// pages of objects no mapping holds any more leave the cache, written
    /// back first when dirty. A failed write leaves its page dirty in the
    /// cache; the first error is returned after the rest are settled.
    pub(super) fn settle_unmapped<A: FrameSource + ?Sized>(
        &self,
        vm: &Vm,
        pages: &[Unmapped],
        cpu: usize,
        frames: &mut A,
    ) -> Result<(), VmError> {
        let mut error = None;
        for &(id, index, dirty) in pages {
            let Some(o) = vm.object(id) else { continue };
            let settle = o.unpin(index, 1, dirty, false);
            if let Err(e) = vm.settle_object((id, &o), index, settle, &self.phys, cpu, frames) {
                error = error.or(Some(VmError::Pager(e)));
            }
        }
        error.map_or(Ok(()), Err)
    }

    /// Reclaim of this space's shared object pages without the global
    /// policy: CLOCK over their Accessed bits (a first round clears them
    /// and takes the pages found unreferenced, a second the ones it
    /// cleared), up to `want`. Each is unmapped here and invalidated; a
    /// page no other space maps leaves the cache (written back when
    /// dirty). Returns the frames freed.
    pub(super) fn reclaim_objects<A: FrameSource + ?Sized>(
        &self,
        vm: &Vm,
        want: usize,
        frames: &mut A,
        tlb: &mut Tlb<'_>,
    ) -> usize {
        let want = want.clamp(1, super::swap::CLUSTER);
        let mut victims = Batch::new();
        let mut flush = Flush::none();
        {
            let mut m = self.mapper.lock();
            let mut second = Batch::new();
            for area in self.areas.iter() {
                let (AreaKind::Shared { object, .. } | AreaKind::Private { object, .. }) =
                    area.kind
                else {
                    continue;
                };
                if area.locked
                    || !vm
                        .object(object)
                        .is_some_and(|o| o.evictable(vm.swap.is_some()))
                {
                    continue;
                }
                m.for_each_leaf_in(VirtAddr::new(area.start), area.len(), |leaf| {
                    let frame = PhysFrame::containing_address(leaf.frame);
                    let va = leaf.page.as_u64();
                    // (A private area's own copies go to swap.)
                    if victims.len == want || cached_page(vm, area, va, frame).is_none() {
                        return;
                    }
                    if m.clear_accessed(leaf.page) {
                        flush.add(leaf.page.as_u64());
                        second.push(leaf.page, frame, 0);
                    } else {
                        victims.push(leaf.page, frame, 0);
                    }
                });
            }
            for &(va, frame, _) in second.as_slice() {
                if victims.len == want {
                    break;
                }
                victims.push(va, frame, 0);
            }
            for v in victims.as_mut_slice() {
                v.2 = m
                    .exchange_pte(v.0, 0)
                    .expect("a mapped page has its page table");
                flush.add(v.0.as_u64());
                // Dirty in the object at once, under this lock (an msync
                // of another space must not miss it).
                let va = v.0.as_u64();
                let page = self.areas.find(va).and_then(|a| a.object_page(va));
                if let Some((id, index)) = page {
                    if let Some(o) = vm.object(id) {
                        o.note_dirty(index, v.2 & DIRTY != 0);
                    }
                }
            }
        }
        let _transit = vm.transit(tlb.cpu(), victims.len as u64);
        self.invalidate(flush, vm, tlb);
        let mut freed = 0;
        for &(va, frame, old) in victims.as_slice() {
            debug_assert_eq!(old & ADDR_MASK, frame.start_address().as_u64());
            let Some((id, index)) = self
                .areas
                .find(va.as_u64())
                .and_then(|a| a.object_page(va.as_u64()))
            else {
                continue;
            };
            let Some(o) = vm.object(id) else { continue };
            let settle = o.unpin(index, 1, old & DIRTY != 0, vm.swap.is_some());
            let cpu = tlb.cpu();
            match vm.settle_object((id, &o), index, settle, &self.phys, cpu, frames) {
                Ok(true) => freed += 1,
                // Still mapped by another space: this space gave it up,
                // progress a fault finding no frame may wait on, as on a
                // cancelled write-out. (A failed write is no progress.)
                Ok(false) if o.is_mapped(index) => {
                    vm.cancels.fetch_add(1, Ordering::AcqRel);
                }
                Ok(false) | Err(_) => {}
            }
        }
        count(&vm.stats.at(tlb.cpu()).reclaimed, freed as u64);
        freed
    }

    /// Takes every mapping of page `index` of `id` (cached in `frame`) out
    /// of this space's shared areas that are not locked, and invalidates
    /// them on its CPUs: how many, and whether one was dirty.
    pub(super) fn unmap_object_page(
        &self,
        vm: &Vm,
        (id, index, cache): (ObjectId, u64, &VmObject),
        frame: PhysFrame,
        tlb: &mut Tlb<'_>,
    ) -> (u32, bool) {
        let (mut n, mut dirty) = (0, false);
        let mut flush = Flush::none();
        {
            let mut m = self.mapper.lock();
            for area in self.areas.iter() {
                // A private area's mapping of the page, too (its copies map
                // other frames: the frame check below leaves them).
                let (AreaKind::Shared { object, offset } | AreaKind::Private { object, offset }) =
                    area.kind
                else {
                    continue;
                };
                if object != id || area.locked || index < offset || index - offset >= area.pages() {
                    continue;
                }
                let va = VirtAddr::new(area.start + (index - offset) * PAGE);
                if m.leaf_entry(va)
                    .is_none_or(|e| e & ADDR_MASK != frame.start_address().as_u64())
                {
                    continue;
                }
                let old = m
                    .exchange_pte(va, 0)
                    .expect("a mapped page has its page table");
                dirty |= old & DIRTY != 0;
                cache.note_dirty(index, old & DIRTY != 0); // under the lock, as msync's
                flush.add(va.as_u64());
                n += 1;
            }
        }
        if n > 0 {
            self.invalidate(flush, vm, tlb);
        }
        (n, dirty)
    }

    /// A write to the page at `page` of a private area, which maps its
    /// object's cached `frame` read-only (`entry`; the caller counted the
    /// page once more for this copy): copies it into a new frame of the
    /// space's own, maps that writable, and uncounts the cached page once
    /// every CPU dropped the old entry. `None`: the entry changed meanwhile.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn copy_object_page<A: FrameSource + ?Sized>(
        &self,
        (vm, spaces): (&Vm, Option<&dyn SpaceTable<P>>),
        page: Page<Size4KiB>,
        prot: Prot,
        (frame, entry, id, index): (PhysFrame, u64, ObjectId, u64),
        frames: &mut A,
        tlb: &mut Tlb<'_>,
    ) -> Result<Option<FaultOutcome>, FaultReason> {
        let cpu = tlb.cpu();
        let Some(object) = vm.object(id) else {
            return Err(FaultReason::NoArea); // not closed while mapped
        };
        let unpin = |n: u32, frames: &mut A| {
            let settle = object.unpin(index, n, false, false);
            let _ = vm.settle_object((id, &object), index, settle, &self.phys, cpu, frames);
        };
        let new = match self.new_frame(vm, spaces, frames, tlb) {
            Ok(f) => f,
            Err(e) => {
                unpin(1, frames);
                return match e {
                    Shortage::Raced => Ok(None),
                    Shortage::Fault(e) => Err(e),
                };
            }
        };
        // Until the policy knows the copy (a fault finding no frame
        // meanwhile waits for it).
        let transit = vm.transit(cpu, 1);
        // The copy's count keeps the cached frame while this reads it.
        super::contents::copy_frame(&self.phys, frame, new);
        let va = page.start_address();
        let replaced = self
            .mapper
            .lock()
            .replace_pte(va, entry, new, prot.map_flags(true));
        if let Ok(Some(_)) = replaced {
            self.track(vm, page);
            drop(transit);
            let mut flush = Flush::none();
            flush.add(va.as_u64());
            self.invalidate(flush, vm, tlb);
            unpin(2, frames); // the old entry's count and the copy's
            count(&vm.stats.at(cpu).object_copies, 1);
            return Ok(Some(FaultOutcome::ObjectCopied));
        }
        // Changed meanwhile (unmapped, evicted): look again.
        vm.release_frame(cpu, new, frames);
        drop(transit);
        unpin(1, frames);
        Ok(None)
    }
}

impl Vm {
    /// Evicts the object pages `chosen` (the global policy's page
    /// identities under [`OBJECT_PAGES`]) from every space of `spaces`
    /// that maps them; a page left with no mapping leaves the cache
    /// (written back when dirty), one still mapped elsewhere (a space
    /// outside the table, a locked area) or whose write failed stays and
    /// is offered again. Returns the frames freed.
    pub(super) fn evict_object_pages<P: PhysMem, T: SpaceTable<P> + ?Sized, A>(
        &self,
        spaces: &T,
        chosen: &[(u32, u64)],
        held: &mut super::global::Held,
        frames: &mut A,
        tlb: &mut Tlb<'_>,
    ) -> usize
    where
        A: FrameSource + ?Sized,
    {
        let mut freed = 0;
        let mut any = false;
        spaces.for_each(&mut |_| any = true);
        if !any {
            // No space to reach the pages through: offered again.
            for &(_, pid) in chosen {
                self.track_global(OBJECT_PAGES, pid);
            }
            return 0;
        }
        for &(_, pid) in chosen {
            let (object, index) = ((pid >> 32) as u16, pid & 0xffff_ffff);
            let Some((id, o)) = self.object_at(object) else {
                continue; // closed since
            };
            if index >= o.pages() {
                continue;
            }
            let Some(frame) = o.frame_of(index) else {
                continue; // not cached any more
            };
            // Counted while this eviction works on it: the frame stays the
            // page's (no copy-on-write, munmap or other reclaim frees it
            // meanwhile), so the frame checks below hold.
            if !o.pin_frame(index, frame) {
                self.track_global(OBJECT_PAGES, pid); // moving: offered again
                continue;
            }
            let (mut n, mut dirty) = (0, false);
            let mut at = None;
            spaces.for_each(&mut |s| {
                let (k, d) = s.unmap_object_page(self, (id, index, &o), frame, tlb);
                n += k;
                dirty |= d;
                // The frame through a space's access to physical memory.
                at.get_or_insert_with(|| page_ptr(&s.phys, frame));
            });
            // Settled with no space held (the pager may do I/O).
            let Some(at) = at else {
                debug_assert!(false, "the table has a space");
                continue;
            };
            let settle = o.unpin(index, n + 1, dirty, self.swap.is_some());
            let page = |f: PhysFrame| {
                debug_assert_eq!(f, frame, "the page's cached frame");
                at
            };
            let settled =
                Some(self.settle_object_with((id, &o), index, settle, &page, tlb.cpu(), frames));
            match settled {
                Some(Ok(true)) => freed += 1,
                other => {
                    if n == 0 && o.is_mapped(index) {
                        held.add(global_id(OBJECT_PAGES, pid));
                    }
                    if n > 0 && matches!(other, Some(Ok(false))) && o.is_mapped(index) {
                        // Mapped again meanwhile (or by a space outside the
                        // table): in use, as a write cancelling a write-out
                        // makes a page; a fault that found nothing freed
                        // tries again.
                        self.cancels.fetch_add(1, Ordering::AcqRel);
                    }
                    self.track_global(OBJECT_PAGES, pid);
                }
            }
        }
        count(&self.stats.at(tlb.cpu()).reclaimed, freed as u64);
        freed
    }
}
