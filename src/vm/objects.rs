//! The kernel's side of memory objects: making them (over a [`Pager`], or
//! shared anonymous memory), writing their dirty pages back, closing them;
//! and what every path that drops a cached page's last mapping does next.

use super::contents::page_ptr;
use super::object::{
    object_page_id, ObjectId, ObjectStats, Pager, PagerError, Settle, VmObject, MAX_OBJECT_PAGES,
    OBJECT_PAGES,
};
use super::stats::count;
use super::swap::PAGE_BYTES;
use super::{Area, AreaKind, Vm, VmError};
use crate::paging::{FrameSource, PhysMem};
use alloc::boxed::Box;
use alloc::sync::Arc;
use core::sync::atomic::Ordering;
use x86_64::structures::paging::PhysFrame;

/// Dirty pages one write-back pass marks at a time (on the stack).
const WRITE_BATCH: usize = 16;

impl Vm {
    /// Makes a memory object over `pager` (its size is
    /// [`Pager::pages`]): map it with
    /// [`VmSpace::map_object`](super::VmSpace::map_object). Its pages are
    /// read through the pager on their first fault, cached once for every
    /// space, and written back when dirty. The cache table takes 16 bytes
    /// a page of the object, from the heap (refused with
    /// [`VmError::OutOfMemory`] when it does not fit).
    pub fn create_object(&self, pager: Box<dyn Pager>) -> Result<ObjectId, VmError> {
        let pages = pager.pages();
        self.add_object(Some(pager), pages)
    }

    /// Makes a shared anonymous object of `len` bytes (`MAP_SHARED |
    /// MAP_ANONYMOUS`, or a System V segment): zero-filled on first touch,
    /// shared by every space that maps it (a fork's child too), its pages
    /// kept while the object exists: in frames, or on swap when reclaim
    /// takes them (with a swap device attached), read back on their next
    /// touch.
    pub fn create_shared_anonymous(&self, len: u64) -> Result<ObjectId, VmError> {
        if len == 0 || !len.is_multiple_of(crate::PAGE_SIZE) {
            return Err(VmError::Unaligned { addr: 0, len });
        }
        self.add_object(None, len / crate::PAGE_SIZE)
    }

    fn add_object(&self, pager: Option<Box<dyn Pager>>, pages: u64) -> Result<ObjectId, VmError> {
        if pages == 0 || pages > MAX_OBJECT_PAGES {
            return Err(VmError::BeyondObject {
                offset: 0,
                len: pages.saturating_mul(crate::PAGE_SIZE),
                size: MAX_OBJECT_PAGES * crate::PAGE_SIZE,
            });
        }
        let object = VmObject::new(pager, pages).ok_or(VmError::OutOfMemory)?;
        self.objects
            .write()
            .add(Arc::new(object))
            .ok_or(VmError::OutOfMemory)
    }

    /// The object `id` names.
    pub(super) fn object(&self, id: ObjectId) -> Option<Arc<VmObject>> {
        self.objects.read().get(id).cloned()
    }

    /// The object at registry index `index`, with its id.
    pub(super) fn object_at(&self, index: u16) -> Option<(ObjectId, Arc<VmObject>)> {
        self.objects.read().at(index).map(|(id, o)| (id, o.clone()))
    }

    /// The counters of the object `id`.
    pub fn object_stats(&self, id: ObjectId) -> Option<ObjectStats> {
        Some(self.object(id)?.stats())
    }

    /// Writes back every page of the object `id` its cache knows dirty
    /// (pages written through a mapping count once that mapping's Dirty
    /// bit was harvested: by [`VmSpace::sync`](super::VmSpace::sync),
    /// unmap or reclaim). `phys` reaches the frames. Returns the pages
    /// written; on a pager error the pages it refused stay dirty, the
    /// others are written, and the first error is returned.
    pub fn sync_object<P: PhysMem, A: FrameSource + ?Sized>(
        &self,
        id: ObjectId,
        phys: &P,
        cpu: usize,
        frames: &mut A,
    ) -> Result<u64, VmError> {
        let object = self.object(id).ok_or(VmError::NoObject { object: id })?;
        self.write_dirty((id, &object), 0, object.pages(), phys, cpu, frames)
            .map_err(VmError::Pager)
    }

