//! What all address spaces of a kernel share: the zero frame, the counts
//! of frames mapped by more than one address space, and the counters.

use super::shares::Shares;
use super::VmStats;
use crate::paging::{FrameSource, PhysMem};
use x86_64::structures::paging::PhysFrame;

/// The shared state of the virtual-memory layer. One per kernel (or per
/// test): every [`VmSpace`](super::VmSpace) operation takes it.
///
/// Frame sharing costs nothing for frames that are not shared. Frames
/// mapped by `n ≥ 2` pages (after a fork) are counted in 4 KiB chunks of
/// four-byte counters on the kernel heap, one chunk per 4 MiB of physical
/// memory holding a shared frame (4 bytes per frame there), freed with
/// their last shared frame.
#[derive(Debug)]
pub struct Vm {
    zero: PhysFrame,
    shares: Shares,
    pub(crate) stats: VmStats,
}

impl Vm {
    /// Takes one frame from `frames` and zeroes it: the shared zero frame,
    /// mapped read-only by every first read of anonymous memory. `phys`
    /// must reach the frames `frames` hands out.
    pub fn new<P: PhysMem, A: FrameSource + ?Sized>(phys: &P, frames: &mut A) -> Option<Self> {
        let zero = frames.allocate_frame()?;
        fill_zero(phys, zero);
        Some(Self {
            zero,
            shares: Shares::default(),
            stats: VmStats::default(),
        })
    }

    /// The zero frame.
    pub fn zero_frame(&self) -> PhysFrame {
        self.zero
    }

    /// The counters.
    pub fn stats(&self) -> VmStats {
        VmStats {
            shared_frames: self.shares.len() as u64,
            ..self.stats
        }
    }

    /// How many mappings share `frame` (1 for a frame not shared).
    pub fn share_count(&self, frame: PhysFrame) -> u32 {
        self.shares.count(frame)
    }

    /// Frames shared right now.
    pub fn shared_frames(&self) -> usize {
        self.shares.len()
    }

    /// Records one more mapping of `frame`.
    pub(crate) fn share(&mut self, frame: PhysFrame) {
        self.shares.add(frame);
    }

    /// Records that one mapping of `frame` is gone. Returns whether that
    /// was the last one (the caller frees the frame).
    pub(crate) fn unshare(&mut self, frame: PhysFrame) -> bool {
        self.shares.remove(frame)
    }

    /// Gives the zero frame back, once no address space maps it.
    ///
    /// # Safety
    /// No page of any address space may map the zero frame any more.
    pub unsafe fn destroy<A: FrameSource + ?Sized>(self, frames: &mut A) {
        // SAFETY: per the caller, nothing maps the zero frame.
        unsafe { frames.deallocate_frame(self.zero) };
    }
}

/// Zeroes `frame` through `phys`.
pub(crate) fn fill_zero<P: PhysMem>(phys: &P, frame: PhysFrame) {
    let dst = phys.table_ptr(frame).as_ptr().cast::<u8>();
    // SAFETY: `PhysMem` makes every frame of the frame source valid for
    // 4096 bytes of writes; the frame was just allocated, so nothing else
    // uses it.
    unsafe { dst.write_bytes(0, 4096) };
}

/// Copies frame `src` into frame `dst` through `phys`.
pub(crate) fn copy_frame<P: PhysMem>(phys: &P, src: PhysFrame, dst: PhysFrame) {
    let s = phys.table_ptr(src).as_ptr().cast::<u8>();
    let d = phys.table_ptr(dst).as_ptr().cast::<u8>();
    // SAFETY: both frames are valid for 4096 bytes through `PhysMem`, and
    // distinct (`dst` was just allocated), so the ranges do not overlap.
    unsafe { core::ptr::copy_nonoverlapping(s, d, 4096) };
}
