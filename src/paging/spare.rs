//! Frames kept for later instead of given back: a stack threaded through the frames
//! themselves, for frame allocators that cannot take frames back.

use core::fmt;

use x86_64::structures::paging::{FrameAllocator, FrameDeallocator, PhysFrame, Size4KiB};
use x86_64::PhysAddr;

use super::PhysMem;

/// A stack of free frames whose links live in the frames (no storage of its own).
#[derive(Debug)]
pub(crate) struct SpareFrames {
    head: Option<PhysFrame>,
    len: usize,
}

impl SpareFrames {
    pub(crate) const fn new() -> Self {
        Self { head: None, len: 0 }
    }

    pub(crate) const fn len(&self) -> usize {
        self.len
    }

    /// Keeps `frame`.
    ///
    /// # Safety
    /// Nothing may use `frame` any more, and `phys` must reach it (it was handed out by a
    /// frame source of a mapper over `phys`).
    pub(crate) unsafe fn push<P: PhysMem + ?Sized>(&mut self, phys: &P, frame: PhysFrame) {
        let next = self.head.map_or(0, |f| f.start_address().as_u64());
        // SAFETY: per the caller the frame is unused and `phys` maps its 4096 bytes.
        unsafe { phys.table_ptr(frame).cast::<u64>().as_ptr().write(next) };
        self.head = Some(frame);
        self.len += 1;
    }

    /// Takes a kept frame back (its contents are not cleared).
    pub(crate) fn pop<P: PhysMem + ?Sized>(&mut self, phys: &P) -> Option<PhysFrame> {
        let frame = self.head?;
        // SAFETY: `frame` was pushed with `phys`, which maps it, and nothing else uses it.
        let next = unsafe { phys.table_ptr(frame).cast::<u64>().as_ptr().read() };
        self.head = (next != 0).then(|| PhysFrame::containing_address(PhysAddr::new(next)));
        self.len -= 1;
        Some(frame)
    }
}

/// A frame allocator that cannot take frames back (blog_os's `BootInfoFrameAllocator`,
/// a bump allocator) made into a frame source: frames given back are kept and handed out
/// again first, so none is lost.
///
/// ```
/// # use kmem::paging::{KeepFreed, PhysMem};
/// # use x86_64::structures::paging::{FrameAllocator, FrameDeallocator, PhysFrame, Size4KiB};
/// # fn demo<P: PhysMem>(phys: P, bump: impl FrameAllocator<Size4KiB>) {
/// // SAFETY: `phys` reaches every frame `bump` hands out (say, a direct map of all RAM).
/// let mut frames = unsafe { KeepFreed::new(bump, phys) };
/// let frame = frames.allocate_frame().unwrap();
/// // SAFETY: the frame was just allocated and is not used.
/// unsafe { frames.deallocate_frame(frame) };
/// assert_eq!(frames.kept(), 1);
/// assert_eq!(frames.allocate_frame(), Some(frame));
/// # }
/// ```
pub struct KeepFreed<F, P: PhysMem> {
    inner: F,
    phys: P,
    spares: SpareFrames,
}

impl<F, P: PhysMem> KeepFreed<F, P> {
    /// Wraps `inner`, keeping given-back frames on a list written into them through `phys`.
    ///
    /// # Safety
    /// `phys` must reach, read-write, every frame `inner` hands out (as the `PhysMem` of the
    /// mapper these frames are for does), for as long as the value lives.
    pub const unsafe fn new(inner: F, phys: P) -> Self {
        Self {
            inner,
            phys,
            spares: SpareFrames::new(),
        }
    }

    /// Frames kept now.
    pub const fn kept(&self) -> usize {
        self.spares.len()
    }

    /// The wrapped allocator.
    pub fn inner(&self) -> &F {
        &self.inner
    }

    /// The wrapped allocator, mutably (frames taken from it directly are not kept).
    pub fn inner_mut(&mut self) -> &mut F {
        &mut self.inner
    }
}

impl<F, P: PhysMem> fmt::Debug for KeepFreed<F, P> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KeepFreed")
            .field("kept", &self.spares.len())
            .finish_non_exhaustive()
    }
}

// SAFETY: kept frames were handed out by `inner` and given back unused, so each is handed
// out at most once at a time; other frames come from `inner`, which promises the same.
unsafe impl<F: FrameAllocator<Size4KiB>, P: PhysMem> FrameAllocator<Size4KiB> for KeepFreed<F, P> {
    fn allocate_frame(&mut self) -> Option<PhysFrame> {
        self.spares
            .pop(&self.phys)
            .or_else(|| self.inner.allocate_frame())
    }
}

impl<F, P: PhysMem> FrameDeallocator<Size4KiB> for KeepFreed<F, P> {
    unsafe fn deallocate_frame(&mut self, frame: PhysFrame) {
        // SAFETY: the caller promises the frame is unused; it came from `inner`, whose
        // frames `phys` reaches (the `new` contract).
        unsafe { self.spares.push(&self.phys, frame) };
    }
}