    /// Closes the object `id`, which no area may map any more
    /// ([`VmError::ObjectMapped`]): writes its dirty pages back, then
    /// frees its cached pages (and gives back the swap slots of an
    /// anonymous object's). On a pager error the object stays open with
    /// the refused pages dirty (nothing is lost): retry, or
    /// [`discard_object`](Self::discard_object). Refused while another
    /// CPU is reading or writing one of its pages ([`VmError::ObjectBusy`]).
    pub fn close_object<P: PhysMem, A: FrameSource + ?Sized>(
        &self,
        id: ObjectId,
        phys: &P,
        cpu: usize,
        frames: &mut A,
    ) -> Result<(), VmError> {
        let object = self.object(id).ok_or(VmError::NoObject { object: id })?;
        if object.area_pages.load(Ordering::Acquire) != 0 {
            return Err(VmError::ObjectMapped { object: id });
        }
        self.write_dirty((id, &object), 0, object.pages(), phys, cpu, frames)
            .map_err(VmError::Pager)?;
        self.discard_object(id, cpu, frames)
    }

    /// Closes the object `id`, which no area may map, without writing its
    /// dirty pages: they are lost (after a pager keeps refusing them).
    /// Refused while a reclaim or a sync on another CPU is reading or
    /// writing one of its pages ([`VmError::ObjectBusy`]: retry).
    pub fn discard_object<A: FrameSource + ?Sized>(
        &self,
        id: ObjectId,
        cpu: usize,
        frames: &mut A,
    ) -> Result<(), VmError> {
        let (object, pages) = {
            let mut objects = self.objects.write();
            let o = objects.get(id).ok_or(VmError::NoObject { object: id })?;
            if o.area_pages.load(Ordering::Acquire) != 0 {
                return Err(VmError::ObjectMapped { object: id });
            }
            let pages = o.take_all().map_err(|busy| {
                if busy {
                    VmError::ObjectBusy { object: id }
                } else {
                    VmError::OutOfMemory
                }
            })?;
            (
                objects.remove(id).ok_or(VmError::NoObject { object: id })?,
                pages,
            )
        };
        for (index, frame, slot) in pages {
            if let Some(frame) = frame {
                self.forget_global(OBJECT_PAGES, [object_page_id(id.index, index)]);
                self.release_frame(cpu, frame, frames);
            }
            if let (Some(slot), Some(swap)) = (slot, self.swap.as_ref()) {
                swap.drop_ref(slot);
            }
        }
        drop(object);
        Ok(())
    }

    /// Writes back the dirty cached pages of `[from, to)` of `object`,
    /// freeing those no mapping holds; the first error, after trying them all.
    pub(super) fn write_dirty<P: PhysMem, A: FrameSource + ?Sized>(
        &self,
        (id, object): (ObjectId, &VmObject),
        from: u64,
        to: u64,
        phys: &P,
        cpu: usize,
        frames: &mut A,
    ) -> Result<u64, PagerError> {
        let mut at = from;
        let mut written = 0;
        let mut error = None;
        while at < to {
            let mut batch =
                [(0, PhysFrame::containing_address(x86_64::PhysAddr::zero())); WRITE_BATCH];
            let (n, next) = object.take_dirty(at, to, &mut batch);
            for &(index, frame) in &batch[..n] {
                match self.settle_object(
                    (id, object),
                    index,
                    Settle::Write(frame),
                    phys,
                    cpu,
                    frames,
                ) {
                    Ok(_) => written += 1,
                    Err(e) => error = error.or(Some(e)),
                }
            }
            at = next;
        }
        match error {
            Some(e) => Err(e),
            None => Ok(written),
        }
    }

