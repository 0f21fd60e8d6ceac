//! Transparent huge pages: a 2 MiB-aligned run of an anonymous area gets
//! one 2 MiB frame run and one 2 MiB leaf on its first fault when the
//! kernel gave the [`Vm`] a source of runs ([`Vm::set_huge_frames`]) and
//! one is free (else 4 KiB pages, as ever). Anything that needs the pages
//! one by one splits the leaf into 512 4 KiB leaves over the same frames
//! first: a fault the leaf does not allow, fork, a partial munmap,
//! mprotect, advice, and reclaim (which splits the huge pages a CPU did
//! not touch since its last look, and clears the Accessed bit of the
//! others: a CLOCK over huge pages). After a split the frames are
//! ordinary anonymous frames, given back one at a time. A run whose 512
//! pages are all resident again can be collapsed back into a huge page
//! ([`VmSpace::collapse_huge`]).

use super::contents::{copy_frame, fill_zero};
use super::stats::count;
use super::swap::{LAZY_FREE, WRITE_OUT};
use super::{AreaKind, FaultReason, Vm, VmError, VmSpace};
use crate::paging::{Flush, FrameSource, LeafSize, PhysMem, ACCESSED, ADDR_MASK, PRESENT};
use crate::smp::Tlb;
use alloc::boxed::Box;
use core::sync::atomic::Ordering;
use x86_64::structures::paging::{Page, PhysFrame, Size2MiB, Size4KiB};
use x86_64::VirtAddr;

/// Bytes of a huge page.
pub(super) const HUGE: u64 = 2 << 20;
/// 4 KiB pages in a huge page.
pub(super) const HUGE_PAGES: u64 = 512;
/// Huge pages one reclaim pass splits at most.
const SPLITS_PER_PASS: usize = 2;

/// Where transparent huge pages come from: runs of 512 frames starting
/// 2 MiB-aligned (kmem's frame allocator hands them out with
/// `allocate_contiguous`).
///
/// # Safety
/// Every run handed out is 512 free frames, used by nothing else,
/// reachable through the spaces' [`PhysMem`], and the frame source passed
/// to the [`VmSpace`] operations must accept each of its frames back, one
/// 4 KiB frame at a time.
pub unsafe trait HugeFrames: Send + Sync {
    /// A free 2 MiB run, or `None` when there is none.
    fn allocate_2mib(&self) -> Option<PhysFrame<Size2MiB>>;
}

impl core::fmt::Debug for dyn HugeFrames {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str("HugeFrames")
    }
}

/// What a huge fault did.
pub(super) enum HugeFill {
    /// The 2 MiB leaf is mapped.
    Mapped,
    /// No run (or no room under the limit): fault in a 4 KiB page.
    Fallback,
    /// Another fault mapped something in the slot first: look again.
    Raced,
}

impl Vm {
    /// Turns transparent huge pages on with `source` (`None`: off, the
    /// default). Huge pages already mapped stay until split or unmapped.
    pub fn set_huge_frames(&mut self, source: Option<Box<dyn HugeFrames>>) {
        self.huge = source;
    }

    /// Whether transparent huge pages are on.
    pub fn huge_pages(&self) -> bool {
        self.huge.is_some()
    }
}

impl<P: PhysMem> VmSpace<P> {
    /// Whether a fault at `va` of the area `[start, end)` of `kind` may
    /// take a huge page: huge pages are on, the area is anonymous and
    /// holds the whole 2 MiB run around `va`.
    pub(super) fn huge_fits(&self, vm: &Vm, va: u64, kind: AreaKind) -> bool {
        if !vm.huge_pages() || kind != AreaKind::Anonymous {
            return false;
        }
        let base = va & !(HUGE - 1);
        self.areas
            .find(va)
            .is_some_and(|a| a.start <= base && base + HUGE <= a.end)
    }

    /// The first fault in an empty 2 MiB slot: a zeroed run mapped by one
    /// 2 MiB leaf, writable as the area allows.
    pub(super) fn fill_huge<A: FrameSource + ?Sized>(
        &self,
        vm: &Vm,
        page: Page<Size4KiB>,
        prot: super::Prot,
        frames: &mut A,
        tlb: &mut Tlb<'_>,
    ) -> Result<HugeFill, FaultReason> {
        let cpu = tlb.cpu();
        let Some(source) = vm.huge.as_ref() else {
            return Ok(HugeFill::Fallback);
        };
        if !vm.charge_frames(cpu, HUGE_PAGES) {
            return Ok(HugeFill::Fallback); // 4 KiB pages reclaim as they need
        }
        let Some(run) = source.allocate_2mib() else {
            vm.uncharge_frames(cpu, HUGE_PAGES);
            return Ok(HugeFill::Fallback);
        };
        let first = PhysFrame::<Size4KiB>::containing_address(run.start_address());
        let _transit = vm.transit(cpu, HUGE_PAGES);
        for k in 0..HUGE_PAGES {
            fill_zero(&self.phys, first + k);
        }
        let base = VirtAddr::new(page.start_address().as_u64() & !(HUGE - 1));
        let mapped = {
            let mut m = self.mapper.lock();
            if m.huge_slot_empty(base) {
                // SAFETY: a zeroed run of frames this fault owns, for a
                // user area: user memory, no Rust object's; over an empty
                // slot, which no CPU caches.
                unsafe {
                    m.map_range_with(
                        base,
                        run.start_address(),
                        HUGE,
                        prot.map_flags(true),
                        LeafSize::Size2MiB,
                        frames,
                    )
                }
                .map(|f| {
                    f.ignore();
                    true
                })
            } else {
                Ok(false)
            }
        };
        match mapped {
            Ok(true) => {
                vm.huge_seen.store(true, Ordering::Relaxed);
                count(&vm.stats.at(cpu).huge_faults, 1);
                Ok(HugeFill::Mapped)
            }
            other => {
                for k in 0..HUGE_PAGES {
                    vm.release_frame(cpu, first + k, frames);
                }
                match other {
                    Err(e) => Err(e.into()),
                    _ => Ok(HugeFill::Raced),
                }
            }
        }
    }

