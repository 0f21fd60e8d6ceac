//! One emulated frame allocator lent to the operations of a [`Vm`] and to
//! the `Vm` itself as its source of 2 MiB runs (transparent huge pages).
//!
//! [`Vm`]: crate::vm::Vm

use std::sync::{Arc, Mutex};

use x86_64::structures::paging::{FrameAllocator, FrameDeallocator, PhysFrame, Size2MiB, Size4KiB};

use super::phys_mem::EmulatedFrameAllocator;
use crate::vm::HugeFrames;

/// An [`EmulatedFrameAllocator`] behind a shared lock: clones are the same
/// allocator, one given to [`Vm::set_huge_frames`](crate::vm::Vm::set_huge_frames),
/// another passed as the frame source of the space operations.
#[derive(Clone)]
pub struct SharedFrames(pub Arc<Mutex<EmulatedFrameAllocator>>);

impl SharedFrames {
    /// Shares `frames`.
    pub fn new(frames: EmulatedFrameAllocator) -> Self {
        Self(Arc::new(Mutex::new(frames)))
    }

    /// Frames handed out now.
    pub fn in_use(&self) -> usize {
        self.0.lock().unwrap().in_use()
    }
}

// SAFETY: forwards to the emulated allocator, which hands out each frame once.
unsafe impl FrameAllocator<Size4KiB> for SharedFrames {
    fn allocate_frame(&mut self) -> Option<PhysFrame> {
        self.0.lock().unwrap().allocate_frame()
    }
}

impl FrameDeallocator<Size4KiB> for SharedFrames {
    unsafe fn deallocate_frame(&mut self, frame: PhysFrame) {
        // SAFETY: the caller's promise, forwarded.
        unsafe { self.0.lock().unwrap().deallocate_frame(frame) }
    }
}

// SAFETY: runs of 512 frames of the same emulated memory, marked allocated
// frame by frame, so each goes back on its own through the same allocator.
unsafe impl HugeFrames for SharedFrames {
    fn allocate_2mib(&self) -> Option<PhysFrame<Size2MiB>> {
        let pa = self.0.lock().unwrap().allocate_contiguous(512, 2 << 20)?;
        Some(PhysFrame::containing_address(pa))
    }
}