    /// Writes the frame of an anonymous object's page, unmapped everywhere
    /// and marked as being written, to a new swap slot.
    fn swap_out_object_page(&self, page: *mut [u8; PAGE_BYTES]) -> Result<u64, super::FaultReason> {
        let swap = self.swap.as_ref().ok_or(super::FaultReason::NoSwap)?;
        let (slot, _) = swap.take(1).ok_or(super::FaultReason::OutOfSwap)?;
        // SAFETY: no mapping of the frame is left (every one was removed
        // and invalidated) and none can appear while the page is marked as
        // being written: nothing writes it now.
        let page = unsafe { &*page };
        if let Err(e) = swap.device.write(slot, &[page]) {
            swap.drop_ref(slot);
            return Err(super::FaultReason::SwapIo(e));
        }
        Ok(slot)
    }

    /// Does what [`VmObject::unpin`] (or a marked write-back) left to do
    /// for page `index` of `object`: frees the frame of a clean page no
    /// mapping holds, writes a dirty one back first (again if it was
    /// dirtied meanwhile). Returns whether the frame was freed; a failed
    /// write leaves the page dirty in the cache.
    pub(super) fn settle_object<P: PhysMem, A: FrameSource + ?Sized>(
        &self,
        (id, object): (ObjectId, &VmObject),
        index: u64,
        settle: Settle,
        phys: &P,
        cpu: usize,
        frames: &mut A,
    ) -> Result<bool, PagerError> {
        self.settle_object_with(
            (id, object),
            index,
            settle,
            &|f| page_ptr(phys, f),
            cpu,
            frames,
        )
    }

    /// [`settle_object`](Self::settle_object) with the page's frame
    /// reached through `page`.
    pub(super) fn settle_object_with<A: FrameSource + ?Sized>(
        &self,
        (id, object): (ObjectId, &VmObject),
        index: u64,
        mut settle: Settle,
        page: &dyn Fn(PhysFrame) -> *mut [u8; PAGE_BYTES],
        cpu: usize,
        frames: &mut A,
    ) -> Result<bool, PagerError> {
        loop {
            match settle {
                Settle::Kept => return Ok(false),
                Settle::Free(frame) => {
                    self.forget_global(OBJECT_PAGES, [object_page_id(id.index, index)]);
                    self.release_frame(cpu, frame, frames);
                    count(&self.stats.at(cpu).object_evictions, 1);
                    return Ok(true);
                }
                Settle::Swap(frame) => {
                    let _transit = self.transit(cpu, 1);
                    let written = self.swap_out_object_page(page(frame));
                    let slot = written.as_ref().ok().copied();
                    return match object.end_swap(index, slot) {
                        Some(frame) => {
                            self.forget_global(OBJECT_PAGES, [object_page_id(id.index, index)]);
                            self.release_frame(cpu, frame, frames);
                            count(&self.stats.at(cpu).swap_outs, 1);
                            count(&self.stats.at(cpu).object_evictions, 1);
                            Ok(true)
                        }
                        // No slot or a device error: the page stays, as an
                        // anonymous page whose write-out failed does.
                        None => Ok(false),
                    };
                }
                Settle::Write(frame) => {
                    // A fault finding no frame meanwhile waits for this one.
                    let _transit = self.transit(cpu, 1);
                    // SAFETY: a cached frame of user memory (no Rust object's),
                    // marked as being written back so nothing frees it; a CPU
                    // still mapping it (msync) may change bytes during the
                    // write, and its Dirty bit then records the page again.
                    let bytes = unsafe { &*page(frame) };
                    let written = object.write(index, bytes);
                    settle = object.end_write(index, written.is_ok());
                    if let Err(e) = written {
                        count(&self.stats.at(cpu).pager_errors, 1);
                        return Err(e);
                    }
                    count(&self.stats.at(cpu).object_writebacks, 1);
                }
            }
        }
    }
}

/// The object page `frame`, mapped at `va` in `area`, caches: every page
/// of a shared area; in a private area, a page no write has copied yet (it
/// maps the cache's frame read-only until its first write copies it).
pub(super) fn cached_page(
    vm: &Vm,
    area: &Area,
    va: u64,
    frame: PhysFrame,
) -> Option<(ObjectId, u64)> {
    match area.kind {
        AreaKind::Shared { .. } => area.object_page(va),
        AreaKind::Private { .. } => {
            let (id, index) = area.object_page(va)?;
            (vm.object(id)?.frame_of(index) == Some(frame)).then_some((id, index))
        }
        _ => None,
    }
}