    /// Splits the huge page mapping `va`, if one does, into 4 KiB pages
    /// (invalidated on the space's CPUs), which the replacement policy
    /// then knows. Whether it split one.
    pub(super) fn split_huge_at<A: FrameSource + ?Sized>(
        &self,
        vm: &Vm,
        va: VirtAddr,
        frames: &mut A,
        tlb: &mut Tlb<'_>,
    ) -> Result<bool, crate::paging::PagingError> {
        let flush = self.mapper.lock().split_huge(va, frames)?;
        let Some(flush) = flush else {
            return Ok(false);
        };
        self.invalidate(flush, vm, tlb);
        let base = va.as_u64() & !(HUGE - 1);
        for k in 0..HUGE_PAGES {
            self.track(vm, Page::containing_address(VirtAddr::new(base + k * 4096)));
        }
        count(&vm.stats.at(tlb.cpu()).huge_splits, 1);
        Ok(true)
    }

    /// Splits every huge page of `[a, b)`'s private areas (before an
    /// operation that needs the pages one by one). Pages split stay split
    /// if a later split finds no frame for its table.
    pub(super) fn split_huge_in<A: FrameSource + ?Sized>(
        &mut self,
        vm: &Vm,
        (a, b): (u64, u64),
        frames: &mut A,
        tlb: &mut Tlb<'_>,
    ) -> Result<(), VmError> {
        if !vm.huge_seen.load(Ordering::Relaxed) {
            return Ok(()); // never had one: nothing to look for
        }
        // Only the huge pages of anonymous areas in the range.
        let mut slots = alloc::vec::Vec::new();
        let mut full = false;
        for area in self.areas.overlapping(a, b) {
            if area.kind != AreaKind::Anonymous {
                continue;
            }
            let (s, e) = (area.start.max(a), area.end.min(b));
            self.mapper
                .get_mut()
                .for_each_huge_in(VirtAddr::new(s), e - s, |va, _| {
                    let at = va.as_u64();
                    if slots.last() != Some(&at) {
                        full |= slots.try_reserve(1).is_err();
                        if !full {
                            slots.push(at);
                        }
                    }
                });
        }
        if full {
            return Err(VmError::OutOfMemory);
        }
        for at in slots {
            self.split_huge_at(vm, VirtAddr::new(at), frames, tlb)?;
        }
        Ok(())
    }

    /// Splits the huge pages that [`release`](Self::release) of `[a, b)`
    /// would cover only in part (one at each end at most), so that it
    /// needs no frame once it starts.
    pub(super) fn split_huge_ends<A: FrameSource + ?Sized>(
        &mut self,
        vm: &Vm,
        (a, b): (u64, u64),
        frames: &mut A,
        tlb: &mut Tlb<'_>,
    ) -> Result<(), VmError> {
        if !a.is_multiple_of(HUGE) {
            self.split_huge_in(vm, (a, a + 1), frames, tlb)?;
        }
        if !b.is_multiple_of(HUGE) {
            self.split_huge_in(vm, (b - 1, b), frames, tlb)?;
        }
        Ok(())
    }

    /// Reclaim's look at huge pages: one a CPU touched since the last look
    /// has its Accessed bit cleared (a second chance); one nobody touched
    /// is split (up to two a pass), its 4 KiB pages then taken as any
    /// others. Nothing when huge pages never were on.
    pub(super) fn age_huge<A: FrameSource + ?Sized>(
        &self,
        vm: &Vm,
        frames: &mut A,
        tlb: &mut Tlb<'_>,
    ) {
        if !vm.huge_seen.load(Ordering::Relaxed) {
            return;
        }
        let mut cold = [0u64; SPLITS_PER_PASS];
        let mut n = 0;
        let mut flush = Flush::none();
        {
            let m = self.mapper.lock();
            for area in self.areas.iter().filter(|a| a.pageable()) {
                // A huge page across two areas (after an unlock of part of
                // it) is seen twice, and ages twice.
                m.for_each_huge_in(VirtAddr::new(area.start), area.len(), |va, e| {
                    if e & ACCESSED != 0 {
                        m.clear_accessed_huge(va);
                        flush.add(va.as_u64());
                    } else if n < cold.len() && !cold[..n].contains(&va.as_u64()) {
                        cold[n] = va.as_u64();
                        n += 1;
                    }
                });
            }
        }
        self.invalidate(flush, vm, tlb);
        for &at in &cold[..n] {
            // No frame for the table: the page stays whole this pass.
            let _ = self.split_huge_at(vm, VirtAddr::new(at), frames, tlb);
        }
    }
}

impl<P: PhysMem> VmSpace<P> {
    /// Collapses up to `max` aligned 2 MiB runs of anonymous areas whose
    /// 512 pages are all resident and the space's own (no zero page, no
    /// frame shared after a fork, none on swap or moving) back into huge
    /// pages (Linux's khugepaged, `MADV_COLLAPSE`): the run's page table is
    /// taken out and invalidated on the space's CPUs, the pages copied into
    /// a new 2 MiB run mapped by one leaf, the old frames and the table
    /// given back. Takes the space exclusively (the kernel's address-space
    /// lock held for writing: no fault of the space meanwhile). Returns the
    /// runs collapsed; a run with no 2 MiB frame run free, or no room under
    /// the limit for the copy, is left as it is.
    pub fn collapse_huge<A: FrameSource + ?Sized>(
        &mut self,
        vm: &Vm,
        max: usize,
        frames: &mut A,
        tlb: &mut Tlb<'_>,
    ) -> Result<usize, VmError> {
        let Some(source) = vm.huge.as_ref() else {
            return Ok(0);
        };
        let cpu = tlb.cpu();
        let mut done = 0;
        let runs: alloc::vec::Vec<(u64, super::Prot)> = {
            let mut v = alloc::vec::Vec::new();
            for area in self.areas.iter().filter(|a| a.kind == AreaKind::Anonymous) {
                let mut at = area.start.next_multiple_of(HUGE);
                while at + HUGE <= area.end {
                    v.try_reserve(1).map_err(|_| VmError::OutOfMemory)?;
                    v.push((at, area.prot));
                    at += HUGE;
                }
            }
            v
        };
        for (at, prot) in runs {
            if done == max {
                break;
            }
            let va = VirtAddr::new(at);
            let Some(entries) = self.mapper.get_mut().slot_entries(va) else {
                continue; // empty, or a huge page already
            };
            let whole = entries.iter().all(|&e| {
                let f = PhysFrame::containing_address(x86_64::PhysAddr::new(e & ADDR_MASK));
                e & PRESENT != 0 && e & (WRITE_OUT | LAZY_FREE) == 0 && vm.held_alone(f)
            });
            if !whole || !vm.charge_frames(cpu, HUGE_PAGES) {
                continue;
            }
            let Some(run) = source.allocate_2mib() else {
                vm.uncharge_frames(cpu, HUGE_PAGES);
                break;
            };
            // No CPU reaches the old pages once this is done.
            let mut flush = Flush::none();
            let table = self
                .mapper
                .get_mut()
                .detach_page_table(va, &mut flush)
                .expect("checked above, the space held exclusively");
            self.invalidate(flush, vm, tlb);
            let first = PhysFrame::<Size4KiB>::containing_address(run.start_address());
            for (k, &e) in entries.iter().enumerate() {
                let old = PhysFrame::containing_address(x86_64::PhysAddr::new(e & ADDR_MASK));
                copy_frame(&self.phys, old, first + k as u64);
            }
            // SAFETY: a run of frames this call owns, holding the slot's
            // pages, for this user area: user memory, no Rust object's;
            // over the slot's directory entry, cleared and invalidated.
            let mapped = unsafe {
                self.mapper.get_mut().map_range_with(
                    va,
                    run.start_address(),
                    HUGE,
                    prot.map_flags(true),
                    LeafSize::Size2MiB,
                    frames,
                )
            };
            mapped
                .expect("the directory exists and its entry is empty")
                .ignore();
            for &e in &entries {
                let old = PhysFrame::containing_address(x86_64::PhysAddr::new(e & ADDR_MASK));
                vm.release_frame(cpu, old, frames);
            }
            // SAFETY: the page table was taken out of the hierarchy and
            // invalidated on every CPU of the space above.
            unsafe { frames.deallocate_frame(table) };
            // The policies knew the 4 KiB pages: a huge page is aged apart.
            let pages = at >> 12..(at + HUGE) >> 12;
            if let Some(p) = self.policy.get_mut().as_mut() {
                for page in pages.clone() {
                    p.remove(page);
                }
            }
            if let Some(id) = self.global_id() {
                vm.forget_global(id, pages);
            }
            vm.huge_seen.store(true, Ordering::Relaxed);
            count(&vm.stats.at(cpu).huge_collapses, 1);
            done += 1;
        }
        Ok(done)
    }
}

/// 4 KiB pages a leaf of `size` maps.
pub(super) const fn pages_of(size: LeafSize) -> u64 {
    size.bytes() / 4096
}
